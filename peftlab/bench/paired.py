"""The primary latency comparisons, measured paired and repeated (the bench's `bench_pairs`).

    groups, notes = plan_groups(candidates, comparisons=["unmerged_vs_merged", "merged_vs_full"],
                                modes=bench.modes, tasks=["sst2"], seeds=[42, 1337],
                                control=True)
    design = run_design(groups, paired=bench.paired, alpha=0.05, power=0.8, stored=records,
                        run_block=run_one_block, save=write_block, say=print)

A *group* is what one process serves: per task and PEFT method, every condition (a mode on a
method's artifact) the comparisons need, e.g. lora/unmerged, lora/merged and full/full, plus the
A/A control (one condition loaded a second time under another label). Every comparison between
two of a group's conditions that a mode declares (`bench.mode.Comparison`, single-model
references) is read from the same rounds: the study's primary ones (stats.primary.deployment)
and the others, flagged `primary` or not, at the primary sweep point (batch size, length).

A *block* is one fresh process (`bench.paired_job`) holding the group's models, serving them in
rounds (ABBA, see `peftlab.latency_design`); block i serves the artifacts of training seed
seeds[i mod len(seeds)] (latency does not depend on the seed; the block is the unit). The design
runs in waves, one block per group in each, so a drift of the machine over minutes reaches every
group alike: two pilot blocks of `pilot_rounds` rounds, from which `latency_design.plan_design`
sizes the rest (blocks x rounds) to detect `detect` within `budget_s`; then the planned blocks
while the budget lasts. A block's records are written when its process has finished, all in one
transaction: a block killed mid-way leaves nothing and is rerun whole. Blocks stored by an
earlier run under the same settings and artifacts are reused; the plan is made from the stored
pilot, so a resumed design is the same design.

Reading the results (what the stats stage and the report do with them): for each (group,
comparison, a, b) of `bench_pairs` (status done), the blocks' `log_ratios` in block order go to
`latency_design.analyse_pairs`; the A/A control's blocks (comparison "aa", every group pooled)
give the noise floor (`latency_design.noise_floor`), passed as `floor` to every other
comparison, with the margin of the comparisons a mode declares `equivalence` for. The unit is
the block, n = its blocks; `bench_design` holds each comparison's design and its minimum
detectable difference in %.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftlab.latency_design import analyse_pairs, block_summary, plan_design

PILOT_BLOCKS = 2  # the fewest blocks that show process-to-process variance


@dataclass(frozen=True)
class Condition:
    """A mode on one method's artifacts: label "<method>/<mode>" (the A/A copy: "... (again)");
    artifacts: training seed -> artifact dict."""

    label: str
    mode: str
    method: str | None
    artifacts: dict[Any, dict[str, Any]]


@dataclass(frozen=True)
class PairedComparison:
    """A against B, both conditions of one group. name: "<mode a>_vs_<mode b>" or "aa"."""

    name: str
    a: str
    b: str
    primary: bool
    control: bool = False
    claim: str = ""


@dataclass
class Group:
    """What one block process serves: a task's conditions and the comparisons read from them."""

    name: str  # "<task>/<method>"
    task: str
    conditions: list[Condition]
    comparisons: list[PairedComparison]
    seeds: list[Any] = field(default_factory=list)  # seeds with every condition's artifact

    def condition(self, label: str) -> Condition:
        return next(c for c in self.conditions if c.label == label)

    def seed_of(self, block: int) -> Any:
        return self.seeds[block % len(self.seeds)]


def plan_groups(candidates: list[Any], *, comparisons: list[str], modes: list[str],
                tasks: list[str], seeds: list[Any], control: bool
                ) -> tuple[list[Group], list[str]]:
    """The groups for the primary `comparisons` ("<mode a>_vs_<mode b>"), and notes on what was
    left out and why (a mode not benched, a method a mode cannot serve, no artifacts).

    candidates: `bench.mode.Candidate`s (the study's finished runs). Per task and method of mode
    a's artifact kind, the conditions of every primary comparison (b: the same method's
    artifacts for reference "same", each full fine-tuning method's for "full"), then every other
    declared single-model comparison between those conditions, then the A/A control: the first
    primary comparison's b loaded a second time.
    """
    from peftlab.bench.mode import UnsupportedMode
    from peftlab.bench.modes import get_mode, mode_names

    declared = [(get_mode(m), c) for m in mode_names() for c in get_mode(m).comparisons
                if c.reference != "single"]
    by_name = {f"{m.name}_vs_{c.other}": (m, c) for m, c in declared}
    notes: list[str] = []
    primary = []
    for name in comparisons:
        mode, comp = by_name[name]
        missing = [x for x in (mode.name, comp.other) if x not in modes]
        if missing:
            notes.append(f"{name}: not measured paired: mode(s) {missing} not in bench.modes")
            continue
        primary.append((mode, comp))
    groups: list[Group] = []
    for task in tasks:
        mine = [c for c in candidates if c.task == task and c.seed in seeds]
        for method in dict.fromkeys(c.method for c in mine):
            conds: dict[str, Condition] = {}
            comps: list[PairedComparison] = []

            def condition(mode_name: str, meth: Any, conds=conds, mine=mine, task=task
                          ) -> str | None:
                """The label of mode_name on method meth's artifacts (added to the group on
                first use), None when there is none or the mode cannot serve them."""
                label = f"{meth}/{mode_name}"
                if label in conds:
                    return label
                mode = get_mode(mode_name)
                arts = [c for c in mine if c.method == meth and c.kind == mode.artifact_kind]
                if not arts:
                    return None
                try:
                    mode.check([arts[0].artifact], [arts[0].method_obj])
                except UnsupportedMode as err:
                    notes.append(f"{task}/{meth}: not measured paired: {err}")
                    return None
                conds[label] = Condition(label, mode_name, meth,
                                         {c.seed: c.artifact for c in arts})
                return label

            kind = next(c.kind for c in mine if c.method == method)
            for mode, comp in primary:
                if mode.artifact_kind != kind:
                    continue
                refs = [method] if comp.reference == "same" else list(dict.fromkeys(
                    c.method for c in mine if c.kind == "full"))
                for ref in refs:
                    a, b = condition(mode.name, method), condition(comp.other, ref)
                    if a and b:
                        comps.append(PairedComparison(f"{mode.name}_vs_{comp.other}", a, b,
                                                      True, claim=comp.claim))
            if not comps:
                continue
            # the other declared comparisons among these conditions come from the same rounds
            for mode, comp in declared:
                for ca in [c for c in conds.values() if c.mode == mode.name]:
                    for cb in [c for c in conds.values() if c.mode == comp.other]:
                        if comp.reference == "same" and ca.method != cb.method:
                            continue
                        name = f"{mode.name}_vs_{comp.other}"
                        if not any(x.a == ca.label and x.b == cb.label for x in comps):
                            comps.append(PairedComparison(name, ca.label, cb.label, False,
                                                          claim=comp.claim))
            if control:
                ref = conds[comps[0].b]
                copy = Condition(f"{ref.label} (again)", ref.mode, ref.method, ref.artifacts)
                conds[copy.label] = copy
                comps.append(PairedComparison("aa", copy.label, ref.label, False, control=True,
                                              claim="the same model under two labels: the "
                                                    "bench's noise floor"))
            usable = [s for s in seeds if all(s in c.artifacts for c in conds.values())]
            if not usable:
                notes.append(f"{task}/{method}: no training seed has a finished run of every "
                             f"condition ({sorted(conds)})")
                continue
            groups.append(Group(f"{task}/{method}", task, list(conds.values()), comps, usable))
    return groups, notes


# ----------------------------------------------------------------------------- the design


@dataclass
class Block:
    """One finished block of one group: per comparison name+labels its per-round log ratios."""

    group: str
    block: int
    rounds: int
    ok: bool
    wall_s: float
    rounds_s: float
    log_ratios: dict[tuple[str, str, str], list[float]]  # (comparison, a, b) -> per round
    reason: str | None = None


def comparison_key(c: PairedComparison) -> tuple[str, str, str]:
    return (c.name, c.a, c.b)


def pooled_components(blocks: list[Block], groups: list[Group]) -> dict[str, dict[str, float]]:
    """Per comparison name: sigma_round and sigma_block (log scale) pooled over groups (mean of
    the per-group variance estimates), from the finished blocks given."""
    out: dict[str, dict[str, list[float]]] = {}
    for g in groups:
        mine = [b for b in blocks if b.group == g.name and b.ok]
        for c in g.comparisons:
            obs = [b.log_ratios.get(comparison_key(c)) or [] for b in mine]
            obs = [o for o in obs if o]
            if len(obs) < 2:
                continue
            n = max(len(o) for o in obs)
            x = np.full((len(obs), n), np.nan)
            for i, o in enumerate(obs):
                x[i, : len(o)] = o
            s = block_summary(x)
            d = out.setdefault(c.name, {"sr2": [], "sb2": []})
            if np.isfinite(s["sigma_round"]):
                d["sr2"].append(float(s["sigma_round"]) ** 2)
            if np.isfinite(s["sigma_block"]):
                d["sb2"].append(float(s["sigma_block"]) ** 2)
    return {k: {"sigma_round": math.sqrt(np.mean(v["sr2"])) if v["sr2"] else float("nan"),
                "sigma_block": math.sqrt(np.mean(v["sb2"])) if v["sb2"] else float("nan")}
            for k, v in out.items()}


def make_plan(pilot: list[Block], groups: list[Group], paired: Any, *, alpha: float,
              power: float) -> dict[str, Any]:
    """The design after the pilot (`latency_design.plan_design`), from the pilot's blocks."""
    comps = pooled_components(pilot, groups)
    ok = [b for b in pilot if b.ok]
    sr = [v["sigma_round"] for v in comps.values()]
    sb = [v["sigma_block"] for v in comps.values()]
    round_s = float(np.median([b.rounds_s / b.rounds for b in ok])) if ok else float("nan")
    block_s = float(np.median([b.wall_s - b.rounds_s for b in ok])) if ok else float("nan")
    spent = sum(b.wall_s for b in pilot)
    pilot_info = {"components": comps, "round_s": round_s, "block_s": block_s,
                  "blocks": PILOT_BLOCKS, "rounds": paired.pilot_rounds, "spent_s": spent}
    if not ok or not sr or not all(np.isfinite(sr + sb)):
        return {"pilot": pilot_info, "blocks": PILOT_BLOCKS, "rounds": paired.pilot_rounds,
                "mdd_pct": None, "meets": False, "cost_s": 0.0,
                "why": "the pilot gave no variance estimate (a block failed or held one round)"}
    plan = plan_design(sigma_round=np.array(sr), sigma_block=np.array(sb), round_s=round_s,
                       block_s=block_s, budget_s=max(paired.budget_s - spent, 0.0),
                       groups=len(groups), detect=paired.detect, alpha=alpha, power=power,
                       pilot_blocks=PILOT_BLOCKS, pilot_rounds=paired.pilot_rounds,
                       min_blocks=paired.min_blocks, max_blocks=paired.max_blocks,
                       max_rounds=paired.max_rounds)
    return {"pilot": pilot_info, "blocks": int(plan["blocks"]), "rounds": int(plan["rounds"]),
            "mdd_pct": float(plan["mdd_pct"]), "meets": bool(plan["meets"]),
            "cost_s": float(plan["cost_s"])}


RunBlock = Callable[[Group, int, int, str], Block]  # (group, block index, rounds, phase)


def run_design(groups: list[Group], *, paired: Any, alpha: float, power: float,
               stored: dict[tuple[str, int], Block], run_block: RunBlock,
               say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or reuse from `stored`, keyed (group, block)) the pilot and the planned blocks of
    every group, wave by wave; return {"plan", "blocks" (every finished Block), "spent_s",
    "stopped_by"}. `run_block` runs one block in a fresh process and saves its records."""
    done: dict[tuple[str, int], Block] = {}
    failed: set[str] = set()
    spent = 0.0

    def wave(index: int, rounds: int, phase: str, predicted: float = 0.0) -> bool:
        """One block of every group still going; False when the budget ran out first (a main
        block is started only when `predicted` more seconds fit; the pilot always runs)."""
        nonlocal spent
        for g in groups:
            if g.name in failed:
                continue
            key = (g.name, index)
            b = stored.get(key)
            if b is None or b.rounds != rounds:
                if phase == "main" and spent + predicted > paired.budget_s:
                    return False
                b = run_block(g, index, rounds, phase)
            done[key] = b
            spent += b.wall_s
            if not b.ok:
                failed.add(g.name)
                say(f"bench pairs {g.name} block {index + 1} failed: {b.reason}")
        return True

    for i in range(PILOT_BLOCKS):
        wave(i, paired.pilot_rounds, "pilot")
    plan = make_plan([b for (_, i), b in done.items() if i < PILOT_BLOCKS], groups, paired,
                     alpha=alpha, power=power)
    stopped_by = "plan"
    if plan.get("mdd_pct") is not None:
        say(design_line(plan, paired))
    predicted = plan["pilot"]["block_s"] + plan["rounds"] * plan["pilot"]["round_s"] \
        if plan.get("mdd_pct") is not None else 0.0
    for i in range(PILOT_BLOCKS, plan["blocks"]):
        if len(failed) == len(groups):
            break
        if not wave(i, plan["rounds"], "main", predicted):
            stopped_by = "budget"
            say(f"bench pairs: the time budget ({paired.budget_s:.0f} s) ends the design after "
                f"{i} blocks of the {plan['blocks']} planned")
            break
    if failed:
        stopped_by = "failed"
    return {"plan": plan, "blocks": list(done.values()), "spent_s": spent,
            "stopped_by": stopped_by}


def design_line(plan: dict[str, Any], paired: Any) -> str:
    comps = plan["pilot"]["components"]
    noise = ", ".join(f"{k} round-to-round {100 * v['sigma_round']:.1f}%, process-to-process "
                      f"{100 * v['sigma_block']:.1f}%" for k, v in comps.items())
    verdict = "meets" if plan["meets"] else "misses"
    return (f"bench pairs pilot: {noise}; design: {plan['blocks']} blocks x {plan['rounds']} "
            f"rounds per group (~{plan['cost_s']:.0f} s more), minimum detectable difference "
            f"{plan['mdd_pct']:.1f}% ({verdict} the {100 * paired.detect:g}% target)")


def analyse_design(groups: list[Group], blocks: list[Block], *, alpha: float, power: float
                   ) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    """(group, comparison, a, b) -> `analyse_pairs` over the comparison's finished blocks (no
    margin and no floor: the stats stage applies those)."""
    out = {}
    for g in groups:
        mine = sorted((b for b in blocks if b.group == g.name and b.ok), key=lambda b: b.block)
        for c in g.comparisons:
            obs = [b.log_ratios[comparison_key(c)] for b in mine
                   if b.log_ratios.get(comparison_key(c))]
            out[(g.name, *comparison_key(c))] = analyse_pairs(obs, alpha=alpha, power=power)
    return out
