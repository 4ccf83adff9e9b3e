"""Intruder dimensions against forgetting: across learned runs, Spearman's rho between a run's
intruder-dimension count (weights table) and its forgetting on each unit, with interval, p
(corrected over these correlations) and n, or "not measured" naming the missing side. These
`correlation` records are not comparisons: they form no family of `peftlab.families`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftlab import stats as st
from peftlab.records import ForgettingRecord, WeightRecord, read
from peftlab.results import RunView
from peftlab.stages.stats.common import Inputs, Pending, Record, defined
from peftlab.stages.stats.forgetting import floor_reason, forgetting_context, forgetting_units
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def intruder_counts(weights: list[WeightRecord], own: set[str]) -> dict[str, dict[str, int]]:
    """Per run: {"intruder_dims": the sum over its adapted matrices of their intruder
    dimensions, "matrices": how many matrices had them defined}; runs without a defined matrix
    are left out."""
    out: dict[str, dict[str, int]] = {}
    for w in weights:
        dims = (w.stats or {}).get("intruder_dims")
        if w.run_id not in own or w.undefined or not defined(dims):
            continue
        c = out.setdefault(w.run_id, {"intruder_dims": 0, "matrices": 0})
        c["intruder_dims"] += int(dims)
        c["matrices"] += 1
    return out


def intruder_correlations(records: list[ForgettingRecord], weights: list[WeightRecord],
                          view: RunView, cfg: StatsSpec, verdicts: Verdicts
                          ) -> list[tuple[str, dict[str, Any]]]:
    """Across learned runs (every task and method pooled): Spearman's rho between a run's
    intruder-dimension count and its forgetting on each unit, with a Fisher-z interval, a
    permutation p, Holm/Bonferroni (stats.correction) over these correlations, and n. A
    "not measured" record names the side that is missing."""
    owner = view.method_of_run()
    own = set(owner)
    counts = intruder_counts(weights, own)
    units = [u for u in forgetting_units(records) if u.status == "done"]
    base = {"kind": "correlation", "area": "forgetting", "x": "intruder_dims",
            "x_label": "intruder dimensions of the run (sum over its adapted matrices)",
            "y": "difference", "role": "exploratory", "correction": cfg.correction}
    lacking = [what for what, present in (
        ("weight-space records with intruder dimensions (peftlab drift)", counts),
        ("forgetting measurements (peftlab forgetting)", units)) if not present]
    if lacking:
        return [("correlation/forgetting/none", {
            **base, "status": "not measured", "unit": None, "n": 0,
            "reason": "the study directory has no " + " and no ".join(lacking)})]
    out = []
    for unit in units:
        name = "lm_loss" if unit.measure == "lm_loss" else (
            f"probe/{unit.probe_task}/L{unit.layer:03d}")
        if (why := floor_reason(unit)) is not None:  # nothing to forget: no correlation
            out.append((f"correlation/forgetting/{name}", {
                **base, **forgetting_context(unit), "forgetting_unit": unit.unit,
                "status": "void", "reason": why, "n": 0, "estimate": None, "ci_low": None,
                "ci_high": None, "p": None, "p_method": "", "confidence": 1 - cfg.alpha}))
            continue
        pairs = []
        for r in records:
            if not (r.is_run and r.unit == unit.unit and r.status == "done"
                    and defined(r.difference) and r.run_id in counts):
                continue
            task, method, seed = owner.get(r.run_id, (None, None, None))
            if task is None or verdicts.degenerate(task, method, seed) is not None:
                continue
            pairs.append((r.run_id, counts[r.run_id]["intruder_dims"], float(r.difference)))
        pairs.sort(key=lambda p: p[0])
        x = [p[1] for p in pairs]
        y = [p[2] for p in pairs]
        corr = st.rank_correlation(x, y, confidence=1 - cfg.alpha, seed=0)
        out.append((f"correlation/forgetting/{name}", {
            **base, **forgetting_context(unit), "forgetting_unit": unit.unit,
            "status": "ok" if corr.estimate is not None else "undefined",
            "run_ids": [p[0] for p in pairs], "x_values": x, "y_values": y,
            "methods": [owner[p[0]][1] for p in pairs], **corr.as_dict()}))
    tested = [i for i, (_, r) in enumerate(out) if r["p"] is not None]
    adjusted = st.adjust_pvalues([out[i][1]["p"] for i in tested], cfg.correction)
    for i, p_adj in zip(tested, adjusted, strict=True):
        out[i][1].update(p_adjusted=p_adj, family_size=len(tested))
    return out


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """No comparisons: the correlation records (corrected among themselves)."""
    return [], intruder_correlations(read(inp.ctx.store, ForgettingRecord),
                                     read(inp.ctx.store, WeightRecord), inp.view, inp.cfg,
                                     inp.verdicts)
