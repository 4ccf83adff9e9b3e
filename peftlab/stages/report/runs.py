"""The Runs section: every planned run with its status, main metric (or failure), whether it
learned, train time and trainable parameters.
"""

from __future__ import annotations

from peftlab.stages.report import format as f
from peftlab.stages.report.document import Paragraph, Section, Table
from peftlab.stages.report.stored import Results


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
                verdict = res.verdicts.get((task, method, seed)) or {}
                learned = verdict.get("learned")
                rows.append([
                    v.run_ids[(task, method, seed)], task, method, str(seed),
                    rec.get("status", "not run"),
                    f"{rec.get('main_metric')} {f.metric(metric)}" if metric is not None
                    else (rec.get("failure_reason") or f.MISSING),
                    {True: "yes", False: "DEGENERATE", None: f.MISSING}[learned],
                    against_start(verdict),
                    f.seconds(rec.get("train_time_s")), f.integer(params.get("trainable")),
                    f.share(params.get("trainable_share_of_base")),
                ])
    s.add(Paragraph.of(f"{len(rows)} planned runs: {len(v.tasks)} task(s) x {len(v.methods)} "
                       f"method(s) x {len(v.seeds)} seed(s); 'learned' as judged in the trust "
                       "panel; 'against its start': the run's main metric minus that of the "
                       "probe-fitted head it started from, on the same evaluation examples "
                       "(paired bootstrap interval), where it started from one."),
          Table(["Run", "Task", "Method", "Seed", "Status", "Main metric / failure", "Learned",
                 "Against its start", "Train time (s)", "Trainable params",
                 "Trainable / base"], rows,
                "Every planned run.",
                numeric=[False, False, False, True, False, False, False, False, True, True,
                         True]))
    return s


def against_start(verdict: dict) -> str:
    """The run against its start: "improved: +0.0300 [+0.0100, +0.0500] from 0.7850" (or
    "worse", "no detectable change"); a dash without a judged start."""
    d = verdict.get("improvement") or {}
    if verdict.get("change") is None or d.get("estimate") is None:
        return f.MISSING

    def signed(x):
        return f.MISSING if x is None else f"{x:+.4f}"

    return (f"{verdict['change']}: {signed(d['estimate'])} "
            f"[{signed(d.get('ci_low'))}, {signed(d.get('ci_high'))}] from "
            f"{f.metric(verdict.get('start_value'))}")
