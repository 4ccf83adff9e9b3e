"""The serve stage: the spec's `engine:` block, the stage inside `peftlab run`, and the study's own
models served (adapters with copies, merged models, the full model) with resumable sweeps.

The stage runs here against the stand-in server of `fake_engine_server.py` (registered as the
vllm engine for the test), on a tiny generation study trained for real, so these tests need no
engine environment; `test_real_vllm_serves_a_trained_generation_study` runs the same stage on
a real vLLM CPU server when the engine environment exists and is skipped otherwise.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from fake_engine import FakeEngine
from test_cli import cli, failed

from peftlab.bench.engines import base as engine_base
from peftlab.bench.engines.base import find_engine_python, group_members
from peftlab.pipeline import load_study, run_stages
from peftlab.store import Store

ENGINE_PYTHON = find_engine_python()

ROWS = [["name[Aa], area[riverside]", "Aa is by the river."],
        ["name[Bb], area[city centre]", "Bb is in the city centre of town."],
        ["name[Aa], area[riverside]", "Aa sits by the river."],
        ["name[Cc], food[Thai]", "Cc serves Thai food."]]


def _csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["mr", "ref"])
        w.writerows(rows)
    return path


def _spec(tmp_path: Path, model: Path, engine: dict | None, *, seeds=(1, 2),
          data: Path | None = None) -> Path:
    """The spec in tmp_path; its data files in `data` (a trained study's: the same run ids)."""
    data = data or tmp_path
    train = data / "train.csv" if (data / "train.csv").is_file() else \
        _csv(data / "train.csv", ROWS * 4)
    eval_ = data / "eval.csv" if (data / "eval.csv").is_file() else _csv(data / "eval.csv", ROWS)
    spec = {
        "name": "gen-serve", "output_dir": str(tmp_path / "study"), "device": "cpu",
        "model": {"name": str(model), "max_length": 48},
        "tasks": [{"name": "toy", "kind": "generation",
                   "files": {"train": str(train), "eval": str(eval_)},
                   "columns": {"prompt": "mr", "target": "ref"},
                   "prompt_template": "Facts: {input}\nSentence:",
                   "metrics": ["bleu", "rouge_l", "chrf", "slot_error_rate"]}],
        "methods": {"full": {"type": "full", "training": {"learning_rate": 1e-3}},
                    "lora": {"type": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear",
                             "training": {"learning_rate": 3e-3}}},
        "seeds": list(seeds),
        "training": {"epochs": 1, "batch_size": 8, "bootstrap_samples": 20},
        "generation": {"max_new_tokens": 6, "few_shot": 1, "batch_size": 4, "samples": 0},
    }
    if engine is not None:
        spec["engine"] = engine
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


FAKE_ENGINE = {"python": sys.executable, "adapters_k": 3, "fewer_adapters": [1],
               "rates": [40.0, 80.0], "max_requests": 8, "min_requests": 8, "max_seconds": 5,
               "drain_seconds": 20, "startup_timeout_s": 60}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer causal Llama with head_dim 64 (what vLLM's CPU attention supports)."""
    from peftlab.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("serve-lm"), lm_head=True, hidden=128,
                            heads=2, kv_heads=1, intermediate=256, pretrain_steps=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path) -> Path:
    """The tiny generation study trained once (2 LoRA seeds, 2 full seeds): its directory."""
    root = tmp_path_factory.mktemp("serve-study")
    study = load_study(_spec(root, tiny_lm, None))
    run_stages(study, ["data", "finetune"])
    return root


def _study_copy(trained: Path, tmp_path: Path, tiny_lm: Path, engine: dict | None):
    import shutil

    shutil.copytree(trained / "study", tmp_path / "study")
    return load_study(_spec(tmp_path, tiny_lm, engine, data=trained))


class StandIn(FakeEngine):
    """The stand-in server registered as "vllm": counts the servers it was asked to start."""

    name = "vllm"
    label = "vLLM"
    started: list[str] = []
    fail_on: str | None = None  # a served model name whose server fails to start
    hang_on: str | None = None  # ... whose server never answers on /health

    def __init__(self, settings, *, kv_cache_gib: float = 0.5, gpu_memory_fraction=None):
        super().__init__(settings)
        self.kv_cache_gib = kv_cache_gib

    def command(self, served, host, port):
        StandIn.started.append(served.base_name or served.base)
        self.flags = ("--fail",) if served.base_name == StandIn.fail_on else \
            ("--never-healthy",) if served.base_name == StandIn.hang_on else ()
        return super().command(served, host, port)

    def version(self):
        return "stand-in 1.0"


@pytest.fixture
def stand_in(monkeypatch):
    from peftlab.bench import engines

    monkeypatch.setitem(engines.ENGINE_CLASSES, "vllm", StandIn)
    StandIn.started, StandIn.fail_on = [], None
    return StandIn


# -- the spec block ---------------------------------------------------------------------------


@pytest.mark.parametrize("engine, expected", [
    ({"adapters_kk": 8}, "engine.adapters_kk: unknown key"),
    ({"rates": []}, "engine.rates"),
    ({"fewer_adapters": [8], "adapters_k": 8}, "fewer_adapters must each be between 1 and"),
    ({"configs": ["merged"], "merged_servers": "fit"}, "configs must include base"),
    ({"min_requests": 200, "max_requests": 100}, "every load run would be invalid"),
    ({"popularity": ["zipf"]}, "engine.popularity"),
])
def test_bad_engine_block_is_one_error_line_exit_2(tmp_path, tiny_lm, engine, expected):
    res = cli("validate", _spec(tmp_path, tiny_lm, engine))
    msg = failed(res, "spec.yaml", expected)
    assert len(msg.splitlines()) == 1


def test_engine_block_parses_with_its_defaults(tmp_path, tiny_lm):
    spec = load_study(_spec(tmp_path, tiny_lm, {"adapters_k": 10, "rates": [4, 1, 2, 2]})).spec
    es = spec.engine
    assert es.name == "vllm" and es.adapters_k == 10 and es.rates == [1.0, 2.0, 4.0]
    assert es.counts() == [1, 3, 10] and es.merged_servers == "fit"
    assert es.quick().max_requests == 40
    assert load_study(_spec(tmp_path, tiny_lm, None)).spec.engine is None


def test_the_engine_spec_is_e2e_smollm2_plus_the_engine_block():
    """Same study directory and run ids: after `peftlab run e2e-smollm2` it trains nothing."""
    plain, served = load_study("e2e-smollm2"), load_study("e2e-smollm2-vllm")
    assert plain.output_dir == served.output_dir
    assert [r.run_id for r in plain.runs()] == [r.run_id for r in served.runs()]
    assert plain.spec.model_dump(exclude={"name", "description", "engine"}) == \
        served.spec.model_dump(exclude={"name", "description", "engine"})
    es = served.spec.engine
    assert es is not None and es.adapters_k >= 8 and es.max_requests >= 100
    assert set(es.popularity) == {"uniform", "skewed"} and es.max_tokens == "data"


# -- without the engine environment -----------------------------------------------------------


def test_missing_engine_environment_fails_before_any_stage(tmp_path, tiny_lm, monkeypatch):
    monkeypatch.setenv("PEFTLAB_ENGINE_PYTHON", str(tmp_path / "nowhere" / "bin" / "python"))
    spec = _spec(tmp_path, tiny_lm, {"adapters_k": 2, "fewer_adapters": []})
    msg = failed(cli("run", spec), "PEFTLAB_ENGINE_PYTHON", "scripts/build-engine-env.sh")
    assert len(msg.splitlines()) == 1
    assert not (tmp_path / "study").exists()  # no stage ran, nothing was written
    # a python named in the spec that does not exist: the key is named
    spec = _spec(tmp_path, tiny_lm, {"python": str(tmp_path / "venv" / "bin" / "python")})
    failed(cli("run", spec, "--stages", "data,serve"), "engine.python",
           "scripts/build-engine-env.sh")


def test_without_an_engine_block_the_stage_is_skipped_and_refused_alone(tmp_path, tiny_lm):
    from io import StringIO

    from rich.console import Console

    spec = _spec(tmp_path, tiny_lm, None)
    out = StringIO()
    run_stages(load_study(spec), ["serve"], console=Console(file=out, width=200))
    assert "serve: skipped (the spec has no engine block" in out.getvalue()
    failed(cli("serve", spec), "has no engine block")


# -- the stage on the stand-in server ---------------------------------------------------------


def _records(study):
    store = Store(study.output_dir, create=False)
    try:
        return {r["key"]: r for r in store.records("engine_serving")}
    finally:
        store.close()


def test_serve_stage_serves_the_studys_models_resumes_and_reports(tmp_path, tiny_lm, trained,
                                                                   stand_in, monkeypatch):
    study = _study_copy(trained, tmp_path, tiny_lm, dict(FAKE_ENGINE))
    lora = [r.run_id for r in study.runs() if r.method == "lora"]
    full = next(r.run_id for r in study.runs() if r.method == "full")
    # a merged model's server fails to start: what finished before is kept
    stand_in.fail_on = lora[1]
    with pytest.raises(engine_base.EngineError, match="exited with code 3"):
        run_stages(study, ["serve"])
    first = _records(study)
    configs = {r["config"] for r in first.values()}
    assert configs == {"base", "adapters-1", "adapters-3"}
    # k = 3 from 2 LoRA runs: one copy under its own name, said in the records
    adapters3 = next(r for r in first.values() if r["config"] == "adapters-3")
    assert adapters3["models"] == [lora[0], lora[1], f"{lora[0]}-copy1"]
    assert adapters3["sources"][f"{lora[0]}-copy1"] == lora[0]
    assert {r["pattern"] for r in first.values() if r["config"] == "adapters-3"} == \
        {"uniform", "skewed"}
    base = next(r for r in first.values() if r["config"] == "base")
    assert base["pattern"] == "identical" and base["memory_gib"][0] > 0
    # output lengths from the data: each request asked for a reference's length in tokens
    row = adapters3["row"]
    assert row["max_tokens"] == "per prompt" and row["requests"]["done"] == 8
    assert row["output_tokens"] != 8 * 16 and row["valid"]
    for rate_row in first.values():
        assert rate_row["stamp"] and rate_row["engine_version"] == "stand-in 1.0"
    assert not any(group_members(int(p.read_text())) for p in
                   (study.output_dir / "engine" / "logs").glob("*.pid") if p.read_text().strip())

    # rerun: the finished sweeps are not run again, and the merged-server count the first
    # session measured (3 = k: all fit) is kept though memory is short now (1 would fit)
    from peftlab.bench.engines import scenarios

    monkeypatch.setattr(scenarios, "available_memory_gib", lambda: 2.0)
    stand_in.fail_on, stand_in.started = None, []
    run_stages(study, ["serve", "report"])
    # merged-3: one server per name; mixed: the adapters' server and the full model's
    assert sorted(stand_in.started) == sorted([*lora, f"{lora[0]}-copy1", "base", full])
    again = _records(study)
    for key, rec in first.items():
        assert again[key] == rec
    assert {r["config"] for r in again.values()} == configs | {"merged-3", "mixed"}
    merged = next(r for r in again.values() if r["config"] == "merged-3")
    assert merged["servers"] == 3 and "fit in memory" not in merged["note"]  # 3 = k: all fit
    report = (study.output_dir / "report.md").read_text()
    assert "## Serving on vLLM" in report and "What the engine runs show:" in report
    assert "1 of the 3 adapter names are copies" in report
    assert "adapters-3 vs merged-3, uniform:" in report
    assert (study.output_dir / "figures" / "engine-serving-1.png").is_file()

    # a third run changes nothing; another rate list reruns every sweep, here with the stored
    # merged count made stale (no server size), so it is measured anew (2 GiB free: 1 server),
    # and what the new plan no longer has (merged-3) is dropped
    stand_in.started = []
    run_stages(study, ["serve"])
    assert stand_in.started == []
    changed = _spec(tmp_path, tiny_lm, {**FAKE_ENGINE, "rates": [40.0]}, data=trained)
    ctx_store = Store(study.output_dir)
    ctx_store.put("engine_serving_plan", "vllm/merged_servers", {"m": 3})  # stale: no size
    ctx_store.close()
    run_stages(load_study(changed), ["serve"])
    last = _records(study)
    assert {r["offered_rate"] for r in last.values()} == {40.0}
    assert {r["config"] for r in last.values()} == {"base", "adapters-1", "adapters-3",
                                                   "merged-1", "mixed"}


KILLED = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_engine_stage import StandIn
    from peftlab.bench import engines
    from peftlab.pipeline import load_study, run_stages
    engines.ENGINE_CLASSES["vllm"] = StandIn
    StandIn.hang_on = {hang!r}
    run_stages(load_study({spec!r}), ["serve"])
""")


def test_a_killed_serve_stage_leaves_no_server_and_keeps_its_finished_sweeps(
        tmp_path, tiny_lm, trained, stand_in):
    """SIGKILL of peftlab while the mixed workload's servers start: no server process is left
    (the watchdog), the sweeps stored before stay, and the rerun serves only what is missing."""
    study = _study_copy(trained, tmp_path, tiny_lm, dict(FAKE_ENGINE))
    full = next(r.run_id for r in study.runs() if r.method == "full")
    logs = study.output_dir / "engine" / "logs"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(Path(engine_base.__file__).parents[3]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED.format(
        tests=str(Path(__file__).parent), hang=full, spec=str(tmp_path / "spec.yaml"))],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    pidfiles = [logs / "mixed-0.pid", logs / "mixed-1.pid"]  # both servers launched
    while not all(p.is_file() and p.read_text().strip() for p in pidfiles):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the mixed workload's servers never started"
        time.sleep(0.1)
    groups = [int(p.read_text()) for p in logs.glob("*.pid") if p.read_text().strip()]
    assert any(group_members(g) for g in groups)  # the mixed servers are up
    kept = _records(study)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    deadline = time.monotonic() + 60
    while any(group_members(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(group_members(g) for g in groups)
    assert kept and _records(study) == kept and "mixed" not in {
        r["config"] for r in kept.values()}
    run_stages(load_study(tmp_path / "spec.yaml"), ["serve"])
    assert sorted(stand_in.started) == sorted(["base", full])
    assert "mixed" in {r["config"] for r in _records(study).values()}


def test_serve_stage_needs_finished_lora_runs(tmp_path, tiny_lm, stand_in):
    study = load_study(_spec(tmp_path, tiny_lm, dict(FAKE_ENGINE)))
    with pytest.raises(Exception, match="no finished run of the LoRA method 'lora'"):
        run_stages(study, ["serve"])


# -- a real vLLM server (skipped without the engine environment) -----------------------------


@pytest.mark.slow
@pytest.mark.skipif(ENGINE_PYTHON is None, reason="no engine environment: build it with "
                    "scripts/build-engine-env.sh (or set PEFTLAB_ENGINE_PYTHON)")
def test_real_vllm_serves_a_trained_generation_study(tmp_path, tiny_lm, trained):
    engine = {"python": str(ENGINE_PYTHON), "configs": ["adapters", "mixed"], "adapters_k": 2,
              "fewer_adapters": [], "rates": [20.0], "max_requests": 6, "min_requests": 6,
              "max_seconds": 5, "drain_seconds": 120, "max_model_len": 128,
              "max_num_seqs": 4, "kv_cache_gib": 0.05}
    study = _study_copy(trained, tmp_path, tiny_lm, engine)
    run_stages(study, ["serve"])
    recs = _records(study)
    assert {r["config"] for r in recs.values()} == {"adapters-2", "mixed"}
    for r in recs.values():
        assert r["row"]["requests"]["done"] == 6, r["row"]["errors"]
        assert r["engine_version"] and "vllm" in r["engine_version"]
    mixed = next(r for r in recs.values() if r["config"] == "mixed")
    assert mixed["servers"] == 2 and mixed["row"]["requests_per_model"]
    logs = study.output_dir / "engine" / "logs"
    for p in logs.glob("*.pid"):
        assert group_members(int(p.read_text())) == []


def test_gpu_checks_engine_section_runs_the_serve_stage_on_the_checks_runs(
        tmp_path, tiny_lm, trained, stand_in, monkeypatch):
    """benchmarks/gpu_check.py --engine: its section hands the study to the serve stage with its
    own engine block (here on the stand-in server) and returns the summary and decision."""
    from benchmarks import gpu_check
    from peftlab.context import Context

    monkeypatch.setattr(engine_base, "find_engine_python", lambda: Path(sys.executable))
    study = _study_copy(trained, tmp_path, tiny_lm, None)
    store = Store(study.output_dir)
    try:
        # the stand-in answers at once: rates it sustains keep the 10 sweeps to seconds
        out = gpu_check.engine(Context(study=study, store=store), "cpu", True,
                               overrides={"rates": [40.0, 80.0], "max_requests": 8,
                                          "min_requests": 8})
    finally:
        store.close()
    configs = {row[0] for row in out["summary"]}
    assert {"base", "adapters-1", "adapters-2", "adapters-3", "merged-2", "mixed"} == configs
    assert out["version"] == "stand-in 1.0" and "adapters-2 vs merged-2" in out["decision"]
