"""The baselines stage: what a run of each task must beat, on the evaluation subset it is
evaluated on (run right after `data`).

    peftlab run quickstart --stages baselines

Per task, one `baselines` record (`peftlab.records.BaselineRecord`, key: the task):
- the majority-class predictor's value of every metric with its bootstrap interval over the
  evaluation examples, the best constant prediction per metric, and chance (uniform random
  guessing), from `peftlab.baseline_scores.baseline_metrics` on the evaluation labels;
- the base model with an untrained head, initialised under the study's first seed, evaluated on
  the same examples the runs are evaluated on (same tokenisation, pair template and padding), so
  a reader sees what the pretrained features give with no training at all;
- where the task's runs start from a head fitted on the frozen features (training.head_init:
  probe), that probe-fitted head too, fitted on the task's training subset: the runs' starting
  point, so a reader sees what fine-tuning added to it.

The stats stage judges every run against this record (`peftlab.baseline_scores.judge`): a run whose
main metric's interval does not clear the majority and chance rates is flagged as degenerate and
left out of drift and deployment verdicts. Idempotent: a task whose evaluation rows, model and
settings are unchanged is skipped.
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
                   ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The base classifier with a head initialised under `seed`, evaluated on `eval_df`, and,
    when `fit_df` (training rows) is given, the same model again after its head is fitted on
    the frozen base's features of those rows (`sentence_embedding.fit_heads`, what
    training.head_init: probe starts every run from); one model load for both. Each result:
    {seed, metrics: {name: {value, ci_low, ci_high}}, predicted: {label: share}}; the second
    is None without `fit_df`."""
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

    def evaluate(net: Any) -> dict[str, Any]:
        logits = predict(net, dataset, loader.tokenizer, spec.training.eval_batch_size,
                         ctx.device, pad_to=spec.training.pad_to)
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
    fitted = None
    if fit_df is not None:
        from peftlab.sentence_embedding import fit_heads

        fit_heads(model, encode_frame(fit_df, loader.tokenizer, **enc), loader.tokenizer,
                  batch_size=spec.training.eval_batch_size, device=ctx.device,
                  pad_to=spec.training.pad_to)
        fitted = evaluate(model)
    del model
    return untrained, fitted


def run(ctx: Context) -> None:
    """Fill the `baselines` table: one record per task of the study."""
    from peftlab.artifacts import ModelLoader
    from peftlab.baseline_scores import baseline_metrics
    from peftlab.errors import ModelError
    from peftlab.store import provenance
    from peftlab.tasks import split_checksum

    spec = ctx.study.spec
    loader = None
    prov = provenance()
    # track: a progress line per task, and what the model load logs is labelled with the task
    for tspec in track(ctx.console, "baselines", spec.tasks, label=lambda t: t.name):
        task = tspec.name
        task_def = ctx.data.task(task)
        eval_df = ctx.data.split(task, "eval")
        checksum = split_checksum(eval_df)
        stamp = _stamp(ctx, task, checksum)
        old = read_one(ctx.store, BaselineRecord, task)
        if old is not None and old.stamp == stamp:
            ctx.console.print(f"baselines {task}: up to date")
            continue
        n_boot = spec.training.bootstrap_samples
        b = baseline_metrics(task_def, eval_df["label"].to_numpy(), n_bootstrap=n_boot,
                             seed=spec.data.seed)
        head, error, probe, probe_error = None, None, None, None
        probed = _probed(ctx, task)
        try:
            loader = loader or ModelLoader(spec.model, ctx.device)
            head, probe = untrained_head(
                ctx, task_def, eval_df, spec.seeds[0], n_boot, loader,
                fit_df=ctx.data.split(task, "train") if probed else None)
        except ModelError as err:  # e.g. the model cannot be loaded here: the rates still hold
            error = str(err)
            probe_error = error if probed else None
        rec = BaselineRecord(
            task=task, main_metric=task_def.metrics[0], metrics=list(task_def.metrics),
            eval_examples=int(len(eval_df)), content_checksum=checksum,
            label_counts=b["label_counts"], majority=b["majority"],
            best_constant=b["best_constant"], chance=b["chance"], untrained_head=head,
            untrained_error=error, probe_head=probe, probe_error=probe_error,
            n_bootstrap=n_boot, confidence=b["confidence"],
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
