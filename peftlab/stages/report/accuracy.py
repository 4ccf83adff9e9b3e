"""The Accuracy section: each task's main metric per method (over seeds and per seed), the
baselines a run must beat, the metric comparisons and the variance shares of method and seed.
"""

from __future__ import annotations

from typing import Any

from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Section, Table
from peftlab.stages.report.stored import Results, conf_label, not_measured


def seed_label(seed: Any) -> str:
    return f"s{seed}"


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
    s.add(Table(["Task", "Method", "Metric", "n", "Mean", f"{conf_label(res)} CI (over seeds)",
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
