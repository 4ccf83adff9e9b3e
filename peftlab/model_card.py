"""A run's artifact in its final form: loadable without peftlab, described by a real model card.

    finish_artifact(folder, rc, task, metrics=result.metrics, study="quickstart",
                    tokenizer=tokenizer, base=resolved, train_examples=256, eval_examples=200)

Called once the method has saved the trained model into `folder` and the tokenizer beside it:

- the sentence-embedding head (`model.head: sentence-embedding`) has no class in transformers, so
  its artifact is rewritten into the encoder plus a documented head file
  (`peftlab.sentence_embedding.save_portable`); any other artifact stays as transformers or PEFT
  saved it (a `*ForSequenceClassification` model, or a SEQ_CLS adapter holding its trained head);
- an adapter names its base by hub id (`base_model_name_or_path`), or by nothing for a base from
  the user's own folder: no file of an artifact holds a path of the machine that trained it;
- README.md (PEFT writes an empty template naming the base by its local path) becomes a model
  card: study, run, task, method and its parameters, seed, base by hub id, training settings,
  every metric with its bootstrap interval, and the exact transformers / PEFT code that rebuilds
  the evaluated model from the folder. tests/test_artifacts.py runs that code in a fresh process
  and compares its logits with the run's stored eval_logits.safetensors.

A generation run (a task of kind `generation`: a causal LM, no task head) gets the same card with
its task's metrics (BLEU, ROUGE-L, chrF, slot error rate: intervals over inputs) and code that
defines `generate(texts)`: the prompt template, the decoding the run was evaluated with, and the
cut at the stop strings; tests/test_generation.py checks that it gives the stored outputs
(`generations.jsonl` beside the folder) again.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peftlab.models import ResolvedModel
    from peftlab.runs import RunConfig
    from peftlab.tasks import TaskDef

CARD = "README.md"
ARTIFACT_LINE = 'ARTIFACT = "path/to/this/folder"'
BASE_PLACEHOLDER = "path/to/the/base/model"


def finish_artifact(folder: Path, rc: RunConfig, task: TaskDef, *,
                    metrics: dict[str, dict[str, Any]], study: str | None, tokenizer: Any,
                    base: ResolvedModel, train_examples: int, eval_examples: int) -> None:
    """Put the artifact saved in `folder` into its final form and write its model card (see the
    module docstring). metrics: metric -> {value, ci_low, ci_high} on the `eval_examples`."""
    from peftlab.models import portable_name
    from peftlab.sentence_embedding import save_portable

    folder = Path(folder)
    if rc.model.head == "sentence-embedding":
        save_portable(folder, max_length=rc.model.max_length)
    base_id = portable_name(base)
    config = folder / "adapter_config.json"
    if config.is_file():
        data = json.loads(config.read_text(encoding="utf-8"))
        data["base_model_name_or_path"] = base_id  # None: a local folder, named in the card
        config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    card = model_card(rc, task, metrics=metrics, study=study, tokenizer=tokenizer, base=base,
                      base_id=base_id, adapter=config.is_file(), train_examples=train_examples,
                      eval_examples=eval_examples)
    (folder / CARD).write_text(card, encoding="utf-8")


def model_card(rc: RunConfig, task: TaskDef, *, metrics: dict[str, dict[str, Any]],
               study: str | None, tokenizer: Any, base: ResolvedModel, base_id: str | None,
               adapter: bool, train_examples: int, eval_examples: int) -> str:
    """The README.md text: YAML front matter (`huggingface_hub.ModelCardData`) and markdown."""
    from huggingface_hub import ModelCardData

    sentence_embedding = rc.model.head == "sentence-embedding"
    generative = task.kind == "generation"
    library = "peft" if adapter else ("sentence-transformers" if sentence_embedding
                                      else "transformers")
    data = ModelCardData(
        base_model=base_id, library_name=library,
        pipeline_tag="text-generation" if generative else "text-classification",
        datasets=[task.hub.path] if task.hub is not None else None,
        tags=["peftlab", rc.method_type, task.name]
        + (["sentence-embedding-head"] if sentence_embedding else []))
    base_text = (f"[{base_id}](https://huggingface.co/{base_id})" if base_id
                 else f"a local model folder `{_base_label(base)}` (no hub id)")
    parts = [
        f"---\n{data.to_yaml()}\n---\n",
        f"# {rc.run_id}\n",
        f"A {_task_text(task)} {'text generator' if generative else 'classifier'} fine-tuned "
        f"from {base_text} with {_method_text(rc)}"
        f" ({'an adapter' if adapter else 'every weight trained'}) by peftlab"
        + (f" in study `{study}`" if study else "") + f", seed {rc.seed}.\n",
        _facts(rc, task, study, base, base_id, train_examples, sentence_embedding, adapter),
        (_generation_evaluation if generative else _evaluation)(rc, task, metrics,
                                                                 eval_examples),
        "## Load it without peftlab\n",
        (_generation_loading_text(rc, task, adapter, base, base_id) if generative
         else _loading_text(rc, task, sentence_embedding, adapter, base, base_id)),
        "```python\n" + loading_code(rc, task, tokenizer=tokenizer, base=base, base_id=base_id,
                                     adapter=adapter) + "```\n",
    ]
    if sentence_embedding and _prompt_based(rc):
        parts.append("sentence-transformers loads an adapter through transformers' PEFT "
                     "integration, which takes no prompt-based adapter (its virtual tokens are "
                     "no module to inject into): `embed()` above gives the embeddings.\n")
    elif sentence_embedding:
        parts.append(_sentence_transformers_text(adapter, base_id, rc.model.max_length))
    return "\n".join(parts)


def _prompt_based(rc: RunConfig) -> bool:
    """Whether the run's method feeds virtual tokens (prompt tuning, p-tuning): no merge, and
    the encoder's hidden states start with them."""
    from peftlab.methods import method_for

    return bool(method_for(rc.method_type, rc.params).feeds_embeddings)


def _base_label(base: ResolvedModel) -> str:
    """A local base by its folder or file name only (its path is the training machine's)."""
    if base.kind == "hub":
        return base.source
    return base.gguf_file or Path(base.source).name


_METHOD_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA",
                 "adalora": "AdaLoRA", "ia3": "(IA)^3"}


def _method_text(rc: RunConfig) -> str:
    return _METHOD_NAMES.get(rc.method_type, rc.method_type)


def _task_text(task: TaskDef) -> str:
    where = (f" ({task.hub.path}" + (f", config {task.hub.config}" if task.hub.config else "")
             + ")"
             if task.hub is not None else "")
    return f"`{task.name}`{where}"


def _facts(rc: RunConfig, task: TaskDef, study: str | None, base: ResolvedModel,
           base_id: str | None, train_examples: int, sentence_embedding: bool,
           adapter: bool) -> str:
    tr = rc.training
    params = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(rc.params.items())) or "none"
    labels = ("regression (one score)" if task.is_regression
              else ", ".join(f"{i} = {name}" for i, name in enumerate(task.label_names or ())))
    head = ("sentence-embedding: each text encoded alone and mean-pooled; one text's embedding "
            "-> Linear(hidden, labels), a pair's cosine -> Linear(1, labels) (head.safetensors, "
            "described in head.json)" if sentence_embedding else
            "transformers' sequence-classification head"
            + (" (saved with the adapter, `modules_to_save`)" if adapter else ""))
    task_row = f"{_task_text(task)}: {' + '.join(task.text_columns)} -> {labels}"
    if task.kind == "generation":
        gen = _generation_settings(rc, task)
        task_row = (f"{_task_text(task)}: prompt -> text, prompt template "
                    f"`{json.dumps(gen['prompt_template'])}`"
                    + (" in the tokenizer's chat template" if gen["chat_template"] else "")
                    + "; the loss on the target tokens only")
        head = "the causal language model's own LM head (no task head)"
    source = (f"{base_id}" if base_id else f"local folder `{_base_label(base)}`")
    if base.kind == "gguf":
        source += f", read from the GGUF file `{base.gguf_file}`"
    rows = [
        ("Study", f"`{study}`" if study else "-"),
        ("Run", f"`{rc.run_id}`"),
        ("Task", task_row),
        ("Method", f"`{rc.method}` (type `{rc.method_type}`): {params}"),
        ("Seed", str(rc.seed)),
        ("Base model", source + (f" @ {rc.model.revision}" if rc.model.revision else "")),
        ("Head", head),
        ("Training", f"{train_examples} "
                     + ("(input, reference) " if task.kind == "generation" else "")
                     + f"examples (data seed {rc.data_seed}), "
                     + (f"{tr.max_steps} steps" if tr.max_steps else f"{tr.epochs:g} epoch(s)")
                     + f", batch size {tr.batch_size} x {tr.grad_accum}, learning rate "
                     f"{tr.learning_rate:g}, {tr.scheduler} schedule, warm-up {tr.warmup_ratio:g}"
                     f", weight decay {tr.weight_decay:g}, precision {tr.precision}"
                     + (", head fitted on frozen features first (LP-FT)"
                        if tr.head_init == "probe" else "")),
        ("Tokens", f"at most {rc.model.max_length} per example "
                   + ("(prompt + target; a longer target loses its end), "
                      if task.kind == "generation" else "(longer inputs truncated), ")
                   + f"weights in {rc.model.dtype}"),
    ]
    return "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def _metric_rows(task: TaskDef, metrics: dict[str, dict[str, Any]]) -> list[str]:
    """The evaluation table's rows, one per metric: value and 95% interval (main metric marked);
    shared by the classification and generation cards."""
    rows = []
    for name, m in metrics.items():
        ci = (f"[{m['ci_low']:.4f}, {m['ci_high']:.4f}]" if m.get("ci_low") is not None
              else "-")
        main = " (main)" if name == task.metrics[0] else ""
        value = f"{m['value']:.4f}" if m.get("value") is not None else "undefined"
        rows.append(f"| {name}{main} | {value} | {ci} |")
    return rows


def _evaluation(rc: RunConfig, task: TaskDef, metrics: dict[str, dict[str, Any]],
                eval_examples: int) -> str:
    n_boot = rc.training.bootstrap_samples
    lines = ["## Evaluation\n",
             f"On {eval_examples} examples of the `{task.eval_split}` split"
             + (f" (a seeded subsample, data seed {rc.data_seed})" if rc.eval_samples else "")
             + (f"; 95% percentile bootstrap intervals over the examples ({n_boot} resamples)."
                if n_boot else "; no intervals (bootstrap_samples: 0)."),
             "",
             "| metric | value | 95% interval |", "|---|---|---|"]
    lines += _metric_rows(task, metrics)
    lines.append("")
    lines.append("The logits behind these numbers are stored beside this folder, in "
                 "`../eval_logits.safetensors` (tensor `logits`, float32, one row per "
                 "evaluation example in order); the code below gives them again to 1e-4.\n")
    return "\n".join(lines)


def _loading_text(rc: RunConfig, task: TaskDef, sentence_embedding: bool, adapter: bool,
                  base: ResolvedModel, base_id: str | None) -> str:
    out = []
    if sentence_embedding:
        out.append("transformers has no class for this head, so the folder holds the encoder "
                   + ("as a PEFT adapter of the bare encoder (`AutoModel`, task type "
                      "FEATURE_EXTRACTION)" if adapter else "as a plain `BertModel`")
                   + " and the head in `head.safetensors` (see `head.json`); the few lines "
                   "below apply it. Loading the folder with `AutoModelForSequenceClassification`"
                   " would build a different, untrained head.")
    elif adapter:
        out.append("The adapter holds the trained classification head (`modules_to_save`): the "
                   "base's own head, absent or of another size, is replaced when the adapter "
                   "loads, so transformers' note that the head was newly initialised is "
                   "expected.")
    if adapter and base_id is None:
        out.append(f"The base was the local folder `{_base_label(base)}`: set `BASE` to its "
                   "path.")
    if base.kind == "gguf":
        out.append(f"peftlab read the base from the GGUF file `{base.gguf_file}` (dequantised by "
                   "transformers); weights converted from another copy of the model may differ "
                   "by that file's rounding.")
    out.append("`logits(...)` takes the texts as peftlab fed them: Unicode NFC"
               + (", leading and trailing whitespace stripped" if rc.strip_whitespace else "")
               + " (the task's " + ", ".join(f"`{c}`" for c in task.text_columns) + ").")
    return "\n\n".join(out) + "\n"


def _sentence_transformers_text(adapter: bool, base_id: str | None, max_length: int) -> str:
    if adapter and base_id is None:
        load = ("encoder = SentenceTransformer(BASE)\n"
                "encoder.load_adapter(ARTIFACT)\n"
                f"encoder.max_seq_length = {max_length}  # the tokens each text was cut to")
    elif adapter:
        load = "encoder = SentenceTransformer(ARTIFACT)  # the base from the hub + this adapter"
    else:
        load = ('# the encoder has no pooler (the head reads mean-pooled states, not [CLS])\n'
                'encoder = SentenceTransformer(ARTIFACT, model_kwargs={"add_pooling_layer": '
                'False})')
    return ("The encoder is also a sentence-transformers model (modules.json: mean pooling): its "
            "embeddings are `embed()`'s for single texts.\n\n```python\n"
            "from sentence_transformers import SentenceTransformer\n\n"
            f"{load}\nembeddings = encoder.encode(texts, convert_to_tensor=True)\n```\n")


def _generation_settings(rc: RunConfig, task: TaskDef) -> dict[str, Any]:
    """The run's decoding and prompt (`rc.generation`, the spec's defaults filled in)."""
    from peftlab.spec import GenerationSpec

    gen = GenerationSpec(**{k: v for k, v in rc.generation.items()
                            if k in GenerationSpec.model_fields}).model_dump()
    gen["prompt_template"] = (rc.generation.get("prompt_template") or task.prompt_template
                              or "{input}")
    return gen


def _decoding_text(gen: dict[str, Any]) -> str:
    stop = ", ".join(json.dumps(s) for s in gen["stop"] if s)
    return (("greedy" if gen["num_beams"] == 1 else f"beam search ({gen['num_beams']} beams)")
            + f", at most {gen['max_new_tokens']} new tokens, ending at EOS"
            + (f" or at the first of {stop}" if stop else ""))


def _generation_evaluation(rc: RunConfig, task: TaskDef, metrics: dict[str, dict[str, Any]],
                           eval_examples: int) -> str:
    n_boot = rc.training.bootstrap_samples
    gen = _generation_settings(rc, task)
    lines = ["## Evaluation\n",
             f"On {eval_examples} inputs of the `{task.eval_split}` split"
             + (f" (a seeded subsample, data seed {rc.data_seed})" if rc.eval_samples else "")
             + ", each output scored against every reference of its input; decoding: "
             + _decoding_text(gen)
             + (f"; 95% percentile bootstrap intervals over inputs ({n_boot} resamples)."
                if n_boot else "; no intervals (bootstrap_samples: 0)."),
             "",
             "| metric | value | 95% interval |", "|---|---|---|"]
    lines += _metric_rows(task, metrics)
    lines.append("")
    lines.append("The outputs behind these numbers are stored beside this folder, in "
                 "`../generations.jsonl` (one JSON object per input: `input`, `input_text`, "
                 "`output`, `references`); the code below decodes them again.\n")
    return "\n".join(lines)


def _generation_loading_text(rc: RunConfig, task: TaskDef, adapter: bool, base: ResolvedModel,
                             base_id: str | None) -> str:
    out = []
    if adapter and base_id is None:
        out.append(f"The base was the local folder `{_base_label(base)}`: set `BASE` to its "
                   "path.")
    if base.kind == "gguf":
        out.append(f"peftlab read the base from the GGUF file `{base.gguf_file}` (dequantised by "
                   "transformers); weights converted from another copy of the model may differ "
                   "by that file's rounding.")
    out.append("`generate(texts)` takes the inputs as peftlab fed them: Unicode NFC"
               + (", leading and trailing whitespace stripped" if rc.strip_whitespace else "")
               + ", put into the prompt template; it decodes in batches of the size the run was "
               "evaluated with (left padding).")
    return "\n\n".join(out) + "\n"


def _generation_code(rc: RunConfig, task: TaskDef, adapter: bool) -> str:
    """`generate(texts)`: the run's prompt and decoding (`peftlab.generation.generate`)."""
    gen = _generation_settings(rc, task)
    lines = ["tokenizer = AutoTokenizer.from_pretrained(ARTIFACT)"]
    if adapter:
        lines += ["base = " + _call("AutoModelForCausalLM.from_pretrained", "BASE",
                                    _load_kwargs(rc, base=True)),
                  "model = PeftModel.from_pretrained(base, ARTIFACT).eval()",
                  "if MERGE:", "    model = model.merge_and_unload()"]
    else:
        lines.append("model = " + _call("AutoModelForCausalLM.from_pretrained", "ARTIFACT",
                                        _load_kwargs(rc, base=False)) + ".eval()")
    lines += [f"PROMPT = {json.dumps(gen['prompt_template'])}  # {{input}}: the input text",
              f"STOP = {json.dumps([s for s in gen['stop'] if s])}  # an output ends at these"]
    if gen["chat_template"]:
        prompt = ('tokenizer.apply_chat_template([{"role": "user", "content": '
                  'PROMPT.replace("{input}", t)}], tokenize=False, add_generation_prompt=True)')
    else:
        prompt = 'PROMPT.replace("{input}", t)'
    fn = [
        f"def generate(texts, batch_size={gen['batch_size']}):",
        f'    """One output per input text, decoded as the run was evaluated: '
        f'{_decoding_text(gen)}."""',
        f"    prompts = [{prompt} for t in clean(texts)]",
        '    tokenizer.padding_side = "left"  # a decoder continues from the last position',
        "    outputs = []",
        "    for start in range(0, len(prompts), batch_size):",
        "        batch = tokenizer(prompts[start:start + batch_size], return_tensors=\"pt\", "
        "padding=True).to(model.device)",
        "        with torch.no_grad():",
        "            ids = model.generate(",
        f"                **batch, max_new_tokens={gen['max_new_tokens']}, "
        f"num_beams={gen['num_beams']}, do_sample=False,",
        "                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,",
        "                stop_strings=STOP or None, tokenizer=tokenizer, temperature=None, "
        "top_p=None, top_k=None)",
        "        new = ids[:, batch[\"input_ids\"].shape[1]:]",
        "        outputs += [cut(t) for t in tokenizer.batch_decode(new, skip_special_tokens=True)]",
        "    return outputs",
        "",
        "",
        "def cut(text):",
        '    """The text up to the first stop string, stripped."""',
        "    ends = [i for i in (text.find(s) for s in STOP) if i != -1]",
        "    return (text[:min(ends)] if ends else text).strip()",
    ]
    return "\n".join(lines) + "\n\n\n" + "\n".join(fn) + "\n"


# ---------------------------------------------------------------------------------------------
# The loading code


def loading_code(rc: RunConfig, task: TaskDef, *, tokenizer: Any, base: ResolvedModel,
                 base_id: str | None, adapter: bool) -> str:
    """Self-contained Python (no peftlab) that defines `logits(texts)` (single-text task) or
    `logits(texts_a, texts_b)` (pair task): float tensors [n, num_labels] as evaluated; for a
    generation task `generate(texts)`: one output string per input, as evaluated.
    Its first lines set ARTIFACT (the folder) and, for adapters, BASE; MERGE = True folds an
    adapter into the base weights (merge_and_unload)."""
    generative = task.kind == "generation"
    if generative:
        body = _generation_code(rc, task, adapter)
    elif rc.model.head == "sentence-embedding":
        body = _sentence_embedding_code(rc, task, adapter)
    else:
        body = _classifier_code(rc, task, tokenizer, adapter)
    head = [ARTIFACT_LINE + "  # this folder"]
    if adapter:
        head.append(f"BASE = {json.dumps(base_id or BASE_PLACEHOLDER)}  # the base model"
                    + ("" if base_id else f" (the local folder {_base_label(base)})"))
        if not _prompt_based(rc):  # virtual tokens: no weight update to fold in
            head.append("MERGE = False  # True: the adapter folded into the base weights "
                        "(merge_and_unload)")
    imports = ["import unicodedata", "", "import torch"]
    if rc.model.head == "sentence-embedding":
        imports += ["import torch.nn.functional as F"]
    if adapter:
        imports += ["from peft import PeftModel"]
    if rc.model.head == "sentence-embedding":
        imports += ["from safetensors.torch import load_file",
                    "from transformers import AutoModel, AutoTokenizer"]
    elif generative:
        imports += ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    else:
        imports += ["from transformers import AutoModelForSequenceClassification, AutoTokenizer"]
    if rc.method_type == "qlora":
        imports[-1] = imports[-1].replace("AutoTokenizer", "AutoTokenizer, BitsAndBytesConfig")
    strip = ".strip()" if rc.strip_whitespace else ""
    clean = ("\n\ndef clean(texts):\n"
             "    \"\"\"The texts as peftlab fed them to the tokenizer.\"\"\"\n"
             f"    return [unicodedata.normalize(\"NFC\", t){strip} for t in texts]\n")
    return "\n".join(imports) + "\n\n" + "\n".join(head) + "\n\n" + body + clean


def _load_kwargs(rc: RunConfig, base: bool) -> list[str]:
    """from_pretrained keyword arguments the spec's model section asks for."""
    out = []
    if rc.model.dtype != "float32":
        out.append(f"dtype=torch.{rc.model.dtype}")
    if rc.model.trust_remote_code:
        out.append("trust_remote_code=True")
    if base and rc.model.revision:
        out.append(f"revision={json.dumps(rc.model.revision)}")
    if base and rc.model.gguf_file:
        out.append(f"gguf_file={json.dumps(rc.model.gguf_file)}")
    if base and rc.method_type == "qlora":
        from peftlab.methods.qlora import HEAD_MODULES

        p = rc.params
        out.append("quantization_config=BitsAndBytesConfig(load_in_4bit=True, "
                   f"bnb_4bit_quant_type={json.dumps(p['quant_type'])}, "
                   f"bnb_4bit_use_double_quant={p['double_quant']}, "
                   f"bnb_4bit_compute_dtype=torch.{p['compute_dtype']}, "
                   f"llm_int8_skip_modules={json.dumps(HEAD_MODULES)})")
        out.append('device_map={"": 0}')
        out = [o for o in out if not o.startswith("dtype=")] + [
            f"dtype=torch.{p['compute_dtype']}"]
    return out


def _call(fn: str, first: str, kwargs: list[str]) -> str:
    args = ", ".join([first, *kwargs])
    line = f"{fn}({args})"
    if len(line) <= 88:
        return line
    return f"{fn}(\n" + textwrap.indent(",\n".join([first, *kwargs]), "    ") + ")"


def _classifier_code(rc: RunConfig, task: TaskDef, tokenizer: Any, adapter: bool) -> str:
    n = task.num_labels
    lines = ["tokenizer = AutoTokenizer.from_pretrained(ARTIFACT)"]
    if adapter:
        kwargs = [f"num_labels={n}", "pad_token_id=tokenizer.pad_token_id",
                  # a base whose own head has another size still loads; the adapter replaces it
                  "ignore_mismatched_sizes=True", *_load_kwargs(rc, base=True)]
        lines += ["base = " + _call("AutoModelForSequenceClassification.from_pretrained", "BASE",
                                    kwargs),
                  "model = PeftModel.from_pretrained(base, ARTIFACT).eval()  # + the trained head"]
        if not _prompt_based(rc):
            lines += ["if MERGE:", "    model = model.merge_and_unload()"]
    else:
        lines.append("model = " + _call("AutoModelForSequenceClassification.from_pretrained",
                                        "ARTIFACT", _load_kwargs(rc, base=False)) + ".eval()")
    max_len = rc.model.max_length
    call = f"truncation=True, max_length={max_len}, padding=True, return_tensors=\"pt\""
    doc = (f'    """Logits [n, {n}] of n {"pairs" if task.is_pair else "texts"}, as the run was '
           'evaluated."""')
    if not task.is_pair:
        fn = ["def logits(texts):", doc,
              f"    batch = tokenizer(clean(texts), {call})"]
    elif getattr(tokenizer, "sep_token", None) is not None:
        fn = ["def logits(texts_a, texts_b):", doc,
              f"    batch = tokenizer(clean(texts_a), clean(texts_b), {call})"]
    else:  # no separator token: peftlab joins the two texts with model.pair_template
        lines.append(f"PAIR_TEMPLATE = {json.dumps(rc.model.pair_template)}  # joins a pair: "
                     "this tokenizer has no separator token")
        fn = ["def logits(texts_a, texts_b):", doc,
              "    texts = [PAIR_TEMPLATE.format(a=a, b=b) for a, b in zip(clean(texts_a), "
              "clean(texts_b))]",
              f"    batch = tokenizer(texts, {call})"]
    fn += ["    with torch.no_grad():",
           "        return model(**batch.to(model.device)).logits.float()"]
    return "\n".join(lines) + "\n\n\n" + "\n".join(fn) + "\n"


def _sentence_embedding_code(rc: RunConfig, task: TaskDef, adapter: bool) -> str:
    n = task.num_labels
    lines = ["tokenizer = AutoTokenizer.from_pretrained(ARTIFACT)"]
    if adapter:
        lines += ["encoder = " + _call("AutoModel.from_pretrained", "BASE",
                                       _load_kwargs(rc, base=True)),
                  "encoder = PeftModel.from_pretrained(encoder, ARTIFACT).eval()"]
        if not _prompt_based(rc):
            lines += ["if MERGE:", "    encoder = encoder.merge_and_unload()"]
    else:
        lines.append("# no pooler: the head reads mean-pooled states, never [CLS]")
        lines.append("encoder = " + _call("AutoModel.from_pretrained", "ARTIFACT",
                                          ["add_pooling_layer=False",
                                           *_load_kwargs(rc, base=False)]) + ".eval()")
    lines.append("head = load_file(f\"{ARTIFACT}/head.safetensors\")  # described in head.json")
    embed = [
        "def embed(ids):",
        '    """Mean-pooled last hidden states [n, hidden] of n token-id lists, each one text '
        'encoded alone."""',
        '    batch = tokenizer.pad({"input_ids": ids}, padding_side="right", '
        'return_tensors="pt")',
        "    with torch.no_grad():",
        "        hidden = encoder(**batch.to(encoder.device)).last_hidden_state.float()",
        *(['    # the adapter\'s virtual tokens come first: the text\'s own tokens are pooled',
           '    hidden = hidden[:, hidden.shape[1] - batch["input_ids"].shape[1]:]']
          if adapter and _prompt_based(rc) else []),
        '    mask = batch["attention_mask"].unsqueeze(-1).float()',
        "    return (hidden * mask).sum(1) / mask.sum(1)",
    ]
    max_len = rc.model.max_length
    if task.is_pair:
        fn = [
            "def logits(texts_a, texts_b):",
            f'    """Logits [n, {n}] of n pairs: the cosine of the two texts\' embeddings -> '
            f'Linear(1, {n}).',
            "    A pair is truncated as one sequence ([CLS] a [SEP] b [SEP]), then each text is "
            'encoded alone."""',
            f"    enc = tokenizer(clean(texts_a), clean(texts_b), truncation=True, "
            f"max_length={max_len})",
            "    ids_a, ids_b = [], []",
            '    for ids, types in zip(enc["input_ids"], enc["token_type_ids"]):',
            "        ids_a.append([t for t, s in zip(ids, types) if s == 0])  # [CLS] a [SEP]",
            "        ids_b.append(ids[:1] + [t for t, s in zip(ids, types) if s == 1])  "
            "# [CLS] b [SEP]",
            "    cosine = torch.cosine_similarity(embed(ids_a), embed(ids_b), dim=-1)"
            ".unsqueeze(-1)",
            '    w, b = head["pair_classifier.weight"].float(), '
            'head["pair_classifier.bias"].float()',
            "    return F.linear(cosine.to(w.device), w, b)",
        ]
    else:
        fn = [
            "def logits(texts):",
            f'    """Logits [n, {n}] of n texts: each text\'s embedding -> Linear(hidden, '
            f'{n})."""',
            f"    ids = tokenizer(clean(texts), truncation=True, max_length={max_len})"
            '["input_ids"]',
            '    w, b = head["classifier.weight"].float(), head["classifier.bias"].float()',
            "    return F.linear(embed(ids).to(w.device), w, b)",
        ]
    return ("\n".join(lines) + "\n\n\n" + "\n".join(embed) + "\n\n\n" + "\n".join(fn) + "\n")
