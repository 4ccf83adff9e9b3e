"""Weight-update statistics checked on planted updates with known structure."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from peftlab.errors import DegenerateInputError, PeftlabError
from peftlab.weights import effective_rank, lora_delta, rank_cutoff, rank_energy, update_stats


def _base(seed: int = 0, out: int = 64, in_: int = 48):
    """A random base matrix and its thin SVD."""
    w = np.random.default_rng(seed).standard_normal((out, in_))
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    return w, u, s, vt


def test_no_intruders_when_update_rescales_base_directions():
    w, u, s, vt = _base()
    rng = np.random.default_rng(1)
    tuned = u @ np.diag(s * (1 + 0.05 * rng.standard_normal(s.size))) @ vt
    tuned += 1e-4 * rng.standard_normal(w.shape)
    stats = update_stats(w, tuned, top_k=10, epsilon=0.5)
    assert stats.intruder_dims == 0
    assert 0 < stats.relative_update < 0.1


def test_planted_rank_one_update_is_an_intruder():
    w, u, s, vt = _base()
    # A direction spread evenly over the base's 16 weakest left singular vectors: its largest
    # |cosine| with any base singular vector is 1/4 < epsilon.
    direction = u[:, -16:].sum(axis=1) / 4.0
    planted = 2.0 * s[0] * np.outer(direction, vt[5])  # large enough to lead the spectrum
    stats = update_stats(w, w + planted, top_k=10, epsilon=0.5)
    assert stats.intruder_dims >= 1
    assert stats.effective_rank == pytest.approx(1.0)
    assert stats.rank_energy == 1
    assert stats.update_singular_values[0] == pytest.approx(2.0 * s[0])
    assert stats.update_fro == pytest.approx(np.linalg.norm(planted))
    assert stats.base_fro == pytest.approx(np.linalg.norm(w))
    assert stats.relative_update == pytest.approx(stats.update_fro / stats.base_fro)


@pytest.mark.parametrize("r", [1, 3, 8])
def test_effective_rank_of_planted_rank_r_update(r):
    w, _, _, _ = _base(2)
    rng = np.random.default_rng(3)
    left, _ = np.linalg.qr(rng.standard_normal((64, r)))
    right, _ = np.linalg.qr(rng.standard_normal((48, r)))
    stats = update_stats(w, w + 0.3 * left @ right.T)  # r equal singular values of 0.3
    assert stats.effective_rank == pytest.approx(r, rel=1e-6)
    assert stats.rank_energy == math.ceil(0.9 * r - 1e-9)


def test_rank_energy_and_effective_rank_on_known_spectra():
    # sigma^2 = 9, 1, 1 of 11: 81.8% in the first value, 90.9% in the first two.
    assert rank_energy(np.array([1.0, 3.0, 1.0]), energy=0.8) == 1
    assert rank_energy(np.array([3.0, 1.0, 1.0]), energy=0.9) == 2
    assert rank_energy(np.array([1.0, 1.0]), energy=0.5) == 1
    assert rank_energy(np.array([3.0, 1.0, 1.0]), energy=1.0) == 3
    p = np.array([3.0, 1.0]) / 4.0
    assert effective_rank(np.array([3.0, 1.0, 0.0])) == pytest.approx(math.exp(-(p @ np.log(p))))


def test_zero_update():
    w, _, _, _ = _base(4)
    stats = update_stats(w, w.copy())
    assert stats.update_fro == 0.0
    assert stats.relative_update == 0.0
    assert stats.effective_rank == 0.0
    assert stats.rank_energy == 0
    assert stats.intruder_dims == 0
    values = stats.as_dict()
    assert all(np.isfinite(v).all() for v in values.values() if not isinstance(v, str))
    assert stats.numerical_rank == 0 and stats.source == "difference"
    assert values["top_k"] == 10 and values["epsilon"] == 0.5 and values["energy"] == 0.9


def test_lora_delta_and_torch_inputs():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((4, 48))  # (r, in)
    b = rng.standard_normal((64, 4))  # (out, r)
    delta = lora_delta(a, b, scaling=2.0)
    np.testing.assert_allclose(delta, 2.0 * b @ a)
    np.testing.assert_allclose(lora_delta(torch.from_numpy(a), torch.from_numpy(b), 2.0), delta)
    w, _, _, _ = _base(6)
    stats = update_stats(torch.from_numpy(w).float(), torch.from_numpy(w + delta).float())
    assert stats.rank_energy <= 4 and 1.0 <= stats.effective_rank <= 4.0
    from_numpy = update_stats(np.float32(w), np.float32(w + delta))
    for key in ("update_fro", "base_fro", "effective_rank", "rank_energy", "intruder_dims"):
        assert getattr(stats, key) == pytest.approx(getattr(from_numpy, key))
    with pytest.raises(PeftlabError, match="disagree on r"):
        lora_delta(a, b[:, :3], 1.0)


def test_top_k_is_capped_and_inputs_checked():
    w, _, _, _ = _base(7, out=12, in_=6)
    assert update_stats(w, 1.1 * w, top_k=50).top_k == 6
    with pytest.raises(PeftlabError, match="same shape"):
        update_stats(w, w[:, :5])
    with pytest.raises(PeftlabError, match="NaN"):
        update_stats(w, np.full_like(w, np.nan))
    with pytest.raises(PeftlabError, match="2-D"):
        update_stats(w[0], w[0])
    with pytest.raises(DegenerateInputError, match="all zeros"):
        update_stats(np.zeros((4, 4)), np.eye(4))


def test_reused_base_singular_vectors_give_the_same_stats():
    from peftlab.weights import base_left_singular_vectors

    rng = np.random.default_rng(3)
    base = rng.normal(size=(48, 32))
    tuned = base + 0.5 * np.outer(rng.normal(size=48), rng.normal(size=32))
    fresh = update_stats(base, tuned, top_k=5)
    reused = update_stats(base, tuned, top_k=5, base_u=base_left_singular_vectors(base))
    assert fresh.as_dict() == reused.as_dict()


def _planted_rank8(scale: float = 1e-6, seed: int = 0):
    """A 576 x 576 float32 base with entries ~1 and LoRA factors (r = 8, float32) whose product
    B A has 8 equal singular values and entries around `scale`."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((576, 576)).astype(np.float32)
    left, _ = np.linalg.qr(rng.standard_normal((576, 8)))
    right, _ = np.linalg.qr(rng.standard_normal((576, 8)))
    # Entries of left @ right.T are ~ sqrt(8) / 576 in size; scale them to ~`scale`.
    size = scale * 576 / math.sqrt(8)
    lora_b = (left * size).astype(np.float32)  # (out, r)
    lora_a = right.T.astype(np.float32)  # (r, in)
    return base, lora_a, lora_b


def test_float32_rounding_of_a_merged_matrix_is_not_rank():
    base, lora_a, lora_b = _planted_rank8()
    delta = lora_delta(lora_a, lora_b, scaling=2.0)
    assert 3e-7 < np.abs(delta).mean() < 3e-6  # entries around 1e-6
    merged = (base.astype(np.float64) + delta).astype(np.float32)  # what merge_and_unload stores
    stats = update_stats(base, merged)
    # Before: rounding of `merged` to float32 (up to 6e-8 per entry) counted as 568 more
    # directions, effective rank ~19. Now those singular values fall under the cut-off.
    sigma = np.linalg.svd(merged.astype(np.float64) - base, compute_uv=False)
    assert sigma[8] > 1e-7  # the rounding noise is there ...
    assert sigma[8] < stats.rank_cutoff < sigma[7]  # ... and cut, the planted directions kept
    assert stats.numerical_rank == 8
    assert 7.5 < stats.effective_rank <= 8.0 + 1e-9
    assert stats.dtype == "float32" and stats.source == "difference"
    eps = float(np.finfo(np.float32).eps)
    assert stats.rank_cutoff == pytest.approx(eps / 2 * np.linalg.norm(merged.astype(np.float64)))
    assert "||tuned||_F" in stats.cutoff_rule


def test_lora_update_rank_comes_exactly_from_its_factors():
    base, lora_a, lora_b = _planted_rank8()
    delta = lora_delta(torch.from_numpy(lora_a), torch.from_numpy(lora_b), scaling=2.0)
    assert delta.dtype == np.float64
    stats = update_stats(torch.from_numpy(base), delta=delta)
    assert stats.source == "delta" and stats.dtype == "float64"
    assert stats.numerical_rank == 8 and stats.rank_energy == 8
    assert stats.effective_rank == pytest.approx(8.0, rel=1e-9)  # 8 equal singular values
    assert stats.update_fro == pytest.approx(np.linalg.norm(delta))
    assert stats.rank_cutoff == pytest.approx(576 * np.finfo(np.float64).eps * np.linalg.norm(
        delta, 2))
    # The tuned matrix for intruder dimensions is base + delta, unrounded: the same as passing
    # that float64 matrix as tuned (whose float64 cut-off is far below the update).
    exact = update_stats(base, base.astype(np.float64) + delta)
    assert exact.intruder_dims == stats.intruder_dims and exact.numerical_rank == 8


def test_cutoff_follows_the_dtype():
    base, lora_a, lora_b = _planted_rank8(scale=1e-3)
    merged = base.astype(np.float64) + lora_delta(lora_a, lora_b, 1.0)
    as32 = update_stats(base, merged.astype(np.float32))
    as16 = update_stats(torch.from_numpy(base).half(), torch.from_numpy(merged).half())
    assert as16.dtype == "float16" and as32.dtype == "float32"
    assert as16.rank_cutoff / as32.rank_cutoff == pytest.approx(
        np.finfo(np.float16).eps / np.finfo(np.float32).eps, rel=1e-2)
    assert as32.numerical_rank == 8
    declared = update_stats(base.astype(np.float64), merged.astype(np.float32).astype(np.float64),
                            dtype_eps=float(np.finfo(np.float32).eps))
    assert declared.rank_cutoff == pytest.approx(as32.rank_cutoff)
    assert rank_cutoff(2.0, (4, 6), 1e-7) == pytest.approx(6 * 1e-7 * 2.0)
    assert rank_cutoff(2.0, (4, 6), 1e-7, tuned_fro=1e3) == pytest.approx(0.5e-4)
    assert effective_rank(np.array([3.0, 1.0, 1e-3]), cutoff=1e-2) == pytest.approx(
        effective_rank(np.array([3.0, 1.0])))
    assert effective_rank(np.array([1e-3]), cutoff=1e-2) == 0.0


def test_update_stats_takes_tuned_or_delta():
    w, _, _, _ = _base(8)
    with pytest.raises(PeftlabError, match="exactly one"):
        update_stats(w)
    with pytest.raises(PeftlabError, match="exactly one"):
        update_stats(w, w, delta=np.zeros_like(w))
    with pytest.raises(PeftlabError, match="same shape"):
        update_stats(w, delta=np.zeros((3, 3)))
    with pytest.raises(PeftlabError, match="dtype_eps"):
        update_stats(w, 1.1 * w, dtype_eps=2.0)
