"""The trust panel, right after the answers: which runs learned, what the primary tests could
detect, what was voided or not tested and why.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Details, Paragraph, Section, Strong, Table
from peftlab.stages.report.stored import Results, conf_label, not_measured


def short_why(v: dict[str, Any]) -> str:
    """The trust table's Why cell in a few words, from the verdict's stored floor and margin:
    'clears 0.5000 by 0.3205' (the highest baseline, and by how much the interval's lower bound
    clears it), 'equals 0.8000 (majority class)', 'short of 0.5000 by 0.0412'; the criterion
    when it is not the main metric. The full reason is folded below the table."""
    if v.get("learned") is None:
        return str(v.get("reason") or "not judged")
    floor, margin = v.get("floor"), v.get("margin")
    if floor is None or margin is None:
        return "no baseline defined" if v.get("learned") else "no finite value"
    on = (f" on {v['criterion']}" if v.get("criterion") and v.get("criterion")
          != v.get("main_metric") else "")
    if v.get("learned"):
        return f"clears {f.metric(floor)} by {f.metric(margin)}{on}"
    if abs((v.get("value") or 0.0) - floor) <= 1e-12:
        return f"equals {f.metric(floor)}, the highest baseline"
    return f"short of {f.metric(floor)} by {f.metric(-margin)}"


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
    start = start_line(res)
    if start is not None:
        items.append(start)
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
            what = ("across tasks" if c.get("kind") == "across_tasks" else
                    f"n = {c['n']} blocks" if c.get("design") == "paired" else
                    f"n = {c['n']} seeds")
            detect.append(f"|d_z| \u2265 {f.stat(c['mde_dz'])} ({what})")
        text = (f"primary family of {fam.get('tested', len(tested))} tested of "
                f"{fam.get('planned', len(primary))} planned, {fnd.correction_name(primary[0])} "
                f"at alpha {res.spec.stats.alpha}; with {round(100 * res.spec.stats.power)}% "
                f"power the tests detect {', '.join(detect) or 'nothing (none was tested)'}.")
        items.append(Paragraph.of(Strong("What the study could detect:"), " " + text))
    floor = latency_floor_line(res)
    if floor is not None:
        items.append(floor)
    void = [c for c in res.comparisons if c["outcome"] == "void"]
    if void:
        items.append(Paragraph.of(Strong("Voided:"), f" {len(void)} comparison(s) are not "
                                  "evidence, one line per reason:"))
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
                     short_why(v)])
    if rows:
        s.add(Table(["Run", "Task", "Method", "Seed", "Main metric [CI]", "Majority class",
                     "Chance", "Untrained head", "Learned", "Why"], rows,
                    "Every finished run against its task's baselines (the same evaluation "
                    "examples; intervals: bootstrap over examples). Why: the lower bound of the "
                    "interval against the highest baseline; each run's reason in full is folded "
                    "below the table.",
                    numeric=[False, False, False, True, False, True, True, True, False, False]))
        s.add(Details(f"Why, in full ({len(rows)} runs)", [Bullets([
            Paragraph.of(Strong(f"{v['run_id']}:"), f" {v.get('reason') or f.MISSING}.")
            for v in sorted(res.verdicts.values(), key=lambda v: v["run_id"])])]))
    if tested:
        s.add(Table(["Question", "Where", "Comparison", "n", "Corrected alpha (first step)",
                     "MDE d_z", "MDE in units", "Observed d_z", "Units needed", "Outcome"],
                    [[c.get("question") or "", fnd.where(c), fnd.subject(c),
                      fnd.n_short(c),
                      f.pvalue(c.get("mde_alpha")), f.stat(c.get("mde_dz")),
                      fnd.value_format(c)(c.get("mde_diff")), f.stat(c.get("effect")),
                      _needed(c),
                      c["outcome"]] for c in tested],
                    f"What each primary test could detect with {round(100 * res.spec.stats.power)}"
                    "% power: the minimum detectable d_z at its n and the family's corrected "
                    "alpha, the same in the measure's unit (at the observed spread), and the "
                    "units (seeds, or paired latency blocks) that would detect the observed "
                    "effect.",
                    numeric=[False, False, False, True, True, True, True, True, True, False]))
    return s


def start_counts(res: Results, task: str, method: str) -> tuple[int, int, int]:
    """(improved, worse, judged) runs of `task` x `method` against their start (the
    verdicts' `change`; judged: those with a non-trivial start that could be judged)."""
    vs = [v for v in res.verdicts.values() if v["task"] == task and v["method"] == method
          and v.get("change") is not None]
    return (sum(v["change"] == "improved" for v in vs), sum(v["change"] == "worse" for v in vs),
            len(vs))


def _needed(c: dict[str, Any]) -> str:
    """'11 seeds', '6 blocks' or '3 seeds per task': the units the observed effect needs."""
    if not c.get("runs_needed"):
        return f.text(None)
    per = " per task" if c.get("kind") == "across_tasks" else ""
    return f"{c['runs_needed']} {fnd.units(c, True)}{per}"


def start_clause(res: Results, task: str, methods: list[str]) -> str | None:
    """A short clause for a comparison of `methods` on `task` whose runs did not all improve on
    their start, e.g. "on sst2 neither method improved on its probe-fitted start"; None when
    every judged run improved or none was judged."""
    counts = {m: start_counts(res, task, m) for m in methods}
    judged = {m: c for m, c in counts.items() if c[2]}
    short = {m: c for m, c in judged.items() if c[0] < c[2]}
    if not short:
        return None
    if all(c[0] == 0 for c in judged.values()) and len(judged) == len(methods):
        who = "neither method" if len(methods) == 2 else "no method"
        return f"on {task} {who} improved on its probe-fitted start"
    return f"on {task} " + ", ".join(
        f"{m} improved on its probe-fitted start in {c[0]} of {c[2]} runs"
        for m, c in short.items())


def start_line(res: Results) -> Paragraph | None:
    """The trust panel's line on fine-tuning against its start: how many runs improved on it
    and how many ended below it, per task and method, and in plain words where fine-tuning did
    not improve on its start; None when no run has a non-trivial start."""
    runs = res.settings.get("runs") or {}
    judged = runs.get("start_judged") or 0
    if not judged:
        return None
    per, none, some = [], [], []
    for task in res.view.tasks:
        cells, up_all, n_all = [], 0, 0
        for method in res.view.methods:
            up, _, n = start_counts(res, task, method)
            if n:
                cells.append(f"{method} {up} of {n}")
                up_all, n_all = up_all + up, n_all + n
        if cells:
            per.append(f"{task} {', '.join(cells)}")
            if up_all == 0:
                none.append(task)
            elif up_all < n_all:
                some.append(task)
    spans: list[str] = [Strong("Improved on their start:"),
                        f" {runs.get('improved', 0)} of {judged} improved on their start; "
                        f"{runs.get('worse', 0)} ended below it "
                        f"({runs.get('no_detectable_change', 0)} no detectable change). "
                        "Each run's main metric minus that of the probe-fitted head it started "
                        f"from, paired over the same evaluation examples ({conf_label(res)} "
                        f"bootstrap interval; improved: above 0): {'; '.join(per)}."]
    said = []
    if none:
        said.append(f"no run improved on its start on {', '.join(none)}")
    if some:
        said.append(f"only some did on {', '.join(some)}")
    if said:
        text = "; ".join(said)
        spans.append(f" {text[0].upper()}{text[1:]}: comparisons between methods there "
                     "compare runs that did not beat the fitted head they started from.")
    return Paragraph.of(*spans)


def latency_floor_line(res: Results) -> Paragraph | None:
    """The bench's A/A control (one artifact timed under two labels in the paired design): its
    ratio and interval, the noise floor no latency difference inside of is called real, and the
    smallest difference the paired latency tests could detect, in %."""
    aa = next(iter(res.summaries_of("latency_control")), None)
    if aa is None:
        return None
    if aa.get("ci_low") is None:
        return Paragraph.of(Strong("Latency noise floor (A/A control):"),
                            f" {aa.get('n_blocks', 0)} block(s), too few for an interval.")
    lo, hi = 100 * (aa["ci_low"] - 1), 100 * (aa["ci_high"] - 1)
    paired = [c for c in res.comparisons if c.get("design") == "paired"
              and c.get("role") == "primary"]
    mdd = [c["paired_analysis"]["mdd_pct"] for c in paired
           if (c.get("paired_analysis") or {}).get("mdd_pct") is not None]
    text = (f" the same model timed under two labels: {100 * (aa['ratio'] - 1):+.2f}% "
            f"[{lo:+.2f}%, {hi:+.2f}%] over {aa['n_blocks']} blocks (fresh processes) of "
            f"{sum(aa['rounds_per_block'])} ABBA rounds in all; no latency difference within "
            f"\u00b1{aa['floor_pct']:.2f}% is called real.")
    groups = {g: x for g, x in (aa.get("per_group") or {}).items() if x.get("ci_pct")}
    if len(groups) > 1:
        text += (" Per group of blocks (the same model loaded twice, beside each group's own "
                 "comparisons): " + ", ".join(
                     f"{g} {x['change_pct']:+.1f}% [{x['ci_pct'][0]:+.1f}%, "
                     f"{x['ci_pct'][1]:+.1f}%]" for g, x in sorted(groups.items())) + ".")
    if mdd:
        power = paired[0]["paired_analysis"].get("power")
        text += (f" The paired latency tests could detect differences of {min(mdd):.1f}% to "
                 f"{max(mdd):.1f}% ({round(100 * power)}% power, unadjusted alpha).")
    return Paragraph.of(Strong("Latency noise floor (A/A control):"), text)
