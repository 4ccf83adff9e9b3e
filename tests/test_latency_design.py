"""The paired latency design's analysis and sizing (`peftlab.latency_design`), on simulated
latencies: its false-positive rate with no true difference, its power on a 10% one, the
adaptive (pilot-sized) procedure's error rate, and the agreement with a mixed model.

    .venv/bin/python -m pytest tests/test_latency_design.py -q

Every simulation is seeded; Monte Carlo tolerances are 3 standard errors of the rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftlab.latency_design import (
    analyse_pairs,
    block_summary,
    log_latency,
    noise_floor,
    plan_design,
    round_log_ratios,
    simulate_blocks,
    to_pct,
    verdict_arrays,
)

ALPHA = 0.05
SIMS = 4000
TOLERANCE = 3 * math.sqrt(ALPHA * (1 - ALPHA) / SIMS)  # 3 Monte Carlo standard errors: 0.010


def test_a_round_is_the_mean_log_segment_median_of_a_minus_b():
    a = np.array([[10.0, 11.0, 50.0], [12.0, 12.0, 13.0]])  # 2 segments of 3 requests
    b = np.array([[10.0, 10.0, 10.0], [9.0, 11.0, 10.0]])
    want = (math.log(11.0) + math.log(12.0)) / 2 - math.log(10.0)
    assert round_log_ratios(a, b) == pytest.approx(want)
    assert log_latency(a.tolist()) - log_latency(b.tolist()) == pytest.approx(want)
    # segments of unequal length (a segment cut by max_seconds) are allowed
    assert log_latency([[10.0], [12.0, 12.0, 13.0]]) == pytest.approx(
        (math.log(10.0) + math.log(12.0)) / 2)


@pytest.mark.parametrize("blocks,rounds", [(3, 8), (6, 8), (5, 4)])
def test_no_true_difference_is_called_different_at_most_at_the_nominal_rate(blocks, rounds):
    rng = np.random.default_rng(1)
    x = simulate_blocks(rng, studies=SIMS, blocks=blocks, rounds=rounds, requests=8)
    v = verdict_arrays(x, alpha=ALPHA)
    rate = float(v["different"].mean())
    assert rate <= ALPHA + TOLERANCE, rate
    # and the test is not conservative to uselessness: near the nominal rate
    assert rate >= ALPHA - TOLERANCE, rate
    # the interval covers the truth (0) as often as it claims
    covered = float(((v["ci_low"] <= 0) & (v["ci_high"] >= 0)).mean())
    assert covered >= 1 - ALPHA - TOLERANCE


def test_a_process_effect_that_does_not_cancel_is_absorbed_by_the_block_unit():
    """Each process gives A and B a layout effect of its own (sd 3%): rounds within a block
    share it, so a test over rounds would call it a difference; over blocks it is noise."""
    rng = np.random.default_rng(2)
    x = simulate_blocks(rng, studies=SIMS, blocks=4, rounds=10, requests=8, sigma_layout=0.03)
    rate = float(verdict_arrays(x, alpha=ALPHA)["different"].mean())
    assert rate <= ALPHA + TOLERANCE, rate
    # pooling the rounds as if independent (the wrong unit) is far from nominal
    from scipy import stats as sps

    flat = x.reshape(SIMS, -1)
    t = flat.mean(axis=1) / (flat.std(axis=1, ddof=1) / math.sqrt(flat.shape[1]))
    wrong = float((2 * sps.t.sf(np.abs(t), flat.shape[1] - 1) < ALPHA).mean())
    assert wrong > 3 * ALPHA, wrong


def test_power_on_a_ten_percent_difference():
    rng = np.random.default_rng(3)
    x = simulate_blocks(rng, studies=2000, blocks=6, rounds=8, requests=8,
                        effect=math.log(1.10))
    v = verdict_arrays(x, alpha=ALPHA)
    power = float(v["different"].mean())
    assert power >= 0.99, power  # measured 0.9995 with this seed
    # and the estimate is unbiased: the median estimated change is 10%
    assert float(np.median(to_pct(v["estimate"]))) == pytest.approx(10.0, abs=0.5)


def test_the_pilot_sized_design_keeps_the_false_positive_rate():
    """The whole procedure: 2 pilot blocks, `plan_design` sizes blocks and rounds from their
    variances (never from the estimate), the planned blocks run, the analysis takes every
    block. Simulated at the largest design and masked to each study's plan."""
    rng = np.random.default_rng(4)
    max_b, max_r, pilot_r = 10, 16, 4
    x = simulate_blocks(rng, studies=SIMS, blocks=max_b, rounds=max_r, requests=8)
    pilot = x[:, :2, :pilot_r]
    s = block_summary(pilot)
    plan = plan_design(sigma_round=s["sigma_round"][:, None], sigma_block=s["sigma_block"][:, None],
                       round_s=0.5, block_s=3.0, budget_s=60.0, groups=3, detect=0.05,
                       alpha=ALPHA, power=0.8, pilot_blocks=2, pilot_rounds=pilot_r,
                       min_blocks=3, max_blocks=max_b, max_rounds=max_r)
    b_idx = np.arange(max_b)[None, :, None]
    r_idx = np.arange(max_r)[None, None, :]
    rounds = np.where(b_idx < 2, pilot_r, plan["rounds"][:, None, None])
    keep = (b_idx < plan["blocks"][:, None, None]) & (r_idx < rounds)
    v = verdict_arrays(np.where(keep, x, np.nan), alpha=ALPHA)
    rate = float(v["different"].mean())
    assert rate <= ALPHA + TOLERANCE, rate
    # the plans differ between studies (the variances do) and respect the budget
    assert len(np.unique(plan["blocks"] * 100 + plan["rounds"])) > 1
    assert (plan["cost_s"] <= 60.0 + 1e-9).all()


# statsmodels warns about a boundary it checks for every variance parameter; the block variance
# here is far from 0 (the test compares it)
@pytest.mark.filterwarnings("ignore::statsmodels.tools.sm_exceptions.ConvergenceWarning")
def test_balanced_blocks_give_the_mixed_models_estimate_and_interval():
    """Rounds nested in blocks, a random block intercept: statsmodels' REML fit of the mean
    and its standard error equal the mean of block means and their standard error."""
    import pandas as pd
    import statsmodels.formula.api as smf

    rng = np.random.default_rng(5)
    blocks, rounds = 6, 10
    effect = rng.normal(0, 0.05, (blocks, 1))  # a clear block-to-block variance
    x = 0.02 + effect + rng.normal(0, 0.03, (blocks, rounds))
    df = pd.DataFrame({"y": x.ravel(), "block": np.repeat(np.arange(blocks), rounds)})
    fit = smf.mixedlm("y ~ 1", df, groups=df["block"]).fit(reml=True)
    res = analyse_pairs(x.tolist(), alpha=ALPHA)
    assert res["log_estimate"] == pytest.approx(fit.fe_params["Intercept"], rel=1e-6)
    assert res["se"] == pytest.approx(fit.bse["Intercept"], rel=1e-3)
    assert res["df"] == blocks - 1 and res["n_blocks"] == blocks and res["n_rounds"] == 60
    assert res["sigma_block"] == pytest.approx(math.sqrt(fit.cov_re.iloc[0, 0]), rel=1e-3)
    assert res["sigma_round"] == pytest.approx(math.sqrt(fit.scale), rel=1e-3)
    assert "block" in res["unit"]


def test_outcomes_read_difference_and_equivalence_together():
    rng = np.random.default_rng(6)

    def blocks(mean: float, sd: float = 0.004) -> list[list[float]]:
        return (mean + rng.normal(0, sd, (6, 8))).tolist()

    big = analyse_pairs(blocks(math.log(1.30)), margin=0.05)
    assert big["outcome"] == "different" and big["ratio"] == pytest.approx(1.30, rel=0.01)
    assert big["ci_low"] < big["ratio"] < big["ci_high"]
    assert big["ci_pct"][0] < big["change_pct"] < big["ci_pct"][1]
    small = analyse_pairs(blocks(math.log(1.02)), margin=0.05)
    assert small["outcome"] == "negligible"  # real, but inside +/-5%
    none = analyse_pairs(blocks(0.0), margin=0.05)
    assert none["outcome"] == "equivalent" and none["p_tost"] < ALPHA
    noisy = analyse_pairs(blocks(0.0, sd=0.2), margin=0.05)
    assert noisy["outcome"] == "inconclusive"
    one = analyse_pairs([[0.1, 0.2]], margin=0.05)
    assert one["outcome"] == "insufficient blocks" and one["ci_low"] is None
    # the minimum detectable difference shrinks with precision
    assert none["mdd_pct"] < noisy["mdd_pct"]


def test_nothing_within_the_a_a_noise_floor_is_called_different():
    rng = np.random.default_rng(7)
    aa = analyse_pairs((rng.normal(0, 0.02, (5, 8))).tolist())
    floor = noise_floor(aa)
    assert floor is not None and floor > 0
    assert aa["ci_low"] <= 1 <= aa["ci_high"] or aa["outcome"] == "different"
    x = (0.8 * floor + rng.normal(0, 0.0005, (8, 8))).tolist()  # precise, but below the floor
    assert analyse_pairs(x)["outcome"] == "different"
    kept = analyse_pairs(x, floor=floor)
    assert kept["outcome"] == "inconclusive" and kept["floor_pct"] == pytest.approx(
        100 * math.expm1(floor))
    above = analyse_pairs((2 * floor + rng.normal(0, 0.0005, (8, 8))).tolist(), floor=floor)
    assert above["outcome"] == "different"


def test_the_plan_is_the_cheapest_design_that_detects_the_target_within_the_budget():
    common = dict(round_s=1.0, block_s=5.0, groups=1, detect=0.05, alpha=ALPHA, power=0.8,
                  pilot_blocks=2, pilot_rounds=4, min_blocks=3, max_blocks=12, max_rounds=40)
    plan = plan_design(sigma_round=np.array([0.05]), sigma_block=np.array([0.005]),
                       budget_s=1000.0, **common)
    assert bool(plan["meets"]) and float(plan["mdd_pct"]) <= 5.0
    b, r = int(plan["blocks"]), int(plan["rounds"])
    cost = (b - 2) * (5.0 + r * 1.0)
    assert float(plan["cost_s"]) == pytest.approx(cost)
    # no design that meets the target is cheaper
    from peftlab.latency_design import predicted_mdd

    for bb in range(3, 13):
        for rr in range(2, 41):
            m = predicted_mdd(0.05, 0.005, blocks=bb, rounds=rr, pilot_blocks=2, pilot_rounds=4,
                              alpha=ALPHA, power=0.8)
            if to_pct(m) <= 5.0:
                assert (bb - 2) * (5.0 + rr) >= cost - 1e-9
    # a budget too small for the target: the most precise design that fits, flagged
    tight = plan_design(sigma_round=np.array([0.05]), sigma_block=np.array([0.005]),
                        budget_s=20.0, **common)
    assert not bool(tight["meets"]) and float(tight["cost_s"]) <= 20.0
    assert float(tight["mdd_pct"]) > 5.0
    # more noise between processes asks for more blocks, not more rounds
    spread = plan_design(sigma_round=np.array([0.05]), sigma_block=np.array([0.02]),
                         budget_s=1000.0, **common)
    assert int(spread["blocks"]) > b
    # no budget left: the pilot alone
    none = plan_design(sigma_round=np.array([0.05]), sigma_block=np.array([0.005]),
                       budget_s=0.0, **common)
    assert int(none["blocks"]) == 2 and int(none["rounds"]) == 4
    # the least precise comparison sizes the design
    two = plan_design(sigma_round=np.array([0.05, 0.10]), sigma_block=np.array([0.005, 0.005]),
                      budget_s=1000.0, **common)
    assert int(two["blocks"]) * int(two["rounds"]) > b * r
