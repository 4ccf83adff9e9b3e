"""Experiment tracking (`peftlab.tracking`): TensorBoard and MLflow runs that survive the study,
keyed by run id, with the study's results; a tracker that is not installed is refused at
validation.

    .venv/bin/python -m pytest tests/test_tracking.py -q

The training test runs a tiny study in a subprocess, SIGKILLs it mid-training and resumes it:
what the trackers hold afterwards is read back with tensorboard's EventAccumulator and the MLflow
client and compared with the study's own `runs` records. The study-level test uses the fixed
sample study (`peftlab.testing.sample_study`, no training) through the stats and report stages.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from peftlab.context import Context
from peftlab.errors import SpecError
from peftlab.pipeline import load_study, plan, run_stages
from peftlab.store import Store
from peftlab.testing import running_steps, tiny_spec, wait_for_records, write_spec
from peftlab.tracking import INSTALL, mlflow_uri, target, tensorboard_dir

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
# raised inside mlflow 3.17's SQLAlchemy store, not by peftlab
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")


def _client(study):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_uri(target(study)))


def _runs(client, experiment_id: str) -> list:
    return client.search_runs([experiment_id], max_results=1000)


def _losses(log_history: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in log_history if "loss" in e]


def _same_curve(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Same steps, same values (TensorBoard stores float32)."""
    assert [step for step, _ in got] == [step for step, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_killed_and_resumed_study_keeps_one_tracker_run_per_trained_run(
        tmp_path, tiny_llama_dir, glue_dir):
    """report_to [tensorboard, mlflow]; the study is SIGKILLed while its last run trains and
    run again. Afterwards: TensorBoard holds per run the loss curve of the attempt that made its
    artifact, and nothing of the killed one; MLflow holds one experiment, one study run and one
    nested run per trained run (the finished ones untouched, the killed attempt's run deleted),
    each with its identity, config params and metrics equal to the runs record; the run that
    diverged is FAILED with its reason."""
    methods = {"full": {"type": "full", "training": {"learning_rate": 1e-3}},
               # fails at its second step (the first is warm-up)
               "diverge": {"type": "lora", "r": 4, "training": {"divergence_loss": 1e-6}},
               # long enough to be killed mid-training
               "lora": {"type": "lora", "r": 4, "alpha": 8,
                        "training": {"learning_rate": 5e-3, "max_steps": 60}}}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, tasks=("sst2",),
                     seeds=(1,), methods=("full",), eval_samples=16,
                     training={"epochs": 1, "batch_size": 8, "logging_steps": 1,
                               "bootstrap_samples": 50, "report_to": ["tensorboard", "mlflow"]})
    spec["methods"] = methods
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    full, diverge, lora = study.runs()
    assert (full.method, diverge.method, lora.method) == ("full", "diverge", "lora")

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "peftlab.cli", "run", str(study.path),
                             "--data-dir", str(glue_dir), "--stages", "data,finetune"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_records(study.output_dir / "results.sqlite", proc, "runs",
                         lambda recs: running_steps(recs.get(lora.run_id), 1),
                         what=f"{lora.run_id} training")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert [r["status"] for r in plan(study)] == ["done", "failed", "interrupted"]
    client = _client(study)
    exp = client.get_experiment_by_name(study.spec.name)
    before = {r.data.tags["peftlab.run_id"]: r for r in _runs(client, exp.experiment_id)
              if r.data.tags.get("peftlab.kind") == "run"}
    assert set(before) == {full.run_id, diverge.run_id, lora.run_id}
    assert before[lora.run_id].info.status == "RUNNING"  # what the killed attempt left

    run_stages(study, ["finetune"])
    assert [r["status"] for r in plan(study)] == ["done", "failed", "done"]
    store = Store(study.output_dir, create=False)
    recs = {rc.run_id: store.get("runs", rc.run_id) for rc in (full, lora)}
    store.close()

    # MLflow: one experiment (besides the Default one MLflow always makes, left empty)
    exps = {e.name: e for e in client.search_experiments()}
    assert set(exps) == {study.spec.name, "Default"}
    assert _runs(client, exps["Default"].experiment_id) == []
    runs = _runs(client, exp.experiment_id)
    studies = [r for r in runs if r.data.tags.get("peftlab.kind") == "study"]
    trained = {r.data.tags["peftlab.run_id"]: r for r in runs
               if r.data.tags.get("peftlab.kind") == "run"}
    assert len(studies) == 1 and len(runs) == 4
    assert set(trained) == {full.run_id, diverge.run_id, lora.run_id}
    for rc in (full, diverge):  # not trained again: their MLflow runs are the same
        assert trained[rc.run_id].info.run_id == before[rc.run_id].info.run_id
    failed = trained[diverge.run_id]
    assert failed.info.status == "FAILED"
    assert failed.data.tags["peftlab.failure_reason"].startswith("diverged")
    assert not [k for k in failed.data.metrics if k.startswith("eval/")]
    stale = before[lora.run_id].info.run_id
    assert trained[lora.run_id].info.run_id != stale
    assert client.get_run(stale).info.lifecycle_stage == "deleted"
    # the killed attempt's run was closed before it was deleted: listed with the deleted runs,
    # no run claims to be still training
    from mlflow.entities import ViewType

    every = client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL,
                               max_results=1000)
    assert len(every) == 5 and not [r for r in every if r.info.status == "RUNNING"]
    killed = client.get_run(stale)
    assert killed.info.status == "KILLED" and killed.info.end_time is not None
    assert killed.data.tags["peftlab.failure_reason"].startswith("killed")
    for rc in (full, lora):
        run, rec = trained[rc.run_id], recs[rc.run_id]
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == studies[0].info.run_id
        assert run.data.tags["peftlab.task"] == rc.task
        assert run.data.tags["peftlab.method"] == rc.method
        assert run.data.tags["peftlab.seed"] == str(rc.seed)
        assert run.data.params["peftlab.run_id"] == rc.run_id
        assert run.data.params["peftlab.seed"] == str(rc.seed)
        assert float(run.data.params["peftlab.training.learning_rate"]) == \
            rc.training.learning_rate
        history = client.get_metric_history(run.info.run_id, "loss")
        _same_curve(sorted((m.step, m.value) for m in history), _losses(rec["log_history"]))
        main = rec["metrics"][rec["main_metric"]]
        for suffix, field in (("", "value"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            assert run.data.metrics[f"eval/{rec['main_metric']}{suffix}"] == \
                pytest.approx(main[field])
        assert client.list_artifacts(run.info.run_id)[0].path == "config.json"

    # TensorBoard: one folder per run id, the loss curve of the saved model's training only
    assert sorted(p.name for p in (study.output_dir / "tensorboard").iterdir()) == sorted(
        [full.run_id, diverge.run_id, lora.run_id])
    for rc in (full, lora):
        rec = recs[rc.run_id]
        curve = _tb_scalars(tensorboard_dir(target(study), rc.run_id), "train/loss")
        _same_curve(curve, _losses(rec["log_history"]))
        assert len(curve) == rec["steps"]  # logging_steps 1; a killed attempt's would add more
        final = _tb_scalars(tensorboard_dir(target(study), rc.run_id),
                            f"eval/{rec['main_metric']}")
        _same_curve(final, [(rec["steps"], rec["metrics"][rec["main_metric"]]["value"])])


def test_study_results_reach_the_trackers_once(tmp_path):
    """After the stats and report stages, MLflow holds per done run the final metrics with their
    intervals, the mean drift per band and the bench latencies, the study run holds the report
    files; TensorBoard an HParams session per run with the same numbers. Runs trained before
    tracking was turned on get their MLflow run then. A second report adds nothing."""
    from peftlab.results import bench_rows
    from peftlab.stages.report import run as report_stage
    from peftlab.stages.stats import run as stats_stage
    from peftlab.testing.sample_study import write_sample
    from peftlab.tracking import log_study

    sample = write_sample(tmp_path)
    raw = yaml.safe_load(sample.path.read_text(encoding="utf-8"))
    raw.setdefault("training", {})["report_to"] = ["mlflow", "tensorboard"]
    sample.path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    study = load_study(sample.path)
    assert [rc.run_id for rc in study.runs()] == [rc.run_id for rc in sample.runs()]
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage(ctx)
        report_stage(ctx)
        runs = {r["run_id"]: r for r in store.records("runs")}
        stats = store.records("stats")
        bench = bench_rows(store.records("bench"))
        client = _client(study)
        exp = client.get_experiment_by_name(study.spec.name)
        got = _runs(client, exp.experiment_id)
        trained = {r.data.tags["peftlab.run_id"]: r for r in got
                   if r.data.tags.get("peftlab.kind") == "run"}
        done = {rid for rid, r in runs.items() if r["status"] == "done"}
        assert set(trained) == done and len(got) == len(done) + 1
        (parent,) = [r for r in got if r.data.tags.get("peftlab.kind") == "study"]
        assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
            "report.md", "report.html"}

        rc = next(rc for rc in study.runs() if rc.task == "sst2" and rc.method == "lora")
        metrics = trained[rc.run_id].data.metrics
        rec = runs[rc.run_id]
        m = rec["metrics"]["accuracy"]
        assert (metrics["eval/accuracy"], metrics["eval/accuracy_ci_low"],
                metrics["eval/accuracy_ci_high"]) == pytest.approx(
            (m["value"], m["ci_low"], m["ci_high"]))
        drift = [s for s in stats if (s.get("kind"), s.get("area")) == ("summary", "drift")
                 and s["task"] == "sst2"
                 and s["method"] == "lora" and rc.seed in s["seeds"]]
        assert {s["band"] for s in drift} >= {"early", "middle", "late", "mean"}
        for s in drift:
            assert metrics[f"drift/{s['measure']}/{s['band']}"] == pytest.approx(
                s["values"][s["seeds"].index(rc.seed)])
        points = [r for r in bench if r["ok"] and r["run_ids"] == [rc.run_id]]
        assert {r["mode"] for r in points} >= {"unmerged", "merged"}
        for r in points:
            key = f"bench/{r['mode']}/b{r['batch_size']}/{r['seq_len']}"
            assert metrics[f"{key}/p50_ms"] == pytest.approx(r["latency"]["p50"])
            assert metrics[f"{key}/p99_ms"] == pytest.approx(r["latency"]["p99"])

        folder = tensorboard_dir(target(study), rc.run_id) / "results"
        _same_curve(_tb_scalars(folder, "eval/accuracy"), [(0, m["value"])])

        history = {k: len(client.get_metric_history(trained[rc.run_id].info.run_id, k))
                   for k in metrics}
        log_study(ctx)  # again (what a second report does): the same values, logged once
        again = _runs(client, exp.experiment_id)
        assert len(again) == len(got)
        assert {k: len(client.get_metric_history(trained[rc.run_id].info.run_id, k))
                for k in metrics} == history
        _same_curve(_tb_scalars(folder, "eval/accuracy"), [(0, m["value"])])
    finally:
        store.close()


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_tracker_that_is_not_installed_is_refused_at_validation(
        tmp_path, tiny_llama_dir, monkeypatch, capsys, tracker):
    """One `error:` line naming the spec key, the package and the extra; exit 2."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name == tracker else real(name, *a, **k))
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, tasks=("sst2",), seeds=(1,))
    spec["methods"]["lora"]["training"]["report_to"] = [tracker]
    path = write_spec(tmp_path / "spec.yaml", spec)
    with pytest.raises(SpecError) as e:
        load_study(path)
    msg = str(e.value)
    assert msg == (f"{path}: methods.lora.training.report_to: {tracker} is asked for but the "
                   f"package {tracker!r} is not installed; install it with {INSTALL}")

    from peftlab import cli

    monkeypatch.setattr(sys, "argv", ["peftlab", "validate", str(path)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if line.strip()] == [f"error: {msg}"]


# -- a killed attempt's tracker runs are closed before they are replaced ------------------------


def _one_run(tmp_path, model_dir, report_to):
    spec = tiny_spec(tmp_path / "study", model_dir=model_dir, tasks=("sst2",), seeds=(1,),
                     methods=("lora",))
    spec["training"]["report_to"] = report_to
    study = load_study(write_spec(tmp_path / "spec.yaml", spec))
    (rc,) = study.runs()
    return study, rc


def _done(rc):
    from peftlab.training import TrainResult

    return TrainResult(status="done", main_metric="accuracy", steps=3,
                       metrics={"accuracy": {"value": 0.75, "ci_low": 0.5, "ci_high": 0.9}})


def test_an_mlflow_run_left_running_is_killed_before_it_is_replaced(tmp_path, tiny_llama_dir):
    """A run's MLflow run left RUNNING by a killed process, active or already deleted (as
    earlier versions left them): a new attempt sets it KILLED, with the reason, then deletes it;
    listing every run, deleted ones included, shows none RUNNING."""
    from mlflow.entities import ViewType

    from peftlab.tracking import _MLflow, run_trackers

    study, rc = _one_run(tmp_path, tiny_llama_dir, ["mlflow"])
    t = target(study)
    ml = _MLflow(t)
    parent = ml.study_run()
    legacy = ml.create_run(rc, parent)  # a killed attempt an earlier version deleted RUNNING
    ml.client.delete_run(legacy)
    killed = ml.create_run(rc, parent)  # the killed attempt of the last start, still active
    assert {ml.client.get_run(r).info.status for r in (legacy, killed)} == {"RUNNING"}

    with run_trackers(t, rc) as trackers:
        trackers.finish(_done(rc))
    every = ml.client.search_runs([ml.experiment_id], run_view_type=ViewType.ALL)
    by_id = {r.info.run_id: r for r in every}
    assert len(every) == 4 and not [r for r in every if r.info.status == "RUNNING"]
    for rid in (legacy, killed):
        assert by_id[rid].info.status == "KILLED"
        assert by_id[rid].info.lifecycle_stage == "deleted"
        assert by_id[rid].data.tags["peftlab.failure_reason"].startswith("killed")
    (current,) = ml.find(**{"peftlab.run_id": rc.run_id})
    assert current.info.status == "FINISHED" and current.info.run_id not in (legacy, killed)


class _FakeWandb:
    """The part of the wandb API peftlab calls (init, finish, run, summary), recording calls."""

    def __init__(self):
        import importlib.machinery
        import types

        self.calls: list[tuple] = []
        self.module = types.ModuleType("wandb")
        # transformers' is_wandb_available: find_spec("wandb") and a `run` attribute
        self.module.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        self.module.run = None
        self.module.init = self.init
        self.module.finish = lambda exit_code=None: self.module.run and self.module.run.finish(
            exit_code=exit_code)

    def init(self, *, id, resume, **kwargs):
        fake = self

        class Run:

            def __init__(self):
                self.id, self.summary = id, {}

            def finish(self, exit_code=None):
                fake.calls.append(("finish", self.id, exit_code, dict(self.summary)))
                fake.module.run = None

        self.calls.append(("init", id, resume))
        self.module.run = Run()
        return self.module.run


def test_a_wandb_run_left_open_by_a_killed_attempt_is_finished_before_it_is_replaced(
        tmp_path, tiny_llama_dir, monkeypatch):
    """W&B through a stand-in module (wandb is not installed here): the first attempt's W&B run
    is never closed (its process is killed); the second attempt first resumes it and finishes it
    with a non-zero exit code (W&B: failed) and `peftlab/status` killed, then trains into a W&B
    run of its own, finished with exit code 0; the study results go to that run."""
    from peftlab.tracking import KILLED_EXIT_CODE, WandbAttempts, run_trackers, wandb_id

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake.module)
    study, rc = _one_run(tmp_path, tiny_llama_dir, ["wandb"])
    t = target(study)
    first = run_trackers(t, rc).__enter__()  # training starts ...
    assert fake.calls == [("init", wandb_id(t, rc.run_id), "allow")]
    assert first.callbacks and type(first.callbacks[0]).__name__ == "WandbCallback"
    fake.module.run = None  # ... and its process is killed: nothing closes the W&B run
    fake.calls.clear()

    with run_trackers(t, rc) as second:
        second.finish(_done(rc))
    old, new = wandb_id(t, rc.run_id), wandb_id(t, f"{rc.run_id}/attempt-2")
    assert fake.calls == [
        ("init", old, "allow"),
        ("finish", old, KILLED_EXIT_CODE, {"peftlab/status": "killed", "peftlab/replaced_by": new}),
        ("init", new, "allow"),
        ("finish", new, 0, {"eval/accuracy": 0.75, "eval/accuracy_ci_low": 0.5,
                            "eval/accuracy_ci_high": 0.9})]
    assert KILLED_EXIT_CODE != 0 and new != old
    attempts = WandbAttempts(t, rc.run_id)
    assert attempts.read() == [{"id": old, "closed": True}, {"id": new, "closed": True}]
    assert attempts.current() == new  # where log_study puts the study-level results

    fake.calls.clear()  # a third attempt (the run failed before training): nothing left open
    with pytest.raises(SpecError), run_trackers(t, rc):
        raise SpecError("a user mistake before training")
    third = wandb_id(t, f"{rc.run_id}/attempt-3")
    assert fake.calls == [("init", third, "allow"), ("finish", third, 1, {})]
