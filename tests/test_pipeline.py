"""End to end: `peftlab run` on a tiny study fills every results table and writes a report that
names every run; a second `peftlab run` finds nothing left to do."""

from __future__ import annotations

import contextlib
import io
import re

import pytest

from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec


def _cli(*args: str) -> tuple[int, str, str]:
    from peftlab import cli

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.app(list(args), standalone_mode=False)
        except SystemExit as e:  # pragma: no cover - typer exits on --help only
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_llama_dir, glue_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    bench = {"batch_sizes": [1, 4], "seq_lengths": ["data"], "warmup": 1, "min_iterations": 3,
             "min_seconds": 0.0, "threads": 1, "runs": "first_seed"}
    spec = tiny_spec(tmp / "study", model_dir=tiny_llama_dir, tasks=("sst2", "rte"),
                     methods=("full", "lora"), seeds=(1, 2, 3), bench=bench)
    path = write_spec(tmp / "spec.yaml", spec)
    code, out, err = _cli("run", str(path), "--data-dir", str(glue_dir))
    assert code == 0, err
    return tmp / "study", path, out


def test_run_fills_every_table(finished):
    study_dir, _, out = finished
    store = Store(study_dir, create=False)
    try:
        runs = store.records("runs")
        assert len(runs) == 12 and all(r["status"] == "done" for r in runs)
        for table in ("data", "represent", "drift", "weights", "bench", "stats"):
            assert store.records(table), f"{table} is empty"
        kinds = {r["kind"] for r in store.records("drift")}
        assert kinds == {"base_vs_run", "seed_to_seed"}
        modes = {r.get("mode") for r in store.records("bench")}
        assert {"base", "full", "unmerged", "merged", "multi", "mixed"} <= modes
    finally:
        store.close()
    assert f"report: {study_dir / 'report.html'}" in out


def test_report_names_every_run(finished):
    study_dir, _, _ = finished
    md = (study_dir / "report.md").read_text()
    html = (study_dir / "report.html").read_text()
    store = Store(study_dir, create=False)
    try:
        ids = [r["run_id"] for r in store.records("runs")]
    finally:
        store.close()
    for run_id in ids:
        assert run_id in md and run_id in html
    # with 3 seeds the accuracy comparisons are tested; the latency ones (first seed only) are not
    assert re.search(r"insufficient runs", md, re.IGNORECASE)
    assert "<img" in html and "http://" not in html and "https://" not in html


def test_second_run_has_nothing_to_do(finished, glue_dir):
    study_dir, path, _ = finished
    before = {r["key"]: r["finished"] for r in Store(study_dir, create=False).records("runs")}
    code, _, err = _cli("run", str(path), "--data-dir", str(glue_dir),
                        "--stages", "finetune,represent,drift,bench")
    assert code == 0, err
    assert "every run is done" in err
    after = {r["key"]: r["finished"] for r in Store(study_dir, create=False).records("runs")}
    assert before == after
