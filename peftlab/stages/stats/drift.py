"""Area "drift": per task, measure and band, each method's similarity to the base (with null
floor, seed-to-seed control and permutation p), method-vs-method comparisons paired by seed,
per-layer summaries, and (through `seed_noise` and `across_tasks`) the seed-noise tests and the
across-task mixed model. One readout of the drift table at a time (see `readout`)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.families import EMBEDDINGS, role_drift, roled
from peftlab.measures import MEASURES, tested_measures
from peftlab.measures import label as measure_label
from peftlab.results import RunView, is_reference
from peftlab.stages.stats.across_tasks import across_tasks
from peftlab.stages.stats.bands import band_layers, drift_band
from peftlab.stages.stats.common import (
    Pending,
    defined,
    make_pending,
    max_or_none,
    mean_interval,
    mean_or_none,
    merge_missing,
)
from peftlab.stages.stats.seed_noise import seed_noise
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def method_pairs(view: RunView, methods: list[str]) -> list[tuple[str, str]]:
    """Every pair of methods once: PEFT before full (a = PEFT, b = full), else spec order."""
    out = []
    for x, y in itertools.combinations(methods, 2):
        if is_reference(view.methods[x]) and not is_reference(view.methods[y]):
            x, y = y, x
        out.append((x, y))
    return out


def _task_drift(drift: list[dict[str, Any]], view: RunView
                ) -> dict[str, dict[tuple[str, str, str], dict[int, dict[str, Any]]]]:
    owner = view.method_of_run()
    by_task: dict[str, dict[tuple[str, str, str], dict[int, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict))
    for r in drift:
        if r.get("run_b") in owner and r.get("kind") in ("base_vs_run", "seed_to_seed"):
            by_task[r["task"]][(r["kind"], r["run_a"], r["run_b"])][r["layer"]] = r
    return by_task


def drift_records(store_records: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                  verdicts: Verdicts
                  ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per task, measure and band: method summaries (every measure; with null floor, seed-to-
    seed control and permutation p), method-vs-method comparisons paired by seed (tested
    measures, transformer-layer bands), the seed-noise test per method (tested measures, mean
    band), per-layer summaries, and the across-task mixed model per PEFT method."""
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    conf = 1 - cfg.alpha
    by_task = _task_drift(store_records, view)
    across: dict[str, list[dict[str, Any]]] = defaultdict(list)  # measure -> frame rows
    measures_seen: list[str] = []
    tested = tested_measures(cfg)
    for task in view.tasks:
        comps = by_task.get(task, {})
        recs = [r for by_layer in comps.values() for r in by_layer.values()]
        present = [m for m in MEASURES.names()
                   if any(m in (r.get("values") or {}) for r in recs)]
        measures_seen += [m for m in present if m not in measures_seen]
        bands = band_layers([r["layer"] for r in recs]) if recs else {}
        summaries += layer_summaries(task, comps, view, present, cfg, verdicts)
        for measure, (band, layers) in itertools.product(present, bands.items()):
            unit = measure_label(measure)
            per = drift_band(view, task, comps, measure, layers, verdicts)
            for method, bs in per.items():
                seeds = [s for s in view.seeds if s in bs.values]
                learned = bs.learned_values()
                vals = [learned[s] for s in seeds if s in learned]
                lo, hi = mean_interval(vals, conf)
                summaries.append((f"summary/drift/{task}/{measure}/{band}/{method}", {
                    "kind": "summary", "area": "drift", "task": task, "method": method,
                    "method_type": view.methods[method], "measure": measure, "band": band,
                    "layers": layers, "seeds": [s for s in seeds if s in learned],
                    "values": vals, "n": len(vals),
                    "mean": float(np.mean(vals)) if vals else None, "ci_low": lo,
                    "ci_high": hi, "confidence": conf,
                    "degenerate": {str(s): r for s, r in bs.excluded.items()},
                    "degenerate_values": {str(s): bs.values[s] for s in bs.excluded},
                    **bs.summary(conf),
                }))
                if band == "mean" and measure in tested:
                    across[measure] += [{"task": task, "method": method, "seed": s,
                                         "value": v} for s, v in learned.items()]
            if measure not in tested or band == EMBEDDINGS:
                continue
            where = f"{task}, {band} transformer layers"
            for a, b in method_pairs(view, list(per)):
                sides = {f"{k}_{side}": per[m].summary(conf)[k] for side, m in (("a", a), ("b", b))
                         for k in ("null_mean", "null_q95", "p_max", "seed_to_seed",
                                   "seed_to_seed_mean", "seed_to_seed_ci_low",
                                   "seed_to_seed_ci_high")}
                excluded = merge_missing(per[a].excluded, per[b].excluded)
                context = {
                    "area": "drift", "task": task, "quantity": measure, "unit": unit,
                    "higher_is_better": None, "measure": measure, "band": band,
                    "layers": layers, "a": a, "b": b, "method_a": a, "method_b": b,
                    **roled(role_drift(cfg, measure, band, False)), **sides,
                    "runs_a": [view.run_ids[(task, a, s)] for s in view.seeds],
                    "runs_b": [view.run_ids[(task, b, s)] for s in view.seeds],
                    "where_text": where,
                }
                pending.append(make_pending(
                    f"comparison/drift/{measure}/{band}/{task}/{a} vs {b}", context,
                    per[a].values, per[b].values, view.seeds, cfg,
                    f"{task}: {a} vs {b} ({unit} to the base, {band} transformer layers)",
                    merge_missing(per[a].missing, per[b].missing), excluded=excluded))
            if band == "mean":
                pending += seed_noise(task, measure, per, view, cfg, layers)
    for measure in [m for m in tested if m in measures_seen]:
        pending += across_tasks(measure, across[measure], view, cfg)
    return pending, summaries


def layer_summaries(task: str, comps: dict[tuple[str, str, str], dict[int, dict[str, Any]]],
                    view: RunView, measures: list[str], cfg: StatsSpec, verdicts: Verdicts
                    ) -> list[tuple[str, dict[str, Any]]]:
    """Per measure, method and layer: base-vs-run mean and t-interval over learned runs, the
    null floor (mean over runs of the 95% quantile; the null mean beside it), the largest
    permutation p, the mean bootstrap bounds over probe examples, the seed-to-seed control."""
    owner = view.method_of_run()
    conf = 1 - cfg.alpha
    cells: dict[tuple[str, str, int], dict[str, list[Any]]] = defaultdict(
        lambda: defaultdict(list))
    for (kind, run_a, run_b), by_layer in comps.items():
        _, method, seed = owner[run_b]
        if verdicts.degenerate(task, method, seed) is not None:
            continue
        if kind == "seed_to_seed" and run_a in owner and verdicts.degenerate(
                task, method, owner[run_a][2]) is not None:
            continue
        for layer, r in by_layer.items():
            boot = r.get("bootstrap") or {}
            for m in measures:
                v = (r.get("values") or {}).get(m)
                cell = cells[(m, method, layer)]
                if kind == "seed_to_seed":
                    if defined(v):
                        cell["control"].append(float(v))
                    continue
                cell["layer_name"].append(r.get("layer_name"))
                if not defined(v):
                    cell["undefined"].append(seed)
                    continue
                cell["values"].append(float(v))
                cell["seeds"].append(seed)
                null = (r.get("null") or {}).get(m) or {}
                for k in ("null_mean", "null_q95", "p_value"):
                    if defined(null.get(k)):
                        cell[k].append(float(null[k]))
                if boot.get("measure") == m and defined(boot.get("ci_low")):
                    cell["boot_low"].append(float(boot["ci_low"]))
                    cell["boot_high"].append(float(boot["ci_high"]))
    out = []
    for (m, method, layer), cell in sorted(cells.items(), key=lambda kv: (
            MEASURES.names().index(kv[0][0]), list(view.methods).index(kv[0][1]), kv[0][2])):
        vals = cell["values"]
        lo, hi = mean_interval(vals, conf)
        clo, chi = mean_interval(cell["control"], conf)
        out.append((f"summary/layer/{task}/{m}/{method}/L{layer:03d}", {
            "kind": "summary", "area": "drift_layer", "task": task, "measure": m,
            "method": method, "layer": layer,
            "layer_name": next((n for n in cell["layer_name"] if n), None),
            "seeds": cell["seeds"], "n": len(vals),
            "mean": float(np.mean(vals)) if vals else None, "ci_low": lo, "ci_high": hi,
            "confidence": conf, "interval": "t-interval of the mean over learned runs",
            "null_mean": mean_or_none(cell["null_mean"]),
            "null_q95": mean_or_none(cell["null_q95"]), "p_max": max_or_none(cell["p_value"]),
            "bootstrap_low": mean_or_none(cell["boot_low"]),
            "bootstrap_high": mean_or_none(cell["boot_high"]),
            "seed_to_seed_mean": mean_or_none(cell["control"]),
            "seed_to_seed_ci_low": clo, "seed_to_seed_ci_high": chi,
            "n_seed_pairs": len(cell["control"]), "undefined_seeds": cell["undefined"],
        }))
    return out
