"""Rank correlation of two per-run quantities: Spearman's rho with a permutation p and a
Fisher-z interval."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from peftlab.stats.base import _pair, _Record

# scipy >= 1.15 takes `rng` in permutation_test too; older releases call it `random_state`.
_PERMUTATION_RNG_KW = ("rng" if "rng" in inspect.signature(st.permutation_test).parameters
                       else "random_state")
SPEARMAN = "Spearman rank correlation"


@dataclass(frozen=True)
class CorrelationResult(_Record):
    """Spearman's rank correlation of two per-run quantities (unitless, -1..1).

    `estimate` is scipy's `spearmanr` statistic (average ranks for ties); `p` is the two-sided
    permutation p-value of the pairing (`p_method`: exact over all n! pairings when n! <=
    n_permutations, else Monte Carlo); the interval is Fisher's z with the Bonett & Wright (2000)
    variance for Spearman's rho, (1 + rho^2 / 2) / (n - 3), at `confidence`. None (with
    `reason`) where undefined: fewer than 4 pairs (no interval) or a constant side (no ranks to
    correlate).
    """

    method: str
    n: int
    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    ci_method: str
    p: float | None
    p_method: str
    reason: str = ""


def rank_correlation(x: Any, y: Any, confidence: float = 0.95, n_permutations: int = 9999,
                     seed: int = 0) -> CorrelationResult:
    """Spearman's rho of paired per-run values x[i], y[i] with a permutation p and a Fisher-z
    interval (see `CorrelationResult`). x, y: 1-D, one value per independent run.

    The permutation test is written over ranks so that it can be vectorised (scipy's
    `permutation_test` with permutation_type="pairings" permutes x's ranks against y's, which
    is what permuting x does to Spearman's rho); with n <= 7 every pairing is enumerated.
    """
    xa, ya = _pair(x, y, min_n=0)
    n = int(xa.size)
    ci_method = "Fisher z, Bonett-Wright variance"
    base = {"method": SPEARMAN, "n": n, "confidence": confidence, "ci_method": ci_method}
    if n < 4:
        return CorrelationResult(estimate=None, ci_low=None, ci_high=None, p=None,
                                 p_method="none", reason=f"{n} pair(s): at least 4 needed",
                                 **base)
    constant = [name for name, v in (("x", xa), ("y", ya)) if np.ptp(v) == 0]
    if constant:
        return CorrelationResult(estimate=None, ci_low=None, ci_high=None, p=None,
                                 p_method="none", reason=f"{' and '.join(constant)} constant "
                                 f"over the {n} runs: nothing to rank", **base)
    rho = float(st.spearmanr(xa, ya).statistic)
    rx, ry = st.rankdata(xa), st.rankdata(ya)
    ryc = ry - ry.mean()

    def statistic(r: np.ndarray, axis: int = -1) -> np.ndarray:
        rc = r - r.mean(axis=axis, keepdims=True)
        return (rc * ryc).sum(axis=axis) / np.sqrt((rc**2).sum(axis=axis) * (ryc**2).sum())

    perm = st.permutation_test((rx,), statistic, permutation_type="pairings",
                               n_resamples=n_permutations, vectorized=True,
                               alternative="two-sided", **{_PERMUTATION_RNG_KW: seed})
    exact = math.factorial(n) <= n_permutations
    z = math.atanh(min(max(rho, -1 + 1e-15), 1 - 1e-15))
    half = float(st.norm.ppf(0.5 + confidence / 2)) * math.sqrt((1 + rho**2 / 2) / (n - 3))
    return CorrelationResult(
        estimate=rho, ci_low=math.tanh(z - half), ci_high=math.tanh(z + half),
        p=float(perm.pvalue),
        p_method=("exact permutation (all pairings)" if exact
                  else f"Monte Carlo permutation ({n_permutations} pairings)"), **base)
