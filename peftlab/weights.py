"""Weight-space analysis of one fine-tuned matrix against its base (pure functions).

`update_stats(base, tuned)` describes the update Delta = tuned - base of one weight matrix of shape
(out_features, in_features): its size (Frobenius norms), how many directions it uses (effective
rank, energy rank) and whether fine-tuning introduced "intruder dimensions", i.e. top singular
vectors of the tuned matrix unlike any singular vector of the base (Shuttleworth et al., 2024,
"LoRA vs full fine-tuning: an illusion of equivalence"). Inputs may be NumPy arrays or torch
tensors of any float dtype; all work is done in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError


@dataclass(frozen=True)
class UpdateStats:
    """Weight-space statistics of one update. Norms are in the weights' own units.

    update_fro: ||tuned - base||_F. base_fro: ||base||_F. relative_update: update_fro / base_fro
    (0 for a zero update; an all-zero base raises DegenerateInputError).
    effective_rank: exp(Shannon entropy of sigma_i / sum(sigma)) over the update's singular values
    (Roy & Vetterli, 2007); in [1, min(out, in)], 0 for a zero update.
    rank_energy: the fewest singular values of the update whose sigma^2 hold `energy` of
    sum(sigma^2); 0 for a zero update.
    intruder_dims: how many of the top_k left singular vectors of `tuned` have |cosine| below
    `epsilon` with every left singular vector of `base`.
    update_singular_values: the update's top_k singular values, largest first.
    top_k, epsilon, energy: the settings used (top_k capped at min(out, in)).
    """

    update_fro: float
    base_fro: float
    relative_update: float
    effective_rank: float
    rank_energy: int
    intruder_dims: int
    update_singular_values: list[float]
    top_k: int
    epsilon: float
    energy: float

    def as_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


def _to_matrix(a, name: str) -> np.ndarray:
    if type(a).__module__.split(".")[0] == "torch":
        import torch  # already imported by whoever made the tensor

        arr = a.detach().to(device="cpu", dtype=torch.float64).numpy()
    else:
        try:
            arr = np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise PeftlabError(f"{name} cannot be read as a float array: {err}") from None
    if arr.ndim != 2 or arr.size == 0:
        raise PeftlabError(
            f"{name} must be a non-empty 2-D weight matrix (out, in), got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise PeftlabError(f"{name} (shape {arr.shape}) contains NaN or infinite values")
    return arr


def effective_rank(singular_values: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values (Roy & Vetterli, 2007); 0 if all are zero.

    Values below the usual numerical-rank tolerance (sigma_max * len * eps) count as zero, so
    a planted rank-r update with equal singular values gives r, not r plus rounding noise.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0 or s.max() <= 0.0:
        return 0.0
    s = s[s > s.max() * s.size * np.finfo(np.float64).eps]
    p = s / s.sum()
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def rank_energy(singular_values: np.ndarray, energy: float = 0.9) -> int:
    """Fewest singular values (largest first) whose squares hold `energy` of sum(sigma^2).

    0 if all singular values are zero.
    """
    s = np.sort(np.asarray(singular_values, dtype=np.float64))[::-1]
    total = float(np.sum(s**2))
    if total <= 0.0:
        return 0
    share = np.cumsum(s**2) / total
    # The tolerance keeps e.g. energy=0.5 over two equal values at 1, not 2, despite rounding.
    return int(np.searchsorted(share, energy - 1e-12) + 1)


def base_left_singular_vectors(base) -> np.ndarray:
    """Left singular vectors of a base matrix (out, in) -> (out, min(out, in)), float64.

    Every run of a study shares the base, so callers compute this once per matrix and pass it to
    `update_stats(..., base_u=...)` instead of repeating the SVD for every run.
    """
    return np.linalg.svd(_to_matrix(base, "base"), full_matrices=False)[0]


def update_stats(
    base, tuned, top_k: int = 10, epsilon: float = 0.5, energy: float = 0.9,
    base_u: np.ndarray | None = None,
) -> UpdateStats:
    """Statistics of the update tuned - base, both of shape (out_features, in_features).

    Three float64 SVDs: singular values of the update, and the left singular vectors of base
    (all min(out, in) of them, from the thin SVD; pass `base_u` from
    `base_left_singular_vectors` to reuse them) and of tuned (the top_k are used). For a
    4096 x 4096 matrix this takes tens of seconds on a few CPU cores.
    """
    base_m = _to_matrix(base, "base")
    tuned_m = _to_matrix(tuned, "tuned")
    if base_m.shape != tuned_m.shape:
        raise PeftlabError(
            f"base and tuned must have the same shape, got {base_m.shape} and {tuned_m.shape}"
        )
    if int(top_k) != top_k or top_k < 1:
        raise PeftlabError(f"top_k must be a positive integer, got {top_k}")
    if not 0.0 < epsilon <= 1.0:
        raise PeftlabError(f"epsilon must be in (0, 1] (a cosine), got {epsilon}")
    if not 0.0 < energy <= 1.0:
        raise PeftlabError(f"energy must be in (0, 1], got {energy}")
    top_k = min(int(top_k), min(base_m.shape))

    update = tuned_m - base_m
    update_fro = float(np.linalg.norm(update))
    base_fro = float(np.linalg.norm(base_m))
    if base_fro == 0.0:
        raise DegenerateInputError(
            f"base (shape {base_m.shape}) is all zeros: its singular vectors are arbitrary, so"
            " intruder dimensions are undefined"
        )
    sigma = np.linalg.svd(update, compute_uv=False)

    u_base = base_u if base_u is not None else np.linalg.svd(base_m, full_matrices=False)[0]
    u_tuned = np.linalg.svd(tuned_m, full_matrices=False)[0][:, :top_k]
    # Singular vectors have unit norm, so the entries of U_tuned^T U_base are cosines.
    max_cos = np.abs(u_tuned.T @ u_base).max(axis=1)
    intruders = int(np.count_nonzero(max_cos < epsilon))

    return UpdateStats(
        update_fro=update_fro,
        base_fro=base_fro,
        relative_update=update_fro / base_fro,
        effective_rank=effective_rank(sigma),
        rank_energy=rank_energy(sigma, energy),
        intruder_dims=intruders,
        update_singular_values=[float(v) for v in sigma[:top_k]],
        top_k=top_k,
        epsilon=float(epsilon),
        energy=float(energy),
    )


def lora_delta(lora_A, lora_B, scaling: float) -> np.ndarray:
    """The dense update a LoRA adapter adds: scaling * B @ A, shape (out, in), float64.

    lora_A: (r, in). lora_B: (out, r). scaling: PEFT's lora_alpha / r (or alpha / sqrt(r) with
    rsLoRA), as stored on the layer.
    """
    a = _to_matrix(lora_A, "lora_A")
    b = _to_matrix(lora_B, "lora_B")
    if b.shape[1] != a.shape[0]:
        raise PeftlabError(
            f"lora_B (out, r) and lora_A (r, in) disagree on r: lora_B {b.shape}, lora_A {a.shape}"
        )
    return float(scaling) * (b @ a)
