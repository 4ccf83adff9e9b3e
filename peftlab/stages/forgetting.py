"""What each run lost of the base model's other abilities: off-task probes and held-out LM loss.

    peftlab forgetting quickstart

Drift says how far representations moved; this stage says whether anything the base could do was
lost (Biderman et al. 2024, "LoRA learns less and forgets less"). Settings: the spec's
`forgetting` section (`spec.ForgettingSpec`); the arithmetic lives in `peftlab.forgetting_measures`.

Off-task linear probes (every model). The probe tasks are `forgetting.tasks` (registered tasks or
the user's files), else the study's own tasks. For each probe task, probe training examples are a
seeded subsample (`tasks.subsample`, `probe_seed`) of its train split and probe test examples one
of its eval split, the same examples in the same order for every model. Examples whose text also
occurs in the train or eval split of another study task are removed first (none in GLUE; a user
file could repeat them), so no run is ever probed on text it was tuned or evaluated on. The base
and every finished run are probed on every probe task except the one the run was tuned on (checked
again, against the run's own training rows, before each run is measured). Representations are
pooled as the represent stage pools them (`represent.pooling`, `extraction.extract`) at the
layers of `forgetting.layers` (default: the middle and the last block); each model gets its own
probe (`forgetting_measures.fit_probe`: standardised logistic regression, C by stratified cross-validation
on the probe training examples only). For speed, examples are run in order of length and a PEFT
adapter is merged into its base where the method allows it (the same function, to float
rounding); results are stored in probe order.

Held-out LM loss (decoder models). The text is `forgetting.text_file` (one text per line), else the
evaluation sentences (text_a and text_b) of the study tasks a run was not tuned on and of the
probe tasks (`forgetting.tasks`) outside the study; `lm_texts` of
each source, seeded; texts of fewer than two tokens predict nothing and are dropped. The LM head is
the BASE model's (`AutoModelForCausalLM` on the base checkpoint, `get_output_embeddings()`: its
`lm_head`, or the input embeddings where the checkpoint ties them); each model's backbone reads the
text and that head scores it (`forgetting_measures.lm_losses`). A checkpoint without an LM head (a
sequence-classification checkpoint with untied embeddings) and every encoder (MiniLM has no LM
head) get a `skipped` record with the reason.

Generation studies (every task of kind `generation`, `generation.is_generative`): the base and
every run are loaded as causal LMs (`generation.load_causal_lm`; a run's adapter on its base,
merged where the method allows it, or the fully fine-tuned model). A generation run is a language
model: its LM loss goes through its OWN LM head (`get_output_embeddings()`; for full fine-tuning
of a model with tied embeddings, the trained embeddings), the base's through the base's, so the
change is that of the model a user would deploy. Probes read the causal LM's backbone (the same
hidden states, without the [seq, vocab] logits). The study's own generation tasks have no
classes and their prompts are the runs' tuning data, so the probe tasks and the held-out text
come from `forgetting.tasks` (e.g. GLUE tasks: their sentences are news, Wikipedia and movie
text) or `forgetting.text_file`; without either the stage says so in one line and writes only
`skipped` records. `lm_settings` carries `lm_head: "own"` for these studies.

Records, table `forgetting`, written and read through `records.ForgettingRecord` (every record
carries `measure`, `status` ("done" | "skipped"),
`reason` (why skipped, else None), `model_key` ("base" or the run id), `run_id`, `task` (the
run's tuning task), `method`, `method_type`, `seed` (all None for the base), `settings`, `source`
(base weights' revision, or the run's artifact + finish time), `base_source` and `provenance`):

- `probe/<probe task>/L<layer:03d>/<model key>`, measure "probe": `probe_task`,
  `probe_task_source` ("study" | "registered" | "files"), `layer` (hidden-state index: 0 =
  embeddings, i = block i), `layer_name`, `n_layers`, `pooling`, `n_train`, `n_test`,
  `n_classes`, `majority_rate` (test accuracy of the training split's majority class),
  `excluded_overlap` (examples dropped because their text is in another study task's data),
  `probe_hash` (of the probe train + test examples), `accuracy` (this model's probe on the test
  examples, a fraction), `c` (C chosen by cross-validation), `cv_accuracy`, `cv_scores` (mean
  held-out accuracy per C of `c_grid`, ascending), `cv_folds`, `converged`, `correct` (0/1 per
  test example, in test order); for a run also `base_accuracy`, `base_c`, `difference` (run
  accuracy minus base accuracy: negative = forgotten), `ci_low`, `ci_high`, `confidence`,
  `ci_method` (paired percentile bootstrap over test examples), `bootstrap_samples`. The base
  record also holds `train_rows` and `test_rows` (row ids in the probe task's splits).
  `extract_time_s` and `fit_time_s` are the seconds this model spent on the probe task.
- `probe/<probe task>/skipped`: a probe task that cannot be probed (a regression task among the
  study's tasks; "none" when no run has a probe task), with the reason;
  `probe/none/<run id>`: a run whose only probe task is its own tuning task, with the reason.
- `lm_loss/<model key>`, measure "lm_loss": `sources` (the held-out text: "file:<name>" or the
  task names), `n_texts`, `n_tokens` (predicted tokens), `dropped_texts` (under two tokens),
  `max_length`, `text_hash`, `head` (where the LM head came from); for the base `loss` (nats per
  token, token-weighted over all sources) and `per_source` {source: {n_texts, n_tokens, loss,
  sums, tokens}} (per-text loss sums in nats and token counts, which each run's interval pairs
  with); for a run `loss_before` (the base on the run's sources), `loss_after` (the run's
  backbone through the base's head), `difference` (after - before, nats per token: positive =
  forgotten), `ci_low`, `ci_high`, `confidence`, `ci_method` (paired bootstrap over texts),
  `bootstrap_samples`, `per_source` {source: {n_texts, n_tokens, loss_before, loss_after}},
  `time_s`. Skipped (encoder, no LM head, no held-out text): `reason` only.

Idempotent: a unit (one model on one probe task, or one model's LM loss) whose record matches the
current settings, probe examples or texts, model source and base source is skipped, so a rerun
loads no model. Records of runs or probe tasks the spec no longer implies are deleted.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.artifacts import base_source, run_source
from peftlab.errors import DataError, ModelError, PeftlabError, SpecError
from peftlab.extraction import BASE_KEY, extract, layer_names, probe_hash, resolve_pooling
from peftlab.forgetting_measures import (
    LMLosses,
    fit_probe,
    lm_loss_difference,
    lm_losses,
    majority_rate,
    paired_accuracy_difference,
    probe_correct,
    resolve_layers,
)
from peftlab.records import ForgettingRecord, write
from peftlab.store import provenance

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.context import Context
    from peftlab.plan import Study
    from peftlab.runs import RunConfig
    from peftlab.spec import TaskSpec
    from peftlab.tasks import TaskDef

TABLE = "forgetting"


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _text_key(df: pd.DataFrame) -> list[str]:
    """One string per example: its text(s), for overlap checks between tasks."""
    a = df["text_a"].astype(str)
    if "text_b" in df.columns and not df["text_b"].isna().all():
        return (a + "\t" + df["text_b"].astype(str)).tolist()
    return a.tolist()


# ----------------------------------------------------------------------------- probe tasks


@dataclass
class ProbeTask:
    """One probe task: its definition, where it comes from, and its probe examples."""

    name: str
    task: TaskDef
    origin: str  # "study" | "registered" | "files"
    spec: TaskSpec | None  # the forgetting.tasks entry (None: a study task by default)
    n_train: int
    n_test: int
    train: Any = None  # DataFrames, filled by `load_probe_examples`
    test: Any = None
    excluded: int = 0
    hash: str = ""
    encoded: dict[str, Any] = field(default_factory=dict)


def probe_tasks(ctx: Context) -> tuple[list[ProbeTask], list[tuple[str, str]]]:
    """(probe tasks, [(task name, reason it cannot be probed)]) from the spec."""
    from peftlab.tasks import get_task, make_file_task

    cfg = ctx.study.spec.forgetting
    study_tasks = {t.name: t for t in ctx.study.spec.tasks}
    out: list[ProbeTask] = []
    skipped: list[tuple[str, str]] = []
    if cfg.tasks is None:
        for name in study_tasks:
            task = ctx.data.task(name)
            if not task.has_classes:
                skipped.append((name, f"{name} is a {task.kind} task: a logistic probe needs "
                                      "classes"))
                continue
            out.append(ProbeTask(name, task, "study", None, cfg.probe_train_samples,
                                 cfg.probe_test_samples))
        return out, skipped
    for i, t in enumerate(cfg.tasks):
        n_train = t.train_samples or cfg.probe_train_samples
        n_test = t.eval_samples or cfg.probe_test_samples
        if t.name in study_tasks:
            if t.files is not None:
                raise SpecError(f"{ctx.study.where(f'forgetting.tasks[{i}].name')}: {t.name!r} "
                                "is a task of the study; give the probe task from files "
                                "another name")
            out.append(ProbeTask(t.name, ctx.data.task(t.name), "study", t, n_train, n_test))
        elif t.files is not None:
            text_columns = tuple(c for c in ("text_a", "text_b") if c in (t.columns or {}))
            task = make_file_task(t.name, tuple(t.label_names or ()), None, text_columns)
            out.append(ProbeTask(t.name, task, "files", t, n_train, n_test))
        else:
            out.append(ProbeTask(t.name, get_task(t.name), "registered", t, n_train, n_test))
    return out, skipped


def _split(ctx: Context, pt: ProbeTask, split: str) -> pd.DataFrame:
    """The whole split of a probe task (not the study's subsample)."""
    from peftlab.tasks import load_split

    if pt.origin == "study":
        return ctx.data.split(pt.name, split, subsample=False)
    assert pt.spec is not None
    if pt.origin == "files":
        return load_split(pt.task, split, source="files", files=dict(pt.spec.files or {}),
                          columns=dict(pt.spec.columns or {}))
    source, folder = ctx.study.data_source()
    return load_split(pt.task, split, source=source, glue_dir=folder,
                      revision=ctx.study.spec.data.hub_revision)


def load_probe_examples(ctx: Context, pt: ProbeTask) -> None:
    """Fill pt.train / pt.test: seeded subsamples of the task's train / eval split, without any
    example whose text occurs in another study task's train or eval split."""
    from peftlab.tasks import subsample

    cfg = ctx.study.spec.forgetting
    others: set[str] = set()
    for t in ctx.study.spec.tasks:
        if t.name != pt.name or pt.origin != "study":
            for split in ("train", "eval"):
                others.update(_text_key(ctx.data.split(t.name, split, subsample=False)))
    frames = {}
    excluded = 0
    for split, n in (("train", pt.n_train), ("eval", pt.n_test)):
        df = _split(ctx, pt, split)
        keep = np.array([k not in others for k in _text_key(df)], dtype=bool)
        excluded += int((~keep).sum())
        frames[split] = subsample(df[keep].reset_index(drop=True), n, cfg.probe_seed)
    pt.train, pt.test, pt.excluded = frames["train"], frames["eval"], excluded
    pt.hash = _digest([probe_hash(pt.train), probe_hash(pt.test)])


def check_probe_data(ctx: Context) -> None:
    """Load every probe task from outside the study once (DataError when its folder or files
    are missing). The data stage of a generation study calls it: its probe tasks (GLUE) live in
    another folder than its own data (E2E), so a wrong --data-dir fails before training, not
    after it."""
    if not ctx.study.spec.forgetting.enabled:
        return
    for pt in probe_tasks(ctx)[0]:
        if pt.origin != "study":
            for split in ("train", "eval"):
                _split(ctx, pt, split)


def check_off_task(ctx: Context, rc: RunConfig, pt: ProbeTask) -> None:
    """Refuse to probe a run on its own tuning task or on any text of its training rows."""
    if pt.name == rc.task:
        raise PeftlabError(f"internal: run {rc.run_id} would be probed on its own task {rc.task}")
    tuned = set(_text_key(ctx.data.split(rc.task, "train")))
    seen = sum(k in tuned for k in _text_key(pt.train)) + sum(k in tuned for k in
                                                               _text_key(pt.test))
    if seen:
        raise PeftlabError(f"internal: {seen} probe examples of {pt.name} are in the training "
                           f"data of run {rc.run_id}")


# ----------------------------------------------------------------------------- LM text


@dataclass
class TextSource:
    """One source of held-out text for the LM loss."""

    name: str  # "file:<file name>" or a study task's name
    texts: list[str]
    encoded: Any = None
    dropped: int = 0


def text_sources(ctx: Context) -> list[TextSource]:
    """Held-out texts: the spec's text file, or the evaluation sentences of every study task
    and of every probe task that is not one."""
    cfg = ctx.study.spec.forgetting
    if cfg.text_file is not None:
        path = Path(cfg.text_file)
        where = ctx.study.where("forgetting.text_file")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise DataError(f"{where}: {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{where}: cannot read {path} as UTF-8 text: {e}") from None
        texts = [line.strip() for line in lines if line.strip()]
        if not texts:
            raise DataError(f"{where}: {path} holds no text (one text per line expected)")
        return [TextSource(f"file:{path.name}", _take(texts, cfg.lm_texts, cfg.probe_seed))]
    out = []
    frames = [(t.name, ctx.data.split(t.name, "eval", subsample=False))
              for t in ctx.study.spec.tasks]
    # ... and the probe tasks that are not study tasks: a one-task study probed elsewhere gets
    # its LM loss on the probe tasks' sentences, which no run was tuned on.
    study_names = {name for name, _ in frames}
    frames += [(pt.name, _split(ctx, pt, "eval")) for pt in probe_tasks(ctx)[0]
               if pt.name not in study_names]
    for name, df in frames:
        texts = df["text_a"].astype(str).tolist()
        if "text_b" in df.columns and not df["text_b"].isna().all():
            texts += df["text_b"].astype(str).tolist()
        out.append(TextSource(name, _take([s for s in texts if s.strip()], cfg.lm_texts,
                                          cfg.probe_seed)))
    return out


def _take(texts: list[str], n: int | None, seed: int) -> list[str]:
    """n texts chosen with numpy default_rng(seed), in their original order (all when n is None
    or not smaller)."""
    if n is None or n >= len(texts):
        return list(texts)
    chosen = np.sort(np.random.default_rng(seed).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in chosen]


def _encode_texts(source: TextSource, tokenizer: Any, max_length: int) -> Any:
    import pandas as pd

    from peftlab.encode import encode_frame

    if source.encoded is None:
        ds = encode_frame(pd.DataFrame({"text_a": source.texts, "label": 0}), tokenizer,
                          max_length=max_length)
        keep = [i for i, n in enumerate(ds["length"]) if n >= 2]
        source.dropped = len(ds) - len(keep)
        source.encoded = ds.select(keep)
    return source.encoded


def load_lm_head(ctx: Context) -> tuple[Any | None, str]:
    """(the base model's LM head on the stage's device, where it came from) or (None, why not)."""
    import torch
    from transformers import AutoModelForCausalLM

    from peftlab.models import load_config, model_dir, model_family, resolve_model

    m = ctx.study.spec.model
    resolved = resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    config = load_config(resolved, trust_remote_code=m.trust_remote_code)
    if model_family(config) != "decoder":
        return None, (f"{m.name} is an encoder ({config.model_type}) with no causal LM head: "
                      "the held-out LM loss applies to decoder models only")
    folder = model_dir(resolved)
    where = str(folder) if folder is not None else resolved.source
    extra = {"revision": resolved.revision} if folder is None and resolved.revision else {}
    try:
        lm, info = AutoModelForCausalLM.from_pretrained(
            where, dtype=torch.float32, use_safetensors=True, output_loading_info=True,
            trust_remote_code=m.trust_remote_code, **extra)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load {resolved.describe()} as a causal LM for its LM head: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                         ) from err
    head = lm.get_output_embeddings()
    names = [] if head is None else [n for n, p in lm.named_parameters(remove_duplicate=False)
                                     if any(p is q for q in head.parameters())]
    missing = [k for k in info.get("missing_keys", []) if k in names]
    if head is None or missing:
        return None, (f"{resolved.describe()} holds no LM head ({', '.join(missing) or 'none'} "
                      "missing from its checkpoint, embeddings not tied): a sequence-"
                      "classification checkpoint cannot score text")
    tied = getattr(lm.config.get_text_config(), "tie_word_embeddings", False)
    what = ("the base's input embeddings (tied LM head)" if tied else
            f"the base's {names[0] if names else 'LM head'}")
    head = head.to(ctx.device).eval()
    del lm
    return head, what


# ----------------------------------------------------------------------------- the stage


def _probe_key(task: str, layer: int, model_key: str) -> str:
    return f"probe/{task}/L{layer:03d}/{model_key}"


def _lm_key(model_key: str) -> str:
    return f"lm_loss/{model_key}"


def _identity(rc: RunConfig | None, key: str) -> dict[str, Any]:
    return {"model_key": key, "run_id": None if rc is None else rc.run_id,
            "task": None if rc is None else rc.task, "method": None if rc is None else rc.method,
            "method_type": None if rc is None else rc.method_type,
            "seed": None if rc is None else rc.seed}


def _up_to_date(ctx: Context, key: str, expected: dict[str, Any]) -> bool:
    rec = ctx.store.get(TABLE, key)
    return rec is not None and all(rec.get(k) == v for k, v in expected.items())


def _put_skip(ctx: Context, plan: _Plan, key: str, rec: dict[str, Any]) -> None:
    """Write a `skipped` record unless the same one (all but its provenance) is stored."""
    plan.keys.add(key)
    rec = {**rec, "measure": rec.get("measure", "probe"), "status": "skipped",
           "base_source": plan.base_source}
    if not _up_to_date(ctx, key, rec):
        _put(ctx, [(key, {**rec, "provenance": provenance()})])


def _put(ctx: Context, items: list[tuple[str, dict[str, Any]]]) -> None:
    """Write records through `ForgettingRecord` (a field the schema does not know fails here,
    not in a reader), in one transaction; each key must be the one the record type derives."""
    recs = [ForgettingRecord(**rec) for _, rec in items]
    for (key, _), rec in zip(items, recs, strict=True):
        if rec.key != key:
            raise PeftlabError(f"internal: forgetting record {key!r} derives key {rec.key!r}")
    write(ctx.store, recs)


@dataclass
class _Plan:
    """Everything the stage decides before loading a model."""

    pooling: str
    family: str
    n_layers: int  # hidden states a model returns: embeddings + blocks
    layers: list[int]
    probe_settings: dict[str, Any]
    lm_settings: dict[str, Any]
    base_source: str
    tasks: list[ProbeTask]
    sources: list[TextSource]
    planned: list[RunConfig]
    generative: bool = False  # a generation study: causal LMs, each scored by its own LM head
    head: Any = None
    head_what: str | None = None
    head_loaded: bool = False
    keys: set[str] = field(default_factory=set)  # every record the current spec implies


def make_plan(ctx: Context) -> _Plan:
    """Settings, layers, probe tasks (with their examples) and held-out text of the study."""
    from peftlab.models import load_config, model_family, resolve_model

    spec = ctx.study.spec
    cfg, m = spec.forgetting, spec.model
    config = load_config(resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision),
                         trust_remote_code=m.trust_remote_code)
    n_layers = int(config.get_text_config().num_hidden_layers) + 1
    try:
        layers = resolve_layers(list(cfg.layers), n_layers)
    except PeftlabError as e:
        raise SpecError(f"{ctx.study.where('forgetting.layers')}: {e}") from None
    pooling = resolve_pooling(spec.represent.pooling, config)
    family = model_family(config)
    model_json = m.model_dump(mode="json")
    from peftlab.generation import is_generative

    generative = is_generative(ctx)
    tasks, skipped = probe_tasks(ctx)
    planned = ctx.study.runs()
    # The base is probed on the tasks some planned run is probed on (not its own task).
    tasks = [pt for pt in tasks if any(rc.task != pt.name for rc in planned)]
    plan = _Plan(
        pooling=pooling, family=family, n_layers=n_layers, layers=layers,
        probe_settings={"pooling": pooling, "layers": layers, "probe_seed": cfg.probe_seed,
                        "cv_folds": cfg.cv_folds, "c_grid": sorted(cfg.c_grid),
                        "bootstrap_samples": cfg.bootstrap_samples,
                        "confidence": cfg.confidence, "model": model_json},
        lm_settings={"max_length": cfg.lm_max_length or m.max_length,
                     "bootstrap_samples": cfg.bootstrap_samples, "confidence": cfg.confidence,
                     "probe_seed": cfg.probe_seed, "model": model_json,
                     **({"lm_head": "own"} if generative else {})},
        base_source=base_source(ctx), tasks=tasks,
        sources=text_sources(ctx) if family == "decoder" else [], planned=planned,
        generative=generative)
    if generative:  # every model is scored by its own LM head: none to load beforehand
        tied = getattr(config.get_text_config(), "tie_word_embeddings", False)
        plan.head_loaded = True
        plan.head_what = ("each model's own LM head" + (" (tied to its input embeddings)"
                                                        if tied else ""))
    if not tasks:
        skipped.append(("none", "no off-task probe task: every probe task is the tuning task "
                                "of every run (a one-task study?); list probe tasks in "
                                "forgetting.tasks"))
    for name, reason in skipped:
        _put_skip(ctx, plan, f"probe/{name}/skipped", {
            **_identity(None, BASE_KEY), "reason": reason, "probe_task": name,
            "settings": plan.probe_settings, "source": None})
    for pt in tasks:
        load_probe_examples(ctx, pt)
    return plan


def unconfigured(study: Study) -> str | None:
    """Why the spec gives this stage nothing to do (None: it does). `peftlab forgetting SPEC`
    then refuses to run; the pipeline skips the stage."""
    if not study.spec.forgetting.enabled:
        return f"{study.where('forgetting.enabled')}: false (the stage is turned off)"
    return None


def run(ctx: Context) -> None:
    """Probe and score the base and every finished run; write the `forgetting` table."""
    if not ctx.study.spec.forgetting.enabled:
        ctx.console.print("forgetting: off (forgetting.enabled: false)")
        return
    t0 = time.perf_counter()
    plan = make_plan(ctx)
    if plan.generative and not plan.tasks and not any(
            s.name not in {t.name for t in ctx.study.spec.tasks} for s in plan.sources):
        ctx.console.print("forgetting: nothing to measure in this generation study: no probe task "
                          "with classes and no held-out text other than the runs' own task; "
                          "list GLUE tasks in forgetting.tasks or set forgetting.text_file")
    models: list[tuple[str, RunConfig | None, str]] = [(BASE_KEY, None, plan.base_source)] + [
        (rc.run_id, rc, run_source(ctx, rc.run_id)) for rc in ctx.finished_runs()]
    counts = {"measured": 0, "up to date": 0}
    from peftlab.logs import track  # progress with an ETA; each model's loads labelled in log.txt

    for key, rc, source in track(ctx.console, "forgetting", models, label=lambda m: m[0]):
        _one_model(ctx, plan, key, rc, source, counts)  # the base first: runs compare with it
    stale = [k for k in ctx.store.keys(TABLE) if k not in plan.keys]
    for k in stale:
        ctx.store.delete(TABLE, k)
    ctx.console.print(f"forgetting: {counts['measured']} units measured, "
                      f"{counts['up to date']} up to date"
                      + (f", {len(stale)} stale records dropped" if stale else "")
                      + f" ({time.perf_counter() - t0:.1f} s)")


def _one_model(ctx: Context, plan: _Plan, key: str, rc: RunConfig | None, source: str,
               counts: dict[str, int]) -> None:
    """Every probe task and the LM loss of one model; the model is loaded only if needed."""
    tasks = [pt for pt in plan.tasks if rc is None or pt.name != rc.task]
    if rc is not None:
        for pt in tasks:
            check_off_task(ctx, rc, pt)
        if not tasks and plan.tasks:
            _put_skip(ctx, plan, f"probe/none/{key}", {
                **_identity(rc, key), "probe_task": None, "settings": plan.probe_settings,
                "source": source,
                "reason": f"no off-task probe task: the run was tuned on {rc.task}, the only "
                          "probe task; list another in forgetting.tasks"})
    expected = {"settings": plan.probe_settings, "source": source,
                "base_source": plan.base_source, "status": "done"}
    todo_probe = []
    for pt in tasks:
        keys = [_probe_key(pt.name, layer, key) for layer in plan.layers]
        plan.keys.update(keys)
        want = [{**expected, "probe_hash": pt.hash,
                 **({} if rc is None else {"base_result": _base_result(ctx, pt.name, layer)})}
                for layer in plan.layers]
        if all(_up_to_date(ctx, k, w) for k, w in zip(keys, want, strict=True)):
            counts["up to date"] += 1
        else:
            todo_probe.append(pt)
    lm_sources = _lm_sources(ctx, plan, key, rc, source)
    if lm_sources is not None and not plan.generative:
        _head(ctx, plan)
        if plan.head is None:
            _write_lm_skip(ctx, plan, key, rc, source, plan.head_what or "no LM head",
                           text_hash=_text_hash(lm_sources))
            lm_sources = None
    if not todo_probe and lm_sources is None:
        return
    tokenizer, model = _load(ctx, rc, plan.generative)
    who = "the base model" if rc is None else f"run {rc.run_id}"
    for pt in todo_probe:
        _probe_one(ctx, plan, pt, key, rc, source, tokenizer, model, who)
        counts["measured"] += 1
    if lm_sources is not None:
        _lm_one(ctx, plan, lm_sources, key, rc, source, tokenizer, model, who)
        counts["measured"] += 1
    del model


def _base_result(ctx: Context, task: str, layer: int) -> str | None:
    """Digest of the base's probe outcome a run's record was compared with (None if missing):
    a run's record is stale when the base's was measured again with another outcome."""
    rec = ctx.store.get(TABLE, _probe_key(task, layer, BASE_KEY))
    return None if rec is None else _digest([rec.get("correct"), rec.get("c")])


def _base_lm_result(ctx: Context) -> str | None:
    rec = ctx.store.get(TABLE, _lm_key(BASE_KEY))
    return None if rec is None else _digest(rec.get("per_source"))


def _load(ctx: Context, rc: RunConfig | None, generative: bool = False) -> tuple[Any, Any]:
    from peftlab.artifacts import ModelLoader, load_run

    if rc is not None:
        from peftlab.artifacts import merge
        from peftlab.methods import method_for

        tokenizer, model = load_run(ctx, rc.run_id)
        method = method_for(rc.method_type, rc.params)
        if method.is_peft and method.supports_merge:
            # The adapter folded into the weights computes the same function (to float
            # rounding) faster: unmerged LoRA on every linear layer of MiniLM extracted about
            # 2x slower than the full runs in the quickstart (measured, CPU).
            model = merge(model).eval()
        return tokenizer, model
    if generative:  # the causal LM itself, LM head included (it scores the held-out text)
        from peftlab.generation import load_causal_lm

        model, tokenizer = load_causal_lm(ctx.study.spec.model, ctx.device)
        return tokenizer, model
    # The base gets a fresh head (seeded) for the study's first task; the probe reads hidden
    # states and the LM loss reads the backbone, so the head plays no part.
    first = ctx.study.runs()[0]
    task = ctx.data.task(first.task)
    loader = ModelLoader(first.model, ctx.device)
    model = loader.base(task.num_labels, task.head_label_names, 0)
    model.eval()
    return loader.tokenizer, model


def _encoded(pt: ProbeTask, split: str, tokenizer: Any, ctx: Context) -> Any:
    from peftlab.encode import encode_frame

    if split not in pt.encoded:
        m = ctx.study.spec.model
        pt.encoded[split] = encode_frame(pt.train if split == "train" else pt.test, tokenizer,
                                         max_length=m.max_length, pair_template=m.pair_template)
    return pt.encoded[split]


def _extract_by_length(model: Any, tokenizer: Any, dataset: Any, **kwargs: Any) -> np.ndarray:
    """`extraction.extract` over the examples in order of length, returned in dataset
    order: float32 [layers, n, hidden]. Batches of similar lengths carry little padding: 128
    SST-2 sentences hold 1,869 MiniLM tokens, padded to 6,144 in batches of 32 in dataset order
    and to 2,784 in length order. Pooling never reads padding, so only float rounding differs."""
    order = np.argsort(np.asarray(dataset["length"]), kind="stable")
    reps = extract(model, tokenizer, dataset.select(order.tolist()), **kwargs)
    out = np.empty_like(reps)
    out[:, order] = reps
    return out


def _features_model(model: Any, plan: _Plan) -> Any:
    """What the probe reads hidden states from: a causal LM's backbone (the same hidden states
    without [batch, seq, vocab] logits: SmolLM2's 49,152-token vocabulary makes those hundreds
    of MB a batch), unless an adapter is still unmerged (its model's forward may add inputs, as
    prompt-based methods do); any other model itself."""
    from peftlab.forgetting_measures import backbone

    if plan.generative and not callable(getattr(model, "get_base_model", None)):
        return backbone(model)
    return model


def _probe_one(ctx: Context, plan: _Plan, pt: ProbeTask, key: str, rc: RunConfig | None,
               source: str, tokenizer: Any, model: Any, who: str) -> None:
    cfg = ctx.study.spec.forgetting
    t0 = time.perf_counter()
    reps = {split: _extract_by_length(_features_model(model, plan), tokenizer,
                                      _encoded(pt, split, tokenizer, ctx),
                                      pooling=plan.pooling, batch_size=cfg.batch_size,
                                      device=ctx.device)
            for split in ("train", "eval")}
    extract_s = time.perf_counter() - t0
    n_layers = reps["train"].shape[0]
    if n_layers != plan.n_layers:
        raise ModelError(f"forgetting, {who}: {n_layers} hidden states, but the base model's "
                         f"config implies {plan.n_layers} (embeddings + blocks)")
    names = layer_names(n_layers)
    y_train = pt.train["label"].to_numpy()
    y_test = pt.test["label"].to_numpy()
    base_recs = {}
    if rc is not None:
        for layer in plan.layers:
            base = ctx.store.get(TABLE, _probe_key(pt.name, layer, BASE_KEY))
            if base is None or base.get("probe_hash") != pt.hash:
                raise PeftlabError(f"internal: the base probe of {pt.name}, layer {layer}, is "
                                   "missing; it is measured before every run")
            base_recs[layer] = base
    items = []
    t1 = time.perf_counter()
    for layer in plan.layers:
        x_train, x_test = reps["train"][layer], reps["eval"][layer]
        for x, split in ((x_train, "train"), (x_test, "eval")):
            bad = int(np.count_nonzero(~np.isfinite(x)))
            if bad:
                raise PeftlabError(f"forgetting, {who}, {pt.name} {split}, layer {layer}: {bad} "
                                   "NaN or infinite values in the pooled hidden states")
        try:
            probe = fit_probe(x_train, y_train, c_grid=list(cfg.c_grid), folds=cfg.cv_folds,
                              seed=cfg.probe_seed)
        except DataError as e:
            raise DataError(f"forgetting, probe task {pt.name}: {e}; raise "
                            "forgetting.probe_train_samples") from None
        correct = probe_correct(probe, x_test, y_test)
        rec: dict[str, Any] = {
            **_identity(rc, key),
            "measure": "probe", "status": "done", "reason": None,
            "probe_task": pt.name, "probe_task_source": pt.origin,
            "layer": layer, "layer_name": names[layer], "n_layers": n_layers,
            "pooling": plan.pooling, "n_train": len(y_train), "n_test": len(y_test),
            "n_classes": len(pt.task.label_names or ()),
            "majority_rate": majority_rate(y_train, y_test),
            "excluded_overlap": pt.excluded, "probe_hash": pt.hash,
            "accuracy": float(correct.mean()), "c": probe.c, "cv_accuracy": probe.cv_accuracy,
            "cv_scores": probe.cv_scores, "cv_folds": probe.folds, "converged": probe.converged,
            "correct": correct.astype(int).tolist(),
            "settings": plan.probe_settings, "source": source, "base_source": plan.base_source,
        }
        if rc is None:
            rec["train_rows"] = [int(r) for r in pt.train["row"]]
            rec["test_rows"] = [int(r) for r in pt.test["row"]]
        else:
            base = base_recs[layer]
            iv = paired_accuracy_difference(correct, np.asarray(base["correct"], dtype=bool),
                                            n_resamples=cfg.bootstrap_samples,
                                            seed=cfg.probe_seed, confidence=cfg.confidence)
            rec.update(base_result=_digest([base.get("correct"), base.get("c")]),
                       base_accuracy=base["accuracy"], base_c=base["c"],
                       difference=iv.estimate, ci_low=iv.ci_low, ci_high=iv.ci_high,
                       confidence=iv.confidence, ci_method=iv.method,
                       bootstrap_samples=cfg.bootstrap_samples)
        items.append((_probe_key(pt.name, layer, key), rec))
    fit_s = time.perf_counter() - t1
    stamp = provenance(stage_device=ctx.device)
    for _, rec in items:
        rec.update(extract_time_s=extract_s, fit_time_s=fit_s, provenance=stamp)
    _put(ctx, items)  # every layer of the unit lands, or none
    plan.keys.update(k for k, _ in items)
    accs = ", ".join(f"{names[r['layer']]} {r['accuracy']:.3f}" +
                     (f" ({r['difference']:+.3f})" if rc is not None else "")
                     for _, r in items)
    ctx.console.print(f"forgetting {pt.name}: {who}: probe accuracy {accs} "
                      f"({extract_s:.1f} s extract, {fit_s:.1f} s fit)")


# ----------------------------------------------------------------------------- LM loss


def _text_hash(sources: list[TextSource]) -> str:
    return _digest([[s.name, s.texts] for s in sources])


def _lm_sources(ctx: Context, plan: _Plan, key: str, rc: RunConfig | None, source: str
                ) -> list[TextSource] | None:
    """The text sources whose LM loss the model still needs, or None (up to date or skipped)."""
    lm_key = _lm_key(key)
    plan.keys.add(lm_key)
    if plan.family != "decoder":
        m = ctx.study.spec.model
        _write_lm_skip(ctx, plan, key, rc, source,
                       f"{m.name} is an encoder with no causal LM head: the held-out LM loss "
                       "applies to decoder models only", text_hash=None)
        return None
    sources = _sources_for(plan, rc)
    if not sources:
        _write_lm_skip(ctx, plan, key, rc, source,
                       "no held-out text: no study or probe task other than the run's own; set "
                       "forgetting.text_file or forgetting.tasks", text_hash=None)
        return None
    expected = {"settings": plan.lm_settings, "text_hash": _text_hash(sources),
                "source": source, "base_source": plan.base_source}
    # A record skipped for want of an LM head is kept while its inputs are unchanged (no
    # reload of the checkpoint to find the head missing again); a run's measured record also
    # needs the base's outcome it was compared with.
    skipped = _up_to_date(ctx, lm_key, {**expected, "status": "skipped"})
    if rc is not None:
        expected["base_result"] = _base_lm_result(ctx)
    return None if skipped or _up_to_date(ctx, lm_key, {**expected, "status": "done"}) else sources


def _sources_for(plan: _Plan, rc: RunConfig | None) -> list[TextSource]:
    """A run's held-out text: every source but its own tuning task's sentences; the base's:
    every source some planned run reads."""
    if rc is not None:
        return [s for s in plan.sources if s.name != rc.task]
    return [s for s in plan.sources if any(r.task != s.name for r in plan.planned)]


def _head(ctx: Context, plan: _Plan) -> None:
    if not plan.head_loaded:
        plan.head, plan.head_what = load_lm_head(ctx)
        plan.head_loaded = True


def _write_lm_skip(ctx: Context, plan: _Plan, key: str, rc: RunConfig | None, source: str,
                   reason: str, *, text_hash: str | None) -> None:
    _put_skip(ctx, plan, _lm_key(key), {
        **_identity(rc, key), "measure": "lm_loss", "reason": reason,
        "settings": plan.lm_settings, "text_hash": text_hash, "source": source})


def _lm_one(ctx: Context, plan: _Plan, sources: list[TextSource], key: str,
            rc: RunConfig | None, source: str, tokenizer: Any, model: Any, who: str) -> None:
    cfg = ctx.study.spec.forgetting
    max_length = plan.lm_settings["max_length"]
    t0 = time.perf_counter()
    head = model.get_output_embeddings() if plan.generative else plan.head
    losses = {s.name: lm_losses(model, head, _encode_texts(s, tokenizer, max_length),
                                tokenizer, batch_size=cfg.lm_batch_size, device=ctx.device)
              for s in sources}
    seconds = time.perf_counter() - t0
    after = LMLosses(np.concatenate([losses[s.name].sums for s in sources]),
                     np.concatenate([losses[s.name].tokens for s in sources]))
    rec: dict[str, Any] = {
        **_identity(rc, key), "measure": "lm_loss", "status": "done", "reason": None,
        "sources": [s.name for s in sources], "n_texts": int(after.tokens.size),
        "n_tokens": after.n_tokens, "dropped_texts": sum(s.dropped for s in sources),
        "max_length": max_length, "text_hash": _text_hash(sources),
        "head": plan.head_what, "settings": plan.lm_settings, "source": source,
        "base_source": plan.base_source, "time_s": seconds,
        "provenance": provenance(stage_device=ctx.device),
    }
    if rc is None:
        rec["loss"] = after.mean
        rec["per_source"] = {n: {"n_texts": int(v.tokens.size), "n_tokens": v.n_tokens,
                                 "loss": v.mean, "sums": v.sums.tolist(),
                                 "tokens": v.tokens.tolist()} for n, v in losses.items()}
        ctx.console.print(f"forgetting LM loss: {who}: {after.mean:.4f} nats/token on "
                          f"{after.n_tokens} tokens ({seconds:.1f} s)")
    else:
        base = ctx.store.get(TABLE, _lm_key(BASE_KEY))
        if base is None or base.get("status") != "done" or any(
                s.name not in base["per_source"] for s in sources):
            raise PeftlabError("internal: the base model's LM loss is missing; it is measured "
                               "before every run")
        per = base["per_source"]
        before = LMLosses(np.concatenate([np.asarray(per[s.name]["sums"]) for s in sources]),
                          np.concatenate([np.asarray(per[s.name]["tokens"], dtype=np.int64)
                                          for s in sources]))
        iv = lm_loss_difference(after, before, n_resamples=cfg.bootstrap_samples,
                                seed=cfg.probe_seed, confidence=cfg.confidence)
        rec.update(base_result=_digest(per), loss_before=before.mean,
                   loss_after=after.mean, difference=iv.estimate,
                   ci_low=iv.ci_low, ci_high=iv.ci_high, confidence=iv.confidence,
                   ci_method=iv.method, bootstrap_samples=cfg.bootstrap_samples,
                   per_source={n: {"n_texts": int(v.tokens.size), "n_tokens": v.n_tokens,
                                   "loss_before": per[n]["loss"], "loss_after": v.mean}
                               for n, v in losses.items()})
        ctx.console.print(f"forgetting LM loss: {who}: {before.mean:.4f} -> {after.mean:.4f} "
                          f"nats/token ({iv.estimate:+.4f}, {seconds:.1f} s)")
    _put(ctx, [(_lm_key(key), rec)])
