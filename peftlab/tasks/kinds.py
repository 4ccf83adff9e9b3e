"""Task kinds: what a task predicts, and everything that follows from it, registered by name.

    kind = get_kind("classification")      # or task.task_kind
    kind.num_labels(task)                   # output size of the head: K classes, or 1 score
    kind.predictions(task, logits)          # logits [n, num_labels] -> predictions [n]
    kind.metrics()                          # the registered metrics that score it

A kind declares what the rest of the code asks instead of branching on its name: whether labels
are class ids named by `label_names` (`has_classes`: label parsing, stratified splits, label
counts, logistic probes), the dtype the model trains on, its default metrics (the first is the
main one), how logits become predictions, the baselines a run must beat (`baselines`) and the
metric the learned rule falls back on (`learned_fallback`). Which metrics apply is matched on
`target`: a kind's predictions are class ids or scores, and so is what each `Metric` compares.

Built in: classification (K >= 2 named classes, argmax), regression (one float score) and
generation (text out of a causal LM, scored against one or several references per input;
`peftlab.generation` trains and decodes it, `peftlab.text_metrics` scores it).
Adding a kind is a `TaskKind` subclass and one `TASK_KINDS.register` call; a task names it in
`TaskDef.kind`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import numpy as np

from peftlab.errors import SpecError
from peftlab.metrics import METRICS
from peftlab.registry import Registry


class TaskDef(Protocol):
    """What a kind reads of a task (`peftlab.tasks.registry.TaskDef` has it); a protocol, so that
    kinds sit below the task registry, which imports them."""

    name: str
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]


class TaskKind:
    """What a task predicts. Subclasses set the class attributes and override what differs."""

    name: ClassVar[str]
    target: ClassVar[str] = "class"  # its predictions: "class" ids or "score"s (Metric.target)
    has_classes: ClassVar[bool] = True  # labels are class ids 0..K-1 named by `label_names`
    label_dtype: ClassVar[str] = "int64"  # the `labels` the model trains on: "int64" | "float32"
    default_metrics: ClassVar[tuple[str, ...]] = ("accuracy",)  # the first is the main metric
    # What the learned rule falls back on when the main metric cannot tell a run from a constant
    # predictor (`baselines.judge`); None: the main metric decides alone.
    learned_fallback: ClassVar[str | None] = None
    # How the chance baseline is drawn ({k}: the number of labels), for the baselines record.
    chance_rule: ClassVar[str] = "uniform random guessing over the {k} labels"

    def check(self, task: TaskDef, where: str) -> None:
        """Refuse (SpecError naming the task) label names this kind cannot use."""
        names = task.label_names
        if not self.has_classes:
            if names is not None:
                raise SpecError(f"{where}: a {self.name} task has no label_names")
            return
        if names is None or len(names) < 2:
            raise SpecError(f"{where}: label_names needs at least 2 labels (or None for "
                            "regression)")
        if len(set(names)) != len(names):
            raise SpecError(f"{where}: label_names has duplicates: {names!r}")
        if any(not str(n).strip() for n in names):
            raise SpecError(f"{where}: label_names has an empty name: {names!r}")

    def num_labels(self, task: TaskDef) -> int:
        """Output size of the model's head."""
        return len(task.label_names) if self.has_classes and task.label_names else 1

    def head_label_names(self, task: TaskDef) -> list[str] | None:
        """Names of the head's outputs (the model config's id2label), None for a lone score."""
        return list(task.label_names) if self.num_labels(task) > 1 else None

    def metrics(self) -> list[str]:
        """Names of the registered metrics that score this kind's predictions."""
        return [name for name, m in METRICS.items() if m.applies_to(self)]

    def predictions(self, task: TaskDef, logits: np.ndarray) -> np.ndarray:
        """(n,) predictions of `task` from logits [n, num_labels]: the argmax class (kinds with
        classes must return class ids 0..K-1)."""
        return np.asarray(logits).argmax(-1)

    def baselines(self, task: TaskDef, labels: np.ndarray, *, n_bootstrap: int, seed: int,
                  confidence: float, n_simulations: int) -> dict[str, Any]:
        """What a run must beat on evaluation labels `labels` (`baselines.baseline_metrics`):
        the constant predictors and chance over the classes, or chance alone for scores."""
        from peftlab.baseline_scores import class_baselines, score_baselines

        make = class_baselines if self.has_classes else score_baselines
        return make(task, labels, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence,
                    n_simulations=n_simulations, chance_rule=self.chance_rule)


class Classification(TaskKind):
    """K >= 2 named classes; the head has K outputs and predicts their argmax."""

    name = "classification"
    # Accuracy is the metric on which no constant predictor beats the majority share (F1 is not).
    learned_fallback = "accuracy"


class Regression(TaskKind):
    """One real-valued target (e.g. STS-B's similarity score); the head's one output is it."""

    name = "regression"
    target = "score"
    has_classes = False
    label_dtype = "float32"
    default_metrics = ("pearson", "spearman")
    chance_rule = "random scores independent of the targets: expected correlation 0"

    def predictions(self, task: TaskDef, logits: np.ndarray) -> np.ndarray:
        return np.asarray(logits)[:, 0]


class Generation(TaskKind):
    """Text out: a causal LM continues a prompt; every input has one or several reference texts.

    Its data frames hold one row per reference (`text_a` the input, `label` the reference text,
    `input` the input's id); its predictions are generated texts (`peftlab.generation`), not
    logits, and its baselines are the base model prompted zero- and few-shot and a template
    (`peftlab.generation.baselines`)."""

    name = "generation"
    target = "text"
    has_classes = False
    label_dtype = "text"
    default_metrics = ("bleu", "rouge_l", "chrf")
    chance_rule = "the base model and a template on the same inputs"

    def num_labels(self, task: TaskDef) -> int:
        return 0  # no classification head: the LM head writes the text

    def predictions(self, task: TaskDef, logits: np.ndarray) -> np.ndarray:
        raise TypeError("a generation task's predictions are decoded texts, not logits "
                        "(peftlab.generation.generate)")

    def baselines(self, task: TaskDef, labels: np.ndarray, **kwargs: Any) -> dict[str, Any]:
        raise TypeError("a generation task's baselines need the base model "
                        "(peftlab.generation.baselines)")


TASK_KINDS: Registry[TaskKind] = Registry("task kind")
TASK_KINDS.register(Classification)
TASK_KINDS.register(Regression)
TASK_KINDS.register(Generation)


def get_kind(name: str, *, where: str | None = None) -> TaskKind:
    return TASK_KINDS.get(name, where=where)
