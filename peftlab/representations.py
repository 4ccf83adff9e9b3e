"""Pooled per-layer hidden states: extraction from a model, and their storage in a study directory.

    reps = extract(model, tokenizer, dataset, pooling="last", batch_size=32)   # [layers, n, hidden]
    data = encode_representations(reps, "float32", who)                       # safetensors bytes
    layers, manifest = load_representations(store, "sst2", "base")

Pooling (`pooled_forward`): one forward pass with every hidden state, then per layer one vector
per example:

- `last`: the last real token, found with `encode.last_token_index`: the rightmost position whose
  attention mask is 1 and whose id is not the pad id. That is the token a Llama classification head
  reads (it looks for the pad id and ignores the mask), and it is right under left padding too.
- `mean`: the mean over positions whose attention mask is 1.
- `auto`: `last` for decoder models, `mean` for encoders (`models.model_family`).

Layer 0 is the embedding output, layer i the output of block i; the last layer is what transformers
returns as the last hidden state (for Llama: after the final RMSNorm, i.e. what the head reads).

Storage: `represent/<task>/<key>.safetensors` (key "base" or the run id), one tensor `layer_NNN`
of shape (n_examples, hidden_size) per layer, with a manifest record in the `represent` table under
"<task>/<key>" (written by the represent stage) whose sha256 every reader checks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.errors import ModelError, PeftlabError

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.store import Store

TABLE = "represent"
BASE_KEY = "base"
POOLINGS = ("last", "mean")


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

    from peftlab.encode import iter_batches

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
