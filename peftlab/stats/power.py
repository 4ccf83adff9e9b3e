"""What a study could detect: the power of a two-sided t-test, the minimum detectable effect at a
number of runs, and the number of runs an effect needs. Effects are d_z (unitless: mean
difference / SD of the paired differences)."""

from __future__ import annotations

import functools
import math

from scipy import optimize
from scipy import stats as st


def t_power(dz: float, n: int, alpha: float, df: int | None = None) -> float:
    """Power of a two-sided t-test at level alpha whose statistic is noncentral t with `df`
    degrees of freedom and ncp dz * sqrt(n): the probability that |T| > t_crit.

    n: pairs. df: n - 1 by default (the paired t-test); the across-task contrast of the mixed
    model (balanced pairs) has n_pairs - n_tasks (`mixed_power_fields`).

    Both tails use the survival function (P(T < -c; ncp) = P(T > c; -ncp)): scipy's nct.cdf
    returns NaN at large ncp, and statsmodels 0.15's TTestPower inherits that (its solve_power
    gives d_z = 4.29 for n = 3, alpha = 0.05/3, where the power there is 0.61, not 0.8)."""
    df = n - 1 if df is None else df
    crit = st.t.isf(alpha / 2, df)
    ncp = dz * math.sqrt(n)
    return float(st.nct.sf(crit, df, ncp) + st.nct.sf(crit, df, -ncp))


def _check_power_args(alpha: float, power: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not alpha < power < 1.0:
        raise ValueError(f"power must be in (alpha, 1) = ({alpha}, 1), got {power}")


def minimum_detectable_effect(n: int, alpha: float, power: float = 0.8,
                              df: int | None = None) -> float:
    """Smallest |d_z| (unitless: mean difference / SD of the paired differences) that a two-sided
    paired t-test with `n` pairs at level `alpha` detects with probability `power`.

    n = 3, alpha = 0.05: 3.26; under Holm or Bonferroni over 3 tests (alpha = 0.05 / 3): 5.68.
    Multiply by the SD of the differences for the same in the measure's unit
    (`minimum_detectable_difference`). Needs n >= 2 (one pair has no spread to test against).
    df: the test's degrees of freedom when not n - 1 (see `t_power`), at least 1.
    """
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (pairs), got {n}")
    if df is not None and (int(df) != df or df < 1):
        raise ValueError(f"df must be an integer >= 1, got {df}")
    _check_power_args(alpha, power)
    return _mde(int(n), float(alpha), float(power), int(n) - 1 if df is None else int(df))


@functools.lru_cache(maxsize=1024)  # a study asks for the same (n, alpha) for every comparison
def _mde(n: int, alpha: float, power: float, df: int) -> float:
    hi = 1.0
    while t_power(hi, n, alpha, df) < power:  # power rises with d_z: bracket, then solve
        hi *= 2.0
    return float(optimize.brentq(lambda d: t_power(d, n, alpha, df) - power, 0.0, hi,
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
    while t_power(d, hi, alpha) < power:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if mid >= 2 and t_power(d, mid, alpha) >= power:
            hi = mid
        else:
            lo = mid
    return int(max(hi, 2))
