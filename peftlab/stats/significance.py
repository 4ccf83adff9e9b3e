"""Significance tests of paired runs and the paired effect size: the paired t-test, the exact
Wilcoxon signed-rank test (valid with ties), the sign-flip permutation test and Cohen's d_z with
its noncentral-t interval. a, b: one value per independent run, paired by index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import optimize
from scipy import stats as st

from peftlab.stats.base import (
    _REL_TOL,
    RANK_TEST,
    T_TEST,
    _pair,
    _Record,
    _scale,
    _t_pvalue,
    zero_spread_reason,
)

# Largest n for which the permutation test enumerates all 2^n sign flips (65,536 rows).
_EXACT_PERMUTATION_MAX_N = 16


@dataclass(frozen=True)
class HypothesisTestResult(_Record):
    """One significance test. `estimate` is what the test is about, in the inputs' unit: the mean
    difference a - b for the t-test and the permutation test, the median difference for the rank
    test. `ci_low`/`ci_high` is its `confidence` interval where the test defines one, else None.
    `statistic` and `pvalue` are None when the test is undefined for these data (`note` says
    why), e.g. the t statistic of differences with zero spread."""

    test: str
    statistic: float | None
    pvalue: float | None
    n_a: int
    n_b: int
    df: float | None
    alternative: str
    estimate: float
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    method: str = ""
    note: str = ""


@dataclass(frozen=True)
class EffectSize(_Record):
    """A standardized effect size (unitless) with its confidence interval."""

    name: str
    value: float
    ci_low: float
    ci_high: float
    confidence: float
    n_a: int
    n_b: int
    method: str




def paired_ttest(a: Any, b: Any, confidence: float = 0.95) -> HypothesisTestResult:
    """Paired t-test of mean(a - b) = 0 (two-sided), as scipy.stats.ttest_rel.

    a, b: one value per independent run, paired by index (same seed), in any common unit.
    Also returns the mean difference with its `confidence` t-interval. With zero spread of the
    differences (see `zero_spread_reason`) t is undefined: statistic, p-value and interval are
    None and `note` gives the reason.
    """
    a, b = _pair(a, b)
    d = a - b
    n = d.size
    common = {"test": T_TEST, "n_a": n, "n_b": n, "df": float(n - 1),
              "alternative": "two-sided", "estimate": float(d.mean()), "confidence": confidence}
    reason = zero_spread_reason(a, b)
    if reason is not None:
        return HypothesisTestResult(statistic=None, pvalue=None, note=reason, **common)
    se = d.std(ddof=1) / math.sqrt(n)
    t = float(d.mean() / se)
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * se
    return HypothesisTestResult(
        statistic=t, pvalue=_t_pvalue(t, n - 1, "two-sided"),
        ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), **common,
    )


def _signed_rank_null_counts(doubled_ranks: np.ndarray) -> np.ndarray:
    """counts[s] = number of the 2^n sign assignments whose positive ranks sum to s (ranks doubled
    so that tied average ranks, multiples of 1/2, are integers). Subset-sum dynamic programme:
    exact, O(n * sum of ranks), and valid with ties, unlike the classical untied table."""
    counts = np.zeros(int(doubled_ranks.sum()) + 1, dtype=float)
    counts[0] = 1.0
    for r in doubled_ranks.astype(int):
        counts[r:] = counts[r:] + counts[: counts.size - r].copy()
    return counts


def wilcoxon_signed_rank(a: Any, b: Any, alternative: str = "two-sided") -> HypothesisTestResult:
    """Wilcoxon signed-rank test on the paired differences a - b, exact.

    a, b: one value per independent run, paired by index. alternative: "two-sided", "greater"
    (a - b tends to be positive) or "less". Zero differences are dropped before ranking (scipy's
    default `zero_method="wilcox"`); tied |differences| get average ranks. The p-value is computed
    from the exact permutation distribution of the signed-rank sum given those (possibly tied)
    ranks, enumerated by dynamic programming for any n. Without ties or zeros this equals
    scipy.stats.wilcoxon(method="exact"); with ties it is the exact conditional test (scipy's
    "exact" would use the untied table). With all differences zero, statistic 0 and p = 1.

    The statistic is min(R+, R-) two-sided and R+ one-sided, as scipy reports them. Note the
    floor: with n pairs the smallest possible two-sided p is 2 / 2^n (0.25 at n = 3, 0.0625 at
    n = 5), one-sided 1 / 2^n.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(
            f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    a, b = _pair(a, b, min_n=1)
    d = a - b
    scale = _scale(a, b)
    median = float(np.median(d))
    d = d[np.abs(d) > _REL_TOL * scale]
    n_used = d.size
    note = f"{a.size - n_used} zero difference(s) dropped" if n_used < a.size else ""
    if n_used == 0:
        return HypothesisTestResult(
            test=RANK_TEST, statistic=0.0, pvalue=1.0, n_a=a.size, n_b=a.size,
            df=None, alternative=alternative, estimate=median, method="exact", note=note,
        )
    doubled = np.rint(2 * st.rankdata(np.abs(d))).astype(int)
    r_plus = int(doubled[d > 0].sum())
    counts = _signed_rank_null_counts(doubled)
    cdf = np.cumsum(counts) / counts.sum()
    p_le = float(cdf[r_plus])
    p_ge = float(1.0 - (cdf[r_plus - 1] if r_plus > 0 else 0.0))
    has_ties = np.unique(doubled).size < doubled.size
    r_minus = int(doubled.sum()) - r_plus
    if alternative == "two-sided":
        statistic, pvalue = min(r_plus, r_minus) / 2.0, min(1.0, 2.0 * min(p_le, p_ge))
    else:
        statistic, pvalue = r_plus / 2.0, (p_ge if alternative == "greater" else p_le)
    return HypothesisTestResult(
        test=RANK_TEST, statistic=statistic, pvalue=float(min(1.0, pvalue)), n_a=a.size,
        n_b=a.size, df=None, alternative=alternative, estimate=median,
        method="exact (tied ranks)" if has_ties else "exact", note=note,
    )


def paired_permutation_test(
    a: Any, b: Any, n_permutations: int = 10000, seed: int = 0
) -> HypothesisTestResult:
    """Sign-flip permutation test of mean(a - b) = 0, two-sided.

    a, b: one value per independent run, paired by index. Under the null each difference is equally
    likely to have either sign. With n <= 16 pairs all 2^n sign flips are enumerated (exact p);
    otherwise `n_permutations` random flips drawn with `seed`, p = (hits + 1) / (n_permutations + 1)
    so that it is never 0. Two-sided p counts flips with |mean| >= |observed mean|.
    """
    a, b = _pair(a, b, min_n=1)
    d = a - b
    n = d.size
    observed = abs(d.mean())
    # Flipped means that equal the observed one up to rounding must count as "as extreme".
    threshold = observed - 1e-9 * (np.abs(d).mean() + 1e-300)
    if n <= _EXACT_PERMUTATION_MAX_N:
        bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
        means = (1 - 2 * bits) @ d / n
        hits, total, adjust, method = int(np.sum(np.abs(means) >= threshold)), 2**n, 0, "exact"
    else:
        rng = np.random.default_rng(seed)
        hits = 0
        chunk = max(1, 1_000_000 // n)  # bound memory at ~1e6 signs per block
        for start in range(0, n_permutations, chunk):
            rows = min(chunk, n_permutations - start)
            signs = rng.choice(np.array([-1.0, 1.0]), size=(rows, n))
            hits += int(np.sum(np.abs(signs @ d / n) >= threshold))
        total, adjust, method = n_permutations, 1, f"Monte Carlo ({n_permutations} sign flips)"
    return HypothesisTestResult(
        test="paired permutation", statistic=float(d.mean()),
        pvalue=(hits + adjust) / (total + adjust), n_a=n, n_b=n, df=None,
        alternative="two-sided", estimate=float(d.mean()), method=method,
    )




def _nct_ncp_interval(t_obs: float, df: float, confidence: float) -> tuple[float, float]:
    """Confidence interval for the noncentrality parameter of a noncentral t given observed t:
    the ncp values at which t_obs sits at the upper/lower (1 - confidence)/2 tail (test inversion).
    scipy's nct.cdf returns NaN for large t with very negative ncp, so we solve for |t| and reflect
    (cdf(t; ncp) = 1 - cdf(-t; -ncp)), and bracket from ncp = t, where the cdf is near 1/2."""
    if not math.isfinite(t_obs):
        return math.nan, math.nan
    sign = -1.0 if t_obs < 0 else 1.0
    t = abs(t_obs)
    tail = (1 - confidence) / 2

    def f(ncp: float, target: float) -> float:
        value = st.nct.cdf(t, df, ncp)
        if not math.isfinite(value):
            raise FloatingPointError(f"nct.cdf({t}, {df}, {ncp}) is not finite")
        return value - target

    # The cdf decreases in ncp. Lower bound: cdf = 1 - tail. If already reached at ncp = 0 (a
    # significant t) the root lies in [0, t]; otherwise it is negative and t is moderate.
    if f(0.0, 1 - tail) > 0:
        lo_bracket = (0.0, t)
    else:
        step = 1.0
        while f(-step, 1 - tail) <= 0:
            step *= 2
        lo_bracket = (-step, 0.0)
    lower = optimize.brentq(f, *lo_bracket, args=(1 - tail,), xtol=1e-10)
    step = 1.0
    while f(t + step, tail) >= 0:
        step *= 2
    upper = optimize.brentq(f, t, t + step, args=(tail,), xtol=1e-10)
    if sign > 0:
        return lower, upper
    return -upper, -lower


def cohens_dz(a: Any, b: Any, confidence: float = 0.95) -> EffectSize:
    """Cohen's d_z for paired runs: mean(a - b) / std(a - b, ddof=1) (unitless, no small-sample
    correction). a, b: one value per independent run, paired by index.

    Interval: exact under normality, by inverting the noncentral t distribution (scipy.stats.nct) of
    t = d_z * sqrt(n) with n - 1 df, then dividing the ncp bounds by sqrt(n). Consequently the
    interval excludes 0 exactly when the paired t-test has p < 1 - confidence.
    """
    a, b = _pair(a, b)
    d = a - b
    n = d.size
    sd = d.std(ddof=1)
    method = "noncentral t"
    if sd <= _REL_TOL * _scale(a, b):
        return EffectSize("d_z", math.nan, math.nan, math.nan, confidence, n, n,
                          method + "; undefined: zero spread of differences")
    dz = float(d.mean() / sd)
    lo, hi = _nct_ncp_interval(dz * math.sqrt(n), n - 1, confidence)
    return EffectSize("d_z", dz, lo / math.sqrt(n), hi / math.sqrt(n), confidence, n, n, method)
