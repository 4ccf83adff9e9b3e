"""python -m benchmarks.cka_speed [--layers 30 --n 500 --d 2048 --mem-n 10000 --mem-d 4096]

Times every measure in peftlab.similarity against a plain NumPy reference written here (the
straightforward Gram-matrix formulas of Kornblith et al.'s Demo.ipynb; nuclear norm of the d x d
matrix X^T Y for Procrustes; a full n x n similarity matrix and argsort for kNN), on `--layers`
pairs of random float32 representations of shape (n, d), as the drift stage sees them for one run.
Both sides get the same float32 arrays and work in float64. Calls alternate between the two sides
so that load from other processes hits both alike; each line prints the summed seconds over layers,
the ratio peftlab / reference (below 1 = peftlab faster) of the sums and the median of per-layer
ratios, and the largest disagreement between the two values.

Then the permutation null (`cka_null`, `--perms` shuffles, one layer) against the reference
recomputing CKA per shuffle, and the peak memory traced by tracemalloc (NumPy's allocations; BLAS
work buffers are not included) of one linear_cka call, biased and debiased, at --mem-n x --mem-d.
Run from the repository root. Quick run:
  python -m benchmarks.cka_speed --layers 3 --n 200 --d 256 --mem-n 2000 --mem-d 512
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from peftlab import similarity

# ----------------------------------------------------------------------------- reference


def ref_center_gram(gram: np.ndarray, unbiased: bool) -> np.ndarray:
    gram = gram.copy()
    n = gram.shape[0]
    if unbiased:
        np.fill_diagonal(gram, 0)
        means = np.sum(gram, 0) / (n - 2)
        means -= np.sum(means) / (2 * (n - 1))
        gram -= means[:, None]
        gram -= means[None, :]
        np.fill_diagonal(gram, 0)
    else:
        means = np.mean(gram, 0)
        means -= np.mean(means) / 2
        gram -= means[:, None]
        gram -= means[None, :]
    return gram


def ref_cka_grams(gx: np.ndarray, gy: np.ndarray, debiased: bool) -> float:
    gx = ref_center_gram(gx, debiased)
    gy = ref_center_gram(gy, debiased)
    return gx.ravel() @ gy.ravel() / (np.linalg.norm(gx) * np.linalg.norm(gy))


def ref_linear_cka(x, y, debiased=False) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return ref_cka_grams(x @ x.T, y @ y.T, debiased)


def ref_gram_rbf(x: np.ndarray, threshold: float) -> np.ndarray:
    dots = x @ x.T
    sq_norms = np.diag(dots)
    sq_dist = -2 * dots + sq_norms[:, None] + sq_norms[None, :]
    return np.exp(-sq_dist / (2 * threshold**2 * np.median(sq_dist)))


def ref_rbf_cka(x, y, sigma=0.8) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    return ref_cka_grams(ref_gram_rbf(x, sigma), ref_gram_rbf(y, sigma), False)


def ref_cosine(x, y) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    per_row = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
    return float(per_row.mean())


def ref_procrustes(x, y) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    x /= np.linalg.norm(x)
    y /= np.linalg.norm(y)
    return 2 - 2 * np.linalg.norm(x.T @ y, ord="nuc")


def ref_knn(x, y, k=10) -> float:
    def neighbours(a):
        a = a.astype(np.float64)
        a /= np.linalg.norm(a, axis=1, keepdims=True)
        sims = a @ a.T
        np.fill_diagonal(sims, -np.inf)
        return np.argsort(-sims, axis=1)[:, :k]

    nx, ny = neighbours(x), neighbours(y)
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(nx, ny, strict=True)]))


MEASURES = {
    # name: (peftlab, reference)
    "linear CKA": (lambda x, y: similarity.linear_cka(x, y), ref_linear_cka),
    "linear CKA debiased": (
        lambda x, y: similarity.linear_cka(x, y, debiased=True),
        lambda x, y: ref_linear_cka(x, y, debiased=True),
    ),
    "RBF CKA": (lambda x, y: similarity.rbf_cka(x, y), ref_rbf_cka),
    "cosine": (lambda x, y: similarity.cosine_similarity(x, y).mean, ref_cosine),
    "Procrustes": (similarity.procrustes_distance, ref_procrustes),
    "kNN overlap (k=10)": (similarity.knn_overlap, ref_knn),
}


# ----------------------------------------------------------------------------- benchmark


def layer_pair(rng: np.random.Generator, n: int, d: int):
    """Two related float32 representations (a base layer and a drifted copy), shape (n, d)."""
    x = rng.standard_normal((n, d), dtype=np.float32)
    y = x + rng.standard_normal((n, d), dtype=np.float32)
    return x, y


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def bench_measures(layers: int, n: int, d: int) -> None:
    rng = np.random.default_rng(0)
    seconds = {name: np.zeros((layers, 2)) for name in MEASURES}  # [layer, peftlab/reference]
    worst = dict.fromkeys(MEASURES, 0.0)
    for layer in range(layers):
        x, y = layer_pair(rng, n, d)
        for name, (ours, ref) in MEASURES.items():
            # Alternate which side goes first, so a burst of load elsewhere is shared.
            order = [(0, ours), (1, ref)] if layer % 2 == 0 else [(1, ref), (0, ours)]
            values = {}
            for side, fn in order:
                seconds[name][layer, side], values[side] = timed(fn, x, y)
            worst[name] = max(worst[name], abs(float(values[0]) - float(values[1])))
    print(f"{layers} layers of float32 (n={n}, d={d}); seconds summed over layers; the median of")
    print("per-layer ratios is less sensitive to bursts of load from other processes")
    print(
        f"{'measure':<22}{'peftlab s':>11}{'reference s':>13}{'ratio':>8}{'median':>8}"
        f"{'max |diff|':>12}"
    )
    for name, per_layer in seconds.items():
        ours_s, ref_s = per_layer.sum(axis=0)
        median = float(np.median(per_layer[:, 0] / per_layer[:, 1]))
        print(
            f"{name:<22}{ours_s:>11.3f}{ref_s:>13.3f}{ours_s / ref_s:>8.2f}{median:>8.2f}"
            f"{worst[name]:>12.1e}"
        )
    total_ours = sum(float(s[:, 0].sum()) for s in seconds.values())
    total_ref = sum(float(s[:, 1].sum()) for s in seconds.values())
    ratio = total_ours / total_ref
    print(f"{'all measures':<22}{total_ours:>11.3f}{total_ref:>13.3f}{ratio:>8.2f}")


def ref_null(x, y, perms: int, debiased: bool) -> list[float]:
    """CKA of x and y[perm] for the same permutations `cka_null(seed=0)` draws."""
    rng = np.random.default_rng(0)
    return [ref_linear_cka(x, y[rng.permutation(len(y))], debiased) for _ in range(perms)]


def bench_null(n: int, d: int, perms: int) -> None:
    x, y = layer_pair(np.random.default_rng(1), n, d)
    for debiased in (False, True):
        ours_s, result = timed(similarity.cka_null, x, y, perms, 0, debiased)
        ref_s, ref_values = timed(ref_null, x, y, perms, debiased)
        diff = np.max(np.abs(result.values - np.array(ref_values)))
        label = "debiased" if debiased else "biased"
        print(
            f"cka_null linear {label:<9}{perms} perms: peftlab {ours_s:.3f} s, reference"
            f" {ref_s:.3f} s, ratio {ours_s / ref_s:.3f}, max |diff| {diff:.1e}"
        )


def bench_memory(n: int, d: int) -> None:
    x, y = layer_pair(np.random.default_rng(2), n, d)
    inputs_mib = (x.nbytes + y.nbytes) / 2**20
    print(f"linear_cka at n={n}, d={d}: float32 inputs {inputs_mib:.0f} MiB (not counted below)")
    for debiased in (False, True):
        tracemalloc.start()
        seconds, value = timed(similarity.linear_cka, x, y, debiased)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        label = "debiased" if debiased else "biased"
        print(
            f"  {label:<9}peak traced {peak / 2**20:7.0f} MiB"
            f" ({peak / (x.nbytes + y.nbytes):.2f} x inputs), {seconds:.1f} s, CKA {value:.4f}"
        )
    gram_mib = 2 * n * n * 8 / 2**20
    print(f"  (two n x n float64 Gram matrices, as the reference holds them: {gram_mib:.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=30, help="layer pairs to time")
    parser.add_argument("--n", type=int, default=500, help="examples per layer")
    parser.add_argument("--d", type=int, default=2048, help="features per layer")
    parser.add_argument("--perms", type=int, default=100, help="shuffles for the null timing")
    parser.add_argument("--mem-n", type=int, default=10_000, help="examples for the memory run")
    parser.add_argument("--mem-d", type=int, default=4096, help="features for the memory run")
    args = parser.parse_args()
    bench_measures(args.layers, args.n, args.d)
    bench_null(args.n, args.d, args.perms)
    bench_memory(args.mem_n, args.mem_d)


if __name__ == "__main__":
    main()
