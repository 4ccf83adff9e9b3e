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
- `auto` (default): `last` for decoder models, `mean` for encoders (`models.model_family`).

Layer 0 is the embedding output, layer i the output of block i; the last layer is what transformers
returns as the last hidden state (for Llama: after the final RMSNorm, i.e. what the head reads).

Each model's vectors go to `represent/<task>/<key>.safetensors` (key "base" or the run id), one
tensor `layer_NNN` of shape (n_examples, hidden_size) per layer, float32 or float16 as configured,
written atomically, with a manifest record in the `represent` table under "<task>/<key>". A model
whose record matches the current probe set (hash), extraction settings and source (base weights or
the run's finish time) is skipped, so a rerun extracts nothing; the base is extracted once per task.
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

from peftlab.records import RepresentRecord, write
from peftlab.representations import (
    BASE_KEY,
    TABLE,
    encode_representations,
    extract,
    layer_names,
    pad_token_id,
    probe_hash,
    representation_path,
    resolve_pooling,
)
from peftlab.store import Store, atomic_write_bytes, provenance

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.spec import RunConfig
    from peftlab.study import Context


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


def _up_to_date(store: Store, task: str, key: str, expected: dict[str, Any]) -> bool:
    rec = store.get(TABLE, f"{task}/{key}")
    if rec is None or not (store.root / rec["file"]).is_file():
        return False
    return all(rec.get(k) == v for k, v in expected.items())


def _base_source(ctx: Context) -> str:
    from peftlab.models import model_revision, resolve_model

    m = ctx.study.spec.model
    return "base:" + model_revision(resolve_model(m.name, gguf_file=m.gguf_file,
                                                  revision=m.revision))


def _run_source(ctx: Context, run_id: str) -> str:
    rec = ctx.store.get("runs", run_id) or {}
    return f"run:{rec.get('artifact')}@{rec.get('finished')}"


def run(ctx: Context) -> None:
    """Extract (or reuse) the base's and every finished run's representations on every task."""
    from peftlab.logs import track
    from peftlab.models import load_config, resolve_model
    from peftlab.study import run_status

    spec = ctx.study.spec
    m = spec.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    pooling = resolve_pooling(spec.represent.pooling,
                              load_config(resolved, trust_remote_code=m.trust_remote_code))
    settings = _settings(ctx, pooling)
    base_source = _base_source(ctx)
    all_runs = ctx.study.runs()
    for tspec in spec.tasks:
        task = tspec.name
        runs = [rc for rc in all_runs if rc.task == task]
        probe = probe_frame(ctx, task)
        phash = probe_hash(probe)
        todo: list[tuple[str, RunConfig | None, str]] = []
        for key, rc, source in [(BASE_KEY, None, base_source)] + [
            (rc.run_id, rc, _run_source(ctx, rc.run_id)) for rc in runs
            if run_status(ctx.store, rc)["status"] == "done"
        ]:
            expected = {"probe_hash": phash, "settings": settings, "source": source}
            if not _up_to_date(ctx.store, task, key, expected):
                todo.append((key, rc, source))
        if not todo:
            ctx.console.print(f"represent {task}: every model is extracted")
            continue
        dataset = None
        for key, rc, source in track(ctx.console, f"represent {task}", todo,
                                     label=lambda t: t[0]):
            dataset = _extract_one(ctx, task, key, rc, runs[0], probe, phash, dataset, settings,
                                   source)


def _extract_one(ctx: Context, task: str, key: str, rc: RunConfig | None, first: RunConfig,
                 probe: pd.DataFrame, phash: str, dataset: Any, settings: dict[str, Any],
                 source: str) -> Any:
    """Extract one model's representations, write file + manifest; return the encoded probe."""
    from peftlab.artifacts import ModelLoader, load_run
    from peftlab.encode import encode_frame
    from peftlab.models import model_family

    cfg = ctx.study.spec.represent
    m = ctx.study.spec.model
    if rc is None:
        # The base classifier gets a fresh head for the task; the head reads the last hidden
        # state and never changes it, so any run config of the task gives the same vectors.
        task_def = ctx.data.task(task)
        loader = ModelLoader(first.model, ctx.device)
        model = loader.base(1 if task_def.is_regression else len(task_def.label_names),
                            None if task_def.is_regression else list(task_def.label_names))
        tokenizer = loader.tokenizer
    else:
        tokenizer, model = load_run(ctx, rc.run_id)
    model.eval()
    if dataset is None:  # every model of a task shares the base tokenizer: encode once
        dataset = encode_frame(probe, tokenizer, max_length=m.max_length,
                               pair_template=m.pair_template,
                               is_regression=ctx.data.task(task).is_regression)
    who = f"represent {task}: " + ("the base model" if rc is None else f"run {rc.run_id}")
    t0 = time.perf_counter()
    reps = extract(model, tokenizer, dataset, pooling=settings["pooling"],
                   batch_size=cfg.batch_size, device=ctx.device)
    seconds = time.perf_counter() - t0
    data = encode_representations(reps, cfg.dtype, who)
    path = representation_path(ctx.store, task, key)
    atomic_write_bytes(path, data)
    n_layers, n, d = reps.shape
    write(ctx.store, [RepresentRecord(
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
        dtype=cfg.dtype,
        model_family=model_family(model),
        padding_side=tokenizer.padding_side,
        pad_token_id=pad_token_id(model, tokenizer),
        probe_hash=phash,
        probe_rows=[int(r) for r in probe["row"]] if "row" in probe.columns else None,
        probe_samples=cfg.probe_samples,
        probe_seed=cfg.probe_seed,
        settings=settings,
        source=source,
        file=str(path.relative_to(ctx.store.root)),
        bytes=len(data),
        content_sha256=hashlib.sha256(data).hexdigest(),
        extract_time_s=seconds,
        examples_per_s=n / seconds if seconds > 0 else None,
        provenance=provenance(stage_device=ctx.device,
                              data_checksum_eval=ctx.data.checksum(task, "eval")),
    )])
    ctx.console.print(f"{who}: {n} examples x {n_layers} layers x {d} features "
                      f"({settings['pooling']} pooling) in {seconds:.1f} s")
    del model
    return dataset
