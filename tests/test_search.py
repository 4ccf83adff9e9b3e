"""Hyperparameter search on the tiny model: trials, pruning, the final runs' ids, a killed search
that resumes like an uninterrupted one, an evaluation split that never reaches the objective, and
the fair-budget rule refused at validation."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from toy_data import toy_files, toy_task

from peftlab.errors import SpecError
from peftlab.pipeline import load_study, plan, run_stages
from peftlab.records import read_search
from peftlab.store import Store
from peftlab.testing import tiny_spec, wait_for_records, write_spec

SEARCH = {"n_trials": 4, "eval_steps": 2, "pruner": "median", "pruner_startup_trials": 1,
          "startup_trials": 2, "validation_share": 0.25,
          "space": {"learning_rate": {"low": 1.0e-6, "high": 3.0e-2, "log": True}},
          "methods": {"lora": {"r": [2, 4]}}}
TRAINING = {"epochs": 3, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 50,
            "warmup_ratio": 0.0}


def _toy_files(root: Path, *, flip_eval: bool = False) -> dict[str, Path]:
    """The toy task with texts that are all distinct (the search splits a validation share off
    the training rows)."""
    return toy_files(root, n_train=40, n_eval=24, flip_eval=flip_eval,
                     text="{split} review {i} said the movie was {word}")


def _spec(tmp: Path, model_dir: Path, files: dict[str, Path], *, search: dict | None = None,
          methods=("full", "lora"), seeds=(1,), training: dict | None = None) -> dict:
    return tiny_spec(tmp / "study", model_dir=model_dir, tasks=[toy_task(files)],
                     methods=methods, seeds=seeds, data={},
                     training=training or dict(TRAINING),
                     search=copy.deepcopy(search if search is not None else SEARCH))


def _load(tmp: Path, spec: dict):
    return load_study(write_spec(tmp / "spec.yaml", spec))


def _search_table(study):
    store = Store(study.output_dir, create=False)
    try:
        return read_search(store)
    finally:
        store.close()


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_llama_dir):
    """A search over full and LoRA on the toy task, then the final runs trained."""
    tmp = tmp_path_factory.mktemp("searched")
    files = _toy_files(tmp / "data")
    study = _load(tmp, _spec(tmp, tiny_llama_dir, files))
    before = plan(study)
    run_stages(study, ["data", "search", "finetune"])
    return study, files, before


# -- the search and its records ---------------------------------------------------------------

def test_every_method_gets_the_budget_and_pruned_trials_are_recorded(searched):
    import optuna

    study, _, _ = searched
    trials, summaries = _search_table(study)
    assert {s.method for s in summaries} == {"full", "lora"}
    for s in summaries:
        mine = [t for t in trials if t.search_id == s.search_id]
        assert s.status == "done" and s.stopped_by == "n_trials"
        assert sum(t.counted for t in mine) == s.budget["n_trials"] == 4
        assert s.counts["complete"] + s.counts["pruned"] + s.counts["failed"] == 4
        # the storage agrees with the table, state by state
        ostudy = optuna.load_study(study_name=s.study_name, storage=_storage(study))
        states = {t.number: t.state.name.lower() for t in ostudy.trials}
        assert states == {t.number: t.state for t in mine}
        assert len(s.history) == 4 and s.budget_sentence.startswith(f"{s.method} on toy")
    pruned = [t for t in trials if t.state == "pruned"]
    assert pruned, "the median pruner should stop at least one trial of a 1e-6..3e-2 range"
    for t in pruned:
        assert t.values is None and t.pruned_at_step is not None
        assert t.intermediate and t.intermediate[-1]["step"] == t.pruned_at_step
        assert t.steps == t.pruned_at_step < 15  # stopped before the 15 steps of 3 epochs


def test_best_trial_is_the_best_complete_one(searched):
    study, _, _ = searched
    trials, summaries = _search_table(study)
    assert {s.method for s in summaries} == {"full", "lora"}
    for s in summaries:
        complete = [t for t in trials if t.search_id == s.search_id and t.state == "complete"]
        top = max(t.values["accuracy"] for t in complete)
        first_top = min(t.number for t in complete if t.values["accuracy"] == top)
        assert s.best["trial"] == first_top and s.best["values"]["accuracy"] == top
        assert s.history[-1]["best"] == top
        if s.importances is None:
            assert s.importance_error  # recorded why
        else:
            assert set(s.importances) <= set(s.space)
            assert sum(s.importances.values()) == pytest.approx(1.0)


def test_final_runs_train_on_the_full_subset_with_the_best_values(searched):
    study, _, _ = searched
    _, summaries = _search_table(study)
    best = {s.method: s for s in summaries}
    store = Store(study.output_dir, create=False)
    try:
        runs = {r["method"]: r for r in store.records("runs")}
    finally:
        store.close()
    planned = study.runs()
    assert sorted(rc.method for rc in planned) == sorted(best) == ["full", "lora"]
    for rc in planned:
        s = best[rc.method]
        assert not rc.waiting and rc.search["trial"] == s.best["trial"]
        assert rc.training.learning_rate == s.best["params"]["learning_rate"]
        if rc.method == "lora":
            assert rc.params["r"] == s.best["params"]["r"]
        rec = runs[rc.method]
        assert rec["status"] == "done" and rec["run_id"] == rc.run_id
        assert rec["search"]["trial"] == s.best["trial"] and rec["search"]["id"] == s.search_id
        # trials saw 30 of the 40 training examples; the final run sees all 40
        assert s.validation["train_examples"] == 30 and rec["train_examples"] == 40
    assert all(r["status"] == "done" for r in plan(study))


def test_plan_shows_pending_trials_then_waiting_runs(searched):
    _, _, before = searched
    trials = [r for r in before if r.get("kind") == "search trial"]
    runs = [r for r in before if r.get("kind") != "search trial"]
    assert len(trials) == 2 * 4 and {r["status"] for r in trials} == {"pending"}
    assert len(runs) == 2 and {r["status"] for r in runs} == {"waiting"}
    assert all("search" in r["reason"] for r in runs)


def test_run_ids_change_when_the_chosen_values_change(searched, tmp_path):
    import shutil

    study, _, _ = searched
    again = load_study(study.path)
    assert [rc.run_id for rc in again.runs()] == [rc.run_id for rc in study.runs()]
    # the same study directory with another best trial stored: other values, other ids
    copy_dir = tmp_path / "study"
    shutil.copytree(study.output_dir, copy_dir)
    store = Store(copy_dir)
    try:
        key, rec = next((r["key"], r) for r in store.records("search")
                        if r["key"].startswith("summary/") and r["method"] == "full")
        rec = {k: v for k, v in rec.items() if k != "key"}
        rec["best"] = {**rec["best"], "params": {"learning_rate": 1.2345e-3}}
        store.put("search", key, rec)
    finally:
        store.close()
    other = load_study(study.path, output_dir=str(copy_dir))
    ids = {rc.method: rc.run_id for rc in study.runs()}
    new = {rc.method: rc for rc in other.runs()}
    assert new["full"].training.learning_rate == 1.2345e-3
    assert new["full"].run_id != ids["full"] and new["lora"].run_id == ids["lora"]
    # and none of them is the id the spec gives without a search
    spec = copy.deepcopy(study.spec.model_dump(mode="json"))
    spec["search"] = None
    plain = load_study(write_spec(tmp_path / "plain.yaml", spec))
    assert not {rc.run_id for rc in plain.runs()} & set(ids.values())


def _storage(study):
    from peftlab.hpsearch import STORAGE_NAME, storage

    return storage(study.output_dir / "search" / STORAGE_NAME)


# -- the evaluation split never reaches the objective ----------------------------------------

def test_the_eval_split_never_reaches_the_objective(searched, tmp_path, tiny_llama_dir,
                                                    monkeypatch):
    """Validation rows come from the training subset (disjoint from eval), the search never
    loads the eval split, and flipping every eval label changes no trial."""
    from peftlab.data import StudyData

    study, files, _ = searched
    trials, summaries = _search_table(study)
    train = {line.split(",")[0] for line in files["train"].read_text().splitlines()[1:]}
    evals = [line.split(",")[0] for line in files["eval"].read_text().splitlines()[1:]]
    assert {s.method for s in summaries} == {"full", "lora"}
    for s in summaries:
        rows = s.validation["validation_rows"]
        assert s.validation["split"] == "train" and len(rows) == 10
        train_lines = files["train"].read_text().splitlines()[1:]
        val_texts = {train_lines[r].split(",")[0] for r in rows}
        assert val_texts <= train and not val_texts & set(evals)
        assert {t.validation_digest for t in trials if t.search_id == s.search_id} == {
            s.validation["digest"]}

    flipped = _toy_files(tmp_path / "data", flip_eval=True)
    assert flipped["train"].read_text() == files["train"].read_text()
    seen: list[str] = []
    original = StudyData.split

    def spy(self, name, split, **kw):
        seen.append(split)
        return original(self, name, split, **kw)

    monkeypatch.setattr(StudyData, "split", spy)
    other = _load(tmp_path, _spec(tmp_path, tiny_llama_dir, flipped, methods=("lora",)))
    run_stages(other, ["search"])
    assert "eval" not in seen and "train" in seen
    again, _ = _search_table(other)
    mine = sorted((t for t in trials if t.method == "lora"), key=lambda t: t.number)
    assert [(t.state, t.params, t.values, t.intermediate) for t in sorted(
        again, key=lambda t: t.number)] == [(t.state, t.params, t.values, t.intermediate)
                                            for t in mine]


def test_the_validation_split_is_seeded_stratified_and_disjoint():
    import pandas as pd

    from peftlab.hpsearch import carve_validation
    from peftlab.tasks import get_task

    df = pd.DataFrame({"text_a": [f"t{i}" for i in range(50)], "label": [1] * 35 + [0] * 15,
                       "row": range(100, 150)})
    task = get_task("sst2")
    fit, val = carve_validation(df, task, 0.2, seed=3)
    assert len(val) == 10 and len(fit) == 40
    assert not set(fit["row"]) & set(val["row"]) and set(fit["row"]) | set(val["row"]) == set(
        df["row"])
    assert val["label"].sum() == 7 and fit["label"].sum() == 28  # 70% positive in both
    assert list(val["row"]) == sorted(val["row"])  # the frame's order is kept
    again, other = carve_validation(df, task, 0.2, seed=3), carve_validation(df, task, 0.2, 4)
    assert list(again[1]["row"]) == list(val["row"]) != list(other[1]["row"])


# -- a killed search resumes where it stopped -------------------------------------------------

def test_killed_search_resumes_and_ends_like_an_uninterrupted_one(tmp_path, tiny_llama_dir):
    import optuna

    files = _toy_files(tmp_path / "data")
    # no trial is ever pruned (pruner_startup_trials above the budget), but every trial
    # reports, which is the event the kill waits for
    search = {**SEARCH, "n_trials": 3, "pruner_startup_trials": 10, "methods": {}}
    training = {**TRAINING, "epochs": 6}
    whole = _load(tmp_path / "whole", _spec(tmp_path / "whole", tiny_llama_dir, files,
                                            search=search, methods=("lora",), training=training))
    run_stages(whole, ["search"])

    killed = _load(tmp_path / "killed", _spec(tmp_path / "killed", tiny_llama_dir, files,
                                              search=search, methods=("lora",),
                                              training=training))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen([sys.executable, "-m", "peftlab.cli", "search", str(killed.path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_records(killed.output_dir / "results.sqlite", proc, "search", lambda recs: any(
            k.startswith("trial/") and k.endswith("/0001") and r["state"] == "running"
            and r.get("intermediate") for k, r in recs.items()), what="trial 1 running")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    (sc,) = killed.search_configs()
    ostudy = optuna.load_study(study_name=sc.study_name, storage=_storage(killed))
    assert [t.state.name for t in ostudy.trials] == ["COMPLETE", "RUNNING"]
    assert [r["status"] for r in plan(killed) if r.get("kind") == "search trial"] == [
        "done", "running", "pending"]

    run_stages(killed, ["search"])
    ostudy = optuna.load_study(study_name=sc.study_name, storage=_storage(killed))
    owhole = optuna.load_study(study_name=sc.study_name, storage=_storage(whole))
    complete = [t for t in ostudy.trials if t.state.name == "COMPLETE"]
    assert len(complete) == len([t for t in owhole.trials if t.state.name == "COMPLETE"]) == 3
    assert [(t.params, t.values) for t in complete] == [
        (t.params, t.values) for t in owhole.trials]
    trials, (summary,) = _search_table(killed)
    by_state = {t.number: t.state for t in trials}
    assert by_state == {0: "complete", 1: "interrupted", 2: "complete", 3: "complete"}
    retry = next(t for t in trials if t.retry_of == 1)
    assert retry.number == 2 and not trials[1].counted
    assert summary.counts == {"complete": 3, "pruned": 0, "failed": 0, "interrupted": 1}
    assert "interrupted and retried" in summary.budget_sentence
    _, (whole_summary,) = _search_table(whole)
    assert summary.best["params"] == whole_summary.best["params"]
    assert [rc.run_id for rc in killed.runs()] == [rc.run_id for rc in whole.runs()]


# -- other budgets and objectives -----------------------------------------------------------

def test_multi_objective_search_gives_a_pareto_front(tmp_path, tiny_llama_dir):
    files = _toy_files(tmp_path / "data")
    search = {"n_trials": 4, "objective": ["main", "trainable_params"], "pruner": "none",
              "startup_trials": 2, "validation_share": 0.25,
              "space": {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
                        "r": [1, 8]}}
    study = _load(tmp_path, _spec(tmp_path, tiny_llama_dir, files, search=search,
                                  methods=("lora",), training={**TRAINING, "epochs": 1}))
    (sc,) = study.search_configs()
    assert sc.sampler == "nsga2" and sc.directions == ("maximize", "minimize")
    run_stages(study, ["search"])
    trials, (s,) = _search_table(study)
    points = {t.number: (t.values["accuracy"], t.values["trainable_params"]) for t in trials}
    front = {p["trial"] for p in s.pareto}

    def dominated(a, b):  # b dominates a
        return b[0] >= a[0] and b[1] <= a[1] and b != a

    assert front == {n for n, p in points.items()
                     if not any(dominated(p, q) for q in points.values())}
    assert s.best["trial"] in front
    assert s.best["values"]["accuracy"] == max(points[n][0] for n in front)
    r_of = {t.number: t.params["r"] for t in trials}
    assert {points[n][1] for n in points if r_of[n] == 1} != {points[n][1] for n in points
                                                               if r_of[n] == 8}


def test_successive_halving_prunes_at_its_rungs(tmp_path, tiny_llama_dir):
    files = _toy_files(tmp_path / "data")
    search = {**SEARCH, "pruner": "successive_halving", "reduction_factor": 2, "n_trials": 4,
              "eval_steps": 1, "methods": {}}
    study = _load(tmp_path, _spec(tmp_path, tiny_llama_dir, files, search=search,
                                  methods=("lora",)))
    run_stages(study, ["search"])
    trials, (s,) = _search_table(study)
    pruned = [t for t in trials if t.state == "pruned"]
    assert s.pruner["type"] == "successive_halving" and pruned
    assert s.counts["pruned"] == len(pruned) and sum(t.counted for t in trials) == 4
    for t in pruned:  # stopped at the step of its last report, before the end of training
        assert t.pruned_at_step == t.intermediate[-1]["step"] < 15


def test_a_timeout_budget_stops_after_the_trial_that_spends_it(tmp_path, tiny_llama_dir):
    files = _toy_files(tmp_path / "data")
    search = {"timeout_s": 0.01, "pruner": "none",
              "space": {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True}}}
    study = _load(tmp_path, _spec(tmp_path, tiny_llama_dir, files, search=search,
                                  methods=("full",), training={**TRAINING, "epochs": 1}))
    run_stages(study, ["search"])
    trials, (s,) = _search_table(study)
    assert len(trials) == 1 and s.stopped_by == "timeout_s" and s.trials_s > 0.01


# -- validation ---------------------------------------------------------------------------

def _spec_error(tmp_path: Path, tiny_llama_dir: Path, search: dict) -> str:
    files = _toy_files(tmp_path / "data")
    with pytest.raises(SpecError) as err:
        _load(tmp_path, _spec(tmp_path, tiny_llama_dir, files, search=search))
    return str(err.value)


def test_a_bigger_budget_for_one_method_is_refused(tmp_path, tiny_llama_dir):
    search = {**SEARCH, "overrides": [{"tasks": ["toy"], "space": {"warmup_ratio": [0.0, 0.1]}},
                                      {"methods": ["lora"], "n_trials": 8}]}
    msg = _spec_error(tmp_path, tiny_llama_dir, search)
    assert "spec.yaml: search.overrides[1]" in msg
    assert "differs between methods" in msg and "full: n_trials 4" in msg
    assert "lora: n_trials 8" in msg


def test_the_same_budget_set_for_every_method_is_accepted(tmp_path, tiny_llama_dir):
    files = _toy_files(tmp_path / "data")
    search = {**SEARCH, "overrides": [{"methods": ["full", "lora"], "n_trials": 8}]}
    study = _load(tmp_path, _spec(tmp_path, tiny_llama_dir, files, search=search))
    assert {sc.n_trials for sc in study.search_configs()} == {8}


@pytest.mark.parametrize("search, expected", [
    ({**SEARCH, "methods": {"lora": {"rank": [2, 4]}}},
     r"search\.methods\.lora\.rank: 'rank' is not a training key nor a parameter"),
    ({**SEARCH, "methods": {"lora": {"r": [0, 4]}}}, r"search\.methods\.lora\.r.*\br\b"),
    ({**SEARCH, "space": {"learning_rate": {"low": 1e-3, "high": 1e-4}}},
     r"search\.space\.learning_rate.*low .* must be below high"),
    ({**SEARCH, "objective": "f1"}, r"search\.objective: task 'toy' does not compute 'f1'"),
    ({**SEARCH, "objective": ["main", "trainable_params"]},
     r"search.*needs a single objective"),
    ({k: v for k, v in SEARCH.items() if k != "n_trials"}, r"search.*give a budget"),
    ({**SEARCH, "methods": {"qlora": {"r": [2]}}}, r"search\.methods\.qlora: unknown method"),
    ({**SEARCH, "space": {"bootstrap_samples": [0, 10]}},
     r"'bootstrap_samples' is not a training key"),
])
def test_bad_search_blocks_name_the_key(tmp_path, tiny_llama_dir, search, expected):
    import re

    msg = _spec_error(tmp_path, tiny_llama_dir, search)
    assert re.search(expected, msg), msg
    assert "spec.yaml" in msg


# -- the report's search section ----------------------------------------------------------------

def _md_section(md: str, title: str) -> str:
    import re

    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def test_the_report_shows_each_search_with_its_parts(searched):
    from rich.console import Console

    from peftlab.context import Context
    from peftlab.stages.report import build_report
    from peftlab.stages.report.document import Figure, to_html, to_markdown
    from peftlab.stages.report.format import md_text
    from peftlab.stages.report.search import params_text

    study, _, _ = searched
    store = Store(study.output_dir, create=False)
    try:
        doc = build_report(Context(study=study, store=store, console=Console(quiet=True)))
        trials, summaries = read_search(store)
    finally:
        store.close()
    md = to_markdown(doc)
    section = _md_section(md, "Hyperparameter search")
    sec = next(s for s in doc.sections if s.title == "Hyperparameter search")
    assert [sub.title for sub in sec.subsections] == ["toy"]
    assert {s.method for s in summaries} == {"full", "lora"} and trials
    for s in summaries:
        # the budget sentence, word for word, and the best trial with its parameters
        assert s.budget_sentence and s.budget_sentence in section
        best = md_text(params_text(s.best["params"]))
        assert f"| {s.method} | done | {s.best['trial']} | {best} |" in section
        if s.importances:
            for name in s.importances:
                assert md_text(name) in section
        else:
            assert md_text(f"none: {s.importance_error}") in section
    # every trial, in its state (a pruned one with the step it stopped at)
    for t in trials:
        row = f"| {t.method} | {t.number} | {t.state} | {md_text(params_text(t.params))} |"
        assert row in section, row
        if t.state == "pruned":
            assert f"{row} pruned at step {t.pruned_at_step} |" in section
    # the optimisation history, as a figure in the HTML
    figs = [b for b in sec.subsections[0].blocks if isinstance(b, Figure)]
    assert len(figs) == 1 and figs[0].png.startswith(b"\x89PNG")
    assert "Optimisation history on toy" in to_html(doc)


def test_the_search_section_states_why_there_are_no_importances(searched):
    from types import SimpleNamespace

    from peftlab.stages.report.search import _importance_rows, search_section

    study, _, _ = searched
    _, summaries = _search_table(study)
    few = summaries[0].model_copy(update={
        "importances": None, "importance_error": "needs at least 2 complete trials, the search "
                                                 "has 1"})
    rows = _importance_rows([few])
    assert rows == [[few.method, "fanova",
                     "none: needs at least 2 complete trials, the search has 1"]]
    # a spec without a search block: one sentence saying the rates are fixed in the spec (as
    # the runs trained at them) and that where they came from is not checked
    records = {("toy", "full", 1): {"config": {"training": {"learning_rate": 2e-5}}},
               ("toy", "lora", 1): {"config": {"training": {"learning_rate": 3.4e-4}}},
               ("toy2", "lora", 1): {"config": {"training": {"learning_rate": 9.4e-4}}}}
    view = SimpleNamespace(tasks=["toy", "toy2"], methods={"full": "full", "lora": "lora"},
                           records=records)
    bare = SimpleNamespace(spec=study.spec.model_copy(update={"search": None}), view=view)
    sec = search_section(bare)
    assert not sec.subsections
    text = " ".join(sec.blocks[0].spans)
    assert text.startswith("No search ran in this study")
    assert "(learning rates: full 2e-05 on toy; lora 3.4e-04 on toy and 9.4e-04 on toy2)" in text
    assert "is not recorded in the study directory, so peftlab does not check it" in text
