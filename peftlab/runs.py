"""One training run of a study, resolved from the spec's layers, and its deterministic id.

    rc = resolve_run(spec, spec.tasks[0], "lora", 42, where=lambda key: f"study.yaml: {key}")
    rc.run_id                               # "sst2-lora-s42-1a2b3c4d"

Hyperparameters resolve in this order, later wins:

    training (study-wide) < tasks[i].training < methods.<name>.training < overrides[j] (in order)

and method parameters: methods.<name> < overrides[j].params, validated by the method's registered
parameter model. Each layer is validated where it is written, so an error names its own key path.
The id hashes what changes the trained model (`RunConfig.identity`), so a rerun skips finished
work and a changed hyperparameter gives a new id instead of silently reusing an old result.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from peftlab.errors import SpecError, format_validation
from peftlab.methods import get_method
from peftlab.spec import ModelSpec, StudySpec, TaskSpec, TrainingSpec
from peftlab.sweep import merged


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
    strip_whitespace: bool = True  # data.strip_whitespace: texts stripped before tokenising
    # Set when a search chose hyperparameters: {"id", "study", "trial", "params", "values"}; or,
    # before that search has finished, {"id", "study", "status": "waiting"} (see Study.resolve).
    search: dict[str, Any] | None = None
    # generation tasks: the spec's `generation` block with the task's prompt template filled in
    # (prompt, references and decoding change the run); {} for every other task
    generation: dict[str, Any] = field(default_factory=dict)
    run_id: str = field(default="")

    @property
    def waiting(self) -> bool:
        """True when the run's hyperparameters come from a search that has not finished."""
        return bool(self.search) and self.search.get("status") == "waiting"

    def identity(self) -> dict[str, Any]:
        """The content the run id hashes: what changes the trained model."""
        return {
            "task": self.task,
            "method_type": self.method_type,
            "seed": self.seed,
            "params": self.params,
            # report_to and logging cadence do not change the trained weights
            # keys added later enter only when set away from their default, so runs that
            # do not use them keep their ids (training.head_init, model.head)
            "training": self.training.model_dump(
                mode="json", exclude={"report_to", "logging_steps", "eval_batch_size",
                                      *(("head_init",) if self.training.head_init == "random"
                                        else ())}
            ),
            "model": self.model.model_dump(
                mode="json", exclude={"head"} if self.model.head == "sequence-classification"
                else None),
            "train_samples": self.train_samples,
            "eval_samples": self.eval_samples,
            "data_seed": self.data_seed,
            # only for tasks from the user's files, so registered tasks keep their ids
            **({"task_data": self.task_data} if self.task_data else {}),
            # only when whitespace is kept, so runs on the default (stripped) text keep their ids
            **({} if self.strip_whitespace else {"strip_whitespace": False}),
            # the search the chosen values came from (the values themselves are in params and
            # training; the trial's number is not: a resumed search that retried a trial
            # chooses the same values under another number); only for searched runs, so other
            # runs keep their ids
            **({"search": self.search["id"]} if self.search and "trial" in self.search else {}),
            # only for generation tasks, so every other run keeps its id
            **({"generation": self.generation} if self.generation else {}),
        }

    def as_dict(self) -> dict[str, Any]:
        d = self.identity()
        d.update(run_id=self.run_id, method=self.method, training=self.training.model_dump(mode="json"))
        return d


def make_run_id(task: str, method: str, seed: int, identity: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
    return f"{task}-{method}-s{seed}-{digest[:8]}"


def with_id(rc: RunConfig) -> RunConfig:
    """`rc` with the id of its identity."""
    return replace(rc, run_id=make_run_id(rc.task, rc.method, rc.seed, rc.identity()))


def resolve_run(spec: StudySpec, tspec: TaskSpec, method: str, seed: int,
                where: Callable[[str], str]) -> RunConfig:
    """The run (task, method, seed) as the spec's layers define it, before any searched value.

    `where(key)` names a key path for error messages (with the spec file, `Study.where`).
    """
    task = tspec.name
    entry = dict(spec.methods[method])
    mtype = entry.pop("type", None)
    m = get_method(mtype, where=where(f"methods.{method}.type"))
    method_training = entry.pop("training", {}) or {}
    training: dict[str, Any] = spec.training.model_dump()
    # Each layer is validated where it is written, so an error names its own key path.
    _layer(training, tspec.training, where(f"tasks[{task}].training"))
    _layer(training, method_training, where(f"methods.{method}.training"))
    params = entry
    resolved_params = m.validate_params(params, where=where(f"methods.{method}"))
    for i, ov in enumerate(spec.overrides):
        if (ov.tasks is None or task in ov.tasks) and (ov.methods is None or method in ov.methods):
            _layer(training, ov.training, where(f"overrides[{i}].training"))
            if ov.params:
                params = merged(params, ov.params)  # nested mappings merge (type: peft)
                resolved_params = m.validate_params(
                    params, where=where(f"overrides[{i}].params (method {method!r})"))
    tr = TrainingSpec(**training)
    if tr.head_init == "probe" and spec.model.head != "sentence-embedding":
        raise SpecError(f"{where('training.head_init')}: 'probe' fits the head of "
                        "model.head: sentence-embedding; the run "
                        f"{task}/{method} has model.head {spec.model.head!r} (set model.head: "
                        "sentence-embedding, or head_init: random)")
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
        strip_whitespace=spec.data.strip_whitespace,
        generation=_generation(spec, tspec),
    )
    return with_id(rc)


def _generation(spec: StudySpec, tspec: TaskSpec) -> dict[str, Any]:
    """The `generation` block a generation task's run depends on ({} for other tasks)."""
    from peftlab.tasks import task_from_spec

    task = task_from_spec(tspec)
    if task.kind != "generation":
        return {}
    from peftlab.spec import NOT_RUN_SETTINGS

    g = spec.generation.model_dump(mode="json", exclude=set(NOT_RUN_SETTINGS))
    g["prompt_template"] = g["prompt_template"] or task.prompt_template or "{input}"
    return g


def with_values(rc: RunConfig, values: dict[str, Any], *, where: str) -> RunConfig:
    """`rc` with searched values applied (training keys and method parameters), validated
    and with its new id."""
    training = {k: v for k, v in values.items() if k in TrainingSpec.model_fields}
    params = {k: v for k, v in values.items() if k not in training}
    try:
        tr = TrainingSpec(**{**rc.training.model_dump(), **training})
    except ValidationError as e:
        raise SpecError(format_validation(e, where)) from None
    p = (get_method(rc.method_type).validate_params({**rc.params, **params}, where=where)
         if params else rc.params)
    return with_id(replace(rc, training=tr, params=p))


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
