"""The bench stage: every deployment mode of the study's trained runs, each in its own process.

    peftlab bench quickstart        (also part of `peftlab run`)

Units: each registered mode in bench.modes plans its own (`Mode.plan`: the base once per task,
single-artifact modes once per run, multi-adapter modes per method and seed on one adapter per
task, bench.multi_k adapters when set). They run in blocks (`schedule`): the base units, then
one block per seed in which the modes compared with each other run interleaved (a seeded order
per task, mirrored from task to task: ABBA), each unit's place recorded in its records (`order`);
a block ends with its first unit run again, and the `bench_blocks` table holds the order and that
drift reference (the reference's median latency at the block's start and end). A block whose
record does not close it (a stage killed mid-block) is measured again whole, so its reference
covers every unit; the record names the process that measured each unit.
bench.paired: then the primary latency comparisons (stats.primary.deployment) measured paired
(`peftlab.bench.paired`): both models in one process, alternately on the same requests, in
fresh-process blocks sized from a pilot, with an A/A control, into the `bench_pairs` table (one
record per comparison and block, every round's observation) and `bench_design` (per
comparison: the pilot's noise, the design chosen, its minimum detectable difference).
bench.runs: "all" seeds, or "first_seed" only. bench.compile adds a "+compile" variant of each.
bench.serving: afterwards, serving under load (`peftlab.bench.serving_job`, one isolated job)
into the `serving` table: one record per configuration, popularity pattern and offered rate.

Each unit's gate also checks the served logits against the evaluation logits stored when the
run was trained (`worker.training_checks`).

Idempotent: a sweep point whose record exists and was measured under the same settings (the
`settings_hash` over bench settings, model and device) is skipped, done, failed or unsupported.
A mode that cannot serve a method (mixed batches of DoRA adapters) is recorded as `unsupported`
with the reason; bad artifacts (missing, headless, another base) stop the stage with a
`ModelError` naming the adapter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab import logs
from peftlab.bench.loading import check_artifact, structures
from peftlab.bench.plan import Candidate, PlanSettings, plan_units, run_units
from peftlab.bench.units import Unit, bench_settings, check_lengths, settings_hash, sweep_points
from peftlab.logs import track
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.context import Context


def run(ctx: Context) -> None:
    """Benchmark every (mode, unit, batch size, sequence length) not measured yet, block by block
    (see `schedule`), each block closed by its drift reference; then serving under load."""
    from peftlab.generation import is_generative

    if is_generative(ctx):  # generate() per token: `peftlab.gen_study.bench`
        from peftlab.gen_study import bench as generation_bench

        generation_bench(ctx)
        return
    from peftlab.models import model_revision, resolve_model

    spec = ctx.study.spec
    bench = spec.bench
    model = spec.model.model_dump(mode="json")
    digest = settings_hash(bench_settings(bench), model, ctx.device)
    units, tasks, candidates = study_units(ctx, with_candidates=True)
    points = sweep_points(bench.batch_sizes, bench.seq_lengths)
    resolved = resolve_model(spec.model.name, gguf_file=spec.model.gguf_file,
                             revision=spec.model.revision)
    extra = {"provenance": provenance(model_revision=model_revision(resolved))}
    work = plan_work(units, lambda u: [p for p in points
                                       if not _measured(ctx, u.key(*p), digest)],
                     done_blocks=_closed_blocks(ctx, units, digest), points=points)
    if not work:
        ctx.console.print("bench: every mode and sweep point is measured")
    else:
        _run_work(ctx, work, units, model=model, bench=bench, tasks=tasks, extra=extra,
                  digest=digest)
    if bench.paired is not None:
        run_paired(ctx, tasks, candidates)
    if bench.serving is not None:
        run_serving(ctx, tasks)


Work = tuple[str, str, Unit, list[tuple[int, Any]]]  # (kind, block, unit, sweep points)


def plan_work(units: list[Unit], pending: Callable[[Unit], list[tuple[int, Any]]], *,
              done_blocks: set[str] | None = None,
              points: list[tuple[int, Any]] | None = None) -> list[Work]:
    """The stage's work in run order: ("unit", block, unit, its pending points) for every unit
    with something to measure, and after each block with any such unit ("repeat", block,
    reference, the same points): the block's first unit measured in this run of the stage, run
    again at the block's end, so its two medians span the block's time (a unit measured by an
    earlier run of the stage would span more than the block).

    done_blocks: the compared blocks whose `bench_blocks` record closes them (`_closed_blocks`).
    A compared block with a servable unit that is not closed, or has anything left to measure,
    is measured whole, every unit on every one of `points`: a block killed mid-way left units
    measured by a process its drift reference never ran beside, and a reference that covers
    part of a block says nothing about the rest. None: units resume one by one (the base block
    always does: it has no reference).
    """
    blocks: dict[str, list[Unit]] = {}
    for u in units:
        blocks.setdefault(u.order["block"], []).append(u)
    work: list[Work] = []
    for block, members in blocks.items():
        todo = [(u, pending(u)) for u in members]
        whole = (done_blocks is not None and block != BASE_BLOCK
                 and any(not u.unsupported for u in members)
                 and (block not in done_blocks or any(pts for _, pts in todo)))
        if whole:
            todo = [(u, list(points if points is not None else pts)) for u, pts in todo]
        todo = [(u, pts) for u, pts in todo if pts]
        if not todo:
            continue
        work += [("unit", block, u, pts) for u, pts in todo]
        ref = block_reference(todo)
        if ref is not None:
            work.append(("repeat", block, *ref))
    return work


def block_reference(todo: list[tuple[Unit, list[tuple[int, Any]]]]
                    ) -> tuple[Unit, list[tuple[int, Any]]] | None:
    """The unit (and points) a block repeats at its end: its first servable unit to run (None
    for the base block, whose units are compared with nothing)."""
    if todo and todo[0][0].order["block"] == BASE_BLOCK:
        return None
    return next(((u, pts) for u, pts in todo if not u.unsupported), None)


def _run_work(ctx: Context, work: list[Work], units: list[Unit], *, model: dict[str, Any],
              bench: Any, tasks: dict[str, dict[str, Any]], extra: dict[str, Any],
              digest: str) -> None:
    """Run `plan_work`'s items under one progress bar; a block's record after its repeat."""
    from peftlab.records import BenchBlockRecord, write

    started: dict[str, str] = {}
    measured: dict[str, dict[str, dict[str, Any]]] = {}  # block -> unit -> its process

    def sink(unit: Unit, records: list[tuple[str, dict[str, Any]]], result: dict[str, Any]
             ) -> None:
        ctx.store.put_many("bench", records)
        proc = result.get("process") or {}
        measured.setdefault(unit.order["block"], {})[f"{unit.mode}/{unit.name}"] = {
            k: proc.get(k) for k in ("pid", "parent_pid")}
        _report(ctx, unit, result)

    def label(item: Work) -> str:
        kind, block, unit, _ = item
        return f"{unit.mode}/{unit.name}" + (" (drift reference, again)" if kind == "repeat"
                                             else "")

    for kind, block, unit, pts in track(ctx.console, "bench", work, label=label):
        started.setdefault(block, _now())
        if kind == "unit":
            run_units([(unit, pts)], model=model, bench=bench, device=ctx.device, tasks=tasks,
                      extra=extra, sink=sink)
            continue
        got: dict[str, Any] = {}
        repeat = replace(unit, order={**(unit.order or {}), "repeat": True})
        run_units([(repeat, pts)], model=model, bench=bench, device=ctx.device, tasks=tasks,
                  extra=extra, sink=lambda u, recs, result, got=got: got.update(result))
        first = {p: (ctx.store.get("bench", unit.key(*p)) or {}) for p in pts}
        order = [f"{u.mode}/{u.name}" for u in units if u.order["block"] == block]
        here = measured.get(block, {})
        rec = BenchBlockRecord(
            block=block, seed=unit.seed, scheme=(unit.order or {}).get("scheme", ""),
            order=order, reference=f"{unit.mode}/{unit.name}",
            reference_status=got.get("status", "failed") + (
                f": {got.get('failure_reason')}" if got.get("status") != "done" else ""),
            drift=block_drift(first, got, pts), started=started[block], finished=_now(),
            settings_hash=digest, processes=here,
            reference_process={k: (got.get("process") or {}).get(k) for k in ("pid",
                                                                              "parent_pid")},
            covers=[u for u in order if u in here])
        write(ctx.store, [rec])
        _report_drift(ctx, rec)


def block_drift(first: dict[tuple[int, Any], dict[str, Any]], repeat: dict[str, Any],
                points: list[tuple[int, Any]]) -> list[dict[str, Any]]:
    """Per sweep point: the reference's median latency (ms) when the block started (its stored
    record) and when it ended (the repeat's result), and their ratio (repeat / first)."""
    again = {(p["batch_size"], p["seq_len"]): p for p in repeat.get("points") or []}
    out = []
    for b, s in points:
        a = ((first.get((b, s)) or {}).get("latency_ms") or {}).get("p50")
        r = ((again.get((b, s)) or {}).get("latency_ms") or {}).get("p50")
        out.append({"batch_size": b, "seq_len": s, "first_p50_ms": a, "repeat_p50_ms": r,
                    "ratio": r / a if a and r else None})
    return out


def _report_drift(ctx: Context, rec: Any) -> None:
    moved = [f"b{d['batch_size']}/s{d['seq_len']} {100 * (d['ratio'] - 1):+.1f}%"
             for d in rec.drift if d["ratio"] is not None]
    ctx.console.print(f"bench block {rec.block}: reference {rec.reference} again at the end: "
                      + (", ".join(moved) if moved else f"no drift estimate "
                         f"({rec.reference_status})"))


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _measured(ctx: Context, key: str, digest: str) -> bool:
    rec = ctx.store.get("bench", key)
    return rec is not None and rec.get("settings_hash") == digest


def _closed_blocks(ctx: Context, units: list[Unit], digest: str) -> set[str]:
    """Blocks whose `bench_blocks` record, written under the same settings, lists the same
    units in the same order and says its reference covers every one of them."""
    order: dict[str, list[str]] = {}
    for u in units:
        order.setdefault(u.order["block"], []).append(f"{u.mode}/{u.name}")
    closed = set()
    for block, names in order.items():
        rec = ctx.store.get("bench_blocks", block)
        if (rec is not None and rec.get("settings_hash") == digest and rec.get("order") == names
                and rec.get("covers") == names):
            closed.add(block)
    return closed


def _report(ctx: Context, unit: Unit, result: dict[str, Any]) -> None:
    if result.get("status") == "unsupported":
        ctx.console.print(f"[yellow]unsupported[/] {unit.mode}/{unit.name}: "
                          f"{result.get('failure_reason')}")
        return
    if result.get("status") != "done":
        ctx.console.print(f"[red]{result.get('status')}[/] {unit.mode}/{unit.name}: "
                          f"{result.get('failure_reason')}")
        return
    parts = [f"b{p['batch_size']}/s{p['seq_len']} p50 {p['latency_ms']['p50']:.2f} ms"
             for p in result["points"]]
    load = result["load"]
    ctx.console.print(f"bench {unit.mode}/{unit.name}: gate passed; load cold "
                      f"{load['cold_ms']:.0f} ms, warm {load['warm_ms_median']:.0f} ms; "
                      + ", ".join(parts))


def study_units(ctx: Context, *, with_candidates: bool = False) -> tuple[Any, ...]:
    """Every unit the study's bench settings imply, checked, in run order, plus the tasks'
    request data (and, with_candidates, the `Candidate`s the units were planned from).

    Raises ModelError for an artifact that cannot serve (missing, headless, other base) and
    SpecError for settings that cannot work (multi_k beyond the trained adapters, lengths beyond
    the model's positions). Units a mode cannot serve carry `unsupported`.
    """
    from peftlab.artifacts import run_artifact
    from peftlab.methods import get_method

    spec = ctx.study.spec
    bench = spec.bench
    seeds = list(spec.seeds) if bench.runs == "all" else list(spec.seeds[:1])
    tasks = {t.name: ctx.data.task_info(t.name) for t in spec.tasks}
    model = spec.model.model_dump(mode="json")
    structure = structures(model)

    candidates = []
    for rc in ctx.finished_runs():
        if rc.seed not in seeds:
            continue
        art = run_artifact(ctx, rc)
        check_artifact(art, structure(art["num_labels"]))
        art = {**art, **training_logits(ctx, rc)}
        candidates.append(Candidate(art, rc.method, rc.seed, get_method(rc.method_type)))
    settings = PlanSettings(tasks=[t.name for t in spec.tasks], seeds=seeds,
                            multi_k=bench.multi_k,
                            variants=[""] + (["+compile"] if bench.compile else [])
                            + (["+fast"] if bench.fast_path else []))
    units = schedule(plan_units(candidates, modes=list(bench.modes), settings=settings),
                     settings, seed=bench.seed)
    check_lengths(list(bench.seq_lengths), structure(next(iter(tasks.values()))["num_labels"]),
                  ctx.study.where("bench.seq_lengths"))
    return (units, tasks, candidates) if with_candidates else (units, tasks)


def training_logits(ctx: Context, rc: Any) -> dict[str, Any]:
    """Where the run's evaluation logits from training are (for the gate against training):
    {"eval_logits": path, "eval_precision": the training precision}, or {} when not stored."""
    rec = ctx.store.get("runs", rc.run_id) or {}
    if not rec.get("eval_logits"):
        return {}
    path = ctx.store.root / rec["eval_logits"]
    return {"eval_logits": str(path), "eval_precision": rc.training.precision}


BASE_BLOCK = "base"
SCHEME = ("per seed: each task's single-artifact units in a seeded random order of (mode, "
          "method), mirrored from task to task (ABBA); units serving several tasks in the middle "
          "of the block; the block's first unit run again at its end (drift reference)")


def schedule(units: list[Unit], settings: PlanSettings, *, seed: int = 0) -> list[Unit]:
    """The order units run in, in blocks, each unit's place recorded in `unit.order`.

    The base units (compared with nothing) form the first block. Then one block per training
    seed: the units compared with each other (full, unmerged, merged... of one task, and the
    units serving several tasks, compared per task with the single adapters) run interleaved,
    never one mode after another: the (mode, method) conditions of a task run in an order drawn
    at random (seeded by `seed` and the training seed) for the first task and mirrored for the
    next (A B C | C B A | A B C ...), so over a pair of tasks every condition sits at the same
    mean position, and a drift of the machine's speed within the block (+/-30% over minutes on
    shared CPUs) does not line up with one mode. Units serving several tasks run in the middle
    of the block, where the block's mean time is. `stages.bench.plan_work` then repeats the
    block's first unit at its end: the drift reference.
    """
    from peftlab.bench.modes import mode_names

    mode_rank = {m: i for i, m in enumerate(mode_names())}
    task_rank = {t: i for i, t in enumerate(settings.tasks)}
    seed_rank = {s: i for i, s in enumerate(settings.seeds)}

    def condition(u: Unit) -> tuple:
        return (mode_rank.get(u.mode_name, len(mode_rank)), u.mode, str(u.method))

    base = sorted([u for u in units if u.seed is None],
                  key=lambda u: (task_rank.get(u.tasks_served[0], len(task_rank)), condition(u)))
    blocks: list[tuple[str, list[Unit]]] = [(BASE_BLOCK, base)] if base else []
    seeds = sorted({u.seed for u in units if u.seed is not None},
                   key=lambda s: seed_rank.get(s, len(seed_rank)))
    for s in seeds:
        mine = [u for u in units if u.seed == s]
        rng = np.random.default_rng([int(seed), int(s) & 0xFFFFFFFF])
        single = [u for u in mine if len(set(u.tasks_served)) == 1]
        several = sorted([u for u in mine if len(set(u.tasks_served)) != 1], key=condition)
        conditions = sorted({condition(u) for u in single})
        drawn = [conditions[i] for i in rng.permutation(len(conditions))]
        groups = []
        tasks = sorted({u.tasks_served[0] for u in single},
                       key=lambda t: task_rank.get(t, len(task_rank)))
        for i, task in enumerate(tasks):
            order = drawn if i % 2 == 0 else drawn[::-1]
            of_task = {condition(u): u for u in single if u.tasks_served[0] == task}
            groups.append([of_task[c] for c in order if c in of_task])
        several = [several[i] for i in rng.permutation(len(several))]
        middle = (len(groups) + 1) // 2
        seq = [u for g in groups[:middle] for u in g] + several + [
            u for g in groups[middle:] for u in g]
        blocks.append((f"seed-{s}", seq))
    out: list[Unit] = []
    for name, seq in blocks:
        for i, u in enumerate(seq):
            u.order = {"block": name, "position": i, "of": len(seq), "index": len(out),
                       "scheme": "fixed (task, mode)" if name == BASE_BLOCK else SCHEME}
            out.append(u)
    return out


# ----------------------------------------------------------------------------- paired latency


def run_paired(ctx: Context, tasks: dict[str, dict[str, Any]], candidates: list[Any]) -> None:
    """The primary latency comparisons (stats.primary.deployment) measured paired and repeated
    (`peftlab.bench.paired`): `bench_pairs` records per block, `bench_design` per comparison.
    Blocks stored under the same settings and artifacts are reused; a block killed mid-way
    left nothing and runs again whole."""
    from peftlab.bench.paired import Block, analyse_design, plan_groups, run_design
    from peftlab.records import BenchDesignRecord, replace

    spec = ctx.study.spec
    bench = spec.bench
    primary = spec.stats.primary.deployment
    if primary is None:
        ctx.console.print("bench pairs: no primary deployment comparison (stats.primary."
                          "deployment is null): nothing measured paired")
        return
    seeds = list(spec.seeds) if bench.runs == "all" else list(spec.seeds[:1])
    groups, notes = plan_groups(candidates, comparisons=list(primary.comparisons),
                                modes=list(bench.modes), tasks=[t.name for t in spec.tasks],
                                seeds=seeds, control=bench.paired.control)
    for note in notes:
        ctx.console.print(f"[yellow]bench pairs[/]: {note}")
    if not groups:
        ctx.console.print("bench pairs: no task has the artifacts of a primary comparison")
        return
    model = spec.model.model_dump(mode="json")
    settings = {**bench_settings(bench), "paired": bench.paired.model_dump(mode="json"),
                "alpha": spec.stats.alpha, "power": spec.stats.power,
                "batch_size": primary.batch_size, "seq_len": primary.seq_len}
    # What a block's measurement depends on: not the budget, target or error rates, which only
    # decide how many blocks run (a larger budget reuses the blocks already measured).
    measured = {**bench_settings(bench), "requests": bench.paired.requests,
                "pilot_rounds": bench.paired.pilot_rounds, "batch_size": primary.batch_size,
                "seq_len": primary.seq_len}
    digests = {g.name: settings_hash({**measured, "group": _group_identity(g)}, model,
                                     ctx.device) for g in groups}
    stored: dict[tuple[str, int], Block] = {}
    stale = []
    by_block: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for rec in ctx.store.records("bench_pairs"):
        if digests.get(rec["group"]) != rec["settings_hash"]:
            stale.append(rec["key"])
            continue
        by_block.setdefault((rec["group"], rec["block"]), []).append(rec)
    for key in stale:
        ctx.store.delete("bench_pairs", key)
    for (group, block), recs in by_block.items():
        stored[(group, block)] = _block_of(group, block, recs)

    def run_block(g: Any, index: int, rounds: int, phase: str) -> Block:
        return _run_pair_block(ctx, g, index, rounds, phase, model=model, settings=settings,
                               tasks=tasks, primary=primary, digest=digests[g.name])

    design = run_design(groups, paired=bench.paired, alpha=spec.stats.alpha,
                        power=spec.stats.power, stored=stored, run_block=run_block,
                        say=ctx.console.print)
    results = analyse_design(groups, design["blocks"], alpha=spec.stats.alpha,
                             power=spec.stats.power)
    used = {(b.group, b.block) for b in design["blocks"]}
    for (group, block), recs in by_block.items():  # stored beyond this design (a larger budget)
        if (group, block) not in used:
            for rec in recs:
                ctx.store.delete("bench_pairs", rec["key"])
    records = []
    for g in groups:
        for c in g.comparisons:
            res = results[(g.name, c.name, c.a, c.b)]
            records.append(BenchDesignRecord(
                comparison=c.name, control=c.control, primary=c.primary, group=g.name,
                task=g.task, a=c.a, b=c.b, batch_size=primary.batch_size,
                seq_len=primary.seq_len, detect=bench.paired.detect,
                budget_s=bench.paired.budget_s, spent_s=design["spent_s"],
                pilot=design["plan"]["pilot"],
                plan={k: v for k, v in design["plan"].items() if k != "pilot"}, result=res,
                mdd_pct=res.get("mdd_pct"), stopped_by=design["stopped_by"],
                settings_hash=digests[g.name]))
            if res.get("ratio") is not None and res.get("ci_pct"):
                lo, hi = res["ci_pct"]
                ctx.console.print(
                    f"bench pairs {g.task}: {c.a} vs {c.b}: {res['change_pct']:+.1f}% "
                    f"[{lo:+.1f}%, {hi:+.1f}%], {res['n_blocks']} blocks of "
                    f"{max(res['rounds_per_block'])} rounds; detects "
                    f"{res['mdd_pct']:.1f}%")
    replace(ctx.store, "", records, "bench_design")


def _group_identity(group: Any) -> list[Any]:
    """What a group's blocks depend on besides the settings: its conditions' artifacts."""
    return [[c.label, c.mode, [[s, c.artifacts[s].get("run_id") or c.artifacts[s]["path"]]
                               for s in group.seeds]] for c in group.conditions] + [
        [x.name, x.a, x.b] for x in group.comparisons]


def _block_of(group: str, block: int, recs: list[dict[str, Any]]) -> Any:
    """A stored block (its records, one per comparison) as a `paired.Block`."""
    from peftlab.bench.paired import Block

    first = recs[0]
    timing = first.get("timing") or {}
    return Block(group=group, block=block, rounds=len(first.get("log_ratios") or []),
                 ok=all(r["status"] == "done" for r in recs),
                 wall_s=float(timing.get("wall_s") or 0.0),
                 rounds_s=float(timing.get("rounds_s") or 0.0),
                 log_ratios={(r["comparison"], r["a"], r["b"]): list(r.get("log_ratios") or [])
                             for r in recs},
                 reason=first.get("failure_reason"))


def _run_pair_block(ctx: Context, g: Any, index: int, rounds: int, phase: str, *,
                    model: dict[str, Any], settings: dict[str, Any],
                    tasks: dict[str, dict[str, Any]], primary: Any, digest: str) -> Any:
    """One block in a fresh process; its records, one per comparison, in one transaction."""
    import time

    from peftlab.bench.paired import Block, comparison_key
    from peftlab.bench.paired_job import paired_job, paired_timeout
    from peftlab.bench.runner import run_isolated
    from peftlab.bench.units import raise_worker_error
    from peftlab.latency_design import log_latency
    from peftlab.records import BenchPairRecord, write

    bench = ctx.study.spec.bench
    job = paired_job(g, block=index, rounds=rounds, model=model, device=ctx.device,
                     settings=settings, tasks=tasks, batch_size=primary.batch_size,
                     seq_len=primary.seq_len, requests=bench.paired.requests)
    started = _now()
    t0 = time.perf_counter()
    with logs.unit(f"pairs/{g.name}/block-{index + 1}"):  # the block process's output in log.txt
        result = run_isolated(job, isolation=bench.isolation, timeout_s=paired_timeout(job))
    wall = time.perf_counter() - t0
    if result.get("status") == "error":
        raise_worker_error(Unit(mode="paired", name=g.name, artifacts=job["artifacts"],
                                tasks_served=[g.task]), result)
    ok = result.get("status") == "done"
    timing = {**(result.get("timing") or {}), "wall_s": wall}
    seed = job["training_seed"]
    records = []
    ratios: dict[tuple[str, str, str], list[float]] = {}
    for c in g.comparisons:
        rounds_out = []
        for r in result.get("rounds") or []:
            a_ns, b_ns = r["ns"][c.a], r["ns"][c.b]
            lr = log_latency(a_ns) - log_latency(b_ns)
            rounds_out.append({"round": r["round"], "order": r["order"], "log_ratio": lr,
                               "a_ms": [float(np.median(x)) / 1e6 for x in a_ns],
                               "b_ms": [float(np.median(x)) / 1e6 for x in b_ns],
                               "a_ns": a_ns, "b_ns": b_ns})
        ratios[comparison_key(c)] = [x["log_ratio"] for x in rounds_out]
        ca, cb = g.condition(c.a), g.condition(c.b)
        records.append(BenchPairRecord(
            comparison=c.name, control=c.control, primary=c.primary, group=g.name,
            task=g.task, a=c.a, b=c.b, mode_a=ca.mode, mode_b=cb.mode, method_a=ca.method,
            method_b=cb.method, run_id_a=ca.artifacts[seed].get("run_id"),
            run_id_b=cb.artifacts[seed].get("run_id"), seed=seed, block=index, phase=phase,
            batch_size=primary.batch_size, seq_len=primary.seq_len,
            status="done" if ok else "failed",
            failure_reason=None if ok else result.get("failure_reason"),
            log_ratios=ratios[comparison_key(c)], rounds=rounds_out,
            requests=int(job["requests"]), process=result.get("process"),
            environment=result.get("environment"), check=result.get("check"), timing=timing,
            settings=settings, settings_hash=digest, started=started, finished=_now()))
    write(ctx.store, records)
    block = Block(group=g.name, block=index, rounds=rounds, ok=ok, wall_s=wall,
                  rounds_s=float(timing.get("rounds_s") or 0.0), log_ratios=ratios,
                  reason=None if ok else result.get("failure_reason"))
    if ok:
        parts = [f"{c.a} vs {c.b} {100 * np.expm1(np.mean(ratios[comparison_key(c)])):+.1f}%"
                 for c in g.comparisons]
        ctx.console.print(f"bench pairs {g.name} block {index + 1} ({phase}, {rounds} rounds, "
                          f"{wall:.1f} s): " + ", ".join(parts))
    return block


# ----------------------------------------------------------------------------- serving under load


def serving_models(ctx: Context) -> tuple[int | None, list[dict[str, Any]], list[dict[str, Any]]]:
    """(seed, lora, full): the models the serving benchmark serves: the study's first seed, one
    artifact per task of its first PEFT method that can share a base with mixed batches, and of
    its first full fine-tuning method (empty when the study has none or a task lacks a run)."""
    from peftlab.artifacts import run_artifact
    from peftlab.methods import method_for

    spec = ctx.study.spec
    seed = spec.seeds[0] if spec.seeds else None
    done = [rc for rc in ctx.finished_runs() if rc.seed == seed]
    tasks = [t.name for t in spec.tasks]

    def per_task(method: str) -> list[dict[str, Any]]:
        arts = []
        for task in tasks:
            rc = next((r for r in done if r.task == task and r.method == method), None)
            if rc is None:
                return []
            arts.append({**run_artifact(ctx, rc), **training_logits(ctx, rc)})
        return arts

    lora, full = [], []
    for method in spec.methods:
        # asked of the method as its runs configure it: `type: peft` answers per config class
        rc = next(rc for rc in ctx.study.runs() if rc.method == method)
        m = method_for(rc.method_type, rc.params)
        if m.is_peft and not lora and m.supports_mixed_batch:
            lora = per_task(method)
        elif not m.is_peft and not full:
            full = per_task(method)
    return seed, lora, full


def run_serving(ctx: Context, tasks: dict[str, dict[str, Any]]) -> None:
    """Serving under load (bench.serving): one isolated job, one `serving` record per load run.
    Skipped when the table holds records measured under the same settings and models."""
    from peftlab.bench.runner import run_isolated
    from peftlab.bench.serving_job import serving_job, serving_rows, serving_timeout
    from peftlab.records import ServingRecord, replace

    spec = ctx.study.spec
    bench = spec.bench
    seed, lora, full = serving_models(ctx)
    if not lora:
        ctx.console.print("[yellow]serving[/]: not measured: no PEFT method with mixed-batch "
                          "support has a finished run on every task for seed "
                          f"{seed}")
        return
    model = spec.model.model_dump(mode="json")
    job = serving_job(model=model, device=ctx.device, serving=bench.serving, lora=lora,
                      full=full, tasks=tasks, seed=bench.seed, threads=bench.threads,
                      gate_tolerance=dict(bench.gate_tolerance),
                      gate_examples=bench.gate_examples)
    digest = settings_hash({**job["settings"], "runs": [a.get("run_id") for a in lora + full]},
                           model, ctx.device)
    stored = ctx.store.records("serving")
    if stored and all(r.get("settings_hash") == digest for r in stored):
        ctx.console.print("serving: every configuration and pattern is measured")
        return
    ctx.console.print(f"serving: {len(job['settings']['configs'])} configurations x "
                      f"{len(job['settings']['patterns'])} patterns under rising load")
    result = run_isolated(job, isolation=bench.isolation, timeout_s=serving_timeout(job))
    if result.get("status") == "error":
        from peftlab.bench.units import raise_worker_error

        raise_worker_error(Unit(mode="serving", name="load", artifacts=lora,
                                tasks_served=[a["task"] for a in lora]), result)
    if result.get("status") != "done":
        ctx.console.print(f"[red]serving failed[/]: {result.get('failure_reason')}")
        return
    for config, gate in (result.get("gates") or {}).items():
        if not gate["passed"]:
            ctx.console.print(f"[red]serving {config}: gate failed (not measured)[/]: "
                              + "; ".join(gate["failures"]))
    records = [ServingRecord(**row, seed=seed, settings=job["settings"], settings_hash=digest)
               for row in serving_rows(result)]
    replace(ctx.store, "", records, "serving")
    lowest = min(bench.serving.rates)  # saturation None: not even the lowest rate was sustained
    for config, b in result["backends"].items():
        sat = sorted({(r.pattern, r.saturation_rate) for r in records if r.config == config})
        ctx.console.print(f"serving {config}: {b['served_weight_bytes'] / 1e6:.0f} MB of weights; "
                          "saturation " + ", ".join(f"{p} {s:g}/s" if s is not None else
                                                    f"{p} below {lowest:g}/s" for p, s in sat))
