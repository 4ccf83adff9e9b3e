"""Train and evaluate one run (task x method x seed) and write its record and artifact.

    peftlab finetune quickstart

Every method goes through the same path: load the base classifier (seeded head), let the method
prepare it, train with the Hugging Face Trainer (so accelerate, bf16/fp16, gradient accumulation,
gradient checkpointing and report_to work as usual), evaluate with bootstrap intervals, save the
artifact in the library's own format, and write one record to the `runs` table.

A run that produces a NaN/inf loss, diverges or runs out of GPU memory is recorded as `failed` with
the reason, and the study goes on. A run whose process was killed is found as `running` with a dead
pid on the next start, and is trained again from scratch (its partial folder is swept away).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError
from peftlab.memory import PeakMemory
from peftlab.spec import RunConfig
from peftlab.store import dir_bytes, provenance

if TYPE_CHECKING:
    from peftlab.study import Context


class RunFailed(Exception):
    """A run-level failure (NaN loss, divergence, OOM): recorded, and the study goes on."""


@dataclass
class Prepared:
    """A run's model, tokenizer and encoded data, ready for the Trainer."""

    model: Any
    tokenizer: Any
    train: Any  # datasets.Dataset
    eval: Any
    base_params: int
    head_names: list[str]
    total_steps: int


def run(ctx: Context) -> None:
    """Train every run of the study that is not done yet (failed runs stay failed, see plan)."""
    from peftlab.logs import track
    from peftlab.study import run_status

    todo = [rc for rc in ctx.study.runs()
            if run_status(ctx.store, rc)["status"] not in ("done", "failed")]
    if not todo:
        ctx.console.print("finetune: every run is done")
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
    """Seed, load data and model, apply the method. Raises PeftlabError for user mistakes."""
    from transformers import set_seed

    from peftlab.artifacts import base_for_run
    from peftlab.encode import encode_frame
    from peftlab.methods import get_method
    from peftlab.models import count_parameters, head_module_names, linear_module_names
    from peftlab.validate import check_batch_fits

    task = ctx.data.task(rc.task)
    method = get_method(rc.method_type)
    # One seed fixes data order, dropout and the initialisation of the head and the adapter.
    set_seed(rc.seed)
    tokenizer, model = base_for_run(ctx, rc)
    method.check(rc.params, linear_names=linear_module_names(model), device=ctx.device,
                 where=ctx.study.where(f"methods.{rc.method}"))
    enc = dict(max_length=rc.model.max_length, pair_template=rc.model.pair_template,
               is_regression=task.is_regression)
    train = encode_frame(ctx.data.split(rc.task, "train"), tokenizer, **enc)
    evald = encode_frame(ctx.data.split(rc.task, "eval"), tokenizer, **enc)
    tr = rc.training
    check_batch_fits(ctx.study, rc, len(train))
    steps_per_epoch = max(len(train) // (tr.batch_size * tr.grad_accum), 1)
    total = tr.max_steps or math.ceil(steps_per_epoch * tr.epochs)
    _, base_total = count_parameters(model)
    heads = head_module_names(model)
    set_seed(rc.seed)
    model = method.prepare(model, rc.params, head_names=heads, total_steps=total)
    return Prepared(model, tokenizer, train, evald, base_total, heads, total)


def _loop_timer():
    """A callback that times the Trainer's training loop alone.

    `Trainer.train` first frees memory (a full `gc.collect`, ~0.25 s on a large process) and builds
    its optimizer; those are per-run setup, so throughput is computed over the loop itself and the
    whole call is recorded separately as `train_wall_s`.
    """
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        begin = end = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_train_end(self, args, state, control, **kwargs):
            self.end = time.perf_counter()

    return LoopTimer()


def _trainer_class():
    from transformers import Trainer

    class PeftlabTrainer(Trainer):
        """The Trainer plus a per-step health check and exact sample/token counts.

        The Trainer only looks at the loss when it logs; a NaN must stop the run at the step it
        appears, and a loss far above the start after warm-up means the run diverged.
        """

        guard_warmup_steps = 0
        divergence_loss: float | None = None

        def floating_point_ops(self, inputs):
            # The Trainer estimates FLOPs on every step for its `total_flos` log; peftlab does not
            # report it, and on small models it costs ~1 ms a step (measured in
            # benchmarks/train_overhead.py).
            return 0

        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            value = float(loss.detach())
            step = self.state.global_step + 1
            self.peftlab_losses.append(value)
            self.peftlab_samples += int(inputs["input_ids"].shape[0])
            mask = inputs.get("attention_mask")
            self.peftlab_tokens += int(mask.sum()) if mask is not None else int(
                inputs["input_ids"].numel())
            self.peftlab_padded_tokens += int(inputs["input_ids"].numel())
            if not math.isfinite(value):
                raise RunFailed(f"loss became {value} at step {step}")
            if (self.divergence_loss is not None and step > self.guard_warmup_steps
                    and value > self.divergence_loss):
                raise RunFailed(f"diverged: loss {value:.4g} > {self.divergence_loss} at step "
                                f"{step} (after warm-up)")
            return loss

    return PeftlabTrainer


def training_arguments(rc: RunConfig, out: Path, device: str):
    from transformers import TrainingArguments

    tr = rc.training
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=tr.batch_size,
        per_device_eval_batch_size=tr.eval_batch_size,
        gradient_accumulation_steps=tr.grad_accum,
        learning_rate=tr.learning_rate,
        weight_decay=tr.weight_decay,
        lr_scheduler_type=tr.scheduler,
        warmup_steps=tr.warmup_ratio,  # a float in [0, 1) is a share of total steps
        max_grad_norm=tr.max_grad_norm,
        num_train_epochs=tr.epochs,
        max_steps=tr.max_steps or -1,
        optim="adamw_torch",
        bf16=tr.precision == "bf16",
        fp16=tr.precision == "fp16",
        activation_checkpointing=tr.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if tr.group_by_length else "random",
        logging_steps=tr.logging_steps,
        report_to=list(tr.report_to) or "none",
        eval_strategy="no",
        save_strategy="no",  # the artifact is saved once, atomically, after training
        seed=rc.seed,
        data_seed=rc.seed,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def train_run(ctx: Context, rc: RunConfig) -> dict[str, Any]:
    """Train, evaluate and save one run; write and return its `runs` record.

    A user mistake (PeftlabError) stops the study; a run-level failure (RunFailed) is recorded as
    `failed` and returned, so the caller goes on with the next run.
    """
    import shutil

    import torch
    from transformers import PrinterCallback

    from peftlab.artifacts import ModelLoader
    from peftlab.encode import make_collator, predict
    from peftlab.methods import get_method
    from peftlab.models import count_parameters, portable_name
    from peftlab.records import RunRecord, write

    store = ctx.store
    final = artifact_dir(ctx, rc.run_id)
    if final.exists():  # left by an interrupted or failed attempt: never half-reused
        shutil.rmtree(final)
    base_record = {
        "run_id": rc.run_id, "task": rc.task, "method": rc.method, "method_type": rc.method_type,
        "seed": rc.seed, "config": rc.as_dict(), "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write(store, [RunRecord(**base_record, status="running")])
    method = get_method(rc.method_type)
    task = ctx.data.task(rc.task)
    try:
        prep = prepare_run(ctx, rc)
    except PeftlabError:
        store.delete("runs", rc.run_id)  # nothing ran: the run is simply still to do
        raise
    model = prep.model
    trainable, total_with_adapter = count_parameters(model)
    collator = make_collator(prep.tokenizer, pad_to=rc.training.pad_to)
    trainer = None
    try:
        with store.atomic_dir(final) as tmp, PeakMemory(ctx.device) as mem:
            args = training_arguments(rc, tmp / "trainer", ctx.device)
            timer = _loop_timer()
            trainer = _trainer_class()(model=model, args=args, train_dataset=prep.train,
                                       data_collator=collator,
                                       callbacks=[*method.callbacks(), timer])
            trainer.remove_callback(PrinterCallback)  # the loss curve goes to the record instead
            trainer.peftlab_losses, trainer.peftlab_samples = [], 0
            trainer.peftlab_tokens = trainer.peftlab_padded_tokens = 0
            trainer.guard_warmup_steps = math.ceil(rc.training.warmup_ratio * prep.total_steps)
            trainer.divergence_loss = rc.training.divergence_loss
            t0 = time.perf_counter()  # training time: the Trainer's loop, not its construction
            try:
                trainer.train()
            except torch.cuda.OutOfMemoryError:
                raise RunFailed(
                    f"CUDA out of memory at per-device batch size {rc.training.batch_size} "
                    f"(max_length {rc.model.max_length}); lower training.batch_size and raise "
                    "training.grad_accum") from None
            train_wall = time.perf_counter() - t0
            train_time = timer.end - timer.begin
            model.eval()
            t1 = time.perf_counter()
            logits = predict(model, prep.eval, prep.tokenizer, rc.training.eval_batch_size,
                             ctx.device, pad_to=rc.training.pad_to)
            eval_time = time.perf_counter() - t1
            metrics = evaluate(task, logits, prep.eval["labels"], rc.training.bootstrap_samples,
                               rc.seed)
            # Kept so that anyone can check a reloaded artifact against the trained model.
            from safetensors.numpy import save_file

            save_file({"logits": logits}, tmp / "eval_logits.safetensors")
            art = tmp / "artifact"
            method.save(model, art, base_name=portable_name(
                ModelLoader(rc.model, ctx.device).resolved))
            prep.tokenizer.save_pretrained(art)
            shutil.rmtree(tmp / "trainer", ignore_errors=True)
    except RunFailed as e:
        losses = trainer.peftlab_losses if trainer is not None else []
        return record_failure(ctx, rc, str(e), loss_curve=losses)
    return _record_done(ctx, rc, base_record, trainer, prep, trainable, total_with_adapter,
                        metrics, task, train_time, train_wall, eval_time, mem, final)


def _record_done(ctx, rc, base_record, trainer, prep, trainable, total_with_adapter, metrics,
                 task, train_time, train_wall, eval_time, mem, final) -> dict[str, Any]:
    from peftlab.models import model_revision, resolve_model
    from peftlab.records import RunRecord, write

    m = rc.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    head = sum(p.numel() for n, p in prep.model.named_parameters()
               if p.requires_grad and any(h in n for h in prep.head_names))
    rec = RunRecord(
        **base_record,
        status="done",
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        main_metric=task.metrics[0],
        metrics=metrics,
        params={
            # counted from the model, never typed: trainable includes the trained head
            "trainable": trainable,
            "trainable_head": head,
            "trainable_non_head": trainable - head,  # the adapter for PEFT methods
            "base_total": prep.base_params,
            "total_with_method": total_with_adapter,
            "trainable_share_of_base": trainable / prep.base_params,
        },
        artifact=str(final.relative_to(ctx.store.root) / "artifact"),
        artifact_bytes=dir_bytes(final / "artifact"),
        eval_logits=str(final.relative_to(ctx.store.root) / "eval_logits.safetensors"),
        artifact_weight_bytes=sum(
            p.stat().st_size for p in (final / "artifact").glob("*.safetensors")),
        train_time_s=train_time,  # the training loop (throughput is computed over it)
        train_wall_s=train_wall,  # the whole Trainer.train call, setup included
        eval_time_s=eval_time,
        steps=trainer.state.global_step,
        train_samples_per_s=trainer.peftlab_samples / train_time,
        train_tokens_per_s=trainer.peftlab_tokens / train_time,
        padding_share=1 - trainer.peftlab_tokens / max(trainer.peftlab_padded_tokens, 1),
        memory=mem.as_dict(),
        loss_curve=trainer.peftlab_losses,
        log_history=trainer.state.log_history,
        train_examples=len(prep.train),
        eval_examples=len(prep.eval),
        provenance=provenance(
            model_revision=model_revision(resolved),
            data_checksums={s: ctx.data.checksum(rc.task, s) for s in ("train", "eval")},
            padding=getattr(prep.tokenizer, "peftlab_info", None),
        ),
    )
    write(ctx.store, [rec])
    return rec.dump()


def evaluate(task: Any, logits: Any, labels: Any, n_bootstrap: int, seed: int
             ) -> dict[str, dict[str, float]]:
    import numpy as np

    from peftlab.metrics import compute_metrics

    y = np.asarray(labels)
    pred = logits[:, 0] if task.is_regression else logits.argmax(-1)
    return compute_metrics(list(task.metrics), y, pred, n_bootstrap=n_bootstrap, seed=seed)


def record_failure(ctx: Context, rc: RunConfig, reason: str, **extra: Any) -> dict[str, Any]:
    """Mark a run failed with its reason (its running record, if any, keeps its other fields)."""
    from peftlab.records import RunRecord, read_one, write

    old = read_one(ctx.store, RunRecord, rc.run_id)
    base = old.dump() if old is not None else {
        "run_id": rc.run_id, "task": rc.task, "method": rc.method,
        "method_type": rc.method_type, "seed": rc.seed, "config": rc.as_dict()}
    rec = RunRecord(**{**base, "status": "failed", "failure_reason": reason,
                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra})
    write(ctx.store, [rec])
    return rec.dump()
