"""peftlab.metrics checked against hand-computed values, scikit-learn and SciPy, and the vectorised
bootstrap checked replicate by replicate against the same functions on the resampled arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn import metrics as skm

from peftlab.metrics import (
    METRICS,
    compute_metrics,
    counts_from_indices,
    replicate_metrics,
)

CLASSIFICATION = ["accuracy", "f1", "macro_f1", "mcc"]


def _binary(n: int, seed: int = 0, acc: float = 0.8):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, n)
    y_pred = np.where(rng.random(n) < acc, y_true, 1 - y_true)
    return y_true, y_pred


def test_metric_values_hand_computed():
    y_true = [1, 1, 1, 0, 0, 0, 0, 1]
    y_pred = [1, 1, 0, 0, 0, 1, 0, 1]  # tp=3, fn=1, fp=1, tn=3
    assert METRICS.get("accuracy")(y_true, y_pred) == pytest.approx(6 / 8)
    assert METRICS.get("f1")(y_true, y_pred) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert METRICS.get("macro_f1")(y_true, y_pred) == pytest.approx(0.75)  # both F1 = 3/4
    assert METRICS.get("mcc")(y_true, y_pred) == pytest.approx((3 * 3 - 1 * 1) / 16)
    assert METRICS.get("pearson")([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert METRICS.get("spearman")([1, 2, 3, 4], [1, 8, 27, 64]) == pytest.approx(1.0)
    assert METRICS.get("spearman")([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_metric_conventions_for_undefined_values():
    assert METRICS.get("mcc")([1, 1, 1], [1, 1, 1]) == 0.0  # sklearn's rule
    assert METRICS.get("f1")([0, 0, 0], [0, 0, 0]) == 0.0  # zero_division=0
    assert np.isnan(METRICS.get("pearson")([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    with pytest.raises(ValueError):
        METRICS.get("f1")([0, 1, 2], [0, 1, 2])  # binary F1 on three classes


@pytest.mark.parametrize("seed", range(3))
def test_replicates_equal_sklearn_on_each_resample(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 3, 40)
    y_pred = np.where(rng.random(40) < 0.6, y_true, rng.integers(0, 3, 40))
    idx = rng.integers(0, 40, (25, 40))
    reps = replicate_metrics(["accuracy", "macro_f1", "mcc"], y_true, y_pred,
                             counts_from_indices(idx, 40))
    for r, rows in enumerate(idx):
        t, p = y_true[rows], y_pred[rows]
        assert reps["accuracy"][r] == pytest.approx(skm.accuracy_score(t, p), abs=1e-12)
        assert reps["macro_f1"][r] == pytest.approx(
            skm.f1_score(t, p, average="macro", zero_division=0.0), abs=1e-12)
        assert reps["mcc"][r] == pytest.approx(skm.matthews_corrcoef(t, p), abs=1e-12)

    yb, pb = _binary(30, seed)
    idx = rng.integers(0, 30, (25, 30))
    reps = replicate_metrics(CLASSIFICATION, yb, pb, counts_from_indices(idx, 30))
    for name in CLASSIFICATION:
        expected = [METRICS.get(name)(yb[rows], pb[rows]) for rows in idx]
        assert reps[name] == pytest.approx(expected, abs=1e-12), name


def test_correlation_replicates_equal_scipy_with_ties():
    rng = np.random.default_rng(4)
    x = np.round(rng.normal(0, 1, 50), 1) + 1000.0  # ties and an offset far from 0
    y = np.round(x + rng.normal(0, 0.7, 50), 1)
    idx = rng.integers(0, 50, (20, 50))
    reps = replicate_metrics(["pearson", "spearman"], x, y, counts_from_indices(idx, 50))
    for r, rows in enumerate(idx):
        assert reps["pearson"][r] == pytest.approx(st.pearsonr(x[rows], y[rows]).statistic,
                                                   abs=1e-9)
        assert reps["spearman"][r] == pytest.approx(st.spearmanr(x[rows], y[rows]).statistic,
                                                    abs=1e-12)


def test_degenerate_resamples():
    y_true, y_pred = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    idx = np.array([[1, 1, 2, 2], [0, 3, 0, 3]])  # one class only in y_true per resample
    reps = replicate_metrics(["mcc", "f1", "pearson"], y_true, y_pred,
                             counts_from_indices(idx, 4))
    assert reps["mcc"].tolist() == [0.0, 0.0]
    assert reps["f1"][1] == 0.0
    assert np.isnan(reps["pearson"][1])
    # A class absent from a resample drops out of sklearn's macro average: so must it here.
    y3, p3 = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 1, 2, 1, 1, 0])
    idx = np.array([[0, 1, 4, 5, 0, 1], [2, 3, 3, 2, 0, 1]])
    reps = replicate_metrics(["macro_f1", "mcc"], y3, p3, counts_from_indices(idx, 6))
    for r, rows in enumerate(idx):
        assert reps["macro_f1"][r] == pytest.approx(
            skm.f1_score(y3[rows], p3[rows], average="macro", zero_division=0.0))
        assert reps["mcc"][r] == pytest.approx(skm.matthews_corrcoef(y3[rows], p3[rows]))


def test_interval_contains_value_and_is_seeded():
    y_true, y_pred = _binary(300, seed=1)
    first = compute_metrics(CLASSIFICATION, y_true, y_pred, n_bootstrap=500, seed=3)
    assert first == compute_metrics(CLASSIFICATION, y_true, y_pred, n_bootstrap=500, seed=3)
    assert first != compute_metrics(CLASSIFICATION, y_true, y_pred, n_bootstrap=500, seed=4)
    for name, res in first.items():
        assert res["value"] == pytest.approx(METRICS.get(name)(y_true, y_pred))
        assert res["ci_low"] < res["value"] < res["ci_high"], name
    # Accuracy's interval is close to the normal approximation sqrt(p(1 - p) / n).
    acc = first["accuracy"]
    half = 1.96 * np.sqrt(acc["value"] * (1 - acc["value"]) / 300)
    assert acc["ci_high"] - acc["ci_low"] == pytest.approx(2 * half, rel=0.15)


def test_interval_is_the_percentile_of_resampled_metrics():
    y_true, y_pred = _binary(50, seed=2)
    res = compute_metrics(["accuracy", "mcc"], y_true, y_pred, n_bootstrap=100, confidence=0.9,
                          seed=7)
    idx = np.random.default_rng(7).integers(0, 50, (100, 50))  # the same draws, one block
    for name in ("accuracy", "mcc"):
        values = [METRICS.get(name)(y_true[rows], y_pred[rows]) for rows in idx]
        expected = np.percentile(values, [5, 95])
        assert [res[name]["ci_low"], res[name]["ci_high"]] == pytest.approx(expected, abs=1e-12)


def test_regression_metrics_and_nan_aware_interval():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, 200)
    res = compute_metrics(["pearson", "spearman"], x, 2 * x + rng.normal(0, 1, 200))
    for name, r in res.items():
        assert r["ci_low"] < r["value"] < r["ci_high"] < 1.0, name
    # Predictions constant except two examples: many resamples miss both and are undefined.
    y_pred = np.zeros(12)
    y_pred[[0, 1]] = [1.0, 2.0]
    y_true = np.arange(12.0)
    res = compute_metrics(["pearson", "spearman"], y_true, y_pred, n_bootstrap=400)
    for r in res.values():
        assert np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"])


def test_blocked_bootstrap_bounds_memory_and_equals_one_block(monkeypatch):
    # Performance lives in benchmarks/; here: the blocking that bounds memory changes nothing.
    import peftlab.metrics as metrics

    y_true, y_pred = _binary(1000, seed=5)
    names = ["accuracy", "f1", "mcc"]
    one_block = compute_metrics(names, y_true, y_pred, n_bootstrap=300, seed=2)
    shapes = []

    def recording(indices, n):
        shapes.append(indices.shape)
        return counts_from_indices(indices, n)

    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 7 * 1000)  # 7 resamples of 1000 per block
    monkeypatch.setattr(metrics, "counts_from_indices", recording)
    blocked = compute_metrics(names, y_true, y_pred, n_bootstrap=300, seed=2)
    assert blocked == one_block
    assert max(rows * n for rows, n in shapes) <= 7 * 1000
    assert sum(rows for rows, _ in shapes) == 300 and len(shapes) == math.ceil(300 / 7)


def test_input_checks_and_no_bootstrap():
    with pytest.raises(ValueError, match="unknown metric"):
        compute_metrics(["auc"], [0, 1], [0, 1])
    with pytest.raises(ValueError, match="equal length"):
        compute_metrics(["accuracy"], [0, 1, 1], [0, 1])
    res = compute_metrics(["accuracy"], [0, 1, 1], [0, 1, 0], n_bootstrap=0)
    assert res == {"accuracy": {"value": pytest.approx(2 / 3), "ci_low": None, "ci_high": None}}


def test_string_labels():
    y_true = np.array(["neg", "pos", "pos", "neg", "pos"])
    y_pred = np.array(["neg", "pos", "neg", "neg", "pos"])
    res = compute_metrics(["accuracy", "macro_f1", "mcc"], y_true, y_pred, n_bootstrap=50)
    assert res["accuracy"]["value"] == pytest.approx(0.8)
    assert res["mcc"]["value"] == pytest.approx(skm.matthews_corrcoef(y_true, y_pred))


@pytest.mark.parametrize("name", ["accuracy", "macro_f1", "mcc", "spearman"])
def test_a_metric_without_a_vectorised_form_is_bootstrapped_to_the_same_values(name):
    """The generic path (the function on each resample) and the vectorised one agree, so a
    registered metric needs no bootstrap code of its own."""
    from peftlab.metrics import Metric

    rng = np.random.default_rng(7)
    y_true, y_pred = rng.integers(0, 3, 40), rng.integers(0, 3, 40)
    builtin = METRICS.get(name)
    plain = Metric(f"{name}_plain", builtin.fn, builtin.target)
    with METRICS.temporarily(plain):
        got = compute_metrics([name, plain.name], y_true, y_pred, n_bootstrap=200, seed=3)
    assert got[plain.name] == pytest.approx(got[name], abs=1e-12)
    assert plain.name not in METRICS


def test_chance_of_a_metric_without_a_formula_is_simulated():
    """accuracy's chance is 1/k exactly; the same function with no formula is simulated (seeded)
    and lands near it; a score metric with no formula has no chance value."""
    from peftlab.metrics import Metric

    labels = np.array([0, 1, 2] * 30)
    exact = METRICS.get("accuracy").chance_value(labels, 3, 500, 0)
    assert exact == (pytest.approx(1 / 3), "exact")
    value, how = Metric("acc", METRICS.get("accuracy").fn).chance_value(labels, 3, 500, 0)
    assert how == "simulation (500 draws, seed 0)" and abs(value - 1 / 3) < 0.02
    assert Metric("s", METRICS.get("pearson").fn, "score").chance_value(labels, None, 9, 0) is None
    with pytest.raises(ValueError, match="target must be one of"):
        Metric("bad", METRICS.get("accuracy").fn, "image")
