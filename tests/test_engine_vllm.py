"""A real vLLM server (CPU build) with two LoRA adapters: each adapter's greedy output equals
transformers/PEFT's own, token for token, and no server process is left after stopping.

Needs the engine environment (scripts/build-engine-env.sh; found through $PEFTLAB_ENGINE_PYTHON
or .venv-engine): skipped with a message without it. Each server start takes 30-80 s on 2 cores.
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
from engine_fixtures import ADAPTERS, build_tiny_causal_with_adapters, greedy_ids

from peftlab.bench.engines import make_engine
from peftlab.bench.engines.base import (
    EngineServer,
    EngineSettings,
    ServedModels,
    find_engine_python,
    group_members,
    pid_alive,
)
from peftlab.bench.engines.client import complete

ENGINE_PYTHON = find_engine_python()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ENGINE_PYTHON is None, reason="no engine environment: build it with "
                       "scripts/build-engine-env.sh (or set PEFTLAB_ENGINE_PYTHON)"),
]
PROMPTS = [[1, 5, 6, 7, 8], [1, 40, 41, 42]]
NEW_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_served(tmp_path_factory) -> Path:
    return build_tiny_causal_with_adapters(tmp_path_factory.mktemp("engine-models"))


def _engine():
    return make_engine("vllm", EngineSettings(python=str(ENGINE_PYTHON), max_model_len=128,
                                              max_num_seqs=4, startup_timeout_s=600,
                                              stop_grace_s=10))


def _served(d: Path) -> ServedModels:
    return ServedModels(base=str(d / "base"), base_name="base",
                        adapters={a: str(d / a) for a in ADAPTERS})


def _engine_pids(pgid: int) -> list[int]:
    return group_members(pgid)


def test_each_adapter_decodes_as_peft_does_and_stop_leaves_nothing(tiny_served, tmp_path):
    got: dict[tuple[str, int], list[int]] = {}
    with EngineServer(_engine(), _served(tiny_served), log_path=tmp_path / "vllm.log") as server:
        pgid = server.pgid
        pids = _engine_pids(pgid)
        assert len(pids) >= 2, "vLLM runs its engine core in a process of the server's group"
        for name in ("base", *ADAPTERS):
            for i, prompt in enumerate(PROMPTS):
                t = complete(server.url, model=name, prompt=prompt, max_tokens=NEW_TOKENS,
                             arrival_ns=time.perf_counter_ns())
                assert t.status == "done", t.error
                assert t.output_tokens == NEW_TOKENS
                got[(name, i)] = t.token_ids
    assert group_members(pgid) == [] and not any(pid_alive(p) for p in pids)
    for name in ("base", *ADAPTERS):
        for i, prompt in enumerate(PROMPTS):
            want = greedy_ids(tiny_served / "base", None if name == "base" else
                              tiny_served / name, prompt, NEW_TOKENS)
            assert got[(name, i)] == want, f"{name} prompt {i}"
    # the adapters change the decoding, so the comparison above tells them apart
    assert got[("a", 0)] != got[("b", 0)] or got[("a", 1)] != got[("b", 1)]
    assert any(got[(a, i)] != got[("base", i)] for a in ADAPTERS for i in range(2))


DRIVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {test_dir!r})
    from test_engine_vllm import _engine, _served
    from peftlab.bench.engines.base import EngineServer
    tmp, models = Path({tmp!r}), Path({models!r})
    with EngineServer(_engine(), _served(models), log_path=tmp / "vllm.log") as server:
        (tmp / "pgid").write_text(str(server.pgid))
        while True:
            time.sleep(0.2)
""")


def test_sigkill_of_peftlab_stops_the_vllm_server_and_its_engine_core(tiny_served, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]),
        "PEFTLAB_ENGINE_PYTHON": str(ENGINE_PYTHON)}
    proc = subprocess.Popen([sys.executable, "-c", DRIVER.format(
        test_dir=str(Path(__file__).parent), tmp=str(tmp_path), models=str(tiny_served))],
        env=env, start_new_session=True)
    deadline = time.monotonic() + 600
    while not (tmp_path / "pgid").is_file():
        assert proc.poll() is None, (tmp_path / "vllm.log").read_text()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.5)
    pgid = int((tmp_path / "pgid").read_text())
    pids = group_members(pgid)
    assert len(pids) >= 2
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 120
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in pids) and group_members(pgid) == []
