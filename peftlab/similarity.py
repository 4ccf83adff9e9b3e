"""Similarity between two representations of the same examples (pure functions).

Every measure takes two arrays `x`, `y` of shape (n_examples, n_features): row i of both is the
representation of example i (e.g. pooled hidden states of one layer for the base model and for a
fine-tuned run). NumPy arrays and torch tensors (any device, any float dtype) are accepted and
never modified; float32/float64 arrays are read without a copy, each measure makes the float64
working copies it needs (centred ones for CKA and Procrustes), and all sums accumulate in
float64. Feature counts may differ between `x` and `y` except where a measure pairs features (cosine).

Measures and their ranges
- `linear_cka`, `rbf_cka`: centred kernel alignment (Kornblith et al., 2019), 1 = same up to
  rotation and isotropic scaling. `debiased=True` uses the unbiased HSIC estimator (Song et al.,
  2012), whose value for independent representations is about 0 at any n and d; the biased value
  is about 0.8 for independent Gaussians at n=500, d=2048, so it means little without its
  permutation floor (`cka_null`).
- `cosine_similarity`: mean and per-example cosine of paired rows, in [-1, 1]; uncentred, so
  a few huge constant features (the massive activations of LLM hidden states) push it towards 1
  whatever else changed. `centered_cosine_similarity` removes each representation's probe-set
  mean first, and `cosine_null` gives the shuffled-rows baseline either has to clear.
- `procrustes_distance`: orthogonal Procrustes distance, in [0, 2], 0 = same up to rotation.
- `knn_overlap`: mutual k-nearest-neighbour overlap, in [0, 1]; about k/(n-1) for unrelated data.

Errors: `PeftlabError` for inputs that cannot be compared (shapes, NaN/inf, too few examples);
`DegenerateInputError` when the measure is undefined for these values (e.g. every row of `x`
identical makes CKA 0/0), so callers can store the value as undefined with its `reason`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError

# Upper bound on the float64 temporaries one block of a chunked computation allocates. The
# inputs' float64 copies come on top; at n=10,000 x d=4,096 the whole call stays near 1 GB.
BLOCK_BYTES = 128 * 2**20

# The permutation null keeps two n x n Gram matrices; above this it works in feature space.
NULL_GRAM_BYTES = 4 * 2**30


@dataclass(frozen=True)
class CosineResult:
    """Cosine similarity of paired rows.

    mean: mean of `per_row`. per_row: shape (n_examples,), cosine of x[i] and y[i], in [-1, 1].
    """

    mean: float
    per_row: np.ndarray


@dataclass(frozen=True)
class NullResult:
    """A similarity of the true row pairing against the same after shuffling the rows of y.

    observed: CKA (`cka_null`) or mean cosine (`cosine_null`) of (x, y). values: shape
    (n_permutations,), the same of (x, y[perm]) for each permutation. null_q95 is the floor a
    meaningful observed value has to clear. p_value = (1 + #{values >= observed}) /
    (1 + n_permutations).
    """

    observed: float
    null_mean: float
    null_std: float
    null_q95: float
    p_value: float
    n_permutations: int
    values: np.ndarray

    @classmethod
    def of(cls, observed: float, values: np.ndarray) -> NullResult:
        """The summary of permuted `values` (shape (n_permutations,)) against `observed`."""
        n = len(values)
        return cls(
            observed=float(observed),
            null_mean=float(values.mean()),
            null_std=float(values.std(ddof=1)) if n > 1 else 0.0,
            null_q95=float(np.quantile(values, 0.95)),
            p_value=float((1 + np.count_nonzero(values >= observed)) / (1 + n)),
            n_permutations=n,
            values=values,
        )


# ----------------------------------------------------------------------------- input handling


def _as_array(a, name: str) -> np.ndarray:
    """`a` as a 2-D float32 or float64 NumPy array, without copying when it already is one.

    Nothing here writes to the result: every measure makes its own float64 arrays from it.
    """
    if type(a).__module__.split(".")[0] == "torch":
        t = a.detach().cpu()
        # bfloat16 has no NumPy dtype; half precision would make every later step cast anyway.
        if not (t.dtype.is_floating_point and t.element_size() >= 4):
            t = t.double()
        arr = t.numpy()
    else:
        try:
            arr = np.asarray(a)
            if arr.dtype not in (np.float32, np.float64):
                arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise PeftlabError(f"{name} cannot be read as a float array: {err}") from None
    if arr.ndim != 2:
        raise PeftlabError(
            f"{name} must be 2-D (n_examples, n_features), got shape {tuple(arr.shape)}"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PeftlabError(f"{name} is empty: shape {tuple(arr.shape)}")
    return arr


def _require_finite(summary: np.ndarray, a: np.ndarray, name: str) -> None:
    """Raise unless `summary` (a sum over `a`, computed anyway) is finite.

    Any NaN or inf in `a` makes the sum non-finite, so the full scan of `a` that names the
    problem only runs when something is wrong.
    """
    if np.isfinite(summary).all():
        return
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise PeftlabError(f"{name} (shape {a.shape}) contains {bad} NaN or infinite values")
    raise PeftlabError(
        f"{name} (shape {a.shape}) holds values too large to sum in float64"
        f" (max |value| {float(np.abs(a).max()):.3g})"
    )


def _pair(x, y, min_n: int, what: str, same_features: bool = False):
    """Convert and check a pair of representations of the same examples."""
    xa = _as_array(x, "x")
    ya = _as_array(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise PeftlabError(
            f"x and y must hold the same examples: x has {xa.shape[0]} rows (shape {xa.shape}),"
            f" y has {ya.shape[0]} (shape {ya.shape})"
        )
    if same_features and xa.shape[1] != ya.shape[1]:
        raise PeftlabError(
            f"{what} pairs features: x and y need the same number of columns,"
            f" got x {xa.shape} and y {ya.shape}"
        )
    if xa.shape[0] < min_n:
        raise PeftlabError(f"{what} needs at least {min_n} examples, got n={xa.shape[0]}")
    return xa, ya


def _center(a: np.ndarray, name: str, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Column-centred float64 copy of `a` (n, d) and its squared row norms, shape (n,).

    Raises DegenerateInputError when the rows do not vary: identical rows centre to exact
    zeros (float32 input) or to rounding residue near 1e-16 of the values (float64 input), so
    their squared spread falls far below 1e-20 of the rows' total squared size, and any
    variation a float32 or float64 representation can hold lies far above it.
    """
    # Copy, then centre in place: twice as fast as one casting np.subtract(a, mean, dtype=...).
    centred = a.astype(np.float64)
    mean = centred.mean(axis=0)
    _require_finite(mean, a, name)
    centred -= mean
    sq_rows = np.einsum("ij,ij->i", centred, centred)
    spread = float(sq_rows.sum())
    offset = a.shape[0] * float(mean @ mean)
    if not spread > 1e-20 * (spread + offset):
        raise DegenerateInputError(
            f"{name} (shape {a.shape}) has identical rows: every example has the same"
            f" representation, so {what} is undefined"
        )
    return centred, sq_rows


def _block_len(width: int, chunk_size: int | None, copies: int = 1) -> int:
    """Rows (or columns) per block so that `copies` blocks of `width` float64s fit BLOCK_BYTES."""
    if chunk_size is not None:
        if chunk_size < 1:
            raise PeftlabError(f"chunk_size must be a positive integer, got {chunk_size}")
        return int(chunk_size)
    return max(1, BLOCK_BYTES // (8 * max(1, width) * copies))


# ----------------------------------------------------------------------------- Gram matrices


def gram_linear(x) -> np.ndarray:
    """Linear kernel Gram matrix x @ x.T, shape (n_examples, n_examples), float64 (not centred)."""
    xa = _as_array(x, "x").astype(np.float64, copy=False)
    k = xa @ xa.T
    _require_finite(np.diag(k), xa, "x")
    return k


def gram_rbf(x, sigma: float = 0.8) -> np.ndarray:
    """RBF kernel Gram matrix, shape (n_examples, n_examples), float64.

    K_ij = exp(-|x_i - x_j|^2 / (2 sigma^2 m)), where m is the median of all n^2 squared
    distances (diagonal zeros included, as in Kornblith et al.'s reference code), so `sigma` is a
    fraction of the median distance and the result does not depend on the scale of x.
    """
    xc, _ = _center(_as_array(x, "x"), "x", "the RBF kernel")
    return _rbf_gram_inplace(xc, sigma, "x")


def _rbf_gram_inplace(xc: np.ndarray, sigma: float, name: str) -> np.ndarray:
    if not sigma > 0:
        raise PeftlabError(f"sigma must be > 0 (a fraction of the median distance), got {sigma}")
    # Distances are translation invariant; computing them from centred rows avoids the
    # cancellation of |x_i|^2 + |x_j|^2 - 2 x_i.x_j when all rows share a large offset.
    k = xc @ xc.T
    sq_norms = np.diag(k).copy()
    k *= -2.0
    k += sq_norms[:, None]
    k += sq_norms[None, :]
    np.maximum(k, 0.0, out=k)
    median = float(np.median(k))
    if median <= 0.0:
        raise DegenerateInputError(
            f"{name} (shape {xc.shape}): the median pairwise distance is 0 (at least half the"
            " pairs of examples coincide), so the RBF bandwidth is undefined"
        )
    k *= -1.0 / (2.0 * sigma**2 * median)
    np.exp(k, out=k)
    return k


def _center_gram_inplace(k: np.ndarray, unbiased: bool) -> np.ndarray:
    """H K H (biased) or the U-centred K of Szekely & Rizzo 2014 (unbiased), in place.

    For U-centred matrices <K~, L~> is a constant multiple of the unbiased HSIC estimator of
    Song et al. (2012); the constant cancels in CKA.
    """
    n = k.shape[0]
    if unbiased:
        np.fill_diagonal(k, 0.0)
        means = k.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
    else:
        means = k.mean(axis=0)
        means -= means.mean() / 2
    k -= means[:, None]
    k -= means[None, :]
    if unbiased:
        np.fill_diagonal(k, 0.0)
    return k


def cka_from_grams(kx, ky, debiased: bool = False) -> float:
    """CKA from two Gram matrices of shape (n_examples, n_examples) (any kernel, not centred).

    This is the direct definition; `linear_cka` computes the same value without n x n matrices
    when that is cheaper.
    """
    # Private float64 copies: centring below works in place.
    kxa = np.array(_as_array(kx, "kx"), dtype=np.float64)
    kya = np.array(_as_array(ky, "ky"), dtype=np.float64)
    for name, k in (("kx", kxa), ("ky", kya)):
        _require_finite(k.sum(axis=0), k, name)
        if k.shape[0] != k.shape[1] or not np.allclose(k, k.T):
            raise PeftlabError(f"{name} must be a symmetric square Gram matrix, got {k.shape}")
    if kxa.shape != kya.shape:
        raise PeftlabError(f"kx and ky must have the same shape, got {kxa.shape} and {kya.shape}")
    n = kxa.shape[0]
    if n < (4 if debiased else 2):
        raise PeftlabError(f"CKA needs at least {4 if debiased else 2} examples, got n={n}")
    kxa = _center_gram_inplace(kxa, debiased)
    kya = _center_gram_inplace(kya, debiased)
    return _cka_from_centred_grams(kxa, kya, "kx", "ky")


def _cka_from_centred_grams(kx: np.ndarray, ky: np.ndarray, xname: str, yname: str) -> float:
    hxx = float(np.vdot(kx, kx))
    hyy = float(np.vdot(ky, ky))
    for name, h, k in ((xname, hxx, kx), (yname, hyy, ky)):
        if not h > 0.0:
            raise DegenerateInputError(
                f"{name} (n={k.shape[0]}): the centred kernel matrix is zero, so CKA is 0/0"
            )
    return float(np.vdot(kx, ky)) / math.sqrt(hxx * hyy)


# ----------------------------------------------------------------------------- linear CKA


def _frob_sq_of_product(a: np.ndarray, b: np.ndarray, cols_per_block: int) -> float:
    """||a.T @ b||_F^2 for a (n, da), b (n, db), never holding more than a block of a.T @ b."""
    if cols_per_block >= a.shape[1]:
        p = a.T @ b  # one call; for a is b NumPy uses the symmetric (syrk) kernel
        return float(np.vdot(p, p))
    total = 0.0
    for start in range(0, a.shape[1], cols_per_block):
        p = a[:, start : start + cols_per_block].T @ b
        total += float(np.vdot(p, p))
    return total


def _linear_stats(xc: np.ndarray, yc: np.ndarray, method: str, chunk_size: int | None):
    """The sums linear CKA is made of, for centred xc (n, dx), yc (n, dy).

    Returns (xty, xtx, yty) = (||xc.T yc||_F^2, ||xc.T xc||_F^2, ||yc.T yc||_F^2), which equal
    <Kx, Ky>, <Kx, Kx>, <Ky, Ky> for the centred linear Grams Kx = xc xc.T, Ky = yc yc.T.
    `method` picks how: "features" multiplies (dx, n) by (n, dy) matrices, column blocks at a
    time; "gram" forms the Grams row blocks at a time; "auto" takes the one with fewer flops.
    """
    n, dx = xc.shape
    dy = yc.shape[1]
    if method == "auto":
        feature_flops = n * (dx * dy + dx * dx + dy * dy)
        gram_flops = n * n * (dx + dy)
        method = "gram" if gram_flops < feature_flops else "features"
    if method == "features":
        xty = _frob_sq_of_product(xc, yc, _block_len(dy, chunk_size))
        xtx = _frob_sq_of_product(xc, xc, _block_len(dx, chunk_size))
        yty = _frob_sq_of_product(yc, yc, _block_len(dy, chunk_size))
        return xty, xtx, yty
    if method != "gram":
        raise PeftlabError(f"method must be 'auto', 'features' or 'gram', got {method!r}")
    rows = _block_len(n, chunk_size, copies=2)
    if rows >= n:
        kx = xc @ xc.T
        ky = yc @ yc.T
        return float(np.vdot(kx, ky)), float(np.vdot(kx, kx)), float(np.vdot(ky, ky))
    xty = xtx = yty = 0.0
    for start in range(0, n, rows):
        kx = xc[start : start + rows] @ xc.T
        ky = yc[start : start + rows] @ yc.T
        xty += float(np.vdot(kx, ky))
        xtx += float(np.vdot(kx, kx))
        yty += float(np.vdot(ky, ky))
    return xty, xtx, yty


def _unbiased_hsic(kl: float, rkrl: float, sk: float, sl: float, n: int) -> float:
    """n(n-3) x unbiased HSIC (Song et al. 2012) of two centred linear kernels, in feature form.

    kl = <K, L> = tr(KL), rkrl = diag(K).diag(L), sk = tr K, sl = tr L. With centred features
    K1 = 0, so the zero-diagonal K~ = K - diag(K) gives tr(K~L~) = kl - rkrl, 1'K~1 = -sk and
    1'K~L~1 = rkrl, and Song's formula reduces to the expression below.
    """
    return kl - n / (n - 2) * rkrl + sk * sl / ((n - 1) * (n - 2))


def _cka_from_stats(xty, xtx, yty, rx, ry, n: int, debiased: bool) -> float:
    """CKA from `_linear_stats` sums and the squared row norms rx, ry of the centred inputs."""
    if debiased:
        sx, sy = float(rx.sum()), float(ry.sum())
        hxy = _unbiased_hsic(xty, float(rx @ ry), sx, sy, n)
        hxx = _unbiased_hsic(xtx, float(rx @ rx), sx, sx, n)
        hyy = _unbiased_hsic(yty, float(ry @ ry), sy, sy, n)
        # hxx >= 0 mathematically (a squared norm of the U-centred Gram); a value at rounding
        # level relative to (tr K)^2 >= ||K||_F^2 means the estimator has nothing to normalise by.
        for name, h, s in (("x", hxx, sx), ("y", hyy, sy)):
            if not h > 1e-12 * s * s:
                raise DegenerateInputError(
                    f"{name} (n={n}): the unbiased HSIC of {name} with itself is {h:.3g}, at"
                    " rounding level, so debiased CKA is 0/0"
                )
        return hxy / math.sqrt(hxx * hyy)
    return xty / math.sqrt(xtx * yty)


def linear_cka(
    x, y, debiased: bool = False, *, method: str = "auto", chunk_size: int | None = None
) -> float:
    """Linear CKA of x (n, dx) and y (n, dy): a unitless similarity, 1 = same up to rotation/scale.

    CKA = HSIC(X, Y) / sqrt(HSIC(X, X) HSIC(Y, Y)) with linear kernels (Kornblith et al., 2019);
    `debiased=True` uses the unbiased HSIC estimator (Song et al., 2012; needs n >= 4), as in
    google-research's representation_similarity Demo.ipynb.

    method: "features" works with dx x dy products (cheap when n is large), "gram" with n x n
    Gram matrices (cheap when d is large), "auto" (default) picks the one with fewer flops. Both
    compute the same value. chunk_size: rows ("gram") or features ("features") per block; the
    default keeps each block's temporaries under BLOCK_BYTES, so n=10,000 x d=4,096 needs the
    inputs' centred float64 copies (0.6 GB) plus about 0.15 GB.
    """
    xa, ya = _pair(x, y, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    xc, rx = _center(xa, "x", "CKA")
    yc, ry = _center(ya, "y", "CKA")
    xty, xtx, yty = _linear_stats(xc, yc, method, chunk_size)
    return _cka_from_stats(xty, xtx, yty, rx, ry, xc.shape[0], debiased)


def rbf_cka(x, y, sigma: float = 0.8, debiased: bool = False) -> float:
    """CKA of x (n, dx) and y (n, dy) with RBF kernels (see `gram_rbf` for `sigma`). Unitless.

    Holds two n x n float64 matrices (n=10,000: 1.6 GB).
    """
    xa, ya = _pair(x, y, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    xc, _ = _center(xa, "x", "RBF CKA")
    kx = _center_gram_inplace(_rbf_gram_inplace(xc, sigma, "x"), debiased)
    del xc
    yc, _ = _center(ya, "y", "RBF CKA")
    ky = _center_gram_inplace(_rbf_gram_inplace(yc, sigma, "y"), debiased)
    return _cka_from_centred_grams(kx, ky, "x", "y")


# ----------------------------------------------------------------------------- permutation null


def _permuted_inner(kx: np.ndarray, ky: np.ndarray, perm: np.ndarray, rows: int) -> float:
    """<Kx, P Ky P^T> where (P Ky P^T)_ij = Ky[perm_i, perm_j]: the Gram of y[perm]."""
    n = kx.shape[0]
    if rows >= n:
        return float(np.vdot(kx, ky[np.ix_(perm, perm)]))
    total = 0.0
    for start in range(0, n, rows):
        block = perm[start : start + rows]
        total += float(np.vdot(kx[start : start + rows], ky[np.ix_(block, perm)]))
    return total


def cka_null(
    x,
    y,
    n_permutations: int = 100,
    seed: int = 0,
    debiased: bool = False,
    kernel: str = "linear",
    *,
    sigma: float = 0.8,
    chunk_size: int | None = None,
) -> NullResult:
    """CKA of x (n, dx), y (n, dy) and its null distribution under shuffled row pairing.

    Each null value is CKA(x, y[perm]) for a permutation drawn from
    numpy.random.default_rng(seed): the similarity two representations of this n and d reach
    with no example-level correspondence. Its 95% quantile is the floor to report next to the
    observed value. kernel: "linear" or "rbf" (with `sigma`, see `gram_rbf`). chunk_size: rows
    (Gram path) or features (feature path) per block, as in `linear_cka`.

    Cost: everything that does not depend on the pairing (centring, both Gram matrices and
    their norms) is computed once; each permutation is then one gathered inner product of two
    n x n matrices (O(n^2)). For very large n with small d, linear CKA permutes in feature space
    instead (O(n dx dy) per permutation, no n x n matrices).
    """
    if kernel not in ("linear", "rbf"):
        raise PeftlabError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise PeftlabError(f"n_permutations must be a positive integer, got {n_permutations}")
    n_permutations = int(n_permutations)
    xa, ya = _pair(x, y, 4 if debiased else 2, "debiased CKA" if debiased else "CKA")
    xc, rx = _center(xa, "x", "CKA")
    yc, ry = _center(ya, "y", "CKA")
    n, dx = xc.shape
    dy = yc.shape[1]
    rng = np.random.default_rng(seed)

    gram_flops = n * n * (dx + dy) + n_permutations * n * n
    feature_flops = (n_permutations + 1) * n * dx * dy
    use_features = kernel == "linear" and (
        2 * n * n * 8 > NULL_GRAM_BYTES or feature_flops < gram_flops
    )
    values = np.empty(n_permutations)
    if use_features:
        xty, xtx, yty = _linear_stats(xc, yc, "features", chunk_size)
        observed = _cka_from_stats(xty, xtx, yty, rx, ry, n, debiased)
        cols = _block_len(dy, chunk_size)
        for i in range(n_permutations):
            perm = rng.permutation(n)
            xty_p = _frob_sq_of_product(xc, yc[perm], cols)
            values[i] = _cka_from_stats(xty_p, xtx, yty, rx, ry[perm], n, debiased)
    else:
        if kernel == "linear":
            kx = _center_gram_inplace(xc @ xc.T, True) if debiased else xc @ xc.T
            ky = _center_gram_inplace(yc @ yc.T, True) if debiased else yc @ yc.T
        else:
            kx = _center_gram_inplace(_rbf_gram_inplace(xc, sigma, "x"), debiased)
            ky = _center_gram_inplace(_rbf_gram_inplace(yc, sigma, "y"), debiased)
        del xc, yc
        observed = _cka_from_centred_grams(kx, ky, "x", "y")
        norm = math.sqrt(float(np.vdot(kx, kx)) * float(np.vdot(ky, ky)))
        rows = _block_len(n, chunk_size)
        for i in range(n_permutations):
            values[i] = _permuted_inner(kx, ky, rng.permutation(n), rows) / norm

    return NullResult.of(observed, values)


# ----------------------------------------------------------------------------- other measures


def _row_norms(a: np.ndarray, name: str, what: str) -> np.ndarray:
    """Euclidean norms of the rows of `a`, shape (n,); an all-zero row has no direction."""
    norms = np.sqrt(np.einsum("ij,ij->i", a, a, dtype=np.float64))
    _require_finite(norms, a, name)
    zero = np.flatnonzero(norms == 0.0)
    if zero.size:
        raise DegenerateInputError(
            f"{name} (shape {a.shape}) has {zero.size} all-zero rows (first: row {zero[0]}),"
            f" so {what} is undefined"
        )
    return norms


def _unit_rows(a: np.ndarray, name: str, what: str) -> np.ndarray:
    """A float64 copy of `a` with each row scaled to unit Euclidean norm."""
    unit = a.astype(np.float64)
    unit /= _row_norms(unit, name, what)[:, None]
    return unit


def cosine_similarity(x, y) -> CosineResult:
    """Cosine similarity of paired rows of x and y, both (n_examples, n_features).

    per_row[i] = <x_i, y_i> / (|x_i| |y_i|), unitless in [-1, 1]; rows are not centred (this
    compares each example's vector before and after, not the spread of the examples). Label it
    "uncentred" where it is reported: features with a large common offset dominate it (see
    `centered_cosine_similarity`), so read it against its shuffled baseline,
    `cosine_null(..., centered=False)`.
    """
    xa, ya = _pair(x, y, 1, "cosine similarity", same_features=True)
    norms = _row_norms(xa, "x", "its cosine similarity") * _row_norms(
        ya, "y", "its cosine similarity"
    )
    per_row = np.clip(np.einsum("ij,ij->i", xa, ya, dtype=np.float64) / norms, -1.0, 1.0)
    return CosineResult(mean=float(per_row.mean()), per_row=per_row)


def centered_cosine_similarity(x, y) -> CosineResult:
    """Cosine similarity of paired rows after removing each representation's probe-set mean.

    x, y: (n_examples, n_features), same features. per_row[i] = cos(x_i - mean(x), y_i - mean(y))
    (means over the n examples, per feature), unitless in [-1, 1]. The constant part of a
    representation (e.g. a few massive-activation dimensions with the same huge value on every
    example) cancels, so the value says how each example's deviation from the rest moved, and
    unrelated representations give about 0 (see `cosine_null`). Needs n >= 2; an example equal to
    its probe-set mean has no direction (DegenerateInputError).
    """
    xa, ya = _pair(x, y, 2, "centred cosine similarity", same_features=True)
    xc, sx = _center(xa, "x", "its centred cosine similarity")
    yc, sy = _center(ya, "y", "its centred cosine similarity")
    per_row = _paired_cosines(xc, yc, sx, sy)
    return CosineResult(mean=float(per_row.mean()), per_row=per_row)


def _paired_cosines(xc: np.ndarray, yc: np.ndarray, sq_x: np.ndarray, sq_y: np.ndarray
                    ) -> np.ndarray:
    """Per-row cosines of float64 xc, yc (n, d) given their squared row norms (n,).

    A centred row at rounding level (squared norm below 1e-20 of the mean squared norm) is an
    example equal to its probe-set mean: its direction is rounding noise, so it is refused."""
    for name, sq in (("x", sq_x), ("y", sq_y)):
        zero = np.flatnonzero(sq <= 1e-20 * sq.mean())
        if zero.size:
            raise DegenerateInputError(
                f"{name} has {zero.size} rows equal to the probe-set mean (first: row {zero[0]}),"
                " so their centred cosine is undefined"
            )
    dots = np.einsum("ij,ij->i", xc, yc)
    return np.clip(dots / np.sqrt(sq_x * sq_y), -1.0, 1.0)


def cosine_null(
    x, y, n_permutations: int = 100, seed: int = 0, centered: bool = True
) -> NullResult:
    """Mean paired-row cosine of x, y (n, d) and its baseline under shuffled row pairing.

    observed: mean cosine (centred, as `centered_cosine_similarity`, or uncentred, as
    `cosine_similarity`). Each null value is the mean cosine of x_i with y_perm(i), for
    permutations drawn from numpy.random.default_rng(seed) as in `cka_null`: what two
    representations with this offset and spread reach with no example-level correspondence.
    For uncentred cosine of hidden states with massive activations that baseline is near 1 too,
    which is why a cosine is only read against it. Returns NullResult (null_q95 is the floor;
    p_value = (1 + #{null >= observed}) / (1 + n_permutations)). Cost O(n d) per permutation.
    """
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise PeftlabError(f"n_permutations must be a positive integer, got {n_permutations}")
    n_permutations = int(n_permutations)
    what = "centred cosine similarity" if centered else "cosine similarity"
    xa, ya = _pair(x, y, 2, what, same_features=True)
    if centered:
        xc, sx = _center(xa, "x", f"its {what}")
        yc, sy = _center(ya, "y", f"its {what}")
        _paired_cosines(xc, yc, sx, sy)  # raises on rows without a direction
        xu, yu = xc / np.sqrt(sx)[:, None], yc / np.sqrt(sy)[:, None]
    else:
        xu = _unit_rows(xa, "x", f"its {what}")
        yu = _unit_rows(ya, "y", f"its {what}")
    n = xu.shape[0]
    observed = float(np.clip(np.einsum("ij,ij->i", xu, yu), -1.0, 1.0).mean())
    rng = np.random.default_rng(seed)
    values = np.empty(n_permutations)
    for i in range(n_permutations):
        perm = rng.permutation(n)
        values[i] = np.clip(np.einsum("ij,ij->i", xu, yu[perm]), -1.0, 1.0).mean()
    return NullResult.of(observed, values)


def procrustes_distance(x, y) -> float:
    """Orthogonal Procrustes distance of x (n, dx) and y (n, dy), unitless in [0, 2].

    Both are centred (columns) and scaled to unit Frobenius norm, then
    d = min over orthogonal Q of ||X - Y Q||_F^2 = 2 - 2 ||X^T Y||_* (nuclear norm; Ding et al.,
    2021), with the narrower side zero-padded if dx != dy. 0 means the same up to rotation,
    reflection, translation and isotropic scaling. ||X^T Y||_* is computed as ||Rx Ry^T||_* from
    the QR factors X^T = Qx Rx, Y^T = Qy Ry, so no matrix larger than min(n, d)^2 is decomposed.
    """
    xa, ya = _pair(x, y, 2, "Procrustes distance")
    xc, sq_rows_x = _center(xa, "x", "the Procrustes distance")
    yc, sq_rows_y = _center(ya, "y", "the Procrustes distance")
    xc /= math.sqrt(sq_rows_x.sum())
    yc /= math.sqrt(sq_rows_y.sum())
    rx = np.linalg.qr(xc.T, mode="r")
    ry = np.linalg.qr(yc.T, mode="r")
    nuclear = float(np.linalg.svd(rx @ ry.T, compute_uv=False).sum())
    # Rounding can push the nuclear norm a hair past 1 for identical inputs.
    return float(min(2.0, max(0.0, 2.0 - 2.0 * nuclear)))


def _knn_indices(unit: np.ndarray, start: int, stop: int, k: int) -> np.ndarray:
    """The k most cosine-similar other rows of rows start:stop, shape (stop - start, k)."""
    sims = unit[start:stop] @ unit.T
    sims[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # exclude self
    return np.argpartition(sims, -k, axis=1)[:, -k:]


def knn_overlap(x, y, k: int = 10, *, chunk_size: int | None = None) -> float:
    """Mutual k-nearest-neighbour overlap of x (n, dx) and y (n, dy), unitless in [0, 1].

    Mean over examples i of |kNN_x(i) & kNN_y(i)| / k, where kNN_x(i) are the k rows of x with
    the highest cosine similarity to x_i (i itself excluded). Unrelated representations give
    about k / (n - 1). Similarities are computed chunk_size rows at a time (n x chunk_size
    float64 temporaries), never as a full n x n matrix.
    """
    xa, ya = _pair(x, y, 2, "kNN overlap")
    n = xa.shape[0]
    if int(k) != k or not 1 <= k <= n - 1:
        raise PeftlabError(f"k must be an integer in [1, n-1] = [1, {n - 1}], got {k}")
    k = int(k)
    xu = _unit_rows(xa, "x", "its cosine neighbourhood")
    yu = _unit_rows(ya, "y", "its cosine neighbourhood")
    rows = _block_len(n, chunk_size, copies=2)
    shared = 0
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        nx = _knn_indices(xu, start, stop, k)
        ny = _knn_indices(yu, start, stop, k)
        shared += int((nx[:, :, None] == ny[:, None, :]).sum())
    return shared / (n * k)
