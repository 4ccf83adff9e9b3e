"""The bench stage: every deployment mode of the study's trained runs, each in its own process.

    peftlab bench quickstart        (also part of `peftlab run`)

Units: each registered mode in bench.modes plans its own (`Mode.plan`: the base once per task,
single-artifact modes once per run, multi-adapter modes per method and seed on one adapter per
task, bench.multi_k adapters when set). They run in `schedule` order.
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
from peftlab.bench.plan import Candidate, PlanSettings, plan_units, run_units
from peftlab.bench.units import Unit, bench_settings, check_lengths, settings_hash, sweep_points
from peftlab.logs import track
from peftlab.store import provenance

if TYPE_CHECKING:
    from peftlab.study import Context


def run(ctx: Context) -> None:
    """Benchmark every (mode, unit, batch size, sequence length) not measured yet."""
    from peftlab.models import model_revision, resolve_model

    spec = ctx.study.spec
    bench = spec.bench
    model = spec.model.model_dump(mode="json")
    digest = settings_hash(bench_settings(bench), model, ctx.device)
    units, tasks = study_units(ctx)
    points = sweep_points(bench.batch_sizes, bench.seq_lengths)
    resolved = resolve_model(spec.model.name, gguf_file=spec.model.gguf_file,
                             revision=spec.model.revision)
    extra = {"provenance": provenance(model_revision=model_revision(resolved))}
    todo = [(u, [p for p in points if not _measured(ctx, u.key(*p), digest)]) for u in units]
    todo = [(u, pts) for u, pts in todo if pts]
    if not todo:
        ctx.console.print("bench: every mode and sweep point is measured")
        return

    def sink(unit: Unit, records: list[tuple[str, dict[str, Any]]], result: dict[str, Any]
             ) -> None:
        ctx.store.put_many("bench", records)
        _report(ctx, unit, result)

    run_units(todo, model=model, bench=bench, device=ctx.device, tasks=tasks, extra=extra,
              sink=sink, progress=lambda items: track(
                  ctx.console, "bench", items, label=lambda t: f"{t[0].mode}/{t[0].name}"))


def _measured(ctx: Context, key: str, digest: str) -> bool:
    rec = ctx.store.get("bench", key)
    return rec is not None and rec.get("settings_hash") == digest


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


def study_units(ctx: Context) -> tuple[list[Unit], dict[str, dict[str, Any]]]:
    """Every unit the study's bench settings imply, checked, in run order, plus the tasks'
    request data.

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
    bases: dict[int, dict[str, Any]] = {}

    def structure(n_labels: int) -> dict[str, Any]:
        if n_labels not in bases:
            bases[n_labels] = base_structure(model, n_labels)
        return bases[n_labels]

    candidates = []
    for rc in ctx.finished_runs():
        if rc.seed not in seeds:
            continue
        art = run_artifact(ctx, rc)
        check_artifact(art, structure(art["num_labels"]))
        candidates.append(Candidate(art, rc.method, rc.seed, get_method(rc.method_type)))
    settings = PlanSettings(tasks=[t.name for t in spec.tasks], seeds=seeds,
                            multi_k=bench.multi_k,
                            variants=[""] + (["+compile"] if bench.compile else []))
    units = schedule(plan_units(candidates, modes=list(bench.modes), settings=settings),
                     settings)
    check_lengths(list(bench.seq_lengths), structure(next(iter(tasks.values()))["num_labels"]),
                  ctx.study.where("bench.seq_lengths"))
    return units, tasks


def schedule(units: list[Unit], settings: PlanSettings) -> list[Unit]:
    """The order units run in: per task, the base, then each seed's single-artifact units side by
    side (so that modes compared with each other run next to each other: the shared CPUs drift
    by +/-30% over minutes); units serving several tasks last, by seed."""
    from peftlab.bench.modes import mode_names

    order = {m: i for i, m in enumerate(mode_names())}
    tasks = {t: i for i, t in enumerate(settings.tasks)}
    seeds = {s: i for i, s in enumerate(settings.seeds)}

    def key(u: Unit) -> tuple:
        several = len(set(u.tasks_served)) != 1
        return (several, -1 if several else tasks.get(u.tasks_served[0], len(tasks)),
                -1 if u.seed is None else seeds.get(u.seed, len(seeds)),
                order.get(u.mode_name, len(order)), u.mode, u.name)

    return sorted(units, key=key)
