"""Pooled per-layer hidden states of the base model and of every finished run on a fixed probe set.

    peftlab represent studies/quickstart.yaml

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
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.errors import ModelError, PeftlabError
from peftlab.store import Store, atomic_write_bytes, provenance

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.spec import RunConfig
    from peftlab.study import Context

TABLE = "represent"
BASE_KEY = "base"
POOLINGS = ("last", "mean")


# ----------------------------------------------------------------------------- probe set


def probe_frame(ctx: Context, task: str) -> pd.DataFrame:
    """The task's probe examples: its evaluation split subsampled by the represent settings.

    Drawn from the whole evaluation split (not the data.eval_samples subsample), with
    `tasks.subsample`, so the same spec always gives the same rows in the same order.
    """
    from peftlab.tasks import subsample

    cfg = ctx.study.spec.represent
    return subsample(ctx.split(task, "eval", subsample=False), cfg.probe_samples, cfg.probe_seed)


def probe_hash(df: pd.DataFrame) -> str:
    """sha256 hex digest of the probe examples, in order: each row's `row` id and its texts.

    Two representation files are comparable row by row only when their probe hashes agree.
    """
    digest = hashlib.sha256()
    texts = [c for c in ("text_a", "text_b") if c in df.columns]
    rows = df["row"].tolist() if "row" in df.columns else list(range(len(df)))
    for i, row in enumerate(rows):
        fields = [str(int(row))] + ["" if _missing(df[c].iloc[i]) else str(df[c].iloc[i])
                                    for c in texts]
        # "<length>:<text>" per field, so no text can mimic a field boundary.
        digest.update(("".join(f"{len(f)}:{f}" for f in fields) + "\n").encode())
    return digest.hexdigest()


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


# ----------------------------------------------------------------------------- extraction


def resolve_pooling(pooling: str, model_or_config: Any) -> str:
    """"last" or "mean": `pooling` itself, or for "auto" the default of the model's family."""
    from peftlab.models import model_family

    if pooling == "auto":
        return "last" if model_family(model_or_config) == "decoder" else "mean"
    if pooling not in POOLINGS:
        raise PeftlabError(f"pooling must be 'auto', 'last' or 'mean', got {pooling!r}")
    return pooling


def pad_token_id(model: Any, tokenizer: Any) -> int | None:
    """The pad id the classification head looks for (the model config's), else the tokenizer's."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    pad = getattr(text_config, "pad_token_id", None)
    return int(pad) if pad is not None else tokenizer.pad_token_id


def iter_batches(dataset: Any, tokenizer: Any, batch_size: int, device: Any,
                 pad_to: int | None = None) -> Iterator[dict[str, Any]]:
    """Padded model inputs for an `encode_frame` dataset, in dataset order.

    Yields dicts of LongTensors [batch, seq] on `device`: input_ids, attention_mask and, when
    the dataset has them, token_type_ids (labels are left out: no loss is computed). Padding is on
    the tokenizer's side, to the longest example of the batch or to `pad_to` tokens.
    """
    from peftlab.encode import make_collator

    collator = make_collator(tokenizer, pad_to=pad_to)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids")
            if c in dataset.column_names]
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        feats = [{c: rows[c][i] for c in cols} for i in range(len(rows["input_ids"]))]
        yield {k: v.to(device) for k, v in collator(feats).items()}


def pooled_forward(model: Any, batch: dict[str, Any], *, pooling: str,
                   pad_token_id: int | None) -> Any:
    """One forward pass with every hidden state, pooled: float32 tensor [layers, batch, hidden].

    layers = 1 (embeddings) + number of blocks. Call under `torch.inference_mode()`. Padding is
    never read: `last` gathers one real position per row, `mean` zeroes padded positions with
    `masked_fill` (not a multiplication, which would turn a NaN at a padded position into a NaN
    mean). Under left padding, position ids count from each row's first real token, as they do
    under right padding, so the same example gets the same vectors on either side (for models
    whose forward takes position_ids; all Llama-family and BERT models do).
    """
    import torch

    from peftlab.encode import last_token_index

    mask = batch["attention_mask"]
    inputs = dict(batch)
    if bool((mask[:, 0] == 0).any()) and _takes_position_ids(model):
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    if hidden is None:
        raise ModelError(f"{type(model).__name__} returned no hidden states for "
                         "output_hidden_states=True, so its representations cannot be extracted")
    if pooling == "last":
        idx = last_token_index(batch["input_ids"], mask, pad_token_id)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return torch.stack([h[rows, idx] for h in hidden]).float()
    if pooling != "mean":
        raise PeftlabError(f"pooling must be 'last' or 'mean', got {pooling!r}")
    real = mask.bool().unsqueeze(-1)  # [batch, seq, 1]
    counts = real.sum(dim=1).clamp(min=1).float()  # [batch, 1]; an all-padding row gives zeros
    return torch.stack([h.float().masked_fill(~real, 0.0).sum(dim=1) / counts for h in hidden])


def _takes_position_ids(model: Any) -> bool:
    """Whether the transformers model (inside a PEFT wrapper, if any) accepts position_ids
    (DistilBERT, for one, does not)."""
    import inspect

    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    return "position_ids" in inspect.signature(inner.forward).parameters


def extract(model: Any, tokenizer: Any, dataset: Any, *, pooling: str, batch_size: int,
            device: Any = "cpu", pad_to: int | None = None) -> np.ndarray:
    """Pooled hidden states of every layer for every example: float32 [layers, n, hidden].

    dataset: an `encode.encode_frame` dataset; row i of each layer is its example i. `pooling`
    is "last" or "mean" (see `resolve_pooling`); one forward pass per batch of `batch_size`.
    """
    import torch

    if len(dataset) == 0:
        raise PeftlabError("the probe set is empty: nothing to extract")
    pad = pad_token_id(model, tokenizer)
    out: torch.Tensor | None = None
    start = 0
    with torch.inference_mode():
        for batch in iter_batches(dataset, tokenizer, batch_size, device, pad_to):
            pooled = pooled_forward(model, batch, pooling=pooling, pad_token_id=pad).cpu()
            if out is None:
                out = torch.empty((pooled.shape[0], len(dataset), pooled.shape[2]))
            out[:, start:start + pooled.shape[1]] = pooled
            start += pooled.shape[1]
    assert out is not None
    return out.numpy()


# ----------------------------------------------------------------------------- storage


def layer_names(n_layers: int) -> list[str]:
    """["embeddings", "block_1", ..., "block_<n_layers - 1>"]: what each stored layer is."""
    return ["embeddings"] + [f"block_{i}" for i in range(1, n_layers)]


def representation_path(store: Store, task: str, key: str) -> Path:
    return store.path("represent", task, f"{key}.safetensors")


def encode_representations(reps: np.ndarray, dtype: str, who: str) -> bytes:
    """safetensors bytes of reps [layers, n, hidden], one tensor `layer_NNN` per layer.

    Raises PeftlabError naming `who` and the layer when a value is NaN/inf, or does not fit
    float16 (late Llama layers reach |x| ~ 3000; an outlier feature can pass 65,504).
    """
    from safetensors.numpy import save

    names = layer_names(reps.shape[0])
    tensors = {}
    for i, layer in enumerate(reps):
        bad = int(np.count_nonzero(~np.isfinite(layer)))
        if bad:
            raise PeftlabError(f"{who}, layer {i} ({names[i]}): {bad} NaN or infinite values in "
                               "the pooled hidden states; the model's forward pass is broken")
        with np.errstate(over="ignore"):  # an overflow is reported just below
            stored = np.ascontiguousarray(layer.astype(dtype))
        if not np.isfinite(stored).all():
            raise PeftlabError(f"{who}, layer {i} ({names[i]}): values up to "
                               f"{float(np.abs(layer).max()):.4g} do not fit {dtype}; "
                               "set represent.dtype: float32")
        tensors[f"layer_{i:03d}"] = stored
    return save(tensors, metadata={"layers": str(reps.shape[0]), "format": "peftlab-represent-1"})


def load_representations(store: Store, task: str, key: str
                         ) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """({layer index: array (n_examples, hidden_size)}, manifest record) of one model on a task.

    key: "base" or a run id. Arrays are in the stored dtype (float32 or float16). Raises
    PeftlabError when nothing was extracted, or when the file is missing or not the one its
    manifest describes (checked by sha256).
    """
    from safetensors.numpy import load

    manifest = store.get(TABLE, f"{task}/{key}")
    who = "the base model" if key == BASE_KEY else f"run {key}"
    if manifest is None:
        raise PeftlabError(f"no representations of {who} on task {task!r}: run "
                           "`peftlab represent` first")
    path = store.root / manifest["file"]
    if not path.is_file():
        raise PeftlabError(f"{path}: the representations of {who} on task {task!r} are missing; "
                           "rerun `peftlab represent`")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != manifest["content_sha256"]:
        raise PeftlabError(f"{path}: the file does not match its manifest (sha256 differs); "
                           "rerun `peftlab represent`")
    tensors = load(data)
    layers = {int(name.split("_")[1]): arr for name, arr in tensors.items()}
    return dict(sorted(layers.items())), manifest


# ----------------------------------------------------------------------------- the stage


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


def represent_stage(ctx: Context) -> None:
    """Extract (or reuse) the base's and every finished run's representations on every task."""
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
        for key, rc, source in todo:
            dataset = _extract_one(ctx, task, key, rc, runs[0], probe, phash, dataset, settings,
                                   source)


def _extract_one(ctx: Context, task: str, key: str, rc: RunConfig | None, first: RunConfig,
                 probe: pd.DataFrame, phash: str, dataset: Any, settings: dict[str, Any],
                 source: str) -> Any:
    """Extract one model's representations, write file + manifest; return the encoded probe."""
    from peftlab.encode import encode_frame
    from peftlab.finetune import load_base, load_tuned
    from peftlab.models import model_family

    cfg = ctx.study.spec.represent
    m = ctx.study.spec.model
    if rc is None:
        # The base classifier gets a fresh head for the task; the head reads the last hidden
        # state and never changes it, so any run config of the task gives the same vectors.
        tokenizer, model = load_base(ctx, first)
    else:
        tokenizer, model = load_tuned(ctx, rc.run_id, device=ctx.device)
    model.eval()
    if dataset is None:  # every model of a task shares the base tokenizer: encode once
        dataset = encode_frame(probe, tokenizer, max_length=m.max_length,
                               pair_template=m.pair_template,
                               is_regression=ctx.task(task).is_regression)
    who = f"represent {task}: " + ("the base model" if rc is None else f"run {rc.run_id}")
    t0 = time.perf_counter()
    reps = extract(model, tokenizer, dataset, pooling=settings["pooling"],
                   batch_size=cfg.batch_size, device=ctx.device)
    seconds = time.perf_counter() - t0
    data = encode_representations(reps, cfg.dtype, who)
    path = representation_path(ctx.store, task, key)
    atomic_write_bytes(path, data)
    n_layers, n, d = reps.shape
    ctx.store.put(TABLE, f"{task}/{key}", {
        "task": task,
        "key": key,
        "run_id": None if rc is None else rc.run_id,
        "method": None if rc is None else rc.method,
        "method_type": None if rc is None else rc.method_type,
        "seed": None if rc is None else rc.seed,
        "n": n,
        "d": d,
        "layers": n_layers,
        "layer_names": layer_names(n_layers),
        "pooling": settings["pooling"],
        "dtype": cfg.dtype,
        "model_family": model_family(model),
        "padding_side": tokenizer.padding_side,
        "pad_token_id": pad_token_id(model, tokenizer),
        "probe_hash": phash,
        "probe_rows": [int(r) for r in probe["row"]] if "row" in probe.columns else None,
        "probe_samples": cfg.probe_samples,
        "probe_seed": cfg.probe_seed,
        "settings": settings,
        "source": source,
        "file": str(path.relative_to(ctx.store.root)),
        "bytes": len(data),
        "content_sha256": hashlib.sha256(data).hexdigest(),
        "extract_time_s": seconds,
        "examples_per_s": n / seconds if seconds > 0 else None,
        "provenance": provenance(stage_device=ctx.device,
                                 data_checksum_eval=ctx.data_checksum(task, "eval")),
    })
    ctx.console.print(f"{who}: {n} examples x {n_layers} layers x {d} features "
                      f"({settings['pooling']} pooling) in {seconds:.1f} s")
    del model
    return dataset
