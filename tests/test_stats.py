"""peftlab.stats checked against SciPy, hand-computed cases and the identities that tie tests,
intervals and effect sizes together."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from peftlab.errors import DegenerateInputError
from peftlab.stats import (
    Comparison,
    apply_correction,
    bonferroni,
    bootstrap_ci,
    cohens_dz,
    compare,
    hedges_g,
    holm,
    mann_whitney,
    paired_permutation_test,
    paired_ttest,
    relative_difference_ci,
    tost_paired,
    tost_welch,
    variance_decomposition,
    welch_ttest,
    wilcoxon_signed_rank,
)


def _paired(seed: int, n: int = 8, shift: float = 0.5, noise: float = 1.0):
    rng = np.random.default_rng(seed)
    b = rng.normal(10.0, 2.0, n)
    return b + shift + rng.normal(0.0, noise, n), b


def _mean_diff(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


# --------------------------------------------------------------------------- t-tests


@pytest.mark.parametrize("seed", range(4))
def test_paired_ttest_matches_scipy(seed):
    a, b = _paired(seed)
    ours, ref = paired_ttest(a, b), st.ttest_rel(a, b)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == ref.df
    ci = ref.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert ours.estimate == pytest.approx(np.mean(a - b))


@pytest.mark.parametrize("seed", range(4))
def test_welch_ttest_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(1.0, 1.0, 5), rng.normal(0.0, 3.0, 9)
    ours, ref = welch_ttest(a, b), st.ttest_ind(a, b, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert ours.df == pytest.approx(ref.df, rel=1e-10)
    ci = ref.confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)


def test_zero_spread_conventions():
    a = np.array([1.0, 2.0, 3.0])
    same = paired_ttest(a, a.copy())
    assert (same.statistic, same.pvalue) == (0.0, 1.0)
    shifted = paired_ttest(a + 0.5, a)  # every difference exactly 0.5: the limit of a huge t
    assert shifted.statistic == math.inf and shifted.pvalue == 0.0
    assert math.isnan(cohens_dz(a + 0.5, a).value)
    # Differences that are zero up to rounding are not a "significant" difference.
    b = np.array([0.1, 0.2, 0.3]) * 3
    c = np.array([0.3, 0.6, 0.9])
    assert paired_ttest(b, c).pvalue == 1.0


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ttest([1, 2, 3], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        welch_ttest([1, 2, np.nan], [1, 2, 3])


# --------------------------------------------------------------------------- rank tests


@pytest.mark.parametrize("seed", range(6))
def test_wilcoxon_matches_scipy_exact_without_ties(seed):
    rng = np.random.default_rng(seed)
    n = 4 + seed
    a, b = rng.normal(0.3, 1.0, n), rng.normal(0.0, 1.0, n)
    ours, ref = wilcoxon_signed_rank(a, b), st.wilcoxon(a, b, method="exact")
    assert ours.statistic == ref.statistic
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.method == "exact"


def _signed_rank_sum(d, axis=-1):
    ranks = st.rankdata(np.abs(d), axis=axis)
    return np.sum(ranks * (d > 0), axis=axis)


def test_wilcoxon_with_ties_and_zeros_is_the_exact_conditional_test():
    # |differences| 1, 2, 2, 3, 3, 3 (ties) plus one zero that is dropped.
    d = np.array([1.0, -2.0, 2.0, 3.0, 3.0, 3.0, 0.0])
    ours = wilcoxon_signed_rank(d, np.zeros_like(d))
    nonzero = d[d != 0]
    # Reference: exact sign-flip distribution of R+ over the tied ranks, enumerated by SciPy.
    ref = st.permutation_test(
        (nonzero,), _signed_rank_sum, permutation_type="samples", n_resamples=np.inf,
        alternative="two-sided",
    )
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert ours.method == "exact (tied ranks)"
    assert "1 zero difference" in ours.note
    ranks = st.rankdata(np.abs(nonzero))
    assert ours.statistic == min(ranks[nonzero > 0].sum(), ranks[nonzero < 0].sum())


def test_wilcoxon_cannot_reach_significance_with_three_pairs():
    res = wilcoxon_signed_rank([10.0, 11.0, 12.0], [1.0, 2.0, 3.0])
    assert res.pvalue == pytest.approx(0.25)  # 2 / 2^3: the floor of the exact test
    assert wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0]).pvalue == 1.0


def test_mann_whitney_matches_scipy():
    a, b = [1.2, 3.4, 2.2, 5.0], [0.1, 0.5, 2.0, 0.7, 0.3]
    ref = st.mannwhitneyu(a, b, method="exact")
    ours = mann_whitney(a, b)
    assert (ours.statistic, ours.pvalue) == pytest.approx((ref.statistic, ref.pvalue))


# --------------------------------------------------------------------------- permutation


@pytest.mark.parametrize("seed", range(3))
def test_permutation_test_exact_matches_scipy(seed):
    a, b = _paired(seed, n=9, shift=0.6)
    ours = paired_permutation_test(a, b)
    ref = st.permutation_test((a, b), _mean_diff, permutation_type="samples",
                              n_resamples=np.inf, alternative="two-sided")
    assert ours.method == "exact"
    assert ours.pvalue == pytest.approx(ref.pvalue, rel=1e-12)


def test_permutation_test_monte_carlo_is_seeded_and_close_to_exact():
    a, b = _paired(3, n=20, shift=0.5)
    first, again = paired_permutation_test(a, b, seed=1), paired_permutation_test(a, b, seed=1)
    assert first.pvalue == again.pvalue
    assert first.pvalue != paired_permutation_test(a, b, seed=2).pvalue
    assert first.method.startswith("Monte Carlo")
    ref = st.permutation_test((a, b), _mean_diff, permutation_type="samples",
                              n_resamples=50_000, rng=np.random.default_rng(0))
    # Monte Carlo standard error at p ~ 0.01 with 10,000 draws is ~0.001.
    assert first.pvalue == pytest.approx(ref.pvalue, abs=0.005)
    assert first.pvalue > 0


# --------------------------------------------------------------------------- effect sizes


def test_cohens_dz_is_mean_over_sd_of_differences():
    a, b = _paired(0)
    d = a - b
    es = cohens_dz(a, b)
    assert es.value == pytest.approx(d.mean() / d.std(ddof=1), rel=1e-12)
    assert es.ci_low < es.value < es.ci_high
    swapped = cohens_dz(b, a)
    assert (swapped.value, swapped.ci_low, swapped.ci_high) == pytest.approx(
        (-es.value, -es.ci_high, -es.ci_low), rel=1e-8)


def test_cohens_dz_interval_inverts_the_noncentral_t():
    a, b = _paired(1, n=7, shift=1.0)
    es = cohens_dz(a, b, confidence=0.9)
    t_obs, df = es.value * math.sqrt(7), 6
    assert st.nct.cdf(t_obs, df, es.ci_low * math.sqrt(7)) == pytest.approx(0.95, abs=1e-7)
    assert st.nct.cdf(t_obs, df, es.ci_high * math.sqrt(7)) == pytest.approx(0.05, abs=1e-7)


def test_effect_size_intervals_shrink_with_n():
    rng = np.random.default_rng(5)
    widths = []
    for n in (5, 20, 80):
        diff = rng.normal(0.5, 1.0, n)
        es = cohens_dz(diff, np.zeros(n))
        assert es.ci_low <= es.value <= es.ci_high
        widths.append(es.ci_high - es.ci_low)
    assert widths[0] > widths[1] > widths[2]


@pytest.mark.parametrize("seed", range(12))
def test_effect_size_intervals_agree_with_their_t_tests(seed):
    # The noncentral-t interval excludes 0 exactly when the matching t-test has p < 0.05.
    a, b = _paired(seed, n=6, shift=0.9)
    dz = cohens_dz(a, b)
    assert (dz.ci_low > 0 or dz.ci_high < 0) == (st.ttest_rel(a, b).pvalue < 0.05)
    g = hedges_g(a, b[::-1] - 1.5)
    student = st.ttest_ind(a, b[::-1] - 1.5, equal_var=True).pvalue
    assert (g.ci_low > 0 or g.ci_high < 0) == (student < 0.05)


def test_cohens_dz_interval_coverage():
    rng = np.random.default_rng(11)
    true_dz, n, hits, reps = 0.8, 6, 0, 400
    for _ in range(reps):
        es = cohens_dz(rng.normal(true_dz, 1.0, n), np.zeros(n))
        hits += es.ci_low <= true_dz <= es.ci_high
    assert 0.92 <= hits / reps <= 0.98


def test_hedges_g_is_bias_corrected_cohens_d():
    rng = np.random.default_rng(2)
    a, b = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 1.0, 8)
    df = 12
    pooled = math.sqrt((5 * a.var(ddof=1) + 7 * b.var(ddof=1)) / df)
    d = (a.mean() - b.mean()) / pooled
    g = hedges_g(a, b)
    assert g.value == pytest.approx(d * (1 - 3 / (4 * df - 1)), rel=1e-3)  # Hedges' approximation
    assert abs(g.value) < abs(d)
    assert g.ci_low < g.value < g.ci_high


# --------------------------------------------------------------------------- corrections


def test_holm_hand_computed():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    # 4 tests: 0.005*4, then 0.011*3 = 0.033, 0.02*2 = 0.04, 0.5*1 -> running max keeps order.
    assert holm([0.5, 0.011, 0.005, 0.02]) == pytest.approx([0.5, 0.033, 0.02, 0.04])


def test_bonferroni_and_holm_properties():
    p = [0.001, 0.2, 0.04, 0.6, 0.03]
    assert bonferroni(p) == pytest.approx([0.005, 1.0, 0.2, 1.0, 0.15])
    h = holm(p)
    assert all(hi <= bi for hi, bi in zip(h, bonferroni(p), strict=True))
    assert all(hi >= pi for hi, pi in zip(h, p, strict=True))
    order = np.argsort(p)
    assert np.all(np.diff(np.asarray(h)[order]) >= 0)
    assert max(holm([0.9, 0.8])) == 1.0
    with pytest.raises(ValueError):
        holm([0.1, float("nan")])
    with pytest.raises(ValueError):
        bonferroni([1.2])


# --------------------------------------------------------------------------- equivalence


def test_tost_paired_matches_two_one_sided_scipy_tests():
    a, b = _paired(4, n=10, shift=0.1, noise=0.3)
    res = tost_paired(a, b, margin=0.05, relative=True, alpha=0.05)
    bound = 0.05 * b.mean()
    assert (res.low, res.high) == pytest.approx((-bound, bound))
    d = a - b
    p_lower = st.ttest_1samp(d, -bound, alternative="greater").pvalue
    p_upper = st.ttest_1samp(d, bound, alternative="less").pvalue
    assert (res.p_lower, res.p_upper) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert res.pvalue == pytest.approx(max(p_lower, p_upper), rel=1e-10)
    ci = st.ttest_1samp(d, 0.0).confidence_interval(0.90)  # the (1 - 2 alpha) interval
    assert (res.ci_low, res.ci_high) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert res.equivalent == (res.low < res.ci_low and res.ci_high < res.high)


def test_tost_declares_equivalence_only_without_a_shift():
    rng = np.random.default_rng(0)
    full = rng.normal(100.0, 5.0, 5)  # e.g. latency in ms of 5 runs
    merged = full * (1 + rng.normal(0.0, 0.003, 5))
    assert tost_paired(merged, full, margin=0.03).equivalent
    slower = full * (1.10 + rng.normal(0.0, 0.003, 5))
    res = tost_paired(slower, full, margin=0.03)
    assert not res.equivalent and res.pvalue > 0.5
    absolute = tost_paired(merged, full, margin=3.0, relative=False)
    assert (absolute.low, absolute.high) == (-3.0, 3.0) and absolute.equivalent


def test_tost_welch_matches_scipy():
    rng = np.random.default_rng(7)
    a, b = rng.normal(10.0, 0.2, 6), rng.normal(10.05, 0.4, 8)
    res = tost_welch(a, b, margin=0.5, relative=False)
    p_lower = st.ttest_ind(a + 0.5, b, equal_var=False, alternative="greater").pvalue
    p_upper = st.ttest_ind(a - 0.5, b, equal_var=False, alternative="less").pvalue
    assert (res.p_lower, res.p_upper) == pytest.approx((p_lower, p_upper), rel=1e-10)
    assert res.equivalent
    assert not tost_welch(a + 1.0, b, margin=0.5, relative=False).equivalent


# --------------------------------------------------------------------------- intervals


def test_bootstrap_ci_matches_scipy_and_is_seeded():
    values = np.random.default_rng(3).exponential(2.0, 40)
    ours = bootstrap_ci(values, np.mean, n_resamples=999, seed=4)
    ref = st.bootstrap((values,), np.mean, n_resamples=999, method="percentile",
                       rng=np.random.default_rng(4))
    assert (ours.ci_low, ours.ci_high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-12)
    assert ours.estimate == pytest.approx(values.mean())
    assert ours == bootstrap_ci(values, np.mean, n_resamples=999, seed=4)
    assert ours != bootstrap_ci(values, np.mean, n_resamples=999, seed=5)
    bca = bootstrap_ci(values, np.mean, n_resamples=999, seed=4, method="bca")
    assert bca.method == "bootstrap bca" and bca.ci_low < values.mean() < bca.ci_high


def test_bootstrap_ci_two_samples_paired_and_bca_fallback():
    a, b = _paired(6, n=30, shift=1.0)
    ours = bootstrap_ci((a, b), _mean_diff, seed=0, paired=True)
    ref = st.bootstrap((a, b), _mean_diff, n_resamples=2000, paired=True, method="percentile",
                       rng=np.random.default_rng(0))
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, rel=1e-12)
    assert ours.ci_low < ours.estimate < ours.ci_high
    constant = bootstrap_ci(np.full(10, 2.0), np.mean, method="bca")
    assert constant.method.startswith("bootstrap percentile")
    assert constant.ci_low == constant.ci_high == 2.0


def test_relative_difference_delta_method():
    a, b = _paired(8, n=6, shift=3.0, noise=0.5)
    iv = relative_difference_ci(a, b, paired=True)
    ratio = a.mean() / b.mean()
    assert iv.estimate == pytest.approx(ratio - 1)
    z = (a - ratio * b) / b.mean()
    half = st.t.ppf(0.975, 5) * z.std(ddof=1) / math.sqrt(6)
    assert (iv.ci_low, iv.ci_high) == pytest.approx((ratio - 1 - half, ratio - 1 + half))
    unpaired = relative_difference_ci(a, b, paired=False)
    assert unpaired.estimate == iv.estimate
    u_a, u_b = a.var(ddof=1) / 6, ratio**2 * b.var(ddof=1) / 6
    df = (u_a + u_b) ** 2 / (u_a**2 / 5 + u_b**2 / 5)
    half = st.t.ppf(0.975, df) * math.sqrt(u_a + u_b) / b.mean()
    expected = (ratio - 1 - half, ratio - 1 + half)
    assert (unpaired.ci_low, unpaired.ci_high) == pytest.approx(expected)
    with pytest.raises(DegenerateInputError):
        relative_difference_ci([1.0, 2.0, 3.0], [-1.0, 0.0, 1.0])


def test_relative_difference_delta_and_bootstrap_agree_for_many_runs():
    a, b = _paired(9, n=200, shift=2.0)
    delta = relative_difference_ci(a, b)
    boot = relative_difference_ci(a, b, method="bootstrap", n_resamples=2000)
    assert boot.estimate == delta.estimate
    assert boot.ci_low == pytest.approx(delta.ci_low, abs=0.01)
    assert boot.ci_high == pytest.approx(delta.ci_high, abs=0.01)


@pytest.mark.parametrize("paired", [True, False])
def test_relative_difference_coverage(paired):
    rng = np.random.default_rng(12)
    hits, reps = 0, 600
    for _ in range(reps):
        b = rng.normal(100.0, 4.0, 8)
        a = (b if paired else rng.normal(100.0, 4.0, 8)) * 1.2 + rng.normal(0.0, 3.0, 8)
        iv = relative_difference_ci(a, b, paired=paired)
        hits += iv.ci_low <= 0.2 <= iv.ci_high
    assert 0.92 <= hits / reps <= 0.98


# --------------------------------------------------------------------------- compare


def test_compare_needs_min_runs():
    res = compare([1.0, 2.0], [1.5, 2.5])
    assert res.status == res.outcome == "insufficient runs"
    assert res.p is None and res.test is None and res.effect is None
    assert compare([1.0, 2.0, 3.0], [1.5, 2.5, 2.0], min_n=4).outcome == "insufficient runs"


def test_compare_paired_fields():
    a, b = [12.1, 12.6, 12.3, 12.9], [9.0, 9.4, 9.1, 9.6]
    res = compare(a, b, label="latency")
    ref = st.ttest_rel(a, b)
    assert res.status == "ok" and res.outcome == "significant" and res.label == "latency"
    assert (res.n, res.n_a, res.n_b, res.paired) == (4, 4, 4, True)
    assert res.p == pytest.approx(ref.pvalue) and res.p_adjusted == res.p
    assert res.test == "paired t-test" and res.rank_test == "Wilcoxon signed-rank"
    assert res.rank_p == pytest.approx(st.wilcoxon(a, b, method="exact").pvalue)
    assert res.effect_name == "d_z" and res.effect_ci_low < res.effect < res.effect_ci_high
    assert res.diff == pytest.approx(np.mean(a) - np.mean(b))
    assert res.diff_ci_low < res.diff < res.diff_ci_high
    assert res.rel_diff == pytest.approx(np.mean(a) / np.mean(b) - 1)
    assert res.rel_diff_ci_low < res.rel_diff < res.rel_diff_ci_high
    assert res.tost_p is None and res.equivalent is None
    assert "cannot reach p < 0.05 with 4 pairs" in res.note
    json.dumps(res.as_dict())  # plain Python values, ready for the results store


def test_compare_equivalence_and_inconclusive():
    rng = np.random.default_rng(1)
    full = rng.normal(50.0, 3.0, 5)
    merged = full * (1 + rng.normal(0.0, 0.002, 5))
    eq = compare(merged, full, equivalence_margin=0.03)
    assert eq.outcome == "equivalent" and eq.equivalent and eq.tost_p < 0.05
    # Without a margin the same data are only "inconclusive": no "no difference" claim.
    assert compare(merged, full).outcome == "inconclusive"


def test_compare_unpaired_uses_welch_and_hedges():
    a, b = [0.81, 0.83, 0.82, 0.84], [0.70, 0.74, 0.71]
    res = compare(a, b, paired=False)
    assert res.test == "Welch t-test" and res.effect_name == "hedges_g"
    assert res.rank_test == "Mann-Whitney U" and (res.n, res.n_a, res.n_b) == (7, 4, 3)
    assert res.p == pytest.approx(st.ttest_ind(a, b, equal_var=False).pvalue)
    with pytest.raises(ValueError):
        compare([1, 2, 3], [1, 2], paired=True)


def test_correction_turns_a_significant_result_inconclusive():
    # Alone, this comparison has p ~ 0.02 < 0.05; in a family of four Holm needs p < 0.0125.
    a, b = [10.2, 10.9, 10.4, 11.3, 10.6], [10.0, 10.1, 10.3, 10.2, 10.1]
    alone = compare(a, b, label="target")
    assert alone.outcome == "significant" and 0.0125 < alone.p < 0.05
    family = [alone]
    for i, shift in enumerate((0.0, 0.05, -0.05)):
        rng = np.random.default_rng(i)
        x = rng.normal(5.0, 0.5, 5)
        family.append(compare(x + shift + rng.normal(0, 0.5, 5), x, label=f"other{i}"))
    family.append(compare([1.0, 2.0], [2.0, 3.0], label="too few"))
    corrected = apply_correction(family, method="holm")
    assert [c.label for c in corrected] == [c.label for c in family]
    target = corrected[0]
    assert target.outcome == "inconclusive" and target.p_adjusted > 0.05
    assert target.p == alone.p and target.correction == "holm" and target.family_size == 4
    assert corrected[-1] == family[-1]  # untested: passed through, not counted in the family
    expected = holm([c.p for c in family[:4]])
    assert [c.p_adjusted for c in corrected[:4]] == pytest.approx(expected)
    bonf = apply_correction(family, method="bonferroni")
    assert bonf[0].p_adjusted == pytest.approx(min(1.0, 4 * alone.p))


def test_correction_applies_to_tost_pvalues_too():
    rng = np.random.default_rng(3)
    comparisons = []
    for i in range(3):
        full = rng.normal(50.0, 3.0, 4)
        comparisons.append(compare(full * (1 + rng.normal(0, 0.004 * (i + 1), 4)), full,
                                   equivalence_margin=0.02, label=str(i)))
    corrected = apply_correction(comparisons)
    expected = holm([c.tost_p for c in comparisons])
    assert [c.tost_p_adjusted for c in corrected] == pytest.approx(expected)
    for c in corrected:
        assert isinstance(c, Comparison)
        assert c.equivalent == (c.tost_p_adjusted < 0.05)
        if c.p_adjusted >= 0.05:
            assert c.outcome == ("equivalent" if c.equivalent else "inconclusive")
    with pytest.raises(ValueError):
        apply_correction(comparisons, method="fdr")


def test_correction_turns_an_equivalence_inconclusive():
    # Merged vs full latency (ms) in three settings, 4 runs each: each alone is within +/-2%
    # (TOST p ~ 0.02-0.03), but Holm over the three TOST p-values lifts all of them above 0.05.
    data = [
        ([51.82, 50.8, 49.31, 46.11], [50.99, 51.09, 49.48, 46.12]),
        ([54.07, 55.4, 51.16, 51.31], [54.73, 55.26, 51.68, 50.94]),
        ([42.94, 53.53, 48.98, 52.2], [42.59, 53.23, 49.77, 51.71]),
    ]
    family = [compare(a, b, equivalence_margin=0.02) for a, b in data]
    assert [c.outcome for c in family] == ["equivalent"] * 3
    assert all(0.01 < c.tost_p < 0.05 for c in family)
    corrected = apply_correction(family)
    assert [c.outcome for c in corrected] == ["inconclusive"] * 3
    assert all(0.05 < c.tost_p_adjusted < 0.1 and c.equivalent is False for c in corrected)


# --------------------------------------------------------------------------- variance


def _runs_table(method_effect: float, noise: float, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for m, method in enumerate(("full", "lora", "ia3")):
        for s in range(4):
            rows.append({"method": method, "seed": s,
                         "acc": 0.8 + method_effect * m + rng.normal(0.0, noise)})
    return pd.DataFrame(rows)


def test_variance_decomposition_balanced_matches_groupby():
    df = _runs_table(0.02, 0.01)
    res = variance_decomposition(df, "acc")
    y, grand = df["acc"], df["acc"].mean()
    ss_method = df.groupby("method")["acc"].agg(lambda g: len(g) * (g.mean() - grand) ** 2).sum()
    ss_seed = df.groupby("seed")["acc"].agg(lambda g: len(g) * (g.mean() - grand) ** 2).sum()
    total = ((y - grand) ** 2).sum()
    assert res.sum_squares["method"] == pytest.approx(ss_method, rel=1e-9)
    assert res.sum_squares["seed"] == pytest.approx(ss_seed, rel=1e-9)
    assert res.sum_squares["residual"] == pytest.approx(total - ss_method - ss_seed, rel=1e-9)
    assert res.dof == {"method": 2, "seed": 3, "residual": 6}
    assert sum(res.shares.values()) == pytest.approx(1.0)
    # Balanced: the order of the factors does not matter.
    swapped = variance_decomposition(df, "acc", factors=("seed", "method"))
    assert swapped.shares["method"] == pytest.approx(res.shares["method"])


def test_variance_decomposition_puts_variance_on_method():
    res = variance_decomposition(_runs_table(0.05, 1e-4), "acc")
    assert res.shares["method"] > 0.999
    assert res.shares["seed"] + res.shares["residual"] < 1e-3


def test_variance_decomposition_unbalanced_is_sequential():
    df = _runs_table(0.02, 0.01, seed=1).drop(index=[0, 5, 6]).reset_index(drop=True)
    res = variance_decomposition(df, "acc")
    grand = df["acc"].mean()
    ss_method = df.groupby("method")["acc"].agg(lambda g: len(g) * (g.mean() - grand) ** 2).sum()
    assert res.sum_squares["method"] == pytest.approx(ss_method, rel=1e-9)  # first factor: marginal
    assert sum(res.sum_squares.values()) == pytest.approx(res.total_ss, rel=1e-9)
    assert sum(res.shares.values()) == pytest.approx(1.0)
    with pytest.raises(DegenerateInputError):
        variance_decomposition(df.assign(acc=0.5), "acc")
    with pytest.raises(ValueError, match="columns"):
        variance_decomposition(df, "acc", factors=("task",))
