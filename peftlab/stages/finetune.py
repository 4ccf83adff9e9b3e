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
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError
from peftlab.spec import RunConfig
from peftlab.store import dir_bytes, provenance
from peftlab.training import Prepared, TrainResult

if TYPE_CHECKING:
    from peftlab.study import Context


def run(ctx: Context) -> None:
    """Train every run of the study that is not done yet (failed runs stay failed, see plan)."""
    from peftlab.logs import track
    from peftlab.study import run_status

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
    for rc in track(ctx.console, "finetune", todo, label=lambda rc: rc.run_id):
        rec = train_run(ctx, rc)
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
    """Train, evaluate and save one run; write and return its `runs` record.

    A user mistake (PeftlabError) stops the study; a run-level failure is recorded as `failed`
    and returned, so the caller goes on with the next run.
    """
    import shutil

    from peftlab.records import RunRecord, write
    from peftlab.training import train_and_evaluate
    from peftlab.validate import check_batch_fits

    store = ctx.store
    final = artifact_dir(ctx, rc.run_id)
    if final.exists():  # left by an interrupted or failed attempt: never half-reused
        shutil.rmtree(final)
    base_record = {
        "run_id": rc.run_id, "task": rc.task, "method": rc.method, "method_type": rc.method_type,
        "seed": rc.seed, "config": rc.as_dict(), "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"search": rc.search} if rc.search else {}),
    }
    write(store, [RunRecord(**base_record, status="running")])
    task = ctx.data.task(rc.task)
    train_df, eval_df = ctx.data.split(rc.task, "train"), ctx.data.split(rc.task, "eval")
    result: TrainResult | None = None
    try:
        check_batch_fits(ctx.study, rc, len(train_df))
        with store.atomic_dir(final) as tmp:
            result = train_and_evaluate(rc, task, train_df, eval_df, device=ctx.device,
                                        out_dir=tmp, callbacks=[_progress(ctx, base_record)],
                                        where=ctx.study.where(f"methods.{rc.method}"))
            if result.status != "done":
                raise _Discard
    except PeftlabError:
        store.delete("runs", rc.run_id)  # nothing ran: the run is simply still to do
        raise
    except _Discard:
        assert result is not None
        return record_failure(ctx, rc, result.failure_reason or "failed",
                              loss_curve=result.loss_curve)
    return _record_done(ctx, rc, base_record, result, final)


def run_record(rc: RunConfig, base_record: dict[str, Any], result: TrainResult, *,
               artifact: str, artifact_bytes: int, artifact_weight_bytes: int, eval_logits: str,
               provenance_stamp: dict[str, Any]):
    """The `runs` record of a finished training (pure: the caller writes it)."""
    from peftlab.records import RunRecord

    return RunRecord(
        **base_record,
        status="done",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        main_metric=result.main_metric,
        metrics=result.metrics,
        params=result.params,
        artifact=artifact,
        artifact_bytes=artifact_bytes,
        eval_logits=eval_logits,
        artifact_weight_bytes=artifact_weight_bytes,
        train_time_s=result.train_time_s,  # the training loop (throughput is computed over it)
        train_wall_s=result.train_wall_s,  # the whole Trainer.train call, setup included
        eval_time_s=result.eval_time_s,
        steps=result.steps,
        train_samples_per_s=result.train_samples_per_s,
        train_tokens_per_s=result.train_tokens_per_s,
        padding_share=result.padding_share,
        memory=result.memory,
        loss_curve=result.loss_curve,
        log_history=result.log_history,
        train_examples=result.train_examples,
        eval_examples=result.eval_examples,
        provenance=provenance_stamp,
    )


def _record_done(ctx: Context, rc: RunConfig, base_record: dict[str, Any], result: TrainResult,
                 final: Path) -> dict[str, Any]:
    from peftlab.models import model_revision, resolve_model
    from peftlab.records import write

    m = rc.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    rel = final.relative_to(ctx.store.root)
    rec = run_record(
        rc, base_record, result,
        artifact=str(rel / "artifact"),
        artifact_bytes=dir_bytes(final / "artifact"),
        artifact_weight_bytes=sum(
            p.stat().st_size for p in (final / "artifact").glob("*.safetensors")),
        eval_logits=str(rel / "eval_logits.safetensors"),
        provenance_stamp=provenance(
            model_revision=model_revision(resolved),
            data_checksums={s: ctx.data.checksum(rc.task, s) for s in ("train", "eval")},
            padding=result.padding,
        ),
    )
    write(ctx.store, [rec])
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
