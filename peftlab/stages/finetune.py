"""Train and evaluate one run (task x method x seed) and write its record and artifact.

    peftlab finetune quickstart

The training itself is `peftlab.training.train_and_evaluate` (the engine the search stage uses
too); this stage gives it the run's data, saves the artifact atomically in the study directory
and writes one record to the `runs` table.

A run that produces a NaN/inf loss, diverges or runs out of GPU memory is recorded as `failed` with
the reason, and the study goes on. A run whose process was killed is found as `running` with a dead
pid on the next start, and is trained again from scratch (its partial folder is swept away). While
it trains, its `running` record carries the steps done so far (`steps`), written at every logging
step. Runs whose hyperparameters come from a search wait until that search has finished.

Every run is one unit of work (`train_unit`: plain arguments in, its record out, no store) that
the study's executor runs in this process or as a Ray task (`peftlab.execution`); the driver
writes the `running` record when it sends the unit and the returned record when it comes back.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.runs import RunConfig
from peftlab.store import dir_bytes, provenance
from peftlab.tracking import Target
from peftlab.tracking import target as tracking_target
from peftlab.training import Prepared, TrainResult

if TYPE_CHECKING:
    from peftlab.context import Context


def run(ctx: Context) -> None:
    """Train every run of the study that is not done yet (failed runs stay failed, see plan).

    Each run is one unit of `ctx.executor` (`train_unit`): in this process one after another,
    or as Ray tasks side by side; this process writes every record.
    """
    from peftlab.context import run_status
    from peftlab.execution import run_units

    runs = ctx.study.runs()
    waiting = [rc for rc in runs if rc.waiting]
    if waiting:
        studies = sorted({rc.search["study"] for rc in waiting})  # type: ignore[index]
        ctx.console.print(f"finetune: {len(waiting)} runs wait for their search "
                          f"({', '.join(studies)}): run `peftlab search` first")
    todo = [rc for rc in runs if not rc.waiting
            and run_status(ctx.store, rc)["status"] not in ("done", "failed")]
    if not todo:
        ctx.console.print("finetune: every run is done" if not waiting else
                          "finetune: nothing else to train")
        return
    units = [run_unit(ctx, rc) for rc in todo]
    for out in run_units(ctx.console, "finetune", ctx.executor, units):
        rec = finish_unit(ctx, out)
        rc = out.unit.tag
        if rec["status"] == "failed":
            ctx.console.print(f"[red]failed[/] {rc.run_id}: {rec['failure_reason']}")
        else:
            m = rec["metrics"][rec["main_metric"]]
            ci = (f" [{m['ci_low']:.4f}, {m['ci_high']:.4f}]"
                  if m.get("ci_low") is not None else "")
            ctx.console.print(f"done {rc.run_id}: {rec['main_metric']} {m['value']:.4f}{ci} "
                              f"in {rec['train_time_s']:.1f} s")


def artifact_dir(ctx: Context, run_id: str) -> Path:
    return ctx.store.path("runs", run_id)


def prepare_run(ctx: Context, rc: RunConfig) -> Prepared:
    """A run's model and data as training gets them (benchmarks/train_overhead.py uses it)."""
    from peftlab.training import prepare
    from peftlab.validate import check_batch_fits

    train = ctx.data.split(rc.task, "train")
    check_batch_fits(ctx.study, rc, len(train))
    return prepare(rc, ctx.data.task(rc.task), train, ctx.data.split(rc.task, "eval"),
                   device=ctx.device, where=ctx.study.where(f"methods.{rc.method}"))


class _Discard(Exception):
    """Leaves the artifact folder of a failed run unwritten (the atomic folder is dropped)."""


def _progress(ctx: Context, base_record: dict[str, Any], every_s: float = 1.0):
    """A callback that writes the steps done into the run's `running` record at a log step, at
    most once every `every_s` seconds (a store write costs ~1 ms; a small model's step not much
    more), so `peftlab plan`, a watcher or a test sees how far a run has got."""
    from transformers import TrainerCallback

    from peftlab.records import RunRecord, write

    class Progress(TrainerCallback):
        last = -math.inf

        def on_log(self, args, state, control, **kwargs):
            now = time.perf_counter()
            if now - self.last >= every_s:
                self.last = now
                write(ctx.store, [RunRecord(**base_record, status="running",
                                            steps=state.global_step)])

    return Progress()


def train_run(ctx: Context, rc: RunConfig) -> dict[str, Any]:
    """Train, evaluate and save one run in this process; write and return its `runs` record.

    A user mistake (PeftlabError) stops the study; a run-level failure is recorded as `failed`
    and returned, so the caller goes on with the next run.
    """
    from peftlab.execution import LocalExecutor

    ex = LocalExecutor()
    ex.submit(run_unit(ctx, rc))
    return finish_unit(ctx, ex.next_done())


def run_unit(ctx: Context, rc: RunConfig):
    """One run as a unit of work: `train_unit` with plain arguments, its `running` record
    written by the driver when the unit is dispatched."""
    from peftlab.execution import Unit
    from peftlab.validate import check_batch_fits

    train_df, eval_df = ctx.data.split(rc.task, "train"), ctx.data.split(rc.task, "eval")
    check_batch_fits(ctx.study, rc, len(train_df))  # before anything is sent anywhere
    base_record = {
        "run_id": rc.run_id, "task": rc.task, "method": rc.method, "method_type": rc.method_type,
        # the driver's pid: while it lives the run is `running`, once it is gone `interrupted`
        "seed": rc.seed, "config": rc.as_dict(), "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"search": rc.search} if rc.search else {}),
    }

    def start() -> None:
        from peftlab.records import RunRecord, write

        base_record["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        write(ctx.store, [RunRecord(**base_record, status="running")])

    kwargs: dict[str, Any] = dict(
        device=ctx.study.spec.device, final=str(artifact_dir(ctx, rc.run_id)),
        root=str(ctx.store.root), base_record=base_record,
        checksums={s: ctx.data.checksum(rc.task, s) for s in ("train", "eval")},
        where=ctx.study.where(f"methods.{rc.method}"), tracking=tracking_target(ctx.study),
        study=ctx.study.spec.name)
    if ctx.executor.in_process:  # progress records need the store, i.e. this process
        kwargs["callbacks"] = [_progress(ctx, base_record)]
    return Unit(rc.run_id, train_unit, (rc, ctx.data.task(rc.task), train_df, eval_df), kwargs,
                tag=rc, on_start=start)


def train_unit(rc: RunConfig, task: Any, train_df: Any, eval_df: Any, *, device: str,
               final: str, root: str, base_record: dict[str, Any], checksums: dict[str, str],
               where: str, callbacks: list[Any] | None = None,
               tracking: Target | None = None, study: str | None = None) -> dict[str, Any]:
    """Train, evaluate and save one run into `final` (atomically); return its `runs` record,
    done or failed. No store and no Context: it runs in the driver or in a Ray worker.

    device: the spec's device ("auto" resolves where the unit runs, e.g. to a worker's GPU).
    tracking: the study's trackers (`peftlab.tracking`), started where the training runs.
    study: the study's name (for the artifact's model card).
    A user mistake raises PeftlabError; a run-level failure returns a `failed` record.
    """
    import shutil

    from peftlab.generation import engine
    from peftlab.models import resolve_device
    from peftlab.records import RunRecord
    from peftlab.store import atomic_dir
    from peftlab.tracking import run_trackers

    final_dir = Path(final)
    if final_dir.exists():  # left by an interrupted or failed attempt: never half-reused
        shutil.rmtree(final_dir)
    sweep_attempts(final_dir)
    result: TrainResult | None = None
    try:
        with atomic_dir(final_dir) as tmp, run_trackers(tracking, rc) as trackers:
            result = engine(task)(rc, task, train_df, eval_df,
                                  device=resolve_device(device), out_dir=tmp,
                                  callbacks=[*(callbacks or []), *trackers.callbacks],
                                  where=where, study=study)
            trackers.finish(result)
            if result.status != "done":
                raise _Discard
    except _Discard:
        assert result is not None
        return RunRecord(**base_record, status="failed",
                         failure_reason=result.failure_reason or "failed",
                         finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         loss_curve=result.loss_curve).dump()
    return _done_record(rc, base_record, result, final_dir, Path(root), checksums)


def sweep_attempts(final: Path) -> None:
    """Remove the temporary folders (`<run>.tmp-<pid>`) of earlier attempts of a run whose
    process was killed: one attempt of a run runs at a time, so none of them is in use."""
    import shutil

    for tmp in final.parent.glob(f"{final.name}.tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def finish_unit(ctx: Context, out: Any) -> dict[str, Any]:
    """Write the record a training unit returned (or its failure) to the store; return it."""
    from peftlab.records import RunRecord, write

    rc = out.unit.tag
    if out.error is not None:
        ctx.store.delete("runs", rc.run_id)  # nothing ran: the run is simply still to do
        raise out.error
    execution = out.execution(ctx.executor.backend)
    if out.failure is not None:
        sweep_attempts(artifact_dir(ctx, rc.run_id))
        return record_failure(ctx, rc, out.failure,
                              provenance={"execution": execution})
    rec = dict(out.value)
    rec["provenance"] = {**(rec.get("provenance") or {}), "execution": execution}
    parsed = RunRecord(**rec)
    write(ctx.store, [parsed, *_generation_records(ctx, rc)])
    return parsed.dump()


def _generation_records(ctx: Context, rc: RunConfig) -> list[Any]:
    """The stored outputs of a generation run (its `generations.jsonl`), as records."""
    from peftlab.generation import GENERATIONS_FILE, read_generations
    from peftlab.records import GenerationRecord

    path = artifact_dir(ctx, rc.run_id) / GENERATIONS_FILE
    if not path.is_file():
        return []
    return [GenerationRecord(run_id=rc.run_id, task=rc.task, method=rc.method, seed=rc.seed,
                             **row) for row in read_generations(path)]


def run_record(rc: RunConfig, base_record: dict[str, Any], result: TrainResult, *,
               artifact: str, artifact_bytes: int, artifact_weight_bytes: int,
               eval_logits: str | None,
               provenance_stamp: dict[str, Any]):
    """The `runs` record of a finished training (pure: the caller writes it)."""
    import dataclasses

    from peftlab.records import RunRecord

    # Every measurement of the training outcome the record has a field for, under the same name
    # (train_time_s: the training loop, throughput is computed over it; train_wall_s: the whole
    # Trainer.train call, setup included).
    measured = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)
                if f.name in RunRecord.model_fields and f.name not in ("status", "failure_reason")}
    return RunRecord(
        **base_record, **measured, status="done",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), artifact=artifact,
        artifact_bytes=artifact_bytes, eval_logits=eval_logits,
        artifact_weight_bytes=artifact_weight_bytes, provenance=provenance_stamp)


def _done_record(rc: RunConfig, base_record: dict[str, Any], result: TrainResult, final: Path,
                 root: Path, checksums: dict[str, str]) -> dict[str, Any]:
    from peftlab.models import model_revision, resolve_model

    m = rc.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    rel = final.relative_to(root)
    rec = run_record(
        rc, base_record, result,
        artifact=str(rel / "artifact"),
        artifact_bytes=dir_bytes(final / "artifact"),
        artifact_weight_bytes=sum(
            p.stat().st_size for p in (final / "artifact").glob("*.safetensors")),
        eval_logits=(None if result.logits is None  # generation: outputs in generations.jsonl
                     else str(rel / "eval_logits.safetensors")),
        provenance_stamp=provenance(
            model_revision=model_revision(resolved),
            data_checksums=checksums,
            padding=result.padding,
        ),
    )
    return rec.dump()


def record_failure(ctx: Context, rc: RunConfig, reason: str, **extra: Any) -> dict[str, Any]:
    """Mark a run failed with its reason (its running record, if any, keeps its other fields)."""
    from peftlab.records import RunRecord, read_one, write

    old = read_one(ctx.store, RunRecord, rc.run_id)
    base = old.dump() if old is not None else {
        "run_id": rc.run_id, "task": rc.task, "method": rc.method,
        "method_type": rc.method_type, "seed": rc.seed, "config": rc.as_dict()}
    base.pop("steps", None)  # progress of the running record, not a result
    rec = RunRecord(**{**base, "status": "failed", "failure_reason": reason,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
    write(ctx.store, [rec])
    return rec.dump()
