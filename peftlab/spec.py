"""The study spec: one YAML file in, typed config objects out.

    peftlab validate studies/quickstart.yaml

A spec names the model, the tasks, the methods (each with its own hyperparameters), the seeds and the
settings of every stage. Validation happens at load time and every message names the file and the key
path. Hyperparameters resolve in this order, later wins:

    training (study-wide) < tasks[i].training < methods.<name>.training < overrides[j] (in order)

and method parameters: methods.<name> < overrides[j].params. Every (task, method, seed) resolves to a
`RunConfig` whose deterministic id (`run_id`) keys its results, so a rerun skips finished work and a
changed hyperparameter gives a new id instead of silently reusing an old result.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from peftlab.errors import PeftlabError, SpecError, format_validation


def _default_measures() -> list[str]:
    from peftlab.measures import default_measures

    return default_measures()


def _mode_names() -> list[str]:
    from peftlab.bench.modes import mode_names

    return mode_names()


class _Strict(BaseModel):
    # extra="forbid" turns a misspelt key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    """Which pretrained model to start from, and how to tokenise for it."""

    name: str  # alias (tinyllama, smollm2-135m, minilm), hub id, local directory or .gguf file
    gguf_file: str | None = None  # file name inside `name` when that is a hub repo/folder of GGUFs
    revision: str | None = None  # hub branch, tag or commit
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # weights while training/serving
    trust_remote_code: bool = False  # off unless the spec turns it on
    max_length: int = Field(128, gt=0)  # tokens; longer inputs are truncated
    # Joins sentence pairs for tokenizers without a separator token (Llama family). Tokenizers
    # with one (BERT) get the pair natively.
    pair_template: str = "{a}\n{b}"
    padding_side: Literal["right", "left"] | None = None  # None: the tokenizer's own

    @field_validator("pair_template")
    @classmethod
    def _template_has_both(cls, v: str) -> str:
        if "{a}" not in v or "{b}" not in v:
            raise ValueError("must contain both {a} and {b}")
        return v


class DataSpec(_Strict):
    """Where task data comes from and how much of it each run uses."""

    # auto: a local GLUE folder when one is given (here, --data-dir or PEFTLAB_DATA_DIR), else the hub
    source: Literal["auto", "hub", "glue_dir"] = "auto"
    glue_dir: Path | None = None  # folder in the original GLUE layout: <dir>/SST-2/train.tsv, ...
    hub_revision: str | None = None
    train_samples: int | None = Field(None, gt=0)  # seeded subsample; None = the whole split
    eval_samples: int | None = Field(None, gt=0)
    seed: int = 0  # subsampling seed, independent of the training seeds


class TaskSpec(_Strict):
    """A task of the study: a registered name, or the user's own files with a column mapping."""

    name: str
    files: dict[Literal["train", "eval"], Path] | None = None
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None  # None: from the suffix
    columns: dict[Literal["text_a", "text_b", "label"], str] | None = None
    label_names: list[str] | None = None
    metrics: list[str] | None = None
    regression: bool = False
    train_samples: int | None = Field(None, gt=0)  # overrides data.train_samples for this task
    eval_samples: int | None = Field(None, gt=0)
    training: dict[str, Any] = Field(default_factory=dict)  # overrides of `training` for this task

    @model_validator(mode="after")
    def _files_need_mapping(self) -> TaskSpec:
        if self.files is not None:
            if "train" not in self.files or "eval" not in self.files:
                raise ValueError("`files` needs both a `train` and an `eval` file")
            if not self.columns or "text_a" not in self.columns or "label" not in self.columns:
                raise ValueError("`columns` must map at least `text_a` and `label` for `files`")
            if not self.regression and not self.label_names:
                raise ValueError("`label_names` is required for a classification task from files")
        return self


class TrainingSpec(_Strict):
    """Training hyperparameters (Hugging Face Trainer semantics)."""

    epochs: float = Field(3.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # when set, wins over epochs (as in the Trainer)
    batch_size: int = Field(16, gt=0)  # per device
    grad_accum: int = Field(1, gt=0)  # effective batch = batch_size * grad_accum * devices
    learning_rate: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(0.06, ge=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    pad_to: int | None = Field(None, gt=0)  # fixed padding length; None = dynamic padding
    group_by_length: bool = False  # batches of similar length: less padding
    eval_batch_size: int = Field(32, gt=0)
    logging_steps: int = Field(5, gt=0)
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(default_factory=list)
    # A loss above this after warm-up marks the run diverged (failed); None: only NaN/inf stop it.
    divergence_loss: float | None = Field(None, gt=0)
    bootstrap_samples: int = Field(1000, ge=0)  # resamples for metric confidence intervals


class RepresentSpec(_Strict):
    """Pooled per-layer hidden states on a fixed probe set."""

    probe_samples: int = Field(500, gt=0)  # examples of the task's evaluation split
    probe_seed: int = 0
    pooling: Literal["auto", "last", "mean"] = "auto"  # auto: last for decoders, mean for encoders
    dtype: Literal["float32", "float16"] = "float32"  # storage dtype
    batch_size: int = Field(32, gt=0)


class DriftSpec(_Strict):
    """Similarity between base and tuned representations, and weight-space analysis."""

    # names registered in `peftlab.measures.MEASURES`; default: every measure marked default
    measures: list[str] = Field(default_factory=lambda: _default_measures())
    null_permutations: int = Field(200, ge=0)  # row shuffles for the CKA null floor; 0: none
    knn_k: int = Field(10, gt=0)  # capped at n - 1 probe examples (the value used is recorded)
    rbf_sigma: float = Field(0.8, gt=0)  # fraction of the median pairwise distance
    intruder_top_k: int = Field(10, gt=0)
    intruder_epsilon: float = Field(0.5, gt=0, lt=1)
    # Leaf names of the weight matrices to analyse (e.g. [q_proj, v_proj] to compare full
    # fine-tuning on LoRA's targets only); None: every adapted matrix (all linear layers for full).
    weight_modules: list[str] | None = None
    seed: int = 0  # seeds the permutations of the null floor

    @field_validator("measures")
    @classmethod
    def _unique_measures(cls, v: list[str]) -> list[str]:
        from peftlab.measures import MEASURES

        if len(set(v)) != len(v):
            raise ValueError(f"measures must be unique, got {v}")
        unknown = [m for m in v if m not in MEASURES]
        if unknown:
            raise ValueError(f"unknown measure(s) {unknown}; expected any of {MEASURES.names()}")
        return v


class BenchSpec(_Strict):
    """Deployment benchmark settings."""

    # names registered in `peftlab.bench.modes.MODES`; default: every registered mode
    modes: list[str] = Field(default_factory=lambda: _mode_names())
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 8, 32])
    # "data": the evaluation examples' own lengths; an int: every request padded/cut to that length
    seq_lengths: list[int | Literal["data"]] = Field(default_factory=lambda: ["data", 128])
    warmup: int = Field(10, ge=0)
    min_iterations: int = Field(50, gt=0)
    min_seconds: float = Field(2.0, ge=0)
    max_seconds: float = Field(60.0, gt=0)  # per sweep point, a safety stop
    interleave: Literal["random", "round_robin"] = "random"
    multi_k: int | None = Field(None, gt=1)  # None: one adapter per task of the study
    threads: int | None = Field(None, gt=0)  # CPU threads, fixed and recorded; None: all cores
    compile: bool = False  # add torch.compile variants
    seed: int = 0
    runs: Literal["all", "first_seed"] = "all"  # which trained runs to benchmark
    # Correctness gate: max|a - b| / max(|a|, |b|) over the logits of the gate examples must stay
    # below the tolerance of the serving dtype (dtypes left out keep these defaults).
    gate_tolerance: dict[Literal["float32", "bfloat16", "float16"], float] = Field(
        default_factory=lambda: {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2})
    gate_examples: int = Field(32, gt=0)  # evaluation examples per task the gate compares
    load_repeats: int = Field(3, ge=1)  # repeated (page-cache warm) loads after the cold one
    drop_page_cache: bool = True  # posix_fadvise(DONTNEED) on the weight files before cold load
    # forkserver: each mode in a fresh process forked from a server that imported torch once;
    # subprocess: `python -m peftlab.bench.worker` per mode (nothing shared, pays imports each time)
    isolation: Literal["forkserver", "subprocess"] = "forkserver"

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, v: list[str]) -> list[str]:
        names = _mode_names()
        unknown = [m for m in v if m not in names]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; expected any of {names}")
        if len(set(v)) != len(v):
            raise ValueError(f"modes must be unique, got {v}")
        return v

    @field_validator("batch_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        bad = [b for b in v if b <= 0]
        if bad:
            raise ValueError(f"batch sizes must be >= 1, got {bad}")
        if not v:
            raise ValueError("at least one batch size is required")
        return v

    @field_validator("seq_lengths")
    @classmethod
    def _lengths(cls, v: list[int | str]) -> list[int | str]:
        bad = [s for s in v if isinstance(s, int) and s < 2]
        if bad:
            raise ValueError(f"fixed sequence lengths must be >= 2 tokens, got {bad}")
        if not v:
            raise ValueError("at least one sequence length ('data' or a number) is required")
        return v

    @field_validator("gate_tolerance")
    @classmethod
    def _tolerances(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not t > 0}
        if bad:
            raise ValueError(f"gate tolerances must be > 0, got {bad}")
        return {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2, **v}


class StatsSpec(_Strict):
    """How the stats stage tests comparisons (see `peftlab.stages.stats`)."""

    alpha: float = Field(0.05, gt=0, lt=1)  # per family, after correction; intervals at 1 - alpha
    correction: Literal["holm", "bonferroni"] = "holm"  # over each declared family
    min_runs: int = Field(3, ge=2)  # fewer complete pairs of runs: "insufficient runs", no test
    # Equivalence margins for TOST. Latency: relative to the reference's mean (0.03 = within
    # +/-3% of it); main metric: absolute, in metric units (0.01 = within +/-1 point).
    latency_margin: float = Field(0.03, gt=0)
    metric_margin: float = Field(0.01, gt=0)


class StudySpec(_Strict):
    name: str
    description: str = ""
    output_dir: Path
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    model: ModelSpec
    data: DataSpec = Field(default_factory=DataSpec)
    tasks: list[TaskSpec]
    methods: dict[str, dict[str, Any]]
    seeds: list[int]
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    overrides: list[OverrideSpec] = Field(default_factory=list)
    represent: RepresentSpec = Field(default_factory=RepresentSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        # `- sst2` is shorthand for `- {name: sst2}`
        if isinstance(v, list):
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v

    @field_validator("tasks")
    @classmethod
    def _unique_tasks(cls, v: list[TaskSpec]) -> list[TaskSpec]:
        if not v:
            raise ValueError("at least one task is required")
        names = [t.name for t in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"task names must be unique, repeated: {dupes}")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("at least one seed is required")
        if len(set(v)) != len(v):
            raise ValueError("seeds must be unique")
        return v

    @field_validator("methods")
    @classmethod
    def _some_methods(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not v:
            raise ValueError("at least one method is required")
        return v


class OverrideSpec(_Strict):
    """Settings for a subset of (task, method) pairs, e.g. a learning rate per task and method."""

    tasks: list[str] | None = None  # None: every task
    methods: list[str] | None = None  # None: every method
    training: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)  # method parameters (e.g. alpha)


StudySpec.model_rebuild()


# ----------------------------------------------------------------------------------------------
# Resolution: (task, method, seed) -> RunConfig


@dataclass(frozen=True)
class RunConfig:
    """Everything one training run depends on, fully resolved."""

    task: str
    method: str  # the study's name for the method (a key of `methods`)
    method_type: str  # the registered method it uses (full, lora, ia3, ...)
    seed: int
    params: dict[str, Any]  # validated method parameters, defaults filled in
    training: TrainingSpec
    model: ModelSpec
    train_samples: int | None
    eval_samples: int | None
    data_seed: int
    task_data: dict[str, Any] = field(default_factory=dict)  # a user-file task's definition
    run_id: str = field(default="")

    def identity(self) -> dict[str, Any]:
        """The content the run id hashes: what changes the trained model."""
        return {
            "task": self.task,
            "method_type": self.method_type,
            "seed": self.seed,
            "params": self.params,
            # report_to and logging cadence do not change the trained weights
            "training": self.training.model_dump(
                mode="json", exclude={"report_to", "logging_steps", "eval_batch_size"}
            ),
            "model": self.model.model_dump(mode="json"),
            "train_samples": self.train_samples,
            "eval_samples": self.eval_samples,
            "data_seed": self.data_seed,
            # only for tasks from the user's files, so registered tasks keep their ids
            **({"task_data": self.task_data} if self.task_data else {}),
        }

    def as_dict(self) -> dict[str, Any]:
        d = self.identity()
        d.update(run_id=self.run_id, method=self.method, training=self.training.model_dump(mode="json"))
        return d


def make_run_id(task: str, method: str, seed: int, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{task}-{method}-s{seed}-{digest[:8]}"


@dataclass
class Study:
    """A loaded spec plus where it came from; the object every stage receives."""

    spec: StudySpec
    path: Path | None  # the spec file
    data_dir: Path | None = None  # a local GLUE folder given on the command line or environment
    _plan: tuple[RunConfig, ...] | None = field(default=None, repr=False, compare=False)

    @property
    def output_dir(self) -> Path:
        return self.spec.output_dir

    def data_source(self) -> tuple[str, Path | None]:
        """('glue_dir', folder) or ('hub', None) for registered tasks."""
        d = self.spec.data
        folder = self.data_dir or d.glue_dir
        if d.source == "hub":
            return "hub", None
        if d.source == "glue_dir" and folder is None:
            raise SpecError(
                f"{self.where('data.source')}: 'glue_dir' needs a folder: set data.glue_dir, "
                "pass --data-dir or set PEFTLAB_DATA_DIR"
            )
        if folder is not None:
            return "glue_dir", folder
        return "hub", None

    def where(self, key: str) -> str:
        return f"{self.path}: {key}" if self.path else key

    def task_spec(self, name: str) -> TaskSpec:
        for t in self.spec.tasks:
            if t.name == name:
                return t
        raise SpecError(f"{self.where('tasks')}: no task named {name!r}")

    def resolve(self, task: str, method: str, seed: int) -> RunConfig:
        from peftlab.methods import get_method  # the registry imports torch/peft lazily

        spec = self.spec
        tspec = self.task_spec(task)
        entry = dict(spec.methods[method])
        mtype = entry.pop("type", None)
        m = get_method(mtype, where=self.where(f"methods.{method}.type"))
        method_training = entry.pop("training", {}) or {}
        training: dict[str, Any] = spec.training.model_dump()
        # Each layer is validated where it is written, so an error names its own key path.
        _layer(training, tspec.training, self.where(f"tasks[{task}].training"))
        _layer(training, method_training, self.where(f"methods.{method}.training"))
        params = entry
        resolved_params = m.validate_params(params, where=self.where(f"methods.{method}"))
        for i, ov in enumerate(spec.overrides):
            if (ov.tasks is None or task in ov.tasks) and (ov.methods is None or method in ov.methods):
                _layer(training, ov.training, self.where(f"overrides[{i}].training"))
                if ov.params:
                    params = {**params, **ov.params}
                    resolved_params = m.validate_params(
                        params, where=self.where(f"overrides[{i}].params (method {method!r})"))
        tr = TrainingSpec(**training)
        task_data = (tspec.model_dump(mode="json", include={"files", "format", "columns",
                                                             "label_names", "regression"})
                     if tspec.files is not None else {})
        rc = RunConfig(
            task=task,
            method=method,
            method_type=mtype,
            seed=seed,
            params=resolved_params,
            training=tr,
            model=spec.model,
            train_samples=tspec.train_samples or spec.data.train_samples,
            eval_samples=tspec.eval_samples or spec.data.eval_samples,
            data_seed=spec.data.seed,
            task_data=task_data,
        )
        return _with_id(rc)

    def runs(self) -> list[RunConfig]:
        """Every training run the study implies: task x method x seed, in a stable order.

        Resolved once per Study (the plan): every stage and command reads this same list.
        """
        if self._plan is None:
            self._plan = tuple(
                self.resolve(t.name, m, s)
                for t in self.spec.tasks
                for m in self.spec.methods
                for s in self.spec.seeds
            )
        return list(self._plan)

    def run(self, run_id: str) -> RunConfig | None:
        """The planned run with this id, or None when the spec no longer implies it."""
        return next((rc for rc in self.runs() if rc.run_id == run_id), None)


def _with_id(rc: RunConfig) -> RunConfig:
    from dataclasses import replace

    return replace(rc, run_id=make_run_id(rc.task, rc.method, rc.seed, rc.identity()))


def _layer(target: dict[str, Any], updates: Any, where: str) -> None:
    """Apply one layer of training overrides and validate the result, naming that layer."""
    if not isinstance(updates, dict):
        raise SpecError(f"{where}: expected a mapping of training settings "
                        f"(e.g. {{learning_rate: 2.0e-4}}), got {updates!r}")
    _merge(target, updates, where)
    if updates:
        try:
            TrainingSpec(**target)
        except ValidationError as e:
            raise SpecError(format_validation(e, where)) from None


def _merge(target: dict[str, Any], updates: dict[str, Any], where: str) -> None:
    unknown = sorted(set(updates) - set(TrainingSpec.model_fields))
    if unknown:
        raise SpecError(
            f"{where}: unknown training key(s) {unknown}; expected one of "
            f"{sorted(TrainingSpec.model_fields)}"
        )
    target.update(updates)


def load_spec(path: str | os.PathLike[str], *, data_dir: str | None = None,
              output_dir: str | None = None) -> Study:
    """Read, validate and fully resolve a study spec; raise SpecError naming file and key."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"{p}: spec file not found")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise SpecError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{p}: expected a mapping of study settings at the top level")
    if output_dir is not None:
        raw["output_dir"] = output_dir
    try:
        spec = StudySpec(**raw)
    except ValidationError as e:
        raise SpecError(format_validation(e, str(p))) from None
    env_dir = os.environ.get("PEFTLAB_DATA_DIR")
    study = Study(spec=spec, path=p, data_dir=Path(data_dir) if data_dir else
                  (Path(env_dir) if env_dir else None))
    check_study(study)
    return study


def check_study(study: Study) -> None:
    """Cross-field checks that need the registries: tasks, methods, overrides, every run."""
    from peftlab.tasks import get_task, make_file_task  # noqa: F401  (imported for validation)

    spec = study.spec
    for i, t in enumerate(spec.tasks):
        if t.files is None:
            try:
                get_task(t.name)
            except PeftlabError as e:
                raise SpecError(f"{study.where(f'tasks[{i}].name')}: {e}") from None
    for name, entry in spec.methods.items():
        if not isinstance(entry, dict) or "type" not in entry:
            raise SpecError(
                f"{study.where(f'methods.{name}')}: expected a mapping with a `type` "
                "(e.g. {type: lora, r: 8})"
            )
    task_names = {t.name for t in spec.tasks}
    for i, ov in enumerate(spec.overrides):
        for t in ov.tasks or []:
            if t not in task_names:
                raise SpecError(
                    f"{study.where(f'overrides[{i}].tasks')}: unknown task {t!r}; "
                    f"the study's tasks are {sorted(task_names)}"
                )
        for m in ov.methods or []:
            if m not in spec.methods:
                raise SpecError(
                    f"{study.where(f'overrides[{i}].methods')}: unknown method {m!r}; "
                    f"the study's methods are {sorted(spec.methods)}"
                )
    if spec.data.source == "glue_dir" and study.data_dir is None and spec.data.glue_dir is None:
        raise SpecError(
            f"{study.where('data.source')}: 'glue_dir' needs data.glue_dir, --data-dir or "
            "PEFTLAB_DATA_DIR"
        )
    from peftlab.models import resolve_model

    m = spec.model
    try:
        resolve_model(m.name, gguf_file=m.gguf_file, revision=m.revision)
    except PeftlabError as e:
        raise SpecError(f"{study.where('model.name')}: {e}") from None
    study.runs()  # resolves every run: bad method parameters and overrides fail here, not later
