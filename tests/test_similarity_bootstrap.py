"""Bootstrap intervals over probe examples (peftlab.similarity_bootstrap) against direct
computation on the resampled rows.

    .venv/bin/python -m pytest tests/test_similarity_bootstrap.py -q
"""

from __future__ import annotations

import numpy as np
import pytest

from peftlab.errors import PeftlabError
from peftlab.similarity import centered_cosine_similarity, linear_cka
from peftlab.similarity_bootstrap import (
    generic_bootstrap,
    linear_cka_bootstrap,
    mean_bootstrap,
    resample_counts,
    weighted_linear_cka,
)


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 12))
    y = x @ rng.standard_normal((12, 9)) * 0.3 + rng.standard_normal((40, 9)) + 5.0
    return x, y


def _debiased_on_expanded(x, y, idx):
    """Song et al.'s unbiased HSIC on the resample's rows, with every pair of positions that
    holds the same example zeroed (not only the diagonal), straight from the definition."""
    xr = x[idx] - x.mean(axis=0)
    yr = y[idx] - y.mean(axis=0)
    same = idx[:, None] == idx[None, :]
    k, l_ = xr @ xr.T, yr @ yr.T
    k[same] = 0.0
    l_[same] = 0.0
    n = idx.size

    def hsic(a, b):
        return (np.sum(a * b) + a.sum() * b.sum() / ((n - 1) * (n - 2))
                - 2 / (n - 2) * a.sum(axis=0) @ b.sum(axis=0))

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


def test_all_ones_is_linear_cka(xy):
    x, y = xy
    for debiased in (True, False):
        got = weighted_linear_cka(x, y, np.ones((1, 40)), debiased)[0]
        assert got == pytest.approx(linear_cka(x, y, debiased=debiased), rel=1e-10)


def test_resamples_match_the_definition_on_resampled_rows(xy):
    x, y = xy
    counts = resample_counts(40, 5, seed=3)
    rng = np.random.default_rng(3)
    idx = rng.integers(0, 40, size=(5, 40))  # the draws resample_counts makes
    assert np.array_equal(counts, np.stack([np.bincount(r, minlength=40) for r in idx]))
    deb = weighted_linear_cka(x, y, counts, debiased=True)
    biased = weighted_linear_cka(x, y, counts, debiased=False)
    for i, rows in enumerate(idx):
        assert deb[i] == pytest.approx(_debiased_on_expanded(x, y, rows), rel=1e-9)
        # biased CKA has no pairs to exclude: it is the measure on the resampled rows
        assert biased[i] == pytest.approx(linear_cka(x[rows], y[rows]), rel=1e-9)
    # and the generic fallback recomputes on the same rows
    gen = generic_bootstrap(lambda a, b: linear_cka(a, b), x, y, 5, seed=3)
    assert gen.values == pytest.approx(biased, rel=1e-9)


def test_interval_is_seeded_and_the_inputs_are_untouched(xy):
    x, y = xy
    x0 = x.copy()
    a = linear_cka_bootstrap(x, y, 50, seed=1)
    b = linear_cka_bootstrap(x, y, 50, seed=1)
    assert np.array_equal(x, x0)  # centred on private copies
    assert a.as_dict() == b.as_dict() and a.n_resamples == 50 and a.undefined == 0
    assert a.estimate == pytest.approx(linear_cka(x, y, debiased=True))
    assert a.ci_low < a.estimate < a.ci_high
    assert linear_cka_bootstrap(x, y, 50, seed=2).ci_low != a.ci_low


def test_mean_bootstrap_of_per_example_cosines(xy):
    x, _ = xy
    rng = np.random.default_rng(5)
    y = x + 0.5 * rng.standard_normal(x.shape)
    rows = centered_cosine_similarity(x, y).per_row
    res = mean_bootstrap(rows, 30, seed=4)
    assert res.estimate == pytest.approx(rows.mean())
    assert res.values == pytest.approx(resample_counts(40, 30, 4) @ rows / 40)
    with pytest.raises(PeftlabError, match="finite"):
        mean_bootstrap(np.array([1.0, np.nan]), 5)


def test_bad_inputs_are_refused(xy):
    x, y = xy
    with pytest.raises(PeftlabError, match="same examples"):
        weighted_linear_cka(x, y[:30], np.ones((1, 40)))
    with pytest.raises(PeftlabError, match="at least 4"):
        weighted_linear_cka(x[:3], y[:3], np.ones((1, 3)))
    with pytest.raises(PeftlabError, match="confidence"):
        linear_cka_bootstrap(x, y, 5, confidence=1.5)
