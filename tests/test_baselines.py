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


def _flip(pred: np.ndarray, labels: np.ndarray, rows: np.ndarray, right: bool) -> np.ndarray:
    """`pred` with the predictions of `rows` set right (True) or wrong (False)."""
    out = pred.copy()
    out[rows] = labels[rows] if right else 1 - labels[rows]
    return out


def test_the_start_rule_is_a_paired_interval_of_run_minus_start():
    """Constructed predictions on 200 examples: the start gets 150 right. Improved (the lower
    bound above 0), worse (the upper bound below 0), and no detectable change, including a
    run that changes 40 predictions with a net gain of 2, whose paired interval straddles 0."""
    from peftlab.baseline_scores import judge_start, no_start
    from peftlab.metrics import paired_difference

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    start = y.copy()
    start[:50] = 1 - y[:50]  # 150 of 200 right: accuracy 0.75
    better = _flip(start, y, np.arange(0, 20), right=True)  # fixes 20 of the wrong ones
    worse = _flip(start, y, np.arange(100, 120), right=False)  # breaks 20 right ones
    churn = _flip(_flip(start, y, np.arange(0, 21), right=True), y, np.arange(100, 119),
                  right=False)  # 21 fixed, 19 broken: +0.01
    kw = dict(start="the probe-fitted head", n_bootstrap=2000, confidence=0.95, seed=0)
    up = judge_start("accuracy", y, better, start, **kw)
    assert up["improved"] is True and up["change"] == "improved"
    assert up["start_value"] == pytest.approx(0.75)
    assert up["improvement"]["estimate"] == pytest.approx(0.10)
    assert 0 < up["improvement"]["ci_low"] < 0.10 < up["improvement"]["ci_high"]
    assert "0.8500 against 0.7500 for the probe-fitted head: difference +0.1000" in \
        up["improvement_reason"] and "above 0" in up["improvement_reason"]
    down = judge_start("accuracy", y, worse, start, **kw)
    assert down["improved"] is False and down["change"] == "worse"
    assert down["improvement"]["ci_high"] < 0 and "below 0" in down["improvement_reason"]
    flat = judge_start("accuracy", y, churn, start, **kw)
    assert flat["improved"] is False and flat["change"] == "no detectable change"
    assert flat["improvement"]["estimate"] == pytest.approx(0.01)
    assert flat["improvement"]["ci_low"] < 0 < flat["improvement"]["ci_high"]
    # paired: the interval of the same +0.10 is narrower than the two runs' own intervals
    # would suggest, since the 150 examples both get right cancel
    unpaired = compute_metrics(["accuracy"], y, better, 2000, seed=0)["accuracy"]
    width = up["improvement"]["ci_high"] - up["improvement"]["ci_low"]
    assert width < 2 * (unpaired["ci_high"] - unpaired["ci_low"]) / 2 ** 0.5
    # the same numbers as a direct paired bootstrap
    assert paired_difference("accuracy", y, better, start, 2000, 0.95, 0) == up["improvement"]
    # without an interval nothing is decided; without a start the fields say why
    none = judge_start("accuracy", y, better, start, start="s", n_bootstrap=0)
    assert none["improved"] is None and none["change"] is None
    assert no_start("no fitted start")["improvement_reason"] == "no fitted start"


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

    import peftlab.baseline_records as stage

    monkey = pytest.MonkeyPatch()
    monkey.setattr(stage, "untrained_head", fail)
    try:
        run_stages(study, ["baselines"], console=Console(quiet=True))
    finally:
        monkey.undo()


def test_a_study_run_without_the_baselines_stage_is_judged_and_queryable(
        tmp_path, tiny_bert_dir, glue_dir):
    """`--stages data,finetune,stats,report`, no `baselines`: the stats stage computes the
    baselines it needs, so no run is counted as learned unjudged; a task whose evaluation
    labels the training data cannot teach (inverted) comes out not learned; every run starts
    from the probe-fitted head whose logits the record keeps (the same start for every seed
    and method), and its improvement is the run's accuracy minus that start's, on the same
    examples; the verdicts are a table `peftlab results` shows."""
    import json

    from safetensors.numpy import load_file
    from toy_data import toy_files, toy_task
    from typer.testing import CliRunner

    from peftlab.cli import app
    from peftlab.data import StudyData
    from peftlab.encode import predict
    from peftlab.training import prepare

    flipped = {**toy_task(toy_files(tmp_path / "flip", flip_eval=True)), "name": "flipped"}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_bert_dir, seeds=(1, 2),
                     methods=("full", "lora"))
    spec["tasks"] = [toy_task(toy_files(tmp_path / "toy")), flipped]
    spec["model"]["head"] = "sentence-embedding"
    spec["training"]["head_init"] = "probe"
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune", "stats", "report"], console=Console(quiet=True))
    store = Store(study.output_dir, create=False)
    try:
        base = {r.task: r for r in read(store, BaselineRecord)}
        stats = store.records("stats")
        verdicts = {r["key"]: r for r in store.records("verdicts")}
    finally:
        store.close()
    assert set(base) == {"toy", "flipped"}
    settings = next(r for r in stats if r["kind"] == "settings")
    assert settings["runs"]["not_judged"] == 0 and settings["runs"]["judged"] == 8
    assert settings["runs"]["start_judged"] == 8
    runs = {r["run_id"]: r for r in stats if r["kind"] == "summary" and r["area"] == "runs"}
    assert set(runs) == set(verdicts) == {rc.run_id for rc in study.runs()}
    data = StudyData(study)
    starts = {}
    for task, rec in base.items():
        saved = load_file(str(study.output_dir / rec.start_logits))
        assert np.array_equal(saved["labels"], data.split(task, "eval")["label"].to_numpy())
        starts[task] = saved
    for rc in study.runs():
        v = runs[rc.run_id]
        assert {k: verdicts[rc.run_id][k] for k in ("learned", "improved", "change",
                                                    "improvement", "start_value")} == {
            k: v[k] for k in ("learned", "improved", "change", "improvement", "start_value")}
        assert v["criterion"] == "accuracy" and v["reason"]
        if rc.task == "flipped":
            assert v["learned"] is False, v["reason"]
        labels = starts[rc.task]["labels"]
        start_acc = float((starts[rc.task]["logits"].argmax(1) == labels).mean())
        run_logits = load_file(str(study.output_dir / "runs" / rc.run_id
                                   / "eval_logits.safetensors"))["logits"]
        run_acc = float((run_logits.argmax(1) == labels).mean())
        assert v["start_value"] == pytest.approx(start_acc)
        assert v["improvement"]["estimate"] == pytest.approx(run_acc - start_acc)
        lo, hi = v["improvement"]["ci_low"], v["improvement"]["ci_high"]
        assert v["change"] == ("improved" if lo > 0 else "worse" if hi < 0
                               else "no detectable change")
        assert v["improved"] is (v["change"] == "improved")
        assert f"{start_acc:.4f} for the probe-fitted head" in v["improvement_reason"]
    # the start the record keeps is each run's own start: the fitted head (and an adapter at
    # its identity initialisation) under another seed and method gives the same logits
    for rc in [r for r in study.runs() if r.task == "toy"][::3]:
        prep = prepare(rc, data.task("toy"), data.split("toy", "train"),
                       data.split("toy", "eval"), device="cpu", where="methods")
        prep.model.eval()
        got = predict(prep.model, prep.eval, prep.tokenizer, 8, "cpu")
        np.testing.assert_allclose(got, starts["toy"]["logits"], atol=1e-4)
    res = CliRunner().invoke(app, ["results", str(study.output_dir), "--table", "verdicts",
                                   "--format", "json"])
    assert res.exit_code == 0, res.output
    shown = {r["key"]: r for r in json.loads(res.output)}
    assert all(shown[k]["learned"] is runs[k]["learned"] for k in runs)
    assert all("improvement_reason" in r and "reason" in r for r in shown.values())
    report = (study.output_dir / "report.md").read_text(encoding="utf-8")
    assert "Improved on their start:" in report and "Against its start" in report
    assert "not judged" not in report
