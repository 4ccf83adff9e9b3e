"""The report's sections, each built from stored results only.

Every section reads its results table(s) and is rendered only from what is there: a table with no
rows gives a section that says "not measured" (and which stage fills it) instead of a table of
blanks. Numbers are formatted by `peftlab.stages.report.format`; statistical statements come from the
`stats` table (`peftlab.stages.report.findings`).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import yaml

from peftlab.bench.modes import mode_names
from peftlab.measures import label as measure_label
from peftlab.measures import tested_measures
from peftlab.records import DataRecord, DriftRecord, WeightRecord, read
from peftlab.results import RunView, bench_rows, seq_sort_key, served_tasks
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Bullets, Code, Figure, Paragraph, Section, Strong, Table


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
        self.stats = sorted(store.records("stats"), key=lambda r: r.get("order", 0))
        self.comparisons = [r for r in self.stats if r.get("kind") == "comparison"]
        self.summaries = [r for r in self.stats if r.get("kind") == "summary"]
        self.variance = [r for r in self.stats if r.get("kind") == "variance"]
        own = set(view.run_ids.values())
        # Read through the record types: a record a stage could not have written fails here.
        self.drift = [r.dump() for r in read(store, DriftRecord) if r.run_b in own]
        # one flat row per matrix: the record's identity plus its update statistics
        self.weights = [{**r.dump(), **(r.stats or {})} for r in read(store, WeightRecord)
                        if r.run_id in own]
        self.bench = bench_rows(store.records("bench"))
        order = {t: i for i, t in enumerate(view.tasks)}
        self.data = sorted((r.dump() for r in read(store, DataRecord)), key=lambda d: (
            order.get(d.get("task"), len(order)), d.get("split") != "train"))
        self.meta = store.get("meta", "study") or {}
        self.min_runs = self.spec.stats.min_runs

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


# ----------------------------------------------------------------------------- front matter


def how_to_read(res: Results) -> Section:
    cfg = res.spec.stats
    s = Section("How to read this report", "how-to-read")
    s.add(Bullets([
        Paragraph.of("Unit of analysis: one value per independent run (seed). Benchmarks enter "
                     "as each run's median latency, never as individual requests."),
        Paragraph.of("Decision test: paired t-test (pairs matched by seed), with the exact "
                     "Wilcoxon signed-rank test alongside; effect size d_z with its interval; "
                     f"intervals at {round(100 * (1 - cfg.alpha))}%."),
        Paragraph.of(f"Multiplicity: {fnd.correction_name({'correction': cfg.correction})} "
                     f"correction at alpha = {cfg.alpha} within each declared family (a kind of "
                     "comparison across tasks; each table names its family)."),
        Paragraph.of("No-difference claims use equivalence tests (TOST): main metric within "
                     f"\u00b1{f.metric(cfg.metric_margin)} (absolute), latency within "
                     f"\u00b1{f.pct(cfg.latency_margin).lstrip('+')} of the reference's mean."),
        Paragraph.of("Outcomes: ", Strong("significant"), " (corrected p < alpha), ",
                     Strong("equivalent"), " (corrected TOST p < alpha), ", Strong("inconclusive"),
                     " (neither), ", Strong("insufficient runs"),
                     f" (fewer than {cfg.min_runs} complete pairs: no test is run)."),
        Paragraph.of("Precision: " + "; ".join(f"{k}: {v}" for k, v in f.PRECISION.items())
                     + ". Missing values print as " + f.MISSING + "."),
    ]))
    return s


def summary(res: Results) -> Section:
    s = Section("Summary of findings", "summary")
    if not res.stats:
        return s.add(not_measured("statistics", "stats"))
    s.add(Paragraph.of(fnd.counts_text(res.comparisons) + "."))
    # The headline drift measure: debiased CKA when the study measured it.
    drift_families = [c["family"] for c in res.comparisons_of("drift")
                      if c["family"].endswith("/mean")]
    measure = next((m for m in tested_measures() if f"drift/{m}/mean" in drift_families),
                   tested_measures()[0])
    groups = [
        ("Main metric: PEFT vs full fine-tuning", res.comparisons_of("metric")),
        (f"Drift: similarity to the base model, mean over layers "
         f"({measure_label(measure)})",
         res.comparisons_of("drift", family_prefix=f"drift/{measure}/mean")),
        ("Deployment latency", res.comparisons_of("latency")),
        ("Multi-adapter serving", res.comparisons_of("serving")),
    ]
    for title, comps in groups:
        sub = s.sub(title)
        if comps:
            sub.add(Bullets([fnd.phrase(c, res.min_runs) for c in comps]))
        else:
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
                rows.append([
                    v.run_ids[(task, method, seed)], task, method, str(seed),
                    rec.get("status", "not run"),
                    f"{rec.get('main_metric')} {f.metric(metric)}" if metric is not None
                    else (rec.get("failure_reason") or f.MISSING),
                    f.seconds(rec.get("train_time_s")), f.integer(params.get("trainable")),
                    f.share(params.get("trainable_share_of_base")),
                ])
    s.add(Paragraph.of(f"{len(rows)} planned runs: {len(v.tasks)} task(s) x {len(v.methods)} "
                       f"method(s) x {len(v.seeds)} seed(s)."),
          Table(["Run", "Task", "Method", "Seed", "Status", "Main metric / failure",
                 "Train time (s)", "Trainable params", "Trainable / base"], rows,
                numeric=[False, False, False, True, False, False, True, True, True]))
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
            per_seed.append(f"{seed_label(seed)}: {f.metric(m.get('value'))} "
                            f"{f.interval(m.get('ci_low'), m.get('ci_high'), f.metric)}")
        rows.append([sm["task"], sm["method"], sm["metric"], str(sm["n"]), f.metric(sm["mean"]),
                     f.interval(sm.get("ci_low"), sm.get("ci_high"), f.metric),
                     "; ".join(per_seed) or f.MISSING])
    conf = round(100 * (1 - res.spec.stats.alpha))
    s.add(Table(["Task", "Method", "Metric", "n", "Mean", f"{conf}% CI (over seeds)",
                 "Per seed: value [bootstrap CI over examples]"], rows,
                "Main metric of each task and method: mean over seeds with its t-interval, and "
                "each seed's value with its bootstrap interval over evaluation examples.",
                numeric=[False, False, False, True, True, True, False]))
    s.add(Figure(figs.accuracy_figure(sums, v.tasks, list(v.methods)),
                 "Main metric per task and method",
                 "Main metric per task: each seed (small dots) and the mean with its interval "
                 "over seeds (marker and bar)."))
    comps = res.comparisons_of("metric")
    if comps:
        s.add(fnd.comparison_table(comps, "PEFT vs full fine-tuning, paired by seed (family "
                                          "'metric')."))
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


def drift(res: Results) -> Section:
    s = Section("Representational drift", "drift")
    if not res.drift:
        return s.add(not_measured("representation drift records", "drift"))
    v = res.view
    methods = list(v.methods)
    first = res.drift[0]
    s.add(Paragraph.of(
        f"Similarity of each run's pooled representations ({first.get('pooling')} pooling, "
        f"n = {first.get('n')} probe examples) to the base model's, per layer. Bands are "
        "shaded over seeds; the dotted line is the permutation null floor of CKA at the same n "
        "and d; the hatched band is the seed-to-seed control (two runs of the same method). "
        "Layers where a measure is undefined are left out of every mean."))
    measures = [m for m in tested_measures() if any(m in (r.get("values") or {}) for r in res.drift)]
    for task in v.tasks:
        recs = [r for r in res.drift if r["task"] == task]
        if recs:
            s.add(Figure(figs.drift_figure(task, recs, measures, methods, {m: measure_label(m) for m in measures}),
                         f"Per-layer drift on {task}",
                         f"{task}: similarity to the base model per layer, per method (line: "
                         "mean over seeds; band: range over seeds; dotted: null floor; hatched: "
                         "seed-to-seed range)."))
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
        rows.append([
            sm["task"], measure_label(sm["measure"]),
            f"{sm['band']} ({layers[0]}-{layers[-1]})" if layers else sm["band"], sm["method"],
            str(sm["n"]), f.similarity(sm["mean"]),
            ", ".join(f"{seed_label(x)}: {f.similarity(y)}"
                      for x, y in zip(sm["seeds"], sm["values"], strict=True)) or f.MISSING,
            f"{f.similarity(sm.get('null_mean'))} / {f.similarity(sm.get('null_q95'))}",
            (f"{f.similarity(sm.get('seed_to_seed_mean'))} "
             f"{f.interval(min(sm['seed_to_seed'], default=None), max(sm['seed_to_seed'], default=None), f.similarity)}"
             if sm["seed_to_seed"] else f.MISSING),
            ", ".join(str(x) for x in sm["undefined_layers"]) or "none",
        ])
    if rows:
        s.add(Table(["Task", "Measure", "Band (layers)", "Method", "n", "Mean vs base",
                     "Per seed", "Null floor (mean / 95% quantile)",
                     "Seed-to-seed mean [min, max]", "Undefined layers"], rows,
                    "Similarity to the base model averaged over each band of layers.",
                    numeric=[False, False, False, False, True, True, False, True, True, False]))
    comps = res.comparisons_of("drift")
    if comps:
        s.add(fnd.comparison_table(comps, "Method vs method on similarity to the base, paired "
                                          "by seed (families 'drift/<measure>/<band>')."))
    return s


# ----------------------------------------------------------------------------- weights


def weights(res: Results) -> Section:
    s = Section("Weight space", "weights")
    if not res.weights:
        return s.add(not_measured("weight-space records", "drift"))
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in res.weights:
        groups[(r["task"], r["method"], r.get("matrix") or r["module"].split(".")[-1])].append(r)
    rows = []
    order = {t: i for i, t in enumerate(res.view.tasks)}
    morder = {m: i for i, m in enumerate(res.view.methods)}
    for (task, method, matrix), recs in sorted(
            groups.items(), key=lambda kv: (order.get(kv[0][0], 99), morder.get(kv[0][1], 99),
                                            kv[0][2])):
        ok = [r for r in recs if not r.get("undefined")]

        def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
            vals = [r[key] for r in ok if r.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        rows.append([task, method, matrix, str(len({r["run_id"] for r in recs})), str(len(recs)),
                     f.sig(mean("update_fro")), f.sig(mean("relative_update")),
                     f.num(mean("effective_rank"), 2), f.num(mean("rank_energy"), 2),
                     f.num(mean("intruder_dims"), 2),
                     f.integer(sum(r.get("intruder_dims") or 0 for r in ok)),
                     str(len(recs) - len(ok))])
    first = next((r for r in res.weights if r.get("top_k")), {})
    s.add(Paragraph.of(
        "Update of each adapted weight matrix (merged adapter minus base for PEFT, tuned minus "
        "base for full fine-tuning), averaged over the matrices of each kind and over runs. "
        f"Intruder dimensions: top-{first.get('top_k', f.MISSING)} singular vectors of the tuned "
        f"matrix with |cosine| below {first.get('epsilon', f.MISSING)} to every singular vector "
        "of the base."),
          Table(["Task", "Method", "Matrix", "Runs", "Matrices", "||dW||_F (mean)",
                 "||dW||_F / ||W||_F (mean)", "Effective rank (mean)", "Energy rank (mean)",
                 "Intruder dims (mean)", "Intruder dims (total)", "Undefined"], rows,
                numeric=[False, False, False] + [True] * 9))
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
                   "Mean (ms)", "p50", "p90", "p95", "p99", "Requests/s", "Tokens/s"],
                  [[_who(r), r["mode"], f.text(r["method"]), f.text(r["seed"]), str(r["batch_size"]),
                    str(r["seq_len"]), f.integer(r["latency"].get("count")),
                    f.ms(r["latency"].get("mean")), f.ms(r["latency"].get("p50")),
                    f.ms(r["latency"].get("p90")), f.ms(r["latency"].get("p95")),
                    f.ms(r["latency"].get("p99")), f.rate(r["throughput"].get("requests_per_s")),
                    f.rate(r["throughput"].get("tokens_per_s"))] for r in ok],
                  "Per benchmarked model and sweep point, from its raw latencies (ms).",
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
    for c in res.comparisons_of("latency", family_prefix="latency/unmerged_vs_merged"):
        orows.append([c["task"], str(c["batch_size"]), str(c["seq_len"]), c["method_a"],
                      str(c["n"]), f.pct(c.get("rel_diff")),
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct),
                      f.share(c.get("flops_share")), c["outcome"]])
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
    comps = res.comparisons_of("latency", "serving")
    if comps:
        s.sub("Deployment comparisons").add(fnd.comparison_table(
            comps, "Median latency per run, paired by seed (families 'latency/<a>_vs_<b>' and "
                   "'serving/<mode>_vs_single')."))
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
    lat = [x for x in res.summaries_of("latency") if x["mode"] in ("full", "unmerged", "merged")]
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
                    c["outcome"] if c else "not compared"]
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
        s.add(Table(["Served tasks", "Batch", "Length", "Mode", "Mean of run medians (ms)",
                     "Single adapter (ms)", "Cost", "CI", "Outcome"],
                    [[c["task"], str(c["batch_size"]), str(c["seq_len"]),
                      f"{c['mode_a']}-{c['k']} ({c['method_a']})", f.ms(c.get("mean_a")),
                      f.ms(c.get("mean_b")), f.pct(c.get("rel_diff")),
                      f.interval(c.get("rel_diff_ci_low"), c.get("rel_diff_ci_high"), f.pct),
                      c["outcome"]] for c in serving],
                    "What serving several adapters on one base costs per request, against "
                    "serving each adapter alone (means over seeds of per-run medians).",
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
    from peftlab.tasks import NORMALISATION_RULE

    s = Section("Data", "data")
    s.add(Paragraph.of("Text normalisation: ", NORMALISATION_RULE))
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


def build_sections(res: Results) -> list[Section]:
    return [how_to_read(res), summary(res), runs_section(res), accuracy(res), drift(res),
            weights(res), deployment(res), decision(res), data(res), environment(res)]
