"""Statistics for comparing methods across independent runs: tests, effect sizes, corrections,
equivalence, power, intervals and a mixed model across tasks. Pure functions; every result is a
frozen dataclass with `as_dict()`.

Unit of analysis: every `a`/`b` argument holds ONE VALUE PER INDEPENDENT RUN (a seed, i.e. a
separately trained model or a separately repeated benchmark process), e.g. the median latency of
each run in ms or the accuracy of each seed. Never pass per-request latencies or per-example scores:
they are not independent and would make any difference "significant". Comparisons are paired:
`a[i]` and `b[i]` come from the same unit (same seed, same task, same machine session).

Degenerate inputs follow stated conventions instead of returning NaN, inf or 0 p-values:
- zero spread of the paired differences (all equal, up to 1e-12 of the data's scale; e.g. one
  example better on every seed) leaves the t statistic undefined: it and its p-value are None
  with the reason, and `compare` decides on the exact Wilcoxon signed-rank test instead (TOST on
  the exact one-sided signed-rank tests), saying so in `decision_test` / `tost_test`;
- effect sizes whose standard deviation is zero are undefined: NaN in `cohens_dz`, None in a
  `Comparison`.

Outcomes (`OUTCOMES`) read significance and equivalence together (Lakens, Scheel & Isager 2018,
"Equivalence testing for psychological research"): "different" (significant, and TOST does not
place the difference inside the declared margin), "negligible" (significant, but TOST places the
whole (1 - 2 alpha) interval inside the margin), "equivalent" (TOST significant, not significant),
"inconclusive" (neither), "insufficient runs" (too few pairs: nothing tested) and "void" (set by
callers for degenerate runs, see `void_comparison`). Without a margin a significant difference is
"different".

    python -c "from peftlab.stats import compare; print(compare([10.1, 10.3, 10], [7.6, 7.5, 8]))"
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any, cast

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as st

from peftlab.errors import DegenerateInputError

OUTCOMES = ("different", "negligible", "equivalent", "inconclusive", "insufficient runs", "void")
STATUSES = ("ok", "insufficient runs", "void")
CORRECTIONS = ("holm", "bonferroni")
T_TEST = "paired t-test"
RANK_TEST = "Wilcoxon signed-rank"

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

    `pvalue` = max(p_lower, p_upper); `equivalent` is `pvalue < alpha`. With spread, the two tests
    are one-sided paired t-tests (`test` "TOST paired t") and `ci_low`/`ci_high` is the
    (1 - 2*alpha) t-interval of the mean difference, which lies inside [low, high] exactly when
    `equivalent`. With zero spread of the differences the t-tests are undefined: the exact
    one-sided Wilcoxon signed-rank tests of d - low > 0 and d - high < 0 are used (`test`
    "TOST exact Wilcoxon signed-rank", `df` and the interval None, `note` says why)."""

    test: str
    estimate: float
    low: float
    high: float
    margin: float
    relative: bool
    p_lower: float
    p_upper: float
    pvalue: float
    ci_low: float | None
    ci_high: float | None
    alpha: float
    equivalent: bool
    df: float | None
    n_a: int
    n_b: int
    note: str = ""


@dataclass(frozen=True)
class Comparison(_Record):
    """Everything the report says about one paired comparison "a vs b" (see `compare`).

    Units: `mean_a`, `mean_b`, `diff` (= mean_a - mean_b), its CI, `tost_low`/`tost_high`,
    `sd_diff` (SD of the paired differences) and `mde_diff` are in the inputs' unit; `rel_diff` =
    mean_a / mean_b - 1 is a fraction (0.35 = a is 35% higher); `effect` and `mde_dz` are d_z
    (unitless). Intervals are at `confidence` = 1 - alpha, except TOST's (1 - 2*alpha). Fields are
    None when not computed or undefined (never NaN/inf).

    Tests: `test`/`statistic`/`df`/`p` are the paired t-test; `statistic` and `p` are None when
    t is undefined (zero spread, `t_undefined_reason` says why). `rank_*` is the exact Wilcoxon
    signed-rank test. `decision_test` names the test whose p-value decides (the t-test, or the
    Wilcoxon test when t is undefined), `decision_p` is its p-value and `p_adjusted` that p-value
    corrected over the family. `tost_test` names the equivalence test used.

    Outcome (one of OUTCOMES) from `p_adjusted` and `tost_p_adjusted` (see `decide_outcome`); a
    fresh `compare` result is a family of one (`correction="none"`, `family_size=1`) until
    `apply_correction` runs over the declared family. `status` is "ok" (tested), "insufficient
    runs" or "void" (not tested; `reason` says why).

    Power (what the study could detect): `mde_dz` is the smallest |d_z| a two-sided paired t-test
    at `mde_alpha` detects with probability `power` at this n (`minimum_detectable_effect`),
    `mde_diff` = mde_dz * sd_diff the same in the inputs' unit, `runs_needed` the fewest pairs
    giving that power for the observed d_z (`runs_needed`; None when d_z is 0 or undefined).
    `mde_alpha` is alpha / family_size: Holm's first (strictest) step, Bonferroni's level.
    """

    label: str
    status: str  # one of STATUSES
    outcome: str  # one of OUTCOMES
    paired: bool  # always True: comparisons are paired by run (seed)
    n: int  # pairs
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
    t_undefined_reason: str | None = None
    rank_test: str | None = None
    rank_statistic: float | None = None
    rank_p: float | None = None
    decision_test: str | None = None
    decision_p: float | None = None
    p_adjusted: float | None = None
    effect_name: str | None = None
    effect: float | None = None
    effect_ci_low: float | None = None
    effect_ci_high: float | None = None
    equivalence_margin: float | None = None
    margin_relative: bool | None = None
    tost_test: str | None = None
    tost_low: float | None = None
    tost_high: float | None = None
    tost_p: float | None = None
    tost_p_adjusted: float | None = None
    equivalent: bool | None = None
    correction: str = "none"
    family_size: int = 1
    sd_diff: float | None = None
    power: float = 0.8
    mde_alpha: float | None = None
    mde_dz: float | None = None
    mde_diff: float | None = None
    runs_needed: int | None = None
    reason: str = ""
    note: str = ""


@dataclass(frozen=True)
class MixedEffectsResult(_Record):
    """Method a vs method b across tasks (see `mixed_effects`).

    `effect` is the mean over tasks of the per-task mean of value_a - value_b (inputs' unit), with
    its `confidence` interval and two-sided p from a t reference with `df` degrees of freedom.
    `fit` says what produced them: "MixedLM (REML)", "OLS on paired differences (fallback)" or
    "none" (not estimable; `reason` says why, and effect/interval/p may be None). `converged` is
    the MixedLM's own flag (None when it was not fitted). `seed_variance` and `residual_variance`
    are the fitted variance of the (task, seed) random intercept and of the residual (squared
    units). `per_task` maps task -> mean difference over its complete pairs. Counts: `n_tasks`
    with at least one complete pair, `n_seeds` distinct seeds among complete pairs, `n_pairs`
    complete (task, seed) pairs, `n_dropped` rows of a or b without their partner.
    """

    value: str
    a: str
    b: str
    fit: str
    effect: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float
    statistic: float | None
    df: float | None
    p: float | None
    n_tasks: int
    n_seeds: int
    n_pairs: int
    n_dropped: int
    converged: bool | None
    seed_variance: float | None
    residual_variance: float | None
    per_task: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    warnings: list[str] = field(default_factory=list)


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


# --------------------------------------------------------------------------- tests


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


def _bounds(margin: float, relative: bool, b: np.ndarray) -> tuple[float, float]:
    if margin <= 0:
        raise ValueError(f"equivalence margin must be > 0, got {margin}")
    width = abs(margin * b.mean()) if relative else margin
    if width == 0:
        raise DegenerateInputError("relative equivalence margin is 0 because mean(b) is 0")
    return -width, width


def tost_paired(a: Any, b: Any, margin: float, relative: bool = True,
                alpha: float = 0.05) -> TostResult:
    """Paired equivalence test (two one-sided tests) of mean(a - b) within +/- the margin.

    a, b: one value per independent run, paired by index. With `relative=True`, `margin` is a
    fraction of mean(b) (0.03: "a within +/-3% of b", bounds +/-0.03 * mean(b)); otherwise it is in
    the inputs' unit. mean(b) is treated as known when setting relative bounds, which is accurate
    when its run-to-run spread is small next to the margin.

    The two one-sided tests are paired t-tests of H0: diff <= low and H0: diff >= high. With zero
    spread of the differences (see `zero_spread_reason`) they are undefined (t = +/-inf would
    give p = 0), and the exact one-sided Wilcoxon signed-rank tests of d - low and d - high
    replace them: at n pairs their smallest p is 1 / 2^n, so three identical differences can never
    be "equivalent" at alpha = 0.05 (p >= 0.125).
    """
    a, b = _pair(a, b)
    low, high = _bounds(margin, relative, b)
    d = a - b
    est = float(d.mean())
    common = {"estimate": est, "low": low, "high": high, "margin": margin, "relative": relative,
              "alpha": alpha, "n_a": d.size, "n_b": d.size}
    reason = zero_spread_reason(a, b)
    if reason is not None:
        zeros = np.zeros_like(d)
        # The signed-rank test is defined for any differences: its p-value is never None.
        p_lo = cast(float, wilcoxon_signed_rank(d - low, zeros, alternative="greater").pvalue)
        p_hi = cast(float, wilcoxon_signed_rank(d - high, zeros, alternative="less").pvalue)
        p = max(p_lo, p_hi)
        return TostResult(test=f"TOST exact {RANK_TEST}", p_lower=p_lo, p_upper=p_hi, pvalue=p,
                          ci_low=None, ci_high=None, equivalent=bool(p < alpha), df=None,
                          note=reason, **common)
    se = d.std(ddof=1) / math.sqrt(d.size)
    df = float(d.size - 1)
    p_lo = _t_pvalue((est - low) / se, df, "greater")  # H0: diff <= low
    p_hi = _t_pvalue((est - high) / se, df, "less")  # H0: diff >= high
    half = st.t.ppf(1 - alpha, df) * se
    p = max(p_lo, p_hi)
    return TostResult(test="TOST paired t", p_lower=p_lo, p_upper=p_hi, pvalue=p,
                      ci_low=est - half, ci_high=est + half, equivalent=bool(p < alpha), df=df,
                      **common)


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
    confidence: float = 0.95,
    method: str = "delta",
    n_resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Relative difference mean(a) / mean(b) - 1 (a fraction: 0.35 means a is 35% above b), with a
    confidence interval. a, b: one value per independent run, paired by index.

    method="delta" (default): first-order delta method with a t quantile, i.e. the t-interval of
    the linearised values (a_i - R b_i) / mean(b) with n - 1 df, R = mean(a)/mean(b). It behaves
    sensibly with 3-5 runs, where a bootstrap cannot. method="bootstrap": paired percentile
    `bootstrap_ci` of the same statistic.
    """
    a, b = _pair(a, b)
    mb = b.mean()
    if mb == 0:
        raise DegenerateInputError("relative difference undefined: mean(b) is 0")
    ratio = a.mean() / mb
    if method == "bootstrap":
        iv = bootstrap_ci((a, b), _mean_ratio_minus_one, n_resamples=n_resamples,
                          confidence=confidence, seed=seed, paired=True)
        return replace(iv, estimate=float(ratio - 1))
    if method != "delta":
        raise ValueError(f"method must be 'delta' or 'bootstrap', got {method!r}")
    z = (a - ratio * b) / mb
    se = z.std(ddof=1) / math.sqrt(z.size)
    half = st.t.ppf(0.5 + confidence / 2, z.size - 1) * se
    return Interval(float(ratio - 1), float(ratio - 1 - half), float(ratio - 1 + half), confidence,
                    "delta method, t quantile")


# --------------------------------------------------------------------------- power


def _paired_t_power(dz: float, n: int, alpha: float) -> float:
    """Power of the two-sided paired t-test at |d_z| = dz with n pairs and level alpha: the
    probability that |T| > t_crit for T noncentral t with n - 1 df and ncp dz * sqrt(n).

    Both tails use the survival function (P(T < -c; ncp) = P(T > c; -ncp)): scipy's nct.cdf
    returns NaN at large ncp, and statsmodels 0.15's TTestPower inherits that (its solve_power
    gives d_z = 4.29 for n = 3, alpha = 0.05/3, where the power there is 0.61, not 0.8)."""
    df = n - 1
    crit = st.t.isf(alpha / 2, df)
    ncp = dz * math.sqrt(n)
    return float(st.nct.sf(crit, df, ncp) + st.nct.sf(crit, df, -ncp))


def _check_power_args(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power}")


def minimum_detectable_effect(n: int, alpha: float, power: float = 0.8) -> float:
    """Smallest |d_z| (unitless: mean difference / SD of the paired differences) that a two-sided
    paired t-test with `n` pairs at level `alpha` detects with probability `power`.

    n = 3, alpha = 0.05: 3.26; under Holm or Bonferroni over 3 tests (alpha = 0.05 / 3): 5.68.
    Multiply by the SD of the differences for the same in the measure's unit
    (`minimum_detectable_difference`). Needs n >= 2 (one pair has no spread to test against).
    """
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (pairs), got {n}")
    _check_power_args(alpha, power)
    return _mde(int(n), float(alpha), float(power))


@functools.lru_cache(maxsize=1024)  # a study asks for the same (n, alpha) for every comparison
def _mde(n: int, alpha: float, power: float) -> float:
    hi = 1.0
    while _paired_t_power(hi, n, alpha) < power:  # power rises with d_z: bracket, then solve
        hi *= 2.0
    return float(optimize.brentq(lambda d: _paired_t_power(d, n, alpha) - power, 0.0, hi,
                                 xtol=1e-10))


def minimum_detectable_difference(sd_diff: float, n: int, alpha: float,
                                  power: float = 0.8) -> float:
    """`minimum_detectable_effect` in the measure's own unit: mde_dz * sd_diff, where sd_diff is
    the (observed) SD of the paired differences a - b, in the unit of a and b."""
    if not (math.isfinite(sd_diff) and sd_diff >= 0):
        raise ValueError(f"sd_diff must be a finite SD >= 0, got {sd_diff}")
    return float(minimum_detectable_effect(n, alpha, power) * sd_diff)


def runs_needed(d: float, alpha: float, power: float = 0.8) -> int | None:
    """Fewest pairs n >= 2 with which a two-sided paired t-test at level `alpha` detects an
    effect of size |d| (d_z, unitless) with probability >= `power`.

    None when no number of runs would: d = 0 (nothing to detect) or d not finite (an undefined
    d_z, e.g. from zero spread). Power grows with n, so the normal approximation
    ((z_{1-alpha/2} + z_power) / d)^2 gives a start and an integer search finds the exact n.
    """
    _check_power_args(alpha, power)
    if not math.isfinite(d) or d == 0:
        return None
    d = abs(float(d))
    guess = max(2, math.floor(((st.norm.isf(alpha / 2) + st.norm.ppf(power)) / d) ** 2))
    lo, hi = 1, guess  # invariant: power(lo) < target (or lo = 1, no test), power(hi) >= target
    while _paired_t_power(d, hi, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and _paired_t_power(d, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return int(max(hi, 2))


# --------------------------------------------------------------------------- one-stop comparison


def decide_outcome(p_adjusted: float, tost_p_adjusted: float | None, alpha: float) -> str:
    """The outcome word from the (corrected) decision p-value and TOST p-value.

    significant = p_adjusted < alpha; equivalent = tost_p_adjusted < alpha (None: no margin).
    significant and equivalent -> "negligible" (different, but the whole TOST interval lies
    inside the margin); significant only -> "different"; equivalent only -> "equivalent";
    neither -> "inconclusive". This is the four-way reading of Lakens, Scheel & Isager (2018).
    """
    significant = p_adjusted < alpha
    equivalent = tost_p_adjusted is not None and tost_p_adjusted < alpha
    if significant:
        return "negligible" if equivalent else "different"
    return "equivalent" if equivalent else "inconclusive"


def _power_fields(n: int, sd_diff: float | None, dz: float | None, alpha: float,
                  power: float) -> dict[str, Any]:
    """The Comparison's power fields at level `alpha` (see Comparison)."""
    mde = minimum_detectable_effect(n, alpha, power)
    return {
        "mde_alpha": float(alpha), "mde_dz": mde,
        "mde_diff": mde * sd_diff if sd_diff else None,  # zero spread: no unit to scale by
        "runs_needed": runs_needed(dz, alpha, power) if dz is not None else None,
    }


def _common(label: str, n: int, alpha: float, equivalence_margin: float | None,
            margin_relative: bool, power: float) -> dict[str, Any]:
    return {"label": label, "paired": True, "n": n, "n_a": n, "n_b": n, "alpha": alpha,
            "confidence": 1 - alpha, "equivalence_margin": equivalence_margin,
            "margin_relative": margin_relative if equivalence_margin is not None else None,
            "power": power}


def _means(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {k: float(x.mean()) for k, x in (("mean_a", a), ("mean_b", b)) if x.size}


def compare(
    a: Any,
    b: Any,
    paired: bool = True,
    alpha: float = 0.05,
    equivalence_margin: float | None = None,
    min_n: int = 3,
    margin_relative: bool = True,
    label: str = "",
    power: float = 0.8,
) -> Comparison:
    """Compare paired runs of condition a with runs of condition b: the stats stage's entry point.

    a, b: one value per independent run (seed), paired by index, in any common unit. `paired`
    must be True (kept so callers can say so; unpaired comparisons are not offered because no
    study design here produces them). With fewer than `min_n` pairs no test runs: status and
    outcome "insufficient runs". Otherwise: paired t-test as the decision test (the exact Wilcoxon
    signed-rank test when t is undefined by zero spread), the Wilcoxon test alongside; d_z with
    CI; mean difference and relative difference with CIs at 1 - alpha; TOST when
    `equivalence_margin` is given (a fraction of mean(b) when `margin_relative`, else in the
    inputs' unit); the minimum detectable effect at this n (`power`). The outcome (see
    `decide_outcome`) is provisional (family of one) until `apply_correction` is run over the
    whole declared family.
    """
    if not paired:
        raise ValueError("compare is paired-only: pass one value per run for a and b, paired by"
                         " seed")
    a_arr, b_arr = _sample(a, "a"), _sample(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    n = a_arr.size
    common = _common(label, n, alpha, equivalence_margin, margin_relative, power)
    needed = max(min_n, 2)
    if n < needed:
        return Comparison(status="insufficient runs", outcome="insufficient runs",
                          reason=f"{n} complete pair(s), fewer than the {needed} needed",
                          **_means(a_arr, b_arr), **common)

    notes = []
    test = paired_ttest(a_arr, b_arr, 1 - alpha)
    rank = wilcoxon_signed_rank(a_arr, b_arr)
    effect = cohens_dz(a_arr, b_arr, 1 - alpha)
    tost = (tost_paired(a_arr, b_arr, equivalence_margin, margin_relative, alpha)
            if equivalence_margin is not None else None)
    t_defined = test.pvalue is not None
    decision = test if t_defined else rank
    if not t_defined:
        notes.append(f"{test.note}; the exact {RANK_TEST} test decides")
    rel_fields: dict[str, float] = {}
    try:
        rel = relative_difference_ci(a_arr, b_arr, confidence=1 - alpha)
        rel_fields = {"rel_diff": rel.estimate, "rel_diff_ci_low": rel.ci_low,
                      "rel_diff_ci_high": rel.ci_high}
    except DegenerateInputError as err:  # mean(b) == 0: report the rest, say why this is missing
        notes.append(err.reason)
    if rank.note:
        notes.append(f"{rank.test}: {rank.note}")
    if 2.0 / 2**n >= alpha:  # smallest exact two-sided p is 2 / 2^n
        notes.append(f"{rank.test} cannot reach p < {alpha} with {n} pairs")
    dz = effect.value if math.isfinite(effect.value) else None
    if dz is None:
        notes.append(f"{effect.name} undefined: zero spread")
    sd_diff = float((a_arr - b_arr).std(ddof=1)) if t_defined else 0.0
    decision_p = cast(float, decision.pvalue)  # the t-test when defined, else the rank test
    tost_p = tost.pvalue if tost else None
    return Comparison(
        status="ok", outcome=decide_outcome(decision_p, tost_p, alpha),
        **_means(a_arr, b_arr), diff=test.estimate,
        diff_ci_low=test.ci_low, diff_ci_high=test.ci_high, **rel_fields,
        test=test.test, statistic=test.statistic, df=test.df, p=test.pvalue,
        t_undefined_reason=None if t_defined else test.note,
        rank_test=rank.test, rank_statistic=rank.statistic, rank_p=rank.pvalue,
        decision_test=decision.test, decision_p=decision_p, p_adjusted=decision_p,
        effect_name=effect.name, effect=dz,
        effect_ci_low=effect.ci_low if dz is not None else None,
        effect_ci_high=effect.ci_high if dz is not None else None,
        tost_test=tost.test if tost else None,
        tost_low=tost.low if tost else None, tost_high=tost.high if tost else None,
        tost_p=tost_p, tost_p_adjusted=tost_p, equivalent=tost.equivalent if tost else None,
        sd_diff=sd_diff, **_power_fields(n, sd_diff, dz, alpha, power),
        note="; ".join(notes), **common,
    )


def void_comparison(
    a: Any,
    b: Any,
    reason: str,
    *,
    alpha: float = 0.05,
    label: str = "",
    equivalence_margin: float | None = None,
    margin_relative: bool = True,
    power: float = 0.8,
) -> Comparison:
    """A comparison that is not evidence: status and outcome "void", `reason` saying why (e.g.
    "every lora run on mrpc is at the majority-class rate"). a, b: the per-run values that
    would have been compared (may be empty; equal lengths), kept as n and means so the record
    still shows what was there. No test is run; `apply_correction` leaves it out of the family.
    """
    if not reason:
        raise ValueError("a void comparison needs its reason")
    a_arr, b_arr = _sample(a, "a"), _sample(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    return Comparison(status="void", outcome="void", reason=reason, **_means(a_arr, b_arr),
                      **_common(label, a_arr.size, alpha, equivalence_margin, margin_relative,
                                power))


def apply_correction(comparisons: Sequence[Comparison], method: str = "holm") -> list[Comparison]:
    """Correct a declared family of comparisons for multiplicity and set each final `outcome`.

    The family is every comparison with status "ok" ("insufficient runs" and "void" entries carry
    no p-value and are passed through unchanged), of any size (one study-wide family of primary
    endpoints is fine). The decision p-values are adjusted together; the TOST p-values of the
    comparisons that have a margin form a second family, adjusted the same way. The outcome is
    then `decide_outcome(p_adjusted, tost_p_adjusted, alpha)`, and the power fields are restated
    at alpha / family size. Returns new Comparison objects in the input order.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    tested = [i for i, c in enumerate(comparisons) if c.status == "ok"]
    with_margin = [i for i in tested if comparisons[i].tost_p is not None]
    p_adj = dict(zip(tested, adjust_pvalues([comparisons[i].decision_p for i in tested], method),
                     strict=True))
    tost_adj = dict(zip(with_margin,
                        adjust_pvalues([comparisons[i].tost_p for i in with_margin], method),
                        strict=True))
    m = len(tested)
    out = []
    for i, c in enumerate(comparisons):
        if i not in p_adj:
            out.append(c)
            continue
        t_adj = tost_adj.get(i)
        out.append(replace(
            c, p_adjusted=p_adj[i], tost_p_adjusted=t_adj,
            equivalent=None if t_adj is None else bool(t_adj < c.alpha),
            outcome=decide_outcome(p_adj[i], t_adj, c.alpha), correction=method, family_size=m,
            **_power_fields(c.n, c.sd_diff, c.effect, c.alpha / m, c.power),
        ))
    return out


def correct_by_family(comparisons: Sequence[Comparison], families: Sequence[Hashable],
                      method: str = "holm") -> list[Comparison]:
    """`apply_correction` over each family separately: families[i] names the family of
    comparisons[i] (e.g. "primary" for the study's pre-declared endpoints, corrected together
    across tasks and areas, and "exploratory/drift/cka" for the rest). Returns the corrected
    comparisons in the input order."""
    if len(families) != len(comparisons):
        raise ValueError(f"need one family per comparison, got {len(families)} for "
                         f"{len(comparisons)}")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(families):
        members[key].append(i)
    out: list[Comparison | None] = [None] * len(comparisons)
    for idx in members.values():
        for i, c in zip(idx, apply_correction([comparisons[i] for i in idx], method),
                        strict=True):
            out[i] = c
    return out  # type: ignore[return-value]  # every index belongs to one family


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


# --------------------------------------------------------------------------- across tasks


def _none_result(base: dict[str, Any], reason: str, effect: float | None = None
                 ) -> MixedEffectsResult:
    return MixedEffectsResult(fit="none", effect=effect, ci_low=None, ci_high=None,
                              statistic=None, df=None, p=None, converged=None,
                              seed_variance=None, residual_variance=None, reason=reason, **base)


def _t_summary(est: float, se: float, df: float, confidence: float) -> dict[str, float]:
    t = est / se
    half = float(st.t.isf((1 - confidence) / 2, df)) * se
    return {"effect": float(est), "ci_low": float(est - half), "ci_high": float(est + half),
            "statistic": float(t), "df": float(df), "p": _t_pvalue(t, df, "two-sided")}


def mixed_effects(
    frame: pd.DataFrame,
    value: str,
    method_col: str,
    task_col: str,
    seed_col: str,
    a: str,
    b: str,
    alpha: float = 0.05,
) -> MixedEffectsResult:
    """Is method a different from method b across tasks? One estimate for the whole study.

    frame: one row per independent run, with columns `value` (the measure, any unit), `method_col`,
    `task_col` and `seed_col`; rows of other methods are ignored, and a (task, seed) where only
    one of a and b finished is dropped (counted in `n_dropped`). At most one row per
    (task, method, seed).

    Model (statsmodels MixedLM, REML): value ~ task x method fixed effects (one mean per task and
    method) + a random intercept per (task, seed). The effect reported is the contrast
    mean over tasks of (mu[task, a] - mu[task, b]): each task weighs the same, and no common
    effect across tasks is assumed (a method + task additive model would force one, and with it
    hide a task where the methods differ the other way). The random intercept belongs to the
    (task, seed) pair because that is the unit a and b share (same split, data order and head
    initialisation); seed 0 on one task and seed 0 on another share only the integer.

    Inference: estimate +/- t quantile x the model's standard error with df = n_pairs - n_tasks,
    the residual df of the paired differences, not the Wald z that statsmodels prints: with a
    handful of (task, seed) groups z is anti-conservative, and for complete balanced pairs this
    t reference is the exact one (the contrast then equals the pooled paired analysis).

    Fallback: if MixedLM fails (singular fit, no convergence) the same contrast comes from OLS on
    the paired differences a - b with one mean per task (`fit` says which). Nothing is estimated
    (`fit` "none", `reason` why) without complete pairs, without two pairs in some task
    (no replication to estimate seed noise: n_pairs - n_tasks < 1), or with zero spread of the
    differences around their task means (standard error 0: the t statistic is undefined).
    """
    from statsmodels.regression.linear_model import OLS
    from statsmodels.regression.mixed_linear_model import MixedLM

    missing = [c for c in (value, method_col, task_col, seed_col) if c not in frame.columns]
    if missing:
        raise ValueError(f"columns not in the table: {missing}")
    if a == b:
        raise ValueError(f"a and b must be different methods, got {a!r} twice")
    rows = frame.loc[frame[method_col].isin([a, b]), [task_col, seed_col, method_col, value]]
    y = rows[value].to_numpy(dtype=float)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"column {value!r} contains NaN or inf: filter failed runs first")
    dup = rows.duplicated([task_col, seed_col, method_col])
    if dup.any():
        first = rows[dup].iloc[0]
        raise ValueError(f"more than one row for task {first[task_col]!r}, method "
                         f"{first[method_col]!r}, seed {first[seed_col]!r}")
    wide = rows.pivot(index=[task_col, seed_col], columns=method_col, values=value)
    complete = (wide.dropna(subset=[a, b]) if {a, b} <= set(wide.columns)
                else wide.iloc[:0].reindex(columns=[a, b]))
    diffs = (complete[a] - complete[b]).astype(float)
    tasks = diffs.index.get_level_values(0)
    per_task = diffs.groupby(tasks, sort=True).mean()
    n_pairs, n_tasks = int(diffs.size), int(per_task.size)
    base: dict[str, Any] = {
        "value": value, "a": str(a), "b": str(b), "confidence": 1 - alpha, "n_tasks": n_tasks,
        "n_seeds": int(diffs.index.get_level_values(1).nunique()), "n_pairs": n_pairs,
        "n_dropped": int(len(rows) - 2 * n_pairs),
        "per_task": {str(t): float(v) for t, v in per_task.items()},
    }
    if n_pairs == 0:
        return _none_result(base, f"no (task, seed) has both {a!r} and {b!r}")
    effect = float(per_task.mean())
    df = n_pairs - n_tasks
    if df < 1:
        return _none_result(base, "each task has a single complete pair: no replication within"
                            " a task to estimate the seed-to-seed spread", effect)
    resid = diffs.to_numpy() - per_task.reindex(tasks).to_numpy()
    scale = max(float(np.max(np.abs(complete.to_numpy()))), 1e-300)
    if float(np.sqrt(np.mean(resid**2))) <= _REL_TOL * scale:
        return _none_result(base, "zero spread of the paired differences within tasks: the"
                            " standard error is 0, so no t statistic is defined", effect)

    task_names = list(per_task.index)
    # Cell-means design: column 2k is (task k, a), 2k + 1 is (task k, b); L averages a - b.
    long_task = np.repeat(pd.Index(task_names).get_indexer(tasks), 2)
    long_is_b = np.tile([0, 1], n_pairs)
    exog = np.zeros((2 * n_pairs, 2 * n_tasks))
    exog[np.arange(2 * n_pairs), 2 * long_task + long_is_b] = 1.0
    endog = np.column_stack([complete[a].to_numpy(float), complete[b].to_numpy(float)]).ravel()
    groups = np.repeat(np.arange(n_pairs), 2)
    contrast = np.tile([1.0, -1.0], n_tasks) / n_tasks
    caught_messages: list[str] = []
    why_fallback = ""
    converged: bool | None = None  # stays None when MixedLM raised before reporting
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fitted = MixedLM(endog, exog, groups).fit(reml=True)
        caught_messages = sorted({str(w.message) for w in caught})
        converged = bool(fitted.converged)
        k = exog.shape[1]
        cov = np.asarray(fitted.cov_params())[:k, :k]
        est = float(contrast @ np.asarray(fitted.fe_params))
        se = math.sqrt(float(contrast @ cov @ contrast)) if np.all(np.isfinite(cov)) else math.nan
        if not converged:
            why_fallback = "MixedLM did not converge"
        elif not (math.isfinite(se) and se > 0):
            why_fallback = f"MixedLM gave a standard error of {se}"
        else:
            return MixedEffectsResult(
                fit="MixedLM (REML)", converged=True,
                seed_variance=float(np.asarray(fitted.cov_re).ravel()[0]),
                residual_variance=float(fitted.scale), warnings=caught_messages,
                **_t_summary(est, se, df, 1 - alpha), **base)
    except (np.linalg.LinAlgError, ValueError) as err:  # singular design or variance estimate
        why_fallback = f"MixedLM failed: {err}"
    design = np.zeros((n_pairs, n_tasks))
    design[np.arange(n_pairs), pd.Index(task_names).get_indexer(tasks)] = 1.0
    ols = OLS(diffs.to_numpy(), design).fit()
    mean_contrast = np.full(n_tasks, 1.0 / n_tasks)
    se = math.sqrt(float(mean_contrast @ np.asarray(ols.cov_params()) @ mean_contrast))
    return MixedEffectsResult(
        fit="OLS on paired differences (fallback)",
        # Var(a - b) within a pair is twice the residual variance of the mixed model.
        converged=converged, seed_variance=None, residual_variance=float(ols.scale) / 2,
        reason=why_fallback,
        warnings=caught_messages, **_t_summary(float(mean_contrast @ ols.params), se, df,
                                               1 - alpha), **base)


# --------------------------------------------------------------------------- correlation

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
