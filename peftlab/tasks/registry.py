"""Task definitions as data, and the registry that maps a task name to its definition.

    from peftlab.tasks import get_task
    task = get_task("rte")          # TaskDef: fields, labels, metrics, where the data lives

A task says *what* is classified (one text or a pair, which labels, which metrics) and *where* its
data lives in each source layout (a Hugging Face hub dataset, an original GLUE folder). Loaders in
`sources.py` read those layouts; they contain no per-task code. Adding a task is one `TaskDef` plus
one `register_task` call (see `glue.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from peftlab.errors import SpecError

if TYPE_CHECKING:
    from peftlab.spec import TaskSpec

# Metric names a task may ask for. Classification metrics need label_names; correlations need a
# regression task. The metric implementations live elsewhere; the names are the contract.
CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")
METRIC_NAMES = CLASSIFICATION_METRICS + REGRESSION_METRICS

# The canonical split names every loader accepts. "eval" maps to a task's `eval_split` on the hub
# and to its dev file in a GLUE folder (test sets have no public labels, so they are not offered).
SPLITS = ("train", "eval")


@dataclass(frozen=True)
class HubLayout:
    """Where a task lives on the Hugging Face hub: `datasets.load_dataset(path, config)`.

    `text_columns` are the hub's column names for text_a (and text_b); `label_column` holds class
    ids in the task's label order (a `ClassLabel`) or floats for regression.
    """

    path: str
    config: str | None
    text_columns: tuple[str, ...]
    label_column: str = "label"


@dataclass(frozen=True)
class GlueLayout:
    """Where a task lives in an original GLUE folder (`<dir>/<folder>/<file>`) and how to read it.

    Files are tab-separated with no quoting. Columns are found by header NAME (`str`) when the file
    has a header, so column order does not matter; by 0-based POSITION (`int`) when it has none
    (CoLA). `num_fields` is the field count every line must have; None means "as many as the
    header", for tasks whose train and dev files differ in width (MNLI: 12 vs 16 columns).
    `label_map` maps raw label strings to class ids (RTE's "entailment" -> 0); None means the raw
    labels are class ids already ("0", "1") or, for regression, numbers.
    """

    folder: str
    files: tuple[tuple[str, str], ...]  # (canonical split, file name), e.g. ("eval", "dev.tsv")
    text_a: str | int
    label: str | int
    text_b: str | int | None = None
    header: bool = True
    num_fields: int | None = None
    label_map: tuple[tuple[str, int], ...] | None = None

    def file_for(self, split: str) -> str:
        """The file name holding canonical `split` ("train" or "eval")."""
        for name, filename in self.files:
            if name == split:
                return filename
        raise SpecError(
            f"GLUE folder {self.folder!r} has no file for split {split!r}; "
            f"known splits: {', '.join(name for name, _ in self.files)}"
        )


@dataclass(frozen=True)
class TaskDef:
    """One text-classification (or regression) task.

    The canonical DataFrame columns are always `text_a`, optional `text_b`, `label` and `row`;
    `text_columns` names what the texts are (e.g. ("premise", "hypothesis")) for reports and
    prompts. `label_names=None` means regression (one float target). The first metric is the main
    one, the one studies compare methods on.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    higher_is_better: bool = True
    eval_split: str = "validation"  # the hub split name used as canonical "eval"
    hub: HubLayout | None = None
    glue: GlueLayout | None = None

    def __post_init__(self) -> None:
        # Validate at definition time, so a bad task fails when registered, not mid-study.
        _check_task(self)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Output size of the classification head: number of classes, or 1 for regression."""
        return 1 if self.label_names is None else len(self.label_names)


def _check_task(task: TaskDef) -> None:
    """Raise SpecError naming the task and the field when a definition is inconsistent."""
    where = f"task {task.name!r}"
    if not task.name or not task.name.strip():
        raise SpecError("a task needs a non-empty name")
    if len(task.text_columns) not in (1, 2):
        raise SpecError(f"{where}: text_columns must name 1 or 2 texts, got {task.text_columns!r}")
    if task.label_names is not None:
        if len(task.label_names) < 2:
            raise SpecError(
                f"{where}: label_names needs at least 2 labels (or None for regression)"
            )
        if len(set(task.label_names)) != len(task.label_names):
            raise SpecError(f"{where}: label_names has duplicates: {task.label_names!r}")
        if any(not str(n).strip() for n in task.label_names):
            raise SpecError(f"{where}: label_names has an empty name: {task.label_names!r}")
    if not task.metrics:
        raise SpecError(f"{where}: metrics must list at least one metric")
    allowed = REGRESSION_METRICS if task.is_regression else CLASSIFICATION_METRICS
    for metric in task.metrics:
        if metric not in allowed:
            kind = "regression" if task.is_regression else "classification"
            raise SpecError(
                f"{where}: metric {metric!r} does not apply to a {kind} task; "
                f"choose from {', '.join(allowed)}"
            )
    n_texts = len(task.text_columns)
    if task.hub is not None and len(task.hub.text_columns) != n_texts:
        raise SpecError(f"{where}: hub.text_columns must name {n_texts} column(s)")
    if task.glue is not None:
        _check_glue_layout(task.glue, where)
        if (task.glue.text_b is not None) != (n_texts == 2):
            raise SpecError(f"{where}: glue.text_b must be set exactly when the task has 2 texts")
        if task.glue.label_map is not None and task.label_names is not None:
            bad = [raw for raw, i in task.glue.label_map if not 0 <= i < len(task.label_names)]
            if bad:
                raise SpecError(f"{where}: glue.label_map maps {bad!r} outside the label ids")


def _check_glue_layout(layout: GlueLayout, where: str) -> None:
    """Columns are header names in a file with a header, positions inside num_fields otherwise."""
    cols = [c for c in (layout.text_a, layout.text_b, layout.label) if c is not None]
    if layout.header:
        if not all(isinstance(c, str) for c in cols):
            raise SpecError(
                f"{where}: glue columns must be header names when the file has a header"
            )
        return
    if layout.num_fields is None:
        raise SpecError(f"{where}: a GLUE file without a header needs num_fields")
    if not all(isinstance(c, int) and 0 <= c < layout.num_fields for c in cols):
        raise SpecError(
            f"{where}: glue columns must be positions 0..{layout.num_fields - 1} "
            "when the file has no header"
        )


# Keyed by a normalised name so "SST-2", "sst_2" and "sst2" all find the same task.
_REGISTRY: dict[str, TaskDef] = {}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


def register_task(task: TaskDef, *, replace: bool = False) -> TaskDef:
    """Add `task` to the registry and return it. A name clash is an error unless `replace`."""
    key = _key(task.name)
    if key in _REGISTRY and not replace:
        raise SpecError(f"a task named {task.name!r} is already registered")
    _REGISTRY[key] = task
    return task


def get_task(name: str) -> TaskDef:
    """The task registered as `name` (case, '-' and '_' ignored); SpecError lists known names."""
    task = _REGISTRY.get(_key(name))
    if task is None:
        raise SpecError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return task


def task_names() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(task.name for task in _REGISTRY.values())


def make_file_task(
    name: str,
    label_names: tuple[str, ...] | list[str] | None,
    metrics: tuple[str, ...] | list[str] | None = None,
    text_columns: tuple[str, ...] | list[str] = ("text",),
) -> TaskDef:
    """A task for the user's own files (no hub or GLUE layout). It is validated, not registered.

    `label_names=None` makes a regression task. `metrics=None` picks accuracy + macro F1 for
    classification, Pearson + Spearman for regression. For a pair task pass two text_columns,
    e.g. ("premise", "hypothesis").
    """
    if metrics is None:
        metrics = REGRESSION_METRICS if label_names is None else ("accuracy", "macro_f1")
    return TaskDef(
        name=name,
        text_columns=tuple(text_columns),
        label_names=None if label_names is None else tuple(str(n) for n in label_names),
        metrics=tuple(metrics),
        eval_split="eval",
    )


def task_from_spec(t: TaskSpec) -> TaskDef:
    """The task a spec's `tasks` entry means: the registered one, or the user's files (metrics
    default to accuracy, or Pearson + Spearman for a regression task)."""
    if t.files is None:
        return get_task(t.name)
    metrics = t.metrics or (["pearson", "spearman"] if t.regression else ["accuracy"])
    text_columns = tuple(c for c in ("text_a", "text_b") if c in (t.columns or {}))
    return make_file_task(t.name, None if t.regression else tuple(t.label_names or ()),
                          tuple(metrics), text_columns)
