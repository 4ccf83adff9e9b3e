"""Metrics of generated text against one or several references per input, with bootstrap
replicates over inputs.

    refs = references([("name[X], area[riverside]", ("X is by the river.", "X, riverside."))])
    bleu(refs, np.array(["X is by the river."]))

The unit is the input (one meaning representation, one prompt): `y_true` is an object array of
`References` (the input text and every reference of it) and `y_pred` the one output per input, so
a bootstrap resample draws inputs, never single references (the E2E convention).

Scores come from the field's libraries: corpus BLEU and chrF from sacrebleu (references padded with
None where an input has fewer, as sacrebleu's multi-reference API expects), ROUGE-L from Google's
rouge-score (F-measure, best reference per input, averaged over inputs). Corpus BLEU and chrF are
functions of summed per-input statistics (n-gram matches and totals), so a resample's score is the
score of its count-weighted statistics: `counts (B, n) @ stats (n, k)`, the same number sacrebleu
gives on the resampled corpus, without re-tokenising.

The slot error rate is the E2E challenge's semantic measure in a simple form: the share of an MR's
slot values (`slot[value]`) not found in the output, summed over inputs (missing / all slots).
A value is found when it occurs in the output ignoring case; `familyFriendly[yes|no]` counts as
realised when the output mentions families, children or kids (the value itself is rarely said).
An input that is not an MR has no slots and adds nothing; a corpus with no slots at all gives NaN.
All scores are on a 0-100 scale (the slot error rate in percent).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np


@dataclass(frozen=True)
class References:
    """One input and all of its references (the true side of a text metric)."""

    input: str
    texts: tuple[str, ...]


def references(items: Sequence[tuple[str, Sequence[str]]]) -> np.ndarray:
    """An object array (n,) of `References` from (input, references) pairs."""
    out = np.empty(len(items), dtype=object)
    for i, (inp, refs) in enumerate(items):
        out[i] = References(str(inp), tuple(str(r) for r in refs))
    return out


def _padded_refs(y_true: Sequence[References]) -> list[list[str | None]]:
    """sacrebleu's reference streams: stream j holds every input's j-th reference or None."""
    width = max(len(r.texts) for r in y_true)
    return [[r.texts[j] if j < len(r.texts) else None for r in y_true] for j in range(width)]


@lru_cache(maxsize=1)
def _bleu() -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU()


@lru_cache(maxsize=1)
def _chrf() -> Any:
    from sacrebleu.metrics import CHRF

    return CHRF()


@lru_cache(maxsize=1)
def _rouge() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _stats(scorer: Any, y_true: Sequence[References], y_pred: Sequence[str]) -> np.ndarray:
    """(n, k) per-input sufficient statistics of a sacrebleu corpus metric."""
    return np.asarray(scorer._extract_corpus_statistics([str(p) for p in y_pred],
                                                       _padded_refs(y_true)), dtype=float)


def _from_stats(scorer: Any, stats: np.ndarray) -> np.ndarray:
    """(B,) scores from (B, k) summed statistics."""
    return np.array([scorer._compute_score_from_stats([int(round(v)) for v in row]).score
                     for row in np.atleast_2d(stats)])


def bleu(y_true: Any, y_pred: Any) -> float:
    """Corpus BLEU (sacrebleu defaults: 13a tokenisation, 4-grams) against all references."""
    return float(_bleu().corpus_score([str(p) for p in y_pred], _padded_refs(y_true)).score)


def chrf(y_true: Any, y_pred: Any) -> float:
    """Corpus chrF (sacrebleu, beta 2) against all references."""
    return float(_chrf().corpus_score([str(p) for p in y_pred], _padded_refs(y_true)).score)


def _rouge_l_each(y_true: Sequence[References], y_pred: Sequence[str]) -> np.ndarray:
    scorer = _rouge()
    return np.array([max(scorer.score(ref, str(p))["rougeL"].fmeasure for ref in r.texts)
                     for r, p in zip(y_true, y_pred, strict=True)]) * 100


def rouge_l(y_true: Any, y_pred: Any) -> float:
    """Mean over inputs of the best ROUGE-L F-measure against the input's references (x100)."""
    return float(_rouge_l_each(y_true, y_pred).mean())


_SLOT = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*")
_FAMILY = re.compile(r"famil|child|kid", re.IGNORECASE)


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """[(slot, value)] of an E2E meaning representation ("name[X], area[riverside]");
    [] when the text is not one."""
    parts = [p for p in mr.split("],") if p.strip()]
    out = []
    for p in parts:
        m = _SLOT.fullmatch(p if p.rstrip().endswith("]") else p + "]")
        if m is None:
            return []
        out.append((m.group(1).strip(), m.group(2).strip()))
    return out


def slot_counts(mr: str, output: str) -> tuple[int, int]:
    """(slot values missing from `output`, slots of `mr`) by the rule in the module docstring."""
    slots = parse_mr(mr)
    text = output.lower()
    missing = 0
    for slot, value in slots:
        if slot.lower() == "familyfriendly":
            found = _FAMILY.search(output) is not None
        else:
            found = value.lower() in text
        missing += not found
    return missing, len(slots)


def _slot_stats(y_true: Sequence[References], y_pred: Sequence[str]) -> np.ndarray:
    return np.array([slot_counts(r.input, str(p)) for r, p in zip(y_true, y_pred, strict=True)],
                    dtype=float).reshape(-1, 2)


def slot_error_rate(y_true: Any, y_pred: Any) -> float:
    """Missing slot values over all slot values, in percent (NaN when no input is an MR)."""
    s = _slot_stats(y_true, y_pred).sum(axis=0)
    return float(100 * s[0] / s[1]) if s[1] > 0 else float("nan")


def text_replicates(names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                    counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each text metric on each resample of inputs ((B, n) multiplicities); name -> (B,)."""
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("bleu", "chrf"):
            scorer = _bleu() if name == "bleu" else _chrf()
            out[name] = _from_stats(scorer, counts @ _stats(scorer, y_true, y_pred))
        elif name == "rouge_l":
            out[name] = counts @ _rouge_l_each(y_true, y_pred) / counts.sum(axis=1)
        elif name == "slot_error_rate":
            s = counts @ _slot_stats(y_true, y_pred)
            out[name] = np.where(s[:, 1] > 0, 100 * s[:, 0] / np.maximum(s[:, 1], 1), np.nan)
        else:
            raise ValueError(f"{name!r} is not a text metric")
    return out


def template_sentence(mr: str) -> str:
    """The template baseline's output for an MR: its slot values in MR order, comma-separated,
    with a short label where a bare value would be ambiguous ("near X", "price range cheap",
    "customer rating low", "family friendly"), ending with a full stop."""
    slots = parse_mr(mr)
    if not slots:
        return mr
    values = []
    for slot, value in slots:
        if slot.lower() == "familyfriendly":
            values.append("family friendly" if value.lower() == "yes" else "not family friendly")
        elif slot.lower() == "customer rating":
            values.append(f"customer rating {value}")
        elif slot.lower() == "pricerange":
            values.append(f"price range {value}")
        elif slot.lower() == "near":
            values.append(f"near {value}")
        else:
            values.append(value)
    return ", ".join(values) + "."
