"""Planning and running bench units: the one path of a study's bench stage and of the one-off
`peftlab bench --model M --adapter A`.

    units = plan_units(candidates, modes=bench.modes, tasks=["sst2", "rte"], seeds=[1, 2, 3],
                       multi_k=None, variants=[""])
    run_units(units, model=model_spec, bench=bench_spec, device="cpu", tasks=task_infos,
              pending=lambda unit: points, sink=write_records)

A *candidate* is a trained artifact that could be served (a study's finished run, or an adapter
folder given on the command line) with the study method and seed it belongs to. Every registered
mode plans its own units from the candidates (`Mode.plan`): the base model once per task, a
single-artifact mode once per artifact of its kind, a multi-adapter mode once per method and seed
with one adapter per task. Neither the stage nor the command knows mode names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peftlab.bench.mode import Candidate, PlanSettings, group_for_seed, make_units
from peftlab.bench.units import (
    Unit,
    bench_settings,
    make_job,
    raise_worker_error,
    settings_hash,
    timeout_for,
    unit_records,
    unsupported_records,
)

__all__ = ["Candidate", "PlanSettings", "group_for_seed", "make_units", "plan_units",
           "run_units"]


def plan_units(candidates: list[Candidate], *, modes: list[str], settings: PlanSettings
               ) -> list[Unit]:
    """Every unit the registered `modes` plan from `candidates` (modes in their declared order;
    within a mode, in the order its planner gives)."""
    from peftlab.bench.modes import get_mode, mode_names

    units: list[Unit] = []
    for name in [m for m in mode_names() if m in modes]:
        units += get_mode(name).plan(candidates, settings)
    return units


def run_units(units: list[tuple[Unit, list[tuple[int, Any]]]], *, model: dict[str, Any],
              bench: Any, device: str, tasks: dict[str, dict[str, Any]],
              extra: dict[str, Any], sink: Callable[[Unit, list[tuple[str, dict[str, Any]]],
                                                     dict[str, Any]], None],
              progress: Callable[[Any], Any] = iter) -> None:
    """Run each unit on its pending sweep points in a process of its own; hand its records to
    `sink(unit, records, result)`. A user-fixable error inside a worker is re-raised here."""
    from peftlab.bench.runner import run_isolated

    settings = bench_settings(bench)
    digest = settings_hash(settings, model, device)
    for unit, pts in progress(units):
        if unit.unsupported:
            sink(unit, unsupported_records(unit, pts, settings=settings, digest=digest),
                 {"status": "unsupported", "failure_reason": unit.unsupported})
            continue
        job = make_job(unit, model=model, device=device, settings=settings, tasks=tasks,
                       points=pts)
        result = run_isolated(job, isolation=bench.isolation,
                              timeout_s=timeout_for(pts, settings))
        if result.get("status") == "error":
            raise_worker_error(unit, result)
        sink(unit, unit_records(unit, result, pts, settings=settings, digest=digest,
                                extra=extra), result)
