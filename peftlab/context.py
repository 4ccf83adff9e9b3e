"""What a stage receives (`Context`), and the status of a planned run in the study directory.

    ctx = Context(study=load_study("quickstart"), store=Store("runs/quickstart"))
    ctx.finished_runs()                 # the planned runs whose record says done

The pipeline (`peftlab.pipeline.run_stages`) builds one Context per study and hands it to every
stage; libraries that load a study's artifacts take it too (`peftlab.artifacts.load_run`).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from rich.console import Console

from peftlab.data import StudyData
from peftlab.execution import Executor, LocalExecutor
from peftlab.plan import Study
from peftlab.runs import RunConfig
from peftlab.store import Store


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
