"""Corrections for multiplicity over a declared family of p-values: Holm and Bonferroni."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from peftlab.stats.base import CORRECTIONS


def _pvalues(pvalues: Sequence[float]) -> np.ndarray:
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ValueError("pvalues must be a flat sequence")
    if np.any(~np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(f"p-values must be finite and in [0, 1], got {p.tolist()}")
    return p


def bonferroni(pvalues: Sequence[float]) -> list[float]:
    """Bonferroni-adjusted p-values over the declared family: min(1, m * p), in input order."""
    p = _pvalues(pvalues)
    return np.minimum(1.0, p * p.size).tolist()


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values over the declared family, in input order.

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))
    (running maximum keeps them monotone). Rejecting adjusted p < alpha controls the family-wise
    error rate at alpha, like Bonferroni, but is uniformly more powerful.
    """
    p = _pvalues(pvalues)
    m = p.size
    order = np.argsort(p, kind="stable")
    stepped = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(stepped)
    return adjusted.tolist()


def adjust_pvalues(pvalues: Sequence[float], method: str = "holm") -> list[float]:
    """Dispatch to `holm` or `bonferroni` by name."""
    if method == "holm":
        return holm(pvalues)
    if method == "bonferroni":
        return bonferroni(pvalues)
    raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
