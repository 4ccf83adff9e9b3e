"""Experiment trackers: TensorBoard, MLflow and W&B runs that survive, keyed by run id.

    training: {report_to: [tensorboard, mlflow]}          # in a spec; settings under `tracking:`
    tensorboard --logdir runs/<study>/tensorboard
    mlflow ui --backend-store-uri sqlite:///runs/<study>/mlflow/mlflow.db

Training curves come from the Hugging Face Trainer's own callbacks (TensorBoardCallback,
MLflowCallback, WandbCallback), attached by `run_trackers` with their logging places under the
study directory (the Trainer's defaults would write under a scratch folder that is deleted after
training, or wherever the current directory is):

    tensorboard  <output_dir>/tensorboard/<run_id>/ (the curves, the run's identity and config as
                 text, its final metrics); after the stats/report stages also
                 <output_dir>/tensorboard/<run_id>/results/ (an HParams session: config and
                 every study-level number of the run)
    mlflow       one experiment per study (`tracking.mlflow_experiment`, default its name), one
                 parent run for the study and one nested run per trained run, both found again by
                 tag (`peftlab.study`, `peftlab.run_id`) before any is created; default store an
                 SQLite database in <output_dir>/mlflow/
    wandb        one run per training attempt, id derived from study name, run id and attempt
                 (`WandbAttempts`), grouped by study; offline when no login is configured

Every tracker run carries the run id, task, method, seed and the resolved config (MLflow: tags
`peftlab.*` and params `peftlab.<key>`, config.json artifact; TensorBoard: text; W&B: config).

A run id is the key. finetune trains a killed run again from scratch, so its attempt's tracker
entries are stale: the attempt's TensorBoard folder is emptied, and an MLflow run with its tag is
deleted (not reused: its curve and its params, among them the attempt's scratch folder, belong
to a model that was never saved) before the new attempt creates its own. A done run is never
trained again and its tracker run is only updated.

A killed process closes nothing, so its tracker runs would claim forever to be training. Before
an attempt replaces them they are closed: the MLflow run is set KILLED (with the reason as the
`peftlab.failure_reason` tag), then deleted; the W&B run is resumed and finished with exit code
1 (W&B state "failed", `peftlab/status` "killed" in its summary), and the new attempt logs into
a W&B run of its own (W&B refuses to reuse a run id, and resuming the killed run would mix two
attempts' curves in one history). Which W&B run holds which attempt of a run id is kept in
<output_dir>/wandb/peftlab/<run_id>.json (`WandbAttempts`), so the study-level results reach the
attempt that made the saved model.

`log_study` (called by the report stage) adds the study-level results: per run the final
metrics with their intervals, the mean drift per layer band (`stats` table summaries) and the
bench latencies; per study the report files as artifacts. It only writes values that changed,
so rerunning the report does not grow MLflow's metric histories.

`check_trackers` (spec validation) refuses a tracker that is asked for and not installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import PeftlabError, SpecError

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.plan import Study
    from peftlab.runs import RunConfig
    from peftlab.spec import TrackingSpec
    from peftlab.store import Store
    from peftlab.training import TrainResult

# tracker name (training.report_to) -> the package it needs (import name = distribution name)
TRACKERS: dict[str, str] = {"tensorboard": "tensorboard", "mlflow": "mlflow", "wandb": "wandb"}
INSTALL = 'pip install "peftlab[tracking]"'
TAG = "peftlab"  # prefix of every tag and param peftlab sets on a tracker run


# ----------------------------------------------------------------------------- validation


def trackers_of(study: Study) -> list[str]:
    """Every tracker any run of the study asks for (spec-wide `training.report_to`, task,
    method and override layers alike), in TRACKERS order."""
    asked = set(study.spec.training.report_to)
    for rc in study.runs():
        asked.update(rc.training.report_to)
    return [t for t in TRACKERS if t in asked]


def _where_asked(study: Study, tracker: str) -> str:
    """The spec key that asks for `tracker` (the first layer that lists it)."""
    spec = study.spec
    if tracker in spec.training.report_to:
        return "training.report_to"
    for i, t in enumerate(spec.tasks):
        if tracker in (t.training.get("report_to") or []):
            return f"tasks[{i}].training.report_to"
    for name, entry in spec.methods.items():
        if tracker in ((entry.get("training") or {}).get("report_to") or []):
            return f"methods.{name}.training.report_to"
    for i, ov in enumerate(spec.overrides):
        if tracker in (ov.training.get("report_to") or []):
            return f"overrides[{i}].training.report_to"
    return "training.report_to"


def check_trackers(study: Study) -> None:
    """Raise SpecError (one line) for a tracker asked for whose package is not installed.

    `importlib.util.find_spec` finds the package without importing it (mlflow and wandb take
    seconds to import); without this check the Trainer fails mid-training (MLflowCallback with
    mlflow missing raises an AttributeError from its destructor).
    """
    for tracker in trackers_of(study):
        package = TRACKERS[tracker]
        if importlib.util.find_spec(package) is None:
            raise SpecError(f"{study.where(_where_asked(study, tracker))}: {tracker} is asked for "
                            f"but the package {package!r} is not installed; install it with "
                            f"{INSTALL}")


# ----------------------------------------------------------------------------- shared pieces


@dataclass(frozen=True)
class Target:
    """What a tracker needs to know of the study (plain and picklable: a training unit may run
    in a Ray worker, without the Study)."""

    name: str
    output_dir: Path
    spec_path: Path | None
    tracking: TrackingSpec


def target(study: Study) -> Target:
    return Target(study.spec.name, Path(study.output_dir), study.path, study.spec.tracking)



def tensorboard_dir(t: Target, run_id: str) -> Path:
    """<output_dir>/tensorboard/<run_id>: one folder per run, so `tensorboard --logdir
    <output_dir>/tensorboard` lists the runs by id."""
    return t.output_dir / "tensorboard" / run_id


def mlflow_uri(t: Target) -> str:
    """`tracking.mlflow_uri`, or an SQLite database in <output_dir>/mlflow/ (absolute)."""
    if t.tracking.mlflow_uri:
        return t.tracking.mlflow_uri
    return f"sqlite:///{(t.output_dir / 'mlflow' / 'mlflow.db').resolve()}"


def run_identity(t: Target, rc: RunConfig) -> dict[str, str]:
    """The tags every tracker run of `rc` carries (strings: trackers store tags as text)."""
    return {f"{TAG}.kind": "run", f"{TAG}.study": t.name, f"{TAG}.run_id": rc.run_id,
            f"{TAG}.task": rc.task, f"{TAG}.method": rc.method,
            f"{TAG}.method_type": rc.method_type, f"{TAG}.seed": str(rc.seed)}


def flat_config(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """A nested resolved config as {"training.learning_rate": "0.001", ...}: trackers' params
    are flat strings (lists and empty dicts are kept as JSON)."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}."))
        elif isinstance(value, (dict, list, tuple)):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = str(value)
    return out


def metric_name(*parts: Any) -> str:
    """parts joined by '/', with the characters MLflow rejects in a metric name (e.g. the '+' of
    'merged+compile') replaced by '_'."""
    return re.sub(r"[^0-9A-Za-z_\-. :/]", "_", "/".join(str(p) for p in parts))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def final_metrics(rec: dict[str, Any]) -> dict[str, float]:
    """A done run's evaluation metrics with their bootstrap intervals: eval/<metric>,
    eval/<metric>_ci_low, eval/<metric>_ci_high (as in the `runs` record)."""
    out = {}
    for name, m in (rec.get("metrics") or {}).items():
        for field, suffix in (("value", ""), ("ci_low", "_ci_low"), ("ci_high", "_ci_high")):
            if _finite(m.get(field)):
                out[metric_name("eval", f"{name}{suffix}")] = float(m[field])
    return out


def study_results(study: Study, store: Store) -> dict[str, dict[str, float]]:
    """Per done run of the current plan: every study-level number, flat {metric name: value}.

    eval/<metric>[_ci_low|_ci_high]: the final metrics (`runs` table);
    drift/<measure>/<band>[/<pooling>]: the run's base-vs-run mean over the band's layers (the
    stats stage's drift summaries, degenerate runs' values included; /<pooling> for the
    exploratory readouts of `represent.pooling`);
    bench/<mode>/b<batch>/<seq>/{p50,p95,p99,mean}_ms and .../requests_per_s: the bench points
    that served this run alone and passed the gate (`bench` table).
    """
    from peftlab.results import bench_rows, run_view

    view = run_view(study, store)
    out: dict[str, dict[str, float]] = {}
    for key, rid in view.run_ids.items():
        rec = view.done(*key)
        if rec is not None:
            out[rid] = final_metrics(rec)
    for r in store.records("stats"):
        if r.get("kind") != "summary" or r.get("area") != "drift":
            continue
        # the primary readout's (the pooling the classification head reads) unsuffixed
        exploratory = r.get("readout") not in (None, "primary") and r.get("pooling")
        name = metric_name("drift", r.get("measure"), r.get("band"),
                           *([r["pooling"]] if exploratory else []))
        by_seed = dict(zip(r.get("seeds") or [], r.get("values") or [], strict=False))
        by_seed.update({int(s): v for s, v in (r.get("degenerate_values") or {}).items()})
        for seed, value in by_seed.items():
            rid = view.run_ids.get((r.get("task"), r.get("method"), int(seed)))
            if rid in out and _finite(value):
                out[rid][name] = float(value)
    for row in bench_rows(store.records("bench")):
        if not row["ok"] or len(row["run_ids"]) != 1 or row["run_ids"][0] not in out:
            continue
        at = ("bench", row["mode"], f"b{row['batch_size']}", row["seq_len"])
        values = {f"{s}_ms": row["latency"].get(s) for s in ("p50", "p95", "p99", "mean")}
        values["requests_per_s"] = row["throughput"].get("requests_per_s")
        out[row["run_ids"][0]].update({metric_name(*at, k): float(v) for k, v in values.items()
                                       if _finite(v)})
    return out


# ----------------------------------------------------------------------------- MLflow


class _MLflow:
    """The study's MLflow experiment and parent run, through `MlflowClient` (explicit run ids,
    no global state), plus the fluent active run that the Trainer's MLflowCallback logs into."""

    def __init__(self, t: Target):
        import mlflow
        from mlflow import MlflowClient

        self.mlflow = mlflow
        self.t = t
        self.uri = mlflow_uri(t)
        if t.tracking.mlflow_uri is None:
            (t.output_dir / "mlflow").mkdir(parents=True, exist_ok=True)
        from mlflow.exceptions import MlflowException

        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            self.experiment_id = self._experiment()
        except MlflowException as e:  # a tracking URI that is wrong or unreachable: the user's
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            where = "tracking.mlflow_uri" if t.tracking.mlflow_uri else "the MLflow store"
            raise SpecError(f"{where} {self.uri!r}: {first}") from None

    def _experiment(self) -> str:
        from mlflow.exceptions import MlflowException

        name = self.t.tracking.mlflow_experiment or self.t.name
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            location = None  # a given tracking server keeps artifacts where it is configured to
            if self.t.tracking.mlflow_uri is None:
                location = (self.t.output_dir / "mlflow" / "artifacts").resolve().as_uri()
            try:
                return self.client.create_experiment(name, artifact_location=location,
                                                     tags={f"{TAG}.study": self.t.name})
            except MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(name)
                assert exp is not None
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        return exp.experiment_id

    def find(self, *, deleted: bool = False, **tags: str) -> list[Any]:
        """Runs of the experiment carrying every tag given, oldest first: active ones (with
        `deleted`, deleted ones too)."""
        from mlflow.entities import ViewType

        filt = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        return self.client.search_runs([self.experiment_id], filter_string=filt,
                                       run_view_type=ViewType.ALL if deleted
                                       else ViewType.ACTIVE_ONLY,
                                       max_results=1000, order_by=["attributes.start_time ASC"])

    def close_killed(self, run: Any, reason: str) -> bool:
        """Set a run that is still RUNNING (or SCHEDULED) to KILLED, with `reason` as its
        peftlab.failure_reason tag; True when it was open. A run whose process was killed is
        left RUNNING by MLflow: nothing in that process could end it."""
        if run.info.status not in ("RUNNING", "SCHEDULED"):
            return False
        self.client.set_tag(run.info.run_id, f"{TAG}.failure_reason", reason)
        self.client.set_terminated(run.info.run_id, "KILLED")
        return True

    def study_run(self) -> str:
        """The study's parent run (found by tag, else created)."""
        tags = {f"{TAG}.kind": "study", f"{TAG}.study": self.t.name}
        found = self.find(**tags)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(self.experiment_id, run_name=self.t.name, tags={
            **tags, f"{TAG}.output_dir": str(self.t.output_dir),
            **({f"{TAG}.spec": str(self.t.spec_path)} if self.t.spec_path else {})})
        # a container, not a process: finished at once (children are logged through the client)
        self.client.set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def create_run(self, rc: RunConfig, parent: str, **extra_tags: str) -> str:
        """A new nested run for `rc` with its identity tags, its config as params (prefixed
        `peftlab.`, so they never collide with the Trainer's own params) and config.json."""
        from mlflow.entities import Param
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH, MAX_PARAMS_TAGS_PER_BATCH

        run = self.client.create_run(self.experiment_id, run_name=rc.run_id, tags={
            **run_identity(self.t, rc), "mlflow.parentRunId": parent, **extra_tags})
        rid = run.info.run_id
        # longer values (a user task's definition) are in config.json only
        params = [Param(f"{TAG}.{k}", v) for k, v in flat_config(rc.as_dict()).items()
                  if len(v) <= MAX_PARAM_VAL_LENGTH]
        for i in range(0, len(params), MAX_PARAMS_TAGS_PER_BATCH):
            self.client.log_batch(rid, params=params[i:i + MAX_PARAMS_TAGS_PER_BATCH])
        self.client.log_dict(rid, rc.as_dict(), "config.json")
        return rid

    def log_changed(self, run_id: str, values: dict[str, float], step: int = 0) -> int:
        """Log the values whose latest stored value differs (a rerun adds no history); returns
        how many were logged."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        latest = self.client.get_run(run_id).data.metrics
        now = int(time.time() * 1000)
        todo = [Metric(k, v, now, step) for k, v in values.items() if latest.get(k) != v]
        for i in range(0, len(todo), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=todo[i:i + MAX_METRICS_PER_BATCH])
        return len(todo)

    def backfill(self, run_id: str, log_history: list[dict[str, Any]]) -> None:
        """The Trainer's log history (from the `runs` record) as step-wise metrics, for a done
        run that has no MLflow run (tracking turned on after it was trained)."""
        from mlflow.entities import Metric
        from mlflow.utils.validation import MAX_METRICS_PER_BATCH

        now = int(time.time() * 1000)
        metrics = [Metric(metric_name(k), float(v), now, int(entry.get("step", 0)))
                   for entry in log_history for k, v in entry.items()
                   if k != "step" and _finite(v)]
        for i in range(0, len(metrics), MAX_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=metrics[i:i + MAX_METRICS_PER_BATCH])


# ----------------------------------------------------------------------------- W&B


def wandb_mode(t: Target) -> str:
    """online or offline: `tracking.wandb_mode`; auto: WANDB_MODE when set, else online when a
    login is configured (WANDB_API_KEY, or an api.wandb.ai entry in ~/.netrc, where `wandb
    login` writes it), else offline (the run is kept under <output_dir>/wandb for `wandb
    sync`)."""
    mode = t.tracking.wandb_mode
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    import netrc

    host = re.sub(r"^https?://", "", os.environ.get("WANDB_BASE_URL", "api.wandb.ai")).rstrip("/")
    try:
        return "online" if netrc.netrc().authenticators(host) else "offline"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return "offline"


def wandb_id(t: Target, key: str) -> str:
    """A W&B run id for a run id (or the study) of this study: stable, so a rerun resumes the
    same W&B run; hashed, because the same run id can occur in another study of the project."""
    return hashlib.sha256(f"{t.name}/{key}".encode()).hexdigest()[:24]


def _wandb_init(t: Target, key: str, name: str, job_type: str, *, run_id: str | None = None,
                resume: str = "allow", **kwargs: Any) -> Any:
    """wandb.init for the W&B run `run_id` (default: the one derived from `key`)."""
    import wandb

    if wandb.run is not None:  # the Trainer's WandbCallback logs into the global run
        wandb.finish()
    return wandb.init(project=t.tracking.wandb_project or t.name, entity=t.tracking.wandb_entity,
                      group=t.name, job_type=job_type, name=name,
                      id=run_id or wandb_id(t, key), resume=resume, dir=str(t.output_dir),
                      mode=wandb_mode(t), **kwargs)


# exit code a killed attempt's W&B run is finished with (non-zero: W&B shows it "failed")
KILLED_EXIT_CODE = 1


class WandbAttempts:
    """The W&B runs of one run id's training attempts, oldest first, each with whether its
    process closed it: <output_dir>/wandb/peftlab/<run_id>.json, [{"id": ..., "closed": bool}].

    The first attempt's W&B id is `wandb_id(study, run_id)`; attempt n > 1 gets
    `wandb_id(study, "<run_id>/attempt-<n>")`. Only the process training a run id writes its
    file (one attempt at a time), so a Ray worker may write it on the shared study directory.
    """

    def __init__(self, t: Target, run_id: str):
        self.t, self.run_id = t, run_id
        self.path = t.output_dir / "wandb" / "peftlab" / f"{run_id}.json"

    def read(self) -> list[dict[str, Any]]:
        try:
            entries = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        return [e for e in entries if isinstance(e, dict) and e.get("id")]

    def _write(self, entries: list[dict[str, Any]]) -> None:
        from peftlab.store import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(entries, indent=1))

    def current(self) -> str | None:
        """The W&B id of the latest attempt (None: no attempt recorded)."""
        entries = self.read()
        return entries[-1]["id"] if entries else None

    def start(self) -> tuple[str, list[str]]:
        """Record a new attempt; returns its W&B id and the ids of earlier attempts whose
        process never closed them (killed)."""
        entries = self.read()
        open_ = [e["id"] for e in entries if not e.get("closed")]
        key = self.run_id if not entries else f"{self.run_id}/attempt-{len(entries) + 1}"
        new = wandb_id(self.t, key)
        self._write([*({**e, "closed": True} for e in entries), {"id": new, "closed": False}])
        return new, open_

    def close(self, wandb_run_id: str) -> None:
        self._write([{**e, "closed": True} if e["id"] == wandb_run_id else e
                     for e in self.read()])


# ----------------------------------------------------------------------------- one training run


class RunTrackers:
    """The trackers of one training attempt of `rc` (a context manager).

        with run_trackers(target(study), rc) as trackers:
            result = train_and_evaluate(..., callbacks=[..., *trackers.callbacks])
            trackers.finish(result)

    On entry: stale entries of an earlier attempt are removed and the tracker runs are started
    (identity and config logged first, so a killed attempt is identifiable). `callbacks` are the
    Trainer's own tracker callbacks, pointed at them. `finish(result)` logs the final metrics and
    closes each run as finished or failed. Leaving with an exception: a PeftlabError means
    nothing was trained (the entries are removed); anything else marks the run killed.
    """

    def __init__(self, t: Target | None, rc: RunConfig):
        self.t, self.rc = t, rc  # t None: no tracking (e.g. a caller outside a study)
        self.names = [] if t is None else [n for n in TRACKERS if n in rc.training.report_to]
        self.callbacks: list[Any] = []
        self._mlflow: _MLflow | None = None
        self._mlflow_run: str | None = None
        self._wandb: Any = None
        self._wandb_attempts: WandbAttempts | None = None
        self._wandb_run: str | None = None
        self._finished = False

    def __enter__(self) -> RunTrackers:
        if "tensorboard" in self.names:
            self._start_tensorboard()
        if "mlflow" in self.names:
            self._start_mlflow()
        if "wandb" in self.names:
            self._start_wandb()
        return self

    def _start_tensorboard(self) -> None:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        folder = tensorboard_dir(self.t, self.rc.run_id)
        shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt's curve is not this run's
        writer = SummaryWriter(log_dir=str(folder))
        writer.add_text("peftlab/run", json.dumps(run_identity(self.t, self.rc), indent=1))
        writer.add_text("peftlab/config", json.dumps(self.rc.as_dict(), indent=1, default=str))
        cb = TensorBoardCallback(tb_writer=writer)
        cb.logging_dir = str(folder)  # where it reopens a writer if it logs after closing one
        self.callbacks.append(cb)

    def _start_mlflow(self) -> None:
        from transformers.integrations import MLflowCallback

        ml = self._mlflow = _MLflow(self.t)
        parent = ml.study_run()
        # An earlier attempt's run (deleted ones included, which older versions left RUNNING):
        # its process was killed mid-training, or it stopped before training (then it is KILLED
        # already). Closed first, so no run of this id claims to be training, then deleted.
        for stale in ml.find(deleted=True, **{f"{TAG}.run_id": self.rc.run_id}):
            deleted = stale.info.lifecycle_stage == "deleted"
            if deleted and stale.info.status not in ("RUNNING", "SCHEDULED"):
                continue
            if deleted:  # MLflow changes the status of active runs only
                ml.client.restore_run(stale.info.run_id)
            ml.close_killed(stale, "killed: its process ended during training without closing "
                                   "this run; the run was trained again from scratch")
            ml.client.delete_run(stale.info.run_id)
        self._mlflow_run = ml.create_run(self.rc, parent)
        # MLflowCallback logs into the fluent active run when there is one (it then neither
        # starts nor ends a run): make it ours, on our store.
        ml.mlflow.set_tracking_uri(ml.uri)
        if ml.mlflow.active_run() is not None:
            ml.mlflow.end_run()
        ml.mlflow.start_run(run_id=self._mlflow_run)
        self.callbacks.append(MLflowCallback())

    def _start_wandb(self) -> None:
        from transformers.integrations import WandbCallback

        rc = self.rc
        attempts = self._wandb_attempts = WandbAttempts(self.t, rc.run_id)
        wandb_run, killed = attempts.start()
        for stale in killed:  # end what the killed process left open, before replacing it
            run = _wandb_init(self.t, rc.run_id, rc.run_id, "train", run_id=stale)
            run.summary.update({"peftlab/status": "killed", "peftlab/replaced_by": wandb_run})
            run.finish(exit_code=KILLED_EXIT_CODE)
        self._wandb = _wandb_init(self.t, rc.run_id, rc.run_id, "train", run_id=wandb_run,
                                  config={"peftlab": rc.as_dict(), **run_identity(self.t, rc)},
                                  tags=[rc.task, rc.method, rc.method_type, f"seed-{rc.seed}"])
        self._wandb_run = wandb_run
        self.callbacks.append(WandbCallback())

    def _close_wandb(self, exit_code: int) -> None:
        self._wandb.finish(exit_code=exit_code)
        self._wandb_attempts.close(self._wandb_run)

    def finish(self, result: TrainResult) -> None:
        """Log the final metrics of the attempt's training result and close its tracker runs
        as finished (status done) or failed (with the reason as a tag)."""
        done = result.status == "done"
        values = final_metrics({"metrics": result.metrics}) if done else {}
        step = int(result.steps or 0)
        self._close_tensorboard()
        if "tensorboard" in self.names and values:
            from torch.utils.tensorboard import SummaryWriter

            with SummaryWriter(log_dir=str(tensorboard_dir(self.t, self.rc.run_id))) as w:
                for k, v in values.items():
                    w.add_scalar(k, v, step)
        if self._mlflow is not None and self._mlflow_run is not None:
            ml = self._mlflow
            ml.mlflow.flush_async_logging()  # MLflowCallback logs asynchronously
            ml.log_changed(self._mlflow_run, values, step)
            if not done:
                ml.client.set_tag(self._mlflow_run, f"{TAG}.failure_reason",
                                  str(result.failure_reason)[:5000])
            ml.mlflow.end_run("FINISHED" if done else "FAILED")
        if self._wandb is not None:
            self._wandb.summary.update(values)
            self._close_wandb(0 if done else 1)
        self._finished = True

    def _close_tensorboard(self) -> None:
        # TensorBoardCallback closes its writer at on_train_end, which a run that failed or was
        # interrupted never reaches (its events are on disk: the callback flushes every log)
        for cb in self.callbacks:
            if getattr(cb, "tb_writer", None) is not None:
                cb.tb_writer.close()
                cb.tb_writer = None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self._finished or exc_type is None:
            return
        nothing_ran = isinstance(exc, PeftlabError)  # the run is simply still to do
        with contextlib.suppress(Exception):  # the training error is the one to report
            self._close_tensorboard()
            if self._mlflow is not None and self._mlflow_run is not None:
                self._mlflow.mlflow.end_run("KILLED")
                if nothing_ran:
                    self._mlflow.client.delete_run(self._mlflow_run)
            if self._wandb is not None:
                self._close_wandb(1)
            if nothing_ran and "tensorboard" in self.names:
                shutil.rmtree(tensorboard_dir(self.t, self.rc.run_id), ignore_errors=True)


def run_trackers(t: Target | None, rc: RunConfig) -> RunTrackers:
    """The trackers `rc.training.report_to` asks for, as a context manager (see RunTrackers);
    with none asked for, it does nothing and `callbacks` is empty."""
    return RunTrackers(t, rc)


# ----------------------------------------------------------------------------- the study


def log_study(ctx: Context) -> None:
    """The study-level results in every tracker the study uses (`study_results`), and the report
    files as artifacts of the study's run. Called by the report stage; does nothing (and
    imports nothing) when no run asks for a tracker."""
    names = trackers_of(ctx.study)
    if not names:
        return
    results = study_results(ctx.study, ctx.store)
    runs = {rc.run_id: rc for rc in ctx.study.runs() if rc.run_id in results}
    if "tensorboard" in names:
        _tensorboard_study(target(ctx.study), runs, results)
    if "mlflow" in names:
        _mlflow_study(ctx, runs, results)
    if "wandb" in names:
        _wandb_study(ctx, runs, results)
    ctx.console.print(f"tracking: study results of {len(results)} runs -> {', '.join(names)}")


def _report_files(ctx: Context) -> list[Path]:
    return [p for p in (ctx.store.path(n) for n in ("report.md", "report.html", "spec.yaml"))
            if p.is_file()]


def _hparam(value: Any) -> Any:
    return value if isinstance(value, (int, float, str, bool)) else json.dumps(value, default=str)


def _tensorboard_study(t: Target, runs: dict[str, RunConfig],
                       results: dict[str, dict[str, float]]) -> None:
    """Per run an HParams session <run dir>/results (rewritten whole, so a rerun leaves one):
    the run's config beside its study-level numbers, comparable across runs in TensorBoard."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    for rid, rc in runs.items():
        if "tensorboard" not in rc.training.report_to or not results[rid]:
            continue
        folder = tensorboard_dir(t, rid) / "results"
        shutil.rmtree(folder, ignore_errors=True)
        hp = {k: _hparam(v) for k, v in
              {"run_id": rid, "task": rc.task, "method": rc.method, "seed": rc.seed,
               **flat_config({"params": rc.params}),
               **flat_config({"training": rc.training.model_dump(mode="json")})}.items()}
        # what SummaryWriter.add_hparams writes, minus the extra timestamped subfolder it adds
        exp, ssi, sei = hparams(hp, results[rid])
        with SummaryWriter(log_dir=str(folder)) as w:
            for summary in (exp, ssi, sei):
                w.file_writer.add_summary(summary)
            for k, v in results[rid].items():
                w.add_scalar(k, v)


def _mlflow_study(ctx: Context, runs: dict[str, RunConfig],
                  results: dict[str, dict[str, float]]) -> None:
    from peftlab.records import RunRecord, read_one

    t = target(ctx.study)
    ml = _MLflow(t)
    parent = ml.study_run()
    for rid, rc in runs.items():
        if "mlflow" not in rc.training.report_to:
            continue
        found = ml.find(**{f"{TAG}.run_id": rid})
        if found:
            run_id = found[0].info.run_id
        else:  # trained before tracking was turned on: its curve comes from its record
            run_id = ml.create_run(rc, parent, **{f"{TAG}.backfilled": "true"})
            rec = read_one(ctx.store, RunRecord, rid)
            ml.backfill(run_id, (rec.dump() if rec else {}).get("log_history") or [])
            ml.client.set_terminated(run_id, "FINISHED")
        ml.log_changed(run_id, results[rid])
    status = {}
    for rc in ctx.study.runs():
        rec = ctx.store.get("runs", rc.run_id) or {}
        status[rec.get("status", "pending")] = status.get(rec.get("status", "pending"), 0) + 1
    ml.log_changed(parent, {f"runs/{k}": float(v) for k, v in status.items()})
    if t.tracking.log_artifacts:
        for path in _report_files(ctx):
            ml.client.log_artifact(parent, str(path))  # same name: replaced, not added
    ml.client.set_terminated(parent, "FINISHED")


def _wandb_study(ctx: Context, runs: dict[str, RunConfig],
                 results: dict[str, dict[str, float]]) -> None:
    import wandb

    t = target(ctx.study)
    for rid, rc in runs.items():
        if "wandb" not in rc.training.report_to:
            continue
        # the latest attempt's run: the one that trained the saved model
        run = _wandb_init(t, rid, rid, "train", run_id=WandbAttempts(t, rid).current())
        run.summary.update(results[rid])  # a summary is a set of values: rerunning replaces
        run.finish()
    run = _wandb_init(t, "study", t.name, "study",
                      config={"peftlab": ctx.study.spec.model_dump(mode="json")})
    files = _report_files(ctx)
    if t.tracking.log_artifacts and files:
        art = wandb.Artifact(re.sub(r"[^0-9A-Za-z_.-]", "_", f"{t.name}-report"), type="report")
        for path in files:
            art.add_file(str(path))
        run.log_artifact(art)
    run.finish()
