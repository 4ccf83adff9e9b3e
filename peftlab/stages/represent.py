"""Pooled per-layer hidden states of the base model and of every finished run on a fixed probe set.

    peftlab represent quickstart

For each task the probe set is the task's evaluation split subsampled with `represent.probe_samples`
and `represent.probe_seed` (the same examples, in the same order, for every model). Each model reads
it in batches, one forward pass per batch with `output_hidden_states=True`, and every layer's hidden
states are pooled to one vector per example:

- `last`: the last real token, found with `encode.last_token_index`: the rightmost position whose
  attention mask is 1 and whose id is not the pad id. That is the token a Llama classification head
  reads (it looks for the pad id and ignores the mask), and it is right under left padding too.
- `mean`: the mean over positions whose attention mask is 1.
- `first`: the first real token ([CLS] for BERT: what its classification head reads).
- `auto` (default): `last` for decoder models, `mean` for encoders (`models.model_family`).

`represent.pooling` may list several (`[last, mean]`): every pooling comes from the same forward
pass and is stored beside the others. The one the classification head reads (last for decoders,
first for encoders) is primary when listed, else the first listed
(`extraction.primary_pooling`); the others are exploratory readouts.

Layer 0 is the embedding output, layer i the output of block i; the last layer is what transformers
returns as the last hidden state (for Llama: after the final RMSNorm, i.e. what the head reads).

Each model's vectors go to `represent/<task>/<key>.safetensors` (key "base" or the run id), one
tensor `layer_NNN` of shape (n_examples, hidden_size) per layer, float32 or float16 as configured,
written atomically, with a manifest record in the `represent` table under "<task>/<key>". A model
whose record matches the current probe set (hash), extraction settings and source (base weights or
the run's finish time) is skipped, so a rerun extracts nothing; the base is extracted once per task.
An exploratory pooling's file is `represent/<task>/<pooling>/<key>.safetensors`, its manifest
"<task>/<key>/<pooling>".

Pooled-token diagnostic: for each `last` or `first` pooling, one `readout` record per task
(`records.ReadoutRecord`, key "<task>/<pooling>") says which token ids the readout reads over the
probes (`extraction.token_diagnostic`): the share of the most common one, the top tokens
decoded, whether the top one is whitespace or punctuation, and a warning when it covers more than
`represent.token_warning_share` of them. It depends on the tokenizer and the probe texts only, so
one record covers the base and every run.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.artifacts import base_source, run_source
from peftlab.extraction import (
    BASE_KEY,
    TABLE,
    TOKEN_POOLINGS,
    encode_representations,
    extract,
    head_pooling,
    layer_names,
    manifest_key,
    pad_token_id,
    pooled_token_ids,
    primary_pooling,
    probe_hash,
    representation_path,
    resolve_poolings,
    token_diagnostic,
)
from peftlab.records import ReadoutRecord, RepresentRecord, write
from peftlab.store import Store, atomic_write_bytes, provenance

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.context import Context
    from peftlab.runs import RunConfig


def probe_frame(ctx: Context, task: str) -> pd.DataFrame:
    """The task's probe examples: its evaluation split subsampled by the represent settings.

    Drawn from the whole evaluation split (not the data.eval_samples subsample), with
    `tasks.subsample`, so the same spec always gives the same rows in the same order.
    """
    from peftlab.tasks import subsample

    cfg = ctx.study.spec.represent
    return subsample(ctx.data.split(task, "eval", subsample=False), cfg.probe_samples, cfg.probe_seed)


def _settings(ctx: Context, pooling: str) -> dict[str, Any]:
    """What changes the stored vectors besides the probe set and the weights."""
    cfg = ctx.study.spec.represent
    return {"pooling": pooling, "dtype": cfg.dtype,
            "model": ctx.study.spec.model.model_dump(mode="json")}


def _up_to_date(store: Store, task: str, key: str, poolings: list[str],
                expected: dict[str, Any]) -> bool:
    """Whether every pooling's manifest of a model matches (primary first in `poolings`)."""
    for i, pooling in enumerate(poolings):
        rec = store.get(TABLE, manifest_key(task, key, None if i == 0 else pooling))
        if rec is None or not (store.root / rec["file"]).is_file():
            return False
        want = {**expected, "settings": {**expected["settings"], "pooling": pooling},
                "poolings": poolings}
        if not all(rec.get(k) == v for k, v in want.items()):
            return False
    return True


def run(ctx: Context) -> None:
    """Extract (or reuse) the base's and every finished run's representations on every task."""
    from peftlab.generation import is_generative

    if is_generative(ctx):  # prompts through causal LMs: `peftlab.gen_study.represent`
        from peftlab.gen_study import represent

        represent(ctx)
        return
    from peftlab.context import run_status
    from peftlab.execution import run_units
    from peftlab.models import load_config, resolve_model

    spec = ctx.study.spec
    m = spec.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    config = load_config(resolved, trust_remote_code=m.trust_remote_code)
    poolings = resolve_poolings(spec.represent.pooling, config)
    primary = primary_pooling(poolings, config)
    poolings = [primary] + [p for p in poolings if p != primary]  # primary first
    settings = _settings(ctx, primary)
    base = base_source(ctx)
    all_runs = ctx.study.runs()
    units = []
    probes: dict[str, tuple[pd.DataFrame, str]] = {}
    for tspec in spec.tasks:
        task = tspec.name
        runs = [rc for rc in all_runs if rc.task == task]
        probe = probe_frame(ctx, task)
        phash = probe_hash(probe)
        probes[task] = (probe, phash)
        todo: list[tuple[str, RunConfig | None, str]] = []
        for key, rc, source in [(BASE_KEY, None, base)] + [
            (rc.run_id, rc, run_source(ctx, rc.run_id)) for rc in runs
            if run_status(ctx.store, rc)["status"] == "done"
        ]:
            expected = {"probe_hash": phash, "settings": settings, "source": source}
            if not _up_to_date(ctx.store, task, key, poolings, expected):
                todo.append((key, rc, source))
        if not todo:
            ctx.console.print(f"represent {task}: every model is extracted")
            continue
        units += [_unit(ctx, task, key, rc, runs[0], probe, phash, settings, source, poolings,
                        head_pooling(config)) for key, rc, source in todo]
    for out in run_units(ctx.console, "represent", ctx.executor, units):
        if out.error is not None:
            raise out.error
        if out.failure is not None:  # no manifest: the next run extracts it again
            ctx.console.print(f"[red]failed[/] {out.unit.key}: {out.failure}")
            continue
        recs = [RepresentRecord(**value) for value in out.value]  # one per pooling
        for rec in recs:
            rec.provenance = {**(rec.provenance or {}),
                              "execution": out.execution(ctx.executor.backend)}
        write(ctx.store, recs)
        rec = recs[0]
        who = f"represent {rec.task}: " + ("the base model" if rec.run_id is None
                                           else f"run {rec.run_id}")
        ctx.console.print(f"{who}: {rec.n} examples x {rec.layers} layers x {rec.d} features "
                          f"({', '.join(r.pooling for r in recs)} pooling) in "
                          f"{rec.extract_time_s:.1f} s")
    for task, (probe, phash) in probes.items():
        readout_diagnostics(ctx, task, probe, phash, poolings)


def _unit(ctx: Context, task: str, key: str, rc: RunConfig | None, first: RunConfig,
          probe: pd.DataFrame, phash: str, settings: dict[str, Any], source: str,
          poolings: list[str], head: str):
    """One model's extraction as a unit of work (`extract_unit`, plain arguments)."""
    from peftlab.artifacts import run_artifact
    from peftlab.execution import Unit

    return Unit(f"represent/{task}/{key}", extract_unit, kwargs=dict(
        task=ctx.data.task(task), key=key, rc=rc, model=first.model,
        artifact=None if rc is None else run_artifact(ctx, rc), probe=probe, phash=phash,
        settings=settings, source=source, cfg=ctx.study.spec.represent,
        device=ctx.study.spec.device, root=str(ctx.store.root),
        path=str(representation_path(ctx.store, task, key)),
        data_checksum_eval=ctx.data.checksum(task, "eval"), poolings=poolings, head=head,
        paths={p: str(representation_path(ctx.store, task, key, None if i == 0 else p))
               for i, p in enumerate(poolings)},
        text_normalisation=ctx.data.normalisation()))


def extract_unit(*, task: Any, key: str, rc: RunConfig | None, model: Any,
                 artifact: dict[str, Any] | None, probe: pd.DataFrame, phash: str,
                 settings: dict[str, Any], source: str, cfg: Any, device: str, root: str,
                 path: str, data_checksum_eval: str, poolings: list[str] | None = None,
                 head: str | None = None, paths: dict[str, str] | None = None,
                 text_normalisation: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Extract one model's representations under every pooling (`poolings`, primary first; one
    forward pass per batch for all of them), write each pooling's file atomically (`paths`);
    return their manifests, primary first.

    No store and no Context (it runs in the driver or a Ray worker): the base (rc None, a
    fresh head for `task`) or the run whose artifact dict is `artifact`; `device` is the spec's.
    """
    from peftlab.artifacts import ModelLoader
    from peftlab.encode import encode_frame
    from peftlab.models import resolve_device

    dev = resolve_device(device)
    loader = ModelLoader(model, dev)
    if rc is None:
        # The base classifier gets a fresh head for the task; the head reads the last hidden
        # state and never changes it, so any run config of the task gives the same vectors.
        net = loader.base(task.num_labels, task.head_label_names)
    else:
        net = loader.run(artifact)
    tokenizer = loader.tokenizer
    net.eval()
    dataset = encode_frame(probe, tokenizer, max_length=model.max_length,
                           pair_template=model.pair_template,
                           label_dtype=task.task_kind.label_dtype)
    who = f"represent {task.name}: " + ("the base model" if rc is None else f"run {rc.run_id}")
    poolings = poolings or [settings["pooling"]]
    paths = paths or {poolings[0]: path}
    t0 = time.perf_counter()
    pooled = extract(net, tokenizer, dataset, pooling=poolings, batch_size=cfg.batch_size,
                     device=dev)
    seconds = time.perf_counter() - t0  # the shared forward passes: every manifest's time
    out = []
    for pooling in poolings:
        reps = pooled[pooling]
        data = encode_representations(reps, cfg.dtype, f"{who} ({pooling} pooling)")
        atomic_write_bytes(Path(paths[pooling]), data)
        out.append(_manifest(task.name, key, rc, probe, phash, reps, data, paths[pooling],
                             root, {**settings, "pooling": pooling}, source, poolings, head,
                             seconds, net, tokenizer, cfg, dev, data_checksum_eval,
                             text_normalisation))
    return out


def _manifest(task: str, key: str, rc: RunConfig | None, probe: pd.DataFrame, phash: str,
              reps: Any, data: bytes, path: str, root: str, settings: dict[str, Any],
              source: str, poolings: list[str], head: str | None, seconds: float, net: Any,
              tokenizer: Any, cfg: Any, dev: Any, data_checksum_eval: str,
              text_normalisation: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest of one pooling's file (a `RepresentRecord` as a dict)."""
    from peftlab.models import model_family

    n_layers, n, d = reps.shape
    return RepresentRecord(
        task=task,
        model_key=key,
        run_id=None if rc is None else rc.run_id,
        method=None if rc is None else rc.method,
        method_type=None if rc is None else rc.method_type,
        seed=None if rc is None else rc.seed,
        n=n,
        d=d,
        layers=n_layers,
        layer_names=layer_names(n_layers),
        pooling=settings["pooling"],
        readout="primary" if settings["pooling"] == poolings[0] else "exploratory",
        poolings=poolings,
        head_pooling=head,
        dtype=cfg.dtype,
        model_family=model_family(net),
        padding_side=tokenizer.padding_side,
        pad_token_id=pad_token_id(net, tokenizer),
        probe_hash=phash,
        probe_rows=[int(r) for r in probe["row"]] if "row" in probe.columns else None,
        probe_samples=cfg.probe_samples,
        probe_seed=cfg.probe_seed,
        settings=settings,
        source=source,
        file=str(Path(path).relative_to(root)),
        bytes=len(data),
        content_sha256=hashlib.sha256(data).hexdigest(),
        extract_time_s=seconds,
        examples_per_s=n / seconds if seconds > 0 else None,
        provenance=provenance(stage_device=dev, data_checksum_eval=data_checksum_eval,
                              **({"text_normalisation": text_normalisation}
                                 if text_normalisation else {})),
    ).dump()


def readout_diagnostics(ctx: Context, task: str, probe: pd.DataFrame, phash: str,
                        poolings: list[str]) -> None:
    """The pooled-token diagnostic of every single-token pooling of a task (`readout` table).

    Computed from the base tokenizer's encoding of the probes (the tokens, not the weights,
    decide which position is read) and rewritten only when the probe set or settings changed.
    """
    from peftlab.artifacts import ModelLoader
    from peftlab.encode import encode_frame

    cfg = ctx.study.spec.represent
    strip = ctx.study.spec.data.strip_whitespace
    todo = []
    for pooling in [p for p in poolings if p in TOKEN_POOLINGS]:
        rec = ctx.store.get(ReadoutRecord.TABLE, f"{task}/{pooling}")
        readout = "primary" if pooling == poolings[0] else "exploratory"
        if (rec is None or rec.get("probe_hash") != phash or rec.get("readout") != readout
                or rec.get("strip_whitespace") != strip
                or (rec.get("diagnostic") or {}).get("warn_share") != cfg.token_warning_share):
            todo.append((pooling, readout))
    if not todo:
        return
    m = ctx.study.spec.model
    tokenizer = ModelLoader(m, "cpu").tokenizer
    dataset = encode_frame(probe, tokenizer, max_length=m.max_length,
                           pair_template=m.pair_template,
                           label_dtype=ctx.data.task(task).task_kind.label_dtype)
    # The pad id the head looks for, as extraction found it (the model config's); the
    # tokenizer's when nothing has been extracted.
    base = ctx.store.get(TABLE, manifest_key(task, BASE_KEY)) or {}
    pad = base.get("pad_token_id", tokenizer.pad_token_id)
    items = []
    for pooling, readout in todo:
        diag = token_diagnostic(pooled_token_ids(dataset["input_ids"], pooling, pad), tokenizer,
                                warn_share=cfg.token_warning_share)
        items.append(ReadoutRecord(
            task=task, model=m.name, pooling=pooling, readout=readout, probe_hash=phash,
            strip_whitespace=strip, diagnostic=diag,
            provenance=provenance(text_normalisation=ctx.data.normalisation())))
        head = diag["top"][0]
        warn = " [yellow]warning: one token covers most probes[/]" if diag["warn"] else ""
        ctx.console.print(f"readout {task} ({pooling} pooling): token {head['token']!r} "
                          f"({head['kind']}) is pooled for {head['count']} of {diag['n']} "
                          f"probes{warn}")
    write(ctx.store, items)
