"""The bench stage: every deployment mode of the study's trained runs, each in its own process.

    peftlab bench studies/quickstart.yaml        (also part of `peftlab run`)

Units, in the order they run (so that modes compared with each other run next to each other; the
shared CPUs drift by +/-30% over minutes):
    for each task: base; then for each selected run of the task: full (full fine-tuning runs) or
    unmerged and merged (PEFT runs); then multi and mixed per PEFT method and seed, on one adapter
    per task (bench.multi_k adapters when set: other seeds' adapters fill in beyond the tasks).
bench.runs: "all" seeds, or "first_seed" only. bench.compile adds a "+compile" variant of each.

Idempotent: a sweep point whose record exists and was measured under the same settings (the
`settings_hash` over bench settings, model and device) is skipped, done, failed or unsupported.
A mode that cannot serve a method (mixed batches of DoRA adapters) is recorded as `unsupported`
with the reason; bad artifacts (missing, headless, another base) stop the stage with a
`ModelError` naming the adapter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftlab.bench.loading import base_structure, check_artifact
from peftlab.bench.runner import run_isolated
from peftlab.bench.units import (
    Unit,
    bench_settings,
    check_lengths,
    check_unit,
    make_job,
    raise_worker_error,
    settings_hash,
    sweep_points,
    timeout_for,
    unit_records,
    unsupported_records,
)
from peftlab.errors import SpecError
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.study import Context



def run(ctx: Context) -> None:
    """Benchmark every (mode, unit, batch size, sequence length) not measured yet."""
    from peftlab.models import model_revision, resolve_model

    spec = ctx.study.spec
    bench = spec.bench
    settings = bench_settings(bench)
    model = spec.model.model_dump(mode="json")
    digest = settings_hash(settings, model, ctx.device)
    units, tasks = plan_units(ctx)
    points = sweep_points(bench.batch_sizes, bench.seq_lengths)
    resolved = resolve_model(spec.model.name, gguf_file=spec.model.gguf_file,
                             revision=spec.model.revision)
    extra = {"provenance": provenance(model_revision=model_revision(resolved))}
    todo = [(u, [p for p in points if not _measured(ctx, u.key(*p), digest)]) for u in units]
    todo = [(u, pts) for u, pts in todo if pts]
    if not todo:
        ctx.console.print("bench: every mode and sweep point is measured")
        return
    for unit, pts in todo:
        if unit.unsupported:
            ctx.store.put_many("bench", unsupported_records(unit, pts, settings=settings,
                                                            digest=digest))
            ctx.console.print(f"[yellow]unsupported[/] {unit.mode}/{unit.name}: "
                              f"{unit.unsupported}")
            continue
        ctx.console.print(f"bench {unit.mode}/{unit.name}: {len(pts)} sweep point(s)")
        job = make_job(unit, model=model, device=ctx.device, settings=settings, tasks=tasks,
                       points=pts)
        result = run_isolated(job, isolation=bench.isolation,
                              timeout_s=timeout_for(pts, settings))
        if result.get("status") == "error":
            raise_worker_error(unit, result)
        ctx.store.put_many("bench", unit_records(unit, result, pts, settings=settings,
                                                 digest=digest, extra=extra))
        _report(ctx, unit, result)


def _measured(ctx: Context, key: str, digest: str) -> bool:
    rec = ctx.store.get("bench", key)
    return rec is not None and rec.get("settings_hash") == digest


def _report(ctx: Context, unit: Unit, result: dict[str, Any]) -> None:
    if result.get("status") != "done":
        ctx.console.print(f"[red]{result.get('status')}[/] {unit.mode}/{unit.name}: "
                          f"{result.get('failure_reason')}")
        return
    parts = [f"b{p['batch_size']}/s{p['seq_len']} p50 {p['latency_ms']['p50']:.2f} ms"
             for p in result["points"]]
    load = result["load"]
    ctx.console.print(f"  gate passed; load cold {load['cold_ms']:.0f} ms, warm "
                      f"{load['warm_ms_median']:.0f} ms; " + ", ".join(parts))


def plan_units(ctx: Context) -> tuple[list[Unit], dict[str, dict[str, Any]]]:
    """Every unit the study's bench settings imply, checked, plus the tasks' request data.

    Raises ModelError for an artifact that cannot serve (missing, headless, other base) and
    SpecError for settings that cannot work (multi_k beyond the trained adapters, lengths beyond
    the model's positions). Units a mode cannot serve carry `unsupported`.
    """
    from peftlab.artifacts import run_artifact
    from peftlab.bench.modes import mode_names
    from peftlab.methods import get_method

    study, store = ctx.study, ctx.store
    spec = study.spec
    bench = spec.bench
    seeds = list(spec.seeds) if bench.runs == "all" else list(spec.seeds[:1])
    records = {r["run_id"]: r for r in store.records("runs") if r.get("status") == "done"}
    done = [rc for rc in study.runs() if rc.run_id in records]
    tasks = {t.name: ctx.data.task_info(t.name) for t in spec.tasks}
    model = spec.model.model_dump(mode="json")
    bases: dict[int, dict[str, Any]] = {}

    def artifact(rc: Any) -> dict[str, Any]:
        a = run_artifact(ctx, rc)
        n = a["num_labels"]
        if n not in bases:
            bases[n] = base_structure(model, n)
        check_artifact(a, bases[n])
        return a

    variants = [""] + (["+compile"] if bench.compile else [])
    modes = [m for m in mode_names() if m in bench.modes]
    units: list[Unit] = []

    def add(mode: str, name: str, rcs: list[Any], served: list[str], method: str | None,
            seed: int | None, why: str | None = None) -> None:
        arts = [artifact(rc) for rc in rcs]
        methods = [get_method(rc.method_type) for rc in rcs]
        for v in variants:
            unit = Unit(mode=mode + v, name=name, artifacts=arts, tasks_served=served,
                        method=method, method_type=rcs[0].method_type if rcs else None,
                        seed=seed, unsupported=why)
            if why is None:
                check_unit(unit, methods)
            units.append(unit)

    for t in spec.tasks:
        if "base" in modes:
            add("base", t.name, [], [t.name], None, None)
        for rc in [rc for rc in done if rc.task == t.name and rc.seed in seeds]:
            if not get_method(rc.method_type).is_peft:
                if "full" in modes:
                    add("full", rc.run_id, [rc], [rc.task], rc.method, rc.seed)
                continue
            for m in ("unmerged", "merged"):
                if m in modes:
                    add(m, rc.run_id, [rc], [rc.task], rc.method, rc.seed)
    for m in [m for m in ("multi", "mixed") if m in modes]:
        for method in spec.methods:
            peft_runs = [rc for rc in done if rc.method == method
                         and get_method(rc.method_type).is_peft]
            if not peft_runs:
                continue
            for seed in seeds:
                group, why = _group(peft_runs, seed, seeds, bench.multi_k, len(spec.tasks),
                                    method, m)
                if not group:
                    continue
                name = "+".join(rc.run_id for rc in group)
                add(m, name, group, [rc.task for rc in group], method, seed, why)

    n_labels = next(iter(tasks.values()))["num_labels"]
    if n_labels not in bases:
        bases[n_labels] = base_structure(model, n_labels)
    check_lengths(list(bench.seq_lengths), bases[n_labels], study.where("bench.seq_lengths"))
    return units, tasks


def _group(runs: list[Any], seed: int, seeds: list[int], multi_k: int | None, n_tasks: int,
           method: str, mode: str) -> tuple[list[Any], str | None]:
    """The adapters of one multi/mixed unit: one per task for `seed`, then other seeds' adapters
    (in seed order) when multi_k asks for more adapters than there are tasks."""
    k = multi_k or n_tasks
    mine = [rc for rc in runs if rc.seed == seed]
    if not mine:
        return [], None
    pool = mine + [rc for s in seeds if s != seed for rc in runs if rc.seed == s]
    if multi_k is not None and multi_k > len(mine):
        pool += [rc for rc in runs if rc.seed not in seeds]
    if k > len(pool):
        raise SpecError(f"bench.multi_k: {k} adapters of method {method!r} are needed for mode "
                        f"{mode!r} but the study has {len(pool)} trained ones for seed {seed}")
    group = pool[:k]
    if len(group) < 2:
        return group, (f"mode {mode!r} needs at least 2 adapters on one base; method "
                       f"{method!r} has {len(group)} for seed {seed} (one task): add tasks or "
                       "set bench.multi_k with more seeds")
    return group, None
