"""Variance records: per task, the share of the main metric's variance that the method and the
seed explain (`peftlab.stats.variance_decomposition`), over the seeds with every method done."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from peftlab import stats as st
from peftlab.errors import DegenerateInputError
from peftlab.results import RunView, main_metric_value
from peftlab.stages.stats.common import Inputs, Pending, Record

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.spec import StatsSpec


def variance_records(ctx: Context, view: RunView, cfg: StatsSpec
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Share of the main metric's variance from method vs seed, per task (complete seeds only,
    so the layout is balanced and the order of the factors does not matter)."""
    out = []
    for task in view.tasks:
        metric = ctx.data.task(task).metrics[0]
        rows = []
        complete = []
        for seed in view.seeds:
            recs = {m: view.done(task, m, seed) for m in view.methods}
            vals = {m: main_metric_value(r) for m, r in recs.items() if r is not None}
            if len(vals) == len(view.methods) and all(v is not None for v in vals.values()):
                complete.append(seed)
                rows += [{"method": m, "seed": str(seed), "value": v} for m, v in vals.items()]
        record: dict[str, Any] = {
            "kind": "variance", "area": "metric", "task": task, "metric": metric,
            "factors": ["method", "seed"], "seeds": complete, "n_seeds": len(complete),
            "methods": list(view.methods), "n": len(rows),
        }
        if len(view.methods) < 2:
            record.update(status="not applicable", note="one method: nothing to attribute")
        elif len(complete) < cfg.min_runs:
            record.update(status="insufficient runs",
                          note=f"{len(complete)} seed(s) with every method done, fewer than "
                               f"stats.min_runs = {cfg.min_runs}")
        else:
            try:
                vd = st.variance_decomposition(pd.DataFrame(rows), "value", ("method", "seed"))
                record.update(status="ok", **{k: v for k, v in vd.as_dict().items()
                                              if k not in ("value", "factors", "n")})
                record["note"] = ("additive model, one run per method x seed: the residual is "
                                  "the method x seed interaction")
            except DegenerateInputError as err:
                record.update(status="undefined", note=err.reason)
        out.append((f"variance/{task}", record))
    return out


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """No comparisons: one variance record per task."""
    return [], variance_records(inp.ctx, inp.view, inp.cfg)
