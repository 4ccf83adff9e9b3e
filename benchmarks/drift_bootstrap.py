"""python -m benchmarks.drift_bootstrap [--n 200 --d 384 --layers 7 --comparisons 36 --resamples 100]

What the drift stage's bootstrap interval over probe examples (drift.bootstrap resamples of the
primary measure, debiased linear CKA) costs beside the rest of one layer's comparison.

On random representations of the quickstart's sizes (n = 200 probe examples, d = 384 features,
7 layers, 36 run pairs: 18 base-vs-run and 18 seed-to-seed), three things are timed per layer,
alternating within each repeat so that load from other processes hits them alike:

- compare: `measures.compare_layer` with the quickstart's drift settings (every default
  measure, 50 null permutations), what the stage computed before the interval existed;
- fast: `measures.bootstrap_interval` (one pass over column blocks of the Gram matrices gives
  every resample: `similarity_bootstrap.weighted_linear_cka`);
- naive: the same interval by recomputing `similarity.linear_cka(debiased=True)` on each
  resample's rows (duplicates included), the obvious way.

Prints the median seconds per layer of each, the projected total of the interval over
layers x comparisons (target: well under 20 s), and the median ratios fast / compare and
naive / fast.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from peftlab.measures import bootstrap_interval, compare_layer
from peftlab.similarity import linear_cka
from peftlab.spec import DriftSpec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--layers", type=int, default=7)
    ap.add_argument("--comparisons", type=int, default=36)
    ap.add_argument("--resamples", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.n, args.d)).astype(np.float32)
    y = (x @ rng.standard_normal((args.d, args.d)) * 0.05
         + rng.standard_normal((args.n, args.d))).astype(np.float32)
    cfg = DriftSpec(null_permutations=50, bootstrap=args.resamples)
    idx = rng.integers(0, args.n, size=(args.resamples, args.n))

    def naive() -> None:
        for rows in idx:
            linear_cka(x[rows], y[rows], debiased=True)

    timings: dict[str, list[float]] = {"compare": [], "fast": [], "naive": []}
    runs = {"compare": lambda: compare_layer(x, y, cfg, "bench"),
            "fast": lambda: bootstrap_interval("linear_cka_debiased", x, y, cfg),
            "naive": naive}
    for f in runs.values():
        f()  # warm-up: imports, BLAS threads
    for _ in range(args.repeats):
        for name, f in runs.items():
            t0 = time.perf_counter()
            f()
            timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    layers = args.layers * args.comparisons
    print(f"n={args.n}, d={args.d}, {args.resamples} resamples; {args.layers} layers x "
          f"{args.comparisons} comparisons = {layers} layer comparisons")
    for name in runs:
        print(f"  {name:8s} {med[name] * 1e3:9.2f} ms per layer   {med[name] * layers:7.2f} s "
              "for the study")
    ratios_fc = [f / c for f, c in zip(timings["fast"], timings["compare"], strict=True)]
    ratios_nf = [n / f for n, f in zip(timings["naive"], timings["fast"], strict=True)]
    print(f"  fast / compare: {statistics.median(ratios_fc):.3f}   "
          f"naive / fast: {statistics.median(ratios_nf):.1f}")


if __name__ == "__main__":
    main()
