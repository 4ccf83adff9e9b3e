"""The report's sections, each built from stored results only.

Every section reads its results table(s) and is rendered only from what is there: a table with no
rows gives a section that says "not measured" (and which stage fills it) instead of a table of
blanks. Numbers are formatted by `peftlab.stages.report.format`; statistical statements come from
the `stats` table (`peftlab.stages.report.findings`).

The report answers first: `FRONT` (the answers to RQ1 and RQ2, each a few sentences beside one
figure, then the trust panel) comes before the table of contents; `SECTIONS` supports them. A new
section is one function `(Results) -> Section` added to one of these lists.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np
import yaml

from peftlab.bench.modes import get_mode, mode_names
from peftlab.measures import MEASURES
from peftlab.measures import label as measure_label
from peftlab.records import BaselineRecord, DataRecord, DriftRecord, WeightRecord, read
from peftlab.results import RunView, bench_rows, seq_sort_key, served_tasks
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import readout
from peftlab.stages.report import serving as serving_report
from peftlab.stages.report.document import (
    Answer,
    Bullets,
    Code,
    Figure,
    Outcome,
    Paragraph,
    Section,
    Strong,
    Table,
)
from peftlab.stages.report.forgetting import forgetting
from peftlab.stages.report.search import search_section


def not_measured(what: str, *stages: str) -> Paragraph:
    filled = " and ".join(f"peftlab {s}" for s in stages)
    return Paragraph.of(Strong("Not measured"), f": the study directory has no {what} "
                        f"(filled by {filled}).")


def mode_sort_key(mode: str) -> tuple[int, str]:
    base = mode.split("+")[0]
    order = mode_names()
    return (order.index(base) if base in order else len(order), mode)


def seed_label(seed: Any) -> str:
    return f"s{seed}"


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


def _families(res: Results) -> dict[str, dict[str, Any]]:
    """The settings record's families, primary first, then the exploratory areas in order."""
    fams = res.settings.get("families") or {}
    return dict(sorted(fams.items(), key=lambda kv: (kv[0] != "primary", kv[1].get(
        "order", 0), kv[0])))


def _conf(res: Results) -> str:
    return f"{round(100 * (1 - res.spec.stats.alpha))}%"


def _outcome_words(comps: list[dict[str, Any]]) -> list[str]:
    """The outcome words of a group, each once, with a count when it occurs more than once."""
    counts: dict[str, int] = defaultdict(int)
    for c in comps:
        counts[c["outcome"]] += 1
    return [o if n == 1 else f"{o} \u00d7{n}" for o, n in counts.items()]


# ----------------------------------------------------------------------------- the answers


def _drift_summary(res: Results, task: str, measure: str, band: str, method: str
                   ) -> dict[str, Any]:
    return next((s for s in res.summaries_of("drift") if s["task"] == task
                 and s["measure"] == measure and s["band"] == band and s["method"] == method),
                {})


def rq1_answer(res: Results) -> Answer:
    """RQ1 in a few sentences (primary endpoint, outcome, estimate with interval, n, power)
    beside the forest plot of PEFT minus full per task and across tasks."""
    primary_cfg = res.spec.stats.primary.drift
    peft, refs = res.view.peft(), res.view.references()
    who = (f"{' and '.join(peft)} drift less than {' and '.join(refs)}" if peft and refs
           else "the methods differ in drift")
    question = f"RQ1 \u00b7 Does {who}?"
    comps = res.primary("RQ1")
    if primary_cfg is None:
        return Answer(question, ["not declared"], [Paragraph.of(
            "stats.primary.drift is null: the study declares no primary drift endpoint; see "
            "the exploratory drift comparisons below.")], anchor="rq1")
    if not comps:
        return Answer(question, ["not measured"], [not_measured(
            "drift comparisons", "drift", "stats")], anchor="rq1")
    measure, band = primary_cfg.measure, primary_cfg.band
    unit = measure_label(measure)
    endpoint = res.settings.get("endpoints", {}).get("RQ1", "")
    paras = [Paragraph.of(f"Primary endpoint: {endpoint}.")]
    for c in comps:
        paras.append(_primary_sentence(c, res))
    paras += readout.rq1_paragraphs(res, comps)  # flags a verdict that depends on the pooling
    per_task = [c for c in res.comparisons_of("drift") if c.get("kind") != "across_tasks"
                and c.get("measure") == measure and c.get("band") == band
                and c.get("method_b") in refs and c.get("method_a") in peft]
    if per_task and primary_cfg.scope == "across_tasks":
        spans: list[str] = ["Per task (exploratory): "]
        for i, c in enumerate(per_task):
            diff = (f" {f.similarity(c['diff'])} "
                    f"{f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), f.similarity)}"
                    if c["status"] == "ok" else "")
            spans += [("; " if i else "") + f"{c['task']}{diff} ", Outcome(c["outcome"])]
            if c["outcome"] == "inconclusive" and c.get("mde_dz") is not None:
                spans.append(f" ({fnd.power_short(c)})")
        paras.append(Paragraph.of(*spans, "."))
    rows, across = [], []
    for task in res.view.tasks:
        for c in [c for c in per_task if c["task"] == task]:
            sa = _drift_summary(res, task, measure, band, c["method_a"])
            sb = _drift_summary(res, task, measure, band, c["method_b"])
            lows = [x for x in (sa.get("seed_to_seed_ci_low"), sb.get("seed_to_seed_ci_low"))
                    if x is not None] or [min(x) for x in (sa.get("seed_to_seed"),
                                                          sb.get("seed_to_seed")) if x]
            highs = [x for x in (sa.get("seed_to_seed_ci_high"),
                                 sb.get("seed_to_seed_ci_high")) if x is not None] or [
                max(x) for x in (sa.get("seed_to_seed"), sb.get("seed_to_seed")) if x]
            floors = [x for x in (sa.get("null_q95"), sb.get("null_q95")) if x is not None]
            tested = c["status"] == "ok"
            diff = c.get("diff") if tested else (
                c["mean_a"] - c["mean_b"] if c.get("mean_a") is not None
                and c.get("mean_b") is not None and c["outcome"] != "void" else None)
            rows.append({
                "task": task if len(peft) == 1 else f"{task} ({c['method_a']})",
                "a": c["method_a"], "b": c["method_b"],
                "a_mean": sa.get("mean"), "a_lo": sa.get("ci_low"), "a_hi": sa.get("ci_high"),
                "b_mean": sb.get("mean"), "b_lo": sb.get("ci_low"), "b_hi": sb.get("ci_high"),
                "diff": diff, "diff_lo": c.get("diff_ci_low"), "diff_hi": c.get("diff_ci_high"),
                "tested": tested, "floor": max(floors) if floors else None,
                "s2s_lo": min(lows) if lows else None, "s2s_hi": max(highs) if highs else None,
                "note": None if tested else c["outcome"]})
    for c in comps:
        if c.get("kind") == "across_tasks":
            across.append({"label": "across tasks" if len(peft) == 1
                           else f"across tasks ({c['method_a']})", "diff": c.get("diff"),
                           "lo": c.get("diff_ci_low"), "hi": c.get("diff_ci_high"),
                           "tested": c["status"] == "ok",
                           "note": None if c["status"] == "ok" else c["outcome"]})
    figure = None
    if rows or across:
        figure = Figure(figs.forest_figure(rows, across, list(res.view.methods), unit),
                        "RQ1 forest plot",
                        f"RQ1: {unit} to the base over {band} transformer layers per task "
                        f"(left: each method, {_conf(res)} t-interval over seeds; dotted: null "
                        "floor q95; shaded: seed-to-seed) and PEFT minus full (right; diamond: "
                        "across tasks).")
    return Answer(question, _outcome_words(comps), paras, figure, anchor="rq1")


def _primary_sentence(c: dict[str, Any], res: Results) -> Paragraph:
    """One primary comparison in a sentence or two: estimate, interval, corrected p, n, power
    (what it could have detected, when inconclusive), or why it was not tested."""
    lead = f"{fnd.where(c)}: {fnd.name(c, 'a')} \u2212 {fnd.name(c, 'b')}"
    if c["status"] != "ok":
        return Paragraph.of(f"{lead}: ", Outcome(c["outcome"]), f", not tested: {c['reason']}.")
    fmt = fnd.value_format(c)
    est = (f"{fmt(c.get('diff'))} {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}"
           f" ({round(100 * c['confidence'])}% CI)")
    if c.get("rel_diff") is not None:
        est += f", relative {f.pct(c['rel_diff'])}"
    text = (f" {est}; {fnd.correction_name(c)}-corrected p = {f.pvalue(c.get('p_adjusted'))} in "
            f"the primary family of {c.get('family_size')}; {fnd.n_text(c)}.")
    if c["outcome"] == "different":
        text = f" ({fnd.direction(c)});" + text
    power = fnd.power_short(c)
    if c["outcome"] == "inconclusive" and power:
        text += f" {power[0].upper()}{power[1:]}."
    return Paragraph.of(f"{lead}: ", Outcome(c["outcome"]), text)


def _ratio_rows(res: Results, pairs: list[str], seq: str) -> list[dict[str, Any]]:
    rows = []
    peft = res.view.peft()
    for c in res.comparisons_of("latency"):
        if c.get("pair") not in pairs or str(c["seq_len"]) != seq:
            continue
        tested = c["status"] == "ok"
        ratio = (1 + c["rel_diff"] if tested and c.get("rel_diff") is not None else
                 c["mean_a"] / c["mean_b"] if c.get("mean_a") and c.get("mean_b") else None)
        if ratio is None or c["outcome"] == "void":
            continue  # a void comparison's runs are not evidence: not drawn
        series = f"{c['mode_a']}/{c['mode_b']}"
        if len(peft) > 1:
            series = f"{c['method_a']} {series}"
        rows.append({
            "label": f"{c['task']}, batch {c['batch_size']}", "series": series, "ratio": ratio,
            "lo": 1 + c["rel_diff_ci_low"] if tested and c.get("rel_diff_ci_low") is not None
            else None,
            "hi": 1 + c["rel_diff_ci_high"] if tested and c.get("rel_diff_ci_high") is not None
            else None, "tested": tested,
            "floor": 1 + c["flops_share"] if c.get("flops_share") is not None
            and c.get("mode_b") == "merged" else None})
    return rows


def rq2_answer(res: Results) -> Answer:
    """RQ2 in a few sentences per declared comparison beside the dot plot of latency ratios
    (per task and batch size) with the compute-only floor."""
    d = res.spec.stats.primary.deployment
    question = "RQ2 \u00b7 What does each way of serving a PEFT adapter cost?"
    if d is None:
        return Answer(question, ["not declared"], [Paragraph.of(
            "stats.primary.deployment is null: no primary deployment endpoint; see the "
            "deployment comparisons below.")], anchor="rq2")
    comps = res.primary("RQ2")
    if not comps:
        return Answer(question, ["not measured"], [not_measured(
            f"latency comparisons at batch size {d.batch_size}, length {d.seq_len}", "bench",
            "stats")], anchor="rq2")
    paras = [Paragraph.of(f"Primary endpoints: {res.settings.get('endpoints', {}).get('RQ2')}.")]
    for pair in d.comparisons:
        group = [c for c in comps if c.get("pair") == pair]
        if not group:
            continue
        first = group[0]
        spans: list[str] = [Strong(f"{fnd.name(first, 'a')} vs {fnd.name(first, 'b')}"),
                            f" ({first.get('claim') or pair}): "]
        by_outcome: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in group:
            by_outcome[c["outcome"]].append(c)
        for i, (outcome, cs) in enumerate(by_outcome.items()):
            spans += ["; " if i else "", Outcome(outcome), " on "]
            if outcome in fnd.TESTED and len(cs) <= 2:
                spans.append(", ".join(
                    f"{c['task']} ({f.pct(c.get('rel_diff'))} "
                    f"{f.interval(c.get('rel_diff_ci_low'), c.get('rel_diff_ci_high'), f.pct)})"
                    for c in cs) + f", n = {cs[0]['n']} seeds")
            elif outcome in fnd.TESTED:  # many tasks: the range, the intervals are in the plot
                rel = sorted(c["rel_diff"] for c in cs if c.get("rel_diff") is not None)
                lows = [c["rel_diff_ci_low"] for c in cs if c.get("rel_diff_ci_low") is not None]
                highs = [c["rel_diff_ci_high"] for c in cs
                         if c.get("rel_diff_ci_high") is not None]
                spans.append(", ".join(c["task"] for c in cs) + (
                    f": {f.pct(rel[0])} to {f.pct(rel[-1])} (intervals within "
                    f"[{f.pct(min(lows))}, {f.pct(max(highs))}])" if rel and lows and highs
                    else "") + f", n = {cs[0]['n']} seeds each")
            else:
                why = ("degenerate runs" if outcome == "void" else
                       f"{cs[0]['n']} complete pair(s), {res.min_runs} needed")
                spans.append(", ".join(c["task"] for c in cs) + f" ({why})")
        shares = [c["flops_share"] for c in group if c.get("flops_share") is not None
                  and c.get("mode_b") == "merged"]
        if shares:
            spans.append(f"; compute-only floor: the adapter adds {f.share(min(shares))}"
                         + (f"-{f.share(max(shares))}" if max(shares) > min(shares) else "")
                         + " of the FLOPs")
        inconclusive = [c for c in group if c["outcome"] == "inconclusive"]
        if inconclusive:
            spans.append(f"; {fnd.power_short(inconclusive[0])}")
        paras.append(Paragraph.of(*spans, "."))
    rows = _ratio_rows(res, list(d.comparisons), str(d.seq_len))
    figure = None
    if rows:
        margin = res.spec.stats.latency_margin if any(
            c.get("equivalence_margin") for c in comps) else None
        figure = Figure(figs.ratio_figure(rows, margin), "RQ2 latency ratios",
                        "RQ2: latency ratio of the paired medians per task and batch size "
                        f"(length {d.seq_len}; {_conf(res)} interval; hollow: not tested); "
                        "black tick: the compute-only floor; shaded: the equivalence margin.")
    return Answer(question, _outcome_words(comps), paras, figure, anchor="rq2")


def answers(res: Results) -> Section:
    s = Section("Answers", "answers")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    return s.add(rq1_answer(res), rq2_answer(res))


def trust(res: Results) -> Section:
    """Can the answers be trusted: runs that learned, what the study could detect, what was
    voided and why."""
    s = Section("Can these answers be trusted?", "trust")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    runs = res.settings.get("runs") or {}
    items = []
    bad = res.degenerate_runs()
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for v in res.verdicts.values():
        by_task[v["task"]].append(v)
    per_task = []
    for task in res.view.tasks:
        vs = by_task.get(task, [])
        if vs:
            per_task.append(f"{task} {sum(v.get('learned') is True for v in vs)} of {len(vs)}")
    spans: list[str] = [Strong("Runs that learned:"),
                        f" {runs.get('learned', 0)} of {runs.get('judged', 0)} finished runs "
                        "(the lower bound of the main metric's bootstrap interval clears the "
                        "majority-class and chance rates, or accuracy's does where the main "
                        "metric is another, e.g. F1, which always predicting the majority "
                        f"class scores high): {', '.join(per_task)}."]
    by_accuracy = [v for v in res.verdicts.values()
                   if v.get("learned") is True and v.get("criterion") == "accuracy"
                   and v.get("main_metric") != "accuracy"]
    if by_accuracy:
        spans.append(f" {len(by_accuracy)} of them cleared on accuracy, not on their main "
                     f"metric ({', '.join(sorted({v['task'] for v in by_accuracy}))}).")
    if runs.get("not_judged"):
        spans.append(f" {runs['not_judged']} run(s) not judged: no baselines record (run "
                     "`peftlab run SPEC --stages baselines,stats,report`).")
    if bad:
        example = bad[0]
        spans.append(f" Degenerate runs are left out of the drift and deployment comparisons; "
                     f"e.g. {example['run_id']}: {example['reason']}.")
    items.append(Paragraph.of(*spans))
    primary = [c for c in res.comparisons if c.get("role") == "primary"]
    tested = [c for c in primary if c["status"] == "ok"]
    fam = (res.settings.get("families") or {}).get("primary", {})
    if primary:
        detect: list[str] = []
        seen = set()
        for c in tested:
            key = (c.get("kind"), c["n"], round(c.get("mde_dz") or 0, 2))
            if c.get("mde_dz") is None or key in seen:
                continue
            seen.add(key)
            what = ("across tasks" if c.get("kind") == "across_tasks" else f"n = {c['n']} seeds")
            detect.append(f"|d_z| \u2265 {f.stat(c['mde_dz'])} ({what})")
        text = (f"primary family of {fam.get('tested', len(tested))} tested of "
                f"{fam.get('planned', len(primary))} planned, {fnd.correction_name(primary[0])} "
                f"at alpha {res.spec.stats.alpha}; with {round(100 * res.spec.stats.power)}% "
                f"power the tests detect {', '.join(detect) or 'nothing (none was tested)'}.")
        items.append(Paragraph.of(Strong("What the study could detect:"), " " + text))
    void = [c for c in res.comparisons if c["outcome"] == "void"]
    if void:
        items.append(Paragraph.of(Strong("Voided:"), f" {len(void)} comparison(s) rest on "
                                  "degenerate runs and are not evidence:"))
        items += fnd.untested_lines(void, res.min_runs, limit=6)
    else:
        items.append(Paragraph.of(Strong("Voided:"), " nothing."))
    insufficient = [c for c in res.comparisons if c["outcome"] == "insufficient runs"]
    if insufficient:
        items.append(Paragraph.of(Strong("Not tested:"), f" {len(insufficient)} comparison(s) "
                                  "with too few complete pairs, one line per reason in "
                                  "Findings below."))
    s.add(Bullets(items))
    rows = []
    for v in sorted(res.verdicts.values(), key=lambda v: (
            res.view.tasks.index(v["task"]), list(res.view.methods).index(v["method"]),
            v["seed"])):
        rows.append([v["run_id"], v["task"], v["method"], str(v["seed"]),
                     f"{v.get('main_metric', '')} {f.metric(v.get('value'))} "
                     f"{f.interval(v.get('ci_low'), v.get('ci_high'), f.metric)}",
                     f.metric(v.get("majority")), f.metric(v.get("chance")),
                     f.metric(v.get("untrained_head")),
                     {True: "yes", False: "DEGENERATE", None: "not judged"}[v.get("learned")],
                     v.get("reason") or ""])
    if rows:
        s.add(Table(["Run", "Task", "Method", "Seed", "Main metric [CI]", "Majority class",
                     "Chance", "Untrained head", "Learned", "Why"], rows,
                    "Every finished run against its task's baselines (the same evaluation "
                    "examples; intervals: bootstrap over examples).",
                    numeric=[False, False, False, True, False, True, True, True, False, False]))
    if tested:
        s.add(Table(["Question", "Where", "Comparison", "n", "Corrected alpha (first step)",
                     "MDE d_z", "MDE in units", "Observed d_z", "Seeds needed", "Outcome"],
                    [[c.get("question") or "", fnd.where(c), fnd.subject(c), str(c["n"]),
                      f.pvalue(c.get("mde_alpha")), f.stat(c.get("mde_dz")),
                      fnd.value_format(c)(c.get("mde_diff")), f.stat(c.get("effect")),
                      f.text(c.get("runs_needed")) + (" per task" if c.get("kind") ==
                                                      "across_tasks" and c.get("runs_needed")
                                                      else ""),
                      c["outcome"]] for c in tested],
                    f"What each primary test could detect with {round(100 * res.spec.stats.power)}"
                    "% power: the minimum detectable d_z at its n and the family's corrected "
                    "alpha, the same in the measure's unit (at the observed spread), and the "
                    "seeds that would detect the observed effect.",
                    numeric=[False, False, False, True, True, True, True, True, True, False]))
    return s


# ----------------------------------------------------------------------------- front matter


def how_to_read(res: Results) -> Section:
    cfg = res.spec.stats
    s = Section("How to read this report", "how-to-read")
    fams = _families(res)
    fam_text = ", ".join(f"{name} ({v.get('tested', 0)} tested of {v.get('planned', 0)} "
                         "planned)" for name, v in fams.items())
    s.add(Bullets([
        Paragraph.of("Unit of analysis: one value per independent run (seed). Benchmarks enter "
                     "as each run's median latency, never as individual requests."),
        Paragraph.of("Runs that learned nothing: each run's main metric is set against the "
                     "majority-class rate, the best constant prediction and chance on the same "
                     "evaluation examples; a run whose bootstrap interval does not clear them "
                     "is degenerate, listed, and left out of the drift and deployment "
                     "comparisons."),
        Paragraph.of("Decision test: paired t-test (pairs matched by seed); when the paired "
                     "differences have zero spread t is undefined and the exact Wilcoxon "
                     "signed-rank test decides. Effect size d_z with its interval; intervals "
                     f"at {_conf(res)}."),
        Paragraph.of("Primary endpoints (one per question, corrected together across the "
                     "study, family 'primary'): "
                     + "; ".join(f"{q}: {t}" for q, t in
                                 (res.settings.get("endpoints") or {}).items())
                     + ". Everything else is exploratory, corrected within its own family."),
        Paragraph.of(f"Multiplicity: {fnd.correction_name({'correction': cfg.correction})} "
                     f"correction at alpha = {cfg.alpha} within each family: {fam_text}."),
        Paragraph.of("No-difference claims use equivalence tests (TOST): main metric within "
                     f"\u00b1{f.metric(cfg.metric_margin)} (absolute), latency within "
                     f"\u00b1{f.pct(cfg.latency_margin).lstrip('+')} of the reference's mean."),
        Paragraph.of("Outcomes: ", Outcome("different"), " (corrected p < alpha, not inside the "
                     "margin), ", Outcome("negligible"), " (different, but TOST places it inside "
                     "the margin), ", Outcome("equivalent"), " (corrected TOST p < alpha), ",
                     Outcome("inconclusive"), " (neither; with what the study could have "
                     "detected), ", Outcome("insufficient runs"),
                     f" (fewer than {cfg.min_runs} complete pairs: no test), ", Outcome("void"),
                     " (the runs are degenerate: not evidence)."),
        Paragraph.of("Drift: layer bands are over transformer layers; layer 0 (the embedding "
                     "output) is shown on its own and never averaged in. The null floor is the "
                     "95% quantile of the measure after shuffling the pairing of examples (its "
                     "mean is kept in the data); cosine is centred (probe-set mean removed) "
                     "unless labelled uncentred."),
        Paragraph.of(f"Power: minimum detectable effects at {round(100 * cfg.power)}% power, at "
                     "each test's n and its family's corrected alpha (Holm's first step)."),
        Paragraph.of("Precision: " + "; ".join(f"{k}: {v}" for k, v in f.PRECISION.items())
                     + ". Missing values print as " + f.MISSING + "."),
    ]))
    return s


def findings(res: Results) -> Section:
    s = Section("Findings", "findings")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    s.add(Paragraph.of(fnd.counts_text(res.comparisons) + "."))
    groups = [("Primary endpoints", [c for c in res.comparisons if c.get("role") == "primary"])]
    for family in _families(res):
        if family != "primary":
            groups.append((f"Exploratory: {family.split('/', 1)[-1].replace('_', ' ')}",
                           [c for c in [*res.comparisons, *res.readouts]
                            if c.get("family") == family and c.get("role") != "primary"]))
    for title, comps in groups:
        sub = s.sub(title)
        tested = [c for c in comps if c["outcome"] in fnd.TESTED]
        if tested:
            sub.add(Bullets([fnd.phrase(c) for c in tested]))
        untested = fnd.untested_lines(comps, res.min_runs)
        if untested:
            sub.add(Paragraph.of("Not tested, one line per reason:"), Bullets(untested))
        if not comps:
            sub.add(Paragraph.of("No comparison of this kind: the study has no results for "
                                 "it (see the sections below)."))
    return s


def runs_section(res: Results) -> Section:
    s = Section("Runs", "runs")
    v = res.view
    rows = []
    for task in v.tasks:
        for method in v.methods:
            for seed in v.seeds:
                rec = v.records.get((task, method, seed)) or {}
                metric = None
                if rec.get("status") == "done":
                    metric = (rec.get("metrics") or {}).get(rec.get("main_metric"), {}).get("value")
                params = rec.get("params") or {}
                learned = (res.verdicts.get((task, method, seed)) or {}).get("learned")
                rows.append([
                    v.run_ids[(task, method, seed)], task, method, str(seed),
                    rec.get("status", "not run"),
                    f"{rec.get('main_metric')} {f.metric(metric)}" if metric is not None
                    else (rec.get("failure_reason") or f.MISSING),
                    {True: "yes", False: "DEGENERATE", None: f.MISSING}[learned],
                    f.seconds(rec.get("train_time_s")), f.integer(params.get("trainable")),
                    f.share(params.get("trainable_share_of_base")),
                ])
    s.add(Paragraph.of(f"{len(rows)} planned runs: {len(v.tasks)} task(s) x {len(v.methods)} "
                       f"method(s) x {len(v.seeds)} seed(s); 'learned' as judged in the trust "
                       "panel."),
          Table(["Run", "Task", "Method", "Seed", "Status", "Main metric / failure", "Learned",
                 "Train time (s)", "Trainable params", "Trainable / base"], rows,
                "Every planned run.",
                numeric=[False, False, False, True, False, False, False, True, True, True]))
    return s


# ----------------------------------------------------------------------------- accuracy


def accuracy(res: Results) -> Section:
    s = Section("Accuracy", "accuracy")
    sums = res.summaries_of("metric")
    if not any(sm["values"] for sm in sums):
        done = [r for r in res.view.records.values() if r.get("status") == "done"]
        return s.add(not_measured("statistics of finished runs" if done else "finished runs",
                                  "stats" if done else "finetune"))
    v = res.view
    rows = []
    for sm in sums:
        per_seed = []
        for seed in sm["seeds"]:
            m = (v.done(sm["task"], sm["method"], seed) or {}).get("metrics", {}).get(
                sm["metric"], {})
            flag = " (degenerate)" if (sm.get("learned") or {}).get(str(seed)) is False else ""
            per_seed.append(f"{seed_label(seed)}: {f.metric(m.get('value'))} "
                            f"{f.interval(m.get('ci_low'), m.get('ci_high'), f.metric)}{flag}")
        rows.append([sm["task"], sm["method"], sm["metric"], str(sm["n"]), f.metric(sm["mean"]),
                     f.interval(sm.get("ci_low"), sm.get("ci_high"), f.metric),
                     "; ".join(per_seed) or f.MISSING])
    s.add(Table(["Task", "Method", "Metric", "n", "Mean", f"{_conf(res)} CI (over seeds)",
                 "Per seed: value [bootstrap CI over examples]"], rows,
                "Main metric of each task and method: mean over seeds with its t-interval, and "
                "each seed's value with its bootstrap interval over evaluation examples.",
                numeric=[False, False, False, True, True, True, False]))
    base_ref: dict[str, dict[str, float | None]] = {}
    brows = []
    for task in v.tasks:
        b = res.baselines.get(task)
        if b is None:
            continue
        main = b.main_metric
        maj = ((b.majority or {}).get("metrics") or {}).get(main, {})
        chance = b.chance["metrics"][main]["value"]
        best = b.best_constant.get(main, {})
        head = ((b.untrained_head or {}).get("metrics") or {}).get(main, {})
        fitted = ((b.probe_head or {}).get("metrics") or {}).get(main, {})
        base_ref[task] = {"majority": maj.get("value"), "chance": chance,
                          "probe": fitted.get("value")}
        brows.append([task, main, str(b.eval_examples),
                      ", ".join(f"{k}: {n}" for k, n in b.label_counts.items()),
                      f"{f.metric(maj.get('value'))} "
                      f"{f.interval(maj.get('ci_low'), maj.get('ci_high'), f.metric)} "
                      f"(always '{(b.majority or {}).get('label_name', '')}')",
                      f"{f.metric(best.get('value'))} (always '{best.get('label_name', '')}')",
                      f"{f.metric(chance)} ({b.chance['metrics'][main]['method']})",
                      f"{f.metric(head.get('value'))} "
                      f"{f.interval(head.get('ci_low'), head.get('ci_high'), f.metric)}"
                      if head else (b.untrained_error or f.MISSING),
                      f"{f.metric(fitted.get('value'))} "
                      f"{f.interval(fitted.get('ci_low'), fitted.get('ci_high'), f.metric)}"
                      if fitted else (b.probe_error or "not used")])
    probed = any(res.baselines[t].probe_head is not None or res.baselines[t].probe_error
                 for t in v.tasks if t in res.baselines)
    if brows:
        cols = ["Task", "Metric", "Eval examples", "Labels", "Majority class [CI]",
                "Best constant", "Chance (uniform guessing)", "Base, untrained head [CI]"]
        caption = ("What a run must beat, on the evaluation examples the runs are evaluated on "
                   "(peftlab.baseline_scores).")
        if probed:  # the runs start from a head fitted on frozen features: show where they start
            cols.append("Base, probe-fitted head [CI]")
            caption += (" Probe-fitted head: the base with its head fitted by logistic "
                        "regression on the frozen features of the training subset, where every "
                        "run with training.head_init: probe starts; what a run adds to it is "
                        "what fine-tuning learned.")
        else:
            brows = [row[:-1] for row in brows]
        s.add(Table(cols, brows, caption, numeric=[False, False, True, False] + [True] * (
            len(cols) - 4)))
    s.add(Figure(figs.accuracy_figure(sums, v.tasks, list(v.methods), base_ref),
                 "Main metric per task and method",
                 "Main metric per task: each seed (small dots; a cross: degenerate run) and the "
                 "mean with its interval over seeds (marker and bar); dashed: majority-class "
                 "rate, dotted: chance"
                 + ("; dash-dotted: the probe-fitted head the runs started from." if probed
                    else ".")))
    comps = res.comparisons_of("metric")
    if comps:
        s.add(fnd.comparison_table(comps, "PEFT vs full fine-tuning, paired by seed (the main "
                                          "metric is a primary endpoint; other metrics are "
                                          "exploratory)."))
    if res.variance:
        vrows = []
        for vd in res.variance:
            shares = vd.get("shares") or {}
            vrows.append([vd["task"], vd["metric"], str(vd["n_seeds"]),
                          f.share(shares.get("method")), f.share(shares.get("seed")),
                          f.share(shares.get("residual")), vd["status"], vd.get("note", "")])
        s.add(Table(["Task", "Metric", "Seeds", "Method share", "Seed share",
                     "Residual share", "Status", "Note"], vrows,
                    "Share of the main metric's variance explained by method and by seed "
                    "(sequential sums of squares, seeds where every method finished).",
                    numeric=[False, False, True, True, True, True, False, False]))
    return s


# ----------------------------------------------------------------------------- drift


def _measures(res: Results) -> list[str]:
    """Every measure the drift table holds, in registration order."""
    present = {m for r in res.drift for m in (r.get("values") or {})}
    return [m for m in MEASURES.names() if m in present]


def drift(res: Results) -> Section:
    s = Section("Representational drift", "drift")
    if not res.drift:
        return s.add(not_measured("representation drift records", "drift"))
    v = res.view
    methods = list(v.methods)
    first = res.drift[0]
    measures = _measures(res)
    labels = {m: measure_label(m) for m in measures}
    boot = next((r["bootstrap"] for r in res.drift if r.get("bootstrap")), None)
    s.add(Paragraph.of(
        f"Similarity of each run's pooled representations ({first.get('pooling')} pooling, "
        f"n = {first.get('n')} probe examples) to the base model's, per layer, for every "
        f"measure computed ({', '.join(labels.values())}). Lines: mean over learned runs, "
        f"band: {_conf(res)} t-interval over seeds; dotted: the null floor (95% quantile of "
        "the measure after shuffling the pairing of examples, at the same n and d); dashed and "
        "hatched: the seed-to-seed control (two runs of the same method). Layer 0 (embeddings) "
        "is drawn apart and left out of every band; layers where a measure is undefined are "
        "left out of every mean."
        + (f" The primary measure ({measure_label(boot['measure'])}) also has a bootstrap "
           f"interval over probe examples per run and layer ({boot['n_resamples']} resamples)."
           if boot else "")))
    degenerate = [d for d in res.degenerate_runs()]
    if degenerate:
        s.add(Paragraph.of(f"{len(degenerate)} degenerate run(s) are left out of the lines, "
                           "floors, controls and tests: "
                           + ", ".join(d["run_id"] for d in degenerate) + "."))
    layer_sums = res.summaries_of("drift_layer")
    for task in v.tasks:
        ls = [r for r in layer_sums if r["task"] == task]
        if not ls and any(r["task"] == task for r in res.drift):
            s.add(Paragraph.of(Strong(f"{task}:"), " every run with drift records is "
                               "degenerate, so there is no learned run to draw; its drift "
                               "comparisons are void."))
        if ls:
            s.add(Figure(figs.drift_figure(task, ls, measures, methods, labels),
                         f"Per-layer drift on {task}",
                         f"{task}: similarity to the base model per layer, one panel per "
                         "measure (line: mean over learned runs; band: t-interval over seeds; "
                         "dotted: null floor q95; dashed/hatched: seed-to-seed)."))
    undefined = sorted({(v.tasks.index(r["task"]), r["layer"], m, why) for r in res.drift
                        for m, why in (r.get("undefined") or {}).items()})
    if undefined:
        s.add(Table(["Task", "Layer", "Measure", "Why undefined"],
                    [[v.tasks[t], str(layer), measure_label(m), why]
                     for t, layer, m, why in undefined],
                    "Layers left out of the means (measure undefined there)."))
    rows = []
    for sm in res.summaries_of("drift"):
        layers = sm["layers"]
        span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        rows.append([sm["task"], measure_label(sm["measure"]), f"{sm['band']} ({span})",
                     sm["method"], str(sm["n"]), f.similarity(sm.get("mean")),
                     f.interval(sm.get("ci_low"), sm.get("ci_high"), f.similarity),
                     f.similarity(sm.get("null_q95")), f.similarity(sm.get("null_mean")),
                     f.pvalue(sm.get("p_max")), f.similarity(sm.get("seed_to_seed_mean")),
                     f.interval(sm.get("seed_to_seed_ci_low"), sm.get("seed_to_seed_ci_high"),
                                f.similarity)])
    s.add(Table(["Task", "Measure", "Band (layers)", "Method", "Runs", "Mean",
                 f"{_conf(res)} CI over seeds", "Null floor (q95)", "Null mean",
                 "Permutation p (max)", "Seed-to-seed", "Seed-to-seed CI"], rows,
                "Every measure per layer band: base vs run over learned runs, beside its null "
                "floor (the largest permutation p over runs and layers: every value clears its "
                "floor when it is small) and the seed-to-seed control. Procrustes is a distance "
                "(0 = same up to rotation); the rest are similarities.",
                numeric=[False, False, False, False, True, True, True, True, True, True, True,
                         True]))
    lrows = []
    for sm in layer_sums:
        lrows.append([sm["task"], measure_label(sm["measure"]),
                      f"{sm['layer']} ({sm.get('layer_name') or ''})", sm["method"],
                      str(sm["n"]), f.similarity(sm.get("mean")),
                      f.interval(sm.get("ci_low"), sm.get("ci_high"), f.similarity),
                      f.interval(sm.get("bootstrap_low"), sm.get("bootstrap_high"),
                                 f.similarity),
                      f.similarity(sm.get("null_q95")), f.pvalue(sm.get("p_max")),
                      f.similarity(sm.get("seed_to_seed_mean"))])
    if lrows:
        s.add(Table(["Task", "Measure", "Layer", "Method", "Runs", "Mean",
                     f"{_conf(res)} CI over seeds", "Probe bootstrap CI (mean bounds)",
                     "Null floor (q95)", "Permutation p (max)", "Seed-to-seed"], lrows,
                    "Every measure per layer (base vs run, learned runs): the t-interval over "
                    "seeds, the bootstrap interval over probe examples (primary measure; bounds "
                    "averaged over runs), the null floor and the largest permutation p.",
                    numeric=[False, False, False, False, True, True, True, True, True, True,
                             True]))
    comps = [c for c in res.comparisons_of("drift")]
    if comps:
        s.add(fnd.comparison_table(comps, "Method vs method on base-vs-run similarity, paired "
                                          "by seed, per task and band, and across tasks (mixed "
                                          "model)."))
    noise = res.comparisons_of("seed_noise")
    if noise:
        s.add(fnd.comparison_table(noise, "Drift against seed noise: each run's similarity to "
                                          "the base vs the mean seed-to-seed similarity of the "
                                          "pairs containing it (mean over transformer layers; "
                                          "exploratory, the references share pairs)."))
    return s


# ----------------------------------------------------------------------------- weights


def weights(res: Results) -> Section:
    s = Section("Weight space", "weights")
    if not res.weights:
        return s.add(not_measured("weight-space records", "drift"))
    bad = {d["run_id"] for d in res.degenerate_runs()}
    groups: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in res.weights:
        if r["run_id"] in bad:
            continue
        groups[(r["task"], r["method"], r.get("matrix") or r["module"].split(".")[-1],
                r.get("update", ""))].append(r)
    rows = []
    order = {t: i for i, t in enumerate(res.view.tasks)}
    morder = {m: i for i, m in enumerate(res.view.methods)}
    for (task, method, matrix, update), recs in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], 99), morder.get(kv[0][1], 99),
                                            kv[0][2])):
        ok = [r for r in recs if not r.get("undefined")]

        def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        dtypes = sorted({str(r.get("dtype")) for r in ok if r.get("dtype")})
        rows.append([task, method, matrix, update, str(len({r["run_id"] for r in recs})),
                     str(len(recs)), f.sig(mean("update_fro")), f.sig(mean("relative_update")),
                     f.num(mean("effective_rank"), 2), f.num(mean("numerical_rank"), 2),
                     f.num(mean("rank_energy"), 2), f"{f.sig(mean('rank_cutoff'))} "
                     f"({', '.join(dtypes) or f.MISSING})",
                     f.num(mean("intruder_dims"), 2),
                     f.integer(sum(r.get("intruder_dims") or 0 for r in ok)),
                     str(len(recs) - len(ok))])
    first = next((r for r in res.weights if r.get("top_k")), {})
    s.add(Paragraph.of(
        "Update of each adapted weight matrix, averaged over the matrices of each kind and over "
        "learned runs: 'B A (exact)' is LoRA's update formed from its factors (rank at most r, "
        "no rounding); 'merged - base' the merged adapter minus the base (DoRA, AdaLoRA, IA3); "
        "'tuned - base' full fine-tuning. Ranks count singular values above a cut-off set by "
        "the precision the weights are stored in (shown with its dtype). Intruder dimensions: "
        f"top-{first.get('top_k', f.MISSING)} singular vectors of the tuned matrix with "
        f"|cosine| below {first.get('epsilon', f.MISSING)} to every singular vector of the "
        "base."),
          Table(["Task", "Method", "Matrix", "Update", "Runs", "Matrices", "||dW||_F (mean)",
                 "||dW||_F / ||W||_F (mean)", "Effective rank (mean)",
                 "Numerical rank (mean)", "Energy rank (mean)", "Rank cut-off (dtype)",
                 "Intruder dims (mean)", "Intruder dims (total)", "Undefined"], rows,
                "Weight-space statistics per matrix kind.",
                numeric=[False, False, False, False] + [True] * 11))
    return s


# ----------------------------------------------------------------------------- deployment


def _who(r: dict[str, Any]) -> str:
    return served_tasks(r) or f.MISSING


def _bench_sort(r: dict[str, Any], tasks: list[str]) -> tuple:
    """Tasks in spec order (several served tasks last), then mode, method, seed, sweep point."""
    who = (tasks.index(r["task"]), "") if r["task"] in tasks else (len(tasks), _who(r))
    return (who, mode_sort_key(r["mode"]), str(r["method"]), str(r["seed"]),
            r["batch_size"] or 0, seq_sort_key(r["seq_len"]) if r["seq_len"] is not None
            else (2, 0))


def deployment(res: Results) -> Section:
    s = Section("Deployment", "deployment")
    rows = sorted(res.bench, key=lambda r: _bench_sort(r, res.view.tasks))
    if not rows:
        return s.add(not_measured("benchmark records", "bench"))
    modes = sorted({r["mode"] for r in rows}, key=mode_sort_key)

    gate = s.sub("Correctness gate")
    grows = []
    seen = set()
    for r in rows:
        key = (r["mode"], _who(r), r["method"], r["seed"])
        if key in seen or not r["gate"]:
            continue
        seen.add(key)
        checks = r["gate"].get("checks") or []
        worst = max((c.get("rel_diff") for c in checks if c.get("rel_diff") is not None),
                    default=None)
        grows.append([r["mode"], _who(r), f.text(r["method"]), f.text(r["seed"]),
                      "passed" if r["gate"].get("passed") else "FAILED", f.sig(worst),
                      f.sig(r["gate"].get("tolerance")), str(r["gate"].get("dtype", f.MISSING)),
                      "; ".join(r["gate"].get("failures") or []) or "none"])
    if grows:
        rule = next((r["gate"].get("rule") for r in rows if r["gate"].get("rule")), "")
        gate.add(Paragraph.of(f"Rule: {rule}. A mode that fails is not timed."),
                 Table(["Mode", "Task(s)", "Method", "Seed", "Gate", "Worst relative diff",
                        "Tolerance", "dtype", "Failures"], grows,
                       numeric=[False, False, False, True, False, True, True, False, False]))
    else:
        gate.add(not_measured("gate results", "bench"))
    failed = [r for r in rows if not r["ok"]]
    if failed:
        gate.add(Table(["Mode", "Task(s)", "Method", "Seed", "Batch", "Length", "Why"],
                       [[r["mode"], _who(r), f.text(r["method"]), f.text(r["seed"]),
                         str(r["batch_size"]), str(r["seq_len"]), r["failure"] or "failed"]
                        for r in failed], "Sweep points not timed."))

    ok = [r for r in rows if r["ok"]]
    dist = s.sub("Latency distributions")
    targets = [t for t in res.view.tasks if any(r["task"] == t for r in ok)]
    served = sorted({served_tasks(r) for r in ok if r["task"] is None and r["tasks"]})
    for who in targets + served:
        sel = [r for r in ok if _who(r) == who and r["latencies_ms"]]
        if not sel:
            continue
        seqs = sorted({str(r["seq_len"]) for r in sel}, key=seq_sort_key)
        sel = [r for r in sel if str(r["seq_len"]) == seqs[0]]
        dist.add(Figure(figs.ecdf_figure(who, sel, modes), f"Latency ECDF on {who}",
                        f"{who}, sequence length {seqs[0]}: distribution of every timed request "
                        "per mode (all runs pooled)."))
    if not dist.blocks:
        dist.add(not_measured("raw latencies", "bench"))

    pct = s.sub("Percentiles and throughput")
    pct.add(Table(["Task(s)", "Mode", "Method", "Seed", "Batch", "Length", "Requests",
                   "Mean (ms)", "p50", "p90", "p95", "p99", "Requests/s at concurrency 1",
                   "Tokens/s at concurrency 1"],
                  [[_who(r), r["mode"], f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
                    str(r["seq_len"]), f.integer(r["latency"].get("count")),
                    f.ms(r["latency"].get("mean")), f.ms(r["latency"].get("p50")),
                    f.ms(r["latency"].get("p90")), f.ms(r["latency"].get("p95")),
                    serving_report.p99_cell(r["latency"]),
                    f.rate(r["throughput"].get("requests_per_s")),
                    f.rate(r["throughput"].get("tokens_per_s"))] for r in ok],
                  "Per benchmarked model and sweep point, from its raw latencies (ms). p99 only "
                  "where it rests on at least 100 requests. Throughput at concurrency 1: one "
                  "request at a time, 1 / latency (serving under load is measured below).",
                  numeric=[False, False, False, True, True, False] + [True] * 8))

    sweep = s.sub("Sweep over batch size and sequence length")
    points = _sweep_points(ok)
    seqs = sorted({p["seq_len"] for p in points}, key=seq_sort_key)
    sweep.add(Figure(figs.sweep_figure(points, modes, seqs), "Latency sweep",
                     "Median latency per request against batch size, per mode (median over "
                     "runs and tasks of each run's median)."))
    sweep.add(Table(["Mode", "Batch", "Length", "Models", "Median latency (ms)",
                     "ms per example"],
                    [[p["mode"], str(p["batch_size"]), p["seq_len"], str(p["n"]),
                      f.ms(p["median_ms"]), f.ms(p["median_ms"] / p["batch_size"])]
                     for p in points], numeric=[False, True, False, True, True, True]))

    over = s.sub("Unmerged overhead and its compute floor")
    orows = []
    for c in [c for c in res.comparisons_of("latency") if c.get("pair") == "unmerged_vs_merged"]:
        orows.append([c["task"], str(c["batch_size"]), str(c["seq_len"]), c["method_a"],
                      str(c["n"]), f.pct(c.get("rel_diff")),
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct),
                      f.share(c.get("flops_share")), fnd.outcome_cell(c)])
    if orows:
        over.add(Paragraph.of(
            "Measured latency of the unmerged adapter relative to the same adapter merged, "
            "beside the share of FLOPs the adapter path adds (linear layers only): the floor "
            "below which the overhead cannot be compute. Overhead above it is framework cost "
            "(extra kernel launches, memory traffic)."),
                 Table(["Task", "Batch", "Length", "Method", "n", "Measured overhead",
                        "CI", "FLOPs floor", "Outcome"], orows,
                       numeric=[False, True, False, False, True, True, True, True, False]))
    else:
        over.add(not_measured("unmerged vs merged comparisons", "bench", "stats"))

    mem = s.sub("Memory")
    mrows = [[_who(r), r["mode"], f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
              str(r["seq_len"]), f.nbytes(r["memory_after_load"].get("rss_delta_bytes")),
              f.nbytes(r["memory"].get("rss_peak_bytes")),
              f.nbytes(r["memory"].get("cuda_peak_allocated_bytes")),
              f.nbytes(r["memory"].get("cuda_peak_reserved_bytes"))]
             for r in ok if r["memory"]]
    mem.add(Table(["Task(s)", "Mode", "Method", "Seed", "Batch", "Length", "RSS added by load",
                   "Peak RSS", "CUDA peak allocated", "CUDA peak reserved"], mrows,
                  "Peak memory over the warm-up calls and one call with the longest request of "
                  "each sweep point.",
                  numeric=[False, False, False, True, True, False, True, True, True, True])
            if mrows else not_measured("memory measurements", "bench"))

    load = s.sub("Load times")
    lrows = []
    seen = set()
    for r in rows:
        key = (r["mode"], _who(r), r["method"], r["seed"])
        if key in seen or not r["load"]:
            continue
        seen.add(key)
        ld = r["load"]
        cache = ld.get("page_cache") or {}
        lrows.append([r["mode"], _who(r), f.text(r["method"]), f.text(r["seed"]),
                      f.ms(ld.get("cold_ms")), f.ms(ld.get("warm_ms_median")),
                      str(len(ld.get("warm_ms") or [])),
                      f"{f.nbytes(cache.get('resident_bytes_before'))} \u2192 "
                      f"{f.nbytes(cache.get('resident_bytes_after'))}"
                      if "resident_bytes_before" in cache else f.MISSING,
                      str(cache.get("method", f.MISSING))])
    load.add(Table(["Mode", "Task(s)", "Method", "Seed", "Cold load (ms)",
                    "Repeated load (ms, median)", "Repeats", "Page cache before \u2192 after",
                    "Cache drop"], lrows, "Cold: first load in a fresh process after asking the "
                   "OS to drop the weight files from its page cache (resident bytes before and "
                   "after are the evidence); repeated: the same load again, cache warm.",
                   numeric=[False, False, False, True, True, True, True, True, False])
             if lrows else not_measured("load times", "bench"))

    storage(res, s.sub("Storage"))
    serving_report.deployment_parts(res, s)
    comps = res.comparisons_of("latency", "serving")
    if comps:
        s.sub("Deployment comparisons").add(fnd.comparison_table(
            comps, "Median latency per run, paired by seed (primary at the declared sweep "
                   "point, exploratory elsewhere; serving: several adapters on one base vs "
                   "each served alone)."))
    return s


def _sweep_points(ok: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple[str, int, str], list[float]] = defaultdict(list)
    for r in ok:
        groups[(r["mode"], r["batch_size"], str(r["seq_len"]))].append(r["p50_ms"])
    return [{"mode": m, "batch_size": b, "seq_len": q, "n": len(v),
             "median_ms": float(np.median(v))}
            for (m, b, q), v in sorted(groups.items(),
                                       key=lambda kv: (mode_sort_key(kv[0][0]), kv[0][1],
                                                       seq_sort_key(kv[0][2])))]


def storage(res: Results, s: Section) -> None:
    rows = []
    v = res.view
    for task in v.tasks:
        for method in v.methods:
            for seed in v.seeds:
                rec = v.done(task, method, seed)
                if rec is not None and rec.get("artifact_bytes") is not None:
                    rows.append([task, method, str(seed), f.nbytes(rec["artifact_bytes"]),
                                 f.nbytes(rec.get("artifact_weight_bytes"))])
    if rows:
        s.add(Table(["Task", "Method", "Seed", "Artifact on disk", "Weights on disk"], rows,
                    "What each run saved (adapter and head for PEFT, the whole model for full).",
                    numeric=[False, False, True, True, True]))
    served = []
    seen = set()
    for r in sorted(res.bench, key=lambda r: _bench_sort(r, v.tasks)):
        st = r["storage"]
        key = (r["mode"], r["unit"])
        if not st or key in seen:
            continue
        seen.add(key)
        served.append([r["mode"], _who(r), f.text(r["method"]), f.text(r["seed"]),
                       f.nbytes(st.get("base_weight_bytes")), f.nbytes(st.get("artifact_bytes")),
                       f.nbytes(st.get("loaded_file_bytes")),
                       f.nbytes(st.get("served_param_bytes"))])
    if served:
        s.add(Table(["Mode", "Task(s)", "Method", "Seed", "Base weights", "Artifacts",
                     "Files a server loads", "Parameters in memory"], served,
                    "What each deployment mode reads from disk and holds in memory.",
                    numeric=[False, False, False, True, True, True, True, True]))
    if not s.blocks:
        s.add(not_measured("artifact sizes", "finetune"))


# ----------------------------------------------------------------------------- decision


def served(x: dict[str, Any]) -> str:
    """'lora merged', 'full' (a full model is served one way only)."""
    return x["method"] if x["mode"] == "full" else f"{x['method']} {x['mode']}"


def decision(res: Results) -> Section:
    s = Section("Deployment decision", "decision")
    # trained models served one at a time (modes with an artifact, one per unit)
    single = {m for m in mode_names() if get_mode(m).max_artifacts == 1}
    lat = [x for x in res.summaries_of("latency") if x["mode"] in single]
    if not lat:
        return s.add(not_measured("latency summaries", "bench", "stats"))
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for x in lat:
        groups[(x["task"], x["batch_size"], str(x["seq_len"]))].append(x)
    order = {t: i for i, t in enumerate(res.view.tasks)}
    rows = []
    for (task, batch, seq), xs in sorted(groups.items(), key=lambda kv: (
            order.get(kv[0][0], 99), kv[0][1], seq_sort_key(kv[0][2]))):
        xs = sorted(xs, key=lambda x: x["median"])
        best = xs[0]
        row = [task, str(batch), seq, served(best), f.ms(best["median"]),
               str(best["n"])]
        if len(xs) > 1:
            nxt = xs[1]
            c = (res.find(area="latency", task=task, batch_size=batch, seq_len=seq,
                          mode_a=best["mode"], method_a=best["method"], mode_b=nxt["mode"],
                          method_b=nxt["method"])
                 or res.find(area="latency", task=task, batch_size=batch, seq_len=seq,
                             mode_a=nxt["mode"], method_a=nxt["method"], mode_b=best["mode"],
                             method_b=best["method"]))
            row += [served(nxt), f.ms(nxt["median"]),
                    f.pct(nxt["median"] / best["median"] - 1) if best["median"] else f.MISSING,
                    fnd.outcome_cell(c) if c else "not compared"]
        else:
            row += [f.MISSING] * 4
        rows.append(row)
    s.add(Paragraph.of("Fastest way to serve each task's trained model at each sweep point "
                       "(lowest median over runs of the per-run median latency), the runner-up, "
                       "and whether the stored paired comparison between the two supports the "
                       "ranking ('inconclusive' or 'equivalent': either choice is defensible on "
                       "latency)."),
          Table(["Task", "Batch", "Length", "Fastest", "Median (ms)", "Runs", "Runner-up",
                 "Median (ms)", "Runner-up slower by", "Stats outcome (pair)"], rows,
                numeric=[False, True, False, False, True, True, False, True, True, False]))
    serving = res.comparisons_of("serving")
    if serving:
        s.add(Table(["Task (served group)", "Batch", "Length", "Mode",
                     "Mean of run medians (ms)", "Single adapter (ms)", "Cost", "CI", "Outcome"],
                    [[f"{c['task']} ({c.get('served', c['task'])})", str(c["batch_size"]),
                      str(c["seq_len"]),
                      f"{c['mode_a']}-{c['k']} ({c['method_a']})", f.ms(c.get("mean_a")),
                      f.ms(c.get("mean_b")), f.pct(c.get("rel_diff")),
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct),
                      fnd.outcome_cell(c)] for c in serving],
                    "What serving several adapters on one base costs per request, per task: "
                    "that task's requests in the shared stream against its single adapter on "
                    "the same batches (means over seeds of per-run medians).",
                    numeric=[False, True, False, False, True, True, True, True, False]))
    switching = [r for r in res.bench if r["ok"] and "switches" in r["extras"]]
    if switching:
        s.add(Table(["Served tasks", "Method", "Seed", "Batch", "Length", "Requests",
                     "Switched", "Median with switch (ms)", "Median without switch (ms)"],
                    [[_who(r), f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
                      str(r["seq_len"]), f.integer(r["latency"].get("count")),
                      f.share(r["extras"].get("switch_share")),
                      f.ms(r["extras"].get("p50_ms_with_switch")),
                      f.ms(r["extras"].get("p50_ms_without_switch"))]
                     for r in sorted(switching, key=lambda r: _bench_sort(r, res.view.tasks))],
                    "Adapter switching inside the timed request stream (multi): requests that "
                    "had to switch the active adapter against those that did not (descriptive, "
                    "requests of one run are not independent).",
                    numeric=[False, False, True, True, False, True, True, True, True]))
    line = serving_report.serving_decision(res)
    if line:
        s.add(Paragraph.of("Serving under load: ", line))
    sizes = defaultdict(list)
    for rec in res.view.records.values():
        if rec.get("status") == "done" and rec.get("artifact_bytes") is not None:
            sizes[rec["method"]].append(rec["artifact_bytes"])
    if sizes:
        k = len(res.view.tasks)
        s.add(Table(["Method", "Mean artifact", f"{k} task(s) on disk"],
                    [[m, f.nbytes(np.mean(b)), f.nbytes(k * np.mean(b))]
                     for m, b in sizes.items()],
                    "Storage to serve every task of the study (PEFT adapters share one base, "
                    "which is not counted here; full fine-tuning stores one model per task).",
                    numeric=[False, True, True]))
    return s


# ----------------------------------------------------------------------------- data, environment


def data(res: Results) -> Section:
    s = Section("Data", "data")
    s.add(Paragraph.of("Text normalisation: ", res.ctx.data.normalisation()["rule"]))
    if not res.data:
        return s.add(not_measured("data records", "data"))
    rows = []
    for d in res.data:
        desc = d.get("describe_used") or d.get("describe") or {}
        labels = desc.get("label_counts") or desc.get("label_stats") or {}
        rows.append([d["task"], d["split"], str(d.get("source", f.MISSING)),
                     f.integer(d.get("rows")), f.integer(d.get("rows_used")),
                     ", ".join(f"{k}: {val}" for k, val in labels.items()) or f.MISSING])
    s.add(Table(["Task", "Split", "Source", "Rows", "Rows used", "Labels (rows used)"], rows,
                numeric=[False, False, False, True, True, False]))
    return s


def environment(res: Results) -> Section:
    s = Section("Environment and provenance", "environment")
    prov = res.meta.get("provenance") or {}
    done = [r for r in res.view.records.values() if r.get("status") == "done"]
    run_prov = [r.get("provenance") or {} for r in done]
    versions = prov.get("versions") or (run_prov[0].get("versions") if run_prov else {}) or {}
    device = prov.get("device") or (run_prov[0].get("device") if run_prov else {}) or {}
    spec = res.spec
    bench_env = next((r["environment"] for r in res.bench if r["environment"]), {})
    commits = sorted({p.get("toolkit_commit") for p in [prov, *run_prov]
                      if p.get("toolkit_commit")})
    revisions = sorted({str(p.get("model_revision")) for p in run_prov
                        if p.get("model_revision") is not None})
    s.add(Table(["Item", "Value"], [
        ["Study", spec.name],
        ["Model", spec.model.name + (f" ({spec.model.gguf_file})" if spec.model.gguf_file
                                     else "")],
        ["Model revision", ", ".join(revisions) or f.MISSING],
        ["Weights dtype", spec.model.dtype],
        ["Training precision", spec.training.precision],
        ["Representation dtype", spec.represent.dtype],
        ["Device requested", spec.device],
        ["Benchmark device", str(bench_env.get("device_name") or f.MISSING)],
        ["Benchmark dtype", str(bench_env.get("dtype") or f.MISSING)],
        ["Benchmark threads", f.text(bench_env.get("torch_threads"))],
        ["Toolkit commit", ", ".join(commits) or f.MISSING],
        ["Host", str(prov.get("host", f.MISSING))],
        ["Recorded", str(prov.get("time", f.MISSING))],
    ]))
    if device:
        s.add(Table(["Device", "Value"], [[str(k), str(v)] for k, v in device.items()]))
    if versions:
        s.add(Table(["Package", "Version"], [[str(k), str(v)] for k, v in versions.items()]))
    checks = []
    for d in res.data:
        checks.append([d["task"], d["split"], str(d.get("path") or d.get("source") or f.MISSING),
                       str(d.get("checksum", f.MISSING)),
                       str(d.get("content_checksum", f.MISSING))])
    if checks:
        s.add(Table(["Task", "Split", "Source", "sha256 (source)", "sha256 (rows used)"],
                    checks, "Data checksums."))
    saved = res.ctx.store.path("spec.yaml")
    if saved.is_file():
        s.add(Paragraph.of("The spec the study ran with (spec.yaml in the study directory):"),
              Code(saved.read_text(encoding="utf-8")))
    s.add(Paragraph.of("The spec as resolved (every default filled in):"),
          Code(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)))
    return s


# The report in order: FRONT before the table of contents (the answers, then whether to trust
# them), SECTIONS after it. A new section is one function added to a list.
FRONT: list[Callable[[Results], Section]] = [answers, trust]
SECTIONS: list[Callable[[Results], Section]] = [
    findings, how_to_read, runs_section, search_section, accuracy, drift, readout.readout_section, weights, forgetting, deployment,
    decision, data, environment]


def build_front(res: Results) -> list[Section]:
    return [fn(res) for fn in FRONT]


def build_sections(res: Results) -> list[Section]:
    return [fn(res) for fn in SECTIONS]
