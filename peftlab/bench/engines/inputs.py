"""What a study gives the engine: its trained models as folders an engine loads, and its prompts.

    models = study_models(ctx, spec.engine, work=study_dir / "engine")
    merged = merged_models(models, m=3, work=study_dir / "engine")
    prompts = study_prompts(ctx, spec.engine, models.tasks)     # {task: ([prompt], [length])}

Adapters: the finished runs of the study's first LoRA method, in plan order (task, then seed:
the popularity order, the first most popular under skew), each served without what an engine
does not decode through (`folders.served_adapter`). k adapters are asked for
(`engine.adapters_k`); a study with fewer runs (3 seeds) serves copies of them under distinct
names (`<run id>-copy<j>`, cycling over the runs): the engine loads each name as its own
adapter, in its own slot, so serving cost is that of k distinct adapters of the same rank and
targets; what the copies do not test is k different outputs. `copies` counts them, and the
table and report say so. The fully fine-tuned model of the mixed workload: the first finished
run of a `full` method. Merged models: one folder per run (a copy's merged model is its run's).

Prompts (`study_prompts`): a generation task's evaluation inputs in its training prompt
template, each paired with the token length of each of its references (the task's own output
lengths, at most `generation.max_new_tokens`), shuffled once with a fixed seed; a
classification task's evaluation texts (pairs joined by the model's pair template) with
`engine.max_tokens` output tokens each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftlab.errors import PeftlabError, SpecError


@dataclass
class StudyModels:
    """The models of a study, as folders for an engine (see the module docstring).

    adapters: request name -> served adapter folder, popularity order; sources: request name ->
    the run id it serves; runs: run id -> served adapter folder (distinct weights); copies:
    names beyond the trained runs; full: (run id, causal LM folder) or None; rank: the largest
    LoRA rank; tasks: request name -> task.
    """

    base: Path
    adapters: dict[str, Path] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    copies: int = 0
    full: tuple[str, Path] | None = None
    rank: int = 8
    tasks: dict[str, str] = field(default_factory=dict)


def base_model_folder(ctx: Any) -> Path:
    """The study's base model as a Hugging Face folder (a GGUF dequantised once)."""
    from peftlab.bench.engines.folders import base_folder
    from peftlab.models import resolve_model

    m = ctx.study.spec.model
    return base_folder(resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision))


def study_models(ctx: Any, es: Any, *, work: Path) -> StudyModels:
    """The study's LoRA runs (k names, with copies) and first full run as engine folders under
    `work`; raises PeftlabError when no LoRA run has finished."""
    from peftlab.bench.engines.folders import full_folder, served_adapter
    from peftlab.context import run_status

    base = base_model_folder(ctx)
    models = StudyModels(base=base)
    lora_methods = [name for name, m in ctx.study.spec.methods.items() if m.get("type") == "lora"]
    if not lora_methods:
        raise SpecError(f"{ctx.study.where('engine')}: the engine serves LoRA adapters; the "
                        "study has no method of type lora")
    first = lora_methods[0]
    for rc in ctx.study.runs():
        if run_status(ctx.store, rc)["status"] != "done":
            continue
        rec = ctx.store.get("runs", rc.run_id) or {}
        if not rec.get("artifact"):
            continue
        artifact = ctx.store.root / rec["artifact"]
        if rc.method == first:
            models.runs[rc.run_id] = served_adapter(artifact, work / "adapters" / rc.run_id)
            models.rank = max(models.rank, int((rc.params or {}).get("r") or 8))
            models.tasks[rc.run_id] = rc.task
        elif rc.method_type == "full" and models.full is None:
            models.full = (rc.run_id, full_folder(artifact, work / "full" / rc.run_id, base=base))
            models.tasks[rc.run_id] = rc.task
    if not models.runs:
        raise PeftlabError(f"{ctx.study.output_dir}: no finished run of the LoRA method "
                           f"{first!r} to serve; train them first (peftlab run without --stages)")
    ids = list(models.runs)
    k = es.adapters_k
    for i in range(k):
        run_id = ids[i % len(ids)]
        name = run_id if i < len(ids) else f"{run_id}-copy{i // len(ids)}"
        models.adapters[name] = models.runs[run_id]
        models.sources[name] = run_id
        models.tasks[name] = models.tasks[run_id]
    models.copies = max(0, k - len(ids))
    return models


def merged_models(models: StudyModels, m: int, *, work: Path) -> dict[str, Path]:
    """The first m request names -> their run's adapter merged into the base (one folder per
    run: a copy's merged model is its run's)."""
    from peftlab.bench.engines.folders import merged_folder

    out = {}
    for name in list(models.adapters)[:m]:
        run_id = models.sources.get(name, name)
        out[name] = merged_folder(models.base, models.adapters[name], work / "merged" / run_id)
    return out


def check_output_lengths(study: Any, es: Any) -> None:
    """`engine.max_tokens: data` needs generation tasks (references give the lengths)."""
    from peftlab.tasks import task_from_spec

    if es.max_tokens != "data":
        return
    other = [t.name for t in study.spec.tasks if task_from_spec(t).kind != "generation"]
    if other:
        raise SpecError(f"{study.where('engine.max_tokens')}: 'data' takes each request's output "
                        f"length from a reference, and {', '.join(other)} has none: give a number "
                        "of output tokens")


def study_prompts(ctx: Any, es: Any, tasks: list[str], *, tokenizer: Any = None
                  ) -> dict[str, tuple[list[str], list[int] | None]]:
    """task -> (prompts, output lengths or None for es.max_tokens each); see the module
    docstring. tokenizer: counts reference tokens (default: the base folder's)."""
    import numpy as np

    from peftlab.generation import inputs_of, prompt_text

    check_output_lengths(ctx.study, es)
    spec = ctx.study.spec
    out: dict[str, tuple[list[str], list[int] | None]] = {}
    for task in tasks:
        df = ctx.data.split(task, "eval")
        td = ctx.data.task(task)
        if td.kind == "generation":
            gen = spec.generation
            if tokenizer is None:
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(base_model_folder(ctx)))
            template = gen.prompt_template or td.prompt_template or "{input}"
            rows = []
            for text, refs in inputs_of(df)[:es.prompts_per_task]:
                p = prompt_text(template, text, tokenizer if gen.chat_template else None,
                                chat=gen.chat_template)
                for ref in refs:
                    n = len(tokenizer(ref, add_special_tokens=False)["input_ids"])
                    rows.append((p, min(max(n, 1), gen.max_new_tokens)))
            order = np.random.default_rng(0).permutation(len(rows))
            rows = [rows[i] for i in order]
            if es.max_tokens == "data":
                out[task] = ([p for p, _ in rows], [n for _, n in rows])
            else:
                out[task] = ([p for p, _ in rows], None)
        else:
            texts = []
            for _, r in df.head(es.prompts_per_task).iterrows():
                b = r.get("text_b")
                texts.append(spec.model.pair_template.format(a=r["text_a"], b=b)
                             if isinstance(b, str) and b else str(r["text_a"]))
            out[task] = (texts, None)
    return out
