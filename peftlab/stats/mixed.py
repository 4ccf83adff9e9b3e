"""One method against another across tasks: a mixed model (task x method fixed, a random
intercept per (task, seed)) with a t reference at the paired df, its OLS fallback, and the
power of that across-task contrast."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as st

from peftlab.stats.base import _REL_TOL, _Record, _t_pvalue
from peftlab.stats.power import minimum_detectable_effect, t_power


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

    Fallback: if MixedLM fails (singular fit, no convergence), or its seed variance sits on its
    boundary (0) so that its standard error comes out below the paired differences' (REML then
    pools the between-seed spread into the residual, and the t interval would be too narrow),
    the same contrast comes from OLS on the paired differences a - b with one mean per task
    (`fit` says which, `reason` why). For complete pairs that is the exact analysis, and the
    MixedLM equals it whenever its seed variance is positive. Nothing is estimated
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
    # The exact analysis of complete pairs: OLS on the paired differences, one mean per task
    # (the pair's shared intercept cancels in a - b, whatever the seed variance is).
    design = np.zeros((n_pairs, n_tasks))
    design[np.arange(n_pairs), pd.Index(task_names).get_indexer(tasks)] = 1.0
    ols = OLS(diffs.to_numpy(), design).fit()
    mean_contrast = np.full(n_tasks, 1.0 / n_tasks)
    ols_se = math.sqrt(float(mean_contrast @ np.asarray(ols.cov_params()) @ mean_contrast))
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
        elif se < ols_se * (1 - 1e-3):  # beyond the optimizer's numerical slack
            # With its seed variance on the boundary (0), REML pools the between-seed spread
            # into the residual: a smaller standard error than the pairs support, and a t
            # interval at df = n_pairs - n_tasks that would be too narrow.
            seed_var = float(np.asarray(fitted.cov_re).ravel()[0])
            why_fallback = (f"MixedLM's seed variance is on its boundary ({seed_var:.3g}), so "
                            f"its standard error ({se:.4g}) is below the paired differences' "
                            f"({ols_se:.4g})")
        else:
            return MixedEffectsResult(
                fit="MixedLM (REML)", converged=True,
                seed_variance=float(np.asarray(fitted.cov_re).ravel()[0]),
                residual_variance=float(fitted.scale), warnings=caught_messages,
                **_t_summary(est, se, df, 1 - alpha), **base)
    except (np.linalg.LinAlgError, ValueError) as err:  # singular design or variance estimate
        why_fallback = f"MixedLM failed: {err}"
    return MixedEffectsResult(
        fit="OLS on paired differences (fallback)",
        # Var(a - b) within a pair is twice the residual variance of the mixed model.
        converged=converged, seed_variance=None, residual_variance=float(ols.scale) / 2,
        reason=why_fallback,
        warnings=caught_messages, **_t_summary(float(mean_contrast @ ols.params), ols_se, df,
                                               1 - alpha), **base)


def mixed_power_fields(n_pairs: int, n_tasks: int, sd_diff: float | None, dz: float | None,
                       alpha: float, power: float) -> dict[str, Any]:
    """`Comparison` power fields for the across-task estimate of `mixed_effects`: the smallest
    |d_z| detectable with `power` at this many pairs and df = n_pairs - n_tasks (not the paired
    test's n - 1), and the seeds per task that would detect the observed d_z (returned as
    runs_needed; None when d_z is 0 or undefined). With df < 1 nothing is estimable: all None
    but mde_alpha."""
    df = n_pairs - n_tasks
    if df < 1:
        return {"mde_alpha": alpha, "mde_dz": None, "mde_diff": None, "runs_needed": None}
    mde = minimum_detectable_effect(n_pairs, alpha, power, df=df)
    needed = None
    if dz is not None and math.isfinite(dz) and dz != 0:
        for seeds in range(2, 10_000):  # seeds per task, every task balanced
            if t_power(abs(dz), seeds * n_tasks, alpha, seeds * n_tasks - n_tasks) >= power:
                needed = seeds
                break
    return {"mde_alpha": float(alpha), "mde_dz": mde,
            "mde_diff": mde * sd_diff if sd_diff else None, "runs_needed": needed}
