"""Starting, driving and stopping an engine server: no server process outlives peftlab.

A stand-in server (`fake_engine_server.py` here, stdlib only, with one child process like
vLLM's engine core) runs behind the same `EngineServer` as vLLM, so these tests need no engine
environment. Each way of stopping is checked by the processes themselves (/proc): after success,
a failed start, a start that never becomes healthy, Ctrl-C and SIGKILL of the peftlab process.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fake_engine import FakeEngine

from peftlab.bench.engines import base as engine_base
from peftlab.bench.engines.base import (
    EngineError,
    EngineServer,
    EngineSettings,
    ServedModels,
    engine_python,
    group_members,
    pid_alive,
)
from peftlab.bench.engines.client import Timing, complete
from peftlab.bench.engines.load import EnginePrompts, Slo, engine_load_run, summarize_timings

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="process checks read /proc (Linux)")


def _settings(**kw) -> EngineSettings:
    return EngineSettings(stop_grace_s=2.0, startup_timeout_s=30.0, **kw)


def _gone(pids: list[int], timeout_s: float = 30.0) -> bool:
    """Wait (bounded) until none of `pids` is alive; True when all are gone."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(pid_alive(p) for p in pids):
            return True
        time.sleep(0.1)
    return not any(pid_alive(p) for p in pids)


def test_success_streams_tokens_and_stop_leaves_no_process(tmp_path):
    child_file = tmp_path / "child.pid"
    engine = FakeEngine(_settings(), child_pidfile=child_file)
    with EngineServer(engine, ServedModels(base="m"), log_path=tmp_path / "s.log") as server:
        pgid = server.pgid
        child = int(child_file.read_text())
        assert pid_alive(child) and pgid in group_members(pgid)
        t = complete(server.url, model="m", prompt="hi", max_tokens=4, arrival_ns=0)
    assert t.status == "done"
    assert t.token_ids == [100, 101, 102, 103] and t.output_tokens == 4
    assert len(t.token_ns) == 4 and t.first_ns == t.token_ns[0] <= t.done_ns
    assert group_members(pgid) == [] and not pid_alive(child)
    assert server.watchdog.poll() is not None


def test_failed_start_names_the_key_and_shows_the_log(tmp_path):
    engine = FakeEngine(_settings(spec_key="engine"), "--fail")
    server = EngineServer(engine, ServedModels(base="m"), log_path=tmp_path / "s.log")
    with pytest.raises(EngineError) as err:
        server.start()
    msg = str(err.value)
    assert "exited with code 3" in msg and "(settings: engine)" in msg
    assert "cannot load the model folder /nowhere" in msg  # the log's tail
    assert server.pgid is None or group_members(server.pgid) == []


def test_never_healthy_times_out_and_stops_the_server(tmp_path):
    child_file = tmp_path / "child.pid"
    engine = FakeEngine(EngineSettings(stop_grace_s=2.0, startup_timeout_s=1.5),
                        "--never-healthy", child_pidfile=child_file)
    server = EngineServer(engine, ServedModels(base="m"), log_path=tmp_path / "s.log")
    with pytest.raises(EngineError, match="startup_timeout_s"):
        server.start()
    assert server.pgid is not None and group_members(server.pgid) == []
    assert not pid_alive(int(child_file.read_text()))


DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {test_dir!r})
    from fake_engine import FakeEngine
    from peftlab.bench.engines.base import EngineServer, EngineSettings, ServedModels
    tmp = Path({tmp!r})
    engine = FakeEngine(EngineSettings(stop_grace_s=2.0), child_pidfile=tmp / "child.pid")
    with EngineServer(engine, ServedModels(base="m"), log_path=tmp / "s.log") as server:
        (tmp / "pgid").write_text(str(server.pgid))
        while True:
            time.sleep(0.2)
""")


def _start_driver(tmp_path: Path) -> tuple[subprocess.Popen, int, int]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(engine_base.__file__).parents[3]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(test_dir=str(Path(__file__).parent),
                                             tmp=str(tmp_path))],
        env=env, start_new_session=True)  # its own group: the "terminal" a Ctrl-C reaches
    deadline = time.monotonic() + 60
    while not (tmp_path / "pgid").is_file():
        assert proc.poll() is None, "the driver died before its server was up"
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.1)
    pgid = int((tmp_path / "pgid").read_text())
    return proc, pgid, int((tmp_path / "child.pid").read_text())


def test_ctrl_c_of_peftlab_leaves_no_server(tmp_path):
    proc, pgid, child = _start_driver(tmp_path)
    members = group_members(pgid)
    assert pgid in members and child in members
    os.killpg(proc.pid, signal.SIGINT)  # what a Ctrl-C at the terminal sends
    proc.wait(timeout=60)
    assert proc.returncode != 0  # it was interrupted, not finished
    assert _gone([pgid, child]) and group_members(pgid) == []


def test_sigkill_of_peftlab_leaves_no_server(tmp_path):
    proc, pgid, child = _start_driver(tmp_path)
    assert pgid in group_members(pgid)
    os.kill(proc.pid, signal.SIGKILL)  # no handler, no finally: only the watchdog can act
    proc.wait(timeout=60)
    assert _gone([pgid, child]) and group_members(pgid) == []


def test_missing_engine_environment_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTLAB_ENGINE_PYTHON", str(tmp_path / "none" / "bin" / "python"))
    with pytest.raises(EngineError, match=r"PEFTLAB_ENGINE_PYTHON.*build-engine-env\.sh"):
        engine_python()
    with pytest.raises(EngineError, match="engine.python: .*build-engine-env.sh"):
        engine_python(str(tmp_path / "x" / "bin" / "python"))


def test_open_loop_run_against_a_server_counts_every_request(tmp_path):
    engine = FakeEngine(_settings())
    prompts = EnginePrompts(names=["a", "b"], prompts={"a": ["x"], "b": ["y", "z"]}, max_tokens=3)
    with EngineServer(engine, ServedModels(base="a"), log_path=tmp_path / "s.log") as server:
        row = engine_load_run({"a": server.url, "b": server.url}, prompts, rate=50.0,
                              pattern="skewed", max_requests=12, max_seconds=5.0,
                              drain_seconds=30.0, min_requests=10, alive=server.alive)
    n = row["requests"]["offered"]
    assert n == 12 and row["requests"]["done"] == 12 and row["output_tokens"] == 36
    assert sum(row["requests_per_model"].values()) == 12
    assert row["ttft_ms"]["count"] == 12 and row["itl_ms"]["count"] == 24
    assert row["enough_requests"] and row["e2e_ms"]["p99_note"] == "too few requests (n < 100)"


def _timing(i, arrival, first, step, n, status="done"):
    t = Timing(i, "m", arrival)
    if status == "done":
        t.first_ns = first
        t.token_ns = [first + j * step for j in range(n)]
        t.done_ns = t.token_ns[-1]
        t.output_tokens = n
    t.status = status
    return t


def test_per_token_metrics_goodput_and_validity():
    ms = 1_000_000
    ts = [_timing(0, 0, 100 * ms, 10 * ms, 5),      # ttft 100, tpot 10
          _timing(1, 1000 * ms, 1300 * ms, 50 * ms, 3),  # ttft 300, tpot 50
          _timing(2, 2000 * ms, 0, 0, 0, status="unserved")]
    row = summarize_timings(ts, offered=3, window_s=2.0, slo=Slo(ttft_ms=200, tpot_ms=20),
                            min_requests=2)
    assert row["ttft_ms"]["p50"] == pytest.approx(200.0)
    assert row["tpot_ms"]["min"] == pytest.approx(10.0) and row["tpot_ms"]["max"] == \
        pytest.approx(50.0)
    assert row["itl_ms"]["count"] == 4 + 2
    assert row["e2e_ms"]["max"] == pytest.approx(400.0)
    # span: first arrival 0 -> last answer 1400 ms; one of two met both objectives
    assert row["throughput_rps"] == pytest.approx(2 / 1.4)
    assert row["output_tokens_per_s"] == pytest.approx(8 / 1.4)
    assert row["goodput_rps"] == pytest.approx(1 / 1.4) and row["goodput_share"] == \
        pytest.approx(1 / 3)
    assert row["requests"]["unserved"] == 1 and row["enough_requests"]
    assert not row["keeps_up"] and not row["valid"]
    assert any("not sustained" in r for r in row["invalid_because"])


def test_stopping_a_load_run_waits_one_shared_grace_not_one_per_request(monkeypatch):
    """Ctrl-C during a load run: stop() gives the requests in flight one grace period in all
    (before, each thread got its own 10 s: 100 stuck requests held peftlab for minutes)."""
    import threading

    from peftlab.bench.engines import load as engine_load

    release = threading.Event()
    monkeypatch.setattr(engine_load, "complete",
                        lambda *a, timing, **k: release.wait(30) or timing)
    server = engine_load.EngineLoadServer({"a": "http://127.0.0.1:9"})
    for i in range(6):
        server.submit(i, "a", {"prompt": "x", "max_tokens": 1}, arrival_ns=0)
    t0 = time.monotonic()
    server.stop(grace_s=0.5)
    took = time.monotonic() - t0
    release.set()
    assert took < 2.0, f"stop() took {took:.1f} s for 6 stuck requests with a 0.5 s grace"
    assert all(t.status == "unserved" for t in server.timings.values())
