"""Area "seed_noise": is a method's drift from the base larger than what another seed does? Per
task, method and tested measure (mean band), exploratory."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from peftlab.families import FAMILY
from peftlab.measures import label as measure_label
from peftlab.results import RunView
from peftlab.stages.stats.bands import BandStats
from peftlab.stages.stats.common import Pending, make_pending, merge_missing

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def seed_noise(task: str, measure: str, per: dict[str, BandStats], view: RunView,
               cfg: StatsSpec, layers: list[int]) -> list[Pending]:
    """Is a method's drift larger than what another seed does? Per method: each run's
    base-vs-run similarity (mean band) against the mean seed-to-seed similarity of the pairs of
    learned runs that contain it, paired by seed. Exploratory: a seed-to-seed pair enters the
    reference of both its seeds, so the references are not independent of each other."""
    out = []
    unit = measure_label(measure)
    for method, bs in per.items():
        ref: dict[int, float] = {}
        for seed in view.seeds:
            # a degenerate seed is excluded below; its reference (from every pair) only lets
            # the comparison see that a pair existed, so losing it makes the test void
            pairs = bs.all_controls if seed in bs.excluded else bs.controls
            vals = [v for (sa, sb), v in pairs.items() if seed in (sa, sb)]
            if vals:
                ref[seed] = float(np.mean(vals))
        missing = {s: f"{method}: no seed-to-seed pair of learned runs contains it"
                   for s in view.seeds if s not in ref}
        context = {
            "area": "seed_noise", "task": task, "quantity": measure, "unit": unit,
            "higher_is_better": None, "measure": measure, "band": "mean", "layers": layers,
            "a": f"{method} base vs run", "b": f"{method} seed vs seed", "method_a": method,
            "method_b": method, "role": "exploratory", "family": FAMILY["seed_noise"],
            "question": None, "null_q95_a": bs.null_q95,
            "reference": "mean over the seed-to-seed pairs of learned runs containing the seed",
            "where_text": f"{task}, {method}",
        }
        out.append(make_pending(
            f"comparison/seed_noise/{measure}/{task}/{method}", context, bs.values, ref,
            view.seeds, cfg,
            f"{task}: {method}, base vs run against seed vs seed ({unit}, mean over transformer "
            "layers)", merge_missing(bs.missing, missing), excluded=bs.excluded))
    return out
