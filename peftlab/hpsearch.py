"""Hyperparameter search with Optuna: validation split, trials, pruning, resume, summaries.

    fit, val = carve_validation(train_df, task, share=0.2, seed=0)
    summary = optimise(sc, task, train_df, device="cpu", storage_path=p, make_run=...,
                       on_trial=write, on_summary=write)

One Optuna study per (task, method) search (`SearchConfig`), all in one journal file in the study
directory, driven with ask/tell so that the process that owns the store decides every trial. A
trial trains `peftlab.training.train_and_evaluate` on the training subset minus a validation split
(seeded, stratified) and is scored on that split; the evaluation split the final runs report is
never loaded here. Evaluations on the validation split during training feed the pruner (median or
successive halving) through a Trainer callback.

Resuming: a trial found RUNNING when a search starts belonged to a process that died (the study
directory's lock admits one writer); it is marked FAIL with `interrupted` and its values are
queued again, so it is retried and does not count against the budget. The sampler is re-seeded
per trial from (seed, number of trials counted so far), so a resumed search asks for the same
values as one that was never interrupted; with deterministic training it ends with the same
trials.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError
from peftlab.records import SearchRecord, SearchTrialRecord

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.execution import Executor
    from peftlab.plan import Study
    from peftlab.runs import RunConfig
    from peftlab.search_space import SearchConfig
    from peftlab.store import Store
    from peftlab.tasks import TaskDef

STORAGE_NAME = "optuna.journal"  # inside <study dir>/search/


class Pruned(Exception):
    """The pruner stopped a trial at `step` (raised from the evaluation callback)."""

    def __init__(self, step: int):
        super().__init__(f"pruned at step {step}")
        self.step = step


# ---------------------------------------------------------------------------------------------
# The validation split


def carve_validation(df: pd.DataFrame, task: TaskDef, share: float, seed: int
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fit, validation): a seeded split of a training frame, stratified by label for
    classification (scikit-learn's train_test_split), both in the frame's row order.

    Raises PeftlabError when either part would be empty or a class would be missing from fit.
    """
    from sklearn.model_selection import train_test_split

    if task.kind == "generation":  # by input: an input's references stay on one side
        return _carve_inputs(df, task, share, seed)
    n_val = math.ceil(len(df) * share)
    if n_val < 1 or len(df) - n_val < 1:
        raise PeftlabError(f"task {task.name!r}: a validation share of {share} of its "
                           f"{len(df)} training examples leaves an empty split; use more "
                           "training samples or another search.validation_share")
    labels = df["label"].to_numpy() if stratifiable(df, task, n_val) else None
    fit_idx, val_idx = train_test_split(range(len(df)), test_size=n_val, random_state=seed,
                                        shuffle=True, stratify=labels)
    return (df.iloc[sorted(fit_idx)].reset_index(drop=True),
            df.iloc[sorted(val_idx)].reset_index(drop=True))


def _carve_inputs(df: pd.DataFrame, task: TaskDef, share: float, seed: int
                  ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`carve_validation` of a generation frame: a seeded share of its inputs (with all of
    their references) is the validation split."""
    import numpy as np

    ids = df["input"].drop_duplicates().to_numpy()
    n_val = math.ceil(len(ids) * share)
    if n_val < 1 or len(ids) - n_val < 1:
        raise PeftlabError(f"task {task.name!r}: a validation share of {share} of its "
                           f"{len(ids)} training inputs leaves an empty split; use more "
                           "training samples or another search.validation_share")
    val = set(np.random.default_rng(seed).choice(ids, size=n_val, replace=False).tolist())
    in_val = df["input"].isin(val).to_numpy()
    return df[~in_val].reset_index(drop=True), df[in_val].reset_index(drop=True)


def stratifiable(df: pd.DataFrame, task: TaskDef, n_val: int) -> bool:
    """Whether a split of `n_val` validation rows can keep the label shares: a classification
    task with two examples of every class and room for one of each in validation."""
    if not task.has_classes:
        return False
    counts = df["label"].value_counts()
    return bool(counts.min() >= 2 and len(counts) <= n_val <= len(df) - len(counts))


def rows_digest(df: pd.DataFrame) -> str:
    """sha256 over a frame's source row ids (the `row` column), in order."""
    return hashlib.sha256(json.dumps([int(r) for r in df["row"]]).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Optuna pieces


def storage(path: Path) -> Any:
    """The search storage: one Optuna journal file (append-only; survives a killed process)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    path.parent.mkdir(parents=True, exist_ok=True)
    _repair_journal(path)
    return JournalStorage(JournalFileBackend(str(path)))


def _repair_journal(path: Path) -> None:
    """Drop a torn last line (a process killed while appending): Optuna would otherwise glue
    the next entry onto it and refuse the file from then on. Only the lock holder calls this."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        data = f.read()
        f.truncate(data.rfind(b"\n") + 1)


def make_sampler(sc: SearchConfig, k: int) -> Any:
    """The sampler for the search's k-th counted trial, seeded from (seed, k)."""
    import numpy as np
    from optuna.samplers import NSGAIISampler, RandomSampler, TPESampler

    seed = int(np.random.SeedSequence([sc.seed, k]).generate_state(1)[0])
    if sc.sampler == "tpe":
        return TPESampler(seed=seed, n_startup_trials=sc.startup_trials)
    if sc.sampler == "nsga2":
        return NSGAIISampler(seed=seed, population_size=max(2, sc.startup_trials))
    return RandomSampler(seed=seed)


def make_pruner(sc: SearchConfig) -> Any:
    from optuna.pruners import MedianPruner, NopPruner, SuccessiveHalvingPruner

    if sc.pruner == "median":
        return MedianPruner(n_startup_trials=sc.pruner_startup_trials, n_warmup_steps=0)
    if sc.pruner == "successive_halving":
        return SuccessiveHalvingPruner(min_resource="auto", reduction_factor=sc.reduction_factor)
    return NopPruner()


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ask `trial` for every searched key; categorical labels are turned back into choices."""
    values: dict[str, Any] = {}
    for name, d in space.items():
        if d["kind"] == "float":
            values[name] = trial.suggest_float(name, d["low"], d["high"], log=d["log"])
        elif d["kind"] == "int":
            values[name] = trial.suggest_int(name, int(d["low"]), int(d["high"]), log=d["log"])
        else:
            label = trial.suggest_categorical(name, d["labels"])
            values[name] = d["choices"][d["labels"].index(label)]
    return values


def _is_counted(t: Any) -> bool:
    """Whether a trial counts against the budget: complete, pruned, or failed by its values
    (NaN, divergence); not one whose process died or that stopped on a user mistake."""
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and not (t.user_attrs.get("interrupted")
                                               or t.user_attrs.get("user_error"))


def _state(t: Any) -> str:
    from optuna.trial import TrialState

    if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
        return "interrupted"
    return {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
            TrialState.FAIL: "failed", TrialState.RUNNING: "running",
            TrialState.WAITING: "running"}[t.state]


def recover_interrupted(study: Any, store: Any) -> list[Any]:
    """Mark every RUNNING trial FAIL + interrupted and queue its values again (a retry)."""
    from optuna.trial import TrialState

    found = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in found:
        # FrozenTrial exposes its storage id only as `_trial_id`; user attributes of a finished
        # trial cannot be set, so the mark goes on before the state changes.
        store.set_trial_user_attr(t._trial_id, "interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
    return [study.get_trials(deepcopy=False)[t.number] for t in found]


# ---------------------------------------------------------------------------------------------
# One trial


@dataclass
class TrialOutcome:
    """What one trial measured: its state and, when complete, its objective values."""

    state: str  # complete | pruned | failed
    values: dict[str, float] | None = None
    pruned_at_step: int | None = None
    failure_reason: str | None = None
    steps: int | None = None
    duration_s: float = 0.0
    intermediate: list[dict[str, Any]] = field(default_factory=list)


def _report_callback(metric: str, report: Callable[[int, float], bool]):
    from transformers import TrainerCallback

    class ReportToPruner(TrainerCallback):
        """Reports each evaluation on the validation split; raises Pruned when told to stop."""

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            value = (metrics or {}).get(f"eval_{metric}")
            if value is None or state.global_step >= state.max_steps:
                return  # the last step's value is the trial's own result, not a report
            if report(state.global_step, float(value)):
                raise Pruned(state.global_step)

    return ReportToPruner()


def run_trial(rc: RunConfig, task: TaskDef, fit_df: pd.DataFrame, val_df: pd.DataFrame, *,
              objectives: tuple[str, ...], device: str, eval_steps: int | None,
              report: Callable[[int, float], bool] | None = None,
              where: str | None = None) -> TrialOutcome:
    """Train `rc` on `fit_df`, score it on `val_df`: the trial's objective values.

    report(step, value) gets the first objective on the validation split every `eval_steps`
    (None: once per epoch) and returns True to prune. Needs no store and no Optuna (a remote
    worker can run it and return the outcome).
    """
    from peftlab.generation import engine
    from peftlab.training import steps_per_epoch

    t0 = time.perf_counter()
    reports: list[dict[str, Any]] = []

    def record(step: int, value: float) -> bool:
        reports.append({"step": step, "value": value})
        return report(step, value) if report is not None else False

    callbacks = [_report_callback(objectives[0], record)] if report is not None else []
    every = eval_steps or steps_per_epoch(rc, len(fit_df))
    try:
        result = engine(task)(rc, task, fit_df, val_df, device=device, callbacks=callbacks,
                              eval_during_training=every if report is not None else None,
                              where=where)
    except Pruned as p:
        return TrialOutcome("pruned", pruned_at_step=p.step, steps=p.step,
                            duration_s=time.perf_counter() - t0, intermediate=reports)
    duration = time.perf_counter() - t0
    if result.status != "done":
        return TrialOutcome("failed", failure_reason=result.failure_reason,
                            steps=len(result.loss_curve), duration_s=duration,
                            intermediate=reports)
    values: dict[str, float] = {}
    for o in objectives:
        if o == "trainable_params":
            values[o] = float(result.params["trainable"])  # type: ignore[index]
        elif o == "train_time_s":
            values[o] = float(result.train_time_s)  # type: ignore[arg-type]
        else:
            values[o] = float(result.metrics[o]["value"])  # type: ignore[index]
    bad = [o for o, v in values.items() if not math.isfinite(v)]
    if bad:
        return TrialOutcome("failed", failure_reason=f"objective {bad} undefined on the "
                            "validation split (e.g. constant predictions)", steps=result.steps,
                            duration_s=duration, intermediate=reports)
    return TrialOutcome("complete", values=values, steps=result.steps, duration_s=duration,
                        intermediate=reports)


# ---------------------------------------------------------------------------------------------
# The optimisation loop (driver side: owns the storage)


@dataclass
class SearchSession:
    """One (task, method) search being driven: its config, data split and Optuna study."""

    sc: SearchConfig
    task: TaskDef
    fit: pd.DataFrame
    val: pd.DataFrame
    study: Any
    storage: Any
    storage_path: Path
    validation: dict[str, Any]


def open_session(sc: SearchConfig, task: TaskDef, train_df: pd.DataFrame,
                 storage_path: Path) -> SearchSession:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    fit, val = carve_validation(train_df, task, sc.validation_share, sc.validation_seed)
    store = storage(storage_path)
    study = optuna.create_study(storage=store, study_name=sc.study_name, load_if_exists=True,
                                directions=list(sc.directions), sampler=make_sampler(sc, 0),
                                pruner=make_pruner(sc))
    validation = {"share": sc.validation_share, "seed": sc.validation_seed,
                  "split": "train", "train_examples": len(fit), "validation_examples": len(val),
                  "validation_rows": [int(r) for r in val["row"]], "digest": rows_digest(val),
                  "stratified": stratifiable(train_df, task, len(val))}
    return SearchSession(sc, task, fit, val, study, store, storage_path, validation)


def optimise(session: SearchSession, *, device: str, make_run: Callable[[dict[str, Any]],
             RunConfig], on_trial: Callable[[SearchTrialRecord], None],
             on_summary: Callable[[SearchRecord], None], storage_rel: str,
             where: str | None = None, executor: Executor | None = None,
             parallel: int = 1) -> SearchRecord:
    """Run trials until the budget is spent; return the final summary (status done).

    make_run(values) -> the trial's RunConfig; on_trial / on_summary receive every trial record
    (running, then finished) and the running summaries, for the caller to store.

    Ask/tell from this process (the driver) only: it asks a trial, sends it to `executor` as a
    unit (`trial_unit`) and tells Optuna its outcome when it comes back; up to `parallel` trials
    are in flight at once (as many as the budget has room for). The sampler for a trial is
    seeded from (seed, trials counted + trials in flight), so with `parallel` 1 a search is
    reproducible trial for trial; with more, which trials a sampler has seen when it asks
    depends on finishing order (as with any parallel Optuna search). A remote trial reports to
    the pruner through the same journal storage (`StorageReporter`).
    """
    from optuna.trial import TrialState

    from peftlab.execution import LocalExecutor, Unit

    executor = executor or LocalExecutor()
    sc, study = session.sc, session.study
    for t in recover_interrupted(study, session.storage):
        on_trial(trial_record(session, t, None))
    stopped_by = None
    in_flight: dict[int, tuple[Any, RunConfig]] = {}  # trial number -> (trial, its run)
    while True:
        trials = study.get_trials(deepcopy=False)
        counted = sum(_is_counted(t) for t in trials)
        spent = sum(float(t.user_attrs.get("duration_s", 0.0)) for t in trials)
        stop = None
        if sc.n_trials is not None and counted + len(in_flight) >= sc.n_trials:
            stop = "n_trials"
        elif sc.timeout_s is not None and spent >= sc.timeout_s:
            stop = "timeout_s"
        if stop is None and len(in_flight) < parallel:
            study.sampler = make_sampler(sc, counted + len(in_flight))
            trial = study.ask()
            values = suggest(trial, sc.space)
            trial.set_user_attr("peftlab_params", values)
            trial.set_user_attr("pid", os.getpid())
            trial.set_user_attr("started", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            try:
                rc = make_run(values)
            except PeftlabError as e:
                _fail_on_user_error(study, trial, e)
                raise
            trial.set_user_attr("run_config", rc.as_dict())
            on_trial(trial_record(session, study.get_trials(deepcopy=False)[trial.number], rc))
            if sc.pruner == "none":
                report = None
            elif executor.in_process:
                def report(step: int, value: float, trial=trial, rc=rc) -> bool:
                    trial.report(value, step)
                    # a running record per report: progress for `peftlab plan` and watchers
                    on_trial(trial_record(session, study.get_trials(deepcopy=False)[trial.number],
                                          rc))
                    return trial.should_prune()
            else:
                report = StorageReporter(str(session.storage_path), sc, trial._trial_id)
            executor.submit(Unit(
                f"search/{sc.study_name}/{trial.number}", trial_unit,
                (rc, session.task, session.fit, session.val),
                dict(objectives=sc.objectives, device=device, eval_steps=sc.eval_steps,
                     report=report, where=where), tag=trial.number))
            in_flight[trial.number] = (trial, rc)
            continue
        if not in_flight:
            stopped_by = stop
            break
        done = executor.next_done()
        trial, rc = in_flight.pop(done.unit.tag)
        if done.error is not None:
            _fail_on_user_error(study, trial, done.error)
            raise done.error
        trial.set_user_attr("finished", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        if done.attempts:
            trial.set_user_attr("worker_deaths", done.attempts)
        if done.failure is not None:  # its worker died on every attempt: failed, counted
            trial.set_user_attr("failure_reason", done.failure)
            trial.set_user_attr("duration_s", done.seconds)
            study.tell(trial, state=TrialState.FAIL)
        else:
            out: TrialOutcome = done.value
            trial.set_user_attr("duration_s", out.duration_s)
            trial.set_user_attr("steps", out.steps)
            if out.state == "complete":
                assert out.values is not None
                trial.set_user_attr("peftlab_values", out.values)
                vals = [out.values[o] for o in sc.objectives]
                study.tell(trial, vals[0] if len(vals) == 1 else vals)
            elif out.state == "pruned":
                trial.set_user_attr("pruned_at_step", out.pruned_at_step)
                study.tell(trial, state=TrialState.PRUNED)
            else:
                trial.set_user_attr("failure_reason", out.failure_reason)
                study.tell(trial, state=TrialState.FAIL)
        on_trial(trial_record(session, study.get_trials(deepcopy=False)[trial.number], rc))
        on_summary(summary_record(session, status="running", storage_rel=storage_rel,
                                  parallel=parallel))
    final = summary_record(session, status="done", storage_rel=storage_rel,
                           stopped_by=stopped_by, importances=True, parallel=parallel)
    on_summary(final)
    return final


def trial_unit(rc: RunConfig, task: TaskDef, fit_df: pd.DataFrame, val_df: pd.DataFrame, *,
               objectives: tuple[str, ...], device: str, eval_steps: int | None,
               report: Callable[[int, float], bool] | None, where: str | None) -> TrialOutcome:
    """One trial as a unit of work (driver or Ray worker): `run_trial` on the device `device`
    (the spec's, resolved where the unit runs)."""
    from peftlab.models import resolve_device

    return run_trial(rc, task, fit_df, val_df, objectives=objectives,
                     device=resolve_device(device), eval_steps=eval_steps, report=report,
                     where=where)


@dataclass
class StorageReporter:
    """report(step, value) -> prune? for a trial running in another process: it reports to the
    search's journal storage (a file in the study directory every node sees, which Optuna's
    journal backend locks for concurrent writers) and asks the pruner there. Ask and tell stay
    with the driver; only intermediate values come from here. Built lazily in the worker."""

    path: str
    sc: SearchConfig
    trial_id: int
    _trial: Any = field(default=None, repr=False)

    def __call__(self, step: int, value: float) -> bool:
        if self._trial is None:
            import optuna
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            # JournalStorage directly, not `storage()`: repairing the file is the driver's job.
            study = optuna.load_study(study_name=self.sc.study_name,
                                      storage=JournalStorage(JournalFileBackend(self.path)),
                                      pruner=make_pruner(self.sc))
            self._trial = optuna.trial.Trial(study, self.trial_id)
        self._trial.report(value, step)
        return self._trial.should_prune()


def _fail_on_user_error(study: Any, trial: Any, err: PeftlabError) -> None:
    """A trial stopped by a user mistake (the error stops the study): failed, not counted."""
    from optuna.trial import TrialState

    trial.set_user_attr("failure_reason", str(err))
    trial.set_user_attr("user_error", True)
    study.tell(trial, state=TrialState.FAIL)


# ---------------------------------------------------------------------------------------------
# Records


def trial_record(session: SearchSession, t: Any, rc: RunConfig | None) -> SearchTrialRecord:
    """The `search` table's record of Optuna trial `t` (rc: its run config, when known)."""
    sc = session.sc
    a = t.user_attrs
    values = a.get("peftlab_values")
    intermediate = [{"step": int(s), "value": float(v)}
                    for s, v in sorted(t.intermediate_values.items())]
    return SearchTrialRecord(
        task=sc.task, method=sc.method, method_type=sc.base.method_type,
        search_id=sc.search_id, study_name=sc.study_name, number=t.number, state=_state(t),
        counted=_is_counted(t), params=a.get("peftlab_params") or _decode(sc, t.params),
        values=values, intermediate=intermediate, pruned_at_step=a.get("pruned_at_step"),
        failure_reason=a.get("failure_reason") or (
            "its process died; retried with the same values" if a.get("interrupted") else None),
        retry_of=a.get("retry_of"),
        started=a.get("started") or (t.datetime_start.strftime("%Y-%m-%dT%H:%M:%S")
                                     if t.datetime_start else ""),
        finished=a.get("finished"), duration_s=a.get("duration_s"), steps=a.get("steps"),
        train_examples=len(session.fit), validation_examples=len(session.val),
        validation_digest=session.validation["digest"],
        run_config=rc.as_dict() if rc is not None else a.get("run_config"),
        pid=a.get("pid"))


def _decode(sc: SearchConfig, params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, v in params.items():
        d = sc.space.get(name)
        if d is not None and d["kind"] == "categorical" and v in d["labels"]:
            v = d["choices"][d["labels"].index(v)]
        out[name] = v
    return out


def _params(t: Any, sc: SearchConfig) -> dict[str, Any]:
    return t.user_attrs.get("peftlab_params") or _decode(sc, t.params)


def summary_record(session: SearchSession, *, status: str, storage_rel: str,
                   stopped_by: str | None = None, importances: bool = False,
                   parallel: int = 1) -> SearchRecord:
    """The summary of a search from its Optuna study: best, Pareto front, history, importances."""
    from optuna.trial import TrialState

    from peftlab.store import provenance

    sc, study = session.sc, session.study
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    counts = {"complete": 0, "pruned": 0, "failed": 0, "interrupted": 0}
    for t in trials:
        s = _state(t)
        if s in counts:
            counts[s] += 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    sign = [1.0 if d == "maximize" else -1.0 for d in sc.directions]

    def entry(t: Any) -> dict[str, Any]:
        return {"trial": t.number, "params": _params(t, sc),
                "values": t.user_attrs.get("peftlab_values")
                or dict(zip(sc.objectives, t.values, strict=True))}

    pareto: list[dict[str, Any]] = []
    best = None
    if complete:
        front = study.best_trials if len(sc.objectives) > 1 else [study.best_trial]
        # The final runs use one trial: the best on the first objective (a metric), ties to
        # the better second objective, then the earlier trial.
        chosen = min(front, key=lambda t: (
            tuple(-s * v for s, v in zip(sign, t.values, strict=True)), t.number))
        pareto = [entry(t) for t in sorted(front, key=lambda t: t.number)]
        best = entry(chosen)
    history, best_so_far = [], None
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING):
            continue
        value = t.values[0] if t.state == TrialState.COMPLETE else None
        if value is not None and (best_so_far is None or sign[0] * value > sign[0] * best_so_far):
            best_so_far = value
        history.append({"trial": t.number, "state": _state(t), "value": value,
                        "best": best_so_far})
    imp, imp_error = None, None
    if importances:
        imp, imp_error = param_importances(study, sc, complete)
    spent = sum(float(t.user_attrs.get("duration_s", 0.0)) for t in trials)
    rec = SearchRecord(
        task=sc.task, method=sc.method, method_type=sc.base.method_type,
        search_id=sc.search_id, study_name=sc.study_name, status=status,
        objectives=[{"name": o, "direction": d} for o, d in zip(sc.objectives, sc.directions,
                                                                 strict=True)],
        space=sc.space,
        sampler={"type": sc.sampler, "seed": sc.seed, "startup_trials": sc.startup_trials,
                 "reseeded_per_trial": True, "parallel_trials": parallel},
        pruner={"type": sc.pruner, "startup_trials": sc.pruner_startup_trials,
                "reduction_factor": sc.reduction_factor,
                "eval_steps": sc.eval_steps or "once per epoch"},
        validation=session.validation,
        budget={"n_trials": sc.n_trials, "timeout_s": sc.timeout_s},
        counts=counts, trials_s=spent, stopped_by=stopped_by, best=best, pareto=pareto,
        history=history, importances=imp, importance_method="fanova" if importances else None,
        importance_error=imp_error, storage=storage_rel,
        provenance=provenance() if status == "done" else None)
    rec.budget_sentence = budget_sentence(rec)
    return rec


def param_importances(study: Any, sc: SearchConfig, complete: list[Any]
                      ) -> tuple[dict[str, float] | None, str | None]:
    """Optuna's fANOVA importances of the first objective over the complete trials, or None
    and the reason they cannot be computed (too few trials, a constant objective, ...)."""
    import optuna

    if len(complete) < 2:
        return None, f"needs at least 2 complete trials, the search has {len(complete)}"
    if len({t.values[0] for t in complete}) < 2:
        return None, "the objective did not vary across the complete trials"
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=sc.seed),
            target=(lambda t: t.values[0]) if len(sc.objectives) > 1 else None)
    except (RuntimeError, ValueError, ImportError, ZeroDivisionError) as e:
        return None, f"{type(e).__name__}: {e}"
    imp = {k: float(v) for k, v in imp.items()}
    if not imp or not all(math.isfinite(v) for v in imp.values()):
        return None, "fANOVA gave no finite importances (too few distinct trials)"
    return imp, None


def budget_sentence(rec: SearchRecord) -> str:
    """One sentence stating what a method's search was given and what it used."""
    b, c = rec.budget, rec.counts
    given = " and ".join(x for x in (
        f"{b['n_trials']} trials" if b.get("n_trials") else "",
        f"{b['timeout_s']:g} s of trials" if b.get("timeout_s") else "") if x)
    done = c["complete"] + c["pruned"] + c["failed"]
    extra = f"; {c['interrupted']} interrupted and retried" if c.get("interrupted") else ""
    obj = " and ".join(f"{o['name']} ({o['direction']})" for o in rec.objectives)
    v = rec.validation
    return (f"{rec.method} on {rec.task}: budget {given} (the same for every method of "
            f"{rec.task}); {done} trials run ({c['complete']} complete, {c['pruned']} pruned, "
            f"{c['failed']} failed{extra}) in {rec.trials_s:.0f} s; objective {obj} on a "
            f"validation split of {v['validation_examples']} of the "
            f"{v['validation_examples'] + v['train_examples']} training examples; sampler "
            f"{rec.sampler['type']} (seed {rec.sampler['seed']}), pruner {rec.pruner['type']}.")


# ---------------------------------------------------------------------------------------------
# The plan: trials done and pending


def plan_rows(study: Study, store: Store | None) -> list[dict[str, Any]]:
    """One row per search trial of the study, stored (with its state) or still pending."""
    from peftlab.records import read_search

    trials: list[SearchTrialRecord] = []
    summaries: dict[str, SearchRecord] = {}
    if store is not None:
        trials, sums = read_search(store)
        summaries = {s.search_id: s for s in sums}
    rows = []
    for sc in study.search_configs():
        mine = [t for t in trials if t.search_id == sc.search_id]
        done = summaries.get(sc.search_id)
        finished = done is not None and done.status == "done"
        base = {"kind": "search trial", "task": sc.task, "method": sc.method,
                "method_type": sc.base.method_type, "seed": sc.seed}
        for t in mine:
            status = {"complete": "done", "pruned": "done", "failed": "failed",
                      "interrupted": "interrupted", "running": "running"}[t.state]
            reason = (f"pruned at step {t.pruned_at_step}" if t.state == "pruned"
                      else t.failure_reason)
            rows.append({**base, "run_id": f"search/{sc.study_name}/{t.number}",
                         "status": status, "reason": reason})
        counted = sum(t.counted for t in mine)
        if not finished:
            if sc.n_trials is not None:
                pending = max(sc.n_trials - counted, 0)
                running = any(t.state == "running" for t in mine)
                for i in range(pending - int(running)):
                    rows.append({**base, "run_id": f"search/{sc.study_name}/+{i + 1}",
                                 "status": "pending", "reason": None})
            else:
                rows.append({**base, "run_id": f"search/{sc.study_name}/…",
                             "status": "pending",
                             "reason": f"trials until {sc.timeout_s:g} s are spent"})
    return rows
