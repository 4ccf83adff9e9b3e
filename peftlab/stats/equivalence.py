"""Equivalence of paired runs within a margin: two one-sided tests (TOST), t-based, or exact
signed-rank tests where the differences have zero spread."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from scipy import stats as st

from peftlab.errors import DegenerateInputError
from peftlab.stats.base import RANK_TEST, _pair, _Record, _t_pvalue, zero_spread_reason
from peftlab.stats.significance import wilcoxon_signed_rank


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
