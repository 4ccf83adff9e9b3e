"""Confidence intervals: the bootstrap (scipy.stats.bootstrap, percentile or BCa) and the relative
difference mean(a) / mean(b) - 1 of paired runs (delta method or bootstrap)."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from scipy import stats as st

from peftlab.errors import DegenerateInputError
from peftlab.stats.base import _pair, _Record, _sample

# scipy >= 1.15 takes `rng`; older releases (the project allows 1.11) call it `random_state`.
_BOOTSTRAP_RNG_KW = "rng" if "rng" in inspect.signature(st.bootstrap).parameters else "random_state"


@dataclass(frozen=True)
class Interval(_Record):
    """A point estimate with a confidence interval, in the unit of the statistic."""

    estimate: float
    ci_low: float
    ci_high: float
    confidence: float
    method: str




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
