"""The trust panel, right after the answers: which runs learned, what the primary tests could
detect, what was voided or not tested and why.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Details, Paragraph, Section, Strong, Table
from peftlab.stages.report.stored import Results, not_measured


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
