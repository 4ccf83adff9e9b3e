"""Layer bands of the drift table and one method's drift over a band.

Bands are over transformer layers only: layer 0 (the embedding output) is band "embeddings", on
its own; the layers from 1 on are split into three contiguous thirds (`numpy.array_split`: early,
middle, late) plus `mean` (all of them). A layer whose measure is undefined (stored as None) is
left out of its band's mean, never turned into NaN.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftlab.families import BANDS, EMBEDDINGS
from peftlab.results import RunView
from peftlab.stages.stats.common import defined, max_or_none, mean_interval, mean_or_none
from peftlab.stages.stats.verdicts import Verdicts


def band_layers(layers: list[int]) -> dict[str, list[int]]:
    """early/middle/late thirds of the transformer layers (index >= 1; numpy.array_split) and
    mean (all of them), then "embeddings" ([0], on its own) when layer 0 is present."""
    ordered = sorted(set(layers))
    blocks = [x for x in ordered if x >= 1]
    thirds = np.array_split(np.asarray(blocks, dtype=int), 3)
    out = {name: [int(x) for x in part] for name, part in zip(BANDS[:3], thirds, strict=True)}
    out["mean"] = blocks
    if 0 in ordered:
        out[EMBEDDINGS] = [0]
    return {name: ls for name, ls in out.items() if ls}


def band_value(by_layer: dict[int, dict[str, Any]], layers: list[int], measure: str
               ) -> dict[str, Any]:
    """Mean of a measure (and of its null floor) over a band's layers, undefined ones left out.

    by_layer: drift records of one comparison keyed by layer. Returns {value, null_mean,
    null_q95, p_max (largest permutation p over the band's layers), n_layers,
    undefined_layers}; value None when no layer of the band is defined.
    """
    vals, nulls, q95s, ps, undefined = [], [], [], [], []
    for layer in layers:
        rec = by_layer.get(layer)
        v = None if rec is None else (rec.get("values") or {}).get(measure)
        if not defined(v):
            undefined.append(layer)
            continue
        vals.append(float(v))
        null = (rec.get("null") or {}).get(measure) or {}
        if defined(null.get("null_mean")):
            nulls.append(float(null["null_mean"]))
        if defined(null.get("null_q95")):
            q95s.append(float(null["null_q95"]))
        if defined(null.get("p_value")):
            ps.append(float(null["p_value"]))
    return {"value": float(np.mean(vals)) if vals else None,
            "null_mean": float(np.mean(nulls)) if nulls else None,
            "null_q95": float(np.mean(q95s)) if q95s else None,
            "p_max": max(ps) if ps else None,
            "n_layers": len(vals), "undefined_layers": undefined}


@dataclass
class BandStats:
    """One method's drift on one task, measure and layer band (see `drift_band`)."""

    values: dict[int, float]  # seed -> mean over the band's defined layers, base vs run
    missing: dict[int, str]  # seed -> why it has no value
    excluded: dict[int, str]  # seed -> degenerate run (value kept in `values`, not tested)
    null_mean: float | None  # mean over (learned) runs of the band's mean permutation null
    null_q95: float | None  # the floor: mean over runs of the band's mean 95% null quantile
    p_max: float | None  # largest permutation p over runs and layers
    controls: dict[tuple[int, int], float]  # seed pair of learned runs -> band mean
    undefined: list[int]  # layers of the band left out for some run
    all_controls: dict[tuple[int, int], float]  # every seed pair, degenerate runs included

    def learned_values(self) -> dict[int, float]:
        return {s: v for s, v in self.values.items() if s not in self.excluded}

    def summary(self, confidence: float) -> dict[str, Any]:
        ctrl = list(self.controls.values())
        lo, hi = mean_interval(ctrl, confidence)
        return {"null_mean": self.null_mean, "null_q95": self.null_q95, "p_max": self.p_max,
                "seed_to_seed": ctrl, "seed_to_seed_mean": mean_or_none(ctrl),
                "seed_to_seed_ci_low": lo, "seed_to_seed_ci_high": hi,
                "seed_pairs": [list(p) for p in self.controls], "n_seed_pairs": len(ctrl),
                "undefined_layers": self.undefined}


def drift_band(view: RunView, task: str, comps: dict[tuple[str, str, str], dict[int, Any]],
               measure: str, layers: list[int], verdicts: Verdicts) -> dict[str, BandStats]:
    """Per method: band means of every base-vs-run and seed-to-seed comparison of a task.

    comps: (kind, run_a, run_b) -> {layer: drift record}, for the task's current runs.
    Degenerate runs keep their value (shown) but are `excluded` from tests, floors and
    controls; a seed-to-seed pair with a degenerate run is left out of the control.
    """
    owner = view.method_of_run()
    values: dict[str, dict[int, float]] = defaultdict(dict)
    missing: dict[str, dict[int, str]] = defaultdict(dict)
    floors: dict[str, list[dict[str, Any]]] = defaultdict(list)
    controls: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    all_controls: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    undefined: dict[str, set[int]] = defaultdict(set)
    for (kind, run_a, run_b), by_layer in sorted(comps.items()):
        _, method, seed = owner[run_b]
        bv = band_value(by_layer, layers, measure)
        undefined[method].update(bv["undefined_layers"])
        bad = verdicts.degenerate(task, method, seed)
        if kind == "seed_to_seed":
            seed_a = owner[run_a][2] if run_a in owner else None
            if bv["value"] is not None and seed_a is not None:
                all_controls[method][(seed_a, seed)] = bv["value"]
                if bad is None and verdicts.degenerate(task, method, seed_a) is None:
                    controls[method][(seed_a, seed)] = bv["value"]
        elif bv["value"] is None:
            missing[method][seed] = f"{method}: {measure} undefined on every layer of the band"
        else:
            values[method][seed] = bv["value"]
            if bad is None:
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
                verdicts.excluded(task, method, list(values[method])),
                mean_or_none([x["null_mean"] for x in floors[method]]),
                mean_or_none([x["null_q95"] for x in floors[method]]),
                max_or_none([x["p_max"] for x in floors[method]]),
                controls[method], sorted(undefined[method]), all_controls[method])
    return out
