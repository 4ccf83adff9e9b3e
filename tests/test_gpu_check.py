"""benchmarks/gpu_check.py in its CPU mode (`--device cpu --small`), run as the GPU host runs it:
a subprocess that writes one JSON; and its import check, which must name every missing package."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODES = {"base", "full", "unmerged", "merged", "multi", "mixed"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    env.update(OMP_NUM_THREADS="1", RAYON_NUM_THREADS="1", HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture(scope="module")
def check(tmp_path_factory, glue_dir):
    out = tmp_path_factory.mktemp("gpu-check") / "check.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--small",
         "--threads", "1", "--data-dir", str(glue_dir), "--out", str(out)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stdout


def test_every_section_ran_and_qlora_says_why_it_was_skipped(check):
    doc, _ = check
    status = {k: v["status"] for k, v in doc["sections"].items()}
    assert status.pop("qlora evidence") == "skipped"
    assert "CUDA" in doc["sections"]["qlora evidence"]["reason"]
    assert set(status.values()) == {"done"}, doc["sections"]
    assert doc["mode"] == "small" and doc["device"] == "cpu"
    assert doc["model"]["architecture"]["num_hidden_layers"] == 2


def test_training_rows_come_from_the_finetune_stage(check):
    doc, _ = check
    rows = {(r["task"], r["method"]): r for r in doc["train"]}
    assert set(rows) == {("sst2", "full"), ("sst2", "lora"), ("mrpc", "lora"), ("rte", "lora")}
    for r in rows.values():
        assert r["status"] == "done" and r["steps"] == 5
        assert r["step_time_s"] == pytest.approx(r["train_time_s"] / 5)
        assert r["tokens_per_example"] > 1
    full, lora = rows[("sst2", "full")], rows[("sst2", "lora")]
    assert full["trainable_params"] == full["base_params"]
    assert 0 < lora["trainable_params"] < 0.1 * lora["base_params"]
    # pairs are longer than SST-2's phrases
    assert rows[("rte", "lora")]["tokens_per_example"] > lora["tokens_per_example"]


def test_bench_ran_every_mode_in_processes_of_their_own_behind_the_gate(check):
    doc, _ = check
    units = doc["bench"]["units"]
    assert {u["mode"] for u in units} == MODES
    assert doc["bench"]["isolation"] == "forkserver"
    pids = set()
    for u in units:
        assert u["status"] == "done", u.get("reason")
        assert u["gate"]["passed"] and u["gate"]["checks"]
        assert [p["batch_size"] for p in u["points"]] == [1, 8, 32]
        assert u["process"]["isolation"] == "forkserver"
        assert u["process"]["modes_run_before_in_process"] == []
        pids.add(u["process"]["pid"])
    assert len(pids) == len(units)
    several = [u for u in units if u["mode"] in ("multi", "mixed")]
    assert all(u["tasks"] == ["sst2", "mrpc", "rte"] for u in several)
    r = doc["bench"]["ratios"]
    p50 = {u["mode"]: u["points"][0]["p50_ms"] for u in units}
    assert r["unmerged/merged b1"] == pytest.approx(p50["unmerged"] / p50["merged"])
    fp = doc["fastpath"]
    assert all(g["passed"] for g in fp["gate"]) and len(fp["points"]) == 3


def test_precision_and_tolerances_follow_the_dtypes(check):
    doc, _ = check
    worst = {d: max(v["rel_diff"] for k, v in pairs.items() if isinstance(v, dict))
             for d, pairs in doc["precision"].items()}
    assert set(worst) == {"bfloat16", "float16", "float32"}
    assert worst["float32"] < worst["float16"] < worst["bfloat16"]
    for dtype, t in doc["tolerances"].items():
        assert t["implied_tolerance"] >= 4 * t["max_rel_diff"]
        assert t["max_rel_diff"] >= worst.get(dtype, 0.0)


def test_the_estimate_counts_the_reference_plan(check, glue_dir):
    from peftlab.pipeline import load_study
    from peftlab.tasks import get_task, load_split

    doc, stdout = check
    est = doc["estimate"]
    study = load_study("tinyllama-glue", data_dir=str(glue_dir))
    runs = study.runs()
    rows = {t: len(load_split(get_task(t), "train", source="glue_dir", glue_dir=glue_dir))
            for t in ("sst2", "mrpc", "rte")}
    steps = sum(math.ceil(rows[rc.task] // (rc.training.batch_size * rc.training.grad_accum)
                          * rc.training.epochs) for rc in runs)
    assert est["runs"] == len(runs) == 18
    assert est["optimizer_steps"] == steps
    assert est["search_trials"] == 6 * study.spec.search.n_trials and est["search_s"] > 0
    assert est["total_s"] == pytest.approx(est["train_s"] + est["search_s"]
                                           + est["represent_s"] + est["bench_s"])
    assert est["train_s"] > 0 and est["bench_units"] > 0
    assert "estimated tinyllama-glue on this device" in stdout


def test_the_import_check_names_every_missing_package_before_running_anything(tmp_path):
    # Shadow two packages with modules that fail the way a missing one does.
    for name in ("pydantic_core", "multiprocess"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError({'No module named ' + name!r}, name={name!r})\n")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu",
                           "--small", "--out", str(tmp_path / "x.json")], cwd=REPO,
                          env=_env(PYTHONPATH=f"{tmp_path}{os.pathsep}{REPO}"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "'pydantic_core'" in proc.stderr and "'multiprocess'" in proc.stderr
    assert "needed by datasets" in proc.stderr  # multiprocess is missing through datasets' import
    assert not (tmp_path / "x.json").exists()  # nothing ran: it stopped at the imports


def test_the_engine_section_says_why_it_is_skipped_without_vllm(monkeypatch):
    """`--engine` on a host without vLLM (no engine environment, no importable vllm): the
    section is skipped with the way to get one, before it touches the study."""
    import importlib.util

    from benchmarks import gpu_check
    from peftlab.bench.engines import base

    monkeypatch.setattr(base, "find_engine_python", lambda: None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "vllm" else real(name, *a))
    with pytest.raises(gpu_check.Skipped, match="build-engine-env.sh.*PEFTLAB_ENGINE_PYTHON"):
        gpu_check.engine(None, "cuda", False)
