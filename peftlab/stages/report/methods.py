"""The Methods and sweep cells section: per task, every method (or sweep cell) on one row with
what a choice between them weighs, and which of them no other beats on all of accuracy, drift and
cost (the Pareto front).

Each row reads stored results only: trainable parameters (`runs`), whether PEFT can merge the
adapter (asked of the method as the run's parameters configure it, `Method.for_params`), the main
metric's mean and t-interval over seeds (`stats` metric summaries), how many seeds learned (the
trust panel's verdicts), debiased linear CKA to the base (`drift`, base vs run, mean over
transformer layers), and latency at the smallest benchmarked batch (`bench`; the paired design's
means where the `stats` table has them). `method_rows` gives the rows as plain dicts (the report
stage also stores them as the `methods` table, `peftlab results DIR --table methods`).

The front is computed on the point estimates (means), which is all a front can be computed on:
a cell off the front is beaten on every axis by another cell's means, not by a tested difference.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from peftlab.stages.report import figures as figs
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Paragraph, Section, Table
from peftlab.stages.report.stored import Results, conf_label

CKA = "linear_cka_debiased"  # the drift axis: 1 = the base's representations up to scale

# (key, higher is better) of the three axes the front is taken over
AXES = (("accuracy", True), ("cka", True), ("latency_ms", False))


def dominates(a: tuple[float, ...], b: tuple[float, ...], higher: tuple[bool, ...]) -> bool:
    """True when `a` is at least as good as `b` on every axis and strictly better on one."""
    better = False
    for x, y, up in zip(a, b, higher, strict=True):
        if (x < y) if up else (x > y):
            return False
        better = better or x != y
    return better


def pareto_front(points: list[tuple[float, ...] | None], higher: tuple[bool, ...]
                 ) -> list[bool | None]:
    """For each point, whether no other point dominates it (None for a point that is None: a
    cell missing an axis is not compared). Equal points do not dominate each other: both stay
    on the front."""
    out: list[bool | None] = []
    for i, p in enumerate(points):
        if p is None:
            out.append(None)
            continue
        out.append(not any(q is not None and j != i and dominates(q, p, higher)
                           for j, q in enumerate(points)))
    return out


def _t_interval(values: list[float], level: float) -> tuple[float | None, float | None]:
    if len(values) < 2:
        return None, None
    from scipy import stats as sst

    m, se = float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(len(values)))
    half = float(sst.t.ppf(0.5 + level / 2, len(values) - 1)) * se
    return m - half, m + half


def _cka_by_run(res: Results) -> dict[str, float]:
    """run id -> debiased CKA to the base, mean over its transformer layers (layer 0, the
    embeddings, left out as in the drift bands; undefined layers left out)."""
    by_run: dict[str, list[float]] = {}
    for r in res.drift:
        if r.get("kind") != "base_vs_run" or r.get("layer", 0) < 1:
            continue
        value = (r.get("values") or {}).get(CKA)
        if value is not None and math.isfinite(value):
            by_run.setdefault(r["run_b"], []).append(value)
    return {run: float(np.mean(v)) for run, v in by_run.items()}


def _latency(res: Results, task: str, method: str, mode: str) -> tuple[float | None, str]:
    """(ms, source) of one mode of a method on a task: the paired design's mean where `stats`
    has a paired comparison naming it, else the median (p50) of the bench's timed calls at the
    smallest batch size and first sequence length, averaged over the seeds benchmarked."""
    label = f"{method}/{mode}"
    for c in res.comparisons_of("latency"):
        if c.get("design") == "paired" and c.get("task") == task:
            for side in ("a", "b"):
                if c.get(side) == label and c.get(f"mean_{side}") is not None:
                    return float(c[f"mean_{side}"]), "paired"
    rows = [r for r in res.bench if r["ok"] and r["task"] == task and r["method"] == method
            and r["mode"] == mode and r["batch_size"] is not None]
    if not rows:
        return None, ""
    batch = min(r["batch_size"] for r in rows)
    rows = [r for r in rows if r["batch_size"] == batch]
    seq = rows[0]["seq_len"]
    p50 = [r["latency"]["p50"] for r in rows if r["seq_len"] == seq
           and r["latency"].get("p50") is not None]
    return (float(np.mean(p50)), f"b{batch}") if p50 else (None, "")


def _dense_cost(rows: list[dict[str, Any]]) -> None:
    """Set the cost axis of a task's rows where a choice between them cannot change the serving
    cost: a merged adapter is the base architecture with other weights, the same model class and
    the same FLOPs per request as the fully fine-tuned model. Their single-process latencies
    differ only by machine noise between processes (measured in benchmarks/merged_vs_full.py:
    0.92-1.21x between processes for identical models), so ranking them on those numbers
    would put cells on the front by noise. Every mergeable adapter and full fine-tuning get one
    cost, the mean of their measured dense latencies (`dense_ms`, with `dense_spread` the range
    it pools); an adapter that cannot merge keeps its own unmerged latency. In place."""
    dense = [r for r in rows if r["mergeable"] is not False
             and (r["merged_ms"] if r["mergeable"] else r["unmerged_ms"]) is not None]
    values = [r["merged_ms"] if r["mergeable"] else r["unmerged_ms"] for r in dense]
    for r in rows:
        r["dense_ms"], r["dense_spread"] = None, None
    if not values:
        return
    mean, spread = float(np.mean(values)), [float(min(values)), float(max(values))]
    for r in dense:
        r["latency_ms"], r["dense_ms"], r["dense_spread"] = mean, mean, spread


def method_rows(res: Results) -> list[dict[str, Any]]:
    """One dict per (task, method) in spec order: method, method_type, swept values, trainable
    params, mergeable (bool or None for full fine-tuning) and why not, metric, accuracy mean /
    ci_low / ci_high / n, learned and judged seed counts, improved (on the probe-fitted start) and
    start_judged seed counts, cka mean / ci_low / ci_high / n,
    unmerged_ms (a full model's own latency for full fine-tuning), merged_ms, latency_ms (the
    cost axis: the lower of the two), latency_source, pareto (True, False, or None when an axis
    is missing)."""
    from peftlab.methods import method_for
    from peftlab.sweep import sweep_cells

    v = res.view
    level = 1 - res.spec.stats.alpha
    configs = {(rc.task, rc.method): rc for rc in res.ctx.study.runs()}
    swept = sweep_cells(res.spec) if res.spec.sweep else {}
    metric = {(s["task"], s["method"]): s for s in res.summaries_of("metric")}
    cka = _cka_by_run(res)
    out: list[dict[str, Any]] = []
    for task in v.tasks:
        rows = []
        for method, mtype in v.methods.items():
            rc = configs.get((task, method))
            m = method_for(mtype, rc.params if rc else None)
            done = [v.done(task, method, s) for s in v.seeds]
            trainable = next((d["params"].get("trainable") for d in done
                              if d and (d.get("params") or {}).get("trainable") is not None),
                             None)
            verdicts = [res.verdicts.get((task, method, s)) or {} for s in v.seeds]
            judged = [x["learned"] for x in verdicts if x.get("learned") is not None]
            sm = metric.get((task, method)) or {}
            ckas = [cka[v.run_ids[(task, method, s)]] for s in v.seeds
                    if v.done(task, method, s) and v.run_ids[(task, method, s)] in cka]
            lo, hi = _t_interval(ckas, level)
            if m.is_peft:
                unmerged, src_u = _latency(res, task, method, "unmerged")
                merged, src_m = (_latency(res, task, method, "merged") if m.supports_merge
                                 else (None, ""))
            else:
                unmerged, src_u = _latency(res, task, method, "full")
                merged, src_m = None, ""
            measured = [x for x in (unmerged, merged) if x is not None]
            rows.append({
                "task": task, "method": method, "method_type": mtype,
                "swept": (swept.get(method) or {}).get("values"),
                "trainable_params": trainable,
                "mergeable": bool(m.supports_merge) if m.is_peft else None,
                "merge_refusal": None if (m.supports_merge or not m.is_peft)
                else getattr(m, "merge_refusal", None),
                "metric": sm.get("metric"), "accuracy": sm.get("mean"),
                "accuracy_ci_low": sm.get("ci_low"), "accuracy_ci_high": sm.get("ci_high"),
                "accuracy_n": sm.get("n"),
                "learned": sum(1 for x in judged if x), "judged": len(judged),
                # seeds whose run beat the probe-fitted head it started from (paired interval)
                "improved": sum(1 for x in verdicts if x.get("improved") is True),
                "start_judged": sum(1 for x in verdicts if x.get("change") is not None),
                "cka": float(np.mean(ckas)) if ckas else None, "cka_ci_low": lo,
                "cka_ci_high": hi, "cka_n": len(ckas),
                "unmerged_ms": unmerged, "merged_ms": merged,
                "latency_ms": min(measured) if measured else None,
                "latency_source": src_u or src_m or None})
        _dense_cost(rows)
        points = [tuple(r[k] for k, _ in AXES) if all(r[k] is not None for k, _ in AXES)
                  and not _never_moved(r) else None for r in rows]
        for r, on in zip(rows, pareto_front(points, tuple(up for _, up in AXES)), strict=True):
            r["pareto"] = on
        out += rows
    return out


def _learned(r: dict[str, Any]) -> str:
    if not r["judged"]:
        return f.MISSING
    word = ("yes" if r["learned"] == r["judged"] else "no" if r["learned"] == 0 else "partly")
    start = (f"; improved on its start in {r['improved']} of {r['start_judged']}"
             if r.get("start_judged") else "")
    return f"{word} ({r['learned']} of {r['judged']} seeds{start})"


def _mergeable(r: dict[str, Any]) -> str:
    if r["mergeable"] is None:
        return "no adapter (full model)"
    return "yes" if r["mergeable"] else f"no ({r['merge_refusal'] or 'PEFT cannot merge it'})"


def _never_moved(r: dict[str, Any]) -> bool:
    """A cell none of whose judged seeds improved on the probe-fitted head it started from: its
    runs have not shown that fine-tuning did anything, and a CKA near 1 is then the drift of not
    moving, which would put it on the front for learning nothing. Such cells are not compared."""
    return r.get("start_judged", 0) > 0 and r.get("improved", 0) == 0


def _pareto(r: dict[str, Any]) -> str:
    if r["pareto"] is None and _never_moved(r):
        return "not compared: no seed improved on its start"
    return {True: "front", False: "dominated", None: "not compared"}[r["pareto"]]


def pareto_figure(task: str, rows: list[dict[str, Any]]) -> bytes:
    """Accuracy (x) against CKA to the base (left) and against latency (right), one marker per
    method or cell, the front's cells filled and labelled."""
    fig = figs.new_figure(9.0, 3.6)
    names = [r["method"] for r in rows]
    panels = fig.subplots(1, 2, squeeze=False)[0]
    for ax, (key, label) in zip(panels, (("cka", "debiased CKA to the base (higher: less "
                                                  "drift)"),
                                         ("latency_ms", "latency (ms, lower: cheaper)")),
                                strict=True):
        for r in rows:
            if r["accuracy"] is None or r[key] is None:
                continue
            front = r["pareto"] is True
            c = figs.color(names, r["method"])
            ax.plot([r["accuracy"]], [r[key]], marker="o", ms=7 if front else 5, color=c,
                    markerfacecolor=c if front else "white", linestyle="none",
                    label=r["method"] + (" (front)" if front else ""))
            if front:
                ax.annotate(r["method"], (r["accuracy"], r[key]), fontsize=7,
                            xytext=(4, 3), textcoords="offset points")
        figs.style_axes(ax, f"{task}: accuracy vs {label.split(' (')[0]}",
                        f"{rows[0]['metric'] or 'main metric'} (mean over seeds)", label)
    legend = panels[1].get_legend()
    if legend is not None:  # one legend (left) names every marker
        legend.remove()
    return figs.to_png(fig)


def methods_section(res: Results) -> Section:
    s = Section("Methods and sweep cells: accuracy, drift and cost", "methods")
    v = res.view
    if len(v.methods) < 2:
        return s.add(Paragraph.of("Not applicable: the study has one method and no sweep, so "
                                  "there is nothing to set side by side."))
    rows = method_rows(res)
    sweep = bool(res.spec.sweep)
    sources = sorted({r["latency_source"] for r in rows if r["latency_source"]})
    s.add(Paragraph.of(
        "Per task, each " + ("method and sweep cell" if sweep else "method")
        + " on one row. Axes of the Pareto view: accuracy (the task's main metric, mean over "
        "seeds: higher is better), drift (debiased linear CKA between the run's and the base "
        "model's pooled representations on the probe examples, mean over transformer layers "
        "and seeds: higher is less drift) and cost (latency of one request: lower is "
        "better; a merged adapter and a fully fine-tuned model are the same architecture "
        "with the same FLOPs, so they share one cost, the mean of their measured latencies, "
        "and their differences, which are machine noise between processes, do not rank "
        "them; an adapter that cannot merge is costed at its unmerged latency). 'front': "
        "no other row of the task is at least as good on all three and "
        "better on one; 'dominated': another row is; 'not compared': an axis is missing, or no "
        "seed of the row improved on the probe-fitted head it started from (its CKA near 1 "
        "would then be the drift of not moving). The "
        "front is taken on the means: untested differences are numbers, not decisions (the "
        "tested comparisons are in the Findings and Deployment sections), and on unrounded "
        "values (`peftlab results DIR --table methods`): two CKAs that print alike at 4 "
        "decimals can still order two rows. 'Learned' "
        "is the trust panel's rule, per seed, with how many seeds improved on the "
        "probe-fitted head they started from (where they started from one; the Runs section "
        "gives each difference); accuracy and CKA means include every finished seed, learned "
        "or not."
        + (" Latency: " + "; ".join(
            "the paired design's mean (ms)" if src == "paired" else
            f"the median of the benchmarked calls at batch {src[1:]}, averaged over the seeds "
            "benchmarked" for src in sources) + "." if sources else "")))
    for task in v.tasks:
        trows = [r for r in rows if r["task"] == task]
        header = ["Method"] + (["Swept values"] if sweep else []) + [
            "Trainable params", "Mergeable", "Main metric (mean)", f"{conf_label(res)} CI over "
            "seeds", "Learned", "CKA to base (mean)", f"{conf_label(res)} CI over seeds",
            "Unmerged / full model (ms)", "Merged (ms)", "Pareto"]
        table = []
        for r in trows:
            swept = ", ".join(f"{k}={val}" for k, val in (r["swept"] or {}).items())
            table.append([r["method"]] + ([swept or f.MISSING] if sweep else []) + [
                f.integer(r["trainable_params"]), _mergeable(r),
                f"{r['metric'] or ''} {f.metric(r['accuracy'])}".strip(),
                f.interval(r["accuracy_ci_low"], r["accuracy_ci_high"], f.metric),
                _learned(r), f.similarity(r["cka"]),
                f.interval(r["cka_ci_low"], r["cka_ci_high"], f.similarity),
                f.ms(r["unmerged_ms"]),
                f.ms(r["merged_ms"]) if r["mergeable"] else "not mergeable"
                if r["mergeable"] is False else f.MISSING,
                _pareto(r)])
        front = [r["method"] for r in trows if r["pareto"]]
        spread = next((r["dense_spread"] for r in trows if r.get("dense_spread")), None)
        if spread:
            s.add(Paragraph.of(
                f"{task}: the merged adapters and the fully fine-tuned model measured "
                f"{f.ms(spread[0])} to {f.ms(spread[1])} ms for the same architecture; the "
                f"Pareto view gives them one cost, their mean "
                f"{f.ms(next(r['dense_ms'] for r in trows if r.get('dense_ms')))} ms."))
        s.add(Table(header, table,
                    f"{task}: every method{' and sweep cell' if sweep else ''}; Pareto front "
                    f"over accuracy (higher), CKA to the base (higher) and latency (lower): "
                    f"{', '.join(front) if front else 'none (an axis is missing everywhere)'}.",
                    numeric=[False] + ([False] if sweep else []) + [True, False, True, True,
                                                                    False, True, True, True,
                                                                    True, False]))
        if any(r["accuracy"] is not None and (r["cka"] is not None or
                                             r["latency_ms"] is not None) for r in trows):
            s.add(Figure(pareto_figure(task, trows), f"Accuracy against drift and cost on "
                         f"{task}",
                         f"{task}: each method's mean accuracy against its CKA to the base "
                         "(left) and its latency (right); filled and labelled: the Pareto "
                         "front over all three axes (a point can be on the front through the "
                         "axis the other panel shows)."))
    return s


TABLE = "methods"  # `peftlab results DIR --table methods`


def store_rows(ctx: Any) -> int:
    """Write `method_rows` as the `methods` table of the study directory (key "<task>/<method>"),
    replacing what an earlier report wrote; no rows where the section is not applicable. Returns
    the number of rows."""
    from peftlab.results import run_view

    res = Results(ctx, run_view(ctx.study, ctx.store))
    rows = method_rows(res) if len(res.view.methods) >= 2 else []
    ctx.store.replace_where(TABLE, "", [(f"{r['task']}/{r['method']}", r) for r in rows])
    return len(rows)
