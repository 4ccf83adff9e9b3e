"""The pipeline: loading a study, which stages it has, in which order, and running them.

    peftlab run quickstart
    study = load_study("quickstart"); run_stages(study, ["finetune"])

Stages are the modules of `peftlab/stages/` (each exposes `run(ctx)`, `peftlab.context.Context`,
and may expose `preflight(study)`, checks of seconds run before any stage starts), in the order
of `STAGES`. They talk to each other only through the study directory
(`peftlab.store.Store`): each reads the results of earlier stages, writes its own, and skips work
that is already done, so any stage can be rerun alone (`peftlab finetune SPEC`, ...).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from peftlab import logs
from peftlab.context import Context, run_status
from peftlab.errors import SpecError
from peftlab.plan import Study
from peftlab.records import finished_searches
from peftlab.spec import find_spec, parse_spec, read_spec
from peftlab.store import DB_NAME, Store, atomic_write_text, provenance
from peftlab.sweep import expand_sweep
from peftlab.validate import check_names, check_study

# Pipeline order. Each name is a module `peftlab.stages.<name>` with a `run(ctx)` function.
STAGES: tuple[str, ...] = ("data", "baselines", "search", "finetune", "represent", "forgetting",
                           "drift", "bench", "serve", "stats", "report")


def load_study(path: str | os.PathLike[str], *, data_dir: str | None = None,
               output_dir: str | None = None) -> Study:
    """Read, validate and fully resolve a study spec; raise SpecError naming file and key.

    `path` is a YAML file or the name of a shipped spec (`quickstart`, see `spec.shipped_specs`).
    Relative input paths inside it resolve against its folder (`spec.resolve_spec_paths`). Names
    are checked against the registries and every run is resolved (`validate.check_names`,
    `validate.check_study`); with a `search:` block, the searches already finished in the study
    directory are read from its store, so their runs resolve with the values they chose.
    """
    p = find_spec(path)
    raw = read_spec(p, output_dir=output_dir)
    # sweeps expand into method entries before anything reads `methods` (`peftlab.sweep`)
    spec = check_names(expand_sweep(parse_spec(raw, p), str(p)), raw, str(p))
    env_dir = os.environ.get("PEFTLAB_DATA_DIR")
    study = Study(spec=spec, path=p, data_dir=Path(data_dir) if data_dir else
                  (Path(env_dir) if env_dir else None),
                  search_outcomes=_stored_searches(spec.output_dir) if spec.search else {})
    check_study(study)
    return study


def _stored_searches(root: Path) -> dict[str, dict[str, Any]]:
    """The finished searches of a study directory, by search id ({} before it has a store)."""
    if not (Path(root) / DB_NAME).is_file():
        return {}
    store = Store(root, create=False)
    try:
        return finished_searches(store)
    finally:
        store.close()


def plan(study: Study) -> list[dict[str, Any]]:
    """Every unit of training work with its deterministic id and whether it is done: search
    trials first (`kind` "search trial"), then the runs."""
    from peftlab.hpsearch import plan_rows

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


@contextlib.contextmanager
def _stage_time(store: Store, session: str, index: int, name: str) -> Iterator[None]:
    """Record the stage's wall time in table `stage_times` (one record per stage per session:
    `peftlab run` invocation), whether it finished, failed or was interrupted, so a study's
    wall time over resumed sessions is the sum of its records."""
    started, t0 = time.strftime("%Y-%m-%dT%H:%M:%S%z"), time.perf_counter()
    status = "failed"
    try:
        yield
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        # never hide the stage's own error behind one of this bookkeeping
        with contextlib.suppress(Exception):
            store.put("stage_times", f"{session}/{index:02d}-{name}", {
                "session": session, "stage": name, "started": started, "status": status,
                "seconds": time.perf_counter() - t0, "pid": os.getpid()})


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
    for n in names:  # a stage's own quick checks (e.g. serve: the engine environment exists)
        check = getattr(importlib.import_module(f"peftlab.stages.{n}"), "preflight", None)
        if check is not None:
            check(study)
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
            session = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            for i, (name, fn) in enumerate(funcs):
                ctx.console.rule(f"[bold]{name}")
                with logs.stage(name), _stage_time(store, session, i, name):
                    fn(ctx)
                    if name == "data":
                        _check_probe_data(ctx)
            added = logs.lines_since(log.path, start)  # bench unit processes append there too
            if added:
                ctx.console.print(f"library messages: {added} lines in {log.path}")
    finally:
        ex.close()  # cancels whatever is still in flight (Ctrl-C, an error) before the unlock
        store.close()
    return ctx


def _check_probe_data(ctx: Context) -> None:
    """After the data stage of a generation study: its forgetting probe tasks (GLUE) live in
    another folder than its own data (E2E), so a wrong --data-dir fails now, not after training.
    Here, not in the data stage, because stages talk to each other through the store only."""
    from peftlab.generation import is_generative

    if is_generative(ctx):
        from peftlab.stages.forgetting import check_probe_data

        check_probe_data(ctx)
