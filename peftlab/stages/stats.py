"""The stats stage: every comparison a study implies, tested at the level of independent runs.

    peftlab stats studies/quickstart.yaml

The unit of analysis is the independent run (one seed of one task x method); a benchmark enters
as the per-run summary (the median latency of each trained model), never as its requests. Every
comparison goes through `peftlab.stats.compare` (paired t-test + exact Wilcoxon, d_z with interval,
mean and relative difference with intervals, TOST when a margin is declared) and then through
`apply_correction` over its declared family, so the report can phrase each finding from its
outcome: significant, equivalent, inconclusive, or "insufficient runs" (fewer than
`stats.min_runs` complete pairs: no test is run).

Families (one kind of comparison across tasks; each record names its own `family`):

    metric                       each PEFT method vs full fine-tuning on the task's main metric,
                                 paired by seed; TOST within +/- stats.metric_margin (absolute)
    drift/<measure>/<band>       method vs method on base-vs-run similarity (debiased linear CKA,
                                 cosine) averaged over a layer band, paired by seed
    latency/<mode a>_vs_<mode b> unmerged vs merged, merged vs full (TOST within +/-
                                 stats.latency_margin, relative), unmerged vs full; per task,
                                 batch size and sequence length, paired by seed
    serving/<multi|mixed>_vs_single  several adapters on one base vs the same adapters served one
                                 at a time (unmerged), paired by seed; TOST as for latency

Layer bands: the layers present in the `drift` table (layer 0 = embeddings) split into three
contiguous thirds (`numpy.array_split`: early, middle, late) plus `mean` (all layers). A layer
whose measure is undefined (stored as None) is left out of its band's mean, never turned into NaN.

Besides comparisons, the table holds `summary` records (per task x method: metric mean and
interval, drift band values with null floor and seed-to-seed control, per-run latency summaries),
one `variance` record per task (share of the main metric's variance from method vs seed) and one
`settings` record. The whole table is replaced atomically on every run.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats as sst

from peftlab import stats as st
from peftlab.errors import DegenerateInputError
from peftlab.measures import label as measure_label
from peftlab.measures import tested_measures
from peftlab.results import (
    RunView,
    bench_rows,
    main_metric_value,
    run_view,
    seq_sort_key,
    served_tasks,
)

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec
    from peftlab.study import Context

TABLE = "stats"
BANDS = ("early", "middle", "late", "mean")
# (a, b) pairs of single-model deployment modes; merged vs full carries the equivalence test
# because "merging removes the overhead" is a no-difference claim.
LATENCY_PAIRS = (("unmerged", "merged"), ("merged", "full"), ("unmerged", "full"))
EQUIVALENCE_PAIRS = {("merged", "full")}
SERVING_MODES = ("multi", "mixed")


# ----------------------------------------------------------------------------- building blocks


@dataclass
class Pending:
    """A comparison before its family is corrected: its key, context fields and result."""

    key: str
    context: dict[str, Any]
    comparison: st.Comparison


def paired(values_a: dict[int, float], values_b: dict[int, float], seeds: list[int]
           ) -> tuple[list[int], list[float], list[float]]:
    """Seeds present on both sides (in spec order) and their values: the complete pairs."""
    both = [s for s in seeds if s in values_a and s in values_b]
    return both, [values_a[s] for s in both], [values_b[s] for s in both]


def merge_missing(*sides: dict[int, str]) -> dict[int, str]:
    """Why each incomplete seed is incomplete, both sides' reasons joined."""
    out: dict[int, list[str]] = defaultdict(list)
    for side in sides:
        for seed, reason in side.items():
            out[seed].append(reason)
    return {seed: "; ".join(reasons) for seed, reasons in out.items()}


def make_pending(key: str, context: dict[str, Any], values_a: dict[int, float],
                 values_b: dict[int, float], seeds: list[int], cfg: StatsSpec, label: str,
                 missing: dict[int, str], margin: float | None = None,
                 margin_relative: bool = True) -> Pending:
    """Compare a vs b paired by seed; seeds without a complete pair are listed, not tested."""
    both, a, b = paired(values_a, values_b, seeds)
    comparison = st.compare(a, b, paired=True, alpha=cfg.alpha, equivalence_margin=margin,
                            min_n=cfg.min_runs, margin_relative=margin_relative, label=label)
    return Pending(key, {**context, "seeds": both, "values_a": a, "values_b": b,
                         "missing": {str(s): r for s, r in missing.items() if s not in both}},
                   comparison)


def correct(pending: list[Pending], method: str) -> list[tuple[str, dict[str, Any]]]:
    """apply_correction over each declared family; records in the input order."""
    families: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(pending):
        families[p.context["family"]].append(i)
    corrected: dict[int, st.Comparison] = {}
    for idx in families.values():
        for i, c in zip(idx, st.apply_correction([pending[i].comparison for i in idx], method),
                        strict=True):
            corrected[i] = c
    return [(p.key, {"kind": "comparison", **p.context, **corrected[i].as_dict()})
            for i, p in enumerate(pending)]


def mean_interval(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    """t-interval of the mean over runs (None with fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None, None
    half = sst.t.ppf(0.5 + confidence / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


# ----------------------------------------------------------------------------- main metric


def metric_records(ctx: Context, view: RunView, cfg: StatsSpec
                   ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """PEFT vs full on each task's main metric (comparisons) and per-method summaries."""
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    for task in view.tasks:
        tdef = ctx.data.task(task)
        metric = tdef.metrics[0]
        values: dict[str, dict[int, float]] = {}
        missing: dict[str, dict[int, str]] = {}
        for method in view.methods:
            values[method], missing[method] = {}, {}
            for seed in view.seeds:
                rec = view.done(task, method, seed)
                v = main_metric_value(rec) if rec is not None else None
                if v is None:
                    missing[method][seed] = (view.why_missing(task, method, seed) if rec is None
                                             else f"{method}: {metric} not finite")
                else:
                    values[method][seed] = v
            vals = [values[method][s] for s in view.seeds if s in values[method]]
            lo, hi = mean_interval(vals, 1 - cfg.alpha)
            summaries.append((f"summary/metric/{task}/{method}", {
                "kind": "summary", "area": "metric", "task": task, "method": method,
                "method_type": view.methods[method], "metric": metric,
                "higher_is_better": tdef.higher_is_better,
                "seeds": [s for s in view.seeds if s in values[method]], "values": vals,
                "run_ids": [view.run_ids[(task, method, s)] for s in view.seeds
                            if s in values[method]],
                "n": len(vals), "mean": float(np.mean(vals)) if vals else None,
                "ci_low": lo, "ci_high": hi, "confidence": 1 - cfg.alpha,
                "interval": "t-interval of the mean over seeds",
                "missing": {str(s): r for s, r in missing[method].items()},
            }))
        for ref in view.references():
            for method in view.peft():
                context = {
                    "family": "metric", "area": "metric", "task": task, "quantity": metric,
                    "unit": metric, "higher_is_better": tdef.higher_is_better,
                    "a": method, "b": ref, "method_a": method, "method_b": ref,
                    "runs_a": [view.run_ids[(task, method, s)] for s in view.seeds],
                    "runs_b": [view.run_ids[(task, ref, s)] for s in view.seeds],
                }
                pending.append(make_pending(
                    f"comparison/metric/{task}/{method} vs {ref}", context, values[method],
                    values[ref], view.seeds, cfg, f"{task}: {method} vs {ref} ({metric})",
                    merge_missing(missing[method], missing[ref]), margin=cfg.metric_margin,
                    margin_relative=False))
    return pending, summaries


def variance_records(ctx: Context, view: RunView, cfg: StatsSpec
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Share of the main metric's variance from method vs seed, per task (complete seeds only,
    so the layout is balanced and the order of the factors does not matter)."""
    out = []
    for task in view.tasks:
        metric = ctx.data.task(task).metrics[0]
        rows = []
        complete = []
        for seed in view.seeds:
            recs = {m: view.done(task, m, seed) for m in view.methods}
            vals = {m: main_metric_value(r) for m, r in recs.items() if r is not None}
            if len(vals) == len(view.methods) and all(v is not None for v in vals.values()):
                complete.append(seed)
                rows += [{"method": m, "seed": str(seed), "value": v} for m, v in vals.items()]
        record: dict[str, Any] = {
            "kind": "variance", "area": "metric", "task": task, "metric": metric,
            "factors": ["method", "seed"], "seeds": complete, "n_seeds": len(complete),
            "methods": list(view.methods), "n": len(rows),
        }
        if len(view.methods) < 2:
            record.update(status="not applicable", note="one method: nothing to attribute")
        elif len(complete) < cfg.min_runs:
            record.update(status="insufficient runs",
                          note=f"{len(complete)} seed(s) with every method done, fewer than "
                               f"stats.min_runs = {cfg.min_runs}")
        else:
            try:
                vd = st.variance_decomposition(pd.DataFrame(rows), "value", ("method", "seed"))
                record.update(status="ok", **{k: v for k, v in vd.as_dict().items()
                                              if k not in ("value", "factors", "n")})
                record["note"] = ("additive model, one run per method x seed: the residual is "
                                  "the method x seed interaction")
            except DegenerateInputError as err:
                record.update(status="undefined", note=err.reason)
        out.append((f"variance/{task}", record))
    return out


# ----------------------------------------------------------------------------- drift


def band_layers(layers: list[int]) -> dict[str, list[int]]:
    """early/middle/late thirds of the sorted layer indices (numpy.array_split) and mean (all)."""
    ordered = sorted(set(layers))
    thirds = np.array_split(np.asarray(ordered, dtype=int), 3)
    out = {name: [int(x) for x in part] for name, part in zip(BANDS[:3], thirds, strict=True)}
    out["mean"] = ordered
    return {name: ls for name, ls in out.items() if ls}


def _defined(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def band_value(by_layer: dict[int, dict[str, Any]], layers: list[int], measure: str
               ) -> dict[str, Any]:
    """Mean of a measure (and of its null floor) over a band's layers, undefined ones left out.

    by_layer: drift records of one comparison keyed by layer. Returns {value, null_mean,
    null_q95, n_layers, undefined_layers}; value None when no layer of the band is defined.
    """
    vals, nulls, q95s, undefined = [], [], [], []
    for layer in layers:
        rec = by_layer.get(layer)
        v = None if rec is None else (rec.get("values") or {}).get(measure)
        if not _defined(v):
            undefined.append(layer)
            continue
        vals.append(float(v))
        null = (rec.get("null") or {}).get(measure) or {}
        if _defined(null.get("null_mean")):
            nulls.append(float(null["null_mean"]))
        if _defined(null.get("null_q95")):
            q95s.append(float(null["null_q95"]))
    return {"value": float(np.mean(vals)) if vals else None,
            "null_mean": float(np.mean(nulls)) if nulls else None,
            "null_q95": float(np.mean(q95s)) if q95s else None,
            "n_layers": len(vals), "undefined_layers": undefined}


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


@dataclass
class BandStats:
    """One method's drift on one task, measure and layer band (see `drift_band`)."""

    values: dict[int, float]  # seed -> mean over the band's defined layers, base vs run
    missing: dict[int, str]  # seed -> why it has no value
    null_mean: float | None  # mean over runs of the band's mean permutation-null CKA
    null_q95: float | None
    controls: list[float]  # seed-to-seed: one band mean per pair of runs of the method
    undefined: list[int]  # layers of the band left out for some run

    def summary(self) -> dict[str, Any]:
        return {"null_mean": self.null_mean, "null_q95": self.null_q95,
                "seed_to_seed": self.controls, "seed_to_seed_mean": _mean_or_none(self.controls),
                "n_seed_pairs": len(self.controls), "undefined_layers": self.undefined}


def drift_band(view: RunView, task: str, comps: dict[tuple[str, str, str], dict[int, Any]],
               measure: str, layers: list[int]) -> dict[str, BandStats]:
    """Per method: band means of every base-vs-run and seed-to-seed comparison of a task.

    comps: (kind, run_a, run_b) -> {layer: drift record}, for the task's current runs.
    """
    owner = view.method_of_run()
    values: dict[str, dict[int, float]] = defaultdict(dict)
    missing: dict[str, dict[int, str]] = defaultdict(dict)
    floors: dict[str, list[dict[str, Any]]] = defaultdict(list)
    controls: dict[str, list[float]] = defaultdict(list)
    undefined: dict[str, set[int]] = defaultdict(set)
    for (kind, _run_a, run_b), by_layer in sorted(comps.items()):
        _, method, seed = owner[run_b]
        bv = band_value(by_layer, layers, measure)
        undefined[method].update(bv["undefined_layers"])
        if kind == "seed_to_seed":
            if bv["value"] is not None:
                controls[method].append(bv["value"])
        elif bv["value"] is None:
            missing[method][seed] = f"{method}: {measure} undefined on every layer of the band"
        else:
            values[method][seed] = bv["value"]
            floors[method].append(bv)
    out = {}
    for method in view.methods:
        for seed in view.seeds:
            if seed not in values[method] and seed not in missing[method]:
                missing[method][seed] = (view.why_missing(task, method, seed)
                                         if view.done(task, method, seed) is None
                                         else f"{method}: no drift records")
        if values[method] or controls[method]:
            out[method] = BandStats(
                values[method], missing[method],
                _mean_or_none([x["null_mean"] for x in floors[method]]),
                _mean_or_none([x["null_q95"] for x in floors[method]]),
                controls[method], sorted(undefined[method]))
    return out


def drift_records(store_records: list[dict[str, Any]], view: RunView, cfg: StatsSpec
                  ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per task, measure and band: method summaries (with null floor and seed-to-seed control)
    and method-vs-method comparisons paired by seed on the base-vs-run similarity."""
    owner = view.method_of_run()
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for rec in store_records:
        if rec.get("run_b") in owner and rec.get("kind") in ("base_vs_run", "seed_to_seed"):
            by_task[rec["task"]].append(rec)
    for task in view.tasks:
        recs = by_task.get(task, [])
        comps: dict[tuple[str, str, str], dict[int, dict[str, Any]]] = defaultdict(dict)
        for r in recs:
            comps[(r["kind"], r["run_a"], r["run_b"])][r["layer"]] = r
        measures = [m for m in tested_measures() if any(m in (r.get("values") or {}) for r in recs)]
        bands = band_layers([r["layer"] for r in recs]) if recs else {}
        for measure, (band, layers) in itertools.product(measures, bands.items()):
            unit = measure_label(measure)
            per = drift_band(view, task, comps, measure, layers)
            for method, bs in per.items():
                seeds = [s for s in view.seeds if s in bs.values]
                vals = [bs.values[s] for s in seeds]
                summaries.append((f"summary/drift/{task}/{measure}/{band}/{method}", {
                    "kind": "summary", "area": "drift", "task": task, "method": method,
                    "method_type": view.methods[method], "measure": measure, "band": band,
                    "layers": layers, "seeds": seeds, "values": vals, "n": len(vals),
                    "mean": float(np.mean(vals)) if vals else None, **bs.summary(),
                }))
            for a, b in method_pairs(view, list(per)):
                sides = {f"{k}_{side}": per[m].summary()[k] for side, m in (("a", a), ("b", b))
                         for k in ("null_mean", "null_q95", "seed_to_seed", "seed_to_seed_mean")}
                context = {
                    "family": f"drift/{measure}/{band}", "area": "drift", "task": task,
                    "quantity": measure, "unit": unit, "higher_is_better": None,
                    "measure": measure, "band": band, "layers": layers, "a": a, "b": b,
                    "method_a": a, "method_b": b, **sides,
                    "runs_a": [view.run_ids[(task, a, s)] for s in view.seeds],
                    "runs_b": [view.run_ids[(task, b, s)] for s in view.seeds],
                }
                pending.append(make_pending(
                    f"comparison/drift/{measure}/{band}/{task}/{a} vs {b}", context,
                    per[a].values, per[b].values, view.seeds, cfg,
                    f"{task}: {a} vs {b} ({unit} to the base, {band} layers)",
                    merge_missing(per[a].missing, per[b].missing)))
    return pending, summaries


def method_pairs(view: RunView, methods: list[str]) -> list[tuple[str, str]]:
    """Every pair of methods once: PEFT before full (a = PEFT, b = full), else spec order."""
    out = []
    for x, y in itertools.combinations(methods, 2):
        if view.methods[x] == "full" and view.methods[y] != "full":
            x, y = y, x
        out.append((x, y))
    return out


# ----------------------------------------------------------------------------- deployment


def latency_records(rows: list[dict[str, Any]], view: RunView, cfg: StatsSpec
                    ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per-run latency summaries and the deployment comparisons (see the module docstring)."""
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
            "requests_per_s": _mean_or_none(tput),
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

    for task in view.tasks:
        for batch, seq in points:
            for mode_a, mode_b in LATENCY_PAIRS:
                for method_a in view.peft():
                    for method_b in [method_a] if mode_b != "full" else view.references():
                        if not {(mode_a, task, method_a, batch, seq),
                                (mode_b, task, method_b, batch, seq)} & tried:
                            continue  # the study did not benchmark this pair at all
                        va, ma = values_of(mode_a, task, method_a, batch, seq)
                        vb, mb = values_of(mode_b, task, method_b, batch, seq)
                        eq = (mode_a, mode_b) in EQUIVALENCE_PAIRS
                        a, b = f"{method_a}/{mode_a}", f"{method_b}/{mode_b}"
                        context = {
                            "family": f"latency/{mode_a}_vs_{mode_b}", "area": "latency",
                            "task": task, "quantity": "median latency", "unit": "ms",
                            "higher_is_better": False, "batch_size": batch, "seq_len": seq,
                            "mode_a": mode_a, "mode_b": mode_b, "method_a": method_a,
                            "method_b": method_b, "a": a, "b": b,
                            "flops_share": _flops_share(units_rows.get(
                                (mode_a, task, method_a, batch, seq), [])),
                        }
                        pending.append(make_pending(
                            f"comparison/latency/{mode_a}_vs_{mode_b}/{task}/b{batch}/{seq}/"
                            f"{a} vs {b}", context, va, vb, view.seeds, cfg,
                            f"{task}, batch {batch}, length {seq}: {a} vs {b} (median latency)",
                            merge_missing(ma, mb), margin=cfg.latency_margin if eq else None))
    for mode in SERVING_MODES:
        for key in sorted((k for k in tried if k[0] == mode), key=_point_order):
            _, served, method, batch, seq = key
            tasks = served.split("+")
            by_seed, miss = values_of(mode, served, method, batch, seq)
            single: dict[int, float] = {}
            for s in view.seeds:
                parts = [unit.get(("unmerged", t, method, batch, seq), {}).get(s) for t in tasks]
                if all(p is not None for p in parts):
                    single[s] = float(np.mean(parts))
                else:
                    miss[s] = "; ".join(filter(None, [
                        miss.get(s), f"unmerged ({method}): not timed on every served task"]))
            k = adapters[key]
            context = {
                "family": f"serving/{mode}_vs_single", "area": "serving", "task": served,
                "tasks": tasks, "quantity": "median latency", "unit": "ms",
                "higher_is_better": False, "batch_size": batch, "seq_len": seq,
                "mode_a": mode, "mode_b": "unmerged", "method_a": method, "method_b": method,
                "a": f"{method}/{mode}-{k}", "b": f"{method}/single adapter",
                "reference": "mean over the served tasks of the unmerged single-adapter median "
                             "latency of the same seed",
                "k": k,
            }
            pending.append(make_pending(
                f"comparison/serving/{mode}_vs_single/{served}/b{batch}/{seq}/{method}", context,
                by_seed, single, view.seeds, cfg,
                f"{served}, batch {batch}, length {seq}: {method} {mode}-{k} vs single "
                f"adapter (median latency)", miss, margin=cfg.latency_margin))
    return pending, summaries


def _point_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """(mode, task, method, batch, seq) keys in a readable order: numbers as numbers."""
    mode, task, method, batch, seq = key
    return (str(task), str(mode), str(method), batch, seq_sort_key(seq))


def _flops_share(rows: list[dict[str, Any]]) -> float | None:
    shares = [r["flops"].get("adapter_share") for r in rows]
    return _mean_or_none([s for s in shares if _defined(s)])


# ----------------------------------------------------------------------------- the stage


def build_stats(ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the `stats` table, from the current contents of the study directory."""
    cfg = ctx.study.spec.stats
    view = run_view(ctx.study, ctx.store)
    metric_pending, metric_summaries = metric_records(ctx, view, cfg)
    drift_pending, drift_summaries = drift_records(ctx.store.records("drift"), view, cfg)
    lat_pending, lat_summaries = latency_records(bench_rows(ctx.store.records("bench")), view,
                                                 cfg)
    comparisons = correct(metric_pending + drift_pending + lat_pending, cfg.correction)
    families: dict[str, int] = defaultdict(int)
    for _, rec in comparisons:
        families[rec["family"]] += 1
    settings = ("settings", {
        "kind": "settings", "alpha": cfg.alpha, "correction": cfg.correction,
        "min_runs": cfg.min_runs, "metric_margin": cfg.metric_margin,
        "metric_margin_relative": False, "latency_margin": cfg.latency_margin,
        "latency_margin_relative": True, "families": dict(families),
        "bands": "layers split into three contiguous thirds (numpy.array_split) + mean of all",
        "unit": "one value per independent run (seed); latency: the median of each run",
    })
    items = [settings, *comparisons, *metric_summaries, *variance_records(ctx, view, cfg),
             *drift_summaries, *lat_summaries]
    # Keys sort alphabetically in the store; `order` keeps the study's order (tasks as in the
    # spec, bands early to late) for the report.
    return [(key, {**rec, "order": i}) for i, (key, rec) in enumerate(items)]


def run(ctx: Context) -> None:
    """Build every comparison the study implies and replace the `stats` table with them."""
    items = build_stats(ctx)
    ctx.store.replace_where(TABLE, "", items)
    outcomes: dict[str, int] = defaultdict(int)
    for _, rec in items:
        if rec["kind"] == "comparison":
            outcomes[rec["outcome"]] += 1
    told = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "no comparisons"
    ctx.console.print(f"stats: {len(items)} records ({told})")
