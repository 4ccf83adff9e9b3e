"""Tokenisation of task frames, batch padding and the "last real token" rule.

    ds = encode_frame(df, tokenizer, max_length=128)          # no padding yet
    loader = DataLoader(ds, batch_size=16, collate_fn=make_collator(tokenizer))

A task frame has columns text_a, optional text_b, label (and row, the example's index in its split);
texts are already normalised by the data loaders (e.g. trailing whitespace stripped). The encoded
dataset keeps the frame's row order, so its i-th example is the frame's i-th row.
"""

from __future__ import annotations

import string
from typing import Any

from transformers import DataCollatorWithPadding

from peftlab.errors import DataError, ModelError

# Encoded columns. `length` (tokens before padding) is metadata for bucketing and statistics; the
# collator drops it so that the batch holds model inputs and labels only.
METADATA_COLUMNS = ("length",)
_BATCH = 1000  # rows per fast-tokenizer call: large enough to use its parallel batch path


def check_pair_template(template: str) -> None:
    """Reject a pair template that does not use both `{a}` and `{b}` exactly once (or others)."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as err:
        raise ModelError(f"pair_template {template!r} is not a valid format string: {err}") from err
    if sorted(fields) != ["a", "b"]:
        raise ModelError(
            f"pair_template {template!r} must contain {{a}} and {{b}} once each (the two texts "
            f"of a pair), found fields {fields}; write literal braces as {{{{ and }}}}"
        )


def _pair_mode(tokenizer: Any) -> str:
    """"native" when the tokenizer has a separator token (BERT: [CLS] a [SEP] b [SEP]), else
    "template": Llama-style tokenizers have none and would glue the two texts together."""
    return "native" if getattr(tokenizer, "sep_token", None) is not None else "template"


def encode_frame(
    df: Any,
    tokenizer: Any,
    *,
    max_length: int,
    pair_template: str = "{a}\n{b}",
    label_dtype: str = "int64",
) -> Any:
    """Tokenise a task frame into a `datasets.Dataset`, one example per row, same order.

    Columns: input_ids (list[int], <= max_length), attention_mask (all ones: no padding here),
    token_type_ids (only when the tokenizer produces them, e.g. BERT), labels (`label_dtype`:
    "int64" class ids, or "float32" scores, the task kind's `label_dtype`), length (int, number
    of tokens).
    Pairs (a text_b column with no missing values): with a separator token the tokenizer gets
    (text_a, text_b) and truncates the longer text first; without one the texts are joined with
    `pair_template` ("{a}\\n{b}") into a single text, truncated at the end.
    """
    import datasets

    if not isinstance(max_length, int) or max_length < 2:
        raise ModelError(f"max_length must be an integer >= 2, got {max_length!r}")
    missing = [c for c in ("text_a", "label") if c not in df.columns]
    if missing:
        raise DataError(f"task frame is missing column(s) {missing}; has {list(df.columns)}")
    texts_a = [str(t) for t in df["text_a"].tolist()]
    texts_b = _second_texts(df)
    mode = _pair_mode(tokenizer)
    if texts_b is not None and mode == "template":
        check_pair_template(pair_template)
        texts_a = [pair_template.format(a=a, b=b) for a, b in zip(texts_a, texts_b, strict=True)]
        texts_b = None

    if label_dtype not in ("int64", "float32"):
        raise ModelError(f"label_dtype must be 'int64' or 'float32', got {label_dtype!r}")
    labels = _labels(df, label_dtype == "float32")
    columns: dict[str, list] = {"input_ids": [], "attention_mask": []}
    wants_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    if wants_types:
        columns["token_type_ids"] = []
    for start in range(0, len(texts_a), _BATCH):
        stop = start + _BATCH
        encoded = tokenizer(
            texts_a[start:stop],
            texts_b[start:stop] if texts_b is not None else None,
            truncation="longest_first" if texts_b is not None else True,
            max_length=max_length,
            padding=False,
            return_token_type_ids=wants_types,
            return_attention_mask=True,
        )
        for key in columns:
            columns[key].extend(encoded[key])
    columns["labels"] = labels
    columns["length"] = [len(ids) for ids in columns["input_ids"]]

    features = {
        "input_ids": datasets.List(datasets.Value("int32")),
        "attention_mask": datasets.List(datasets.Value("int8")),
    }
    if wants_types:
        features["token_type_ids"] = datasets.List(datasets.Value("int8"))
    features["labels"] = datasets.Value(label_dtype)
    features["length"] = datasets.Value("int32")
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


def _second_texts(df: Any) -> list[str] | None:
    """text_b as strings, or None for single-text tasks (no column, or a column of all missing)."""
    if "text_b" not in df.columns:
        return None
    missing = df["text_b"].isna()
    if missing.all():
        return None
    if missing.any():
        rows = df.loc[missing, "row"].tolist()[:5] if "row" in df.columns else []
        raise DataError(f"text_b is missing in {int(missing.sum())} of {len(df)} rows "
                        f"(rows {rows}...): a pair task needs both texts in every row")
    return [str(t) for t in df["text_b"].tolist()]


def _labels(df: Any, scores: bool) -> list:
    labels = df["label"]
    if labels.isna().any():
        raise DataError(f"label is missing in {int(labels.isna().sum())} of {len(df)} rows")
    values = labels.tolist()
    if scores:
        try:
            return [float(v) for v in values]
        except (TypeError, ValueError) as err:
            raise DataError(f"regression labels must be numbers: {err}") from err
    if all(_is_integral(v) for v in values):
        return [int(v) for v in values]
    bad = next(v for v in values if not _is_integral(v))
    raise DataError(f"classification labels must be integer class ids; got {bad!r} "
                    "(map label names to ids first; non-integer numbers mean a regression task)")


def _is_integral(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError):
        return False


class _Collator(DataCollatorWithPadding):
    """DataCollatorWithPadding that drops metadata columns (module level so it pickles into
    DataLoader worker processes)."""

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        features = [{k: v for k, v in f.items() if k not in METADATA_COLUMNS} for f in features]
        return super().__call__(features)


def make_collator(tokenizer: Any, pad_to: int | None = None) -> Any:
    """Batch padder: pads input_ids/attention_mask/token_type_ids on the tokenizer's side.

    pad_to None: to the longest sequence in the batch; an int: to exactly that length (fixed
    shapes for benchmarks). Returns torch tensors [batch, seq]; labels [batch] (int64 or float32).
    `length` is dropped.
    """
    if pad_to is None:
        return _Collator(tokenizer=tokenizer, padding="longest", return_tensors="pt")
    if not isinstance(pad_to, int) or pad_to < 1:
        raise ModelError(f"pad_to must be a positive integer or None, got {pad_to!r}")
    return _Collator(tokenizer=tokenizer, padding="max_length", max_length=pad_to,
                     return_tensors="pt")


def last_token_index(input_ids: Any, attention_mask: Any, pad_token_id: int | None) -> Any:
    """Index of each row's last real token: LongTensor [batch] from input_ids/mask [batch, seq].

    A position is real when its attention mask is 1 and (if a pad id is given) its id is not the pad
    id. This is the rule `LlamaForSequenceClassification` applies (rightmost id != pad id; it
    ignores the mask), so pooled vectors match what the head reads under right padding; the mask
    term makes it right under left padding too, and for tokenizers without a pad id. A row with no
    real token gets index 0, as in the head.
    """
    import torch

    real = attention_mask.to(torch.bool)
    if pad_token_id is not None:
        real = real & (input_ids != pad_token_id)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device)
    return (positions * real.to(positions.dtype)).argmax(dim=-1)


def iter_batches(dataset: Any, tokenizer: Any, batch_size: int, device: Any,
                 pad_to: int | None = None) -> Any:
    """Padded model inputs for an `encode_frame` dataset, in dataset order (the one batching path
    of evaluation, extraction and every other forward pass peftlab makes outside the Trainer).

    Yields dicts of LongTensors [batch, seq] on `device`: input_ids, attention_mask and, when
    the dataset has them, token_type_ids (labels are left out: no loss is computed). Padding is on
    the tokenizer's side, to the longest example of the batch or to `pad_to` tokens.
    """
    collator = make_collator(tokenizer, pad_to=pad_to)
    cols = [c for c in ("input_ids", "attention_mask", "token_type_ids")
            if c in dataset.column_names]
    for start in range(0, len(dataset), batch_size):
        rows = dataset[start:start + batch_size]
        feats = [{c: rows[c][i] for c in cols} for i in range(len(rows["input_ids"]))]
        yield {k: v.to(device) for k, v in collator(feats).items()}


def predict(model: Any, dataset: Any, tokenizer: Any, batch_size: int, device: Any,
            pad_to: int | None = None) -> Any:
    """Logits for every example, in dataset order: float32 array [n, num_labels]."""
    import numpy as np
    import torch

    out = []
    with torch.inference_mode():
        for batch in iter_batches(dataset, tokenizer, batch_size, device, pad_to):
            out.append(model(**batch).logits.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)
