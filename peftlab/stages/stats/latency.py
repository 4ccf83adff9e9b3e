"""Areas "latency" and "serving": the deployment comparisons of the bench table, one value per run
(its median latency), and per run and sweep point latency summaries.

latency: every comparison a bench mode declares (`peftlab.families.declared_comparisons`: by
default unmerged vs merged, merged vs full), per task, batch size and sequence length; those at the
declared sweep point are the primary RQ2 endpoint. serving: several adapters on one base vs the
same adapters served one at a time, per served task (that task's requests in the stream against
its single adapter on the same batches). Where no batch can be matched (a mixed batch holds rows
of every served task) the record says so: `like_for_like` False and `like_for_like_reason`, which
the report shows wherever the comparison appears; `calls_a` / `calls_b` count the timed calls
each seed's median rests on.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.families import FAMILY, declared_comparisons, role_latency, roled
from peftlab.results import RunView, bench_rows, seq_sort_key, served_tasks
from peftlab.stages.stats.common import (
    Inputs,
    Pending,
    Record,
    defined,
    make_pending,
    mean_or_none,
    merge_missing,
)
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def latency_records(rows: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                    verdicts: Verdicts
                    ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per-run latency summaries and the deployment comparisons (see the module docstring).
    Seeds whose trained model is degenerate are left out of the comparisons (a serving group:
    when any of its adapters is)."""
    ok = [r for r in rows if r["ok"]]
    # (base_mode, task, method, batch, seq) -> {seed: p50 ms}
    unit: dict[tuple[Any, ...], dict[int, float]] = defaultdict(dict)
    units_rows: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        if r["seed"] is None:
            continue
        if r["base_mode"] != r["mode"]:
            continue  # +compile variants are shown, but compared only with their own kind
        task = served_tasks(r)
        key = (r["base_mode"], task, r["method"], r["batch_size"], str(r["seq_len"]))
        unit[key][int(r["seed"])] = float(r["p50_ms"])
        units_rows[key].append(r)
    summaries = []
    for key, by_seed in sorted(unit.items(), key=lambda kv: _point_order(kv[0])):
        mode, task, method, batch, seq = key
        seeds = [s for s in view.seeds if s in by_seed] or sorted(by_seed)
        vals = [by_seed[s] for s in seeds]
        tput = [r["throughput"].get("requests_per_s") for r in units_rows[key]]
        summaries.append((f"summary/latency/{task}/{mode}/{method}/b{batch}/{seq}", {
            "kind": "summary", "area": "latency", "task": task, "mode": mode, "method": method,
            "batch_size": batch, "seq_len": units_rows[key][0]["seq_len"], "seeds": seeds,
            "values": vals, "unit": "ms (median latency of each run)", "n": len(vals),
            "median": float(np.median(vals)), "mean": float(np.mean(vals)),
            "requests_per_s": mean_or_none(tput),
        }))

    pending: list[Pending] = []
    eager = [r for r in rows if r["base_mode"] == r["mode"]]
    points = sorted({(r["batch_size"], str(r["seq_len"])) for r in eager},
                    key=lambda p: (p[0], seq_sort_key(p[1])))
    # Every (mode, task, method, point) the bench tried, timed or not, and why a seed was not.
    tried = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"], str(r["seq_len"]))
             for r in eager}
    fails = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"], str(r["seq_len"]),
              r["seed"]): r["failure"] or "failed" for r in eager if not r["ok"]}
    adapters = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"],
                 str(r["seq_len"])): r["extras"].get("k") or len(r["run_ids"]) for r in eager}

    def values_of(mode: str, task: str, method: str, batch: int, seq: str
                  ) -> tuple[dict[int, float], dict[int, str]]:
        got = unit.get((mode, task, method, batch, seq), {})
        miss = {}
        for s in view.seeds:
            if s not in got:
                why = fails.get((mode, task, method, batch, seq, s))
                miss[s] = f"{mode} ({method}): " + (why or "not benchmarked")
        return got, miss

    declared = declared_comparisons()
    singles = [(m, c) for m, c in declared if c.reference != "single"]
    for task in view.tasks:
        for batch, seq in points:
            for mode, comp in singles:
                mode_a, mode_b = mode.name, comp.other
                methods_a = view.peft() if mode.artifact_kind == "peft" else view.references()
                for method_a in methods_a:
                    for method_b in [method_a] if comp.reference == "same" else view.references():
                        if not {(mode_a, task, method_a, batch, seq),
                                (mode_b, task, method_b, batch, seq)} & tried:
                            continue  # the study did not benchmark this pair at all
                        va, ma = values_of(mode_a, task, method_a, batch, seq)
                        vb, mb = values_of(mode_b, task, method_b, batch, seq)
                        eq = comp.equivalence
                        a, b = f"{method_a}/{mode_a}", f"{method_b}/{mode_b}"
                        pair = f"{mode_a}_vs_{mode_b}"
                        context = {
                            "area": "latency", "pair": pair,
                            **roled(role_latency(cfg, pair, batch, seq)),
                            "task": task, "quantity": "median latency", "unit": "ms",
                            "higher_is_better": False, "batch_size": batch, "seq_len": seq,
                            "mode_a": mode_a, "mode_b": mode_b, "method_a": method_a,
                            "method_b": method_b, "a": a, "b": b,
                            "flops_share": _flops_share(units_rows.get(
                                (mode_a, task, method_a, batch, seq), [])),
                            "claim": comp.claim,
                            "where_text": f"{task}, batch {batch}, length {seq}",
                        }
                        excluded = verdicts.excluded(task, method_a, view.seeds)
                        if method_b != method_a:
                            excluded = merge_missing(
                                excluded, verdicts.excluded(task, method_b, view.seeds))
                        pending.append(make_pending(
                            f"comparison/latency/{pair}/{task}/b{batch}/{seq}/{a} vs {b}",
                            context, va, vb, view.seeds, cfg,
                            f"{task}, batch {batch}, length {seq}: {a} vs {b} (median latency)",
                            merge_missing(ma, mb), margin=cfg.latency_margin if eq else None,
                            excluded=excluded))
    # Several adapters on one base, compared per task on that task's requests in the stream with
    # that task's single adapter on the same batches (`bench.compare`): a pooled median against
    # a mean of per-task medians differs whenever the tasks' lengths differ, switch cost or not.
    from peftlab.bench.compare import matched_latencies, median, task_latencies

    by_seed_row: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = defaultdict(dict)
    for key, rs in units_rows.items():
        for r in rs:
            by_seed_row[key][int(r["seed"])] = r
    for mode_obj, comp in [(m, c) for m, c in declared if c.reference == "single"]:
        mode, single_mode = mode_obj.name, comp.other
        for key in sorted((k for k in tried if k[0] == mode), key=_point_order):
            _, served, method, batch, seq = key
            tasks = list(dict.fromkeys(served.split("+")))
            _, miss_unit = values_of(mode, served, method, batch, seq)
            k = adapters[key]
            per_seed = {s: task_latencies(r) for s, r in by_seed_row.get(key, {}).items()}
            for task in tasks:
                va: dict[int, float] = {}
                vb: dict[int, float] = {}
                miss = dict(miss_unit)
                matched = []
                calls_a: dict[str, int] = {}  # timed calls each side's median rests on
                calls_b: dict[str, int] = {}
                for s in view.seeds:
                    mine = per_seed.get(s, {}).get(task)
                    single_row = by_seed_row.get((single_mode, task, method, batch, seq),
                                                 {}).get(s)
                    if s in miss:
                        continue
                    if mine is None or not mine.ms:
                        miss[s] = f"{mode} ({method}): no timed request for {task} recorded"
                        continue
                    if single_row is None:
                        miss[s] = f"{single_mode} ({method}): not timed on {task}"
                        continue
                    ref, ok = matched_latencies(single_row, mine.batches)
                    va[s], vb[s] = median(mine.ms), median(ref)
                    calls_a[str(s)], calls_b[str(s)] = len(mine.ms), len(ref)
                    matched.append(ok)
                like = bool(matched) and all(matched)
                single_rows = [r for r in by_seed_row.get((single_mode, task, method, batch,
                                                           seq), {}).values()]
                tokens_a = _padded_tokens_per_call(units_rows.get(key, []))
                tokens_b = _padded_tokens_per_call(single_rows)
                context = {
                    "area": "serving", "role": "exploratory", "family": FAMILY["serving"],
                    "question": None, "pair": f"{mode}_vs_single", "task": task,
                    "served": served, "tasks": tasks, "quantity": "median latency",
                    "unit": "ms", "higher_is_better": False, "batch_size": batch,
                    "seq_len": seq, "mode_a": mode, "mode_b": single_mode,
                    "method_a": method, "method_b": method,
                    "a": f"{method}/{mode}-{k} ({task} calls)",  # a call is one batch
                    # which of the single adapter's calls: one label, one number
                    "b": f"{method}/single adapter ({task}, "
                         + ("same batches)" if like else "all its batches)"),
                    "reference": f"the {single_mode} single-adapter median latency of the same "
                                 f"seed on {task}"
                                 + (", on the same prebuilt batches (same examples and lengths)"
                                    if like else
                                    ", on all its requests (the stream's batches mix tasks)"),
                    "length_matched": like,
                    "like_for_like": like,
                    "like_for_like_reason": None if like else _unmatched_reason(
                        mode, task, tasks, batch, tokens_a, tokens_b),
                    "calls_a": calls_a, "calls_b": calls_b,
                    "padded_tokens_per_call_a": tokens_a,
                    "padded_tokens_per_call_b": tokens_b,
                    "k": k, "claim": comp.claim,
                    "where_text": f"{task} in {served}, batch {batch}, length {seq}",
                }
                # a group holding a degenerate adapter is left out whole, as its unit is
                excluded = merge_missing(*[verdicts.excluded(t, method, view.seeds)
                                           for t in tasks if t in view.tasks])
                pending.append(make_pending(
                    f"comparison/serving/{mode}_vs_single/{served}/{task}/b{batch}/{seq}/"
                    f"{method}", context, va, vb, view.seeds, cfg,
                    f"{task} in {served}, batch {batch}, length {seq}: {method} {mode}-{k} vs "
                    f"single adapter (median latency of {task}'s calls)", miss,
                    margin=cfg.latency_margin if comp.equivalence else None, excluded=excluded))
    return pending, summaries


def _point_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """(mode, task, method, batch, seq) keys in a readable order: numbers as numbers."""
    mode, task, method, batch, seq = key
    return (str(task), str(mode), str(method), batch, seq_sort_key(seq))


def _padded_tokens_per_call(rows: list[dict[str, Any]]) -> float | None:
    """Mean padded tokens per timed call of bench rows (padded tokens/s over examples/s, times
    the batch size), averaged over the rows (seeds); None when not recorded."""
    per = []
    for r in rows:
        tp = r.get("throughput") or {}
        if defined(tp.get("padded_tokens_per_s")) and tp.get("requests_per_s"):
            per.append(tp["padded_tokens_per_s"] / tp["requests_per_s"] * (r["batch_size"] or 1))
    return mean_or_none(per)


def _unmatched_reason(mode: str, task: str, tasks: list[str], batch: int,
                      tokens_a: float | None, tokens_b: float | None) -> str:
    """Why a multi-adapter comparison is not like for like (no batch of the stream can be
    matched with a batch of the single adapter's own stream)."""
    if mode == "mixed" and batch > 1:
        why = (f"every {mode} batch holds rows of the {len(tasks)} served tasks "
               f"({', '.join(tasks)}), padded to its longest row, against {task}'s own batches "
               "alone")
    else:
        why = (f"the {mode} stream's calls for {task} are not the same examples as {task}'s "
               "own calls")
    if tokens_a is not None and tokens_b is not None:
        why += (f" ({tokens_a:.1f} padded tokens per call against {tokens_b:.1f})")
    return why + ": the difference mixes the cost of serving several adapters with the lengths"


def _flops_share(rows: list[dict[str, Any]]) -> float | None:
    shares = [r["flops"].get("adapter_share") for r in rows]
    return mean_or_none([s for s in shares if defined(s)])


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """The bench table's latency and serving comparisons; per-run latency summaries."""
    return latency_records(bench_rows(inp.ctx.store.records("bench")), inp.view, inp.cfg,
                           inp.verdicts)
