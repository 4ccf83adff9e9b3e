"""The drift stage on a tiny study (2 tasks x {full, lora} x 3 seeds) through represent + drift.

    .venv/bin/python -m pytest tests/test_drift.py -q

One study is trained once for the module; tests that damage stored representations work on a
copy of its directory.
"""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pytest
from rich.console import Console
from safetensors.numpy import save

from peftlab.context import Context
from peftlab.errors import PeftlabError
from peftlab.extraction import encode_representations, load_representations
from peftlab.measures import MEASURES as REGISTRY
from peftlab.measures import compare_layer
from peftlab.pipeline import load_study, open_study_store
from peftlab.spec import DriftSpec
from peftlab.stages import drift as drift_module
from peftlab.stages import represent as represent_module
from peftlab.stages.stats.bands import band_value
from peftlab.store import Store
from peftlab.testing import tiny_study

MEASURES = ["linear_cka_debiased", "linear_cka", "centered_cosine", "cosine", "procrustes", "knn"]
NULL_MEASURES = [m.name for m in REGISTRY.values() if m.has_null]
represent_stage, drift_stage = represent_module.run, drift_module.run
representation_drift = drift_module.representation_drift
LAYERS = 3  # embeddings + 2 blocks of the tiny Llama


def _run(study, *stages):
    store = open_study_store(study)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        for stage in stages:
            stage(ctx)
    finally:
        store.close()


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir, glue_dir):
    study = tiny_study(tmp_path_factory.mktemp("drift"), model_dir=tiny_llama_dir,
                       glue_dir=glue_dir, train_samples=32,
                       training={"max_steps": 2, "batch_size": 8, "bootstrap_samples": 10})
    _run(study, represent_stage, drift_stage)
    return study


def _copy(study, tmp_path, glue_dir):
    """The same study in another directory (same run ids), to damage freely."""
    shutil.copytree(study.output_dir, tmp_path / "copy")
    return load_study(study.path, data_dir=str(glue_dir), output_dir=str(tmp_path / "copy"))


def _rewrite(store: Store, task: str, key: str, layers: dict[int, np.ndarray]) -> None:
    """Replace a model's stored representations behind the represent stage's back."""
    man = store.get("represent", f"{task}/{key}")
    data = save({f"layer_{i:03d}": np.ascontiguousarray(a) for i, a in layers.items()})
    (store.root / man["file"]).write_bytes(data)
    man.pop("key", None)
    store.put("represent", f"{task}/{key}", {
        **man, "content_sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)})


def test_drift_table_has_every_layer_null_floors_and_seed_controls(study):
    store = Store(study.output_dir, create=False)
    recs = store.records("drift")
    store.close()
    runs = study.runs()
    assert len(runs) == 12
    base = [r for r in recs if r["kind"] == "base_vs_run"]
    seeds = [r for r in recs if r["kind"] == "seed_to_seed"]
    assert len(base) == 12 * LAYERS
    assert len(seeds) == 2 * 2 * 3 * LAYERS  # tasks x methods x seed pairs x layers
    assert {(r["run_b"], r["layer"]) for r in base} == {
        (rc.run_id, layer) for rc in runs for layer in range(LAYERS)}
    for r in seeds:
        assert r["run_a"] != r["run_b"] and r["seed_a"] < r["seed_b"]
        assert r["run_a"].startswith(f"{r['task']}-{r['method']}-")
        assert r["run_b"].startswith(f"{r['task']}-{r['method']}-")
    for r in recs:
        assert r["undefined"] == {}
        assert sorted(r["values"]) == sorted(MEASURES)
        assert all(math.isfinite(v) for v in r["values"].values())
        assert r["n"] == 24 and r["d_a"] == r["d_b"] == 64 and r["knn_k"] == 10
        for name in ("linear_cka", "linear_cka_debiased", "centered_cosine", "cosine"):
            null = r["null"][name]
            assert null["n_permutations"] == 20
            assert null["observed"] == pytest.approx(r["values"][name], abs=1e-9)
            assert 1 / 21 <= null["p_value"] <= 1
            assert null["null_mean"] <= null["null_q95"]
        # the primary measure's interval over resampled probe examples, seeded
        boot = r["bootstrap"]
        assert boot["measure"] == "linear_cka_debiased" and boot["n_resamples"] == 100
        assert boot["estimate"] == pytest.approx(r["values"]["linear_cka_debiased"], abs=1e-9)
        assert boot["ci_low"] <= boot["estimate"] + 1e-9 and boot["ci_low"] <= boot["ci_high"]
        assert boot["confidence"] == 0.95
    # Biased CKA has a clearly positive floor at n=24, d=64; the debiased one sits near 0.
    floors = [r["null"]["linear_cka"]["null_mean"] for r in recs]
    debiased = [r["null"]["linear_cka_debiased"]["null_mean"] for r in recs]
    assert np.mean(floors) > 0.3 and abs(np.mean(debiased)) < 0.15
    # Centring removes the shared offset: the shuffled baseline of centred cosine sits near 0,
    # the uncentred one far above it.
    centred = [r["null"]["centered_cosine"]["null_mean"] for r in recs]
    uncentred = [r["null"]["cosine"]["null_mean"] for r in recs]
    assert abs(np.mean(centred)) < 0.1 < np.mean(uncentred)


def test_weights_table_covers_adapted_matrices_without_the_head(study):
    store = Store(study.output_dir, create=False)
    recs = store.records("weights")
    store.close()
    by_run = {}
    for r in recs:
        by_run.setdefault(r["run_id"], []).append(r)
    assert sorted(by_run) == sorted(rc.run_id for rc in study.runs())
    for rc in study.runs():
        rows = by_run[rc.run_id]
        assert all("score" not in r["module"] for r in rows)
        assert all(r["undefined"] is None and r["stats"]["update_fro"] > 0 for r in rows)
        if rc.method == "lora":
            # PEFT's Llama default targets: q_proj and v_proj of both blocks.
            assert sorted(r["matrix"] for r in rows) == ["q_proj", "q_proj", "v_proj", "v_proj"]
            # The update comes from the adapter factors, exactly: a rank-4 adapter has
            # numerical rank 4 (the float32 rounding of a merged matrix would add more).
            assert all(r["update"] == "B A (exact)" and r["stats"]["source"] == "delta"
                       for r in rows)
            assert all(r["stats"]["numerical_rank"] == r["stats"]["lora_rank"] == 4
                       and r["stats"]["effective_rank"] <= 4 + 1e-9 for r in rows)
        else:
            # a difference of stored matrices: the cut-off is that of their dtype
            assert all(r["update"] == "tuned - base" and r["stats"]["dtype"] == "float32"
                       and r["stats"]["rank_cutoff"] > 0 for r in rows)
        if rc.method != "lora":
            assert len(rows) == 2 * 7  # every linear layer of both blocks
            assert {r["block"] for r in rows} == {0, 1}


def test_second_run_computes_nothing(study, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setattr("peftlab.stages.represent.extract", fail)
    monkeypatch.setattr("peftlab.stages.drift.compare_layer", fail)
    monkeypatch.setattr("peftlab.weights.update_stats", fail)
    _run(study, represent_stage, drift_stage)


def test_constant_layer_is_undefined_and_left_out_of_the_mean(study, tmp_path, glue_dir):
    copy = _copy(study, tmp_path, glue_dir)
    store = Store(copy.output_dir, create=False)
    layers, _ = load_representations(store, "rte", "base")
    layers[0] = np.repeat(layers[0][:1], len(layers[0]), axis=0)  # one vector for every example
    _rewrite(store, "rte", "base", layers)
    store.close()
    _run(copy, representation_drift)

    store = Store(copy.output_dir, create=False)
    recs = [r for r in store.records("drift") if r["task"] == "rte"]
    store.close()
    layer0 = [r for r in recs if r["kind"] == "base_vs_run" and r["layer"] == 0]
    assert len(layer0) == 6
    for r in layer0:
        for name in ("linear_cka", "linear_cka_debiased", "procrustes"):
            assert r["values"][name] is None
            assert "identical rows" in r["undefined"][name]
        assert r["null"]["linear_cka"] is None
    for r in layer0:
        by_layer = {x["layer"]: x for x in recs
                    if x["kind"] == "base_vs_run" and x["run_b"] == r["run_b"]}
        m = band_value(by_layer, sorted(by_layer), "linear_cka")
        assert m["undefined_layers"] == [0]
        rest = [x["values"]["linear_cka"] for layer, x in by_layer.items() if layer > 0]
        assert len(rest) == 2 and m["value"] == pytest.approx(np.mean(rest))
    # Seed-to-seed comparisons do not involve the base: untouched and fully defined.
    assert all(r["undefined"] == {} for r in recs if r["kind"] == "seed_to_seed")


def test_other_probe_set_is_an_error_naming_run_and_layer(study, tmp_path, glue_dir):
    copy = _copy(study, tmp_path, glue_dir)
    run_id = next(rc.run_id for rc in copy.runs() if rc.task == "sst2" and rc.method == "lora")
    store = Store(copy.output_dir, create=False)
    man = store.get("represent", f"sst2/{run_id}")
    man.pop("key", None)
    store.put("represent", f"sst2/{run_id}", {**man, "probe_hash": "0" * 64})
    store.close()
    with pytest.raises(PeftlabError, match=rf"run {run_id}, layer 0 .*another probe set"):
        _run(copy, representation_drift)


def test_nan_in_a_representation_is_an_error_naming_run_and_layer(study, tmp_path, glue_dir):
    copy = _copy(study, tmp_path, glue_dir)
    run_id = next(rc.run_id for rc in copy.runs() if rc.task == "rte" and rc.method == "full")
    store = Store(copy.output_dir, create=False)
    layers, _ = load_representations(store, "rte", run_id)
    layers[2] = layers[2].copy()
    layers[2][5, 3] = np.nan
    _rewrite(store, "rte", run_id, layers)
    store.close()
    with pytest.raises(PeftlabError, match=rf"run {run_id}, layer 2 .*NaN"):
        _run(copy, representation_drift)


def test_compare_layer_undefined_measures_and_too_few_examples():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 6))
    cfg = DriftSpec(measures=[*MEASURES, "rbf_cka"], null_permutations=5, knn_k=3)
    ok = compare_layer(x, x @ rng.normal(size=(6, 6)), cfg, "here")
    assert ok["undefined"] == {} and set(ok["null"]) == set(NULL_MEASURES)
    constant = compare_layer(np.ones((12, 6)), x, cfg, "here")
    assert set(constant["undefined"]) >= {"linear_cka", "linear_cka_debiased", "rbf_cka"}
    assert all(constant["values"][m] is None for m in constant["undefined"])
    with pytest.raises(PeftlabError, match="here: linear_cka_debiased: .*at least 4"):
        compare_layer(x[:3], x[:3], cfg, "here")


def test_layer_mean_is_never_nan():
    by_layer = {i: {"layer": i, "values": {"linear_cka": v}, "null": {}}
                for i, v in enumerate([None, None])}
    m = band_value(by_layer, [0, 1], "linear_cka")
    assert m["value"] is None and m["undefined_layers"] == [0, 1]


def test_float16_storage_refuses_values_out_of_range():
    reps = np.zeros((2, 4, 3), dtype=np.float32)
    reps[1, 0, 0] = 1e6
    with pytest.raises(PeftlabError, match="run x, layer 1 .*float32"):
        encode_representations(reps, "float16", "run x")
