"""Generation tasks: prompting, causal-LM fine-tuning with the loss on target tokens only,
batched decoding and scoring against every reference of an input.

    result = train_and_evaluate_generation(rc, task, train_df, eval_df, device="cpu", out_dir=d)
    outputs = generate(model, tokenizer, prompts, max_new_tokens=48)

Training runs through the same Trainer subclass, arguments, method hooks (`Method.prepare`,
`Method.save`), failure rules and artifact save path (`training.save_artifact`: the artifact
with its model card, here with the task's text metrics and a `generate(texts)` that decodes as
the run was evaluated) as classification (`peftlab.training`); what differs is the model
(AutoModelForCausalLM, PEFT task type CAUSAL_LM, no head), the data and the evaluation.

Why not TRL's SFTTrainer: its completion-only loss is this module's collator in a Trainer of its
own, and peftlab's loop needs its own Trainer subclass (the per-step NaN/divergence guard, exact
sample and token counts, the loop timer) for every method alike. The loss on target tokens only
is a label mask: each example is `prompt ids + target ids + EOS` with the prompt's labels set to
-100 (ignored by the LM loss), padded by transformers' `DataCollatorForSeq2Seq` (inputs with the
pad id, labels with -100). `training.group_by_length` batches examples of similar length.

Decoding is batched, left-padded (a decoder continues from the last position), greedy unless
`generation.num_beams` > 1, with a KV cache, and stops at EOS or a stop string (`generation.stop`,
default a newline). Outputs are stored per input (`generations.jsonl` beside the artifact, the
`generations` table), so any metric can be recomputed.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.artifacts import load_causal_lm, load_run_lm  # noqa: F401  (generation's loaders)

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.runs import RunConfig
    from peftlab.spec import GenerationSpec
    from peftlab.training import TrainResult

GENERATIONS_FILE = "generations.jsonl"


# ---------------------------------------------------------------------------------------------
# prompts and data


def prompt_text(template: str, text: str, tokenizer: Any = None, *, chat: bool = False) -> str:
    """The prompt for one input: `template` with `{input}` replaced; with `chat`, wrapped in
    the tokenizer's chat template as one user turn followed by the assistant's turn opening."""
    prompt = template.replace("{input}", text)
    if chat:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            from peftlab.errors import ModelError

            raise ModelError("generation.chat_template: the model's tokenizer has no chat "
                             "template")
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               tokenize=False, add_generation_prompt=True)
    return prompt


def inputs_of(df: pd.DataFrame) -> list[tuple[str, list[str]]]:
    """[(input text, [references])] of a generation frame, by input id (0..n-1)."""
    out: dict[int, tuple[str, list[str]]] = {}
    for text, ref, i in zip(df["text_a"], df["label"], df["input"], strict=True):
        out.setdefault(int(i), (text, []))[1].append(str(ref))
    return [out[i] for i in sorted(out)]


def encode_examples(df: pd.DataFrame, tokenizer: Any, *, template: str, chat: bool,
                    max_length: int) -> Any:
    """A `datasets.Dataset` of input_ids / attention_mask / labels, one example per row
    (input, reference): labels are -100 on the prompt, the target's ids and EOS after it.
    Longer examples lose target tokens from the end (the prompt is kept whole)."""
    from datasets import Dataset

    eos = tokenizer.eos_token_id
    rows: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "labels": []}
    for text, target in zip(df["text_a"], df["label"], strict=True):
        p = tokenizer(prompt_text(template, text, tokenizer, chat=chat))["input_ids"]
        t = tokenizer(" " + str(target), add_special_tokens=False)["input_ids"] + [eos]
        ids = (p + t)[:max(max_length, len(p) + 1)]
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append([-100] * len(p) + ids[len(p):])
    return Dataset.from_dict(rows)


def collator(tokenizer: Any, pad_to: int | None = None) -> Any:
    """Pads input_ids with the pad id and labels with -100 (transformers' seq2seq collator does
    exactly that for decoder-only inputs too), on the right."""
    from transformers import DataCollatorForSeq2Seq

    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=-100, padding="longest"
                                  if pad_to is None else "max_length", max_length=pad_to)


# ---------------------------------------------------------------------------------------------
# models


# ---------------------------------------------------------------------------------------------
# decoding


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to the first stop string, stripped."""
    end = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                end = min(end, i)
    return text[:end].strip()


def generate(model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int = 48,
             num_beams: int = 1, stop: Sequence[str] = ("\n",), batch_size: int = 16,
             device: str | None = None) -> list[str]:
    """One output per prompt: batched, left-padded, greedy (num_beams 1) or beam search,
    KV cache on, ending at EOS, a stop string or `max_new_tokens` new tokens."""
    import torch

    dev = device or next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # a decoder continues from the last position of each row
    outs: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            batch = list(prompts[start:start + batch_size])
            enc = tokenizer(batch, return_tensors="pt", padding=True).to(dev)
            with torch.inference_mode():
                ids = model.generate(
                    **enc, max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=False,
                    use_cache=True, pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                    stop_strings=[s for s in stop if s] or None, tokenizer=tokenizer,
                    temperature=None, top_p=None, top_k=None)
            new = ids[:, enc["input_ids"].shape[1]:]
            outs += [cut_at_stop(t, stop)
                     for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return outs


def score(task: Any, inputs: list[tuple[str, list[str]]], outputs: Sequence[str], *,
          n_bootstrap: int, seed: int) -> dict[str, dict[str, float | None]]:
    """Every metric of `task` with bootstrap intervals over inputs (not references)."""
    from peftlab.metrics import compute_metrics
    from peftlab.text_metrics import references

    refs = references([(text, r) for text, r in inputs])
    pred = np.empty(len(outputs), dtype=object)
    pred[:] = list(outputs)
    return compute_metrics(list(task.metrics), refs, pred, n_bootstrap=n_bootstrap, seed=seed)


def generation_rows(inputs: list[tuple[str, list[str]]], outputs: Sequence[str]
                    ) -> list[dict[str, Any]]:
    """[{input, input_text, output, references}] in input order (the stored generations)."""
    return [{"input": i, "input_text": text, "output": out, "references": refs}
            for i, ((text, refs), out) in enumerate(zip(inputs, outputs, strict=True))]


def write_generations(path: Path, rows: list[dict[str, Any]]) -> None:
    with Path(path).open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_generations(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def engine(task: Any) -> Any:
    """The training engine of `task`: this module's for generation, else the classifier's
    (`peftlab.training.train_and_evaluate`); same arguments, same `TrainResult`."""
    if task.kind == "generation":
        return train_and_evaluate_generation
    from peftlab.training import train_and_evaluate

    return train_and_evaluate


def spec_of(rc: RunConfig) -> GenerationSpec:
    from peftlab.spec import GenerationSpec

    return GenerationSpec(**{k: v for k, v in rc.generation.items()
                             if k in GenerationSpec.model_fields})


def template_of(rc: RunConfig, task: Any) -> str:
    return rc.generation.get("prompt_template") or task.prompt_template or "{input}"


# ---------------------------------------------------------------------------------------------
# training


def train_and_evaluate_generation(rc: RunConfig, task: Any, train_df: pd.DataFrame,
                                  eval_df: pd.DataFrame, *, device: str,
                                  out_dir: Path | None = None, callbacks: Sequence[Any] = (),
                                  where: str | None = None, study: str | None = None,
                                  **_: Any) -> TrainResult:
    """`peftlab.training.train_and_evaluate` for a generation task (`engine` picks it): the
    same result fields (logits None; `metrics` from decoding the evaluation inputs), plus
    `generations.jsonl` and the artifact (adapter or whole model, with its tokenizer) in
    `out_dir` when given."""
    import torch
    from transformers import PrinterCallback, set_seed

    from peftlab.memory import PeakMemory
    from peftlab.methods import get_method
    from peftlab.models import count_parameters, linear_module_names
    from peftlab.training import (
        RunFailed,
        TrainResult,
        _loop_timer,
        trainer_class,
        training_arguments,
    )

    method = get_method(rc.method_type)
    gen = spec_of(rc)
    template = template_of(rc, task)
    set_seed(rc.seed)
    model, tokenizer = load_causal_lm(rc.model, device, method_type=rc.method_type,
                                      params=rc.params)
    method.check(rc.params, linear_names=linear_module_names(model), device=device,
                 where=where or f"methods.{rc.method}")
    train = encode_examples(train_df, tokenizer, template=template, chat=gen.chat_template,
                            max_length=rc.model.max_length)
    tr = rc.training
    total = tr.max_steps or math.ceil(max(len(train) // (tr.batch_size * tr.grad_accum), 1)
                                      * tr.epochs)
    _, base_total = count_parameters(model)
    set_seed(rc.seed)
    model = method.prepare(model, rc.params, head_names=[], total_steps=total)
    trainable, total_with = count_parameters(model)
    scratch = tempfile.TemporaryDirectory(prefix="peftlab-train-") if out_dir is None else None
    work = Path(out_dir) if out_dir is not None else Path(scratch.name)  # type: ignore[union-attr]
    trainer = None
    try:
        with PeakMemory(device) as mem:
            args = training_arguments(rc, work / "trainer", device)
            timer = _loop_timer()
            trainer = trainer_class()(model=model, args=args, train_dataset=train,
                                      data_collator=collator(tokenizer, tr.pad_to),
                                      callbacks=[*method.callbacks(), timer, *callbacks])
            trainer.remove_callback(PrinterCallback)
            trainer.peftlab_losses, trainer.peftlab_samples = [], 0
            trainer.peftlab_tokens = trainer.peftlab_padded_tokens = 0
            trainer.guard_warmup_steps = math.ceil(tr.warmup_ratio * total)
            trainer.divergence_loss = tr.divergence_loss
            t0 = time.perf_counter()
            try:
                trainer.train()
            except torch.cuda.OutOfMemoryError:
                raise RunFailed(f"CUDA out of memory at per-device batch size {tr.batch_size}; "
                                "lower training.batch_size and raise training.grad_accum") from None
            train_wall = time.perf_counter() - t0
            train_time = timer.end - timer.begin
            model.eval()
            inputs = inputs_of(eval_df)
            t1 = time.perf_counter()
            outputs = generate(model, tokenizer,
                               [prompt_text(template, t, tokenizer, chat=gen.chat_template)
                                for t, _ in inputs],
                               max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams,
                               stop=gen.stop, batch_size=gen.batch_size, device=device)
            eval_time = time.perf_counter() - t1
            metrics = score(task, inputs, outputs, n_bootstrap=tr.bootstrap_samples, seed=rc.seed)
            artifact = None
            if out_dir is not None:
                from peftlab.training import save_artifact

                write_generations(work / GENERATIONS_FILE, generation_rows(inputs, outputs))
                # the classifier's save path: the method's save, the tokenizer, the model card
                artifact = save_artifact(model, tokenizer, rc, task, work / "artifact",
                                         device=device, metrics=metrics, study=study,
                                         train_examples=len(train), eval_examples=len(inputs))
            shutil.rmtree(work / "trainer", ignore_errors=True)
    except RunFailed as e:
        return TrainResult(status="failed", main_metric=task.metrics[0], failure_reason=str(e),
                           loss_curve=trainer.peftlab_losses if trainer is not None else [])
    finally:
        if scratch is not None:
            scratch.cleanup()
    return TrainResult(
        status="done", main_metric=task.metrics[0], metrics=metrics, logits=None,
        params={"trainable": trainable, "trainable_head": 0, "trainable_non_head": trainable,
                "base_total": base_total, "total_with_method": total_with,
                "trainable_share_of_base": trainable / base_total},
        train_time_s=train_time, train_wall_s=train_wall, eval_time_s=eval_time,
        steps=trainer.state.global_step,
        train_samples_per_s=trainer.peftlab_samples / train_time,
        train_tokens_per_s=trainer.peftlab_tokens / train_time,
        padding_share=1 - trainer.peftlab_tokens / max(trainer.peftlab_padded_tokens, 1),
        memory=mem.as_dict(), loss_curve=trainer.peftlab_losses,
        log_history=trainer.state.log_history, train_examples=len(train),
        eval_examples=len(inputs), padding=getattr(tokenizer, "peftlab_info", None),
        artifact_dir=artifact)


# ---------------------------------------------------------------------------------------------
# baselines and the learned rule


def few_shot_prompt(template: str, shots: list[tuple[str, str]], text: str) -> str:
    """The few-shot prompt: k solved training examples (prompt and its first reference), each on
    its own block, then the input's prompt."""
    blocks = [f"{template.replace('{input}', s)} {ref}" for s, ref in shots]
    return "\n\n".join([*blocks, template.replace("{input}", text)])


def baseline_outputs(study_spec: Any, task: Any, train_df: pd.DataFrame,
                     eval_df: pd.DataFrame, device: str) -> dict[str, list[str]]:
    """Outputs of every generation baseline on the evaluation inputs: the base model zero-shot
    on the runs' prompts, few-shot with `generation.few_shot` training examples (the first
    training inputs, fixed, with their first reference), and, for E2E inputs, the template."""
    from peftlab.text_metrics import parse_mr, template_sentence

    gen: GenerationSpec = study_spec.generation
    template = gen.prompt_template or task.prompt_template or "{input}"
    inputs = inputs_of(eval_df)
    model, tokenizer = load_causal_lm(study_spec.model, device)
    decode = dict(max_new_tokens=gen.max_new_tokens, num_beams=gen.num_beams, stop=gen.stop,
                  batch_size=gen.batch_size, device=device)
    out = {"zero_shot": generate(model, tokenizer, [
        prompt_text(template, t, tokenizer, chat=gen.chat_template) for t, _ in inputs],
        **decode)}
    if gen.few_shot:
        shots = [(t, refs[0]) for t, refs in inputs_of(train_df)[:gen.few_shot]]
        out[f"few_shot_{gen.few_shot}"] = generate(model, tokenizer, [
            prompt_text(few_shot_prompt(template, shots, "{input}"), t, tokenizer,
                        chat=gen.chat_template) for t, _ in inputs], **decode)
    if gen.template_baseline and all(parse_mr(t) for t, _ in inputs):
        out["template"] = [template_sentence(t) for t, _ in inputs]
    return out


def judge(main_metric: str, higher_is_better: bool, run_metrics: dict[str, Any],
          baselines: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The learned rule for generation: a run learned when its main metric's interval bound
    on the better side (the lower bound where higher is better) is beyond every baseline's
    value. {"learned", "beats": {baseline: bool}, "bound", "reason"}."""
    m = run_metrics[main_metric]
    bound = m.get("ci_low") if higher_is_better else m.get("ci_high")
    if bound is None:
        return {"learned": False, "beats": {}, "bound": None,
                "reason": "no interval (training.bootstrap_samples 0)"}
    beats = {}
    for name, b in baselines.items():
        v = b["metrics"][main_metric]["value"]
        beats[name] = bool(bound > v) if higher_is_better else bool(bound < v)
    failed = [n for n, ok in beats.items() if not ok]
    return {"learned": not failed, "beats": beats, "bound": bound,
            "reason": None if not failed else
            f"{main_metric} interval bound {bound:.2f} does not clear {', '.join(failed)}"}


# ---------------------------------------------------------------------------------------------
# which studies are generation studies


def is_generative(ctx: Any) -> bool:
    """True for a study of generation tasks. A study mixing generation and classification or
    regression tasks is refused (SpecError): its stages would need both kinds of model."""
    from peftlab.errors import SpecError

    kinds = {ctx.data.task(t.name).kind == "generation" for t in ctx.study.spec.tasks}
    if len(kinds) > 1:
        raise SpecError(f"{ctx.study.where('tasks')}: a study holds generation tasks or "
                        "classification/regression tasks, not both: split it into two studies")
    return kinds == {True}
