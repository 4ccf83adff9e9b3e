"""The Deployment decision section: the fastest way to serve each task's trained model at each sweep
point and whether its lead is supported, the cost of several adapters on one base, adapter
switching, serving under load, and the storage every task takes.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.bench.modes import MODES, find_mode, get_mode, mode_names
from peftlab.results import seq_sort_key
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import serving as serving_report
from peftlab.stages.report.deployment import bench_sort, tasks_of
from peftlab.stages.report.document import Paragraph, Section, Table
from peftlab.stages.report.stored import Results, not_measured


def served(x: dict[str, Any]) -> str:
    """How a latency summary's model was served: 'lora merged', or the method alone ('full')
    when its mode is the only registered way to serve its kind of artifact."""
    mode = find_mode(x["mode"])
    alone = mode is not None and sum(m.artifact_kind == mode.artifact_kind
                                     for m in MODES.values()) == 1
    return x["method"] if alone else f"{x['method']} {x['mode']}"


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
                    [[tasks_of(r), f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
                      str(r["seq_len"]), f.integer(r["latency"].get("count")),
                      f.share(r["extras"].get("switch_share")),
                      f.ms(r["extras"].get("p50_ms_with_switch")),
                      f.ms(r["extras"].get("p50_ms_without_switch"))]
                     for r in sorted(switching, key=lambda r: bench_sort(r, res.view.tasks))],
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
