"""Statistics for comparing methods across independent runs: tests, effect sizes, corrections,
equivalence and intervals. Pure functions; every result is a frozen dataclass with `as_dict()`.

Unit of analysis: every `a`/`b` argument holds ONE VALUE PER INDEPENDENT RUN (a seed, i.e. a
separately trained model or a separately repeated benchmark process), e.g. the median latency of
each run in ms or the accuracy of each seed. Never pass per-request latencies or per-example scores:
they are not independent and would make any difference "significant". For paired functions, `a[i]`
and `b[i]` come from the same unit (same seed, same task, same machine session).

Degenerate inputs follow stated conventions instead of returning NaN p-values:
- a t statistic whose standard error is zero (all differences equal, up to 1e-12 of the data's
  scale) is 0 with p = 1 when the mean difference is zero too, and +/-inf with p = 0 otherwise;
- effect sizes whose standard deviation is zero are undefined: value and interval are NaN.

    python -c "from peftlab.stats import compare; print(compare([10.1, 10.3, 10], [7.6, 7.5, 8]))"
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize, special
from scipy import stats as st

from peftlab.errors import DegenerateInputError

OUTCOMES = ("significant", "equivalent", "inconclusive", "insufficient runs")
CORRECTIONS = ("holm", "bonferroni")

# Standard deviations this small relative to the data's magnitude are rounding noise, not spread.
_REL_TOL = 1e-12
# scipy >= 1.15 takes `rng`; older releases (the project allows 1.11) call it `random_state`.
_BOOTSTRAP_RNG_KW = "rng" if "rng" in inspect.signature(st.bootstrap).parameters else "random_state"
# Largest n for which the permutation test enumerates all 2^n sign flips (65,536 rows).
_EXACT_PERMUTATION_MAX_N = 16


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


@dataclass(frozen=True)
class HypothesisTestResult(_Record):
    """One significance test. `estimate` is what the test is about, in the inputs' unit: the mean
    difference a - b for the t-tests and the permutation test, the median difference for the rank
    tests. `ci_low`/`ci_high` is its `confidence` interval where the test defines one, else None."""

    test: str
    statistic: float
    pvalue: float
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


@dataclass(frozen=True)
class Interval(_Record):
    """A point estimate with a confidence interval, in the unit of the statistic."""

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    method: str


@dataclass(frozen=True)
class TostResult(_Record):
    """Two one-sided tests for equivalence of a - b to zero within [low, high] (inputs' unit).

    `pvalue` = max(p_lower, p_upper); `ci_low`/`ci_high` is the (1 - 2*alpha) interval of the mean
    difference; `equivalent` is `pvalue < alpha`, i.e. that interval lies inside [low, high]."""

    test: str
    estimate: float
    low: float
    high: float
    margin: float
    relative: bool
    p_lower: float
    p_upper: float
    pvalue: float
    ci_low: float
    ci_high: float
    alpha: float
    equivalent: bool
    df: float
    n_a: int
    n_b: int


@dataclass(frozen=True)
class Comparison(_Record):
    """Everything the report says about one comparison "a vs b" (see `compare`).

    Units: `mean_a`, `mean_b`, `diff` (= mean_a - mean_b) and its CI and `tost_low`/`tost_high` are
    in the inputs' unit; `rel_diff` = mean_a / mean_b - 1 is a fraction (0.35 = a is 35% higher);
    `effect` is d_z (paired) or Hedges' g (unpaired). All intervals are at `confidence` = 1 - alpha,
    except the TOST interval (1 - 2*alpha, its own definition). Fields are None when not computed.
    `outcome` is decided from `p_adjusted` (and `tost_p_adjusted`) after `apply_correction`; a fresh
    `compare` result is a family of one (`correction="none"`, `family_size=1`).
    """

    label: str
    status: str  # "ok" or "insufficient runs"
    outcome: str  # one of OUTCOMES
    paired: bool
    n: int  # pairs when paired, n_a + n_b otherwise
    n_a: int
    n_b: int
    alpha: float
    confidence: float
    mean_a: float | None = None
    mean_b: float | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    rel_diff: float | None = None
    rel_diff_ci_low: float | None = None
    rel_diff_ci_high: float | None = None
    test: str | None = None
    statistic: float | None = None
    df: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    rank_test: str | None = None
    rank_statistic: float | None = None
    rank_p: float | None = None
    effect_name: str | None = None
    effect: float | None = None
    effect_ci_low: float | None = None
    effect_ci_high: float | None = None
    equivalence_margin: float | None = None
    margin_relative: bool | None = None
    tost_low: float | None = None
    tost_high: float | None = None
    tost_p: float | None = None
    tost_p_adjusted: float | None = None
    equivalent: bool | None = None
    correction: str = "none"
    family_size: int = 1
    note: str = ""


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


def _two(a: Any, b: Any, min_n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    a, b = _sample(a, "a"), _sample(b, "b")
    if a.size < min_n or b.size < min_n:
        raise ValueError(f"need at least {min_n} runs per group, got {a.size} and {b.size}")
    return a, b


def _scale(*arrays: np.ndarray) -> float:
    return max(float(np.max(np.abs(x))) for x in arrays if x.size) or 1.0


def _t_ratio(estimate: float, se: float, scale: float) -> float:
    """estimate / se with the module's zero-spread convention (see module docstring)."""
    if se > _REL_TOL * scale:
        return float(estimate / se)
    if abs(estimate) <= _REL_TOL * scale:
        return 0.0
    return math.copysign(math.inf, estimate)


def _t_pvalue(t: float, df: float, alternative: str) -> float:
    if alternative == "two-sided":
        return float(min(1.0, 2.0 * st.t.sf(abs(t), df)))
    if alternative == "greater":
        return float(st.t.sf(t, df))
    if alternative == "less":
        return float(st.t.cdf(t, df))
    raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")


def _welch_parts(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Standard error of mean(a) - mean(b) without assuming equal variances, and the
    Welch-Satterthwaite degrees of freedom (n_a + n_b - 2 when both variances are zero)."""
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if va + vb == 0:
        return se, float(a.size + b.size - 2)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    return se, float(df)


# --------------------------------------------------------------------------- tests


def paired_ttest(a: Any, b: Any, confidence: float = 0.95) -> HypothesisTestResult:
    """Paired t-test of mean(a - b) = 0 (two-sided), as scipy.stats.ttest_rel.

    a, b: one value per independent run, paired by index (same seed), in any common unit.
    Also returns the mean difference with its `confidence` t-interval.
    """
    a, b = _pair(a, b)
    d = a - b
    n = d.size
    se = d.std(ddof=1) / math.sqrt(n)
    t = _t_ratio(d.mean(), se, _scale(a, b))
    half = st.t.ppf(0.5 + confidence / 2, n - 1) * se
    return HypothesisTestResult(
        test="paired t-test", statistic=t, pvalue=_t_pvalue(t, n - 1, "two-sided"), n_a=n, n_b=n,
        df=float(n - 1), alternative="two-sided", estimate=float(d.mean()),
        ci_low=float(d.mean() - half), ci_high=float(d.mean() + half), confidence=confidence,
    )


def welch_ttest(a: Any, b: Any, confidence: float = 0.95) -> HypothesisTestResult:
    """Welch's unequal-variance t-test of mean(a) = mean(b) (two-sided), as
    scipy.stats.ttest_ind(equal_var=False). a, b: one value per independent run, unpaired."""
    a, b = _two(a, b)
    se, df = _welch_parts(a, b)
    est = float(a.mean() - b.mean())
    t = _t_ratio(est, se, _scale(a, b))
    half = st.t.ppf(0.5 + confidence / 2, df) * se
    return HypothesisTestResult(
        test="Welch t-test", statistic=t, pvalue=_t_pvalue(t, df, "two-sided"), n_a=a.size,
        n_b=b.size, df=df, alternative="two-sided", estimate=est, ci_low=est - half,
        ci_high=est + half, confidence=confidence,
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


def wilcoxon_signed_rank(a: Any, b: Any) -> HypothesisTestResult:
    """Wilcoxon signed-rank test on the paired differences a - b, two-sided, exact.

    a, b: one value per independent run, paired by index. Zero differences are dropped before
    ranking (scipy's default `zero_method="wilcox"`); tied |differences| get average ranks. The
    p-value is computed from the exact permutation distribution of the signed-rank sum given those
    (possibly tied) ranks, enumerated by dynamic programming for any n. Without ties or zeros this
    equals scipy.stats.wilcoxon(method="exact"); with ties it is the exact conditional test (scipy's
    "exact" would use the untied table). With all differences zero, statistic 0 and p = 1.

    The statistic is min(R+, R-), as scipy reports it. Note the floor: with n pairs the smallest
    possible two-sided p is 2 / 2^n (0.25 at n = 3, 0.0625 at n = 5).
    """
    a, b = _pair(a, b, min_n=1)
    d = a - b
    scale = _scale(a, b)
    median = float(np.median(d))
    d = d[np.abs(d) > _REL_TOL * scale]
    n_used = d.size
    note = f"{a.size - n_used} zero difference(s) dropped" if n_used < a.size else ""
    if n_used == 0:
        return HypothesisTestResult(
            test="Wilcoxon signed-rank", statistic=0.0, pvalue=1.0, n_a=a.size, n_b=a.size,
            df=None, alternative="two-sided", estimate=median, method="exact", note=note,
        )
    doubled = np.rint(2 * st.rankdata(np.abs(d))).astype(int)
    r_plus = int(doubled[d > 0].sum())
    counts = _signed_rank_null_counts(doubled)
    cdf = np.cumsum(counts) / counts.sum()
    p_le = cdf[r_plus]
    p_ge = 1.0 - (cdf[r_plus - 1] if r_plus > 0 else 0.0)
    has_ties = np.unique(doubled).size < doubled.size
    r_minus = int(doubled.sum()) - r_plus
    return HypothesisTestResult(
        test="Wilcoxon signed-rank", statistic=min(r_plus, r_minus) / 2.0,
        pvalue=float(min(1.0, 2.0 * min(p_le, p_ge))), n_a=a.size, n_b=a.size, df=None,
        alternative="two-sided", estimate=median,
        method="exact (tied ranks)" if has_ties else "exact", note=note,
    )


def mann_whitney(a: Any, b: Any) -> HypothesisTestResult:
    """Mann-Whitney U (Wilcoxon rank-sum) test, two-sided, the rank test for unpaired runs.
    a, b: one value per independent run. Exact p-value when there are no ties (scipy
    method="exact"), otherwise scipy's normal approximation with tie correction."""
    a, b = _two(a, b, min_n=1)
    has_ties = np.unique(np.concatenate([a, b])).size < a.size + b.size
    method = "asymptotic" if has_ties else "exact"
    res = st.mannwhitneyu(a, b, alternative="two-sided", method=method)
    return HypothesisTestResult(
        test="Mann-Whitney U", statistic=float(res.statistic), pvalue=float(res.pvalue),
        n_a=a.size, n_b=b.size, df=None, alternative="two-sided",
        estimate=float(np.median(a) - np.median(b)), method=method,
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


# --------------------------------------------------------------------------- effect sizes


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


def _hedges_correction(df: float) -> float:
    """Exact small-sample bias correction J(df) = Gamma(df/2) / (sqrt(df/2) Gamma((df-1)/2))."""
    log_ratio = special.gammaln(df / 2) - special.gammaln((df - 1) / 2)
    return float(math.exp(log_ratio) / math.sqrt(df / 2))


def hedges_g(a: Any, b: Any, confidence: float = 0.95) -> EffectSize:
    """Hedges' g for unpaired runs: (mean(a) - mean(b)) / pooled SD, times the exact bias
    correction J(n_a + n_b - 2) (unitless). a, b: one value per independent run.

    Interval: noncentral t inversion of the pooled two-sample t (n_a + n_b - 2 df), converted to the
    d scale and multiplied by J. It excludes 0 exactly when Student's (pooled-variance) t-test has
    p < 1 - confidence; `compare` still tests with Welch's t, which does not assume equal variances.
    """
    a, b = _two(a, b)
    df = a.size + b.size - 2
    pooled = math.sqrt(((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / df)
    method = "noncentral t, exact J correction"
    if pooled <= _REL_TOL * _scale(a, b):
        return EffectSize("hedges_g", math.nan, math.nan, math.nan, confidence, a.size, b.size,
                          method + "; undefined: zero spread within groups")
    j = _hedges_correction(df)
    d = (a.mean() - b.mean()) / pooled
    k = math.sqrt(1 / a.size + 1 / b.size)
    lo, hi = _nct_ncp_interval(d / k, df, confidence)
    return EffectSize("hedges_g", float(j * d), j * lo * k, j * hi * k, confidence, a.size,
                      b.size, method)


# --------------------------------------------------------------------------- multiplicity


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


# --------------------------------------------------------------------------- equivalence


def _tost(est: float, se: float, df: float, low: float, high: float, scale: float,
          alpha: float) -> tuple[float, float, float, float]:
    """(p_lower, p_upper, ci_low, ci_high) of TOST for a t-distributed estimate."""
    p_lower = _t_pvalue(_t_ratio(est - low, se, scale), df, "greater")  # H0: diff <= low
    p_upper = _t_pvalue(_t_ratio(est - high, se, scale), df, "less")  # H0: diff >= high
    half = st.t.ppf(1 - alpha, df) * se
    return p_lower, p_upper, est - half, est + half


def _bounds(margin: float, relative: bool, b: np.ndarray) -> tuple[float, float]:
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    width = abs(margin * b.mean()) if relative else margin
    if width == 0:
        raise DegenerateInputError("relative equivalence margin is 0 because mean(b) is 0")
    return -width, width


def tost_paired(a: Any, b: Any, margin: float, relative: bool = True,
                alpha: float = 0.05) -> TostResult:
    """Paired equivalence test (two one-sided paired t-tests) of mean(a - b) within +/- the margin.

    a, b: one value per independent run, paired by index. With `relative=True`, `margin` is a
    fraction of mean(b) (0.03: "a within +/-3% of b", bounds +/-0.03 * mean(b)); otherwise it is in
    the inputs' unit. mean(b) is treated as known when setting relative bounds, which is accurate
    when its run-to-run spread is small next to the margin.
    """
    a, b = _pair(a, b)
    low, high = _bounds(margin, relative, b)
    d = a - b
    se = d.std(ddof=1) / math.sqrt(d.size)
    df = float(d.size - 1)
    p_lo, p_hi, ci_lo, ci_hi = _tost(float(d.mean()), se, df, low, high, _scale(a, b), alpha)
    p = max(p_lo, p_hi)
    return TostResult("TOST paired t", float(d.mean()), low, high, margin, relative, p_lo, p_hi, p,
                      ci_lo, ci_hi, alpha, bool(p < alpha), df, d.size, d.size)


def tost_welch(a: Any, b: Any, margin: float, relative: bool = True,
               alpha: float = 0.05) -> TostResult:
    """Unpaired equivalence test (two one-sided Welch t-tests) of mean(a) - mean(b) within +/- the
    margin. a, b: one value per independent run. `margin`/`relative` as in `tost_paired`."""
    a, b = _two(a, b)
    low, high = _bounds(margin, relative, b)
    se, df = _welch_parts(a, b)
    est = float(a.mean() - b.mean())
    p_lo, p_hi, ci_lo, ci_hi = _tost(est, se, df, low, high, _scale(a, b), alpha)
    p = max(p_lo, p_hi)
    return TostResult("TOST Welch t", est, low, high, margin, relative, p_lo, p_hi, p, ci_lo,
                      ci_hi, alpha, bool(p < alpha), df, a.size, b.size)


# --------------------------------------------------------------------------- intervals


def _is_vectorized(statistic: Callable[..., Any]) -> bool:
    try:
        return "axis" in inspect.signature(statistic).parameters
    except (TypeError, ValueError):
        return False


def bootstrap_ci(
    data: Any,
    statistic: Callable[..., Any],
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    paired: bool = False,
    method: str = "percentile",
) -> Interval:
    """Bootstrap confidence interval of `statistic` via scipy.stats.bootstrap.

    data: a 1-D array of values (one per independent unit), or a *tuple* `(a, b)` of two samples, in
    which case `statistic(a, b)` is called; `paired=True` resamples the pairs (a[i], b[i]) together.
    A statistic that accepts an `axis` keyword is evaluated vectorised.
    method: "percentile" or "bca". BCa is bias- and skew-corrected but is undefined on degenerate
    resamples (e.g. constant data); then the percentile interval is returned and `method` says so.
    With few units (3-5 seeds) bootstrap intervals are too narrow; prefer t-based intervals there.
    """
    samples = tuple(_sample(x, "data") for x in data) if isinstance(data, tuple) else (
        _sample(data, "data"),)
    if method not in ("percentile", "bca"):
        raise ValueError(f"method must be 'percentile' or 'bca', got {method!r}")
    vectorized = _is_vectorized(statistic)
    estimate = float(statistic(*samples, axis=-1) if vectorized else statistic(*samples))

    def run(scipy_method: str) -> Any:
        with np.errstate(all="ignore"):
            return st.bootstrap(
                samples, statistic, n_resamples=n_resamples, confidence_level=confidence,
                paired=paired, vectorized=vectorized, method=scipy_method,
                **{_BOOTSTRAP_RNG_KW: np.random.default_rng(seed)},
            )

    used = method
    if method == "bca":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: handled by the fallback below
            res = run("BCa")
        ci = res.confidence_interval
        if not (np.isfinite(ci.low) and np.isfinite(ci.high)):
            res, used = run("percentile"), "percentile (BCa undefined for these data)"
    else:
        res = run("percentile")
    return Interval(estimate, float(res.confidence_interval.low),
                    float(res.confidence_interval.high), confidence, f"bootstrap {used}")


def _mean_ratio_minus_one(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis) - 1.0


def relative_difference_ci(
    a: Any,
    b: Any,
    paired: bool = True,
    confidence: float = 0.95,
    method: str = "delta",
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Relative difference mean(a) / mean(b) - 1 (a fraction: 0.35 means a is 35% above b), with a
    confidence interval. a, b: one value per independent run (paired by index when `paired`).

    method="delta" (default): first-order delta method with a t quantile. Paired, this is the
    t-interval of the linearised values (a_i - R b_i) / mean(b) with n - 1 df, R = mean(a)/mean(b);
    unpaired, se^2 = (s_a^2/n_a + R^2 s_b^2/n_b) / mean(b)^2 with Welch-Satterthwaite df. It
    behaves sensibly with 3-5 runs, where a bootstrap cannot. method="bootstrap": percentile
    `bootstrap_ci` of the same statistic.
    """
    a, b = _pair(a, b) if paired else _two(a, b)
    mb = b.mean()
    if mb == 0:
        raise DegenerateInputError("relative difference undefined: mean(b) is 0")
    ratio = a.mean() / mb
    if method == "bootstrap":
        iv = bootstrap_ci((a, b), _mean_ratio_minus_one, n_resamples=n_resamples,
                          confidence=confidence, seed=seed, paired=paired)
        return replace(iv, estimate=float(ratio - 1))
    if method != "delta":
        raise ValueError(f"method must be 'delta' or 'bootstrap', got {method!r}")
    if paired:
        z = (a - ratio * b) / mb
        se = z.std(ddof=1) / math.sqrt(z.size)
        df = float(z.size - 1)
    else:
        u_a = a.var(ddof=1) / a.size / mb**2
        u_b = ratio**2 * b.var(ddof=1) / b.size / mb**2
        se = math.sqrt(u_a + u_b)
        df = ((u_a + u_b) ** 2 / (u_a**2 / (a.size - 1) + u_b**2 / (b.size - 1))
              if u_a + u_b > 0 else float(a.size + b.size - 2))
    half = st.t.ppf(0.5 + confidence / 2, df) * se
    return Interval(float(ratio - 1), float(ratio - 1 - half), float(ratio - 1 + half), confidence,
                    "delta method, t quantile")


# --------------------------------------------------------------------------- one-stop comparison


def _decide(p_adjusted: float, tost_p_adjusted: float | None, alpha: float) -> str:
    if p_adjusted < alpha:
        return "significant"
    if tost_p_adjusted is not None and tost_p_adjusted < alpha:
        return "equivalent"
    return "inconclusive"


def compare(
    a: Any,
    b: Any,
    paired: bool = True,
    alpha: float = 0.05,
    equivalence_margin: float | None = None,
    min_n: int = 3,
    margin_relative: bool = True,
    label: str = "",
) -> Comparison:
    """Compare runs of condition a with runs of condition b: the stats stage's one entry point.

    a, b: one value per independent run (seed), paired by index when `paired`, in any common unit.
    With fewer than `min_n` runs in a group, no test runs: status and outcome "insufficient runs".
    Otherwise: paired t-test (Welch if unpaired) as the decision test; Wilcoxon signed-rank (Mann-
    Whitney if unpaired) alongside; d_z (Hedges' g) with CI; mean difference and relative difference
    with CIs at 1 - alpha; TOST when `equivalence_margin` is given (a fraction of mean(b) when
    `margin_relative`, else in the inputs' unit). The outcome is provisional (family of one) until
    `apply_correction` is run over the whole declared family.
    """
    a_arr, b_arr = _sample(a, "a"), _sample(b, "b")
    if paired and a_arr.size != b_arr.size:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    n = a_arr.size if paired else a_arr.size + b_arr.size
    common: dict[str, Any] = {
        "label": label, "paired": paired, "n": n, "n_a": a_arr.size, "n_b": b_arr.size,
        "alpha": alpha, "confidence": 1 - alpha, "equivalence_margin": equivalence_margin,
        "margin_relative": margin_relative if equivalence_margin is not None else None,
    }
    if min(a_arr.size, b_arr.size) < max(min_n, 2):
        means = {k: float(x.mean()) for k, x in (("mean_a", a_arr), ("mean_b", b_arr)) if x.size}
        return Comparison(status="insufficient runs", outcome="insufficient runs",
                          note=f"fewer than {max(min_n, 2)} runs per group", **means, **common)

    notes = []
    if paired:
        test = paired_ttest(a_arr, b_arr, 1 - alpha)
        rank = wilcoxon_signed_rank(a_arr, b_arr)
        effect = cohens_dz(a_arr, b_arr, 1 - alpha)
        tost = (tost_paired(a_arr, b_arr, equivalence_margin, margin_relative, alpha)
                if equivalence_margin is not None else None)
    else:
        test = welch_ttest(a_arr, b_arr, 1 - alpha)
        rank = mann_whitney(a_arr, b_arr)
        effect = hedges_g(a_arr, b_arr, 1 - alpha)
        tost = (tost_welch(a_arr, b_arr, equivalence_margin, margin_relative, alpha)
                if equivalence_margin is not None else None)
    rel_fields: dict[str, float] = {}
    try:
        rel = relative_difference_ci(a_arr, b_arr, paired=paired, confidence=1 - alpha)
        rel_fields = {"rel_diff": rel.estimate, "rel_diff_ci_low": rel.ci_low,
                      "rel_diff_ci_high": rel.ci_high}
    except DegenerateInputError as err:  # mean(b) == 0: report the rest, say why this is missing
        notes.append(err.reason)
    if rank.note:
        notes.append(f"{rank.test}: {rank.note}")
    if paired and 2.0 / 2**a_arr.size >= alpha:  # smallest exact two-sided p is 2 / 2^n
        notes.append(f"{rank.test} cannot reach p < {alpha} with {a_arr.size} pairs")
    if not math.isfinite(effect.value):
        notes.append(f"{effect.name} undefined: zero spread")
    tost_p = tost.pvalue if tost else None
    return Comparison(
        status="ok", outcome=_decide(test.pvalue, tost_p, alpha),
        mean_a=float(a_arr.mean()), mean_b=float(b_arr.mean()), diff=test.estimate,
        diff_ci_low=test.ci_low, diff_ci_high=test.ci_high, **rel_fields,
        test=test.test, statistic=test.statistic, df=test.df, p=test.pvalue, p_adjusted=test.pvalue,
        rank_test=rank.test, rank_statistic=rank.statistic, rank_p=rank.pvalue,
        effect_name=effect.name, effect=effect.value, effect_ci_low=effect.ci_low,
        effect_ci_high=effect.ci_high,
        tost_low=tost.low if tost else None, tost_high=tost.high if tost else None,
        tost_p=tost_p, tost_p_adjusted=tost_p, equivalent=tost.equivalent if tost else None,
        note="; ".join(notes), **common,
    )


def apply_correction(comparisons: Sequence[Comparison], method: str = "holm") -> list[Comparison]:
    """Correct a declared family of comparisons for multiplicity and set each final `outcome`.

    The family is every comparison with status "ok" (untested "insufficient runs" entries carry no
    p-value and are passed through unchanged). The decision-test p-values are adjusted together;
    the TOST p-values of the comparisons that have a margin form a second family, adjusted the
    same way. Outcome: "significant" if p_adjusted < alpha, else "equivalent" if the adjusted TOST
    p < alpha, else "inconclusive". Returns new Comparison objects in the input order.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    tested = [i for i, c in enumerate(comparisons) if c.status == "ok"]
    with_margin = [i for i in tested if comparisons[i].tost_p is not None]
    p_adj = dict(zip(tested, adjust_pvalues([comparisons[i].p for i in tested], method),
                     strict=True))
    tost_adj = dict(zip(with_margin,
                        adjust_pvalues([comparisons[i].tost_p for i in with_margin], method),
                        strict=True))
    out = []
    for i, c in enumerate(comparisons):
        if i not in p_adj:
            out.append(c)
            continue
        t_adj = tost_adj.get(i)
        out.append(replace(
            c, p_adjusted=p_adj[i], tost_p_adjusted=t_adj,
            equivalent=None if t_adj is None else bool(t_adj < c.alpha),
            outcome=_decide(p_adj[i], t_adj, c.alpha), correction=method, family_size=len(tested),
        ))
    return out


# --------------------------------------------------------------------------- variance


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
