"""The answers to the research questions, first on the report's first screen: RQ1 (does PEFT drift
less than full fine-tuning?) and RQ2 (what does each way of serving an adapter cost?), each a few
sentences from the primary comparisons of the `stats` table beside one figure.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from peftlab.measures import label as measure_label
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import readout
from peftlab.stages.report.document import Answer, Figure, Outcome, Paragraph, Section, Strong
from peftlab.stages.report.stored import (
    Results,
    conf_label,
    learning_rates,
    learning_rates_text,
    not_measured,
)
from peftlab.stages.report.trust import start_clause


def _outcome_words(comps: list[dict[str, Any]]) -> list[str]:
    """The outcome words of a group, each once, with a count when it occurs more than once."""
    counts: dict[str, int] = defaultdict(int)
    for c in comps:
        counts[c["outcome"]] += 1
    return [o if n == 1 else f"{o} \u00d7{n}" for o, n in counts.items()]


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
    if peft and refs:
        names = (' and '.join(peft) if len(peft) <= 2
                 else f"the {len(peft)} PEFT methods ({', '.join(peft)})")
        verb = "Does" if len(peft) == 1 else "Do"
        question = f"RQ1 \u00b7 {verb} {names} drift less than {' and '.join(refs)}?"
    else:
        question = "RQ1 \u00b7 Do the methods differ in drift?"
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
            note = start_clause(res, c["task"], [c["method_a"], c["method_b"]])
            if note:
                spans.append(f" ({note})")
        paras.append(Paragraph.of(*spans, "."))
    scope = rq1_scope(res, comps)
    if scope is not None:
        paras.append(scope)
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
                        f"(left: each method, {conf_label(res)} t-interval over seeds, the axis "
                        "zoomed to the estimates; dotted: null floor q95, or its value at the "
                        "panel's edge when it lies far off the axis; shaded: seed-to-seed) and "
                        "PEFT minus full (right; diamond: across tasks).")
    return Answer(question, _outcome_words(comps), paras, figure, anchor="rq1")


def rq1_scope(res: Results, comps: list[dict[str, Any]]) -> Paragraph | None:
    """What the RQ1 answer covers: the tasks of this study only (task is a fixed effect of the
    mixed model), and the learning rates each method trained at (from the run configs): a
    difference between methods is also a difference between their rates and how they were
    chosen."""
    parts = []
    across = [c for c in comps if c.get("kind") == "across_tasks"]
    if across:
        # the tasks with a pair of learned runs in some across-task comparison: a task whose
        # runs did not learn adds nothing to the estimate, so it is not covered by it
        with_pairs = {t for c in across for t in (c.get("tasks") or [])}
        covered = [t for t in res.view.tasks if t in with_pairs]
        text = (f"task is a fixed effect of the mixed model, so 'across tasks' covers the "
                f"{len(covered)} task(s) with pairs of learned runs only "
                f"({', '.join(covered) or 'none'}), not tasks in general")
        if len(covered) == 1:
            text += f" (with one task the across-task estimate is {covered[0]}'s own)"
        if without := [t for t in res.view.tasks if t not in with_pairs]:
            text += (f"; {', '.join(without)} add(s) nothing to it (no seed on which both "
                     "methods' runs learned)")
        parts.append(text)
    rates = learning_rates(res)
    if len({r for by in rates.values() for r in by}) > 1:
        parts.append(f"the methods trained at different learning rates ({learning_rates_text(res)}"
                     "; see Hyperparameter search), so the comparison is of each method at its "
                     "own rate")
    if not parts:
        return None
    text = "; ".join(parts)
    return Paragraph.of(Strong("Scope:"), f" {text[0].upper()}{text[1:]}.")


def _primary_sentence(c: dict[str, Any], res: Results) -> Paragraph:
    """One primary comparison in a sentence or two: estimate, interval, corrected p, n, power
    (what it could have detected, when inconclusive), or why it was not tested."""
    lead = f"{fnd.where(c)}: {fnd.name(c, 'a')} \u2212 {fnd.name(c, 'b')}"
    if c["status"] != "ok":
        return Paragraph.of(f"{lead}: ", Outcome(c["outcome"]), f", not tested: {c['reason']}.")
    fmt = fnd.value_format(c)
    est = (f"{fmt(c.get('diff'))} {f.interval(c.get('diff_ci_low'), c.get('diff_ci_high'), fmt)}"
           f" ({round(100 * c['confidence'])}% CI)")
    rel = fnd.relative_text(c, with_interval=False)
    if rel is not None:
        est += f", relative {rel}"
    text = (f" {est}; {fnd.correction_name(c)}-corrected p {f.p_eq(c.get('p_adjusted'))} in "
            f"the primary family of {c.get('family_size')}; {fnd.n_text(c)}.")
    if c["outcome"] == "different":
        text = f" ({fnd.direction(c)});" + text
    note = fnd.unadjusted_note(c)
    if note:
        text += f" ({note[0].upper()}{note[1:]}.)"
    power = fnd.power_short(c)
    if c["outcome"] == "inconclusive" and power:
        text += f" {power[0].upper()}{power[1:]}."
    note = _start_note(res, c)
    if note:
        text += f" ({note[0].upper()}{note[1:]}.)"
    return Paragraph.of(f"{lead}: ", Outcome(c["outcome"]), text)


def _start_note(res: Results, c: dict[str, Any]) -> str | None:
    """Where the compared runs did not all improve on their start (per task of the
    comparison), the clause that says so; None otherwise."""
    if c.get("method_a") is None or c.get("method_b") is None:
        return None
    tasks = (list(c.get("tasks") or res.view.tasks) if c.get("kind") == "across_tasks"
             else [c.get("task")])
    notes = {t: n for t in tasks if t in res.view.tasks
             and (n := start_clause(res, t, [c["method_a"], c["method_b"]]))}
    # tasks with the same clause share one: "on sst2, mrpc and rte neither method improved..."
    same: dict[str, list[str]] = {}
    for t, n in notes.items():
        same.setdefault(n.removeprefix(f"on {t} "), []).append(t)
    return "; ".join(
        f"on {ts[0] if len(ts) == 1 else ', '.join(ts[:-1]) + ' and ' + ts[-1]} {rest}"
        for rest, ts in same.items()) or None


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
            and fnd.folds_adapter(c.get("mode_b")) else None})
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
    paras = [Paragraph.of(f"Primary endpoints: {res.settings.get('endpoints', {}).get('RQ2')}."
                          + _interval_note(res, comps))]
    for pair, group in _pair_groups(comps, list(d.comparisons)):
        first = group[0]
        spans: list[str] = [Strong(f"{fnd.name(first, 'a')} vs {fnd.name(first, 'b')}"),
                            f" (checks: {first['claim']}): " if first.get("claim")
                            else f" ({pair}): "]
        by_outcome: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for c in group:
            by_outcome[c["outcome"]].append(c)
        for i, (outcome, cs) in enumerate(by_outcome.items()):
            spans += ["; " if i else "", Outcome(outcome), " on "]
            if outcome in fnd.TESTED and len(cs) <= 2:
                spans.append(", ".join(
                    f"{c['task']} ({fnd.relative_text(c) or fnd.estimate_cell(c)})"
                    for c in cs) + f", n = {cs[0]['n']} {fnd.units(cs[0])}")
            elif outcome in fnd.TESTED:  # many tasks: the range, the intervals are in the plot
                rel = sorted(c["rel_diff"] for c in cs if c.get("rel_diff") is not None)
                lows = [c["rel_diff_ci_low"] for c in cs if c.get("rel_diff_ci_low") is not None]
                highs = [c["rel_diff_ci_high"] for c in cs
                         if c.get("rel_diff_ci_high") is not None]
                spans.append(", ".join(c["task"] for c in cs) + (
                    f": {f.pct(rel[0])} to {f.pct(rel[-1])} (intervals within "
                    f"[{f.pct(min(lows))}, {f.pct(max(highs))}])" if rel and lows and highs
                    else "") + f", n = {cs[0]['n']} {fnd.units(cs[0])} each")
            else:
                why = ("degenerate runs" if outcome == "void" else
                       f"{cs[0]['n']} complete pair(s), {res.min_runs} needed"
                       + _first_seed_note(res))
                spans.append(", ".join(c["task"] for c in cs) + f" ({why})")
        shares = [c["flops_share"] for c in group if c.get("flops_share") is not None
                  and fnd.folds_adapter(c.get("mode_b"))]
        if shares:
            spans.append(f"; compute-only floor: the adapter adds {f.share(min(shares))}"
                         + (f"-{f.share(max(shares))}" if max(shares) > min(shares) else "")
                         + " of the FLOPs")
        inconclusive = [c for c in group if c["outcome"] == "inconclusive"]
        if inconclusive:
            spans.append(f"; {_power_by_task(inconclusive)}")
        spread = _control_spread([c for c in inconclusive if c.get("margin") is not None
                                  or c.get("equivalence_margin") is not None])
        if spread:
            spans.append(f"; {spread}")
        paras.append(Paragraph.of(*spans, "."))
    rows = _ratio_rows(res, list(d.comparisons), str(d.seq_len))
    figure = None
    if rows:
        margin = res.spec.stats.latency_margin if any(
            c.get("equivalence_margin") for c in comps) else None
        figure = Figure(figs.ratio_figure(rows, margin), "RQ2 latency ratios",
                        "RQ2: latency ratio of the paired medians per task and batch size "
                        f"(length {d.seq_len}; {conf_label(res)} interval; hollow: not tested); "
                        "black tick: the compute-only floor; shaded: the equivalence margin.")
    return Answer(question, _outcome_words(comps), paras, figure, anchor="rq2")


def _pair_groups(comps: list[dict[str, Any]], pairs: list[str]
                 ) -> list[tuple[str, list[dict[str, Any]]]]:
    """The primary comparisons of each declared pair, split by the models compared (one group
    per PEFT method or sweep cell: 'lora-r2-qv unmerged vs lora-r2-qv merged' is a different
    question from 'lora-r8-qv unmerged vs lora-r8-qv merged'), in declaration and first-seen
    order."""
    out: list[tuple[str, list[dict[str, Any]]]] = []
    for pair in pairs:
        by_models: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for c in comps:
            if c.get("pair") == pair:
                by_models.setdefault((str(c.get("a")), str(c.get("b"))), []).append(c)
        out += [(pair, g) for g in by_models.values()]
    return out


def _first_seed_note(res: Results) -> str:
    """Why a latency comparison has one pair when the bench timed one seed per method."""
    if getattr(res.spec.bench, "runs", None) == "first_seed" and res.min_runs > 1:
        return ("; the bench timed the first seed's runs only (bench.runs: first_seed): "
                "the measured latencies are in the Deployment decision table")
    return ""


def _control_spread(comps: list[dict[str, Any]]) -> str:
    """For equivalence comparisons left inconclusive: the A/A control of the same blocks (one
    model loaded twice), so a reader sees whether the comparison's difference is of the size the
    bench shows between two copies of one model; '' when none was measured."""
    parts, within = [], True
    for c in comps:
        aa = c.get("control_group") or {}
        if aa.get("ci_pct") and c.get("rel_diff") is not None:
            parts.append(f"{c['task']} {f.pct(c['rel_diff'])} against A/A "
                         f"{aa['change_pct']:+.1f}% [{aa['ci_pct'][0]:+.1f}%, "
                         f"{aa['ci_pct'][1]:+.1f}%]")
            within &= 100 * abs(c["rel_diff"]) <= max(abs(x) for x in aa["ci_pct"])
    if not parts:
        return ""
    text = ("the same blocks' A/A control (one model loaded twice: no real difference) beside "
            "each: " + ", ".join(parts))
    if within:
        text += ("; each difference is no larger than the A/A interval's reach, so at this "
                 "budget the bench cannot tell these models apart from two copies of one")
    return text


def _interval_note(res: Results, comps: list[dict[str, Any]]) -> str:
    """' Intervals: 95%, unadjusted; outcomes: Holm-corrected p in the primary family of 10.'
    where a tested comparison's interval excludes 0 without its outcome being 'different' (the
    two would otherwise read as a contradiction); '' otherwise."""
    odd = [c for c in comps if fnd.unadjusted_note(c)]
    if not odd:
        return ""
    return (f" Intervals: {conf_label(res)}, unadjusted; outcomes: "
            f"{fnd.correction_name(odd[0])}-corrected p in the {fnd.family_text(odd[0])}, so "
            "an interval can exclude 0 where the outcome is not 'different'.")


def _power_by_task(comps: list[dict[str, Any]]) -> str:
    """What the inconclusive tests of a group could detect, each task with its own figure:
    `power_short` for one test; for several, 'could detect |d_z| >= 10.36 (about 16.251 ms on
    sst2, 10.528 ms on rte)' (the unit figures differ with each task's spread), one clause per
    distinct d_z."""
    comps = [c for c in comps if c.get("mde_dz") is not None]
    if len(comps) == 1:
        return fnd.power_short(comps[0])
    by_dz: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in comps:
        by_dz[f.stat(c["mde_dz"])].append(c)
    parts = []
    for dz, cs in by_dz.items():
        units = [f"{fnd.value_format(c)(c['mde_diff'])} {c.get('unit', '')}".rstrip()
                 + f" on {c['task']}" for c in cs if c.get("mde_diff") is not None]
        parts.append(f"could detect |d_z| \u2265 {dz}"
                     + (f" (about {', '.join(units)})" if units else
                        f" on {', '.join(c['task'] for c in cs)}"))
    return "; ".join(parts)


def answers(res: Results) -> Section:
    s = Section("Answers", "answers")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    return s.add(rq1_answer(res), rq2_answer(res))


