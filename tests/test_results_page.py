"""The published-results page (`benchmarks/results_page.py`): every replication cell is the stored
comparison's outcome and numbers, the report is written with its figures as files, and a bad
study directory or method is one error line, exit 2."""

from __future__ import annotations

import re
import shutil
from typing import Any

import pytest
from rich.console import Console

from benchmarks import results_page as rp
from peftlab.context import Context
from peftlab.stages.report import format as f
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.testing.sample_study import write_sample


def search_records() -> list[Any]:
    """Two trials of a sst2/full search (one complete, one pruned) and the search's summary."""
    from peftlab.records import SearchRecord, SearchTrialRecord

    common = {"task": "sst2", "method": "full", "method_type": "full",
              "search_id": "0123456789abcdef", "study_name": "sst2-full-01234567"}
    split = {"train_examples": 80, "validation_examples": 20, "validation_digest": "0" * 64}
    trials = [SearchTrialRecord(**common, **split, number=0, state="complete", counted=True,
                                params={"learning_rate": 3.0e-5}, values={"accuracy": 0.8125},
                                started="2026-12-07T00:00:00", finished="2026-12-07T00:01:00"),
              SearchTrialRecord(**common, **split, number=1, state="pruned", counted=True,
                                params={"learning_rate": 1.0e-4}, pruned_at_step=8,
                                started="2026-12-07T00:01:00", finished="2026-12-07T00:01:30")]
    best = {"trial": 0, "params": {"learning_rate": 3.0e-5}, "values": {"accuracy": 0.8125}}
    summary = SearchRecord(
        **common, status="done", objectives=[{"name": "accuracy", "direction": "maximize"}],
        space={"learning_rate": {"low": 1.0e-5, "high": 1.0e-4, "log": True}},
        sampler={"name": "tpe", "seed": 0, "startup_trials": 2},
        pruner={"name": "median", "startup_trials": 1},
        validation={"share": 0.2, "seed": 0, "train_examples": 80, "validation_examples": 20},
        budget={"n_trials": 2, "timeout_s": None},
        counts={"complete": 1, "pruned": 1, "failed": 0, "interrupted": 0}, trials_s=90.0,
        stopped_by="n_trials", best=best, pareto=[best],
        history=[{"trial": 0, "state": "complete", "value": 0.8125, "best": 0.8125},
                 {"trial": 1, "state": "pruned", "value": None, "best": 0.8125}],
        storage="search/sst2-full.db")
    return [*trials, summary]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    study = write_sample(root)
    shutil.copyfile(root / "spec.yaml", study.output_dir / "spec.yaml")
    store = Store(study.output_dir)
    try:
        stats_stage(Context(study=study, store=store, console=Console(quiet=True)))
        # two sessions of recorded stage times: the wall time is their sum
        for i, (session, stage, sec) in enumerate([("a", "finetune", 100.0),
                                                   ("b", "finetune", 20.5),
                                                   ("b", "report", 3.0)]):
            store.put("stage_times", f"{session}/{i:02d}-{stage}",
                      {"session": session, "stage": stage, "seconds": sec, "status": "done"})
        # a search of sst2/full as the search stage stores it: its trials and one summary
        for rec in search_records():
            store.put("search", rec.key, rec.dump())
        # one run written at an earlier commit (a study resumed across commits)
        first = store.keys("runs")[0]
        run = store.get("runs", first)
        run["provenance"] = {**(run.get("provenance") or {}), "toolkit_commit": "0badc0ffee42" * 3}
        store.put("runs", first, run)
        stats = rp.read_table(store, "stats")
    finally:
        store.close()
    out = root / "docs"
    code = rp.main([str(study.output_dir), "--out", str(out), "--peft", "lora"])
    return {"study": study, "out": out, "code": code, "stats": stats}


def test_every_cell_is_the_stored_comparison_and_its_rule(published):
    assert published["code"] == 0
    page = (published["out"] / "README.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| RQ")]
    assert len(rows) == len(rp.ORIGINAL)
    checked = 0
    for fd, row in zip(rp.ORIGINAL, rows, strict=True):
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]]
        assert cells[:4] == [fd.question, fd.task, fd.claim, fd.original]
        c = rp.find(published["stats"], fd, "lora", rp.poolings_of(published["stats"])[0])
        word, est = rp.verdict(fd, c)
        assert cells[4] == f"**{word}** ({est})".replace("|", "\\|")
        if c is not None and c["outcome"] not in ("void", "insufficient runs"):
            checked += 1
            # the rule: a stated difference holds only when tested different in its direction
            if fd.expect == "higher":
                assert (word == "holds") == (c["outcome"] == "different" and c["diff"] > 0)
            else:
                assert (word == "holds") == (c["outcome"] in ("equivalent", "negligible"))
            assert f.metric(c["diff"]) in cells[4] or f.pct(c["rel_diff"]) in cells[4]
    assert checked >= 3  # the sample has learned tasks: not every cell is void
    # wall time: the stage records summed over sessions
    assert "Wall time: 0.03 h (124 s, the stages' recorded times summed over 2 session(s))" in page
    # peftlab's own primary endpoint beside the table, from its stored across-task record
    primary = [c for c in published["stats"] if c.get("kind") == "across_tasks"
               and c.get("role") == "primary" and c.get("a") == "lora"]
    assert primary
    for c in primary:
        assert (f"across the tasks with pairs of learned runs ({', '.join(c['tasks'])}): "
                f"**{c['outcome']}**, {f.metric(c['diff'])} [{f.metric(c['diff_ci_low'])}, "
                f"{f.metric(c['diff_ci_high'])}], n = {c['n']} pairs, corrected p "
                f"{f.p_eq(c['p_adjusted'])} in the primary family of {c['family_size']}") in page
    # the commits the stored records were written at, each with its tables
    wall = next(line for line in page.splitlines() if line.startswith("Wall time"))
    written = wall.split("the stored records were written at ")[1]
    assert "0badc0ffee42 (runs)" in written and "meta" not in written, wall
    # the training each task had, from the spec: subset size and epochs
    spec = published["study"].spec
    for t in spec.tasks:
        n = t.train_samples or spec.data.train_samples or "all"
        ep = t.training.get("epochs", spec.training.epochs)
        assert f"{t.name} {n} x {ep:g} epochs" in page


def test_each_task_learning_row_is_its_stored_summary_and_failures_carry_reasons(published):
    page = (published["out"] / "README.md").read_text()
    section = page.split("### Did each task learn", 1)[1]
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in
                                                             line.split("|")[1:-1]]
            for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| Task")}
    summaries = [c for c in published["stats"] if c.get("kind") == "summary"
                 and c.get("area") == "metric"]
    assert summaries and len(rows) == len(summaries)
    for c in summaries:
        row = rows[(c["task"], c["method"])]
        assert row[2] == (f"{c['metric']} {f.metric(c['mean'])} [{f.metric(c['ci_low'])}, "
                          f"{f.metric(c['ci_high'])}]")
        assert row[3] == f"{sum(v is True for v in c['learned'].values())} of {len(c['learned'])}"
    # the sample's MRPC runs sit at the majority-class rate: 0 of 3, its majority rate shown,
    # and every run that did not learn is listed with its stored reason
    assert rows[("mrpc", "full")][3] == "0 of 3" and rows[("mrpc", "full")][4] == "0.8000"
    failed = [c for c in published["stats"] if c.get("kind") == "summary"
              and c.get("area") == "runs" and c.get("learned") is False]
    assert failed
    for c in failed:
        assert f"- `{c['run_id']}`: {f.md_text(c['reason'])}" in section
    # the rate the runs trained with comes from the run records
    assert rows[("sst2", "full")][5] == f.sig(2e-5)
    # the search's trials in order, a complete one with its score, a pruned one as pruned (the
    # summary record beside them is not a trial); a pair without a search says so
    assert rows[("sst2", "full")][6] == f"{f.sig(3e-5)}: {f.metric(0.8125)}, {f.sig(1e-4)}: pruned"
    assert rows[("sst2", "lora")][6] == "no search"


def test_the_report_is_published_with_its_figures_as_files(published):
    name = published["study"].spec.name
    report = (published["out"] / name / "report.md").read_text()
    links = re.findall(r"!\[[^\]]*\]\((figures/figure-\d+\.png)\)", report)
    assert links and len(links) == len(set(links))
    for link in links:
        png = published["out"] / name / link
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(in report.html)" not in report
    assert (published["out"] / name / "spec.yaml").read_text() == (
        published["study"].output_dir / "spec.yaml").read_text()


def test_a_bad_directory_or_method_is_one_error_line(published, tmp_path, capsys):
    assert rp.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a study directory" in err and err.count("\n") == 1
    assert rp.main([str(published["study"].output_dir), "--out", str(tmp_path / "o"),
                    "--peft", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--peft nope" in err and err.count("\n") == 1

