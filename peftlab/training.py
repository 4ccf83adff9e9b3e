"""The training engine: one run's model and data in, its metrics, timings and artifact out.

    result = train_and_evaluate(rc, task, train_df, eval_df, device="cpu", out_dir=folder)
    result.status, result.metrics, result.loss_curve, result.train_time_s, ...

Every method goes through the same path: load the base classifier (seeded head) the way the
method loads it, let the method prepare it, train with the Hugging Face Trainer (so accelerate,
bf16/fp16, gradient accumulation, gradient checkpointing and the Trainer's tracker callbacks
(`peftlab.tracking`) work as usual), evaluate with bootstrap intervals and, when `out_dir` is
given, save the artifact there in a form plain transformers / PEFT load, with its model card
(`peftlab.model_card`). No store access: the finetune stage turns the result into a `runs`
record, the search stage into a trial, and a remote worker (Ray) can return it to the process
that writes the store.

A NaN/inf loss, a divergence past `training.divergence_loss` after warm-up, or CUDA running out of
memory ends the run with `status == "failed"` and the reason; a user mistake (bad target module,
impossible device) raises PeftlabError before any training.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.memory import PeakMemory

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.runs import RunConfig
    from peftlab.tasks import TaskDef


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


@dataclass
class TrainResult:
    """What one training run measured. Times in seconds, memory in bytes.

    `metrics` (done runs): metric name -> {value, ci_low, ci_high, ...} on `eval_df`; `logits`:
    float32 [n_eval, num_labels] in `eval_df` order. `params`: trainable / base parameter counts
    (counted from the model). With `out_dir`, the artifact is in `out_dir/artifact` and the
    logits in `out_dir/eval_logits.safetensors`.
    """

    status: str  # "done" | "failed"
    main_metric: str
    failure_reason: str | None = None
    metrics: dict[str, dict[str, float | None]] | None = None
    logits: Any = None
    params: dict[str, Any] | None = None
    train_time_s: float | None = None  # the Trainer's loop (throughput is computed over it)
    train_wall_s: float | None = None  # the whole Trainer.train call, setup included
    eval_time_s: float | None = None
    steps: int | None = None
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    padding_share: float | None = None
    memory: dict[str, Any] | None = None
    loss_curve: list[float] = field(default_factory=list)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    train_examples: int | None = None
    eval_examples: int | None = None
    padding: dict[str, Any] | None = None  # the tokenizer's padding decisions (peftlab_info)
    artifact_dir: Path | None = None


def prepare(rc: RunConfig, task: TaskDef, train_df: pd.DataFrame, eval_df: pd.DataFrame, *,
            device: str, where: str) -> Prepared:
    """Seed, load the base and the data, apply the method. Raises PeftlabError for user mistakes
    (`where` names the spec key of the method in those messages)."""
    from transformers import set_seed

    from peftlab.artifacts import ModelLoader
    from peftlab.encode import encode_frame
    from peftlab.methods import get_method
    from peftlab.models import count_parameters, head_module_names, linear_module_names

    method = get_method(rc.method_type)
    # One seed fixes data order, dropout and the initialisation of the head and the adapter.
    set_seed(rc.seed)
    loader = ModelLoader(rc.model, device)
    model = loader.base(task.num_labels, task.head_label_names,
                        method_type=rc.method_type, params=rc.params)
    tokenizer = loader.tokenizer
    method.check(rc.params, linear_names=linear_module_names(model), device=device, where=where)
    enc = dict(max_length=rc.model.max_length, pair_template=rc.model.pair_template,
               label_dtype=task.task_kind.label_dtype)
    train = encode_frame(train_df, tokenizer, **enc)
    evald = encode_frame(eval_df, tokenizer, **enc)
    tr = rc.training
    if tr.head_init == "probe":  # LP-FT: the head starts fitted on the frozen base's features
        from peftlab.sentence_embedding import fit_heads

        fit_heads(model, train, tokenizer, batch_size=tr.eval_batch_size, device=device,
                  pad_to=tr.pad_to)
    steps_per_epoch = max(len(train) // (tr.batch_size * tr.grad_accum), 1)
    total = tr.max_steps or math.ceil(steps_per_epoch * tr.epochs)
    _, base_total = count_parameters(model)
    heads = head_module_names(model)
    set_seed(rc.seed)
    model = method.prepare(model, rc.params, head_names=heads, total_steps=total)
    from peftlab.sentence_embedding import attach_peft

    attach_peft(model)  # the sentence-embedding head finds a prompt adapter's virtual tokens
    return Prepared(model, tokenizer, train, evald, base_total, heads, total)


def steps_per_epoch(rc: RunConfig, n_train: int) -> int:
    """Optimizer steps in one epoch over `n_train` examples (at least 1)."""
    tr = rc.training
    return max(n_train // (tr.batch_size * tr.grad_accum), 1)


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


def trainer_class():
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


def training_arguments(rc: RunConfig, out: Path, device: str, *,
                       eval_steps: int | None = None):
    """The Trainer's arguments for `rc`; `eval_steps`: evaluate the eval dataset every that many
    steps during training (the search's pruning reports), None: no evaluation while training."""
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
        # The trackers of `training.report_to` come as callbacks from peftlab.tracking, logging
        # under the study directory: the Trainer's own would log under `output_dir`, a scratch
        # folder deleted after training.
        report_to="none",
        eval_strategy="steps" if eval_steps else "no",
        eval_steps=eval_steps,
        save_strategy="no",  # the artifact is saved once, atomically, after training
        seed=rc.seed,
        data_seed=rc.seed,
        use_cpu=device == "cpu",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def evaluate(task: Any, logits: Any, labels: Any, n_bootstrap: int, seed: int
             ) -> dict[str, dict[str, float]]:
    """Every metric of `task` on logits [n, num_labels] (regression: [n, 1]) against labels [n],
    with bootstrap intervals over the n examples."""
    import numpy as np

    from peftlab.metrics import compute_metrics

    y = np.asarray(labels)
    pred = task.task_kind.predictions(task, logits)
    return compute_metrics(list(task.metrics), y, pred, n_bootstrap=n_bootstrap, seed=seed)


def _compute_metrics(task: Any):
    """The Trainer's `compute_metrics` for evaluations during training: metric -> value."""
    def compute(pred):
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        return {name: m["value"] for name, m in evaluate(task, logits, pred.label_ids, 0,
                                                         0).items()}

    return compute


def save_artifact(model: Any, tokenizer: Any, rc: RunConfig, task: TaskDef, folder: Path, *,
                  device: str, metrics: dict[str, dict[str, Any]], study: str | None,
                  train_examples: int, eval_examples: int) -> Path:
    """Save a trained run's model into `folder` the way its method saves (adapter or whole
    model), its tokenizer beside it, and put it in its final form with its model card
    (`peftlab.model_card.finish_artifact`): the one save path of classification and generation
    runs. metrics: the card's (metric -> {value, ci_low, ci_high}); train_examples: training
    rows; eval_examples: evaluation examples (generation: inputs). Returns `folder`."""
    from peftlab.artifacts import ModelLoader
    from peftlab.methods import get_method
    from peftlab.model_card import finish_artifact
    from peftlab.models import portable_name

    base = ModelLoader(rc.model, device).resolved
    get_method(rc.method_type).save(model, folder, base_name=portable_name(base))
    tokenizer.save_pretrained(folder)
    # loadable without peftlab, with a model card (peftlab.model_card)
    finish_artifact(folder, rc, task, metrics=metrics, study=study, tokenizer=tokenizer,
                    base=base, train_examples=train_examples, eval_examples=eval_examples)
    return Path(folder)


def train_and_evaluate(rc: RunConfig, task: TaskDef, train_df: pd.DataFrame,
                       eval_df: pd.DataFrame, *, device: str, out_dir: Path | None = None,
                       callbacks: Sequence[Any] = (), eval_during_training: int | None = None,
                       where: str | None = None,
                       on_start: Callable[[Prepared], None] | None = None,
                       study: str | None = None) -> TrainResult:
    """Train `rc` on `train_df`, evaluate on `eval_df`, save the artifact into `out_dir` if given.

    callbacks: extra Trainer callbacks (progress, pruning); with `eval_during_training` = N the
    Trainer evaluates `eval_df` every N steps and callbacks see `on_evaluate(metrics=...)` with
    `eval_<metric>` values (an exception raised there, e.g. optuna.TrialPruned, ends training
    and propagates). on_start: called once the model and data are ready, before training.
    study: the study's name, for the artifact's model card.
    A user mistake raises PeftlabError; a run-level failure returns status "failed".
    """
    import torch
    from transformers import PrinterCallback

    from peftlab.encode import make_collator, predict
    from peftlab.methods import get_method
    from peftlab.models import count_parameters

    method = get_method(rc.method_type)
    prep = prepare(rc, task, train_df, eval_df, device=device,
                   where=where or f"methods.{rc.method}")
    if on_start is not None:
        on_start(prep)
    model = prep.model
    trainable, total_with_adapter = count_parameters(model)
    collator = make_collator(prep.tokenizer, pad_to=rc.training.pad_to)
    trainer = None
    scratch = None
    if out_dir is None:
        scratch = tempfile.TemporaryDirectory(prefix="peftlab-train-")
    work = Path(out_dir) if out_dir is not None else Path(scratch.name)  # type: ignore[union-attr]
    try:
        with PeakMemory(device) as mem:
            args = training_arguments(rc, work / "trainer", device,
                                      eval_steps=eval_during_training)
            timer = _loop_timer()
            trainer = trainer_class()(
                model=model, args=args, train_dataset=prep.train, data_collator=collator,
                eval_dataset=prep.eval if eval_during_training else None,
                compute_metrics=_compute_metrics(task) if eval_during_training else None,
                callbacks=[*method.callbacks(), timer, *callbacks])
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
                             device, pad_to=rc.training.pad_to)
            eval_time = time.perf_counter() - t1
            metrics = evaluate(task, logits, prep.eval["labels"], rc.training.bootstrap_samples,
                               rc.seed)
            artifact = None
            if out_dir is not None:
                # Kept so that anyone can check a reloaded artifact against the trained model.
                from safetensors.numpy import save_file

                save_file({"logits": logits}, work / "eval_logits.safetensors")
                artifact = save_artifact(model, prep.tokenizer, rc, task, work / "artifact",
                                         device=device, metrics=metrics, study=study,
                                         train_examples=len(prep.train),
                                         eval_examples=len(prep.eval))
            shutil.rmtree(work / "trainer", ignore_errors=True)
    except RunFailed as e:
        return TrainResult(status="failed", main_metric=task.metrics[0], failure_reason=str(e),
                           loss_curve=trainer.peftlab_losses if trainer is not None else [])
    finally:
        if scratch is not None:
            scratch.cleanup()
    head = sum(p.numel() for n, p in model.named_parameters()
               if p.requires_grad and any(h in n for h in prep.head_names))
    return TrainResult(
        status="done",
        main_metric=task.metrics[0],
        metrics=metrics,
        logits=logits,
        params={
            # counted from the model, never typed: trainable includes the trained head
            "trainable": trainable,
            "trainable_head": head,
            "trainable_non_head": trainable - head,  # the adapter for PEFT methods
            "base_total": prep.base_params,
            "total_with_method": total_with_adapter,
            "trainable_share_of_base": trainable / prep.base_params,
        },
        train_time_s=train_time,
        train_wall_s=train_wall,
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
        padding=getattr(prep.tokenizer, "peftlab_info", None),
        artifact_dir=artifact,
    )
