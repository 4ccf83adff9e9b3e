"""Weight-space analysis of one fine-tuned matrix against its base (pure functions).

`update_stats(base, tuned)` describes the update Delta = tuned - base of one weight matrix of shape
(out_features, in_features): its size (Frobenius norms), how many directions it uses (effective
rank, energy rank, numerical rank) and whether fine-tuning introduced "intruder dimensions", i.e.
top singular vectors of the tuned matrix unlike any singular vector of the base (Shuttleworth et
al., 2024, "LoRA vs full fine-tuning: an illusion of equivalence"). Inputs may be NumPy arrays or
torch tensors of any float dtype; all work is done in float64.

Rank needs a cut-off: singular values at the level of the weights' rounding are not directions of
the update. A merged LoRA matrix stored in float32 differs from base + B A by up to half a float32
spacing per entry, and those errors alone spread singular values of about 1e-6 over every
direction of a 576 x 576 matrix whose entries are near 1 - enough to turn a rank-8 update of
entries near 1e-6 into an effective rank of 19. The cut-off (see `rank_cutoff`) is tied to the
weights' dtype and recorded with the result; for a LoRA adapter, `lora_delta` gives the exact
update from its factors, and `update_stats(base, delta=...)` analyses it without the rounding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError


@dataclass(frozen=True)
class UpdateStats:
    """Weight-space statistics of one update. Norms are in the weights' own units.

    update_fro: ||Delta||_F. base_fro: ||base||_F. relative_update: update_fro / base_fro
    (0 for a zero update; an all-zero base raises DegenerateInputError).
    effective_rank: exp(Shannon entropy of sigma_i / sum(sigma)) over the update's singular values
    above `rank_cutoff` (Roy & Vetterli, 2007); in [1, numerical_rank], 0 when none is above.
    rank_energy: the fewest of those singular values whose sigma^2 hold `energy` of their
    sum(sigma^2); 0 when none is above the cut-off.
    numerical_rank: how many singular values of the update exceed `rank_cutoff`.
    rank_cutoff: the cut-off used (weights' units), from `cutoff_rule` and `dtype`.
    intruder_dims: how many of the top_k left singular vectors of the tuned matrix have |cosine|
    below `epsilon` with every left singular vector of `base`.
    update_singular_values: the update's top_k singular values, largest first, as computed
    (compare them with `rank_cutoff`).
    source: "difference" (tuned - base) or "delta" (an update given exactly, e.g. `lora_delta`).
    dtype: the dtype whose precision set the cut-off ("float32", "bfloat16", ...).
    top_k, epsilon, energy: the settings used (top_k capped at min(out, in)).
    """

    update_fro: float
    base_fro: float
    relative_update: float
    effective_rank: float
    rank_energy: int
    numerical_rank: int
    rank_cutoff: float
    cutoff_rule: str
    intruder_dims: int
    update_singular_values: list[float]
    source: str
    dtype: str
    top_k: int
    epsilon: float
    energy: float

    def as_dict(self) -> dict:
        """Plain JSON-ready dict of the fields."""
        return asdict(self)


def _dtype_of(a) -> tuple[str, float]:
    """(name, machine epsilon) of the dtype `a` is stored in; float64 for non-float inputs."""
    if type(a).__module__.split(".")[0] == "torch":
        import torch  # already imported by whoever made the tensor

        if a.dtype.is_floating_point:
            return str(a.dtype).removeprefix("torch."), float(torch.finfo(a.dtype).eps)
        return "float64", float(np.finfo(np.float64).eps)
    dtype = getattr(a, "dtype", None)
    if dtype is not None and np.issubdtype(dtype, np.floating):
        return str(np.dtype(dtype)), float(np.finfo(dtype).eps)
    return "float64", float(np.finfo(np.float64).eps)


def _coarsest(*dtypes: tuple[str, float]) -> tuple[str, float]:
    return max(dtypes, key=lambda d: d[1])


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


def effective_rank(singular_values: np.ndarray, cutoff: float | None = None) -> float:
    """exp(entropy) of the normalised singular values (Roy & Vetterli, 2007); 0 if none is left.

    Values <= `cutoff` count as zero. The default cut-off, sigma_max * len * eps(float64), only
    removes float64 rounding (a planted rank-r update with equal singular values gives r); for
    weights stored in float32 or bfloat16 pass the cut-off of their dtype (`rank_cutoff`).
    """
    s = np.asarray(singular_values, dtype=np.float64)
    if s.size == 0 or s.max() <= 0.0:
        return 0.0
    if cutoff is None:
        cutoff = s.max() * s.size * np.finfo(np.float64).eps
    s = s[s > cutoff]
    if s.size == 0:
        return 0.0
    p = s / s.sum()
    return float(math.exp(-float(np.sum(p * np.log(p)))))


def rank_cutoff(sigma_max: float, shape: tuple[int, int], eps: float,
                tuned_fro: float | None = None) -> float:
    """Singular values of an update at or below this are numerically zero (weights' units).

    sigma_max: the update's largest singular value; shape: (out, in); eps: machine epsilon of
    the weights' dtype (float32 1.19e-7, bfloat16 7.8e-3).
    - max(out, in) * eps * sigma_max: the update's own numerical-rank tolerance at that
      precision (numpy.linalg.matrix_rank's rule);
    - when the update is a difference tuned - base (`tuned_fro` = ||tuned||_F given), also
      eps / 2 * ||tuned||_F: storing tuned in that dtype moves each entry by at most eps / 2 of
      its size, so the rounding error E has ||E||_2 <= ||E||_F <= eps / 2 * ||tuned||_F, and by
      Weyl's inequality no singular value of the difference below that is distinguishable from
      rounding.
    The larger of the two is returned.
    """
    cutoff = max(shape) * eps * sigma_max
    if tuned_fro is not None:
        cutoff = max(cutoff, eps / 2 * tuned_fro)
    return float(cutoff)


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
    base, tuned=None, top_k: int = 10, epsilon: float = 0.5, energy: float = 0.9,
    base_u: np.ndarray | None = None, *, delta=None, dtype_eps: float | None = None,
) -> UpdateStats:
    """Statistics of one update of a weight matrix of shape (out_features, in_features).

    Give either `tuned` (the fine-tuned or merged matrix; the update is tuned - base) or `delta`
    (the update itself, e.g. `lora_delta(A, B, scaling)`, computed exactly in float64; the tuned
    matrix for intruder dimensions is then base + delta in float64, never rounded). The rank
    cut-off (`rank_cutoff`) uses the machine epsilon of the coarsest dtype of base and tuned for a
    difference, and of `delta`'s own dtype for a given update; `dtype_eps` overrides it (e.g.
    when float32 weights were already converted to float64 arrays).

    Three float64 SVDs: singular values of the update, and the left singular vectors of base
    (all min(out, in) of them, from the thin SVD; pass `base_u` from
    `base_left_singular_vectors` to reuse them) and of tuned (the top_k are used). For a
    4096 x 4096 matrix this takes tens of seconds on a few CPU cores.
    """
    if (tuned is None) == (delta is None):
        raise PeftlabError("update_stats needs exactly one of tuned (the fine-tuned matrix) or"
                           " delta (the update itself)")
    base_m = _to_matrix(base, "base")
    if delta is not None:
        update = _to_matrix(delta, "delta")
        given, source = "delta", "delta"
        dtype = _dtype_of(delta)
    else:
        given, source = "tuned", "difference"
        update = None
        dtype = _coarsest(_dtype_of(base), _dtype_of(tuned))
    other = update if update is not None else _to_matrix(tuned, "tuned")
    if base_m.shape != other.shape:
        raise PeftlabError(
            f"base and {given} must have the same shape, got {base_m.shape} and {other.shape}"
        )
    if int(top_k) != top_k or top_k < 1:
        raise PeftlabError(f"top_k must be a positive integer, got {top_k}")
    if not 0.0 < epsilon <= 1.0:
        raise PeftlabError(f"epsilon must be in (0, 1] (a cosine), got {epsilon}")
    if not 0.0 < energy <= 1.0:
        raise PeftlabError(f"energy must be in (0, 1], got {energy}")
    if dtype_eps is not None:
        if not 0.0 < dtype_eps < 1.0:
            raise PeftlabError(f"dtype_eps must be a machine epsilon in (0, 1), got {dtype_eps}")
        dtype = (f"eps={dtype_eps:.3g}", float(dtype_eps))
    top_k = min(int(top_k), min(base_m.shape))

    if update is None:
        tuned_m = other
        update = tuned_m - base_m
    else:
        tuned_m = base_m + update
    update_fro = float(np.linalg.norm(update))
    base_fro = float(np.linalg.norm(base_m))
    if base_fro == 0.0:
        raise DegenerateInputError(
            f"base (shape {base_m.shape}) is all zeros: its singular vectors are arbitrary, so"
            " intruder dimensions are undefined"
        )
    sigma = np.linalg.svd(update, compute_uv=False)
    eps = dtype[1]
    if source == "difference":
        cutoff = rank_cutoff(float(sigma[0]), update.shape, eps, float(np.linalg.norm(tuned_m)))
        rule = "max(max(out, in) * eps * sigma_max, eps / 2 * ||tuned||_F)"
    else:
        cutoff = rank_cutoff(float(sigma[0]), update.shape, eps)
        rule = "max(out, in) * eps * sigma_max"
    kept = sigma[sigma > cutoff]

    u_base = base_u if base_u is not None else np.linalg.svd(base_m, full_matrices=False)[0]
    u_tuned = np.linalg.svd(tuned_m, full_matrices=False)[0][:, :top_k]
    # Singular vectors have unit norm, so the entries of U_tuned^T U_base are cosines.
    max_cos = np.abs(u_tuned.T @ u_base).max(axis=1)
    intruders = int(np.count_nonzero(max_cos < epsilon))

    return UpdateStats(
        update_fro=update_fro,
        base_fro=base_fro,
        relative_update=update_fro / base_fro,
        effective_rank=effective_rank(kept, cutoff=0.0),
        rank_energy=rank_energy(kept, energy),
        numerical_rank=int(kept.size),
        rank_cutoff=cutoff,
        cutoff_rule=rule,
        intruder_dims=intruders,
        update_singular_values=[float(v) for v in sigma[:top_k]],
        source=source,
        dtype=dtype[0],
        top_k=top_k,
        epsilon=float(epsilon),
        energy=float(energy),
    )


def lora_delta(lora_A, lora_B, scaling: float) -> np.ndarray:
    """The dense update a LoRA adapter adds: scaling * B @ A, shape (out, in), float64.

    lora_A: (r, in). lora_B: (out, r). scaling: PEFT's lora_alpha / r (or alpha / sqrt(r) with
    rsLoRA), as stored on the layer (`layer.scaling[adapter_name]`). The product is formed in
    float64 from the stored factors, so it is the adapter's exact update (rank <= r), free of the
    float32 rounding a merged matrix carries: pass it to `update_stats(base, delta=...)`.
    """
    a = _to_matrix(lora_A, "lora_A")
    b = _to_matrix(lora_B, "lora_B")
    if b.shape[1] != a.shape[0]:
        raise PeftlabError(
            f"lora_B (out, r) and lora_A (r, in) disagree on r: lora_B {b.shape}, lora_A {a.shape}"
        )
    return float(scaling) * (b @ a)
