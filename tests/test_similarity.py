"""Similarity measures checked against identities and invariances, not numbers copied from a run."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from peftlab import similarity
from peftlab.errors import DegenerateInputError, PeftlabError
from peftlab.similarity import (
    centered_cosine_similarity,
    cka_from_grams,
    cka_null,
    cosine_null,
    cosine_similarity,
    gram_linear,
    gram_rbf,
    knn_overlap,
    linear_cka,
    procrustes_distance,
    rbf_cka,
)


def _related_pair(seed: int = 0, n: int = 60, dx: int = 20, dy: int = 30):
    """x and a noisy linear function of x: CKA clearly between 0 and 1."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx))
    y = x @ rng.standard_normal((dx, dy)) + rng.standard_normal((n, dy))
    return x, y


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


def _reference_cka(x: np.ndarray, y: np.ndarray, debiased: bool) -> float:
    """CKA with the HSIC estimators written out as in the papers, on linear Gram matrices."""
    n = x.shape[0]
    k, l_ = x @ x.T, y @ y.T
    ones = np.ones(n)

    def hsic(a, b):
        if not debiased:  # Gretton et al. 2005: tr(K H L H) / (n-1)^2
            h = np.eye(n) - np.ones((n, n)) / n
            return np.trace(a @ h @ b @ h) / (n - 1) ** 2
        # Song et al. 2012, with the diagonals set to zero.
        a = a - np.diag(np.diag(a))
        b = b - np.diag(np.diag(b))
        return (
            np.trace(a @ b)
            + (ones @ a @ ones) * (ones @ b @ ones) / ((n - 1) * (n - 2))
            - 2.0 / (n - 2) * (ones @ a @ b @ ones)
        ) / (n * (n - 3))

    return hsic(k, l_) / np.sqrt(hsic(k, k) * hsic(l_, l_))


# ----------------------------------------------------------------------------- linear CKA


@pytest.mark.parametrize("debiased", [False, True])
def test_gram_form_equals_feature_form(debiased):
    x, y = _related_pair()
    from_grams = cka_from_grams(gram_linear(x), gram_linear(y), debiased=debiased)
    assert 0.3 < from_grams < 0.99  # a non-trivial value, so agreement means something
    paths = [
        linear_cka(x, y, debiased),
        linear_cka(x, y, debiased, method="features"),
        linear_cka(x, y, debiased, method="gram"),
        linear_cka(x, y, debiased, method="features", chunk_size=3),  # 7 column blocks
        linear_cka(x, y, debiased, method="gram", chunk_size=7),  # 9 row blocks, last short
    ]
    assert paths == pytest.approx([from_grams] * len(paths), abs=1e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_linear_cka_matches_written_out_hsic(debiased):
    for seed in range(3):
        x, y = _related_pair(seed, n=40, dx=15, dy=8)
        assert linear_cka(x, y, debiased) == pytest.approx(_reference_cka(x, y, debiased), abs=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_identity_and_invariances(debiased):
    x, y = _related_pair(1)
    base = linear_cka(x, y, debiased)
    assert linear_cka(x, x, debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x, 3.7 * x @ _rotation(20, 2), debiased) == pytest.approx(1.0, abs=1e-12)
    assert linear_cka(x @ _rotation(20, 3), y, debiased) == pytest.approx(base, abs=1e-10)
    assert linear_cka(x, 0.01 * y @ _rotation(30, 4), debiased) == pytest.approx(base, abs=1e-10)
    # Column centring is part of CKA: a shared offset changes nothing.
    assert linear_cka(x + 100.0, y - 5.0, debiased) == pytest.approx(base, abs=1e-9)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_not_invariant_to_general_invertible_map(debiased):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((100, 20))
    # Invertible (condition number 1e4) but neither orthogonal nor isotropic.
    a = _rotation(20, 6) @ np.diag(np.logspace(-2, 2, 20)) @ _rotation(20, 7)
    assert linear_cka(x, x @ a, debiased) < 0.6


def test_independent_gaussians_debiased_near_zero_biased_at_its_floor():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((500, 2048), dtype=np.float32)
    y = rng.standard_normal((500, 2048), dtype=np.float32)
    assert abs(linear_cka(x, y, debiased=True)) < 0.02
    biased = linear_cka(x, y)
    assert biased > 0.7  # about 1 / (1 + n/d) = 0.80: high, yet meaningless
    null = cka_null(x, y, n_permutations=50, seed=0)
    assert null.observed == pytest.approx(biased, abs=1e-9)
    assert abs(null.null_mean - biased) < 0.02
    assert null.p_value > 0.05


def test_torch_input_gives_numpy_result():
    x, y = _related_pair(2)
    x32, y32 = x.astype(np.float32), y.astype(np.float32)
    for debiased in (False, True):
        expected = linear_cka(x32, y32, debiased)
        assert linear_cka(torch.from_numpy(x32), torch.from_numpy(y32), debiased) == expected
        assert linear_cka(torch.from_numpy(x), y, debiased) == linear_cka(x, y, debiased)
    # bfloat16 has no NumPy dtype; it must still be accepted.
    assert linear_cka(torch.from_numpy(x).bfloat16(), x) > 0.99


def test_inputs_are_not_modified():
    x, y = _related_pair(3)
    x0, y0 = x.copy(), y.copy()
    tx = torch.from_numpy(x.copy())
    linear_cka(x, y, True)
    cka_null(x, y, n_permutations=3)
    procrustes_distance(x, y)
    knn_overlap(x, y, k=3)
    linear_cka(tx, y)
    assert np.array_equal(x, x0) and np.array_equal(y, y0)
    assert np.array_equal(tx.numpy(), x0)


# ----------------------------------------------------------------------------- RBF CKA, null


@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka(debiased):
    x, y = _related_pair(4)
    assert rbf_cka(x, x, debiased=debiased) == pytest.approx(1.0, abs=1e-12)
    value = rbf_cka(x, y, sigma=0.5, debiased=debiased)
    assert value == pytest.approx(
        cka_from_grams(gram_rbf(x, 0.5), gram_rbf(y, 0.5), debiased), abs=1e-10
    )
    # The bandwidth is relative to the median distance: scaling and rotating change nothing.
    assert rbf_cka(5.0 * x @ _rotation(20, 9), y, 0.5, debiased) == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("kernel", ["linear", "rbf"])
@pytest.mark.parametrize("debiased", [False, True])
def test_cka_null(kernel, debiased):
    x, y = _related_pair(5)
    measure = linear_cka if kernel == "linear" else rbf_cka
    result = cka_null(x, y, n_permutations=40, seed=3, debiased=debiased, kernel=kernel)
    assert result.observed == pytest.approx(measure(x, y, debiased=debiased), abs=1e-10)
    assert result.values.shape == (40,) and result.n_permutations == 40
    assert result.p_value == (1 + np.sum(result.values >= result.observed)) / 41
    assert result.p_value == pytest.approx(1 / 41)  # a real relation beats every shuffle
    assert result.null_q95 == pytest.approx(np.quantile(result.values, 0.95))
    # Each null value is the measure on a shuffled pairing, reproducible from the seed.
    perm = np.random.default_rng(3).permutation(60)
    assert result.values[0] == pytest.approx(measure(x, y[perm], debiased=debiased), abs=1e-10)
    again = cka_null(x, y, n_permutations=40, seed=3, debiased=debiased, kernel=kernel)
    assert np.array_equal(again.values, result.values)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_null_feature_path_equals_gram_path(monkeypatch, debiased):
    x, y = _related_pair(6)
    by_gram = cka_null(x, y, n_permutations=10, debiased=debiased, chunk_size=16)
    monkeypatch.setattr(similarity, "NULL_GRAM_BYTES", 0)  # forces the feature-space path
    by_features = cka_null(x, y, n_permutations=10, debiased=debiased, chunk_size=4)
    assert by_features.observed == pytest.approx(by_gram.observed, abs=1e-10)
    np.testing.assert_allclose(by_features.values, by_gram.values, atol=1e-10)


# ----------------------------------------------------------------------------- other measures


def test_cosine_similarity_per_row():
    x, y = _related_pair(7, dy=20)
    result = cosine_similarity(x, y)
    direct = np.array(
        [a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) for a, b in zip(x, y, strict=True)]
    )
    np.testing.assert_allclose(result.per_row, direct, atol=1e-12)
    assert result.per_row.shape == (60,)
    assert result.mean == pytest.approx(direct.mean(), abs=1e-12)
    assert cosine_similarity(x, 2.0 * x).mean == pytest.approx(1.0)


def test_centered_cosine_removes_the_probe_set_mean():
    x, y = _related_pair(7, dy=20)
    result = centered_cosine_similarity(x + 5.0, y - 3.0)  # offsets cancel
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    direct = np.einsum("ij,ij->i", xc, yc) / (
        np.linalg.norm(xc, axis=1) * np.linalg.norm(yc, axis=1))
    np.testing.assert_allclose(result.per_row, direct, atol=1e-12)
    assert result.mean == pytest.approx(direct.mean(), abs=1e-12)
    assert centered_cosine_similarity(x, 2.0 * x + 7.0).mean == pytest.approx(1.0)


def _massive_activation_pair(related: bool, seed: int = 0, n: int = 300, d: int = 64):
    """Hidden-state-like data: 3 features with the same huge value on every example (massive
    activations) plus ordinary features, unrelated between x and y unless `related`."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = x + 0.5 * rng.standard_normal((n, d)) if related else rng.standard_normal((n, d))
    x[:, :3] += 200.0
    y[:, :3] += 180.0
    return x, y


def test_massive_activations_fool_uncentred_cosine_not_centred_cosine():
    x, y = _massive_activation_pair(related=False)
    # Unrelated examples, yet the uncentred cosine is ~1: the constant dimensions dominate ...
    assert cosine_similarity(x, y).mean > 0.99
    # ... and its shuffled baseline is ~1 as well, so it carries no evidence of similarity.
    raw = cosine_null(x, y, n_permutations=200, centered=False)
    assert raw.null_mean > 0.99 and raw.p_value > 0.01
    # Centred cosine stays at its shuffled baseline (about 0).
    centred = cosine_null(x, y, n_permutations=200)
    assert centred.observed == pytest.approx(centered_cosine_similarity(x, y).mean)
    assert abs(centred.observed) < 0.05 and abs(centred.null_mean) < 0.01
    assert centred.observed < centred.null_q95 + 0.01 and centred.p_value > 0.01
    # Related examples clear the centred baseline by far.
    rx, ry = _massive_activation_pair(related=True)
    related = cosine_null(rx, ry, n_permutations=200)
    assert related.observed > 0.8 > related.null_q95
    assert related.p_value == pytest.approx(1 / 201)


def test_cosine_null_is_seeded_like_cka_null():
    x, y = _related_pair(3, dy=20)
    first = cosine_null(x, y, n_permutations=50, seed=4)
    assert np.array_equal(first.values, cosine_null(x, y, n_permutations=50, seed=4).values)
    assert not np.array_equal(first.values, cosine_null(x, y, n_permutations=50, seed=5).values)
    # The same permutations as cka_null draws: numpy.random.default_rng(seed).permutation(n).
    rng = np.random.default_rng(4)
    xc, yc = x - x.mean(axis=0), y - y.mean(axis=0)
    perm = rng.permutation(60)
    expected = centered_cosine_similarity(xc, yc[perm]).mean
    assert first.values[0] == pytest.approx(expected, abs=1e-12)
    assert first.null_q95 == pytest.approx(np.quantile(first.values, 0.95))
    assert first.n_permutations == 50 and first.values.shape == (50,)
    with pytest.raises(PeftlabError, match="n_permutations"):
        cosine_null(x, y, n_permutations=0)


def test_procrustes_distance():
    x, y = _related_pair(8, dy=20)
    assert procrustes_distance(x, 3.0 * x @ _rotation(20, 10) + 1.0) == pytest.approx(0.0, abs=1e-9)
    # Against the definition: min over orthogonal Q of ||X - Y Q||_F^2, normalised inputs.
    xc = (x - x.mean(0)) / np.linalg.norm(x - x.mean(0))
    yc = (y - y.mean(0)) / np.linalg.norm(y - y.mean(0))
    q, _ = scipy.linalg.orthogonal_procrustes(yc, xc)
    expected = np.linalg.norm(xc - yc @ q) ** 2
    assert procrustes_distance(x, y) == pytest.approx(expected, abs=1e-10)
    # Wide inputs (d > n) take the QR path through min(n, d)-sized factors.
    rng = np.random.default_rng(9)
    wide = rng.standard_normal((30, 100))
    assert procrustes_distance(wide, wide @ _rotation(100, 11)) == pytest.approx(0.0, abs=1e-9)
    assert 0.0 < procrustes_distance(wide, rng.standard_normal((30, 80))) <= 2.0


def test_knn_overlap():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((200, 16))
    # Cosine neighbourhoods survive rotation and scaling; chunking does not change the answer.
    assert knn_overlap(x, 4.0 * x @ _rotation(16, 12), k=10) == 1.0
    assert knn_overlap(x, x @ _rotation(16, 13), k=5, chunk_size=7) == 1.0
    independent = knn_overlap(x, rng.standard_normal((200, 16)), k=10)
    assert abs(independent - 10 / 199) < 0.03
    partial = knn_overlap(x, x + 0.5 * rng.standard_normal((200, 16)), k=10)
    assert independent < partial < 1.0


# ----------------------------------------------------------------------------- errors


def test_input_errors_name_the_arrays():
    x, y = _related_pair(11)
    with pytest.raises(PeftlabError, match=r"x has 60 rows.*y has 59"):
        linear_cka(x, y[:59])
    with pytest.raises(PeftlabError, match="at least 4 examples"):
        linear_cka(x[:3], y[:3], debiased=True)
    assert np.isfinite(linear_cka(x[:3], y[:3]))  # the biased form is defined at n=3
    bad = y.copy()
    bad[4, 2] = np.nan
    with pytest.raises(PeftlabError, match=r"y .*NaN"):
        linear_cka(x, bad)
    with pytest.raises(PeftlabError, match=r"y .*NaN"):
        cosine_similarity(x[:, :20], np.where(np.isnan(bad), np.inf, bad)[:, :20])
    with pytest.raises(PeftlabError, match="2-D"):
        linear_cka(x[:, 0], y[:, 0])
    with pytest.raises(PeftlabError, match="same number of columns"):
        cosine_similarity(x, y)
    with pytest.raises(PeftlabError, match="k must be"):
        knn_overlap(x, y, k=60)
    with pytest.raises(PeftlabError, match="kernel"):
        cka_null(x, y, kernel="poly")


@pytest.mark.parametrize(
    "measure",
    [
        lambda x, y: linear_cka(x, y),
        lambda x, y: linear_cka(x, y, debiased=True, method="features"),
        lambda x, y: rbf_cka(x, y),
        lambda x, y: cka_null(x, y, n_permutations=2),
        lambda x, y: procrustes_distance(x, y),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_constant_representation_is_degenerate(measure, dtype):
    x, _ = _related_pair(12)
    # Identical rows (e.g. a layer that reads the same token for every example). In float64,
    # 0.1 does not centre to exact zeros: the rounding residue must still count as constant.
    constant = np.full((60, 30), 0.1, dtype=dtype)
    with pytest.raises(DegenerateInputError, match=r"y \(shape \(60, 30\)\) has identical rows"):
        measure(x, constant)
    with pytest.raises(DegenerateInputError, match=r"^x "):
        measure(constant, x)


def test_zero_row_is_degenerate_for_cosine_measures():
    x, y = _related_pair(13, dy=20)
    y[7] = 0.0
    with pytest.raises(DegenerateInputError, match=r"y .*row 7") as info:
        cosine_similarity(x, y)
    assert info.value.reason == str(info.value)
    with pytest.raises(DegenerateInputError, match="row 7"):
        knn_overlap(x, y)
    y = x[:, :20].copy()
    y[5] = np.delete(y, 5, axis=0).mean(axis=0)  # an example at the probe-set mean
    with pytest.raises(DegenerateInputError, match="probe-set mean"):
        centered_cosine_similarity(x[:, :20], y)
