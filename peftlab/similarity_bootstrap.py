"""Bootstrap intervals of similarity measures over probe examples, cheap enough for every layer.

    res = linear_cka_bootstrap(x, y, n_resamples=100, seed=0, debiased=True)
    res.ci_low, res.ci_high        # percentile interval of CKA over resampled probe examples

x, y: (n_examples, features), rows paired (the same probe example through two models). A
resample draws n examples with replacement (numpy.random.default_rng(seed), the same draws for
every call with the same n and seed, so the intervals of different runs and layers use the same
resamples). The interval describes how much the measure would move on another draw of probe
examples, not how much it varies between seeds (that is the stats stage's t-interval over runs).

Why not just call the measure on x[idx], y[idx]: linear CKA of a resample is a function of a few
weighted sums over the n x n Gram matrices, so one pass over column blocks of the Grams gives every
resample at once (O(n^2 (d + B)) for B resamples, instead of B times O(n^2 d)); and the debiased
estimator (Song et al., 2012) must not pair an example with its own duplicate, whose kernel value
k(x, x) the estimator removes on purpose: the resample's Gram matrices get zeros wherever two
positions hold the same example, not only on the diagonal.

Pure functions; no I/O.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from peftlab.errors import PeftlabError

# Column block of the n x n Grams held at once (n x block float64s, five of them).
_BLOCK_COLUMNS = 512


@dataclass(frozen=True)
class BootstrapResult:
    """A measure on the full probe set and its percentile interval over resamples.

    estimate: the measure on all n examples. values: (n_resamples,) the measure on each
    resample (NaN where it is undefined on that resample; such resamples are left out of the
    interval and counted in `undefined`). ci_low/ci_high: the (1 - confidence)/2 and
    (1 + confidence)/2 percentiles of the defined values (None when none is defined).
    """

    estimate: float
    ci_low: float | None
    ci_high: float | None
    confidence: float
    n_resamples: int
    undefined: int
    method: str
    values: np.ndarray

    def as_dict(self) -> dict[str, float | int | str | None]:
        """JSON-ready summary (without the per-resample values)."""
        return {"estimate": self.estimate, "ci_low": self.ci_low, "ci_high": self.ci_high,
                "confidence": self.confidence, "n_resamples": self.n_resamples,
                "undefined": self.undefined, "method": self.method}


def resample_counts(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """(n_resamples, n) float: how often each example occurs in each resample (rows sum to n).

    The same (n, n_resamples, seed) always gives the same matrix."""
    if n < 1 or n_resamples < 1:
        raise PeftlabError(f"need n >= 1 examples and n_resamples >= 1, got {n}, {n_resamples}")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))
    flat = (idx + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(float)


def _interval(estimate: float, values: np.ndarray, confidence: float, method: str
              ) -> BootstrapResult:
    defined = values[np.isfinite(values)]
    tail = 100 * (1 - confidence) / 2
    lo = hi = None
    if defined.size:
        lo, hi = (float(v) for v in np.percentile(defined, [tail, 100 - tail]))
    return BootstrapResult(float(estimate), lo, hi, confidence, int(values.size),
                           int(values.size - defined.size), method, values)


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise PeftlabError(f"confidence must be in (0, 1), got {confidence}")


def _floats(a, name: str) -> np.ndarray:
    arr = np.array(a, dtype=np.float64)  # a private copy: centred in place below
    if arr.ndim != 2 or 0 in arr.shape:
        raise PeftlabError(f"{name} must be a non-empty 2-D array (n_examples, features), got "
                           f"shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise PeftlabError(f"{name} (shape {arr.shape}) contains NaN or infinite values")
    return arr


def weighted_linear_cka(x, y, counts: np.ndarray, debiased: bool = True) -> np.ndarray:
    """Linear CKA of the resamples of (x, y) that `counts` ((B, n) multiplicities) describe.

    Returns (B,) values; NaN where a resample's self-similarity term is not positive (CKA 0/0).
    Features are centred on the whole probe set first (the biased estimator is translation
    invariant anyway; the debiased one, with duplicate pairs removed, nearly so).

    With w = counts[b], N = sum(w) and the n x n Grams K = x x', L = y y' (diagonal zeroed for
    the debiased estimator), the resample's HSIC terms are
        tr(K_r L_r) = w'(K o L)w,  1'K_r 1 = w'Kw,  1'K_r L_r 1 = sum_a w_a (Kw)_a (Lw)_a,
    and biased:   HSIC = tr(K_r L_r) - 2/N 1'K_r L_r 1 + (1'K_r 1)(1'L_r 1) / N^2,
    debiased:     HSIC = tr(K_r L_r) + (1'K_r 1)(1'L_r 1) / ((N-1)(N-2)) - 2/(N-2) 1'K_r L_r 1
    (Song et al. 2012, up to the factor 1 / (N(N-3)) that cancels in CKA). With counts all ones
    this is `peftlab.similarity.linear_cka(x, y, debiased)`.
    """
    xa, ya = _floats(x, "x"), _floats(y, "y")
    if xa.shape[0] != ya.shape[0]:
        raise PeftlabError(f"x and y must hold the same examples, got {xa.shape[0]} and "
                           f"{ya.shape[0]} rows")
    w = np.asarray(counts, dtype=np.float64)
    n = xa.shape[0]
    if w.ndim != 2 or w.shape[1] != n:
        raise PeftlabError(f"counts must be (n_resamples, {n}), got shape {w.shape}")
    if n < (4 if debiased else 2):
        raise PeftlabError(f"{'debiased ' if debiased else ''}CKA needs at least "
                           f"{4 if debiased else 2} examples, got n={n}")
    xa -= xa.mean(axis=0)
    ya -= ya.mean(axis=0)
    b = w.shape[0]
    kw, lw = np.empty((b, n)), np.empty((b, n))
    a_kl, a_kk, a_ll = np.zeros(b), np.zeros(b), np.zeros(b)
    for start in range(0, n, _BLOCK_COLUMNS):
        cols = slice(start, min(n, start + _BLOCK_COLUMNS))
        kb = xa @ xa[cols].T  # (n, c): columns `cols` of K
        lb = ya @ ya[cols].T
        if debiased:
            rows = np.arange(cols.start, cols.stop)
            kb[rows, rows - cols.start] = 0.0
            lb[rows, rows - cols.start] = 0.0
        kw[:, cols] = w @ kb
        lw[:, cols] = w @ lb
        wc = w[:, cols]
        a_kl += np.einsum("bc,bc->b", w @ (kb * lb), wc)
        a_kk += np.einsum("bc,bc->b", w @ (kb * kb), wc)
        a_ll += np.einsum("bc,bc->b", w @ (lb * lb), wc)
    s_k, s_l = np.einsum("bn,bn->b", w, kw), np.einsum("bn,bn->b", w, lw)
    c_kl = np.einsum("bn,bn,bn->b", w, kw, lw)
    c_kk = np.einsum("bn,bn,bn->b", w, kw, kw)
    c_ll = np.einsum("bn,bn,bn->b", w, lw, lw)
    big_n = w.sum(axis=1)

    def hsic(a: np.ndarray, s1: np.ndarray, s2: np.ndarray, c: np.ndarray) -> np.ndarray:
        if debiased:
            return a + s1 * s2 / ((big_n - 1) * (big_n - 2)) - 2.0 / (big_n - 2) * c
        return a - 2.0 / big_n * c + s1 * s2 / big_n**2

    h_kl, h_kk, h_ll = hsic(a_kl, s_k, s_l, c_kl), hsic(a_kk, s_k, s_k, c_kk), hsic(
        a_ll, s_l, s_l, c_ll)
    out = np.full(b, np.nan)
    ok = (h_kk > 0) & (h_ll > 0)
    out[ok] = h_kl[ok] / np.sqrt(h_kk[ok] * h_ll[ok])
    return out


def linear_cka_bootstrap(x, y, n_resamples: int = 100, seed: int = 0, debiased: bool = True,
                         confidence: float = 0.95) -> BootstrapResult:
    """Linear CKA of x (n, dx), y (n, dy) with its bootstrap interval over probe examples
    (see `weighted_linear_cka`). Unitless."""
    _check_confidence(confidence)
    n = np.shape(x)[0]
    # the full probe set (all counts 1) rides along as row 0: one pass over the Grams
    counts = np.vstack([np.ones((1, n)), resample_counts(n, n_resamples, seed)])
    both = weighted_linear_cka(x, y, counts, debiased)
    estimate, values = float(both[0]), both[1:]
    kind = "debiased" if debiased else "biased"
    return _interval(estimate, values, confidence,
                     f"percentile bootstrap over probe examples ({kind} linear CKA from weighted "
                     "Gram sums" + ("; duplicate pairs excluded" if debiased else "") + ")")


def mean_bootstrap(per_row, n_resamples: int = 100, seed: int = 0, confidence: float = 0.95,
                   what: str = "mean of per-example values") -> BootstrapResult:
    """Mean of per-example values (n,) (e.g. the paired cosines of `cosine_similarity`) with its
    bootstrap interval over examples."""
    _check_confidence(confidence)
    r = np.asarray(per_row, dtype=np.float64)
    if r.ndim != 1 or r.size == 0 or not np.isfinite(r).all():
        raise PeftlabError(f"per-example values must be a finite non-empty 1-D array, got shape "
                           f"{r.shape}")
    counts = resample_counts(r.size, n_resamples, seed)
    return _interval(float(r.mean()), counts @ r / r.size, confidence,
                     f"percentile bootstrap over probe examples ({what})")


def generic_bootstrap(measure: Callable[[np.ndarray, np.ndarray], float], x, y,
                      n_resamples: int = 100, seed: int = 0, confidence: float = 0.95,
                      what: str = "measure recomputed on each resample") -> BootstrapResult:
    """Any measure(x, y) -> float recomputed on each resample's rows (duplicates included).
    B calls of the measure: the fallback for measures without a fast form. A resample on which
    the measure raises (undefined there) counts as undefined."""
    _check_confidence(confidence)
    xa, ya = np.asarray(x), np.asarray(y)
    n = xa.shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_resamples, n))  # the same draws as resample_counts
    values = np.full(n_resamples, np.nan)
    for i, rows in enumerate(idx):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                v = float(measure(xa[rows], ya[rows]))
        except PeftlabError:
            continue
        values[i] = v if math.isfinite(v) else np.nan
    return _interval(float(measure(xa, ya)), values, confidence,
                     f"percentile bootstrap over probe examples ({what})")
