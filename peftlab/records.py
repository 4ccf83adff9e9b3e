"""Typed schemas of the results tables: one record type per table, built by its stage, read by
its consumers.

    rec = RunRecord(run_id=..., task="sst2", ..., status="done", metrics={...})
    write(store, [rec])                              # -> table "runs", key rec.key
    runs = read(store, RunRecord)                    # validated records, in key order

A stage builds its records through these types and every consumer (stats, report, the CLI's
`results`) reads them back through the same types, so a field renamed or dropped by a stage fails
where it is written or read, not silently in a report. The sample study that the stats and report
tests run on (`peftlab.testing.sample_study`) builds its records through these types too, so it cannot
drift from what the stages write.

Conventions: nested, free-form parts (a resolved config, provenance, a timing point's figures) are
plain dicts; JSON has no NaN, so non-finite floats are stored as null (`store.dumps`) and every
float field a stage may leave undefined is `float | None`. Unknown keys are refused on write and on
read (`extra="forbid"`). A table may gain optional fields; a reader never needs a default for a
field its writer always sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from peftlab.errors import StoreError

if TYPE_CHECKING:
    from peftlab.store import Store

R = TypeVar("R", bound="Record")


class Record(BaseModel):
    """Base of every results record: its table, its key, and JSON (de)serialisation."""

    model_config = ConfigDict(extra="forbid")
    TABLE: ClassVar[str]
    # The record's key in its table: a `str.format` template over its fields ("{task}/{split}");
    # a record whose key needs more than that (slices, conditions) overrides `key` instead.
    KEY: ClassVar[str]

    @property
    def key(self) -> str:
        return self.KEY.format_map(self.__dict__)

    def dump(self) -> dict[str, Any]:
        """JSON-ready dict; optional fields left at their default (None) are omitted, so a record
        holds what its stage measured and nothing else (readers use .get for optional fields)."""
        return self.model_dump(mode="json", exclude_defaults=True)

    @classmethod
    def parse(cls: type[R], data: dict[str, Any], *, where: str = "") -> R:
        """A stored record (as `Store.get` or `Store.records` returns it) as this type."""
        fields = cls.model_fields
        body = {k: v for k, v in data.items() if k != "key" or "key" in fields}
        try:
            return cls.model_validate(body)
        except ValidationError as err:
            first = err.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise StoreError(
                f"{where or cls.TABLE}: a stored {cls.TABLE!r} record does not match its schema "
                f"({loc}: {first['msg']}); it was written by another peftlab version: rerun the "
                "stage that writes it") from None


def write(store: Store, records: list[Record]) -> None:
    """Write records (of one or several tables) in one transaction per table."""
    by_table: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for rec in records:
        by_table.setdefault(rec.TABLE, []).append((rec.key, rec.dump()))
    for table, items in by_table.items():
        store.put_many(table, items)


def replace(store: Store, prefix: str, records: list[Record], table: str) -> None:
    """Atomically drop every record of `table` whose key starts with `prefix`, write `records`."""
    store.replace_where(table, prefix, [(r.key, r.dump()) for r in records])


def read(store: Store, cls: type[R]) -> list[R]:
    """Every record of `cls.TABLE`, validated, in key order."""
    return [cls.parse(d, where=f"{store.root}: {cls.TABLE}/{d.get('key')}")
            for d in store.records(cls.TABLE)]


def read_one(store: Store, cls: type[R], key: str) -> R | None:
    data = store.get(cls.TABLE, key)
    return None if data is None else cls.parse(data, where=f"{store.root}: {cls.TABLE}/{key}")


# ---------------------------------------------------------------------------------------------
# data


class DataRecord(Record):
    """One task split as the data stage found it (key "<task>/<split>")."""

    TABLE: ClassVar[str] = "data"
    KEY: ClassVar[str] = "{task}/{split}"
    task: str
    split: Literal["train", "eval"]
    rows: int  # rows in the source
    rows_used: int  # after the spec's subsampling
    describe: dict[str, Any]  # label counts (classification) or min/mean/max (regression)
    describe_used: dict[str, Any]
    source: str  # "files", "glue_dir" or "hub"
    path: str | None  # the local file, None for the hub
    checksum: str  # sha256 of the source file, or of the canonical content (hub)
    content_checksum: str  # sha256 of the subsampled rows the study uses


# ---------------------------------------------------------------------------------------------
# runs


class RunRecord(Record):
    """One training run (key: its run id). `status` running -> done | failed.

    Times in seconds, memory in bytes, throughput per second of the training loop.
    """

    TABLE: ClassVar[str] = "runs"
    KEY: ClassVar[str] = "{run_id}"
    run_id: str
    task: str
    method: str
    method_type: str
    seed: int
    config: dict[str, Any]  # RunConfig.as_dict(): the resolved configuration
    pid: int | None = None
    started: str | None = None
    status: Literal["running", "done", "failed"]
    finished: str | None = None
    failure_reason: str | None = None
    main_metric: str | None = None
    metrics: dict[str, dict[str, float | None]] | None = None  # name -> {value, ci_low, ...}
    baselines: dict[str, Any] | None = None  # majority/chance/untrained-head rates + verdict
    params: dict[str, Any] | None = None  # trainable / base parameter counts
    artifact: str | None = None  # relative to the study directory
    artifact_bytes: int | None = None
    artifact_weight_bytes: int | None = None
    eval_logits: str | None = None
    train_time_s: float | None = None
    train_wall_s: float | None = None
    eval_time_s: float | None = None
    steps: int | None = None
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    padding_share: float | None = None
    memory: dict[str, Any] | None = None
    loss_curve: list[float | None] | None = None
    log_history: list[dict[str, Any]] | None = None
    train_examples: int | None = None
    eval_examples: int | None = None
    search: dict[str, Any] | None = None  # the search trial the hyperparameters came from
    provenance: dict[str, Any] | None = None


class GenerationRecord(Record):
    """One output of a generation run or baseline for one evaluation input (key
    "<run_id>/<input>"): what metrics of generated text are computed from. `run_id` is the run's
    id, or "baseline:<task>:<name>" for the base model (zero_shot, few_shot) and the template."""

    TABLE: ClassVar[str] = "generations"
    KEY: ClassVar[str] = "{run_id}/{input}"
    run_id: str
    task: str
    method: str  # the study's method name, or the baseline's name
    seed: int | None = None
    input: int  # the input's id in the evaluation split (0..n-1, file order)
    input_text: str
    output: str
    references: list[str]


# ---------------------------------------------------------------------------------------------
# represent


class RepresentRecord(Record):
    """The manifest of one model's pooled representations on a task under one pooling.

    key "<task>/<key>" for the primary pooling (readout "primary"), "<task>/<key>/<pooling>"
    for an exploratory one (`extraction.manifest_key`). poolings: every pooling extracted
    in the same forward pass, primary first; head_pooling: what the classification head reads.
    """

    TABLE: ClassVar[str] = "represent"
    task: str
    model_key: str  # "base" or the run id
    run_id: str | None
    method: str | None
    method_type: str | None
    seed: int | None
    n: int  # probe examples
    d: int  # features per layer
    layers: int  # embeddings + blocks
    layer_names: list[str]
    pooling: str
    readout: Literal["primary", "exploratory"] = "primary"
    poolings: list[str] | None = None
    head_pooling: str | None = None
    dtype: str
    model_family: str
    padding_side: str
    pad_token_id: int | None
    probe_hash: str
    probe_rows: list[int] | None
    probe_samples: int
    probe_seed: int
    settings: dict[str, Any]
    source: str  # base weights' revision or the run's artifact + finish time
    file: str  # relative to the study directory
    bytes: int
    content_sha256: str
    extract_time_s: float
    examples_per_s: float | None
    provenance: dict[str, Any]

    @property
    def key(self) -> str:
        suffix = "" if self.readout == "primary" else f"/{self.pooling}"
        return f"{self.task}/{self.model_key}{suffix}"


class ReadoutRecord(Record):
    """The pooled-token diagnostic of one task under a single-token pooling (last or first):
    which token ids the readout reads over the probe set (key "<task>/<pooling>").

    The pooled token depends on the tokenizer and the probe texts only, never on the weights,
    so one record covers the base model and every run of the task (they share its tokenizer).
    diagnostic: `extraction.token_diagnostic` (top_share 0..1, top tokens decoded, their
    kind, warn). readout: primary or exploratory, as in the represent table.
    """

    TABLE: ClassVar[str] = "readout"
    KEY: ClassVar[str] = "{task}/{pooling}"
    task: str
    model: str  # the spec's model name
    pooling: str
    readout: Literal["primary", "exploratory"]
    probe_hash: str
    strip_whitespace: bool  # data.strip_whitespace when the probes were tokenised
    diagnostic: dict[str, Any]
    provenance: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# drift


class DriftRecord(Record):
    """Every measure of one layer of one pair of models of a task.

    key "<kind>/<run_a>/<run_b>/L<layer:03d>"; run_a is "base" for base_vs_run.
    values: measure -> value (None where undefined, with the reason in `undefined`);
    null: measure -> permutation null {observed, null_mean, null_std, null_q95, p_value,
    n_permutations} for measures that have one.
    """

    TABLE: ClassVar[str] = "drift"
    task: str
    method: str
    method_type: str
    kind: Literal["base_vs_run", "seed_to_seed"]
    run_a: str
    run_b: str
    seed_a: int | None
    seed_b: int
    layer: int
    layer_name: str
    n_layers: int
    n: int
    d_a: int
    d_b: int
    pooling: str
    # primary: the pooling the head reads (or the only one); exploratory: another readout of
    # the same forward pass, keyed "<pooling>/<kind>/<run_a>/<run_b>/L<layer:03d>"
    readout: Literal["primary", "exploratory"] = "primary"
    probe_hash: str
    values: dict[str, float | None]
    undefined: dict[str, str]
    null: dict[str, dict[str, Any] | None]
    # the primary drift measure's percentile interval over resampled probe examples
    # (measures.bootstrap_interval: {measure, estimate, ci_low, ci_high, confidence, ...})
    bootstrap: dict[str, Any] | None = None
    knn_k: int | None
    settings: dict[str, Any]
    stamp: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def key(self) -> str:
        prefix = "" if self.readout == "primary" else f"{self.pooling}/"
        return f"{prefix}{self.kind}/{self.run_a}/{self.run_b}/L{self.layer:03d}"


class WeightRecord(Record):
    """Weight-space statistics of one adapted matrix of one run (key "<run_id>/<module>").

    The statistics (`stats`) are `peftlab.weights.UpdateStats.as_dict()`; None with the reason in
    `undefined` where they cannot be computed.
    """

    TABLE: ClassVar[str] = "weights"
    KEY: ClassVar[str] = "{run_id}/{module}"
    task: str
    run_id: str
    method: str
    method_type: str
    seed: int
    is_peft: bool
    module: str
    matrix: str  # leaf name (q_proj, value, ...)
    block: int | None
    shape: list[int]
    update: str  # how the update was formed ("B A (exact)", "merged - base", "tuned - base")
    stats: dict[str, Any] | None
    undefined: str | None
    settings: dict[str, Any]
    stamp: dict[str, Any]
    provenance: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# bench


class BenchRecord(Record):
    """One sweep point (batch size x sequence length) of one bench unit.

    key "<mode>/<unit>/b<batch size>/s<seq len>" (mode may carry a "+compile" variant). Unit-level
    figures (load, gate, storage, flops, memory after load) repeat on each point of the unit; the
    point's figures are present when status is "done". latencies_ns: every timed request (ns).
    """

    TABLE: ClassVar[str] = "bench"
    KEY: ClassVar[str] = "{mode_key}/{unit}/b{batch_size}/s{seq_len}"
    mode: str  # the registered mode
    variant: str  # "eager", "compile", ...
    mode_key: str  # mode plus variant suffix
    unit: str
    tasks: list[str]
    task: str | None
    method: str | None
    method_type: str | None
    seed: int | None
    run_ids: list[str | None]
    adapter_names: list[str]
    artifacts: list[dict[str, Any]]
    settings: dict[str, Any]
    settings_hash: str
    status: str  # done, failed, unsupported
    failure_reason: str | None = None
    traceback: str | None = None
    batch_size: int
    seq_len: int | str
    process: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    storage: dict[str, Any] | None = None
    flops: dict[str, Any] | None = None
    memory_after_load: dict[str, Any] | None = None
    provenance: dict[str, Any] | None = None
    order: dict[str, Any] | None = None  # where the unit ran in the schedule
    # the timed point
    latencies_ns: list[int] | None = None
    latency_ms: dict[str, Any] | None = None
    device_latencies_ns: list[int] | None = None
    device_latency_ms: dict[str, Any] | None = None
    throughput: dict[str, Any] | None = None
    iterations: int | None = None
    stopped_by: str | None = None
    timed_wall_s: float | None = None
    timer: str | None = None
    gc_paused_while_timing: bool | None = None
    first_call_ms: float | None = None
    warmup_calls: int | None = None
    tokens_per_request_mean: float | None = None
    padded_len_mean: float | None = None
    memory: dict[str, Any] | None = None
    memory_measured_over: str | None = None
    extras: dict[str, Any] | None = None  # the mode's own figures (adapter switches, k, ...)


class BenchBlockRecord(Record):
    """One block of the bench schedule (the units of one seed, or the base units) and its drift.

    key "<block>" (e.g. "seed-42", "base"). order: the units' "<mode>/<unit>" in the order they
    ran; reference: the unit run again at the end of the block; drift: per sweep point
    {batch_size, seq_len, first_p50_ms, repeat_p50_ms, ratio (repeat / first)}: how much the
    machine's speed moved between the block's start and its end.
    """

    TABLE: ClassVar[str] = "bench_blocks"
    KEY: ClassVar[str] = "{block}"
    block: str
    seed: int | None
    scheme: str  # how the order was drawn
    order: list[str]
    reference: str | None = None
    reference_status: str | None = None  # done / failed / skipped, and why when not done
    drift: list[dict[str, Any]] = []
    started: str | None = None
    finished: str | None = None
    settings_hash: str
    # "<mode>/<unit>" -> {pid, parent_pid} of the process that measured it, for every unit of
    # `order` measured in the stage run that wrote this record; the reference's repeat too
    processes: dict[str, dict[str, Any]] | None = None
    reference_process: dict[str, Any] | None = None
    # the units the drift reference spans (measured between its two runs, in one stage run): a
    # block interrupted by a kill is rerun whole, so this is every unit of `order`
    covers: list[str] | None = None


class BenchPairRecord(Record):
    """One block of one paired latency comparison (`peftlab.bench.paired`): A and B served by
    one fresh process, alternately, on the same requests, in rounds (ABBA).

    key "<comparison>/<task>/<a> vs <b>/b<batch size>/s<seq len>/block-<NN>". comparison:
    "<mode a>_vs_<mode b>" as the modes declare it, or "aa" for the A/A control (one artifact
    under two labels). a, b: "<method>/<mode>" labels (the control's a: "... (again)").
    log_ratios: the observations, one per round: log latency of a minus log latency of b
    (`latency_design.round_log_ratios`); rounds: per round {round, order (labels as served),
    a_ms / b_ms (each segment's median, ms), a_ns / b_ns (every timed request, ns, per
    segment), log_ratio}. Analyse with `latency_design.analyse_pairs` over a comparison's
    blocks (the block is the unit).
    """

    TABLE: ClassVar[str] = "bench_pairs"
    KEY: ClassVar[str] = "{comparison}/{task}/{a} vs {b}/b{batch_size}/s{seq_len}/block-{block:02d}"
    comparison: str
    control: bool  # the A/A control
    primary: bool  # one of stats.primary.deployment's comparisons
    group: str  # "<task>/<method>": the comparisons measured in the same processes
    task: str
    a: str
    b: str
    mode_a: str
    mode_b: str
    method_a: str | None
    method_b: str | None
    run_id_a: str | None
    run_id_b: str | None
    seed: int | None  # the training seed of the block's artifacts
    block: int  # 0-based; blocks 0 and 1 are the pilot
    phase: Literal["pilot", "main"]
    batch_size: int
    seq_len: int | str
    status: Literal["done", "failed"]
    failure_reason: str | None = None
    log_ratios: list[float] = []
    rounds: list[dict[str, Any]] = []
    requests: int  # timed requests per segment
    process: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    check: list[dict[str, Any]] | None = None  # logits of one artifact under two modes agree
    timing: dict[str, Any] | None = None  # seconds: load, check, warm-up, rounds, wall
    settings: dict[str, Any]
    settings_hash: str
    started: str | None = None
    finished: str | None = None


class BenchDesignRecord(Record):
    """How the paired design of one comparison was sized and what it can detect (key as the
    comparison's `bench_pairs` keys without the block).

    pilot: the variance components and costs measured on the pilot blocks (sigma_round,
    sigma_block on the log scale, pooled over groups; round_s, block_s); plan: blocks and
    rounds chosen, predicted minimum detectable difference (%), whether it meets `detect`;
    result: `latency_design.analyse_pairs` over the blocks measured (no margin, no floor: the
    stats stage applies those), whose mdd_pct is the achieved minimum detectable difference.
    stopped_by: "plan" (the planned blocks ran), "budget" (the time budget ran out first),
    "failed" (a block failed).
    """

    TABLE: ClassVar[str] = "bench_design"
    KEY: ClassVar[str] = "{comparison}/{task}/{a} vs {b}/b{batch_size}/s{seq_len}"
    comparison: str
    control: bool
    primary: bool
    group: str
    task: str
    a: str
    b: str
    batch_size: int
    seq_len: int | str
    detect: float
    budget_s: float
    spent_s: float
    pilot: dict[str, Any]
    plan: dict[str, Any]
    result: dict[str, Any]
    mdd_pct: float | None  # achieved, at stats.alpha and stats.power
    stopped_by: str
    settings_hash: str


class ServingRecord(Record):
    """One load run of the serving benchmark: a configuration, a popularity pattern, a rate.

    key "<config>/<pattern>/r<offered rate>". The figures are `bench.serving.serve_at_rate`'s row
    (latency from the scheduled arrival, with p99 only from >= 100 requests), the sweep's verdict
    (sustained) and the configuration's saturation rate over the sweep it belongs to.
    """

    TABLE: ClassVar[str] = "serving"
    KEY: ClassVar[str] = "{config}/{pattern}/r{offered_rate:g}"
    config: str
    pattern: str
    offered_rate: float
    k: int
    adapters: list[str]
    seed: int | None  # the training seed whose models were served
    run_index: int  # position in the interleaved run order of the sweep
    sustained: bool
    saturation_rate: float | None = None  # of this (config, pattern) sweep
    saturation_throughput: float | None = None
    row: dict[str, Any]  # serve_at_rate's JSON row (latency, queue, batches, memory, ...)
    gate: dict[str, Any] | None = None  # the configuration's check against the training logits
    settings: dict[str, Any]
    settings_hash: str


# ---------------------------------------------------------------------------------------------
# search


class SearchTrialRecord(Record):
    """One trial of a hyperparameter search (key "trial/<task>/<method>/<search id[:8]>/<n:04d>").

    state: running -> complete | pruned | failed; "interrupted" is a trial whose process died
    (it is retried with the same values and does not count against the budget). values: objective
    name -> value on the validation split (costs included), for complete trials. intermediate:
    [{"step", "value"}] reported during training (the first objective, for the pruner).
    """

    TABLE: ClassVar[str] = "search"
    task: str
    method: str
    method_type: str
    search_id: str
    study_name: str  # the Optuna study in the search storage
    number: int  # Optuna's trial number
    state: Literal["running", "complete", "pruned", "failed", "interrupted"]
    counted: bool  # counts against the budget (every finished trial but an interrupted one)
    params: dict[str, Any]  # the sampled values, as applied to the run (training or method keys)
    values: dict[str, float | None] | None = None
    intermediate: list[dict[str, Any]] = []
    pruned_at_step: int | None = None
    failure_reason: str | None = None
    retry_of: int | None = None  # the interrupted trial this one repeats
    started: str
    finished: str | None = None
    duration_s: float | None = None
    steps: int | None = None  # training steps run
    train_examples: int  # the training subset minus the validation split
    validation_examples: int
    validation_digest: str  # sha256 of the validation rows (the summary lists them)
    run_config: dict[str, Any] | None = None  # the trial's RunConfig.as_dict()
    pid: int | None = None

    @property
    def key(self) -> str:
        return f"trial/{self.task}/{self.method}/{self.search_id[:8]}/{self.number:04d}"


class SearchRecord(Record):
    """The summary of one search of a (task, method) pair (key "summary/<task>/<method>/<id8>"),
    everything a report shows about it.

    objectives: [{"name", "direction"}]. best: {"trial", "params", "values"}, the trial the final
    runs use (multi-objective: the Pareto-front trial best on the first objective). pareto:
    [{"trial", "params", "values"}] (one entry when single-objective). history: one entry per
    finished trial in order, {"trial", "state", "value" (first objective, None unless complete),
    "best" (best first-objective value so far)}. importances: parameter -> share of the
    objective's variance (Optuna's fANOVA, summing to 1), None with `importance_error` when it
    cannot be computed. budget: {"n_trials", "timeout_s"} as the spec sets it (the same for every
    method of the task); counts: {"complete", "pruned", "failed", "interrupted"}; trials_s:
    seconds spent in trials over every session; stopped_by: "n_trials" or "timeout_s".
    """

    TABLE: ClassVar[str] = "search"
    task: str
    method: str
    method_type: str
    search_id: str
    study_name: str
    status: Literal["running", "done"]
    objectives: list[dict[str, str]]
    space: dict[str, Any]
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    validation: dict[str, Any]  # {"share", "seed", "train_examples", "validation_examples", ...}
    budget: dict[str, Any]
    counts: dict[str, int]
    trials_s: float
    stopped_by: str | None = None
    best: dict[str, Any] | None = None
    pareto: list[dict[str, Any]] = []
    history: list[dict[str, Any]] = []
    importances: dict[str, float] | None = None
    importance_method: str | None = None
    importance_error: str | None = None
    budget_sentence: str | None = None  # e.g. "lora on rte: 8 trials (budget: 8 trials) ..."
    storage: str  # the Optuna storage file, relative to the study directory
    provenance: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        return f"summary/{self.task}/{self.method}/{self.search_id[:8]}"


def read_search(store: Store) -> tuple[list[SearchTrialRecord], list[SearchRecord]]:
    """The `search` table as (trials, summaries), each validated, in key order."""
    trials, summaries = [], []
    for d in store.records("search"):
        where = f"{store.root}: search/{d.get('key')}"
        if str(d.get("key", "")).startswith("summary/"):
            summaries.append(SearchRecord.parse(d, where=where))
        else:
            trials.append(SearchTrialRecord.parse(d, where=where))
    return trials, summaries


def finished_searches(store: Store) -> dict[str, dict[str, Any]]:
    """The summary records of the finished searches in the `search` table, by search id (what
    `plan.Study` resolves searched runs with)."""
    _, summaries = read_search(store)
    return {r.search_id: r.dump() for r in summaries if r.status == "done"}


# Every table with a schema, by name (the CLI and the store tests use it).
SCHEMAS: dict[str, type[Record]] = {cls.TABLE: cls for cls in (
    DataRecord, RunRecord, RepresentRecord, DriftRecord, WeightRecord, BenchRecord,
    BenchBlockRecord, BenchPairRecord, BenchDesignRecord, ServingRecord, GenerationRecord)}


# ---------------------------------------------------------------------------------------------
# baselines


class BaselineRecord(Record):
    """What a run of a task must beat, on the evaluation subset the runs are evaluated on
    (key: the task). See `peftlab.baseline_scores` for the definitions.

    majority / best_constant / chance / label_counts: `baseline_scores.baseline_metrics(...)` (metric
    values in metric units; the majority predictor's with bootstrap intervals over the
    `eval_examples` examples). untrained_head: the base model with a freshly initialised head
    (`seed`) evaluated there: {seed, metrics: {name: {value, ci_low, ci_high}}, predicted:
    {label name: share of predictions}}, None with the reason in `untrained_error` when it
    could not be evaluated.
    """

    TABLE: ClassVar[str] = "baselines"
    KEY: ClassVar[str] = "{task}"
    task: str
    main_metric: str
    metrics: list[str]
    eval_examples: int
    content_checksum: str  # sha256 of the evaluation rows (the data stage's content_checksum)
    label_counts: dict[str, int]
    majority: dict[str, Any] | None
    best_constant: dict[str, Any]
    chance: dict[str, Any]
    untrained_head: dict[str, Any] | None = None
    untrained_error: str | None = None
    # the base with its head fitted on the frozen features of the training subset, where the
    # task's runs start from it (training.head_init: probe); same form as untrained_head
    probe_head: dict[str, Any] | None = None
    probe_error: str | None = None
    # that head's evaluation logits and labels (safetensors "logits" [n, num_labels] float32,
    # "labels" [n]), relative to the study directory: the start each run is judged against
    start_logits: str | None = None
    n_bootstrap: int
    confidence: float
    seed: int
    stamp: dict[str, Any]
    provenance: dict[str, Any]

    def baselines(self) -> dict[str, Any]:
        """The `baseline_scores.baseline_metrics` dict this record holds (what `judge` takes)."""
        return {"n": self.eval_examples, "metrics": self.metrics,
                "label_counts": self.label_counts, "majority": self.majority,
                "best_constant": self.best_constant, "chance": self.chance}


class GenerationBaselineRecord(Record):
    """One baseline of a generation task (key "<task>/<name>"): the base model zero-shot or
    few-shot on the runs' prompts, or the template; its outputs are in the `generations` table
    under run id "baseline:<task>:<name>". metrics: name -> {value, ci_low, ci_high} with
    bootstrap intervals over the evaluation inputs."""

    TABLE: ClassVar[str] = "gen_baselines"
    KEY: ClassVar[str] = "{task}/{name}"
    task: str
    name: str  # zero_shot, few_shot_<k>, template
    main_metric: str
    metrics: dict[str, dict[str, float | None]]
    eval_inputs: int
    stamp: dict[str, Any]  # what it depends on: evaluation rows, model, generation settings
    eval_time_s: float | None = None


SCHEMAS[BaselineRecord.TABLE] = BaselineRecord
SCHEMAS[GenerationBaselineRecord.TABLE] = GenerationBaselineRecord
SCHEMAS[ReadoutRecord.TABLE] = ReadoutRecord


# ---------------------------------------------------------------------------------------------
# forgetting


class ForgettingRecord(Record):
    """One model's forgetting on one unit: an off-task probe (one probe task at one layer) or
    the held-out LM loss. Written by `peftlab.stages.forgetting` (its docstring lists every
    field); read by the stats stage and the report.

    Keys: "probe/<probe task>/L<layer:03d>/<model key>" (measured probe), "probe/<probe
    task>/skipped" (a probe task that cannot be probed; "none" when no run has one),
    "probe/none/<run id>" (a run whose only probe task is its own), "lm_loss/<model key>".
    model_key is "base" or the run id; the run's identity fields are None for the base.
    Units: accuracies and `difference` of a probe are fractions (run minus base: negative =
    forgotten); LM losses are nats per predicted token (`difference` = after minus before:
    positive = forgotten); times in seconds.
    """

    TABLE: ClassVar[str] = "forgetting"
    measure: Literal["probe", "lm_loss"]
    status: Literal["done", "skipped"]
    reason: str | None = None  # why skipped
    model_key: str
    run_id: str | None
    task: str | None  # the run's tuning task
    method: str | None
    method_type: str | None
    seed: int | None
    settings: dict[str, Any]
    source: str | None  # base weights' revision or the run's artifact + finish time
    base_source: str
    provenance: dict[str, Any]
    # probe
    probe_task: str | None = None
    probe_task_source: Literal["study", "registered", "files"] | None = None
    layer: int | None = None  # hidden-state index: 0 = embeddings, i = block i
    layer_name: str | None = None
    n_layers: int | None = None
    pooling: str | None = None
    n_train: int | None = None
    n_test: int | None = None
    n_classes: int | None = None
    majority_rate: float | None = None
    excluded_overlap: int | None = None
    probe_hash: str | None = None
    accuracy: float | None = None
    c: float | None = None
    cv_accuracy: float | None = None
    cv_scores: list[float] | None = None
    cv_folds: int | None = None
    converged: bool | None = None
    correct: list[int] | None = None  # 0/1 per probe test example, in test order
    train_rows: list[int] | None = None  # base only: row ids of the probe examples
    test_rows: list[int] | None = None
    base_accuracy: float | None = None
    base_c: float | None = None
    extract_time_s: float | None = None
    fit_time_s: float | None = None
    # LM loss
    sources: list[str] | None = None
    n_texts: int | None = None
    n_tokens: int | None = None
    dropped_texts: int | None = None
    max_length: int | None = None
    text_hash: str | None = None
    head: str | None = None
    loss: float | None = None  # base only
    per_source: dict[str, dict[str, Any]] | None = None
    loss_before: float | None = None
    loss_after: float | None = None
    time_s: float | None = None
    # a run against the base (both measures)
    base_result: str | None = None  # digest of the base outcome this run was compared with
    difference: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    confidence: float | None = None
    ci_method: str | None = None
    bootstrap_samples: int | None = None

    @property
    def key(self) -> str:
        if self.measure == "lm_loss":
            return f"lm_loss/{self.model_key}"
        if self.status == "done":
            return f"probe/{self.probe_task}/L{self.layer:03d}/{self.model_key}"
        if self.run_id is None:
            return f"probe/{self.probe_task}/skipped"
        return f"probe/none/{self.run_id}"

    @property
    def is_run(self) -> bool:
        return self.run_id is not None

    @property
    def unit(self) -> str:
        """What was measured, the same for the base and every run: "probe <task> L<layer>" or
        "lm_loss"."""
        return "lm_loss" if self.measure == "lm_loss" else f"probe {self.probe_task} L{self.layer}"


SCHEMAS[ForgettingRecord.TABLE] = ForgettingRecord
