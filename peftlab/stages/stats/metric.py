"""Area "metric": PEFT vs full fine-tuning on each task's metrics, paired by seed (the main
metric is the primary accuracy endpoint, the others exploratory), and per task x method summaries
of the main metric."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.families import role_metric, roled
from peftlab.results import RunView, main_metric_value
from peftlab.stages.stats.common import (
    Inputs,
    Pending,
    Record,
    defined,
    make_pending,
    mean_interval,
    merge_missing,
)
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.spec import StatsSpec


def metric_records(ctx: Context, view: RunView, cfg: StatsSpec, verdicts: Verdicts
                   ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """PEFT vs full on each task's metrics (comparisons) and per-method summaries of the main
    metric. The main metric is a primary endpoint (stats.primary.accuracy), the others are
    exploratory."""
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    for task in view.tasks:
        tdef = ctx.data.task(task)
        void_all = None
        if verdicts.all_degenerate(task):
            n = sum(1 for (t, _, _) in verdicts.by_run if t == task)
            void_all = (f"every run on {task} ({n} of {n}) is degenerate: none is above the "
                        "majority-class or chance rate, so comparing their scores says nothing "
                        "about the methods")
        for i, metric in enumerate(tdef.metrics):
            values: dict[str, dict[int, float]] = {}
            missing: dict[str, dict[int, str]] = {}
            for method in view.methods:
                values[method], missing[method] = {}, {}
                for seed in view.seeds:
                    rec = view.done(task, method, seed)
                    v = _metric(rec, metric)
                    if v is None:
                        missing[method][seed] = (view.why_missing(task, method, seed)
                                                 if rec is None
                                                 else f"{method}: {metric} not finite")
                    else:
                        values[method][seed] = v
                if i == 0:
                    summaries.append(_metric_summary(view, cfg, task, method, metric, tdef,
                                                     values[method], missing[method], verdicts))
            for ref in view.references():
                for method in view.peft():
                    context = {
                        "area": "metric", "task": task, "quantity": metric, "unit": metric,
                        "main_metric": i == 0, **roled(role_metric(cfg, i == 0)),
                        "higher_is_better": tdef.higher_is_better,
                        "a": method, "b": ref, "method_a": method, "method_b": ref,
                        "runs_a": [view.run_ids[(task, method, s)] for s in view.seeds],
                        "runs_b": [view.run_ids[(task, ref, s)] for s in view.seeds],
                        "degenerate": {str(s): r for s in view.seeds for r in [
                            verdicts.degenerate(task, method, s), verdicts.degenerate(
                                task, ref, s)] if r is not None},
                    }
                    pending.append(make_pending(
                        f"comparison/metric/{task}/{metric}/{method} vs {ref}", context,
                        values[method], values[ref], view.seeds, cfg,
                        f"{task}: {method} vs {ref} ({metric})",
                        merge_missing(missing[method], missing[ref]), margin=cfg.metric_margin,
                        margin_relative=False, void_all=void_all))
    return pending, summaries


def _metric(rec: dict[str, Any] | None, metric: str) -> float | None:
    if rec is None:
        return None
    if metric == rec.get("main_metric"):
        return main_metric_value(rec)
    v = ((rec.get("metrics") or {}).get(metric) or {}).get("value")
    return float(v) if defined(v) else None


def _metric_summary(view: RunView, cfg: StatsSpec, task: str, method: str, metric: str,
                    tdef: Any, values: dict[int, float], missing: dict[int, str],
                    verdicts: Verdicts) -> tuple[str, dict[str, Any]]:
    seeds = [s for s in view.seeds if s in values]
    vals = [values[s] for s in seeds]
    lo, hi = mean_interval(vals, 1 - cfg.alpha)
    return (f"summary/metric/{task}/{method}", {
        "kind": "summary", "area": "metric", "task": task, "method": method,
        "method_type": view.methods[method], "metric": metric,
        "higher_is_better": tdef.higher_is_better, "seeds": seeds, "values": vals,
        "run_ids": [view.run_ids[(task, method, s)] for s in seeds],
        "n": len(vals), "mean": float(np.mean(vals)) if vals else None,
        "ci_low": lo, "ci_high": hi, "confidence": 1 - cfg.alpha,
        "interval": "t-interval of the mean over seeds",
        "learned": {str(s): (verdicts.by_run.get((task, method, s)) or {}).get("learned")
                    for s in seeds},
        # against the run's start (None: no fitted start): improved / no detectable change /
        # worse
        "change": {str(s): (verdicts.by_run.get((task, method, s)) or {}).get("change")
                   for s in seeds},
        "missing": {str(s): r for s, r in missing.items()},
    })


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """PEFT vs full on every metric of every task; main-metric summaries."""
    return metric_records(inp.ctx, inp.view, inp.cfg, inp.verdicts)
