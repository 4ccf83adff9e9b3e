"""Share of a per-run quantity's variance that each factor (method, seed, ...) explains:
sequential sums of squares of an additive model."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from peftlab.errors import DegenerateInputError
from peftlab.stats.base import _REL_TOL, _Record, _scale


@dataclass(frozen=True)
class VarianceDecomposition(_Record):
    """Sequential (type I) sums of squares of `value` for each factor, in the order given, then the
    residual. `shares` are fractions of the total sum of squares and sum to 1."""

    value: str
    factors: tuple[str, ...]
    n: int
    total_ss: float
    sum_squares: dict[str, float]
    dof: dict[str, int]
    shares: dict[str, float]




def variance_decomposition(
    df: pd.DataFrame, value: str, factors: Sequence[str] = ("method", "seed")
) -> VarianceDecomposition:
    """Share of the variance of `value` explained by each factor (additive model) and the residual.

    df: one row per independent run with the `value` column and one column per factor.
    Sums of squares are sequential (type I): each factor's SS is the drop in residual SS when its
    dummy columns are added, by least squares, to a model holding the factors before it. In a
    balanced layout this equals the classical between-level SS (pandas groupby means) and the order
    does not matter; in an unbalanced one the order does (earlier factors take shared variance).
    Interactions are not modelled: with one run per cell they cannot be told from the residual.
    Raises DegenerateInputError when `value` is constant.
    """
    factors = tuple(factors)
    missing = [c for c in (value, *factors) if c not in df.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    y = df[value].to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"column {value!r} contains NaN or inf: filter failed runs first")
    total = float(np.sum((y - y.mean()) ** 2))
    if total <= (_REL_TOL * _scale(y)) ** 2 * y.size:
        raise DegenerateInputError(f"{value!r} is constant: no variance to decompose")

    design = np.ones((y.size, 1))
    prev_rss, prev_rank = total, 1
    ss: dict[str, float] = {}
    dof: dict[str, int] = {}
    for factor in factors:
        dummies = pd.get_dummies(df[factor].astype(str), drop_first=True, dtype=float).to_numpy()
        design = np.hstack([design, dummies])
        beta, *_ = np.linalg.lstsq(design, y, rcond=None)
        resid = y - design @ beta
        rss = float(resid @ resid)
        rank = int(np.linalg.matrix_rank(design))
        ss[factor], dof[factor] = max(prev_rss - rss, 0.0), rank - prev_rank
        prev_rss, prev_rank = rss, rank
    ss["residual"], dof["residual"] = prev_rss, y.size - prev_rank
    shares = {k: v / total for k, v in ss.items()}
    return VarianceDecomposition(value, factors, int(y.size), total, ss, dof, shares)
