"""The Deployment section: the correctness gate, latency distributions, percentiles, the sweep over
batch size and sequence length (its heading names only what varied), a live adapter's overhead against its compute floor, memory, load
times and storage (`bench` records), then the parts of `serving` (fast path, run order, serving
under load) and the deployment comparisons. Modes are ordered and told apart by what their
registered `Mode` declares.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.bench.modes import mode_names
from peftlab.results import seq_sort_key, served_tasks
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report import serving as serving_report
from peftlab.stages.report.document import Figure, Paragraph, Section, Table
from peftlab.stages.report.stored import Results, not_measured


def mode_sort_key(mode: str) -> tuple[int, str]:
    """Registered modes in their declared order (variants after their mode), others last."""
    base = mode.split("+")[0]
    order = mode_names()
    return (order.index(base) if base in order else len(order), mode)


def tasks_of(r: dict[str, Any]) -> str:
    """The task(s) a bench row serves, as a table cell."""
    return served_tasks(r) or f.MISSING


def bench_sort(r: dict[str, Any], tasks: list[str]) -> tuple:
    """Tasks in spec order (several served tasks last), then mode, method, seed, sweep point."""
    who = (tasks.index(r["task"]), "") if r["task"] in tasks else (len(tasks), tasks_of(r))
    return (who, mode_sort_key(r["mode"]), str(r["method"]), str(r["seed"]),
            r["batch_size"] or 0, seq_sort_key(r["seq_len"]) if r["seq_len"] is not None
            else (2, 0))


def deployment(res: Results) -> Section:
    s = Section("Deployment", "deployment")
    rows = sorted(res.bench, key=lambda r: bench_sort(r, res.view.tasks))
    if not rows:
        return s.add(not_measured("benchmark records", "bench"))
    modes = sorted({r["mode"] for r in rows}, key=mode_sort_key)

    gate = s.sub("Correctness gate")
    grows = []
    for r in _first_per_unit(rows, "gate"):
        checks = r["gate"].get("checks") or []
        worst = max((c.get("rel_diff") for c in checks if c.get("rel_diff") is not None),
                    default=None)
        grows.append([r["mode"], tasks_of(r), f.text(r["method"]), f.text(r["seed"]),
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
                       [[r["mode"], tasks_of(r), f.text(r["method"]), f.text(r["seed"]),
                         str(r["batch_size"]), str(r["seq_len"]), r["failure"] or "failed"]
                        for r in failed], "Sweep points not timed."))

    ok = [r for r in rows if r["ok"]]
    dist = s.sub("Latency distributions")
    targets = [t for t in res.view.tasks if any(r["task"] == t for r in ok)]
    served = sorted({served_tasks(r) for r in ok if r["task"] is None and r["tasks"]})
    for who in targets + served:
        sel = [r for r in ok if tasks_of(r) == who and r["latencies_ms"]]
        if not sel:
            continue
        seqs = sorted({str(r["seq_len"]) for r in sel}, key=seq_sort_key)
        sel = [r for r in sel if str(r["seq_len"]) == seqs[0]]
        dist.add(Figure(figs.ecdf_figure(who, sel, modes), f"Latency ECDF on {who}",
                        f"{who}, sequence length {seqs[0]}: distribution of every timed call "
                        "(one batch of batch-size examples) per mode (all runs pooled)."))
    if not dist.blocks:
        dist.add(not_measured("raw latencies", "bench"))

    pct = s.sub("Percentiles and throughput")
    pct.add(Table(["Task(s)", "Mode", "Method", "Seed", "Batch", "Length",
                   "Timed calls (batches)", "Mean (ms)", "p50", "p90", "p95", "p99",
                   "Examples/s at concurrency 1", "Tokens/s at concurrency 1"],
                  [[tasks_of(r), r["mode"], f.text(r["method"]), f.text(r["seed"]),
                    str(r["batch_size"]), str(r["seq_len"]), f.integer(r["latency"].get("count")),
                    f.ms(r["latency"].get("mean")), f.ms(r["latency"].get("p50")),
                    serving_report.percentile_cell(r["latency"], 90),
                    serving_report.percentile_cell(r["latency"], 95),
                    serving_report.percentile_cell(r["latency"], 99),
                    f.rate(r["throughput"].get("requests_per_s")),
                    f.rate(r["throughput"].get("tokens_per_s"))] for r in ok],
                  "Per benchmarked model and sweep point, from its raw latencies (ms); one timed "
                  "call is one batch of batch-size examples. A percentile q is shown only where "
                  "at least 1 / (1 - q) calls back it (p90: 10, p95: 20, p99: 100). Throughput "
                  "at concurrency 1: one call at a time, batch size / latency examples per "
                  "second (serving under load is measured below).",
                  numeric=[False, False, False, True, True, False] + [True] * 8))

    points = _sweep_points(ok)
    seqs = sorted({p["seq_len"] for p in points}, key=seq_sort_key)
    batches = sorted({p["batch_size"] for p in points})
    # the heading names what was swept, and only that
    swept = [x for x, n in (("batch size", len(batches)), ("sequence length", len(seqs)))
             if n > 1]
    sweep = s.sub(f"Sweep over {' and '.join(swept)}" if swept else "Latency at one point")
    if len(seqs) == 1:
        sweep.add(Paragraph.of(f"One sequence length ran ({seqs[0]}"
                               + (": the examples' own lengths" if seqs[0] == "data" else "")
                               + "); bench.seq_lengths lists more to sweep it."))
    sweep.add(Figure(figs.sweep_figure(points, modes, seqs), "Latency sweep",
                     "Median latency per timed call (one batch) against batch size, per mode "
                     "(median over runs and tasks of each run's median)."))
    sweep.add(Table(["Mode", "Batch", "Length", "Models", "Median latency per batch (ms)",
                     "ms per example"],
                    [[p["mode"], str(p["batch_size"]), p["seq_len"], str(p["n"]),
                      f.ms(p["median_ms"]), f.ms(p["median_ms"] / p["batch_size"])]
                     for p in points], numeric=[False, True, False, True, True, True]))

    over = s.sub("Unmerged overhead and its compute floor")
    orows = []
    # a live adapter path against the same adapter folded into the base (`Mode.folds_adapter`)
    for c in [c for c in res.comparisons_of("latency") if fnd.folds_adapter(c.get("mode_b"))
              and not fnd.folds_adapter(c.get("mode_a"))]:
        orows.append([c["task"], str(c["batch_size"]), str(c["seq_len"]), c["method_a"],
                      str(c["n"]), fnd.relative_text(c, with_interval=False) or f.MISSING,
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct)
                      if fnd.relative_shown(c) else f.MISSING,
                      f.share(c.get("flops_share")), fnd.outcome_cell(c)])
    if orows:
        over.add(Paragraph.of(
            "Measured latency of the unmerged adapter relative to the same adapter merged, "
            "beside the share of FLOPs the adapter path adds (linear layers only): the floor "
            "below which the overhead cannot be compute. What the overhead above it is made of "
            "(kernel launches, memory traffic, framework code) is not measured here, so it is "
            "not attributed."),
                 Table(["Task", "Batch", "Length", "Method", "n", "Measured overhead",
                        "CI", "FLOPs floor", "Outcome"], orows,
                       numeric=[False, True, False, False, True, True, True, True, False]))
    else:
        over.add(not_measured("unmerged vs merged comparisons", "bench", "stats"))

    mem = s.sub("Memory")
    mrows = [[tasks_of(r), r["mode"], f.text(r["method"]), f.text(r["seed"]),
              str(r["batch_size"]), str(r["seq_len"]),
              f.nbytes(r["memory_after_load"].get("rss_delta_bytes")),
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
    for r in _first_per_unit(rows, "load"):
        ld = r["load"]
        cache = ld.get("page_cache") or {}
        lrows.append([r["mode"], tasks_of(r), f.text(r["method"]), f.text(r["seed"]),
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
                   "each served alone; '(not like for like)' marks a comparison whose two "
                   "sides are not the same batches, with its reason in the Findings)."))
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
    for r in sorted(res.bench, key=lambda r: bench_sort(r, v.tasks)):
        st = r["storage"]
        key = (r["mode"], r["unit"])
        if not st or key in seen:
            continue
        seen.add(key)
        served.append([r["mode"], tasks_of(r), f.text(r["method"]), f.text(r["seed"]),
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


def _first_per_unit(rows: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
    """The first row of each bench unit (mode, tasks, method, seed) that has `field`: the gate
    and the loads are measured once per unit, not per sweep point."""
    seen: set[tuple[Any, ...]] = set()
    out = []
    for r in rows:
        key = (r["mode"], tasks_of(r), r["method"], r["seed"])
        if key in seen or not r[field]:
            continue
        seen.add(key)
        out.append(r)
    return out
