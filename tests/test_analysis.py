"""The stats stage on a small fixed results store (no training): degenerate runs, primary and
exploratory families, layer bands, floors, centred cosine, drift against seed noise, power, and
the comparisons of each area.

    .venv/bin/python -m pytest tests/test_analysis.py -q

The store is `peftlab.testing.sample_study`: SST-2, MRPC, RTE x {full, lora} x seeds 1-3, where RTE's
full run of seed 3 failed. By default every MRPC run sits exactly at the majority-class rate
and RTE's lora run of seed 2 at chance (`degenerate=False` gives a store where every run
learned).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np
import pytest
from rich.console import Console
from scipy import stats as sst

from peftlab import measures, stats
from peftlab.context import Context
from peftlab.families import planned_families
from peftlab.measures import MEASURES
from peftlab.results import bench_rows
from peftlab.stages.stats import run as stats_stage
from peftlab.stages.stats.bands import band_layers
from peftlab.store import Store
from peftlab.testing.sample_study import DEGENERATE_RUN, DEGENERATE_TASK, FAILED, write_sample


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


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    study = write_sample(tmp_path_factory.mktemp("clean"), degenerate=False)
    return study, _stats(study)


def _comparisons(records, family_prefix=""):
    return [r for r in records if r["kind"] in ("comparison", "across_tasks")
            and r["family"].startswith(family_prefix)]


def _of(records, **match):
    return [r for r in records if r["kind"] in ("comparison", "across_tasks")
            and all(r.get(k) == v for k, v in match.items())]


def _one(records, **match):
    found = _of(records, **match)
    assert len(found) == 1, (match, [r["key"] for r in found])
    return found[0]


def _settings(records):
    return next(r for r in records if r["kind"] == "settings")


def _runs(study) -> dict[tuple[str, str, int], dict]:
    store = Store(study.output_dir, create=False)
    try:
        return {(r["task"], r["method"], r["seed"]): r for r in store.records("runs")}
    finally:
        store.close()


def _drift(study) -> list[dict]:
    store = Store(study.output_dir, create=False)
    try:
        return store.records("drift")
    finally:
        store.close()


# ----------------------------------------------------------------------------- degenerate runs


def test_every_run_is_judged_against_its_baselines(sample):
    study, records = sample
    verdicts = {(r["task"], r["method"], r["seed"]): r for r in records
                if r["kind"] == "summary" and r["area"] == "runs"}
    done = {k for k, r in _runs(study).items() if r["status"] == "done"}
    assert set(verdicts) == done and len(done) == 17
    bad = {k for k, v in verdicts.items() if v["learned"] is False}
    assert bad == {(DEGENERATE_TASK, m, s) for m in ("full", "lora") for s in (1, 2, 3)} | {
        DEGENERATE_RUN}
    mrpc = verdicts[(DEGENERATE_TASK, "lora", 1)]
    # the case: F1 exactly at the majority-class rate, said in one sentence with numbers
    assert mrpc["value"] == pytest.approx(0.8) and mrpc["majority"] == pytest.approx(0.8)
    assert "equals the majority-class rate 0.8000 (always 'equivalent')" in mrpc["reason"]
    assert mrpc["source"] == "baselines table"
    # the sample's runs start from an untrained head: no start to judge them against
    assert _settings(records)["runs"] == {"judged": 17, "learned": 10, "degenerate": 7,
                                          "not_judged": 0, "start_judged": 0, "improved": 0,
                                          "no_detectable_change": 0, "worse": 0}
    assert all(v["improved"] is None and v["change"] is None and "head_init: random" in
               v["improvement_reason"] for v in verdicts.values())


def test_runs_that_cannot_be_judged_are_never_counted_as_learned(tmp_path, monkeypatch):
    """A task with no baselines record whose baselines cannot be computed either (the sample's
    data source is not here): its runs are "not judged", with the reason, and left out of the
    comparisons that need learned runs, which are void, not tested on unjudged runs."""
    monkeypatch.delenv("PEFTLAB_DATA_DIR", raising=False)  # CI points it at real GLUE data
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = write_sample(tmp_path, degenerate=False)
    store = Store(study.output_dir)
    try:
        store.delete("baselines", "sst2")
    finally:
        store.close()
    records = _stats(study)
    runs = {(r["task"], r["method"], r["seed"]): r for r in records
            if r["kind"] == "summary" and r["area"] == "runs"}
    for (task, _, _), v in runs.items():
        assert (v["learned"] is None) is (task == "sst2")
    v = runs[("sst2", "lora", 1)]
    assert v["source"] == "none" and "the baselines of sst2 could not be computed" in v["reason"]
    assert _settings(records)["runs"]["not_judged"] == 6
    c = _one(records, area="drift", task="sst2", measure="linear_cka_debiased", band="mean",
             method_a="lora")
    assert c["outcome"] == "void" and c["seeds"] == []
    assert "a run that could not be judged" in c["reason"]
    assert all("not judged (" in why for why in c["missing"].values())
    # the accuracy comparison keeps its runs (it does not need them to have learned)
    acc = _one(records, area="metric", task="sst2", quantity="accuracy")
    assert acc["status"] == "ok"


def test_degenerate_runs_are_left_out_of_drift_and_deployment_verdicts(sample):
    _, records = sample
    task, method, seed = DEGENERATE_RUN
    # drift on RTE: the degenerate lora seed is missing with its reason (RTE had only two
    # complete pairs anyway: "insufficient runs")
    c = _one(records, area="drift", task=task, measure="linear_cka_debiased", band="mean")
    assert seed not in c["seeds"] and "degenerate run" in c["missing"][str(seed)]
    assert c["outcome"] == "insufficient runs"
    # lora against its own seed noise on RTE had three pairs: losing one to the degenerate run
    # leaves two, so the comparison is void rather than tested or "insufficient runs"
    c = _one(records, area="seed_noise", task=task, method_a=method,
             measure="linear_cka_debiased")
    assert c["seeds"] == [1, 3] and c["status"] == c["outcome"] == "void"
    assert "1 of the 3 complete pairs" in c["reason"] and "degenerate" in c["reason"]
    # every MRPC run is degenerate: each comparison on MRPC is void with one plain sentence
    for area in ("drift", "latency", "seed_noise"):
        for c in _of(records, area=area, task=DEGENERATE_TASK):
            assert c["outcome"] == "void" and c["p"] is None and c["family_size"] == 1
            assert "degenerate" in c["reason"]
    acc = _one(records, area="metric", task=DEGENERATE_TASK, quantity="f1")
    assert acc["outcome"] == "void"
    assert acc["reason"].startswith("every run on mrpc (6 of 6) is degenerate")
    # serving groups that hold a degenerate adapter are void too
    assert all(c["outcome"] == "void" for c in _of(records, area="serving"))
    # the accuracy comparison keeps a partly degenerate task's runs (failing to learn is worse)
    rte = _one(records, area="metric", task=task, quantity="accuracy")
    assert rte["outcome"] == "insufficient runs" and seed in rte["seeds"]
    # the across-task estimate uses learned runs only: MRPC has no pair, RTE one
    across = _one(records, kind="across_tasks", measure="linear_cka_debiased")
    assert across["per_task"].keys() == {"sst2", "rte"} and across["n_pairs"] == 4
    assert across["tasks_without_pairs"] == [DEGENERATE_TASK]
    # drift summaries show the degenerate runs' values apart, not in the mean
    sm = next(r for r in records if r["kind"] == "summary" and r["area"] == "drift"
              and r["task"] == task and r["method"] == method and r["band"] == "mean"
              and r["measure"] == "linear_cka_debiased")
    assert sm["seeds"] == [1, 3] and list(sm["degenerate_values"]) == [str(seed)]


def test_studies_without_the_baselines_table_use_the_run_records(tmp_path, monkeypatch):
    monkeypatch.delenv("PEFTLAB_DATA_DIR", raising=False)  # no data: baselines cannot be computed
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    study = write_sample(tmp_path, degenerate=False)
    store = Store(study.output_dir)
    try:
        store.replace_where("baselines", "", [])
        key = next(k for k in store.keys("runs") if k.startswith("sst2-lora-s2"))
        rec = store.get("runs", key)
        rec.pop("key", None)
        rec["baselines"] = {"learned": False, "reason": "accuracy 0.5 at chance"}
        store.put("runs", key, rec)
    finally:
        store.close()
    records = _stats(study)
    verdicts = [r for r in records if r["kind"] == "summary" and r["area"] == "runs"]
    assert sum(v["learned"] is None for v in verdicts) == 16  # nothing to judge them against
    bad = next(v for v in verdicts if v["run_id"] == key)
    assert bad["learned"] is False and bad["source"] == "the run's own record"
    c = _one(records, area="drift", task="sst2", measure="linear_cka_debiased", band="mean")
    assert 2 not in c["seeds"] and c["outcome"] == "void"


# ----------------------------------------------------------------------------- families


def test_primary_endpoints_form_one_family_corrected_across_the_study(clean):
    study, records = clean
    primary = _comparisons(records, "primary")
    by_question = defaultdict(list)
    for c in primary:
        assert c["role"] == "primary"
        by_question[c["question"]].append(c)
    # accuracy: the main metric on each task; RQ1: one across-task estimate; RQ2: unmerged vs
    # merged and merged vs full at batch 1, data lengths, on each benchmarked task
    assert sorted(c["task"] for c in by_question["accuracy"]) == ["mrpc", "rte", "sst2"]
    assert all(c["main_metric"] for c in by_question["accuracy"])
    assert [c["kind"] for c in by_question["RQ1"]] == ["across_tasks"]
    assert sorted((c["pair"], c["task"]) for c in by_question["RQ2"]) == [
        (p, t) for p in ("merged_vs_full", "unmerged_vs_merged") for t in ("mrpc", "rte", "sst2")]
    assert all(c["batch_size"] == 1 and c["seq_len"] == "data" for c in by_question["RQ2"])
    tested = [c for c in primary if c["status"] == "ok"]
    expected = stats.holm([c["decision_p"] for c in tested])
    for c, p_adj in zip(tested, expected, strict=True):
        assert c["family_size"] == len(tested) and c["correction"] == "holm"
        assert c["p_adjusted"] == pytest.approx(p_adj, rel=1e-12)
    # everything else is exploratory, one family per area, never mixed with the primary ones
    for c in _comparisons(records):
        if c["family"] != "primary":
            assert c["role"] == "exploratory" and c["question"] is None
            assert c["family"] == f"exploratory/{c['area']}"
    # the per-task drift tests of the primary measure are exploratory beside the estimate
    per_task = _of(records, area="drift", measure="linear_cka_debiased", band="mean",
                   kind="comparison")
    assert len(per_task) == 3 and all(c["role"] == "exploratory" for c in per_task)


def test_each_family_is_corrected_alone_and_outcomes_follow_the_corrected_p(clean):
    _, records = clean
    families = defaultdict(list)
    for c in _comparisons(records):
        families[c["family"]].append(c)
    assert set(families) == {"primary", "exploratory/metric", "exploratory/drift",
                             "exploratory/seed_noise", "exploratory/latency",
                             "exploratory/serving", "exploratory/forgetting"}
    for family, comps in families.items():
        tested = [c for c in comps if c["status"] == "ok"]
        for c, p_adj in zip(tested, stats.holm([c["decision_p"] for c in tested]), strict=True):
            assert c["family_size"] == len(tested), family
            assert c["p_adjusted"] == pytest.approx(p_adj, rel=1e-12), family
        with_margin = [c for c in tested if c["tost_p"] is not None]
        for c, p_adj in zip(with_margin, stats.holm([c["tost_p"] for c in with_margin]),
                            strict=True):
            assert c["tost_p_adjusted"] == pytest.approx(p_adj, rel=1e-12), family
        for c in tested:
            assert c["outcome"] == stats.decide_outcome(c["p_adjusted"], c["tost_p_adjusted"],
                                                        c["alpha"]), (family, c["label"])


def test_planned_families_count_what_the_stage_compares(clean):
    study, records = clean
    planned = planned_families(study)
    counted = defaultdict(int)
    for c in _comparisons(records):
        counted[c["family"]] += 1
    # the sample benchmarks every task, so the spec's plan and the stored table agree
    assert planned == dict(counted)
    assert planned["primary"] == 3 + 1 + 2 * 3
    fams = _settings(records)["families"]
    assert {f: v["planned"] for f, v in fams.items()} == planned
    assert all(v["tested"] <= v["comparisons"] == planned[f] for f, v in fams.items())


# ----------------------------------------------------------------------------- drift


def test_bands_are_over_transformer_layers_and_layer_0_stands_alone(clean):
    study, records = clean
    drift = _drift(study)
    bands = band_layers([r["layer"] for r in drift])
    assert bands == {"early": [1, 2], "middle": [3, 4], "late": [5], "mean": [1, 2, 3, 4, 5],
                     "embeddings": [0]}
    c = _one(records, area="drift", task="sst2", measure="centered_cosine", band="early")
    runs = dict(zip(c["seeds"], c["runs_a"], strict=False))
    for seed, value in zip(c["seeds"], c["values_a"], strict=True):
        layers = {r["layer"]: r["values"]["centered_cosine"] for r in drift
                  if r["kind"] == "base_vs_run" and r["run_b"] == runs[seed]}
        assert value == pytest.approx(np.mean([layers[1], layers[2]]))  # not layer 0
    # layer 0 is summarised on its own and never tested
    assert not _of(records, band="embeddings")
    emb = [r for r in records if r["kind"] == "summary" and r["area"] == "drift"
           and r["band"] == "embeddings"]
    assert emb and all(r["layers"] == [0] for r in emb)


def test_floors_are_the_null_95_percent_quantile(clean):
    study, records = clean
    drift = _drift(study)
    sm = next(r for r in records if r["kind"] == "summary" and r["area"] == "drift"
              and r["task"] == "sst2" and r["measure"] == "linear_cka" and r["band"] == "mean"
              and r["method"] == "lora")
    runs = {r["run_b"] for r in drift if r["kind"] == "base_vs_run" and r["task"] == "sst2"
            and r["method"] == "lora"}
    base = [r for r in drift if r["kind"] == "base_vs_run" and r["layer"] >= 1]
    per_run_q95 = [np.mean([r["null"]["linear_cka"]["null_q95"] for r in base
                            if r["run_b"] == run]) for run in sorted(runs)]
    per_run_mean = [np.mean([r["null"]["linear_cka"]["null_mean"] for r in base
                             if r["run_b"] == run]) for run in sorted(runs)]
    assert sm["null_q95"] == pytest.approx(np.mean(per_run_q95))
    assert sm["null_mean"] == pytest.approx(np.mean(per_run_mean))  # kept beside it
    assert sm["null_q95"] > sm["null_mean"]
    layer = next(r for r in records if r["kind"] == "summary" and r["area"] == "drift_layer"
                 and r["task"] == "sst2" and r["measure"] == "linear_cka"
                 and r["method"] == "lora" and r["layer"] == 3)
    assert layer["null_q95"] == pytest.approx(np.mean([
        r["null"]["linear_cka"]["null_q95"] for r in drift if r["kind"] == "base_vs_run"
        and r["run_b"] in runs and r["layer"] == 3]))
    c = _one(records, area="drift", task="sst2", measure="linear_cka_debiased", band="mean",
             kind="comparison")
    assert c["null_q95_a"] is not None and c["p_max_a"] is not None


def test_centred_cosine_is_tested_and_the_uncentred_one_only_labelled(clean):
    _, records = clean
    tested = measures.tested_measures()
    assert "centered_cosine" in tested and "cosine" not in tested
    assert MEASURES.get("cosine").label == "uncentred cosine"
    assert MEASURES.get("centered_cosine").has_null and MEASURES.get("cosine").has_null
    assert len(_of(records, area="drift", measure="centered_cosine", kind="comparison")) == 12
    assert not _of(records, measure="cosine")
    # every measure the drift table holds is summarised per band and layer, floors included
    summarised = {r["measure"] for r in records if r["kind"] == "summary"
                  and r["area"] in ("drift", "drift_layer")}
    assert summarised == {"linear_cka_debiased", "linear_cka", "centered_cosine", "cosine",
                          "procrustes", "knn"}


def test_a_spec_can_test_the_measures_its_original_reported(tmp_path, clean):
    """stats.tested_measures adds the biased linear CKA and the uncentred cosine (what the
    original study reported) to the measures compared between methods: each gets the paired
    comparison per band, the seed-noise and the across-task tests, in the exploratory family, and
    the plan counts them as the stage enumerates them."""
    import yaml

    from peftlab.pipeline import load_study

    write_sample(tmp_path, degenerate=False)
    path = tmp_path / "spec.yaml"
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    raw.setdefault("stats", {})["tested_measures"] = [
        "linear_cka_debiased", "centered_cosine", "linear_cka", "cosine"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    study = load_study(path)
    records = _stats(study)
    default = measures.tested_measures()
    for m in ("linear_cka", "cosine"):
        assert m not in default
        c = _one(records, area="drift", task="sst2", measure=m, band="mean", kind="comparison")
        assert c["family"] == "exploratory/drift" and c["n"] == 3
        assert c["mean_a"] is not None and c["diff_ci_low"] <= c["diff"] <= c["diff_ci_high"]
        assert _of(records, area="seed_noise", task="sst2", measure=m)
        assert _of(records, measure=m, kind="across_tasks")
    counted = defaultdict(int)
    for c in _comparisons(records):
        counted[c["family"]] += 1
    assert planned_families(study) == dict(counted)
    default_drift = [c for c in _comparisons(clean[1]) if c["family"] == "exploratory/drift"]
    # linear_cka and cosine each add what centred cosine (exploratory throughout) holds
    per_measure = sum(1 for c in default_drift if c["measure"] == "centered_cosine")
    assert per_measure and counted["exploratory/drift"] == len(default_drift) + 2 * per_measure


def test_drift_is_tested_against_the_same_methods_seed_noise(clean):
    study, records = clean
    drift = _drift(study)
    c = _one(records, area="seed_noise", task="sst2", method_a="lora",
             measure="linear_cka_debiased")
    assert c["family"] == "exploratory/seed_noise" and c["seeds"] == [1, 2, 3]
    runs = _runs(study)
    run_of = {runs[("sst2", "lora", s)]["run_id"]: s for s in (1, 2, 3)}

    def band_mean(run_a, run_b):
        return np.mean([r["values"]["linear_cka_debiased"] for r in drift
                        if r["run_a"] == run_a and r["run_b"] == run_b and r["layer"] >= 1])

    pairs = {}
    for a, b in itertools.combinations(sorted(run_of, key=run_of.get), 2):
        pairs[(run_of[a], run_of[b])] = band_mean(a, b)
    for seed, base, ref in zip(c["seeds"], c["values_a"], c["values_b"], strict=True):
        rid = runs[("sst2", "lora", seed)]["run_id"]
        assert base == pytest.approx(band_mean("base", rid))
        assert ref == pytest.approx(np.mean([v for k, v in pairs.items() if seed in k]))
    # full drifts far beyond its seed noise in the sample
    full = _one(records, area="seed_noise", task="sst2", method_a="full",
                measure="linear_cka_debiased")
    assert full["outcome"] == "different" and full["diff"] < 0


# ----------------------------------------------------------------------------- power


def test_primary_comparisons_say_what_they_could_detect(clean):
    _, records = clean
    tested = [c for c in _comparisons(records, "primary") if c["status"] == "ok"]
    assert tested
    for c in tested:
        alpha = c["alpha"] / c["family_size"]
        assert c["mde_alpha"] == pytest.approx(alpha)
        if c["kind"] == "across_tasks":
            # df = n_pairs - n_tasks, noncentrality d sqrt(n_pairs): power 0.8 at the MDE
            df, n = c["n_pairs"] - c["n_tasks"], c["n_pairs"]
            crit = sst.t.isf(alpha / 2, df)
            ncp = c["mde_dz"] * math.sqrt(n)
            assert sst.nct.sf(crit, df, ncp) + sst.nct.sf(crit, df, -ncp) == pytest.approx(0.8)
            assert c["sd_diff"] == pytest.approx(math.sqrt(2 * c["residual_variance"]))
        else:
            assert c["mde_dz"] == pytest.approx(stats.minimum_detectable_effect(c["n"], alpha))
            assert c["runs_needed"] == stats.runs_needed(c["effect"], alpha)
        assert c["mde_diff"] == pytest.approx(c["mde_dz"] * c["sd_diff"])


def test_zero_spread_at_the_stage_defers_to_the_exact_test(tmp_path):
    # one example better on every seed: t is undefined, Wilcoxon decides (p = 0.25)
    study = write_sample(tmp_path, degenerate=False)
    store = Store(study.output_dir)
    try:
        for method, counts in (("lora", (800, 810, 790)), ("full", (799, 809, 789))):
            for seed, k in zip((1, 2, 3), counts, strict=True):
                key = next(x for x in store.keys("runs") if x.startswith(f"sst2-{method}-s{seed}"))
                rec = store.get("runs", key)
                rec.pop("key", None)
                rec["metrics"]["accuracy"] = {"value": k / 872, "ci_low": k / 872 - 0.03,
                                              "ci_high": k / 872 + 0.03}
                store.put("runs", key, rec)
    finally:
        store.close()
    c = _one(_stats(study), area="metric", task="sst2", quantity="accuracy")
    assert c["statistic"] is None and c["p"] is None and "zero spread" in c["t_undefined_reason"]
    assert c["decision_test"] == "Wilcoxon signed-rank" and c["decision_p"] == 0.25
    assert c["outcome"] == "inconclusive"


# ----------------------------------------------------------------------------- the other areas


def test_metric_comparisons_pair_by_seed_and_flag_too_few_runs(clean):
    study, records = clean
    runs = _runs(study)
    comps = {c["task"]: c for c in _of(records, area="metric", main_metric=True)}
    assert sorted(comps) == ["mrpc", "rte", "sst2"]
    for task, c in comps.items():
        assert (c["a"], c["b"]) == ("lora", "full") and c["paired"] is True
        metric = "f1" if task == "mrpc" else "accuracy"
        assert c["quantity"] == metric
        seeds = [1, 2] if task == FAILED[0] else [1, 2, 3]
        assert c["seeds"] == seeds and c["n"] == len(seeds)
        assert c["values_a"] == [runs[(task, "lora", s)]["metrics"][metric]["value"] for s in seeds]
        assert c["values_b"] == [runs[(task, "full", s)]["metrics"][metric]["value"] for s in seeds]
        assert c["equivalence_margin"] == study.spec.stats.metric_margin
        assert c["margin_relative"] is False
    rte = comps["rte"]
    assert rte["status"] == rte["outcome"] == "insufficient runs"
    assert rte["p"] is None and rte["p_adjusted"] is None and rte["test"] is None
    assert "failed" in rte["missing"]["3"] and "loss became nan" in rte["missing"]["3"]
    assert comps["sst2"]["outcome"] == "different" and comps["sst2"]["diff"] < 0
    # MRPC's second metric is compared too, as an exploratory test
    other = _one(records, area="metric", task="mrpc", quantity="accuracy")
    assert other["family"] == "exploratory/metric" and other["main_metric"] is False


def test_latency_comparisons_use_one_median_per_run(clean):
    study, records = clean
    store = Store(study.output_dir, create=False)
    rows = bench_rows(store.records("bench"))
    store.close()
    p50 = {(r["mode"], r["task"], r["seed"], r["batch_size"]): r["p50_ms"] for r in rows}
    for pair in ("unmerged_vs_merged", "merged_vs_full", "unmerged_vs_full"):
        comps = _of(records, area="latency", pair=pair)
        assert len(comps) == 6  # 3 tasks x 2 batch sizes
        for c in comps:
            assert c["unit"] == "ms"
            assert c["values_a"] == [p50[(c["mode_a"], c["task"], s, c["batch_size"])]
                                     for s in c["seeds"]]
            assert c["values_b"] == [p50[(c["mode_b"], c["task"], s, c["batch_size"])]
                                     for s in c["seeds"]]
            if pair == "merged_vs_full":  # the no-difference claim gets a TOST
                assert c["equivalence_margin"] == study.spec.stats.latency_margin
                assert c["margin_relative"] is True
            else:
                assert c["equivalence_margin"] is None
            assert c["role"] == ("primary" if c["batch_size"] == 1 and pair != "unmerged_vs_full"
                                 else "exploratory")
    overhead = [c for c in _of(records, area="latency", pair="unmerged_vs_merged")
                if c["status"] == "ok"]
    assert overhead and all(c["rel_diff"] > 0.2 for c in overhead)
    assert all(c["flops_share"] == pytest.approx(0.005) for c in overhead)
    for mode in ("multi", "mixed"):
        # per served task (3) and batch size (2): that task's requests vs its single adapter
        comps = _of(records, area="serving", mode_a=mode)
        assert len(comps) == 6 and all(c["served"] == "sst2+mrpc+rte" and c["k"] == 3
                                       for c in comps)
        assert {c["task"] for c in comps} == {"sst2", "mrpc", "rte"}
        for c in comps:
            single = [p50[("unmerged", c["task"], s, c["batch_size"])] for s in c["seeds"]]
            assert c["values_b"] == pytest.approx(single)


def test_variance_decomposition_per_task(clean):
    _, records = clean
    var = {r["task"]: r for r in records if r["kind"] == "variance"}
    assert var["rte"]["status"] == "insufficient runs" and "shares" not in var["rte"]
    for task in ("sst2", "mrpc"):
        v = var[task]
        assert v["status"] == "ok" and v["n_seeds"] == 3
        assert sum(v["shares"].values()) == pytest.approx(1.0)
    assert var["sst2"]["shares"]["method"] > 0.9  # the method gap dwarfs seed noise


def test_rerun_replaces_the_table_and_ignores_stale_or_failed_records(tmp_path):
    study = write_sample(tmp_path, degenerate=False)
    first = _stats(study)
    store = Store(study.output_dir)
    try:
        store.put("stats", "comparison/stale/x", {"kind": "comparison", "family": "stale"})
        # a run of an earlier spec (another run id) must not be paired with the current runs
        store.put("runs", "sst2-lora-s1-00000000", {
            "run_id": "sst2-lora-s1-00000000", "task": "sst2", "method": "lora", "seed": 1,
            "method_type": "lora", "config": {}, "status": "done", "main_metric": "accuracy",
            "metrics": {"accuracy": {"value": 0.01}}})
        # a benchmark point that failed its gate is not a measurement
        key = next(k for k in store.keys("bench") if k.startswith("unmerged/sst2-lora-s1")
                   and "/b1/" in k)
        rec = store.get("bench", key)
        rec.update(status="failed", failure_reason="correctness gate failed (not timed)")
        rec.pop("key", None)
        store.put("bench", key, rec)
    finally:
        store.close()
    second = _stats(study)
    assert not [r for r in second if r.get("family") == "stale"]
    assert len(second) == len(first)
    sst2 = _one(second, area="metric", task="sst2", quantity="accuracy")
    assert 0.01 not in sst2["values_a"]
    point = _one(second, area="latency", pair="unmerged_vs_merged", task="sst2", batch_size=1)
    assert point["n"] == 2 and point["outcome"] == "insufficient runs"
    assert "gate failed" in point["missing"]["1"]


def test_the_shipped_studies_plan_their_families():
    """The families the closing note of issue 10 lists, counted from the shipped specs alone."""
    from peftlab.pipeline import load_study
    from peftlab.spec import find_spec

    quick = planned_families(load_study(find_spec("quickstart")))
    # primary: 3 tasks' main metric + 1 across-task drift estimate + 3 tasks x 2 latency pairs
    # at batch 1; drift: 3 tasks x 2 tested measures x 4 bands + 1 across-task (centred
    # cosine); seed noise: 3 tasks x 2 methods x 2 measures; latency: 3 tasks x 3 declared
    # pairs x 2 batch sizes - 6 primary; serving: multi and mixed x 2 batch sizes x 3 tasks
    assert quick == {"primary": 10, "exploratory/metric": 1, "exploratory/drift": 25,
                     "exploratory/seed_noise": 12, "exploratory/latency": 12,
                     "exploratory/serving": 4 * 3,
                     # MRPC and RTE runs probed on SST-2 at 2 layers, + the LM loss on each of 3
                     # tasks (planned from the spec alone: MiniLM has no LM head, so the stats
                     # stage lists those 3 as not tested with the forgetting stage's reason)
                     "exploratory/forgetting": 2 * 2 + 3}
    tiny = planned_families(load_study(find_spec("tinyllama-glue")))
    # the same design over 3 batch sizes x 4 sequence lengths for the bench; forgetting: each
    # task probed on the 2 others at 2 layers + its LM loss
    assert tiny == {"primary": 10, "exploratory/metric": 1, "exploratory/drift": 25,
                    "exploratory/seed_noise": 12, "exploratory/latency": 3 * 3 * 12 - 6,
                    "exploratory/serving": 2 * 12 * 3, "exploratory/forgetting": 3 * (2 * 2 + 1)}
