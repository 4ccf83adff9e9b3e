"""The study spec: one YAML file in, typed config objects out.

    peftlab validate quickstart            # a shipped spec, by name
    peftlab validate my-study.yaml

A spec names the model, the tasks, the methods (each with its own hyperparameters), the seeds and the
settings of every stage. This module is the schema (pydantic models with plain types) and the YAML
loading (duplicate keys refused, shipped specs by name, input paths relative to the spec file); it
depends on nothing else in peftlab, so every other module can import it. Every message names the
file and the key path.

Names that registries define (methods, tasks, measures, bench modes, trackers) are checked against
them by `peftlab.validate` when a study is loaded (`peftlab.pipeline.load_study`), which also fills
in the defaults that depend on a registry (`drift.measures`, `bench.modes`: None here). How the
spec's layers resolve to runs and their ids is `peftlab.runs`; the plan of a whole study,
`peftlab.plan`; search spaces, `peftlab.search_space`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from peftlab.engine_spec import EngineSpec
from peftlab.errors import SpecError, format_validation


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
    # What reads the encoder: transformers' AutoModelForSequenceClassification head, or the head
    # of a sentence-transformers bi-encoder (each text encoded apart and mean-pooled; a pair read
    # through the cosine of its two embeddings; BERT-family only; `peftlab.sentence_embedding`).
    head: Literal["sequence-classification", "sentence-embedding"] = "sequence-classification"

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
    # Strip leading/trailing whitespace from every text (`tasks.NORMALISATION_RULE`). false keeps
    # it, e.g. SST-2's trailing space, to reproduce a study that pooled the text as distributed;
    # part of every run's identity (a run on unstripped text is another run).
    strip_whitespace: bool = True
    e2e_dir: Path | None = None  # E2E NLG folder; None: PEFTLAB_E2E_DIR, --data-dir (find_e2e_dir)


class TaskSpec(_Strict):
    """A task of the study: a registered name, or the user's own files with a column mapping."""

    name: str
    files: dict[Literal["train", "eval"], Path] | None = None
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None  # None: from the suffix
    columns: dict[Literal["text_a", "text_b", "label", "prompt", "target"], str] | None = None
    label_names: list[str] | None = None
    metrics: list[str] | None = None
    regression: bool = False
    # generation: prompt -> text from files (`columns: {prompt, target}`; one prompt's rows are
    kind: Literal["generation"] | None = None  # its references); None: classification/regression
    prompt_template: str | None = None  # generation: the prompt, `{input}` the file's prompt text
    train_samples: int | None = Field(None, gt=0)  # overrides data.train_samples for this task
    eval_samples: int | None = Field(None, gt=0)
    training: dict[str, Any] = Field(default_factory=dict)  # overrides of `training` for this task

    @model_validator(mode="after")
    def _files_need_mapping(self) -> TaskSpec:
        if self.files is not None:
            if "train" not in self.files or "eval" not in self.files:
                raise ValueError("`files` needs both a `train` and an `eval` file")
            if self.kind == "generation":
                if not self.columns or set(self.columns) != {"prompt", "target"}:
                    raise ValueError("a generation task's `columns` maps exactly `prompt` and "
                                     "`target`")
                if self.label_names or self.regression:
                    raise ValueError("a generation task has no label_names and no regression")
                return self
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
    # How the task head starts: random (transformers' initialisation) or probe (fitted by
    # logistic regression on the frozen base's features of the training examples first, the LP
    # of LP-FT; model.head: sentence-embedding only, `sentence_embedding.fit_heads`).
    head_init: Literal["random", "probe"] = "random"


class RepresentSpec(_Strict):
    """Pooled per-layer hidden states on a fixed probe set."""

    probe_samples: int = Field(500, gt=0)  # examples of the task's evaluation split
    probe_seed: int = 0
    # One pooling or several, all from the same forward pass (`extraction.POOLINGS`):
    # auto (last for decoders, mean for encoders), last, mean, first. The one the classification
    # head reads is primary (`extraction.primary_pooling`); the others are exploratory.
    pooling: Literal["auto", "last", "mean", "first"] | list[
        Literal["auto", "last", "mean", "first"]] = "auto"
    dtype: Literal["float32", "float16"] = "float32"  # storage dtype
    batch_size: int = Field(32, gt=0)
    # The pooled-token diagnostic warns when one token id is pooled for more than this share of
    # the probes (last/first pooling): the readout then reads a content-free position.
    token_warning_share: float = Field(0.5, gt=0, le=1)

    @field_validator("pooling")
    @classmethod
    def _poolings_distinct(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list):
            if not v:
                raise ValueError("needs at least one pooling (auto, last, mean, first)")
            if len(set(v)) != len(v):
                raise ValueError(f"lists a pooling twice: {v}")
            if "auto" in v and len(v) > 1:
                raise ValueError("'auto' stands for one pooling chosen by the model family; "
                                 "list the poolings by name (e.g. [last, mean]) instead")
        return v

    @property
    def poolings(self) -> list[str]:
        """The configured poolings as a list, in spec order ("auto" not yet resolved)."""
        return list(self.pooling) if isinstance(self.pooling, list) else [self.pooling]


class DriftSpec(_Strict):
    """Similarity between base and tuned representations, and weight-space analysis."""

    # names registered in `peftlab.measures.MEASURES`; None (left out): every measure marked
    # default, filled in when the study loads (`validate.check_names`)
    measures: list[str] | None = None
    null_permutations: int = Field(200, ge=0)  # row shuffles for the CKA null floor; 0: none
    knn_k: int = Field(10, gt=0)  # capped at n - 1 probe examples (the value used is recorded)
    rbf_sigma: float = Field(0.8, gt=0)  # fraction of the median pairwise distance
    intruder_top_k: int = Field(10, gt=0)
    intruder_epsilon: float = Field(0.5, gt=0, lt=1)
    # Leaf names of the weight matrices to analyse (e.g. [q_proj, v_proj] to compare full
    # fine-tuning on LoRA's targets only); None: every adapted matrix (all linear layers for full).
    weight_modules: list[str] | None = None
    seed: int = 0  # seeds the permutations of the null floor and the bootstrap resamples
    # Resamples of probe examples for the interval of stats.primary.drift.measure per run and
    # layer (0: none).
    bootstrap: int = Field(100, ge=0)

    @field_validator("measures")
    @classmethod
    def _unique_measures(cls, v: list[str] | None) -> list[str] | None:
        # registered names are checked by `validate.check_names`, after this
        if v is not None and len(set(v)) != len(v):
            raise ValueError(f"measures must be unique, got {v}")
        return v


class ServingSpec(_Strict):
    """Serving under load (part of the bench stage, `peftlab.bench.serving`): open-loop Poisson
    load at rising rates against an in-process server with dynamic batching, per configuration
    (merged: k merged models; mixed: one base, k adapters, mixed batches; switch: one base,
    adapter switched per batch; full: k fully fine-tuned models) and adapter popularity pattern.
    Each load run is bounded by max_requests and max_seconds (+ a drain of max(1 s, 20 x
    max_wait_ms)); a configuration's sweep stops at its first unsustained rate."""

    # names registered in `peftlab.bench.serving_configs.SERVING_CONFIGS` that a spec may ask for
    # (unique; `validate.check_names`); None (left out): all of them, filled in when the study loads
    configs: list[str] | None = None
    patterns: list[Literal["distinct", "uniform", "skewed", "identical"]] = Field(
        default_factory=lambda: ["distinct", "uniform", "skewed", "identical"])
    rates: list[float] = Field(default_factory=lambda: [25.0, 50.0, 100.0, 200.0, 400.0])
    max_requests: int = Field(200, ge=1)  # per load run
    max_seconds: float = Field(4.0, gt=0)  # arrival window per load run
    max_batch_size: int = Field(8, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    zipf_exponent: float = Field(1.5, gt=0)  # the skewed pattern
    # "equal p99" in the decision: adapters' p99 within this relative margin of merged's
    p99_margin: float = Field(0.10, ge=0)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v or any(not r > 0 for r in v):
            raise ValueError(f"rates must be a non-empty list of requests/s > 0, got {v}")
        return sorted(float(r) for r in v)

    @field_validator("patterns")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v



class PairedSpec(_Strict):
    """The primary latency comparisons (stats.primary.deployment) measured paired: both models
    in one process, alternately on the same requests (ABBA rounds), repeated in fresh processes
    (blocks), with an A/A control; sized from a pilot to detect `detect` within `budget_s`
    (`peftlab.bench.paired`, `peftlab.latency_design`). Results: the `bench_pairs` table."""

    budget_s: float = Field(120.0, gt=0)  # wall time for every block of every comparison
    detect: float = Field(0.05, gt=0, lt=1)  # the relative difference the design aims to detect
    requests: int = Field(8, ge=1)  # timed requests per condition per segment (2 per round)
    pilot_rounds: int = Field(6, ge=2)  # rounds of each of the 2 pilot blocks
    min_blocks: int = Field(3, ge=2)
    max_blocks: int = Field(12, ge=2)
    max_rounds: int = Field(40, ge=2)
    control: bool = True  # the A/A control: one condition measured under a second label too

# The bench sweep's axes: field -> (an item it refuses, the rule that item breaks, what an empty
# list lacks); both axes must be non-empty, every point of the sweep is timed.
_SWEEP_AXES: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "batch_sizes": (lambda b: b <= 0, "batch sizes must be >= 1",
                    "at least one batch size is required"),
    "seq_lengths": (lambda s: isinstance(s, int) and s < 2,
                    "fixed sequence lengths must be >= 2 tokens",
                    "at least one sequence length ('data' or a number) is required"),
}


class BenchSpec(_Strict):
    """Deployment benchmark settings."""

    # names registered in `peftlab.bench.modes.MODES` (unique; `validate.check_names`); None
    # (left out): every registered mode, filled in when the study loads
    modes: list[str] | None = None
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
    # add "+fast" variants of the modes serving live LoRA adapters (unmerged, multi): the
    # adapters fused into the base GEMMs (`peftlab.bench.fastpath.fused_lora`)
    fast_path: bool = False
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
    # in-process: no isolation at all, for tests and debugging (a plug-in mode registered at run
    # time exists only in this process); never for measurements you report
    isolation: Literal["forkserver", "subprocess", "in-process"] = "forkserver"
    # Serving under load after the units (a `serving` table); None: not measured.
    serving: ServingSpec | None = None
    # The primary latency comparisons, paired and repeated (a `bench_pairs` table); None: not.
    paired: PairedSpec | None = Field(default_factory=PairedSpec)

    @field_validator("batch_sizes", "seq_lengths")
    @classmethod
    def _sweep_axis(cls, v: list[Any], info: ValidationInfo) -> list[Any]:
        refused, rule, empty = _SWEEP_AXES[info.field_name]
        bad = [x for x in v if refused(x)]
        if bad:
            raise ValueError(f"{rule}, got {bad}")
        if not v:
            raise ValueError(empty)
        return v

    @field_validator("gate_tolerance")
    @classmethod
    def _tolerances(cls, v: dict[str, float]) -> dict[str, float]:
        bad = {k: t for k, t in v.items() if not t > 0}
        if bad:
            raise ValueError(f"gate tolerances must be > 0, got {bad}")
        return {"float32": 1e-4, "bfloat16": 5e-2, "float16": 1e-2, **v}


class PrimaryDriftSpec(_Strict):
    """RQ1's primary endpoint: base-vs-run similarity, PEFT method vs full fine-tuning."""

    # a measure the stats stage tests (measures.tested; `validate.check_names`)
    measure: str = "linear_cka_debiased"
    band: Literal["early", "middle", "late", "mean"] = "mean"  # over transformer layers only
    # across_tasks: one mixed-model estimate per PEFT method over every task (the per-task tests
    # are then exploratory); per_task: one primary test per task.
    scope: Literal["across_tasks", "per_task"] = "across_tasks"


class PrimaryDeploymentSpec(_Strict):
    """RQ2's primary endpoints: per task and PEFT method, median latency at one sweep point."""

    # "<mode a>_vs_<mode b>", as the bench modes declare them (bench.mode.Comparison; distinct;
    # `validate.check_names`)
    comparisons: list[str] = Field(
        default_factory=lambda: ["unmerged_vs_merged", "merged_vs_full"], min_length=1)
    batch_size: int = Field(1, gt=0)
    seq_len: int | Literal["data"] = "data"


class PrimarySpec(_Strict):
    """One pre-declared primary endpoint per research question, corrected together across the
    study (family "primary"); every other comparison is exploratory. None: no primary endpoint
    for that question."""

    accuracy: Literal["main"] | None = "main"  # each task's main metric, PEFT vs full
    drift: PrimaryDriftSpec | None = Field(default_factory=PrimaryDriftSpec)
    deployment: PrimaryDeploymentSpec | None = Field(default_factory=PrimaryDeploymentSpec)


class StatsSpec(_Strict):
    """How the stats stage tests comparisons (see `peftlab.stages.stats`)."""

    alpha: float = Field(0.05, gt=0, lt=1)  # per family, after correction; intervals at 1 - alpha
    correction: Literal["holm", "bonferroni"] = "holm"  # over each declared family
    min_runs: int = Field(3, ge=2)  # fewer complete pairs of runs: "insufficient runs", no test
    # Equivalence margins for TOST. Latency: relative to the reference's mean (0.03 = within
    # +/-3% of it); main metric: absolute, in metric units (0.01 = within +/-1 point).
    latency_margin: float = Field(0.03, gt=0)
    metric_margin: float = Field(0.01, gt=0)
    power: float = Field(0.8, gt=0, lt=1)  # for minimum detectable effects and runs needed
    primary: PrimarySpec = Field(default_factory=PrimarySpec)
    # Drift measures compared between methods (paired by seed, per band, plus the seed-noise and
    # across-task tests), names from `drift.measures`. None: the measures the registry marks
    # tested (debiased linear CKA, centred cosine); a replication adds the measure its original
    # reported (e.g. the biased linear_cka), and each added measure enlarges its Holm family.
    tested_measures: list[str] | None = None

    @field_validator("tested_measures")
    @classmethod
    def _unique_tested(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v


class ForgettingSpec(_Strict):
    """What tuning cost the base's other abilities (see `peftlab.stages.forgetting`): off-task
    linear probes for every model, held-out LM loss for decoder models."""

    enabled: bool = True
    # Probe tasks: registered names or the user's files (the `tasks` entry form; `train_samples`
    # / `eval_samples` there override the probe sizes below). None: the study's other tasks.
    # A run is never probed on the task it was tuned on. Registered names, and that a probe task
    # has classes, are checked by `validate.check_names`.
    tasks: list[TaskSpec] | None = None
    # Hidden states probed: "middle" (the middle block), "last" (the final one) or indices
    # (0 = embeddings, i = block i).
    layers: list[Literal["middle", "last"] | int] = Field(
        default_factory=lambda: ["middle", "last"])
    probe_train_samples: int = Field(500, gt=0)  # from each probe task's train split (seeded)
    probe_test_samples: int = Field(500, gt=0)  # from its eval split (seeded)
    probe_seed: int = 0  # subsamples, cross-validation folds and bootstrap
    cv_folds: int = Field(5, ge=2)  # stratified folds that choose C on the probe training split
    c_grid: list[float] = Field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0])
    bootstrap_samples: int = Field(1000, ge=0)  # resamples of test examples / texts
    confidence: float = Field(0.95, gt=0, lt=1)
    batch_size: int = Field(32, gt=0)  # probe extraction
    # Held-out text for the LM loss (decoders): a UTF-8 file, one text per line (blank lines
    # skipped); None: the evaluation sentences of the tasks a run was not tuned on (study tasks,
    # and probe tasks outside the study).
    text_file: Path | None = None
    lm_texts: int | None = Field(200, gt=0)  # texts per source, seeded subsample; None: all
    lm_max_length: int | None = Field(None, gt=1)  # tokens per text; None: model.max_length
    lm_batch_size: int = Field(8, gt=0)

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        if isinstance(v, list):  # `- cola` is shorthand for `- {name: cola}`, as in `tasks`
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v

    @field_validator("tasks")
    @classmethod
    def _probe_tasks(cls, v: list[TaskSpec] | None) -> list[TaskSpec] | None:
        if v is None:
            return v
        if not v:
            raise ValueError("list at least one probe task, or leave `tasks` out for the "
                             "study's other tasks")
        names = [t.name for t in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"probe task names must be unique, repeated: {dupes}")
        for t in v:
            if t.training:
                raise ValueError(f"task {t.name!r}: `training` does not apply to a probe task")
        return v

    @field_validator("c_grid")
    @classmethod
    def _positive_grid(cls, v: list[float]) -> list[float]:
        if not v or any(not c > 0 for c in v):
            raise ValueError(f"C values must be > 0 (at least one), got {v}")
        return v

    @field_validator("layers")
    @classmethod
    def _some_layers(cls, v: list[str | int]) -> list[str | int]:
        if not v:
            raise ValueError("at least one layer ('middle', 'last' or an index) is required")
        bad = [x for x in v if isinstance(x, int) and x < 0]
        if bad:
            raise ValueError(f"layer indices count from 0 (embeddings), got {bad}")
        return v


# Cost objectives a search can minimise next to a metric (multi-objective: a Pareto front).
SEARCH_COSTS: dict[str, str] = {"trainable_params": "trainable parameters (incl. the head)",
                                "train_time_s": "seconds of the training loop"}


class ParamRange(_Strict):
    """A numeric search range, both ends included: uniform, or log-uniform with `log: true`;
    `type: int` samples integers (e.g. `epochs: {low: 1, high: 4, type: int}`)."""

    low: float
    high: float
    log: bool = False
    type: Literal["float", "int"] = "float"

    @model_validator(mode="after")
    def _ordered(self) -> ParamRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-uniform range needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"an int range needs whole ends, got {self.low}..{self.high}")
        return self


# A searched value: a range, or a list of choices (categorical; a choice may itself be a list,
# e.g. target_modules: [[query, value], all-linear]).
SearchValues = ParamRange | list[Any]


def _check_space(v: dict[str, SearchValues]) -> dict[str, SearchValues]:
    for key, values in v.items():
        if isinstance(values, list) and not values:
            raise ValueError(f"{key}: list at least one choice")
    return v


class SearchOverride(_Strict):
    """Search space or budget for a subset of (task, method) pairs, applied in order."""

    tasks: list[str] | None = None  # None: every task
    methods: list[str] | None = None  # None: every method
    space: dict[str, SearchValues] = Field(default_factory=dict)
    n_trials: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)

    _space = field_validator("space")(_check_space)


class SearchSpec(_Strict):
    """Hyperparameter search per task x method before the final runs (`peftlab.hpsearch`).

    Keys of a space are training keys (learning_rate, warmup_ratio, epochs, ...) or parameters of
    the method (r, alpha, dropout, target_modules, ...). The space resolves like the rest of the
    spec: `space` (every method) < `methods.<name>` < `overrides[j]` (in order). The budget
    (`n_trials` finished trials and/or `timeout_s` seconds of trials, per task x method) must be
    the same for every method of a task. Trials train on the training subset minus a validation
    share carved from it (seeded, stratified) and are scored there, never on the eval split.
    """

    n_trials: int | None = Field(None, gt=0)
    timeout_s: float | None = Field(None, gt=0)
    # "main" (the task's first metric), other metric names of the task, and costs to minimise
    # (SEARCH_COSTS); more than one: a multi-objective search and its Pareto front
    objective: list[str] = Field(default_factory=lambda: ["main"])
    sampler: Literal["auto", "tpe", "nsga2", "random"] = "auto"  # auto: tpe, nsga2 if several
    seed: int = 0  # seeds the sampler, the trials' training and nothing else
    startup_trials: int = Field(4, ge=0)  # random trials before TPE models the space
    pruner: Literal["none", "median", "successive_halving"] = "median"
    pruner_startup_trials: int = Field(2, ge=0)  # median: finished trials before any is pruned
    reduction_factor: int = Field(3, ge=2)  # successive halving: keep the best 1/factor per rung
    eval_steps: int | None = Field(None, gt=0)  # validation evaluations (pruning); None: per epoch
    validation_share: float = Field(0.2, gt=0, lt=1)  # of the training subset
    validation_seed: int = 0
    space: dict[str, SearchValues] = Field(default_factory=dict)
    methods: dict[str, dict[str, SearchValues]] = Field(default_factory=dict)
    overrides: list[SearchOverride] = Field(default_factory=list)

    _space = field_validator("space")(_check_space)

    @field_validator("objective", mode="before")
    @classmethod
    def _one_or_more(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("objective")
    @classmethod
    def _objectives(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("name at least one objective (e.g. main)")
        if len(set(v)) != len(v):
            raise ValueError(f"objectives must be unique, got {v}")
        if all(o in SEARCH_COSTS for o in v):
            raise ValueError(f"{v}: a search needs a metric to maximise, not only costs")
        return v

    @field_validator("methods")
    @classmethod
    def _method_spaces(cls, v: dict[str, dict[str, SearchValues]]
                       ) -> dict[str, dict[str, SearchValues]]:
        for space in v.values():
            _check_space(space)
        return v

    @model_validator(mode="after")
    def _budget_and_pruner(self) -> SearchSpec:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("give a budget: n_trials, timeout_s or both (per task x method)")
        if len(self.objective) > 1 and self.pruner != "none":
            raise ValueError(f"pruner {self.pruner!r} needs a single objective (Optuna prunes "
                             "single-objective studies only); set pruner: none")
        return self


class ExecutionResources(_Strict):
    """What one unit of work (a training run, a search trial, an extraction) asks Ray for."""

    cpu: float = Field(1.0, gt=0)  # cores; Ray also sets the task's OMP_NUM_THREADS from it
    gpu: float = Field(0.0, ge=0)  # devices; 1 gives each unit a GPU of its own


class ExecutionSpec(_Strict):
    """Where the units of work run (`peftlab.execution`): in this process, or as Ray tasks.

    The driver (the `peftlab run` process) plans, holds the study lock and alone writes the store;
    with `backend: ray` training runs, search trials and representation extraction run as Ray
    tasks that write their artifacts into the study directory (a filesystem every node sees) and
    return their records to the driver. Benchmarks always run on the driver's node.
    """

    backend: Literal["local", "ray"] = "local"
    # ray only: null starts a Ray runtime on this machine; "auto" joins the cluster this machine
    # belongs to (`ray start --head` / `ray start --address ...`); or "host:port", "ray://..."
    address: str | None = None
    # ray only: seconds to reach the cluster at `address` (name lookup, GCS port, ray.init)
    connect_timeout_s: float = Field(30.0, gt=0)
    resources: ExecutionResources = Field(default_factory=ExecutionResources)
    max_retries: int = Field(1, ge=0)  # times a unit whose worker died is run again
    parallel_trials: int = Field(1, gt=0)  # search trials in flight at once, per search


class TrackingSpec(_Strict):
    """Where the trackers in `training.report_to` write (`peftlab.tracking`), not run identity.

    TensorBoard: <output_dir>/tensorboard/<run_id>. MLflow: one experiment per study, one parent
    run for the study and one nested run per trained run, found again by its run id tag. W&B: one
    run per trained run (its id derived from the study and run id), grouped by study.
    """

    # None: an SQLite database inside the study directory (<output_dir>/mlflow/mlflow.db, artifacts
    # in <output_dir>/mlflow/artifacts). MLflow 3 refuses a plain-folder store (./mlruns) unless
    # MLFLOW_ALLOW_FILE_STORE=true is set, so the default is the database it recommends.
    mlflow_uri: str | None = None
    mlflow_experiment: str | None = None  # None: the study's name
    wandb_project: str | None = None  # None: the study's name
    wandb_entity: str | None = None  # None: the login's default entity
    # auto: online when a W&B login is configured (WANDB_API_KEY or ~/.netrc), else offline
    wandb_mode: Literal["auto", "online", "offline"] = "auto"
    log_artifacts: bool = True  # report.md, report.html and spec.yaml on the study's tracker run


# `generation` settings that change neither a run's model nor its outputs: not in run ids
NOT_RUN_SETTINGS = frozenset({"samples", "few_shot", "template_baseline", "bench_new_tokens",
                              "bench_blocks", "bench_rounds", "bench_requests", "probe_inputs"})


class GenerationSpec(_Strict):
    """How generation tasks are prompted, trained, decoded and benchmarked (`peftlab.generation`,
    `peftlab.gen_study`): the bench decodes exactly `bench_new_tokens` tokens in `bench_blocks`
    fresh processes of `bench_rounds` ABBA rounds (`bench.modes`, `bench.batch_sizes`)."""

    prompt_template: str | None = None  # `{input}`; None: the task's (E2E: "Facts: {input}\n...")
    chat_template: bool = False  # wrap the prompt in the tokenizer's chat template (a user turn)
    train_references: int | None = Field(None, gt=0)  # references per training input; None: all
    max_new_tokens: int = Field(48, gt=0)
    num_beams: int = Field(1, gt=0)  # 1: greedy decoding
    stop: list[str] = Field(default_factory=lambda: ["\n"])  # an output ends at EOS or these
    batch_size: int = Field(16, gt=0)  # inputs per decoding batch
    few_shot: int = Field(2, ge=0)  # solved training inputs in the few-shot baseline; 0: none
    template_baseline: bool = True  # the MR's slot values joined into a sentence (E2E inputs)
    samples: int = Field(4, ge=0)  # fixed evaluation inputs the report shows outputs of
    bench_new_tokens: int = Field(16, ge=2)
    bench_blocks: int = Field(3, ge=2)
    bench_rounds: int = Field(3, ge=1)
    bench_requests: int = Field(1, ge=1)  # timed requests per condition segment
    probe_inputs: int = Field(60, ge=4)  # evaluation prompts whose representations drift reads


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
    forgetting: ForgettingSpec = Field(default_factory=ForgettingSpec)
    drift: DriftSpec = Field(default_factory=DriftSpec)
    bench: BenchSpec = Field(default_factory=BenchSpec)
    stats: StatsSpec = Field(default_factory=StatsSpec)
    search: SearchSpec | None = None  # hyperparameter search before the final runs
    # Grids of method entries: {method: {key: [values] or {label: value}}}; each cell of a
    # method's grid replaces it by its own entry (`peftlab.sweep`, expanded at study load)
    sweep: dict[str, dict[str, Any]] = Field(default_factory=dict)  # values: list or mapping
    tracking: TrackingSpec = Field(default_factory=TrackingSpec)  # see training.report_to
    execution: ExecutionSpec = Field(default_factory=ExecutionSpec)
    generation: GenerationSpec = Field(default_factory=GenerationSpec)  # generation tasks only
    # serving on a real engine (`peftlab.engine_spec`, the serve stage); None: not served
    engine: EngineSpec | None = None

    @field_validator("tasks", mode="before")
    @classmethod
    def _task_shorthand(cls, v: Any) -> Any:
        # `- sst2` is shorthand for `- {name: sst2}`
        if isinstance(v, list):
            return [{"name": t} if isinstance(t, str) else t for t in v]
        return v

    @field_validator("tasks", "seeds", "methods")
    @classmethod
    def _some_distinct(cls, v: Any, info: ValidationInfo) -> Any:
        # A study needs at least one of each, each named once (methods are mapping keys).
        what = {"tasks": "task", "seeds": "seed", "methods": "method"}[info.field_name]
        names = [t.name for t in v] if info.field_name == "tasks" else list(v)
        if not names:
            raise ValueError(f"at least one {what} is required")
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{what}s must be unique, repeated: {repeated}")
        return v


class OverrideSpec(_Strict):
    """Settings for a subset of (task, method) pairs, e.g. a learning rate per task and method."""

    tasks: list[str] | None = None  # None: every task
    methods: list[str] | None = None  # None: every method
    training: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)  # method parameters (e.g. alpha)


StudySpec.model_rebuild()


def build_section(cls: type[BaseModel], where: str, **values: Any) -> Any:
    """A spec section built outside a spec file (e.g. from command-line options); bad values
    raise SpecError naming `where` and the key, as they would in a spec."""
    try:
        return cls(**values)
    except ValidationError as e:
        raise SpecError(format_validation(e, where)) from None


# ----------------------------------------------------------------------------------------------
# Loading: YAML (duplicate keys refused), shipped specs by name, paths relative to the spec file

SHIPPED_DIR = Path(__file__).resolve().parent / "studies"  # package data: ships in the wheel


def shipped_specs() -> dict[str, Path]:
    """The specs that ship with peftlab, by name (`quickstart` -> .../studies/quickstart.yaml)."""
    return {p.stem: p for p in sorted(SHIPPED_DIR.glob("*.yaml"))}


def find_spec(spec: str | os.PathLike[str]) -> Path:
    """The spec file a command-line argument means: an existing file, else a shipped spec's name.

    A path that exists wins, so a file of your own never loses to a shipped name.
    """
    p = Path(spec)
    if p.is_file():
        return p
    shipped = shipped_specs()
    name = p.stem if p.suffix in (".yaml", ".yml") else p.name
    if len(p.parts) == 1 and name in shipped:  # a bare name, not a path into a folder
        return shipped[name]
    raise SpecError(f"{p}: spec file not found (a path to a YAML file, or the name of a shipped "
                    f"spec: {', '.join(shipped) or 'none'})")


class DuplicateKeyError(yaml.YAMLError):
    """Keys given more than once in one mapping: [(key path, key, [line, ...]), ...]."""

    def __init__(self, duplicates: list[tuple[str, str, list[int]]]):
        super().__init__(duplicates)
        self.duplicates = duplicates


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping, at any depth.

    PyYAML (like the YAML 1.1 loaders it follows) silently keeps the last value of a repeated
    key, so `name: a ... name: b` would validate. The document's node tree carries each key's
    line, so the check runs on it before anything is constructed.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        dupes: list[tuple[str, str, list[int]]] = []
        _find_duplicates(node, "", dupes, set())
        if dupes:
            raise DuplicateKeyError(dupes)
        return super().construct_document(node)


_MERGE_TAG = "tag:yaml.org,2002:merge"


def _find_duplicates(node: yaml.Node, where: str, out: list[tuple[str, str, list[int]]],
                     seen: set[int]) -> None:
    if id(node) in seen:  # an anchor used twice (or a recursive one) is checked once
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], list[int]] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == _MERGE_TAG:
                continue  # `<<: *base` merges are overridden on purpose
            lines.setdefault((key.tag, key.value), []).append(key.start_mark.line + 1)
            _find_duplicates(value, f"{where}.{key.value}" if where else key.value, out, seen)
        for (_, key), at in lines.items():
            if len(at) > 1:
                out.append((f"{where}.{key}" if where else key, key, at))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _find_duplicates(item, f"{where}[{i}]", out, seen)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file; SpecError naming the file (and, for repeated keys, key path and lines)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)  # a SafeLoader
    except DuplicateKeyError as e:
        lines = []
        for where, key, at in sorted(e.duplicates, key=lambda d: d[2]):
            if len(set(at)) == 1:  # a flow mapping: {a: 1, a: 2}
                at_s = f"{len(at)} times on line {at[0]}"
            else:
                at_s = "lines " + ", ".join(map(str, at[:-1])) + f" and {at[-1]}"
            lines.append(f"{path}: {where}: key {key!r} is given more than once ({at_s}); "
                         "keep one")
        raise SpecError("\n".join(lines)) from None
    except yaml.YAMLError as e:
        raise SpecError(f"{path}: not valid YAML: {e}") from None


def resolve_spec_paths(spec: StudySpec, folder: Path) -> StudySpec:
    """Relative input paths of a spec, made absolute against the spec file's folder.

    Every `Path`-typed setting (task data files, data.glue_dir, ...) is an input and resolves
    against `folder`, so a spec and its data can move together; `model.name` does too when it
    names a folder or a .gguf file that exists there (aliases and hub ids are left alone, and
    `model.gguf_file` stays a file name inside that folder or hub repo). `output_dir` is where
    results go and stays relative to the current directory (as torchtune and the Hugging Face
    Trainer treat theirs).
    """
    folder = Path(os.path.abspath(folder))  # abspath, not resolve(): symlinked folders stay

    def fix(value: Any) -> Any:
        if isinstance(value, Path):
            value = value.expanduser()
            return value if value.is_absolute() else Path(os.path.normpath(folder / value))
        if isinstance(value, BaseModel):
            return value.model_copy(update={k: fix(getattr(value, k))
                                            for k in type(value).model_fields
                                            if k != "output_dir"})
        if isinstance(value, dict):
            return {k: fix(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fix(v) for v in value]
        return value

    spec = fix(spec)
    name = spec.model.name.strip()
    local = folder / name
    relative = bool(name) and not name.startswith("~") and not Path(name).is_absolute()
    if relative and (local.is_dir() or (local.is_file() and name.lower().endswith(".gguf"))):
        spec = spec.model_copy(update={"model": spec.model.model_copy(
            update={"name": os.path.normpath(local)})})
    return spec


def read_spec(path: Path, *, output_dir: str | None = None) -> dict[str, Any]:
    """The top-level mapping of a spec file (`output_dir`, when given, replaces the spec's);
    SpecError naming the file when it is not valid YAML or not a mapping."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of study settings at the top level")
    if output_dir is not None:
        raw["output_dir"] = output_dir
    return raw


def parse_spec(raw: dict[str, Any], path: Path) -> StudySpec:
    """A spec's mapping validated against the schema, its relative input paths resolved against
    the spec file's folder (`resolve_spec_paths`); SpecError naming the file and every bad key.

    Registered names (methods, tasks, measures, modes) are not checked here: a study is loaded,
    checked and planned by `peftlab.pipeline.load_study`."""
    try:
        spec = StudySpec(**raw)
    except ValidationError as e:
        raise SpecError(format_validation(e, str(path))) from None
    return resolve_spec_paths(spec, path.parent)
