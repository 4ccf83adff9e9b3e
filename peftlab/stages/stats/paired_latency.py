"""Area "latency" from the paired design (`peftlab.bench.paired`, table `bench_pairs`): the
deployment comparisons measured alternately in one process (ABBA rounds) and repeated in fresh
processes (blocks), with the A/A control as the bench's noise floor.

Where a comparison was measured this way, its record replaces the per-seed one of the same key
(`latency.latency_records`): latency does not depend on the training seed (two models of one
architecture have the same FLOPs), so the unit of the test is the block, a fresh process, not the
seed. Each block enters the paired t-test as one pair: the geometric mean over its rounds of A's
and of B's segment medians (ms), so that the ratio of a block's pair is exp(mean round log ratio),
the observation `latency_design.analyse_pairs` averages. The A/A control's blocks, every group
pooled, give the noise floor: a comparison whose estimate lies inside it is never called different.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from peftlab.bench.modes import find_mode
from peftlab.families import role_latency, roled
from peftlab.latency_design import analyse_pairs, noise_floor
from peftlab.records import BenchPairRecord, read
from peftlab.stages.stats.common import Inputs, Pending, Record, make_pending

CONTROL_KEY = "summary/latency_control"
UNIT = "block (a fresh process; ABBA rounds within it)"


def _block_ms(rec: BenchPairRecord) -> tuple[float, float] | None:
    """(A, B) of one block, ms: the geometric mean over its rounds of each round's latency, itself
    the geometric mean of the round's segment medians (`latency_design.log_latency`), so that
    A / B = exp(mean round log ratio)."""
    sides = []
    for side in ("a_ms", "b_ms"):
        segs = [x for r in rec.rounds for x in [r.get(side)] if x]
        flat = [v for x in segs for v in (x if isinstance(x, list) else [x])]
        if not segs or len(segs) != len(rec.rounds) or any(
                not isinstance(v, (int, float)) or v <= 0 for v in flat):
            return None
        sides.append(float(np.exp(np.mean([np.mean(np.log(x if isinstance(x, list) else [x]))
                                           for x in segs]))))
    return sides[0], sides[1]


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """The paired comparisons (replacing per-seed ones of the same key) and the A/A summary."""
    cfg = inp.cfg
    done = [r for r in read(inp.ctx.store, BenchPairRecord) if r.status == "done"]
    if not done:
        return [], []
    # the A/A control's blocks per group (the same blocks as its comparisons): copy-to-copy
    # differences of one model within a group can exceed the pooled floor, and a comparison is
    # read against its own group's; pooled over every group, the floor
    by_group: dict[str, list[list[float]]] = defaultdict(list)
    for r in sorted(done, key=lambda r: (r.group, r.block)):
        if r.control and r.log_ratios:
            by_group[r.group].append(r.log_ratios)
    control = [x for blocks in by_group.values() for x in blocks]
    aa = analyse_pairs(control, alpha=cfg.alpha) if control else None
    floor = noise_floor(aa) if aa else None
    per_group = {g: _brief(analyse_pairs(blocks, alpha=cfg.alpha))
                 for g, blocks in by_group.items()}
    records: list[Record] = []
    if aa is not None:
        records.append((CONTROL_KEY, {
            **aa, "kind": "summary", "area": "latency_control", "quantity": "A/A latency ratio",
            "what": "one artifact measured under two labels in the paired design: the bench's "
                    "noise floor (no latency difference inside it is called real)",
            "floor_pct": None if floor is None else 100 * math.expm1(floor),
            "per_group": per_group}))
    groups: dict[tuple[Any, ...], list[BenchPairRecord]] = defaultdict(list)
    for r in done:
        if not r.control:
            groups[(r.comparison, r.task, r.a, r.b, r.batch_size, str(r.seq_len))].append(r)
    pending: list[Pending] = []
    for (pair, task, a, b, batch, seq), recs in sorted(groups.items(), key=lambda kv: kv[0]):
        recs.sort(key=lambda r: r.block)
        first = recs[0]
        mode = find_mode(first.mode_a)
        comp = next((c for c in (mode.comparisons if mode else []) if c.other == first.mode_b),
                    None)
        equivalence = bool(comp and comp.equivalence)
        va: dict[int, float] = {}
        vb: dict[int, float] = {}
        missing: dict[int, str] = {}
        for r in recs:
            ms = _block_ms(r)
            if ms is None:
                missing[r.block] = "no timed round"
                continue
            va[r.block], vb[r.block] = ms
        analysis = analyse_pairs([r.log_ratios for r in recs if r.log_ratios], alpha=cfg.alpha,
                                 margin=cfg.latency_margin if equivalence else None,
                                 floor=floor)
        seeds = sorted({r.seed for r in recs if r.seed is not None})
        excluded: dict[int, str] = {}
        for method in {first.method_a, first.method_b} - {None}:
            for s in seeds:
                why = inp.verdicts.degenerate(task, method, s)
                if why:
                    excluded.update({r.block: why for r in recs})
        context = {
            "area": "latency", "pair": pair, **roled(role_latency(cfg, pair, batch, seq)),
            "task": task, "quantity": "median latency", "unit": "ms",
            "higher_is_better": False, "batch_size": batch, "seq_len": seq,
            "mode_a": first.mode_a, "mode_b": first.mode_b, "method_a": first.method_a,
            "method_b": first.method_b, "a": a, "b": b, "claim": comp.claim if comp else None,
            "design": "paired", "unit_of_analysis": UNIT, "training_seeds": seeds,
            "rounds_per_block": analysis["rounds_per_block"], "paired_analysis": analysis,
            "noise_floor_pct": None if floor is None else 100 * math.expm1(floor),
            "control_group": per_group.get(first.group),
            "where_text": f"{task}, batch {batch}, length {seq}",
        }
        pending.append(make_pending(
            f"comparison/latency/{pair}/{task}/b{batch}/{seq}/{a} vs {b}", context, va, vb,
            sorted(va), cfg, f"{task}, batch {batch}, length {seq}: {a} vs {b} (median latency, "
            f"paired blocks)", missing, margin=cfg.latency_margin if equivalence else None,
            excluded=excluded))
    return pending, records


def _brief(a: dict[str, Any]) -> dict[str, Any]:
    """The A/A fields a reader needs: change and interval in %, blocks."""
    return {k: a.get(k) for k in ("change_pct", "ci_pct", "n_blocks", "ratio", "ci_low",
                                  "ci_high")}


def inside_floor(rec: dict[str, Any]) -> bool:
    """A paired comparison whose estimated ratio lies inside the A/A noise floor."""
    floor = rec.get("noise_floor_pct")
    ratio = (rec.get("paired_analysis") or {}).get("ratio")
    return (floor is not None and ratio is not None
            and abs(100 * (ratio - 1)) <= floor)
