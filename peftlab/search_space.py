"""Search spaces: a spec's `search:` block resolved per (task, method) into a `SearchConfig`.

    searches = resolve_searches(spec, where=study.where)    # {(task, method): SearchConfig}

The space resolves like the rest of the spec: `search.space` (every method) <
`search.methods.<name>` < `search.overrides[j]` (in order). Every end of a range and every choice
is applied to the (task, method)'s base run and validated, so a value that cannot make a valid
run fails at load time, naming its key. The budget must be the same for every method of a task
(the fair-search rule). What a search found is not read here: `plan.Study` is given the
finished searches' outcomes by its caller.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

from peftlab.errors import SpecError
from peftlab.methods import get_method
from peftlab.runs import RunConfig, resolve_run, with_values
from peftlab.spec import SEARCH_COSTS, ParamRange, StudySpec, TrainingSpec
from peftlab.tasks import task_from_spec

# Training keys that do not change the trained model (or only its report): nothing to search.
_UNSEARCHABLE = ("report_to", "logging_steps", "eval_batch_size", "bootstrap_samples")


@dataclass(frozen=True)
class SearchConfig:
    """One resolved search: the space, budget and objective of a (task, method) pair.

    space: name -> {"target": "training" | "params", "kind": "float" | "int" | "categorical",
    "low", "high", "log"} for ranges or {"choices", "labels"} for categorical values (`labels`
    are what Optuna stores: the choice itself, or its JSON text when it is a list or mapping).
    `base` is a trial's run before any sampled value, at the search's seed. `search_id` hashes
    everything here, so a changed space, budget, objective, sampler or base is a new search.
    """

    task: str
    method: str
    base: RunConfig
    space: dict[str, dict[str, Any]]
    n_trials: int | None  # finished trials (complete, pruned or failed; not interrupted ones)
    timeout_s: float | None  # seconds of trials, summed over every session of the search
    objectives: tuple[str, ...]  # metric names ("main" resolved) and SEARCH_COSTS names
    directions: tuple[str, ...]  # "maximize" | "minimize", one per objective
    sampler: str  # tpe | nsga2 | random
    seed: int
    startup_trials: int
    pruner: str  # none | median | successive_halving
    pruner_startup_trials: int
    reduction_factor: int
    eval_steps: int | None
    validation_share: float
    validation_seed: int
    search_id: str = ""

    def identity(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("base", "search_id")}
        d["base"] = self.base.identity()
        return d

    @property
    def study_name(self) -> str:
        """The Optuna study's name inside the search storage."""
        return f"{self.task}-{self.method}-{self.search_id[:8]}"


def _choice_label(choice: Any) -> Any:
    if choice is None or isinstance(choice, (bool, int, float, str)):
        return choice
    return json.dumps(choice, sort_keys=True)


def _search_dim(base: RunConfig, key: str, values: Any, where: str) -> dict[str, Any]:
    """One searched key, resolved and checked: every end or choice must make a valid run.

    `where` is the key's path with the spec file (the error messages' prefix)."""
    method_keys = sorted(get_method(base.method_type).Params.model_fields)
    if key in TrainingSpec.model_fields and key not in _UNSEARCHABLE:
        target = "training"
    elif key in method_keys:
        target = "params"
    else:
        training_keys = sorted(k for k in TrainingSpec.model_fields if k not in _UNSEARCHABLE)
        raise SpecError(f"{where}: {key!r} is not a training key nor a parameter of "
                        f"method type {base.method_type!r}; training keys: {training_keys}; "
                        f"method parameters: {method_keys or 'none'}")
    if isinstance(values, ParamRange):
        ends = [int(values.low), int(values.high)] if values.type == "int" else [values.low,
                                                                                values.high]
        for v in ends:
            with_values(base, {key: v}, where=where)
        return {"target": target, "kind": values.type, "low": ends[0], "high": ends[1],
                "log": values.log}
    labels = [_choice_label(c) for c in values]
    if len(set(map(json.dumps, labels))) != len(labels):
        raise SpecError(f"{where}: choices must be unique, got {values}")
    for c in values:
        with_values(base, {key: c}, where=where)
    return {"target": target, "kind": "categorical", "choices": list(values), "labels": labels}


def resolve_searches(spec: StudySpec, where: Callable[[str], str]
                     ) -> dict[tuple[str, str], SearchConfig]:
    """Every (task, method) search of the spec, checked; the fair-search rule included.

    `where(key)` names a key path for error messages (with the spec file, `Study.where`)."""
    s = spec.search
    assert s is not None
    tasks, methods = [t.name for t in spec.tasks], list(spec.methods)
    for name in s.methods:
        if name not in spec.methods:
            raise SpecError(f"{where(f'search.methods.{name}')}: unknown method {name!r}; "
                            f"the study's methods are {sorted(methods)}")
    for i, ov in enumerate(s.overrides):
        for t in ov.tasks or []:
            if t not in tasks:
                raise SpecError(f"{where(f'search.overrides[{i}].tasks')}: unknown task "
                                f"{t!r}; the study's tasks are {sorted(tasks)}")
        for m in ov.methods or []:
            if m not in spec.methods:
                raise SpecError(f"{where(f'search.overrides[{i}].methods')}: unknown "
                                f"method {m!r}; the study's methods are {sorted(methods)}")
    out: dict[tuple[str, str], SearchConfig] = {}
    for tspec in spec.tasks:
        t = tspec.name
        task_metrics = list(task_from_spec(tspec).metrics)
        objectives: list[str] = []
        for o in s.objective:
            name = task_metrics[0] if o == "main" else o
            if name not in SEARCH_COSTS and name not in task_metrics:
                raise SpecError(f"{where('search.objective')}: task {t!r} does not compute "
                                f"{o!r}; its metrics are {task_metrics} (or 'main'), costs "
                                f"{sorted(SEARCH_COSTS)}")
            if name in objectives:
                raise SpecError(f"{where('search.objective')}: {o!r} repeats objective "
                                f"{name!r} for task {t!r}")
            objectives.append(name)
        for m in methods:
            base = resolve_run(spec, tspec, m, s.seed, where)
            space: dict[str, tuple[Any, str]] = {k: (v, f"search.space.{k}")
                                                 for k, v in s.space.items()}
            space.update({k: (v, f"search.methods.{m}.{k}")
                          for k, v in s.methods.get(m, {}).items()})
            n_trials, timeout_s = s.n_trials, s.timeout_s
            for i, ov in enumerate(s.overrides):
                if (ov.tasks is None or t in ov.tasks) and (ov.methods is None or m in ov.methods):
                    space.update({k: (v, f"search.overrides[{i}].space.{k}")
                                  for k, v in ov.space.items()})
                    n_trials = ov.n_trials if ov.n_trials is not None else n_trials
                    timeout_s = ov.timeout_s if ov.timeout_s is not None else timeout_s
            if not space:
                raise SpecError(f"{where('search.space')}: nothing to search for task "
                                f"{t!r}, method {m!r}; name at least one key, e.g. "
                                "learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}")
            dims = {k: _search_dim(base, k, v, where(key))
                    for k, (v, key) in sorted(space.items())}
            sc = SearchConfig(
                task=t, method=m, base=base, space=dims, n_trials=n_trials, timeout_s=timeout_s,
                objectives=tuple(objectives),
                directions=tuple("minimize" if o in SEARCH_COSTS else "maximize"
                                 for o in objectives),
                sampler=s.sampler if s.sampler != "auto" else (
                    "tpe" if len(objectives) == 1 else "nsga2"),
                seed=s.seed, startup_trials=s.startup_trials, pruner=s.pruner,
                pruner_startup_trials=s.pruner_startup_trials,
                reduction_factor=s.reduction_factor, eval_steps=s.eval_steps,
                validation_share=s.validation_share, validation_seed=s.validation_seed)
            digest = hashlib.sha256(json.dumps(sc.identity(), sort_keys=True,
                                               default=str).encode()).hexdigest()
            out[(t, m)] = replace(sc, search_id=digest[:16])
        # The fair-search rule: one budget for every method of a task.
        budgets = {m: (out[(t, m)].n_trials, out[(t, m)].timeout_s) for m in methods}
        if len(set(budgets.values())) > 1:
            culprits = [i for i, ov in enumerate(s.overrides)
                        if (ov.n_trials is not None or ov.timeout_s is not None)
                        and (ov.tasks is None or t in ov.tasks)]
            key = f"search.overrides[{culprits[0]}]" if culprits else "search"
            shown = ", ".join(f"{m}: n_trials {n}, timeout_s {sec}"
                              for m, (n, sec) in budgets.items())
            raise SpecError(
                f"{where(key)}: the search budget of task {t!r} differs between methods "
                f"({shown}); every method of a task must get the same n_trials and timeout_s, "
                "or the comparison measures the search rather than the method")
    return out
