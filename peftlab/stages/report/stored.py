"""What the report reads, loaded once from the study directory (`Results`), and the few things
every section says alike: that a result is missing (`not_measured`), the confidence level, the
comparison families in order.

Sections take a `Results` and read only through it (and the store it holds), so a section is a pure
function of the stored results.
"""

from __future__ import annotations

from typing import Any

from peftlab.records import BaselineRecord, DataRecord, DriftRecord, WeightRecord, read
from peftlab.results import RunView, bench_rows
from peftlab.stages.report.document import Paragraph, Strong


def not_measured(what: str, *stages: str) -> Paragraph:
    """'Not measured: the study directory has no <what> (filled by peftlab <stage>).'"""
    filled = " and ".join(f"peftlab {s}" for s in stages)
    return Paragraph.of(Strong("Not measured"), f": the study directory has no {what} "
                        f"(filled by {filled}).")


class Results:
    """Everything the report reads, loaded once from the study directory."""

    def __init__(self, ctx: Any, view: RunView):
        store = ctx.store
        self.ctx = ctx
        self.spec = ctx.study.spec
        self.view = view
        stats = sorted(store.records("stats"), key=lambda r: r.get("order", 0))
        # Other poolings than the primary readout: shown by the readout section only.
        self.readouts = [r for r in stats if r.get("readout") == "exploratory"]
        self.stats = [r for r in stats if r.get("readout") != "exploratory"]
        self.comparisons = [r for r in self.stats
                            if r.get("kind") in ("comparison", "across_tasks")]
        self.summaries = [r for r in self.stats if r.get("kind") == "summary"]
        self.variance = [r for r in self.stats if r.get("kind") == "variance"]
        self.settings = next((r for r in self.stats if r.get("kind") == "settings"), {})
        own = set(view.run_ids.values())
        # Read through the record types: a record a stage could not have written fails here.
        self.drift = [r.dump() for r in read(store, DriftRecord)
                      if r.run_b in own and r.readout == "primary"]
        # one flat row per matrix: the record's identity plus its update statistics
        self.weights = [{**r.dump(), **(r.stats or {})} for r in read(store, WeightRecord)
                        if r.run_id in own]
        self.bench = bench_rows(store.records("bench"))
        self.baselines = {r.task: r for r in read(store, BaselineRecord)}
        order = {t: i for i, t in enumerate(view.tasks)}
        self.data = sorted((r.dump() for r in read(store, DataRecord)), key=lambda d: (
            order.get(d.get("task"), len(order)), d.get("split") != "train"))
        self.meta = store.get("meta", "study") or {}
        self.min_runs = self.spec.stats.min_runs
        self.verdicts = {(r["task"], r["method"], r["seed"]): r
                         for r in self.summaries if r["area"] == "runs"}

    def comparisons_of(self, *areas: str, family_prefix: str = "") -> list[dict[str, Any]]:
        return [c for c in self.comparisons if c["area"] in areas
                and c["family"].startswith(family_prefix)]

    def summaries_of(self, area: str) -> list[dict[str, Any]]:
        return [s for s in self.summaries if s["area"] == area]

    def find(self, **match: Any) -> dict[str, Any] | None:
        for c in self.comparisons:
            if all(c.get(k) == v for k, v in match.items()):
                return c
        return None

    def primary(self, question: str) -> list[dict[str, Any]]:
        return [c for c in self.comparisons if c.get("question") == question]

    def degenerate_runs(self) -> list[dict[str, Any]]:
        return [v for v in self.verdicts.values() if v.get("learned") is False]


def families(res: Results) -> dict[str, dict[str, Any]]:
    """The settings record's families, primary first, then the exploratory areas in order."""
    fams = res.settings.get("families") or {}
    return dict(sorted(fams.items(), key=lambda kv: (kv[0] != "primary", kv[1].get(
        "order", 0), kv[0])))


def learning_rates(res: Results) -> dict[str, dict[float, list[str]]]:
    """method -> learning rate -> the tasks its runs trained at that rate (from the stored run
    configs, in task order)."""
    out: dict[str, dict[float, list[str]]] = {}
    for task in res.view.tasks:
        for method in res.view.methods:
            rates = {((rec.get("config") or {}).get("training") or {}).get("learning_rate")
                     for (t, m, _), rec in res.view.records.items() if (t, m) == (task, method)}
            for rate in sorted(r for r in rates if r is not None):
                tasks = out.setdefault(method, {}).setdefault(rate, [])
                if task not in tasks:
                    tasks.append(task)
    return out


def rate_text(rate: float) -> str:
    """A learning rate as the spec writes one, to 4 significant digits (a searched rate has
    16): 9.4e-05, 0.001 -> 1e-03, 9.402060696595746e-05 -> 9.402e-05."""
    import numpy as np

    return np.format_float_scientific(rate, precision=3, trim="-", exp_digits=2)


def learning_rates_text(res: Results) -> str:
    """'full 9.4e-05 on every task; lora 3.4e-04 on sst2, rte and 9.4e-04 on mrpc'."""
    parts = []
    for method, by_rate in learning_rates(res).items():
        rates = [rate_text(rate) + (" on every task" if len(by_rate) == 1
                                  and len(tasks) == len(res.view.tasks)
                                  else f" on {', '.join(tasks)}")
                 for rate, tasks in by_rate.items()]
        parts.append(f"{method} {' and '.join(rates)}")
    return "; ".join(parts)


def conf_label(res: Results) -> str:
    """The confidence level of the study's intervals, e.g. '95%'."""
    return f"{round(100 * (1 - res.spec.stats.alpha))}%"

