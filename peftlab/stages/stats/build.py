"""Assembles the `stats` table: judges every run, asks each area for its comparisons and records,
corrects the comparisons over their families (`peftlab.families`) and writes the table."""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

from peftlab.families import FAMILIES, PRIMARY, endpoint_texts, planned_families
from peftlab.results import run_view
from peftlab.stages.stats import (
    forgetting,
    intruder,
    latency,
    metric,
    paired_latency,
    readout,
    variance,
)
from peftlab.stages.stats.common import Inputs, Pending, Record, correct
from peftlab.stages.stats.verdicts import run_verdicts

if TYPE_CHECKING:
    from peftlab.context import Context

TABLE = "stats"

# The areas, in the order their records are written: each module's `build(inputs)` returns its
# comparisons before correction and its other records (summaries, variance, correlations). All
# comparisons are corrected together, each within its family; the other records follow the run
# verdicts in this order. A new area is one module here and one entry below.
AREAS = (metric, variance, readout, latency, paired_latency, forgetting, intruder)


def build_stats(ctx: Context) -> list[Record]:
    """Every record of the `stats` table, from the current contents of the study directory."""
    cfg = ctx.study.spec.stats
    view = run_view(ctx.study, ctx.store)
    verdicts, run_summaries = run_verdicts(ctx, view)
    inputs = Inputs(ctx, view, cfg, verdicts)
    pending: list[Pending] = []
    records: list[Record] = list(run_summaries)
    for area in AREAS:
        area_pending, area_records = area.build(inputs)
        if area is paired_latency:  # measured in paired blocks: replaces the per-seed record
            keys = {p.key for p in area_pending}
            pending = [p for p in pending if p.key not in keys]
        pending += area_pending
        records += area_records
    comparisons = [(key, _floored(rec)) for key, rec in correct(pending, cfg)]
    planned = planned_families(ctx.study)
    families: dict[str, dict[str, Any]] = {
        f: {"role": "primary" if f == PRIMARY else "exploratory", "planned": n, "tested": 0,
            "comparisons": 0, "order": FAMILIES.index(f)} for f, n in planned.items()}
    for _, rec in comparisons:
        fam = families.setdefault(rec["family"], {
            "role": rec["role"], "planned": 0, "tested": 0, "comparisons": 0,
            "order": (FAMILIES.index(rec["family"]) if rec["family"] in FAMILIES
                      else len(FAMILIES))})
        fam["comparisons"] += 1
        fam["tested"] += rec["status"] == "ok"
    learned = [v.get("learned") for v in verdicts.by_run.values()]
    settings = ("settings", {
        "kind": "settings", "alpha": cfg.alpha, "correction": cfg.correction,
        "min_runs": cfg.min_runs, "metric_margin": cfg.metric_margin,
        "metric_margin_relative": False, "latency_margin": cfg.latency_margin,
        "latency_margin_relative": True, "power": cfg.power,
        "primary": cfg.primary.model_dump(mode="json"), "endpoints": endpoint_texts(cfg),
        "families": families,
        "runs": {"judged": sum(x is not None for x in learned),
                 "learned": sum(x is True for x in learned),
                 "degenerate": sum(x is False for x in learned),
                 "not_judged": sum(x is None for x in learned),
                 # against the start (training.head_init: probe): judged, and by outcome
                 "start_judged": sum(v.get("change") is not None
                                     for v in verdicts.by_run.values()),
                 "improved": sum(v.get("change") == "improved"
                                 for v in verdicts.by_run.values()),
                 "no_detectable_change": sum(v.get("change") == "no detectable change"
                                             for v in verdicts.by_run.values()),
                 "worse": sum(v.get("change") == "worse" for v in verdicts.by_run.values())},
        "bands": "transformer layers (index >= 1) split into three contiguous thirds "
                 "(numpy.array_split) + mean of all of them; layer 0 (embeddings) on its own",
        "floor": "the permutation null's 95% quantile (null_q95), mean over runs",
        "unit": "one value per independent run (seed); latency: the median of each run",
    })
    items = [settings, *comparisons, *records]
    # Keys sort alphabetically in the store; `order` keeps the study's order (tasks as in the
    # spec, bands early to late) for the report.
    return [(key, {**rec, "order": i}) for i, (key, rec) in enumerate(items)]


def _floored(rec: dict[str, Any]) -> dict[str, Any]:
    """A paired latency difference inside the A/A control's noise floor is not called real: its
    outcome becomes inconclusive, with the reason."""
    if rec.get("design") == "paired" and rec.get("outcome") == "different" and \
            paired_latency.inside_floor(rec):
        return {**rec, "outcome": "inconclusive",
                "outcome_note": f"significant, but inside the A/A noise floor "
                                f"(+/-{rec['noise_floor_pct']:.1f}%)"}
    return rec


# The per-run verdicts, one row per judged run (key: the run id), the fields a user queries with
# `peftlab results DIR --table verdicts` (the full verdicts are the stats table's summary/run/...)
VERDICTS_TABLE = "verdicts"
VERDICT_FIELDS = ("learned", "criterion", "reason", "improved", "change", "start_value",
                  "improvement", "improvement_reason", "value")


def verdict_rows(items: list[Record]) -> list[Record]:
    """The `verdicts` table's rows from the stats table's run summaries."""
    return [(rec["run_id"], {k: rec.get(k) for k in VERDICT_FIELDS}) for _, rec in items
            if rec.get("kind") == "summary" and rec.get("area") == "runs"]


def run(ctx: Context) -> None:
    """Build every comparison the study implies and replace the `stats` table with them, and
    the `verdicts` table with each run's verdicts."""
    from peftlab.generation import is_generative

    if is_generative(ctx):
        ctx.console.print("stats: a generation study's comparisons are computed by its report "
                          "(peftlab.gen_study.report)")
        return
    items = build_stats(ctx)
    ctx.store.replace_where(TABLE, "", items)
    ctx.store.replace_where(VERDICTS_TABLE, "", verdict_rows(items))
    outcomes: dict[str, int] = defaultdict(int)
    for _, rec in items:
        if rec["kind"] in ("comparison", "across_tasks"):
            outcomes[rec["outcome"]] += 1
    told = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "no comparisons"
    runs = items[0][1]["runs"]
    ctx.console.print(f"stats: {len(items)} records ({told}); runs that learned: "
                      f"{runs['learned']} of {runs['judged']}"
                      + (f", {runs['degenerate']} degenerate" if runs["degenerate"] else "")
                      + (f", {runs['not_judged']} not judged" if runs["not_judged"] else "")
                      + (f"; improved on their start: {runs['improved']} of "
                         f"{runs['start_judged']}, {runs['worse']} ended below it"
                         if runs["start_judged"] else ""))
