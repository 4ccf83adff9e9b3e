"""A task's `baselines` record: computing it, and the start logits it keeps.

    compute(ctx, ["sst2", "rte"])          # what the baselines stage does for every task
    read_start_logits(study_dir, rec.start_logits)   # {"logits", "labels"}

The baselines stage (`peftlab.stages.baselines`) calls `compute` for every task of the study, and
the stats stage for the tasks whose runs have no record (a study run without that stage), so the
two never disagree on what a record holds. See the stage's docstring for the record's contents;
the numbers come from `peftlab.baseline_scores`.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.logs import track
from peftlab.records import BaselineRecord, read_one, write

if TYPE_CHECKING:
    from peftlab.context import Context

START_LOGITS = "start_eval_logits.safetensors"


def _stamp(ctx: Context, task: str, checksum: str) -> dict[str, Any]:
    spec = ctx.study.spec
    settings = {"model": spec.model.model_dump(mode="json"), "seed": spec.seeds[0],
                "n_bootstrap": spec.training.bootstrap_samples, "data_seed": spec.data.seed,
                "eval_batch_size": spec.training.eval_batch_size, "pad_to": spec.training.pad_to}
    if _probed(ctx, task):  # only then, so the stamps of other studies stay what they were
        settings["probe_head"] = True
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()
                            ).hexdigest()[:16]
    return {"eval": checksum, "settings": digest}


def _probed(ctx: Context, task: str) -> bool:
    """Whether runs of `task` start from a head fitted on frozen features (head_init: probe)."""
    return any(rc.task == task and rc.training.head_init == "probe" for rc in ctx.study.runs())


def untrained_head(ctx: Context, task_def: Any, eval_df: Any, seed: int, n_bootstrap: int,
                   loader: Any, *, fit_df: Any = None
                   ) -> tuple[dict[str, Any], dict[str, Any] | None, Any]:
    """The base classifier with a head initialised under `seed`, evaluated on `eval_df`, and,
    when `fit_df` (training rows) is given, the same model again after its head is fitted on
    the frozen base's features of those rows (`sentence_embedding.fit_heads`, what
    training.head_init: probe starts every run from); one model load for both. Returns
    (untrained, fitted, fitted logits): the first two {seed, metrics: {name: {value, ci_low,
    ci_high}}, predicted: {label: share}}, the logits float32 [len(eval_df), num_labels] in
    `eval_df` order; the last two are None without `fit_df`."""
    from peftlab.encode import encode_frame, predict
    from peftlab.metrics import compute_metrics

    spec = ctx.study.spec
    kind = task_def.task_kind
    model = loader.base(task_def.num_labels, task_def.head_label_names, seed=seed)
    model.eval()
    enc = dict(max_length=spec.model.max_length, pair_template=spec.model.pair_template,
               label_dtype=kind.label_dtype)
    dataset = encode_frame(eval_df, loader.tokenizer, **enc)
    y = np.asarray(dataset["labels"])

    last: dict[str, Any] = {}

    def evaluate(net: Any) -> dict[str, Any]:
        logits = predict(net, dataset, loader.tokenizer, spec.training.eval_batch_size,
                         ctx.device, pad_to=spec.training.pad_to)
        last["logits"] = logits
        pred = kind.predictions(task_def, logits)
        out: dict[str, Any] = {
            "seed": seed,
            "metrics": compute_metrics(list(task_def.metrics), y, pred,
                                       n_bootstrap=n_bootstrap, seed=seed)}
        if kind.has_classes:
            counts = np.bincount(pred.astype(int), minlength=len(task_def.label_names))
            out["predicted"] = {str(name): float(c / pred.size)
                                for name, c in zip(task_def.label_names, counts, strict=True)}
        return out

    untrained = evaluate(model)
    fitted, fitted_logits = None, None
    if fit_df is not None:
        from peftlab.sentence_embedding import fit_heads

        fit_heads(model, encode_frame(fit_df, loader.tokenizer, **enc), loader.tokenizer,
                  batch_size=spec.training.eval_batch_size, device=ctx.device,
                  pad_to=spec.training.pad_to)
        fitted = evaluate(model)
        fitted_logits = last["logits"]
    del model
    return untrained, fitted, fitted_logits


def start_logits_path(task: str) -> str:
    """Where the probe-fitted head's evaluation logits of `task` are kept, relative to the
    study directory."""
    return f"baselines/{task}/{START_LOGITS}"


def read_start_logits(root: Any, rel: str) -> dict[str, np.ndarray]:
    """The file `_write_start_logits` wrote: {logits [n, num_labels] float32, labels [n]}."""
    from pathlib import Path

    from safetensors.numpy import load_file

    return load_file(str(Path(root) / rel))


def _write_start_logits(ctx: Context, task: str, logits: Any, labels: Any) -> str:
    """Save the start's evaluation logits and the labels they are scored against (so a
    judgement needs no data source), atomically; returns the path relative to the study."""
    import os

    from safetensors.numpy import save_file

    rel = start_logits_path(task)
    path = ctx.store.path(*rel.split("/"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"logits": np.ascontiguousarray(logits, dtype=np.float32),
               "labels": np.ascontiguousarray(labels)}, str(tmp))
    os.replace(tmp, path)
    return rel


def _up_to_date(ctx: Context, old: BaselineRecord | None, stamp: dict[str, Any],
                probed: bool) -> bool:
    if old is None or old.stamp != stamp:
        return False
    if not probed or old.probe_head is None:  # nothing to keep, or it could not be fitted
        return True
    return old.start_logits is not None and ctx.store.path(*old.start_logits.split("/")).is_file()


def compute(ctx: Context, tasks: list[str]) -> None:
    """The `baselines` record of each of `tasks` (names of the study's tasks), skipping those
    whose evaluation rows, model and settings are unchanged; where the task's runs start from
    the probe-fitted head, that head's evaluation logits too (`start_logits_path`): what the
    stats stage judges each run's improvement on its start by."""
    from peftlab.artifacts import ModelLoader
    from peftlab.baseline_scores import baseline_metrics
    from peftlab.errors import ModelError
    from peftlab.store import provenance
    from peftlab.tasks import split_checksum

    spec = ctx.study.spec
    generative = [t for t in tasks if ctx.data.task(t).kind == "generation"]
    if generative:
        generation_baselines(ctx, generative)
        tasks = [t for t in tasks if t not in generative]
    loader = None
    prov = provenance()
    # track: a progress line per task, and what the model load logs is labelled with the task
    for task in track(ctx.console, "baselines", list(tasks), label=lambda t: t):
        task_def = ctx.data.task(task)
        eval_df = ctx.data.split(task, "eval")
        checksum = split_checksum(eval_df)
        stamp = _stamp(ctx, task, checksum)
        old = read_one(ctx.store, BaselineRecord, task)
        probed = _probed(ctx, task)
        if _up_to_date(ctx, old, stamp, probed):
            ctx.console.print(f"baselines {task}: up to date")
            continue
        n_boot = spec.training.bootstrap_samples
        b = baseline_metrics(task_def, eval_df["label"].to_numpy(), n_bootstrap=n_boot,
                             seed=spec.data.seed)
        head, error, probe, probe_error, start = None, None, None, None, None
        try:
            loader = loader or ModelLoader(spec.model, ctx.device)
            head, probe, logits = untrained_head(
                ctx, task_def, eval_df, spec.seeds[0], n_boot, loader,
                fit_df=ctx.data.split(task, "train") if probed else None)
            if logits is not None:
                start = _write_start_logits(ctx, task, logits, eval_df["label"].to_numpy())
        except ModelError as err:  # e.g. the model cannot be loaded here: the rates still hold
            error = str(err)
            probe_error = error if probed else None
        rec = BaselineRecord(
            task=task, main_metric=task_def.metrics[0], metrics=list(task_def.metrics),
            eval_examples=int(len(eval_df)), content_checksum=checksum,
            label_counts=b["label_counts"], majority=b["majority"],
            best_constant=b["best_constant"], chance=b["chance"], untrained_head=head,
            untrained_error=error, probe_head=probe, probe_error=probe_error,
            start_logits=start, n_bootstrap=n_boot, confidence=b["confidence"],
            seed=spec.data.seed, stamp=stamp, provenance=prov)
        write(ctx.store, [rec])
        main = task_def.metrics[0]
        maj = (b["majority"] or {}).get("metrics", {}).get(main, {}).get("value")
        chance = b["chance"]["metrics"].get(main, {}).get("value")
        got = (head or {}).get("metrics", {}).get(main, {}).get("value")
        fitted = (probe or {}).get("metrics", {}).get(main, {}).get("value")
        ctx.console.print(
            f"baselines {task}: {main} majority {_fmt(maj)}, chance {_fmt(chance)}, untrained "
            f"head {_fmt(got)}" + (f", probe-fitted head {_fmt(fitted)}" if probe else "")
            + f" ({len(eval_df)} eval examples)"
            + (f"; untrained head not evaluated: {error}" if error else "")
            + (f"; probe-fitted head not evaluated: {probe_error}" if probe_error else ""))


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def generation_baselines(ctx: Context, tasks: list[str]) -> None:
    """The `gen_baselines` records (and their outputs in `generations`) of generation tasks:
    the base model zero- and few-shot and the template (`peftlab.generation.baseline_outputs`),
    scored like the runs; skipped where evaluation rows, model and settings are unchanged."""
    import time

    from peftlab.generation import baseline_outputs, generation_rows, inputs_of, score
    from peftlab.records import GenerationBaselineRecord, GenerationRecord
    from peftlab.spec import NOT_RUN_SETTINGS
    from peftlab.tasks import split_checksum

    spec = ctx.study.spec
    for task in track(ctx.console, "baselines", list(tasks), label=lambda t: t):
        task_def = ctx.data.task(task)
        eval_df = ctx.data.split(task, "eval")
        stamp = {"content_checksum": split_checksum(eval_df),
                 "model": spec.model.model_dump(mode="json"),
                 "generation": spec.generation.model_dump(
                     mode="json", exclude=set(NOT_RUN_SETTINGS - {"few_shot", "template_baseline"})),
                 "train_checksum": split_checksum(ctx.data.split(task, "train")),
                 "bootstrap": spec.training.bootstrap_samples, "seed": spec.data.seed}
        old = [GenerationBaselineRecord.parse(r) for r in ctx.store.records("gen_baselines")
               if r["task"] == task]
        if old and all(r.stamp == stamp for r in old):
            ctx.console.print(f"baselines {task}: up to date")
            continue
        t0 = time.perf_counter()
        outputs = baseline_outputs(spec, task_def, ctx.data.split(task, "train"), eval_df,
                                   ctx.device)
        elapsed = time.perf_counter() - t0
        inputs = inputs_of(eval_df)
        recs: list[Any] = []
        for name, outs in outputs.items():
            metrics = score(task_def, inputs, outs, n_bootstrap=spec.training.bootstrap_samples,
                            seed=spec.data.seed)
            recs.append(GenerationBaselineRecord(
                task=task, name=name, main_metric=task_def.metrics[0], metrics=metrics,
                eval_inputs=len(inputs), stamp=stamp, eval_time_s=elapsed))
            recs += [GenerationRecord(run_id=f"baseline:{task}:{name}", task=task, method=name,
                                      **row) for row in generation_rows(inputs, outs)]
            m = metrics[task_def.metrics[0]]
            ctx.console.print(f"baselines {task}: {name} {task_def.metrics[0]} "
                              f"{m['value']:.2f} [{_fmt(m['ci_low'])}, {_fmt(m['ci_high'])}]")
        write(ctx.store, recs)
