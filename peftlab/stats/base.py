"""What every part of `peftlab.stats` shares: the outcome and test names, the `as_dict()` mixin of
the result dataclasses, and the checks that turn per-run inputs into arrays.

Inputs are one value per independent run (see the package docstring); NaN and inf are refused, so
a failed run must be filtered out explicitly rather than averaged over.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import numpy as np
from scipy import stats as st

OUTCOMES = ("different", "negligible", "equivalent", "inconclusive", "insufficient runs", "void")
STATUSES = ("ok", "insufficient runs", "void")
CORRECTIONS = ("holm", "bonferroni")
T_TEST = "paired t-test"
RANK_TEST = "Wilcoxon signed-rank"

# Standard deviations this small relative to the data's magnitude are rounding noise, not spread.
_REL_TOL = 1e-12


def _plain(value: Any) -> Any:
    """Convert numpy scalars/arrays and nested containers to plain Python (JSON-friendly) values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class _Record:
    """Mixin: `as_dict()` for frozen dataclasses (non-finite floats are kept as float nan/inf)."""

    def as_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- input handling


def _sample(x: Any, name: str) -> np.ndarray:
    """A 1-D float array of per-run values; NaN/inf are refused (a failed run must be filtered out
    explicitly, not silently averaged over)."""
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one value per run), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf: filter failed runs before testing")
    return arr


def _pair(a: Any, b: Any, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a, b = _sample(a, "a"), _sample(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths, got {a.size} and {b.size}")
    if a.size < min_n:
        raise ValueError(f"need at least {min_n} pairs, got {a.size}")
    return a, b


def _scale(*arrays: np.ndarray) -> float:
    return max(float(np.max(np.abs(x))) for x in arrays if x.size) or 1.0


def zero_spread_reason(a: Any, b: Any) -> str | None:
    """Why the paired t statistic of a - b is undefined, or None when it is defined.

    The differences have zero spread when their SD is at most 1e-12 of the data's magnitude:
    rounding noise, not spread (e.g. [800, 810, 790]/872 - [799, 809, 789]/872, one example
    better on every seed, has an SD of 6e-17). Then t = mean / 0 is undefined: inf (or 0/0)
    would claim certainty that three runs cannot give.
    """
    a, b = _pair(a, b)
    d = a - b
    scale = _scale(a, b)
    if d.std(ddof=1) > _REL_TOL * scale:
        return None
    if abs(d.mean()) <= _REL_TOL * scale:
        return "t undefined: every paired difference is 0 (zero spread)"
    return (f"t undefined: every paired difference equals {d.mean():.6g} (zero spread, so the"
            " standard error is 0)")


def _t_pvalue(t: float, df: float, alternative: str) -> float:
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * st.t.sf(abs(t), df)))
    if alternative == "greater":
        return float(st.t.sf(t, df))
    if alternative == "less":
        return float(st.t.cdf(t, df))
    raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
