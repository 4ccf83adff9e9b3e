"""A tiny study killed (SIGKILL to its whole process group) at seeded random moments of search,
finetune, represent and bench, then run to completion, ends with the tables of an uninterrupted
run of the same spec.

    .venv/bin/python -m pytest tests/test_faults.py -q

Each kill waits for an observable event, never for a time: the k-th new record state (a new key,
or a record whose status, state or step count changed) of the stage's table since the attempt
started, with the stage and k drawn from a seeded generator. k is at most the number of that
table's records still to finish, so every chosen event is one the attempt reaches. The killed
attempts run `peftlab run` in a process group of their own (its bench worker processes
included); the reference run and the final run to completion run in this process.

Compared: every table's keys, and every record's values except what differs between two
uninterrupted runs of the same spec too (`NONDETERMINISTIC`: times, speeds, memory, pids,
latencies, provenance; measured by running the spec twice and diffing the records). The search
table is compared by content: a trial that was running at a kill is recorded `interrupted` and
retried under a new number, so its keys are the reference's plus those retries. `bench_blocks`
is compared by keys: its values record the order and processes the bench units ran in (and a
block whose record a kill prevented is a known gap, issue 28 item 4: the test reports it as an
expected failure, after every other comparison has passed).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

from peftlab.pipeline import load_study, run_stages
from peftlab.testing import tiny_spec, wait_for_records, write_spec

STAGES = ["data", "search", "finetune", "represent", "bench"]
KILLED_IN = {"search": "search", "finetune": "runs", "represent": "represent", "bench": "bench"}
SEED = 20260
KILLS = 5

# Leaf names whose values differ between two uninterrupted runs of the spec (wall-clock times,
# speeds, memory, process ids, latencies and what derives from them, provenance).
NONDETERMINISTIC = {
    "provenance", "pid", "started", "finished", "process", "memory", "memory_after_load",
    "latencies_ns", "latency_ms", "throughput", "load", "first_call_ms", "timed_wall_s",
    "examples_per_s", "extract_time_s", "eval_time_s", "train_time_s", "train_wall_s",
    "train_samples_per_s", "train_tokens_per_s", "train_runtime", "train_samples_per_second",
    "train_steps_per_second", "duration_s", "trials_s", "budget_sentence",
    # the sha256 of a representation file's bytes: safetensors writes its metadata mapping in
    # an order that varies from process to process (the arrays are compared instead, below)
    "content_sha256",
    # the number of the search trial that chose a run's values: a trial a kill interrupted is
    # retried under the next number, shifting the later ones (compared by params and scores)
    "trial",
}


def _spec(root: Path, model_dir: Path) -> Path:
    spec = tiny_spec(
        root / "study", model_dir=model_dir, tasks=("sst2",), methods=("lora",), seeds=(1, 2),
        train_samples=32, eval_samples=16,
        training={"epochs": 1, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 20},
        search={"n_trials": 2, "startup_trials": 2, "pruner": "none", "validation_share": 0.25,
                "methods": {"lora": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}},
        represent={"probe_samples": 16, "batch_size": 8},
        bench={"modes": ["unmerged", "merged"], "batch_sizes": [1], "seq_lengths": ["data"],
               "warmup": 1, "min_iterations": 3, "min_seconds": 0.0, "threads": 1,
               "gate_examples": 4, "load_repeats": 1})
    return write_spec(root / "spec.yaml", spec)


def _tables(study) -> dict[str, dict[str, Any]]:
    """{table: {key: record}} of a study directory, read from SQLite directly."""
    with sqlite3.connect(study.output_dir / "results.sqlite") as con:
        rows = con.execute("SELECT tbl, key, data FROM records").fetchall()
    out: dict[str, dict[str, Any]] = {}
    for table, key, data in rows:
        out.setdefault(table, {})[key] = json.loads(data)
    return out


def _signature(key: str, rec: dict[str, Any]) -> tuple:
    return key, rec.get("status"), rec.get("state"), rec.get("steps")


def _finished(rec: dict[str, Any]) -> bool:
    return rec.get("status", rec.get("state")) in (None, "done", "complete", "interrupted")


# Tables of the paired latency design: each record is timings (rounds, per-round ratios) or an
# analysis of them, so two runs share their keys, never their values.
MEASURED = ("bench_pairs", "bench_design")


def _comparable(value: Any, root: str) -> Any:
    """`value` without NONDETERMINISTIC fields, the study directory's path replaced by <root>
    and timestamps at the end of a string (`source`: artifact@finish time) by <time>."""
    if isinstance(value, dict):
        return {k: _comparable(v, root) for k, v in value.items() if k not in NONDETERMINISTIC}
    if isinstance(value, list):
        return [_comparable(v, root) for v in value]
    if isinstance(value, str):  # a source names its artifact and the time the run finished
        return re.sub(r"@\d{4}-\d\d-\d\dT[\d:]+[+-]\d{4}$", "@<time>",
                      value.replace(root, "<root>"))
    return value


def _schedule(rng: np.random.Generator) -> list[str]:
    """One kill in each of search, finetune, represent and bench, and KILLS - 4 more in stages
    drawn at random; in pipeline order (each attempt goes on from where the last one stopped)."""
    stages = list(KILLED_IN) + [str(s) for s in rng.choice(list(KILLED_IN),
                                                            KILLS - len(KILLED_IN))]
    return sorted(stages, key=list(KILLED_IN).index)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_llama_dir, glue_dir):
    """The study run once, uninterrupted."""
    root = tmp_path_factory.mktemp("uninterrupted")
    study = load_study(_spec(root, tiny_llama_dir), data_dir=str(glue_dir))
    run_stages(study, STAGES)
    return study


def test_a_study_killed_at_random_moments_ends_like_an_uninterrupted_one(
        reference, tmp_path, tiny_llama_dir, glue_dir):
    want = _tables(reference)
    study = load_study(_spec(tmp_path, tiny_llama_dir), data_dir=str(glue_dir))
    db = study.output_dir / "results.sqlite"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    rng = np.random.default_rng(SEED)
    schedule = _schedule(rng)
    kills: list[tuple[str, int]] = []
    for i, stage in enumerate(schedule):
        table = KILLED_IN[stage]
        now = _tables(study).get(table, {}) if db.exists() else {}
        seen = {_signature(k, r) for k, r in now.items()}
        remaining = len(want[table]) - sum(_finished(r) for r in now.values())
        later = schedule[i + 1:].count(stage)  # kills still to come in this stage need events
        assert remaining > later, (stage, remaining, later, kills)
        k = int(rng.integers(1, remaining - later + 1))
        proc = subprocess.Popen(
            [sys.executable, "-m", "peftlab.cli", "run", str(study.path), "--data-dir",
             str(glue_dir), "--stages", ",".join(STAGES)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)  # its own process group: the bench workers die with it
        try:
            wait_for_records(
                db, proc, table, lambda recs, seen=seen, k=k: len(
                    {_signature(key, r) for key, r in recs.items()} - seen) >= k,
                what=f"kill {i + 1}: the {k}th new record state of {table!r}")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        kills.append((stage, k))
    assert len(kills) == KILLS and {s for s, _ in kills} == set(KILLED_IN)

    run_stages(study, STAGES)  # to completion
    got = _tables(study)
    assert set(got) == set(want)
    roots = (str(reference.output_dir), str(study.output_dir))
    for table in sorted(want):
        if table in ("search", "bench_blocks", "stage_times"):  # per session: keys differ
            continue
        assert set(got[table]) == set(want[table]), (table, kills)
        if table in MEASURED:  # every value is a timing or derived from timings: keys only
            continue
        for key, rec in want[table].items():
            assert _comparable(got[table][key], roots[1]) == _comparable(rec, roots[0]), (
                table, key, kills)
    for key, rec in want["represent"].items():  # the representations themselves, bit for bit
        a = load_file(reference.output_dir / rec["file"])
        b = load_file(study.output_dir / got["represent"][key]["file"])
        assert a.keys() == b.keys() and all(np.array_equal(a[n], b[n]) for n in a), key

    # search: the reference's trials, complete and in order with the same parameters and
    # scores, plus one interrupted record per trial a kill stopped; the same best trial
    def trials(tables: dict[str, dict[str, Any]], state: str) -> list[tuple]:
        return [(r["params"], r["values"]) for k, r in sorted(tables["search"].items())
                if k.startswith("trial/") and r["state"] == state]

    assert trials(got, "complete") == trials(want, "complete")
    assert {r["state"] for r in got["search"].values() if "state" in r} <= {
        "complete", "interrupted"}
    assert set(want["search"]) <= set(got["search"])
    (summary_key,) = [k for k in want["search"] if k.startswith("summary/")]
    best = (got["search"][summary_key]["best"], want["search"][summary_key]["best"])
    assert best[0]["params"] and _comparable(best[0], "") == _comparable(best[1], "")
    assert [rc.run_id for rc in study.runs()] == [rc.run_id for rc in reference.runs()]

    # Last, as it is a known gap (issue 28, item 4, the bench block redesign): a kill after a
    # block's last unit was recorded and before its block record leaves the block without a
    # record for good (the rerun finds every unit measured and runs nothing).
    missing = set(want["bench_blocks"]) - set(got["bench_blocks"])
    if missing and not set(got["bench_blocks"]) - set(want["bench_blocks"]):
        pytest.xfail(f"bench_blocks {sorted(missing)} never recorded after the kills {kills} "
                     "(issue 28, item 4)")
    assert set(got["bench_blocks"]) == set(want["bench_blocks"]), kills
