"""The report's Methods and sweep cells section: the Pareto front over accuracy, drift and cost
(dominated cells marked, ties kept), its rows traced to the stored results of the sample study,
and one line where there is nothing to compare.

    .venv/bin/python -m pytest tests/test_methods_section.py -q
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from rich.console import Console

from peftlab.context import Context
from peftlab.results import run_view
from peftlab.stages.report.methods import (
    AXES,
    CKA,
    dominates,
    method_rows,
    methods_section,
    pareto_front,
)
from peftlab.stages.report.stored import Results
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.testing.sample_study import write_sample

UP = tuple(up for _, up in AXES)  # accuracy higher, CKA higher, latency lower


def test_a_cell_beaten_on_every_axis_is_dominated_and_trade_offs_stay_on_the_front():
    points = [(0.80, 0.90, 10.0),   # best accuracy
              (0.70, 0.95, 10.0),   # best CKA: a trade-off, on the front
              (0.70, 0.90, 12.0),   # worse than the first on all three: dominated
              (0.80, 0.90, 11.0),   # equal accuracy and CKA, slower: dominated by the first
              (0.60, 0.80, 5.0)]    # fastest: on the front
    assert pareto_front(points, UP) == [True, True, False, False, True]


def test_equal_cells_both_stay_on_the_front_and_a_missing_axis_is_not_compared():
    points = [(0.8, 0.9, 10.0), (0.8, 0.9, 10.0), None, (0.7, 0.9, 10.0)]
    assert pareto_front(points, UP) == [True, True, None, False]
    assert not dominates((0.8, 0.9, 10.0), (0.8, 0.9, 10.0), UP)
    # the direction of each axis matters: lower latency wins, lower CKA loses
    assert dominates((0.8, 0.9, 9.0), (0.8, 0.9, 10.0), UP)
    assert not dominates((0.8, 0.8, 9.0), (0.8, 0.9, 10.0), UP)


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    study = write_sample(tmp_path_factory.mktemp("methods"))
    store = Store(study.output_dir)
    ctx = Context(study=study, store=store, console=Console(quiet=True))
    stats_stage(ctx)
    yield Results(ctx, run_view(study, store))
    store.close()


def test_the_rows_of_the_sample_study_are_its_stored_results(sample):
    res = sample
    rows = {(r["task"], r["method"]): r for r in method_rows(res)}
    assert set(rows) == {(t, m) for t in res.view.tasks for m in res.view.methods}
    for (task, method), r in rows.items():
        done = [res.view.done(task, method, s) for s in res.view.seeds]
        done = [d for d in done if d]
        assert r["trainable_params"] == done[0]["params"]["trainable"]
        sm = next(s for s in res.summaries_of("metric")
                  if (s["task"], s["method"]) == (task, method))
        assert r["accuracy"] == sm["mean"] and r["accuracy_ci_low"] == sm["ci_low"]
        own = {d["run_id"] for d in done}
        per_run = {}
        for d in res.drift:
            if d["run_b"] in own and d["kind"] == "base_vs_run" and d["layer"] >= 1:
                per_run.setdefault(d["run_b"], []).append(d["values"][CKA])
        assert math.isclose(r["cka"], np.mean([np.mean(v) for v in per_run.values()]))
        verdicts = [res.verdicts.get((task, method, s)) or {} for s in res.view.seeds]
        assert r["learned"] == sum(1 for x in verdicts if x.get("learned"))
        assert r["improved"] == sum(1 for x in verdicts if x.get("improved") is True)
    lora, full = rows[("sst2", "lora")], rows[("sst2", "full")]
    assert lora["mergeable"] is True and full["mergeable"] is None
    merged = [b["latency"]["p50"] for b in res.bench if b["ok"] and b["task"] == "sst2"
              and b["method"] == "lora" and b["mode"] == "merged" and b["batch_size"] == 1]
    assert merged and math.isclose(lora["merged_ms"], np.mean(merged))
    # merged lora and full are one architecture: one cost, the mean of their latencies
    assert math.isclose(lora["latency_ms"], np.mean([lora["merged_ms"], full["unmerged_ms"]]))
    assert lora["latency_ms"] == full["latency_ms"] == lora["dense_ms"]
    # RTE's lora run of seed 2 sits at chance: the learned rule says so, the row keeps it
    assert rows[("rte", "lora")]["learned"] == 2 and rows[("rte", "lora")]["judged"] == 3


def test_the_front_is_recomputed_when_one_cell_is_beaten_on_every_axis(sample, monkeypatch):
    """Make lora at least as accurate as full on sst2 and no slower: full (more drift) is then
    dominated, and the table says so."""
    from peftlab.stages.report import methods

    real = methods._cka_by_run
    rows = {(r["task"], r["method"]): r for r in method_rows(sample)}
    assert rows[("sst2", "full")]["pareto"] and rows[("sst2", "lora")]["pareto"]
    full_ids = {rid for (t, m, _), rid in sample.view.run_ids.items() if m == "full"}
    monkeypatch.setattr(methods, "_cka_by_run", lambda res: {
        k: (0.0 if k in full_ids else v) for k, v in real(res).items()})
    for s in sample.summaries_of("metric"):
        if s["task"] == "sst2" and s["method"] == "lora":
            monkeypatch.setitem(s, "mean", 0.99)
    slow = [b for b in sample.bench if b["task"] == "sst2" and b["method"] == "full"]
    for b in slow:
        monkeypatch.setitem(b["latency"], "p50", 1e6)
    rows = {(r["task"], r["method"]): r for r in method_rows(sample)}
    assert rows[("sst2", "full")]["pareto"] is False and rows[("sst2", "lora")]["pareto"]
    section = methods_section(sample)
    sst2 = next(b for b in section.blocks if getattr(b, "caption", "").startswith("sst2:"))
    marks = {row[0]: row[-1] for row in sst2.rows}
    assert marks == {"full": "dominated", "lora": "front"}
    assert "front over accuracy (higher), CKA to the base (higher) and latency (lower): lora." \
        in sst2.caption


def test_merged_adapters_and_full_share_one_cost_and_unmergeable_keep_their_own():
    """Noise between processes must not rank models of one architecture: a merged adapter
    1 ms faster than full fine-tuning with the same accuracy and drift does not dominate it,
    while an adapter that cannot merge is costed at its unmerged latency."""
    from peftlab.stages.report.methods import AXES, _dense_cost, pareto_front

    def row(name, mergeable, unmerged, merged, acc=0.8, cka=0.9):
        return {"method": name, "mergeable": mergeable, "unmerged_ms": unmerged,
                "merged_ms": merged, "latency_ms": min(x for x in (unmerged, merged) if x),
                "accuracy": acc, "cka": cka}

    rows = [row("full", None, 16.0, None), row("lora", True, 20.0, 15.0),
            row("vera-like", False, 30.0, None), row("prompt", False, 12.0, None, acc=0.7)]
    _dense_cost(rows)
    assert rows[0]["latency_ms"] == rows[1]["latency_ms"] == 15.5
    assert rows[0]["dense_spread"] == [15.0, 16.0]
    assert rows[2]["latency_ms"] == 30.0 and rows[2]["dense_ms"] is None
    front = pareto_front([tuple(r[k] for k, _ in AXES) for r in rows],
                         tuple(up for _, up in AXES))
    # full and lora tie (both on the front); the slower unmergeable one is dominated; the
    # faster but less accurate one stays on the front through its cost
    assert front == [True, True, False, True]


def test_the_section_renders_its_tables_figures_and_caption(sample):
    section = methods_section(sample)
    tables = [b for b in section.blocks if hasattr(b, "rows")]
    figures = [b for b in section.blocks if hasattr(b, "png")]
    assert len(tables) == len(sample.view.tasks) == len(figures)
    assert all(fig.png.startswith(b"\x89PNG") for fig in figures)
    text = " ".join(" ".join(p.spans) for p in section.blocks if hasattr(p, "spans"))
    assert "untested differences are numbers, not decisions" in text
    assert "higher is less drift" in text and "lower is better" in text


def test_one_method_is_one_line_not_applicable(sample):
    view = dataclasses.replace(sample.view, methods={"lora": "lora"})
    res = Results.__new__(Results)
    res.__dict__.update({**sample.__dict__, "view": view})
    section = methods_section(res)
    assert len(section.blocks) == 1 and " ".join(section.blocks[0].spans).startswith(
        "Not applicable")


def test_the_report_stage_stores_the_method_table_for_peftlab_results(tmp_path):
    """`peftlab results DIR --table methods` prints what the section shows."""
    import json
    import subprocess
    import sys

    from peftlab.stages.report import run as report_stage

    study = write_sample(tmp_path)
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage(ctx)
        report_stage(ctx)
        want = method_rows(Results(ctx, run_view(study, store)))
    finally:
        store.close()
    out = subprocess.run([sys.executable, "-m", "peftlab.cli", "results", str(study.output_dir),
                          "--table", "methods", "--format", "json"], capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    got = {(r["task"], r["method"]): r for r in json.loads(out.stdout)}
    assert set(got) == {(r["task"], r["method"]) for r in want}
    for r in want:
        assert {k: got[(r["task"], r["method"])][k] for k in r} == r


def test_rq2_lines_are_one_per_compared_pair_of_models_not_one_per_declared_pair():
    """A sweep compares unmerged with merged for each cell: each cell's comparisons are their
    own line ('lora-r2 unmerged vs lora-r2 merged'), not all cells under the first one's name."""
    from peftlab.stages.report.answers import _pair_groups

    comps = [{"pair": "unmerged_vs_merged", "a": f"{m}/unmerged", "b": f"{m}/merged",
              "task": t} for m in ("lora-r2", "lora-r8") for t in ("sst2", "rte")]
    comps.append({"pair": "merged_vs_full", "a": "lora-r2/merged", "b": "full/full",
                  "task": "sst2"})
    groups = _pair_groups(comps, ["unmerged_vs_merged", "merged_vs_full"])
    assert [(p, [c["task"] for c in g]) for p, g in groups] == [
        ("unmerged_vs_merged", ["sst2", "rte"]), ("unmerged_vs_merged", ["sst2", "rte"]),
        ("merged_vs_full", ["sst2"])]
    assert {g[0]["a"] for _, g in groups[:2]} == {"lora-r2/unmerged", "lora-r8/unmerged"}


def test_a_cell_whose_seeds_never_improved_on_their_start_is_not_on_the_front(sample,
                                                                               monkeypatch):
    """Not moving gives a CKA of 1: a cell with no seed above its probe-fitted start must not
    reach the front through its drift, and the table says why it is not compared."""
    from peftlab.stages.report import methods

    for key, verdict in list(sample.verdicts.items()):
        if key[0] == "sst2" and key[1] == "lora":
            monkeypatch.setitem(sample.verdicts, key, {**verdict, "improved": False,
                                                       "change": "no detectable change"})
    rows = {(r["task"], r["method"]): r for r in method_rows(sample)}
    assert rows[("sst2", "lora")]["pareto"] is None
    assert methods._pareto(rows[("sst2", "lora")]).startswith("not compared: no seed improved")
