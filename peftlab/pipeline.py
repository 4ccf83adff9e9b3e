"""The pipeline: which stages a study has, in which order, and what each one receives.

    peftlab run quickstart

Stages are the modules of `peftlab/stages/` (each exposes `run(ctx)`), in the order of `STAGES`.
They talk to each other only through the study directory (`peftlab.store.Store`): each reads the
results of earlier stages, writes its own, and skips work that is already done, so any stage can be
rerun alone (`peftlab finetune SPEC`, `peftlab drift SPEC`, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from rich.console import Console

from peftlab import logs
from peftlab.data import StudyData
from peftlab.errors import SpecError
from peftlab.execution import Executor, LocalExecutor
from peftlab.spec import RunConfig, Study
from peftlab.store import Store, atomic_write_text, provenance

# Pipeline order. Each name is a module `peftlab.stages.<name>` with a `run(ctx)` function.
STAGES: tuple[str, ...] = ("data", "baselines", "search", "finetune", "represent", "forgetting",
                           "drift", "bench", "stats", "report")


@dataclass
class Context:
    """What a stage receives: the study (with its resolved plan), its store, its data, the device,
    a console and the executor its units of work go to."""

    study: Study
    store: Store
    console: Console = field(default_factory=lambda: Console(stderr=True))
    # where units of work run (peftlab.execution); run_stages sets the spec's, else in-process
    executor: Executor = field(default_factory=lambda: LocalExecutor())

    @cached_property
    def device(self) -> str:
        from peftlab.models import resolve_device

        return resolve_device(self.study.spec.device)

    @cached_property
    def data(self) -> StudyData:
        return StudyData(self.study, self.store)

    def finished_runs(self) -> list[RunConfig]:
        """The planned runs whose record says done, in plan order."""
        return [rc for rc in self.study.runs() if run_status(self.store, rc)["status"] == "done"]


def run_status(store: Store | None, rc: RunConfig) -> dict[str, Any]:
    """status of one planned run: pending, done, failed (with reason), interrupted, or waiting
    (for the search that chooses its hyperparameters)."""
    if rc.waiting:
        study_name = (rc.search or {}).get("study")
        return {"status": "waiting", "reason": f"for search {study_name}"}
    rec = store.get("runs", rc.run_id) if store is not None else None
    if rec is None:
        return {"status": "pending"}
    status = rec.get("status", "pending")
    if status == "running" and not _alive(rec.get("pid"), rec.get("started")):
        status = "interrupted"
    return {"status": status, "reason": rec.get("failure_reason")}


def _alive(pid: int | None, started: str | None = None) -> bool:
    """Whether the process that wrote a `running` record still runs (psutil).

    Gone, a zombie (exited, not yet reaped), or a newer process that reuses the pid (it started
    after the record did) all mean the run was interrupted.
    """
    import psutil

    if not pid or pid == os.getpid():
        return False  # our own earlier record can only be a leftover of a killed attempt
    try:
        proc = psutil.Process(int(pid))
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started:
            import datetime

            with contextlib.suppress(ValueError):
                t0 = datetime.datetime.strptime(started, "%Y-%m-%dT%H:%M:%S%z").timestamp()
                if proc.create_time() > t0 + 1.0:  # the record is second-resolution
                    return False
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # another user's live process
    return True


def plan(study: Study) -> list[dict[str, Any]]:
    """Every unit of training work with its deterministic id and whether it is done: search
    trials first (`kind` "search trial"), then the runs."""
    from peftlab.search import plan_rows

    root = study.output_dir
    store = Store(root, create=False) if (root / "results.sqlite").is_file() else None
    out = plan_rows(study, store)
    for rc in study.runs():
        st = run_status(store, rc)
        out.append({"run_id": rc.run_id, "task": rc.task, "method": rc.method,
                    "method_type": rc.method_type, "seed": rc.seed, **st})
    if store:
        store.close()
    return out


def stage_function(name: str) -> Callable[[Context], None]:
    if name not in STAGES:
        raise SpecError(f"unknown stage {name!r}; stages are {list(STAGES)}")
    return importlib.import_module(f"peftlab.stages.{name}").run


def open_study_store(study: Study) -> Store:
    """Open the study directory for writing: lock it, clean leftovers, save the spec beside it."""
    store = Store(study.output_dir).lock()
    store.sweep_partial()
    if study.path is not None:
        atomic_write_text(store.path("spec.yaml"), Path(study.path).read_text(encoding="utf-8"))
    store.put("meta", "study", {"name": study.spec.name, "spec": study.spec.model_dump(mode="json"),
                                "provenance": provenance()})
    return store


def run_stages(study: Study, stages: list[str] | None = None, *,
               console: Console | None = None, executor: str | None = None,
               address: str | None = None) -> Context:
    """Run the named stages (default: all, in pipeline order) on one locked study directory.

    executor / address: "local" or "ray" and a Ray address, over the spec's `execution` block
    (`peftlab run --executor ray --address auto`). With Ray, this process stays the driver: it
    holds the lock and writes every record, and first checks that every node sees the study
    directory.
    """
    from peftlab.execution import make_executor
    from peftlab.validate import deep_check

    names = list(STAGES) if stages is None else stages
    funcs = [(n, stage_function(n)) for n in names]  # unknown names fail before any work
    deep_check(study)  # bad targets, impossible devices, oversized batches: fail in seconds
    store = open_study_store(study)
    try:
        ex = make_executor(study.spec.execution, backend=executor, address=address)
    except BaseException:
        store.close()
        raise
    ctx = Context(study=study, store=store, console=console or Console(stderr=True), executor=ex)
    # Library warnings, logging and stray stderr output go to <study dir>/log.txt, labelled with
    # the stage and unit (peftlab.logs); the console keeps peftlab's own lines and progress.
    try:
        with logs.capture(store.path(logs.LOG_NAME), console=ctx.console) as log:
            with logs.stage("peftlab"):
                logs.emit(f"pid {os.getpid()}: stages {', '.join(names)} of "
                          f"{study.path or study.spec.name} -> {study.output_dir}")
            start = log.path.stat().st_size
            if not ex.in_process:
                hosts = ex.check_shared_filesystem(store.root)
                ctx.console.print(f"{ex.backend}: {len(hosts)} nodes see {store.root} "
                                  f"({', '.join(sorted(set(hosts)))})")
            for name, fn in funcs:
                ctx.console.rule(f"[bold]{name}")
                with logs.stage(name):
                    fn(ctx)
            added = logs.lines_since(log.path, start)  # bench unit processes append there too
            if added:
                ctx.console.print(f"library messages: {added} lines in {log.path}")
    finally:
        ex.close()  # cancels whatever is still in flight (Ctrl-C, an error) before the unlock
        store.close()
    return ctx
