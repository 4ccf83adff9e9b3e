"""The stats stage on a small fixed results store (no training): which comparisons, which n,
"insufficient runs", and the correction over each declared family.

    .venv/bin/python -m pytest tests/test_analysis.py -q

The store is `peftlab.sample_study`: SST-2, MRPC, RTE x {full, lora} x seeds 1-3, where RTE's
full run of seed 3 failed; drift, weights and bench records for SST-2 and MRPC.
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from rich.console import Console

from peftlab import stats
from peftlab.results import bench_rows
from peftlab.sample_study import FAILED, write_sample
from peftlab.stages.stats import band_layers
from peftlab.stages.stats import run as stats_stage
from peftlab.store import Store
from peftlab.study import Context


def _stats(study) -> list[dict]:
    store = Store(study.output_dir)
    try:
        stats_stage(Context(study=study, store=store, console=Console(quiet=True)))
        return store.records("stats")
    finally:
        store.close()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    study = write_sample(tmp_path_factory.mktemp("analysis"))
    return study, _stats(study)


def _comparisons(records, family_prefix=""):
    return [r for r in records if r["kind"] == "comparison"
            and r["family"].startswith(family_prefix)]


def _runs(study) -> dict[tuple[str, str, int], dict]:
    store = Store(study.output_dir, create=False)
    try:
        return {(r["task"], r["method"], r["seed"]): r for r in store.records("runs")}
    finally:
        store.close()


def test_metric_comparisons_pair_by_seed_and_flag_too_few_runs(sample):
    study, records = sample
    runs = _runs(study)
    comps = {c["task"]: c for c in _comparisons(records, "metric")}
    assert sorted(comps) == ["mrpc", "rte", "sst2"]
    for task, c in comps.items():
        assert (c["a"], c["b"]) == ("lora", "full")
        assert c["family"] == "metric" and c["paired"] is True
        metric = "f1" if task == "mrpc" else "accuracy"
        assert c["quantity"] == metric
        seeds = [1, 2] if task == FAILED[0] else [1, 2, 3]
        assert c["seeds"] == seeds and c["n"] == len(seeds)
        # the values are the runs' main metric, matched by seed
        assert c["values_a"] == [runs[(task, "lora", s)]["metrics"][metric]["value"] for s in seeds]
        assert c["values_b"] == [runs[(task, "full", s)]["metrics"][metric]["value"] for s in seeds]
        # an absolute equivalence margin in metric units
        assert c["equivalence_margin"] == study.spec.stats.metric_margin
        assert c["margin_relative"] is False
    rte = comps["rte"]
    assert rte["status"] == rte["outcome"] == "insufficient runs"
    assert rte["p"] is None and rte["p_adjusted"] is None and rte["test"] is None
    assert "failed" in rte["missing"]["3"] and "loss became nan" in rte["missing"]["3"]
    # SST-2: lora is 5 points below full with little seed noise
    assert comps["sst2"]["outcome"] == "significant" and comps["sst2"]["diff"] < 0


def test_holm_is_applied_over_each_declared_family(sample):
    _, records = sample
    families = defaultdict(list)
    for c in _comparisons(records):
        families[c["family"]].append(c)
    assert {"metric", "drift/linear_cka_debiased/mean", "drift/cosine/late",
            "latency/unmerged_vs_merged", "latency/merged_vs_full", "latency/unmerged_vs_full",
            "serving/multi_vs_single", "serving/mixed_vs_single"} <= set(families)
    for family, comps in families.items():
        tested = [c for c in comps if c["status"] == "ok"]
        expected = stats.holm([c["p"] for c in tested])
        for c, p_adj in zip(tested, expected, strict=True):
            assert c["correction"] == "holm" and c["family_size"] == len(tested), family
            assert c["p_adjusted"] == pytest.approx(p_adj, rel=1e-12), family
        with_margin = [c for c in tested if c["tost_p"] is not None]
        for c, p_adj in zip(with_margin, stats.holm([c["tost_p"] for c in with_margin]),
                            strict=True):
            assert c["tost_p_adjusted"] == pytest.approx(p_adj, rel=1e-12), family
        for c in tested:  # the outcome follows the corrected p-values
            alpha = c["alpha"]
            want = ("significant" if c["p_adjusted"] < alpha else "equivalent"
                    if c["tost_p_adjusted"] is not None and c["tost_p_adjusted"] < alpha
                    else "inconclusive")
            assert c["outcome"] == want, (family, c["label"])


def test_drift_bands_leave_undefined_layers_out_and_carry_controls(sample):
    study, records = sample
    store = Store(study.output_dir, create=False)
    drift = store.records("drift")
    store.close()
    bands = band_layers([r["layer"] for r in drift])
    assert bands == {"early": [0, 1], "middle": [2, 3], "late": [4, 5], "mean": list(range(6))}
    comps = _comparisons(records, "drift/")
    # 2 tasks x 2 measures x 4 bands, lora vs full
    assert len(comps) == 16
    assert all(c["n"] == 3 and (c["a"], c["b"]) == ("lora", "full") for c in comps)
    c = next(c for c in comps if c["family"] == "drift/linear_cka_debiased/early"
             and c["task"] == "sst2")
    run_ids = dict(zip(c["seeds"], c["runs_a"], strict=False))
    for seed, value in zip(c["seeds"], c["values_a"], strict=True):
        # layer 0 is undefined (None): the early band is layer 1 alone
        layer1 = [r for r in drift if r["kind"] == "base_vs_run" and r["run_b"] == run_ids[seed]
                  and r["layer"] == 1]
        assert value == pytest.approx(layer1[0]["values"]["linear_cka_debiased"])
    mean = next(x for x in records if x["kind"] == "summary" and x["area"] == "drift"
                and x["task"] == "sst2" and x["measure"] == "linear_cka_debiased"
                and x["band"] == "mean" and x["method"] == "lora")
    assert mean["undefined_layers"] == [0] and all(math.isfinite(v) for v in mean["values"])
    # the null floor and the seed-to-seed control sit beside every CKA comparison
    assert 0 <= c["null_mean_a"] < 0.05 and 0 <= c["null_mean_b"] < 0.05
    assert len(c["seed_to_seed_a"]) == len(c["seed_to_seed_b"]) == 3  # pairs of 3 seeds
    cos = next(c for c in comps if c["family"] == "drift/cosine/mean")
    assert cos["null_mean_a"] is None  # cosine has no permutation floor


def test_latency_comparisons_use_one_median_per_run(sample):
    study, records = sample
    store = Store(study.output_dir, create=False)
    rows = bench_rows(store.records("bench"))
    store.close()
    p50 = {(r["mode"], r["task"], r["seed"], r["batch_size"]): r["p50_ms"] for r in rows}
    for family in ("latency/unmerged_vs_merged", "latency/merged_vs_full",
                   "latency/unmerged_vs_full"):
        comps = _comparisons(records, family)
        assert len(comps) == 4  # 2 tasks x 2 batch sizes
        for c in comps:
            assert c["n"] == 3 and c["unit"] == "ms"
            assert c["values_a"] == [p50[(c["mode_a"], c["task"], s, c["batch_size"])]
                                     for s in c["seeds"]]
            assert c["values_b"] == [p50[(c["mode_b"], c["task"], s, c["batch_size"])]
                                     for s in c["seeds"]]
            if family == "latency/merged_vs_full":  # the no-difference claim gets a TOST
                assert c["equivalence_margin"] == study.spec.stats.latency_margin
                assert c["margin_relative"] is True
            else:
                assert c["equivalence_margin"] is None
            assert c["rel_diff"] is not None and c["rel_diff_ci_low"] <= c["rel_diff"]
    overhead = _comparisons(records, "latency/unmerged_vs_merged")
    assert all(c["outcome"] == "significant" and c["rel_diff"] > 0.2 for c in overhead)
    assert all(c["flops_share"] == pytest.approx(0.005) for c in overhead)
    for mode in ("multi", "mixed"):
        comps = _comparisons(records, f"serving/{mode}_vs_single")
        assert len(comps) == 2 and all(c["task"] == "sst2+mrpc" and c["k"] == 2 for c in comps)
        c = comps[0]
        single = [np.mean([p50[("unmerged", t, s, c["batch_size"])] for t in ("sst2", "mrpc")])
                  for s in c["seeds"]]
        assert c["values_b"] == pytest.approx(single)


def test_variance_decomposition_per_task(sample):
    _, records = sample
    var = {r["task"]: r for r in records if r["kind"] == "variance"}
    assert var["rte"]["status"] == "insufficient runs" and "shares" not in var["rte"]
    for task in ("sst2", "mrpc"):
        v = var[task]
        assert v["status"] == "ok" and v["n_seeds"] == 3
        assert sum(v["shares"].values()) == pytest.approx(1.0)
    assert var["sst2"]["shares"]["method"] > 0.9  # the method gap dwarfs seed noise


def test_rerun_replaces_the_table_and_ignores_stale_or_failed_records(tmp_path):
    study = write_sample(tmp_path)
    first = _stats(study)
    store = Store(study.output_dir)
    try:
        store.put("stats", "comparison/stale/x", {"kind": "comparison", "family": "stale"})
        # a run of an earlier spec (another run id) must not be paired with the current runs
        store.put("runs", "sst2-lora-s1-00000000", {
            "run_id": "sst2-lora-s1-00000000", "task": "sst2", "method": "lora", "seed": 1,
            "status": "done", "main_metric": "accuracy",
            "metrics": {"accuracy": {"value": 0.01}}})
        # a benchmark point that failed its gate is not a measurement
        key = next(k for k in store.keys("bench") if k.startswith("unmerged/sst2-lora-s1")
                   and "/b1/" in k)
        rec = store.get("bench", key)
        rec.update(status="failed", failure_reason="correctness gate failed (not timed)")
        store.put("bench", key, rec)
    finally:
        store.close()
    second = _stats(study)
    assert not [r for r in second if r.get("family") == "stale"]
    assert len(second) == len(first)
    sst2 = next(c for c in _comparisons(second, "metric") if c["task"] == "sst2")
    assert 0.01 not in sst2["values_a"]
    point = next(c for c in _comparisons(second, "latency/unmerged_vs_merged")
                 if c["task"] == "sst2" and c["batch_size"] == 1)
    assert point["n"] == 2 and point["outcome"] == "insufficient runs"
    assert "gate failed" in point["missing"]["1"]
