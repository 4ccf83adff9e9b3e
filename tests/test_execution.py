"""Executors: the tiny study through Ray gives what the local backend gives; dead workers,
parallel search trials and the shared-filesystem check.

    .venv/bin/python -m pytest tests/test_execution.py -q

Ray runs on this machine (`ray.init(num_cpus=2)`, one module-wide runtime): each unit asks for
one CPU, so two units run at once, in worker processes of their own. Skipped without Ray
(`pip install -e ".[ray]"`).
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from peftlab.errors import SpecError, StoreError
from peftlab.execution import LocalExecutor, Unit, make_executor
from peftlab.pipeline import load_study, run_stages
from peftlab.records import RunRecord, read, read_search
from peftlab.spec import ExecutionSpec
from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec

STUDY = dict(tasks=("sst2",), methods=("full", "lora"), seeds=(1, 2))


def _study(tmp: Path, model_dir: Path, glue_dir: Path, **sections):
    spec = tiny_spec(tmp / "study", model_dir=model_dir, **{**STUDY, **sections})
    return load_study(write_spec(tmp / "spec.yaml", spec), data_dir=str(glue_dir))


def _runs(study) -> dict[str, RunRecord]:
    store = Store(study.output_dir, create=False)
    try:
        return {r.run_id: r for r in read(store, RunRecord)}
    finally:
        store.close()


# -- without Ray ------------------------------------------------------------------------------


def test_local_executor_runs_units_in_order_and_returns_user_errors():
    ex = LocalExecutor()
    started = []
    ex.submit(Unit("a", sorted, ([3, 1, 2],), on_start=lambda: started.append("a")))
    ex.submit(Unit("b", load_study, ("/nonexistent/spec.yaml",),
                   on_start=lambda: started.append("b")))
    assert started == []  # lazy: a unit starts when its outcome is asked for
    first = ex.next_done()
    assert (first.unit.key, first.value, started) == ("a", [1, 2, 3], ["a"])
    second = ex.next_done()
    assert isinstance(second.error, SpecError) and second.value is None
    assert ex.pending == 0


def test_an_address_without_the_ray_backend_is_refused():
    with pytest.raises(SpecError, match="--executor ray"):
        make_executor(ExecutionSpec(), address="auto")
    with pytest.raises(SpecError, match="local or ray"):
        make_executor(ExecutionSpec(), backend="dask")


def test_the_execution_block_is_validated_with_its_key(tmp_path, tiny_llama_dir, glue_dir):
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, **STUDY,
                     execution={"backend": "ray", "max_retries": -1})
    with pytest.raises(SpecError, match="execution.max_retries"):
        load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))


# -- a Ray cluster that cannot be reached -----------------------------------------------------


def _free_port() -> int:
    """A TCP port nothing listens on (bound and released; nothing here listens on it again)."""
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """`peftlab ARGS` in this process: (exit code, stderr)."""
    import sys

    from peftlab import cli

    monkeypatch.setattr(sys, "argv", ["peftlab", *map(str, args)])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    return exit_.value.code, capsys.readouterr().err


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1:{port}", ["cannot reach a Ray cluster", "TCP connection to the GCS at",
                          ":{port}"]),
    ("not-a-host.invalid:6379", ["cannot reach a Ray cluster", "'not-a-host.invalid'"]),
    ("ray://127.0.0.1:{port}", ["TCP connection to the Ray Client server at 127.0.0.1:{port}"]),
    ("auto", ["no running Ray cluster found on this machine"]),
])
def test_a_ray_address_nothing_answers_at_fails_at_once_with_one_error(
        tmp_path, tiny_llama_dir, glue_dir, monkeypatch, capsys, address, expected):
    """`peftlab run SPEC --executor ray --address A` where nothing listens, a host that does not
    resolve, or `auto` with no cluster on this machine: one `error:` line naming the address and
    what was tried, exit 2, and the study directory is not created. (On main it hung for
    minutes inside ray.init, retrying.)"""
    ray = pytest.importorskip("ray")
    from ray._private import services

    # what ray.init reads for "auto": no cluster recorded by `ray start`, no GCS process running
    # (other test sessions on this machine may run one)
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: set())
    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: None)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever ran before in this process
    port = _free_port()
    address = address.format(port=port)
    study = _study(tmp_path, tiny_llama_dir, glue_dir, execution={"connect_timeout_s": 5})
    code, err = _cli(monkeypatch, capsys, "run", study.path, "--executor", "ray",
                     "--address", address, "--stages", "data")
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: --address {address!r}: "), err
    for piece in expected:
        assert piece.format(port=port) in lines[0], (piece, err)
    assert not study.output_dir.exists()  # refused before the study directory is written


def test_ray_addresses_are_read_as_ray_reads_them_and_bad_ones_refused(monkeypatch):
    pytest.importorskip("ray")
    from peftlab.execution import RAY_CLIENT_PORT, check_ray_address, ray_target

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ray_target("local") is None
    client = ray_target("ray://head.example:10002")
    assert (client.host, client.port, client.client) == ("head.example", 10002, True)
    assert ray_target("ray://head.example").port == RAY_CLIENT_PORT
    # RAY_ADDRESS stands in for no address and "auto", never for a given one (as in ray.init)
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere.example:1")
    assert ray_target(None).host == ray_target("auto").host == "elsewhere.example"
    assert ray_target(None).via == "RAY_ADDRESS"
    assert ray_target("ray://head.example:3").host == "head.example"
    monkeypatch.delenv("RAY_ADDRESS")
    for bad, says in (("head.example:99999", "not a number from 1 to 65535"),
                      ("head.example", "expected auto, host:port"),
                      ("head.example:http", "the port 'http' is not a number")):
        with pytest.raises(SpecError, match=says) as e:
            check_ray_address(bad, 1.0, where="execution.address")
        assert str(e.value).startswith(f"execution.address {bad!r}: ")


# -- on a local Ray runtime -------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_runtime():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_and_ray(ray_runtime, tmp_path_factory, tiny_llama_dir, glue_dir):
    """The same tiny study (2 methods x 2 seeds, then representations) locally and on Ray."""
    out = {}
    for backend in ("local", "ray"):
        tmp = tmp_path_factory.mktemp(backend)
        study = _study(tmp, tiny_llama_dir, glue_dir, execution={"backend": backend})
        run_stages(study, ["data", "finetune", "represent"])
        out[backend] = study
    return out


def test_ray_gives_the_local_run_ids_and_metrics(local_and_ray):
    local, remote = (_runs(local_and_ray[b]) for b in ("local", "ray"))
    assert sorted(local) == sorted(remote) and len(local) == 4
    for run_id, a in local.items():
        b = remote[run_id]
        assert a.status == b.status == "done"
        assert a.metrics.keys() == b.metrics.keys()
        for name, m in a.metrics.items():
            assert b.metrics[name]["value"] == pytest.approx(m["value"], abs=1e-9), name
        assert b.loss_curve == pytest.approx(a.loss_curve, rel=1e-5)
        assert a.provenance["execution"]["backend"] == "local"
        ex = b.provenance["execution"]
        assert ex["backend"] == "ray" and ex["attempt"] == 1 and ex["host"]
        assert (local_and_ray["ray"].output_dir / b.artifact / "adapter_config.json").is_file() \
            or (local_and_ray["ray"].output_dir / b.artifact / "config.json").is_file()


def test_ray_representations_match_the_local_ones(local_and_ray):
    from safetensors.numpy import load_file

    files = {}
    for backend, study in local_and_ray.items():
        store = Store(study.output_dir, create=False)
        try:
            files[backend] = {r["key"]: study.output_dir / r["file"]
                              for r in store.records("represent")}
        finally:
            store.close()
    assert files["local"].keys() == files["ray"].keys()
    assert len(files["ray"]) == 5  # the base and 4 runs
    for key, path in files["local"].items():
        a, b = load_file(path), load_file(files["ray"][key])
        assert a.keys() == b.keys()
        for layer in a:
            np.testing.assert_allclose(b[layer], a[layer], rtol=1e-5, atol=1e-5)


def test_a_study_directory_the_workers_do_not_see_is_refused(ray_runtime, tmp_path):
    ex = make_executor(ExecutionSpec(backend="ray"))
    try:
        assert len(ex.check_shared_filesystem(tmp_path)) == 1  # one node, the same folder
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        with pytest.raises(StoreError, match="not on a filesystem that every Ray node sees"):
            ex.check_shared_filesystem(tmp_path, worker_root=elsewhere)
        assert not (tmp_path / ".peftlab-probes").exists()  # the probes are cleaned up
    finally:
        ex.close()


def test_a_user_mistake_in_a_worker_comes_back_as_the_same_error(ray_runtime):
    ex = make_executor(ExecutionSpec(backend="ray"))
    try:
        ex.submit(Unit("bad", load_study, ("/nonexistent/spec.yaml",)))
        out = ex.next_done()
        assert isinstance(out.error, SpecError) and "nonexistent" in str(out.error)
    finally:
        ex.close()


def _killer(runs_dir: Path, targets: dict[str, int], stop: threading.Event,
            killed: list[tuple[str, int]]):
    """SIGKILL the Ray worker training run `key` each time an attempt of it starts training,
    `targets[key]` times.

    The event is the worker's own: an attempt opens its artifact folder as
    `runs/<key>.tmp-<worker pid>` (`store.atomic_dir`) after its imports, just before training,
    and keeps it until the run is saved; so the folder names the process to kill, mid-run. The
    worker's process title (`ray::peftlab:<key>`, the task's name) confirms the pid is it (a pid
    that is not shows up in `killed` with its title, and fails the test).
    """
    import re

    import psutil

    seen: set[int] = set()
    while not stop.is_set() and any(targets.values()):
        for key, left in targets.items():
            if not left:
                continue
            for tmp in runs_dir.glob(f"{key}.tmp-*"):
                match = re.fullmatch(rf"{re.escape(key)}\.tmp-(\d+)", tmp.name)
                if match is None or int(match[1]) in seen:
                    continue
                pid = int(match[1])
                seen.add(pid)
                try:
                    title = " ".join(psutil.Process(pid).cmdline())
                except psutil.NoSuchProcess:
                    continue  # an attempt that already ended: its folder is a leftover
                if f"ray::peftlab:{key}" not in title:  # never kill what is not the worker
                    killed.append((f"not the worker of {key}: {title}", pid))
                    continue
                os.kill(pid, signal.SIGKILL)
                targets[key] -= 1
                killed.append((key, pid))
        stop.wait(0.02)  # the next look at the folder, not a timer on the kill


def test_a_killed_worker_leaves_its_unit_retried_or_failed_and_the_rest_finish(
        ray_runtime, tmp_path, tiny_llama_dir, glue_dir):
    # lora runs train long enough (25 epochs) to be killed mid-run; the full runs are quick
    study = _study(tmp_path, tiny_llama_dir, glue_dir,
                   execution={"backend": "ray", "max_retries": 1},
                   overrides=[{"methods": ["lora"], "training": {"epochs": 25}}])
    lora = sorted(rc.run_id for rc in study.runs() if rc.method == "lora")
    retried, failed = lora
    targets = {retried: 1, failed: 2}  # max_retries 1: two deaths exhaust the unit
    stop, killed = threading.Event(), []
    watcher = threading.Thread(target=_killer, args=(study.output_dir / "runs", targets, stop,
                                                     killed), daemon=True)
    watcher.start()
    try:
        run_stages(study, ["data", "finetune"])
    finally:
        stop.set()
        watcher.join()
    assert sorted(k for k, _ in killed) == sorted([retried, failed, failed])
    runs = _runs(study)
    assert runs[failed].status == "failed"
    assert "worker died on all 2 attempts" in runs[failed].failure_reason
    assert "WorkerCrashedError" in runs[failed].failure_reason
    assert len(runs[failed].provenance["execution"]["earlier_attempts"]) == 2
    assert runs[retried].status == "done"
    ex = runs[retried].provenance["execution"]
    assert ex["attempt"] == 2 and "WorkerCrashedError" in ex["earlier_attempts"][0]["reason"]
    others = [r for k, r in runs.items() if k not in lora]
    assert len(others) == 2 and all(r.status == "done" for r in others)
    assert not list(study.output_dir.rglob("*.tmp-*"))  # killed attempts left nothing behind


SEARCH = {"n_trials": 4, "eval_steps": 2, "pruner": "median", "pruner_startup_trials": 1,
          "startup_trials": 2, "validation_share": 0.25,
          "space": {"learning_rate": {"low": 1.0e-6, "high": 3.0e-2, "log": True}},
          "methods": {"lora": {"r": [2, 4]}}}


def test_a_search_with_two_parallel_trials_loses_and_repeats_none(ray_runtime, tmp_path,
                                                                   tiny_llama_dir, glue_dir):
    from peftlab.hpsearch import STORAGE_NAME, storage

    study = _study(tmp_path, tiny_llama_dir, glue_dir, methods=("lora",), seeds=(1,),
                   training={"epochs": 2, "batch_size": 8, "logging_steps": 1,
                             "bootstrap_samples": 20, "warmup_ratio": 0.0},
                   search=copy.deepcopy(SEARCH),
                   execution={"backend": "ray", "parallel_trials": 2})
    run_stages(study, ["data", "search"])
    store = Store(study.output_dir, create=False)
    trials, summaries = read_search(store)
    store.close()
    (summary,) = summaries
    assert summary.status == "done" and summary.stopped_by == "n_trials"
    assert summary.sampler["parallel_trials"] == 2
    numbers = sorted(t.number for t in trials)
    assert numbers == [0, 1, 2, 3]  # one record per trial: none lost, none twice
    assert all(t.state in ("complete", "pruned") and t.counted for t in trials)
    # the workers reported to the pruner through the shared journal (StorageReporter)
    assert all(t.intermediate for t in trials)
    # Optuna's own storage agrees: exactly 4 trials, every one finished, distinct values
    import optuna

    opt = optuna.load_study(study_name=summary.study_name,
                            storage=storage(study.output_dir / "search" / STORAGE_NAME))
    states = [t.state.name for t in opt.get_trials(deepcopy=False)]
    assert len(states) == 4 and set(states) <= {"COMPLETE", "PRUNED"}
    assert len({t.params["learning_rate"] for t in opt.get_trials()}) == 4
    # two in flight at once: the second trial was asked before the first one was told
    first, second = sorted(opt.get_trials(), key=lambda t: t.number)[:2]
    assert second.datetime_start <= first.datetime_complete


def test_closing_the_executor_kills_the_units_in_flight(ray_runtime):
    """What Ctrl-C on the driver does (run_stages closes its executor on the way out): the
    workers of units still running are killed, so none of them goes on writing."""
    import psutil

    def workers() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if "ray::peftlab:sleeper" in " ".join(p.info["cmdline"] or [])]

    ex = make_executor(ExecutionSpec(backend="ray"))
    ex.submit(Unit("sleeper", time.sleep, (120,)))
    deadline = time.monotonic() + 60
    while not workers() and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = workers()
    assert pids, "the unit never started"
    ex.close()
    assert ex.pending == 0
    gone, alive = psutil.wait_procs([psutil.Process(p) for p in pids], timeout=30)
    assert not alive
