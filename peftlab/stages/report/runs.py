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
