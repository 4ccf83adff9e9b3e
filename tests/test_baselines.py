"""The degenerate-run guard: majority-class, best-constant and chance rates, the verdict on a
run, and the baselines stage on a tiny study (untrained head on the evaluation subset).

    .venv/bin/python -m pytest tests/test_baselines.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from peftlab.baseline_scores import baseline_metrics, judge
from peftlab.metrics import METRICS, compute_metrics
from peftlab.pipeline import load_study, run_stages
from peftlab.records import BaselineRecord, read
from peftlab.store import Store
from peftlab.tasks import get_task
from peftlab.testing import tiny_spec, write_spec


def _labels(neg: int, pos: int) -> np.ndarray:
    return np.array([0] * neg + [1] * pos)


def test_majority_and_best_constant_are_the_constant_predictions():
    y = _labels(75, 125)  # MRPC-like: "equivalent" is the majority
    b = baseline_metrics(get_task("mrpc"), y, n_bootstrap=200, seed=0)
    assert b["majority"]["label_name"] == "equivalent" and b["majority"]["share"] == 0.625
    f1 = b["majority"]["metrics"]["f1"]
    assert f1["value"] == pytest.approx(METRICS.get("f1")(y, np.ones(200, int)))
    assert f1["ci_low"] < f1["value"] < f1["ci_high"]
    # the best constant prediction per metric, over every label
    assert b["best_constant"]["accuracy"]["value"] == pytest.approx(0.625)
    # F1 of the minority positive class: always predicting it beats the majority class (F1 0)
    y2 = _labels(140, 60)
    b2 = baseline_metrics(get_task("mrpc"), y2, n_bootstrap=0)
    assert b2["majority"]["label"] == 0 and b2["majority"]["metrics"]["f1"]["value"] == 0.0
    assert b2["best_constant"]["f1"]["label"] == 1
    assert b2["best_constant"]["f1"]["value"] == pytest.approx(2 * 60 / (200 + 60))


def test_chance_is_exact_for_accuracy_and_f1_and_matches_simulation():
    rng = np.random.default_rng(1)
    y = _labels(70, 130)
    b = baseline_metrics(get_task("mrpc"), y, n_bootstrap=0)
    assert b["chance"]["metrics"]["accuracy"] == {"value": 0.5, "method": "exact"}
    # exact expected F1 of uniform guessing against a large simulation of it
    sims = [METRICS.get("f1")(y, rng.integers(0, 2, y.size)) for _ in range(4000)]
    assert b["chance"]["metrics"]["f1"]["method"] == "exact"
    assert b["chance"]["metrics"]["f1"]["value"] == pytest.approx(np.mean(sims), abs=0.004)
    # MCC by seeded simulation: about 0 for random guessing
    cola = baseline_metrics(get_task("cola"), y, n_bootstrap=0, n_simulations=500)
    assert cola["chance"]["metrics"]["mcc"]["method"].startswith("simulation")
    assert abs(cola["chance"]["metrics"]["mcc"]["value"]) < 0.01


def test_a_run_at_the_majority_rate_did_not_learn_and_the_reason_says_so():
    # The quickstart's MRPC case: every run scores what always predicting "equivalent" scores.
    task = get_task("mrpc")
    y = _labels(68, 132)
    b = baseline_metrics(task, y, n_bootstrap=200, seed=0)
    at_majority = compute_metrics(list(task.metrics), y, np.ones(200, int), 200, seed=3)
    v = judge(at_majority, "f1", b, untrained={"f1": {"value": 0.41}})
    assert v["learned"] is False and v["margin"] < 0
    assert "majority-class rate 0.7952" in v["reason"] and "equals" in v["reason"]
    assert "untrained head scores 0.4100" in v["reason"]
    # a run whose interval's lower bound clears every baseline learned
    good = {"f1": {"value": 0.90, "ci_low": 0.86, "ci_high": 0.93}}
    ok = judge(good, "f1", b)
    assert ok["learned"] is True and ok["margin"] == pytest.approx(0.86 - 0.7952, abs=1e-4)
    # a better point value is not enough when the interval reaches below the majority rate
    close = {"f1": {"value": 0.81, "ci_low": 0.76, "ci_high": 0.86}}
    v = judge(close, "f1", b)
    assert v["learned"] is False and "does not clear it" in v["reason"]
    # chance decides when it is the higher floor (accuracy on balanced labels: both 0.5)
    rte = baseline_metrics(get_task("rte"), _labels(100, 100), n_bootstrap=0)
    assert judge({"accuracy": {"value": 0.52, "ci_low": 0.45}}, "accuracy", rte)[
        "learned"] is False


def test_f1_that_cannot_tell_falls_back_to_accuracy_which_can():
    # MRPC: always "equivalent" scores F1 0.8166 on 138/62 labels; a run that predicts both
    # classes well has an F1 interval reaching below that, an accuracy interval clear of 0.69
    task = get_task("mrpc")
    y = _labels(62, 138)
    b = baseline_metrics(task, y, n_bootstrap=200, seed=0)
    run = {"f1": {"value": 0.83, "ci_low": 0.78, "ci_high": 0.87},
           "accuracy": {"value": 0.77, "ci_low": 0.71, "ci_high": 0.83}}
    v = judge(run, "f1", b, probe={"f1": {"value": 0.8276}})
    assert v["learned"] is True and v["criterion"] == "accuracy"
    assert v["margin"] == pytest.approx(0.71 - 0.69, abs=1e-9)
    assert "f1 0.8300 [0.7800, 0.8700] is not above the majority-class rate" in v["reason"]
    assert ("; but on accuracy, where no constant predictor beats the majority share, it "
            "learned: accuracy 0.7700 [0.7100, 0.8300]") in v["reason"]
    assert v["reason"].endswith("which scores 0.8276")  # the probe context closes the sentence
    # an accuracy interval that reaches the majority share does not rescue it
    weak = {**run, "accuracy": {"value": 0.72, "ci_low": 0.66, "ci_high": 0.78}}
    w = judge(weak, "f1", b)
    assert w["learned"] is False and w["criterion"] == "f1"
    assert "on accuracy neither: accuracy 0.7200" in w["reason"]
    # accuracy as the main metric is judged once
    assert judge({"accuracy": run["accuracy"]}, "accuracy", b)["criterion"] == "accuracy"


def test_baselines_stage_records_rates_and_the_untrained_head(tmp_path, tiny_llama_dir, glue_dir):
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, tasks=("sst2", "mrpc"),
                     seeds=(7,))
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "baselines"], console=Console(quiet=True))
    store = Store(study.output_dir, create=False)
    try:
        recs = {r.task: r for r in read(store, BaselineRecord)}
        data = {r["key"]: r for r in store.records("data")}
    finally:
        store.close()
    assert sorted(recs) == ["mrpc", "sst2"]
    for task, rec in recs.items():
        counts = data[f"{task}/eval"]["describe_used"]["label_counts"]
        assert rec.eval_examples == 24 == sum(rec.label_counts.values())
        assert rec.label_counts == counts
        majority = max(counts.values()) / 24
        assert rec.majority["share"] == pytest.approx(majority)
        assert rec.chance["metrics"]["accuracy"]["value"] == 0.5
        head = rec.untrained_head
        assert head["seed"] == 7 and set(head["metrics"]) == set(get_task(task).metrics)
        assert sum(head["predicted"].values()) == pytest.approx(1.0)
        assert 0.0 <= head["metrics"]["accuracy"]["value"] <= 1.0
        assert rec.stamp["eval"] == rec.content_checksum
    # rerun: nothing changed, nothing recomputed
    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    import peftlab.stages.baselines as stage

    monkey = pytest.MonkeyPatch()
    monkey.setattr(stage, "untrained_head", fail)
    try:
        run_stages(study, ["baselines"], console=Console(quiet=True))
    finally:
        monkey.undo()
