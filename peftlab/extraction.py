"""Pooled per-layer hidden states: extraction from a model, and their storage in a study directory.

    reps = extract(model, tokenizer, dataset, pooling="last", batch_size=32)   # [layers, n, hidden]
    both = extract(model, tokenizer, dataset, pooling=["last", "mean"], batch_size=32)  # one pass
    data = encode_representations(reps, "float32", who)                       # safetensors bytes
    layers, manifest = load_representations(store, "sst2", "base")            # primary pooling
    layers, manifest = load_representations(store, "sst2", "base", "mean")    # another one
    diag = token_diagnostic(pooled_token_ids(ids, "last", pad), tokenizer)   # readout check

Pooling (`pooled_forward`): one forward pass with every hidden state, then per layer one vector
per example:

- `last`: the last real token, found with `encode.last_token_index`: the rightmost position whose
  attention mask is 1 and whose id is not the pad id. That is the token a Llama classification head
  reads (it looks for the pad id and ignores the mask), and it is right under left padding too.
- `mean`: the mean over positions whose attention mask is 1.
- `first`: the first real token (the leftmost position whose attention mask is 1): what a BERT
  classification head reads ([CLS], through its pooler).
- `auto`: `last` for decoder models, `mean` for encoders (`models.model_family`).

Several poolings (`pooling=["last", "mean"]`) come from one forward pass per batch: the hidden
states are computed once and pooled each way. The pooling the classification head reads
(`head_pooling`: `last` for decoders, `first` for encoders) is the primary one when it is listed,
else the first one listed (`primary_pooling`); the others are exploratory readouts.

Pooled-token diagnostic (`pooled_token_ids`, `token_diagnostic`): under `last` or `first`
pooling every probe is read at one token; when most probes share that token (SmolLM2 reads the
space token `Ġ` at the end of every unstripped SST-2 sentence), the readout holds a content-free
position and its drift numbers say little about the sentence.

Layer 0 is the embedding output, layer i the output of block i; the last layer is what transformers
returns as the last hidden state (for Llama: after the final RMSNorm, i.e. what the head reads).

Storage: `represent/<task>/<key>.safetensors` (key "base" or the run id), one tensor `layer_NNN`
of shape (n_examples, hidden_size) per layer, with a manifest record in the `represent` table under
"<task>/<key>" (written by the represent stage) whose sha256 every reader checks. That is the
primary pooling; each exploratory pooling sits beside it in `represent/<task>/<pooling>/<key>`
with its manifest under "<task>/<key>/<pooling>" (`manifest_key`).
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
POOLINGS = ("last", "mean", "first")
TOKEN_POOLINGS = ("last", "first")  # poolings that read one token (the diagnostic's)


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


def resolve_pooling(pooling: str | list[str], model_or_config: Any) -> str:
    """"last", "mean" or "first": `pooling` itself, or for "auto" the default of the model's
    family. A list (the spec's `represent.pooling: [last, mean]`) gives its primary pooling
    (`primary_pooling`): what a single-readout consumer (the forgetting probes) pools with."""
    if isinstance(pooling, (list, tuple)):
        return primary_pooling(resolve_poolings(pooling, model_or_config), model_or_config)
    if pooling == "auto":
        from peftlab.models import model_family

        return "last" if model_family(model_or_config) == "decoder" else "mean"
    if pooling not in POOLINGS:
        raise PeftlabError(f"pooling must be 'auto' or one of {', '.join(POOLINGS)}, "
                           f"got {pooling!r}")
    return pooling


def resolve_poolings(pooling: str | list[str], model_or_config: Any) -> list[str]:
    """Every configured pooling resolved ("auto" -> the family's default), in spec order,
    each once."""
    names = [pooling] if isinstance(pooling, str) else list(pooling)
    return list(dict.fromkeys(resolve_pooling(p, model_or_config) for p in names))


def head_pooling(model_or_config: Any) -> str:
    """The token the model's classification head reads: "last" for decoders (Llama's head reads
    the last non-pad token), "first" for encoders (BERT's pooler reads [CLS])."""
    from peftlab.models import model_family

    return "last" if model_family(model_or_config) == "decoder" else "first"


def primary_pooling(poolings: list[str], model_or_config: Any) -> str:
    """The primary readout of resolved `poolings`: the one the head reads when it is listed,
    else the first listed (a single pooling is always primary)."""
    head = head_pooling(model_or_config)
    return head if head in poolings else poolings[0]


def manifest_key(task: str, key: str, pooling: str | None = None) -> str:
    """Key of a representation manifest in the `represent` table: "<task>/<key>" for the primary
    pooling (pooling None), "<task>/<key>/<pooling>" for an exploratory one."""
    return f"{task}/{key}" if pooling is None else f"{task}/{key}/{pooling}"


def pad_token_id(model: Any, tokenizer: Any) -> int | None:
    """The pad id the classification head looks for (the model config's), else the tokenizer's."""
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    pad = getattr(text_config, "pad_token_id", None)
    return int(pad) if pad is not None else tokenizer.pad_token_id


def pooled_forward(model: Any, batch: dict[str, Any], *, pooling: str | list[str],
                   pad_token_id: int | None) -> Any:
    """One forward pass with every hidden state, pooled: float32 tensor [layers, batch, hidden],
    or for a list of poolings {pooling: tensor [layers, batch, hidden]} from that same pass.

    layers = 1 (embeddings) + number of blocks. Call under `torch.inference_mode()`. Padding is
    never read: `last` and `first` gather one real position per row, `mean` zeroes padded
    positions with `masked_fill` (not a multiplication, which would turn a NaN at a padded
    position into a NaN mean). Under left padding, position ids count from each row's first real
    token, as they do under right padding, so the same example gets the same vectors on either
    side (for models whose forward takes position_ids; all Llama-family and BERT models do).
    """
    names = [pooling] if isinstance(pooling, str) else list(pooling)
    bad = [p for p in names if p not in POOLINGS]
    if bad or not names:
        raise PeftlabError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    mask = batch["attention_mask"]
    inputs = dict(batch)
    if bool((mask[:, 0] == 0).any()) and _takes_position_ids(model):
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    hidden = model(**inputs, output_hidden_states=True).hidden_states
    if hidden is None:
        raise ModelError(f"{type(model).__name__} returned no hidden states for "
                         "output_hidden_states=True, so its representations cannot be extracted")
    pooled = {p: _pool(hidden, batch, mask, p, pad_token_id) for p in names}
    return pooled[pooling] if isinstance(pooling, str) else pooled


def _pool(hidden: Any, batch: dict[str, Any], mask: Any, pooling: str,
          pad_token_id: int | None) -> Any:
    """One pooling of a forward pass's hidden states (a tuple of [batch, seq, hidden])."""
    import torch

    if pooling in TOKEN_POOLINGS:
        idx = token_index(batch["input_ids"], mask, pooling, pad_token_id)
        rows = torch.arange(idx.shape[0], device=idx.device)
        return torch.stack([h[rows, idx] for h in hidden]).float()
    real = mask.bool().unsqueeze(-1)  # [batch, seq, 1]
    counts = real.sum(dim=1).clamp(min=1).float()  # [batch, 1]; an all-padding row gives zeros
    return torch.stack([h.float().masked_fill(~real, 0.0).sum(dim=1) / counts for h in hidden])


def token_index(input_ids: Any, attention_mask: Any, pooling: str, pad_token_id: int | None
                ) -> Any:
    """The position `last` or `first` pooling reads in each row: LongTensor [batch].

    last: `encode.last_token_index` (what a Llama head reads); first: the leftmost position whose
    attention mask is 1 (under left padding the first real token, not position 0).
    """
    from peftlab.encode import last_token_index

    if pooling == "last":
        return last_token_index(input_ids, attention_mask, pad_token_id)
    # argmax returns the first maximum: the first position whose mask is 1 (0 for an empty row)
    return attention_mask.to(input_ids.dtype).argmax(dim=-1)


def _takes_position_ids(model: Any) -> bool:
    """Whether the transformers model (inside a PEFT wrapper, if any) accepts position_ids
    (DistilBERT, for one, does not)."""
    import inspect

    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    return "position_ids" in inspect.signature(inner.forward).parameters


def extract(model: Any, tokenizer: Any, dataset: Any, *, pooling: str | list[str],
            batch_size: int, device: Any = "cpu", pad_to: int | None = None
            ) -> np.ndarray | dict[str, np.ndarray]:
    """Pooled hidden states of every layer for every example: float32 [layers, n, hidden]; for
    a list of poolings {pooling: float32 [layers, n, hidden]}, all from the same forward passes.

    dataset: an `encode.encode_frame` dataset; row i of each layer is its example i. `pooling`
    is "last", "mean" or "first" (see `resolve_pooling`), or a list of them; one forward pass per
    batch of `batch_size` whatever the number of poolings.
    """
    import torch

    from peftlab.encode import iter_batches

    if len(dataset) == 0:
        raise PeftlabError("the probe set is empty: nothing to extract")
    names = [pooling] if isinstance(pooling, str) else list(pooling)
    pad = pad_token_id(model, tokenizer)
    out: dict[str, torch.Tensor] = {}
    start = 0
    with torch.inference_mode():
        for batch in iter_batches(dataset, tokenizer, batch_size, device, pad_to):
            pooled = pooled_forward(model, batch, pooling=names, pad_token_id=pad)
            for name, tensor in pooled.items():
                tensor = tensor.cpu()
                if name not in out:
                    out[name] = torch.empty((tensor.shape[0], len(dataset), tensor.shape[2]))
                out[name][:, start:start + tensor.shape[1]] = tensor
            start += next(iter(pooled.values())).shape[1]
    arrays = {name: t.numpy() for name, t in out.items()}
    return arrays[pooling] if isinstance(pooling, str) else arrays


# ----------------------------------------------------------------------------- diagnostic


def pooled_token_ids(input_ids: list[list[int]], pooling: str, pad_token_id: int | None
                     ) -> np.ndarray:
    """The token id `last` or `first` pooling reads for each example: int64 [n].

    input_ids: each example's unpadded ids (an `encode_frame` dataset's column). The rule is
    `token_index`'s on an unpadded row: last = the rightmost id that is not the pad id (index 0
    when every id is), first = the first id.
    """
    if pooling not in TOKEN_POOLINGS:
        raise PeftlabError(f"the pooled-token diagnostic needs 'last' or 'first' pooling, "
                           f"got {pooling!r}")
    out = np.empty(len(input_ids), dtype=np.int64)
    for i, ids in enumerate(input_ids):
        if not ids:
            raise PeftlabError(f"probe example {i} has no tokens")
        if pooling == "first":
            out[i] = ids[0]
            continue
        real = [j for j, t in enumerate(ids) if pad_token_id is None or t != pad_token_id]
        out[i] = ids[real[-1] if real else 0]
    return out


def token_kind(text: str) -> str:
    """"whitespace" (empty once stripped), "punctuation" (every character a Unicode punctuation
    or symbol), else "content": what a decoded token is."""
    import unicodedata

    stripped = text.strip()
    if not stripped:
        return "whitespace"
    if all(unicodedata.category(ch)[0] in "PS" for ch in stripped):
        return "punctuation"
    return "content"


def token_diagnostic(ids: np.ndarray, tokenizer: Any, *, top: int = 5,
                     warn_share: float = 0.5) -> dict[str, Any]:
    """What a single-token readout reads over a probe set.

    ids: the pooled token id of each probe (`pooled_token_ids`). Returns {n, distinct,
    top_share (share of probes whose pooled token is the most common id, 0..1), top: [{id,
    token (the tokenizer's own piece, e.g. "Ġ"), text (decoded, e.g. " "), kind (whitespace /
    punctuation / content), special, count, share}] for the `top` most common ids (ties by id),
    top_is_whitespace, top_is_punctuation, top_is_special, warn (top_share > warn_share),
    warn_share}.
    """
    ids = np.asarray(ids, dtype=np.int64)
    if ids.size == 0:
        raise PeftlabError("the pooled-token diagnostic needs at least one probe")
    values, counts = np.unique(ids, return_counts=True)
    order = np.lexsort((values, -counts))  # most common first, ties by id
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    rows = []
    for i in order[:top]:
        tid, count = int(values[i]), int(counts[i])
        text = tokenizer.decode([tid])
        piece = tokenizer.convert_ids_to_tokens(tid)
        rows.append({"id": tid, "token": str(piece), "text": text, "kind": token_kind(text),
                     "special": tid in special, "count": count, "share": count / ids.size})
    head = rows[0]
    return {"n": int(ids.size), "distinct": int(values.size), "top_share": head["share"],
            "top": rows, "top_is_whitespace": head["kind"] == "whitespace",
            "top_is_punctuation": head["kind"] == "punctuation",
            "top_is_special": head["special"], "warn": head["share"] > warn_share,
            "warn_share": warn_share}


# ----------------------------------------------------------------------------- storage


def layer_names(n_layers: int) -> list[str]:
    """["embeddings", "block_1", ..., "block_<n_layers - 1>"]: what each stored layer is."""
    return ["embeddings"] + [f"block_{i}" for i in range(1, n_layers)]


def representation_path(store: Store, task: str, key: str, pooling: str | None = None) -> Path:
    """The file of one model's vectors: the primary pooling's (pooling None) or an exploratory
    pooling's, in a folder of its own beside it."""
    if pooling is None:
        return store.path("represent", task, f"{key}.safetensors")
    return store.path("represent", task, pooling, f"{key}.safetensors")


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


def load_representations(store: Store, task: str, key: str, pooling: str | None = None
                         ) -> tuple[dict[int, np.ndarray], dict[str, Any]]:
    """({layer index: array (n_examples, hidden_size)}, manifest record) of one model on a task.

    key: "base" or a run id. pooling: None for the primary pooling, or a pooling name (the
    primary one's name reads the primary file too). Arrays are in the stored dtype (float32 or
    float16). Raises PeftlabError when nothing was extracted, or when the file is missing or not
    the one its manifest describes (checked by sha256).
    """
    from safetensors.numpy import load

    manifest = store.get(TABLE, manifest_key(task, key))
    if pooling is not None and (manifest is None or manifest.get("pooling") != pooling):
        manifest = store.get(TABLE, manifest_key(task, key, pooling))
    who = "the base model" if key == BASE_KEY else f"run {key}"
    if pooling is not None:
        who += f" ({pooling} pooling)"
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
