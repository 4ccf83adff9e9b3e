"""Drift across tasks: one mixed model per PEFT method and full reference over every task's
learned runs (`peftlab.stats.mixed_effects`), primary when it is the declared RQ1 endpoint."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import pandas as pd

from peftlab import stats as st
from peftlab.families import role_drift, roled
from peftlab.measures import label as measure_label
from peftlab.results import RunView
from peftlab.stages.stats.common import Pending

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def across_tasks(measure: str, rows: list[dict[str, Any]], view: RunView, cfg: StatsSpec
                 ) -> list[Pending]:
    """Per PEFT method and full reference: the mixed model over every task's learned runs
    (`stats.mixed_effects`: task x method fixed, (task, seed) random intercept; OLS fallback).
    The mean band of `measure`; primary when it is the declared RQ1 endpoint."""
    out = []
    frame = pd.DataFrame(rows, columns=["task", "method", "seed", "value"])
    unit = measure_label(measure)
    for ref in view.references():
        for method in view.peft():
            role = role_drift(cfg, measure, "mean", True)
            res = st.mixed_effects(frame, "value", "method", "task", "seed", method, ref,
                                   cfg.alpha)
            label = f"across tasks: {method} vs {ref} ({unit} to the base, mean over " \
                    "transformer layers)"
            tasks_with = sorted({r["task"] for r in rows if r["method"] in (method, ref)},
                                key=view.tasks.index)
            context = {
                "kind": "across_tasks", "area": "drift", "task": "across tasks",
                "tasks": list(res.per_task), "tasks_without_pairs": [
                    t for t in view.tasks if t not in res.per_task],
                "quantity": measure, "unit": unit, "higher_is_better": None,
                "measure": measure, "band": "mean", "a": method, "b": ref, "method_a": method,
                "method_b": ref, **roled(role), "fit": res.fit, "converged": res.converged,
                "per_task": res.per_task, "n_tasks": res.n_tasks, "n_seeds": res.n_seeds,
                "n_pairs": res.n_pairs, "n_dropped": res.n_dropped,
                "seed_variance": res.seed_variance, "residual_variance": res.residual_variance,
                "fit_reason": res.reason, "fit_warnings": res.warnings, "seeds": [],
                "values_a": [], "values_b": [], "missing": {},
                "model": "value ~ task x method (fixed) + (task, seed) random intercept; "
                         "effect = mean over tasks of the per-task difference",
            }
            common = {"label": label, "paired": True, "alpha": cfg.alpha,
                      "confidence": 1 - cfg.alpha, "power": cfg.power}
            if res.fit == "none" or res.p is None:
                status = "void" if not tasks_with else "insufficient runs"
                why = ("every run with drift records is degenerate (not above the "
                       "majority-class or chance rate of its task), so no task is evidence"
                       if status == "void" else res.reason or "not estimable")
                comparison = st.Comparison(status=status, outcome=status, n=res.n_pairs,
                                           n_a=res.n_pairs, n_b=res.n_pairs,
                                           diff=res.effect, reason=why, **common)
            else:
                var = res.residual_variance
                sd = math.sqrt(2 * var) if var is not None and var > 0 else None
                dz = res.effect / sd if sd else None
                comparison = st.Comparison(
                    status="ok", outcome=st.decide_outcome(res.p, None, cfg.alpha),
                    n=res.n_pairs, n_a=res.n_pairs, n_b=res.n_pairs,
                    diff=res.effect, diff_ci_low=res.ci_low, diff_ci_high=res.ci_high,
                    test=res.fit, statistic=res.statistic, df=res.df, p=res.p,
                    decision_test=res.fit, decision_p=res.p, p_adjusted=res.p,
                    effect_name="d_z (pooled within tasks)", effect=dz, sd_diff=sd,
                    note=res.reason, **common)
            out.append(Pending(f"across_tasks/drift/{measure}/{method} vs {ref}", context,
                               comparison))
    return out
