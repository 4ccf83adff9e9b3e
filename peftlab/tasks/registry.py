"""Task definitions as data, and the registry that maps a task name to its definition.

    from peftlab.tasks import get_task
    task = get_task("rte")          # TaskDef: fields, labels, metrics, where the data lives

A task says *what* is predicted (one text or a pair, its kind, which labels, which metrics) and
*where* its data lives in each source layout (a Hugging Face hub dataset, an original GLUE
folder). Loaders in `sources.py` read those layouts; they contain no per-task code. Adding a task
is one `TaskDef` plus one `register_task` call (see `glue.py`); its kind (`kinds.py`) and metrics
(`peftlab.metrics`) are looked up in their registries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftlab.errors import SpecError
from peftlab.metrics import METRICS
from peftlab.registry import Registry
from peftlab.tasks.kinds import TaskKind, get_kind

if TYPE_CHECKING:
    from peftlab.spec import TaskSpec

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
    """One text-classification (or regression, or another registered kind) task.

    The canonical DataFrame columns are always `text_a`, optional `text_b`, `label` and `row`;
    `text_columns` names what the texts are (e.g. ("premise", "hypothesis")) for reports and
    prompts. `kind` names its `TaskKind` (`kinds.TASK_KINDS`); left out, `label_names=None` means
    regression (one float target) and named labels classification. The first metric is the main
    one, the one studies compare methods on; `higher_is_better` left out follows that metric.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    higher_is_better: bool | None = None
    eval_split: str = "validation"  # the hub split name used as canonical "eval"
    hub: HubLayout | None = None
    glue: GlueLayout | None = None
    kind: str | None = None
    # A loader of its own (`sources.BUILTIN_LOADERS`, e.g. "e2e": the E2E NLG folder), for
    # tasks whose files fit neither the hub nor the GLUE layout.
    builtin: str | None = None
    # Generation tasks: the prompt the model continues, `{input}` replaced by the input text.
    prompt_template: str | None = None

    def __post_init__(self) -> None:
        if self.kind is None:  # frozen: the derived defaults are set once, here
            object.__setattr__(self, "kind",
                               "regression" if self.label_names is None else "classification")
        # Validate at definition time, so a bad task fails when registered, not mid-study.
        _check_task(self)
        if self.higher_is_better is None:
            object.__setattr__(self, "higher_is_better",
                               METRICS.get(self.metrics[0]).higher_is_better)

    @property
    def task_kind(self) -> TaskKind:
        return get_kind(self.kind, where=f"task {self.name!r}")

    @property
    def has_classes(self) -> bool:
        """Labels are class ids 0..K-1 named by `label_names` (the kind says)."""
        return self.task_kind.has_classes

    @property
    def is_regression(self) -> bool:
        """Labels are numbers, not class ids (not `has_classes`)."""
        return not self.has_classes

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def num_labels(self) -> int:
        """Output size of the model's head: number of classes, or 1 for a score (the kind's
        `num_labels`)."""
        return self.task_kind.num_labels(self)

    @property
    def head_label_names(self) -> list[str] | None:
        """Names of the head's outputs (the model config's id2label), None for a lone score."""
        return self.task_kind.head_label_names(self)


def _check_task(task: TaskDef) -> None:
    """Raise SpecError naming the task and the field when a definition is inconsistent."""
    where = f"task {task.name!r}"
    if not task.name or not task.name.strip():
        raise SpecError("a task needs a non-empty name")
    if len(task.text_columns) not in (1, 2):
        raise SpecError(f"{where}: text_columns must name 1 or 2 texts, got {task.text_columns!r}")
    kind = get_kind(task.kind, where=f"{where}: kind")
    kind.check(task, where)
    if not task.metrics:
        raise SpecError(f"{where}: metrics must list at least one metric")
    allowed = kind.metrics()
    for metric in task.metrics:
        if metric not in allowed:
            raise SpecError(
                f"{where}: metric {metric!r} does not apply to a {kind.name} task; "
                f"choose from {', '.join(allowed)}"
            )
    n_texts = len(task.text_columns)
    if task.hub is not None and len(task.hub.text_columns) != n_texts:
        raise SpecError(f"{where}: hub.text_columns must name {n_texts} column(s)")
    if task.glue is not None:
        _check_glue_layout(task.glue, where)
        if (task.glue.text_b is not None) != (n_texts == 2):
            raise SpecError(f"{where}: glue.text_b must be set exactly when the task has 2 texts")
        if task.glue.label_map is not None and task.has_classes:
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


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "")


class TaskRegistry(Registry[TaskDef]):
    """Tasks by name, keyed by a normalised name so "SST-2", "sst_2" and "sst2" all find the same
    task; a name clash is a SpecError."""

    def register(self, obj: Any = None, *, replace: bool = False) -> Any:
        key = _key(obj.name)
        if key in self._items and not replace:
            raise SpecError(f"a task named {obj.name!r} is already registered")
        self._items[key] = obj
        return obj

    def unregister(self, name: str) -> None:
        self._items.pop(_key(name), None)

    @contextlib.contextmanager
    def temporarily(self, obj: Any) -> Iterator[Any]:
        self.register(obj)
        try:
            yield obj
        finally:
            self.unregister(obj.name)

    def get(self, name: Any, *, where: str | None = None) -> TaskDef:
        task = self._items.get(_key(name)) if isinstance(name, str) else None
        if task is None:
            prefix = f"{where}: " if where else ""
            raise SpecError(f"{prefix}unknown task {name!r}; known tasks: "
                            f"{', '.join(task_names())}")
        return task

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._items


TASKS = TaskRegistry("task")


def register_task(task: TaskDef, *, replace: bool = False) -> TaskDef:
    """Add `task` to the registry and return it. A name clash is an error unless `replace`."""
    return TASKS.register(task, replace=replace)


def get_task(name: str) -> TaskDef:
    """The task registered as `name` (case, '-' and '_' ignored); SpecError lists known names."""
    return TASKS.get(name)


def task_names() -> list[str]:
    """Names of all registered tasks, sorted."""
    return sorted(task.name for task in TASKS.values())


def make_file_task(
    name: str,
    label_names: tuple[str, ...] | list[str] | None,
    metrics: tuple[str, ...] | list[str] | None = None,
    text_columns: tuple[str, ...] | list[str] = ("text",),
    kind: str | None = None,
    prompt_template: str | None = None,
) -> TaskDef:
    """A task for the user's own files (no hub or GLUE layout). It is validated, not registered.

    `kind=None`: `label_names=None` makes a regression task, named labels a classification one.
    `metrics=None` picks the kind's default metrics (accuracy for classification, Pearson +
    Spearman for regression). For a pair task pass two text_columns, e.g. ("premise",
    "hypothesis").
    """
    if kind is None:
        kind = "regression" if label_names is None else "classification"
    if metrics is None:
        metrics = get_kind(kind, where=f"task {name!r}: kind").default_metrics
    return TaskDef(
        name=name,
        text_columns=tuple(text_columns),
        label_names=None if label_names is None else tuple(str(n) for n in label_names),
        metrics=tuple(metrics),
        eval_split="eval",
        kind=kind,
        prompt_template=prompt_template,
    )


def task_from_spec(t: TaskSpec) -> TaskDef:
    """The task a spec's `tasks` entry means: the registered one, or the user's files (metrics
    None: the task kind's defaults, see `make_file_task`)."""
    if t.files is None:
        return get_task(t.name)
    if t.kind == "generation":
        return make_file_task(t.name, None, tuple(t.metrics) if t.metrics else None, ("prompt",),
                              kind="generation", prompt_template=t.prompt_template or "{input}")
    text_columns = tuple(c for c in ("text_a", "text_b") if c in (t.columns or {}))
    return make_file_task(t.name, None if t.regression else tuple(t.label_names or ()),
                          tuple(t.metrics) if t.metrics else None, text_columns)
