"""The timing loop and the statistics derived from its raw latencies.

    timing = time_requests(call, stream.next, warmup=10, min_iterations=50, min_seconds=2.0,
                           max_seconds=60.0, device="cpu")
    stats = latency_stats(timing.latencies_ns)          # ms: mean, std, p50, p90, p95, p99, ...
                                                        # + p50_ci, p99_ci, p99_note (n < 100)

One timed iteration is one request: everything the server does for it (an adapter switch included)
sits between the two clock reads, and nothing else does (choosing the next request, bookkeeping).

Clocks. CPU: `time.perf_counter_ns` around the call. CUDA: kernels run asynchronously, so the device
is synchronised before the first timed call and after every call (the latency is the wall-clock
time a caller waits for its logits, host overhead included), and a pair of CUDA events is recorded
around each call as well (`device_latencies_ns`: the span the GPU stream saw).

Stopping rule (as optimum-benchmark's latency tracker): at least `min_iterations` calls AND at least
`min_seconds` of timed work, or `max_seconds` of wall time, whichever comes first.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


@dataclass
class Timing:
    """Raw result of one timing loop.

    latencies_ns: one int per timed call (ns); device_latencies_ns: CUDA event spans (ns, CUDA
    only, else empty); requests: what `next_request` returned for each timed call, in order;
    warmup_requests: the same for the warm-up calls; stopped_by: "min_reached" | "max_seconds";
    wall_s: seconds from the first to the last timed clock read (includes the loop's own work).
    """

    latencies_ns: list[int]
    device_latencies_ns: list[int] = field(default_factory=list)
    requests: list[Any] = field(default_factory=list)
    warmup_requests: list[Any] = field(default_factory=list)
    stopped_by: str = "min_reached"
    wall_s: float = 0.0
    timer: str = "perf_counter_ns"


def synchronizer(device: str) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on CPU)."""
    if str(device).startswith("cuda"):
        import torch

        return torch.cuda.synchronize
    if str(device).startswith("mps"):
        import torch

        return torch.mps.synchronize
    return _noop


def _noop() -> None:
    return None


def time_requests(
    call: Callable[[Any], Any],
    next_request: Callable[[], Any],
    *,
    warmup: int,
    min_iterations: int,
    min_seconds: float,
    max_seconds: float,
    device: str = "cpu",
    after: Callable[[Any], None] | None = None,
    before_timing: Callable[[], None] | None = None,
    now_ns: Callable[[], int] = time.perf_counter_ns,
) -> Timing:
    """Warm up, then time `call(next_request())` until the stopping rule is met.

    `after(request)` runs after each timed call's second clock read (bookkeeping that must not be
    timed, e.g. reading which adapter is active). `before_timing()` runs once between warm-up and
    the first timed call. `now_ns`: the clock read around each call (a stand-in in tests).
    Returns a `Timing` with every raw latency.
    """
    if min_iterations < 1:
        raise ValueError(f"min_iterations must be >= 1, got {min_iterations}")
    sync = synchronizer(device)
    cuda = str(device).startswith("cuda")
    warm = []
    for _ in range(warmup):
        request = next_request()
        call(request)
        warm.append(request)
    sync()
    if before_timing is not None:
        before_timing()
    if cuda:
        import torch

        new_event = torch.cuda.Event
    min_ns, max_ns = int(min_seconds * 1e9), int(max_seconds * 1e9)
    latencies: list[int] = []
    requests: list[Any] = []
    events: list[tuple[Any, Any]] = []
    clock = now_ns
    stopped_by = "min_reached"
    start = clock()
    while True:
        request = next_request()
        if cuda:
            begin, end = new_event(enable_timing=True), new_event(enable_timing=True)
            t0 = clock()
            begin.record()
            call(request)
            end.record()
            sync()
            t1 = clock()
            events.append((begin, end))
        else:
            t0 = clock()
            call(request)
            t1 = clock()
        latencies.append(t1 - t0)
        requests.append(request)
        if after is not None:
            after(request)
        elapsed = t1 - start
        if len(latencies) >= min_iterations and elapsed >= min_ns:
            break
        if elapsed >= max_ns:
            stopped_by = "max_seconds"
            break
    wall_s = (clock() - start) / 1e9
    device_ns = [int(b.elapsed_time(e) * 1e6) for b, e in events]  # elapsed_time is in ms
    return Timing(latencies_ns=latencies, device_latencies_ns=device_ns, requests=requests,
                  warmup_requests=warm, stopped_by=stopped_by, wall_s=wall_s,
                  timer="cuda.synchronize + perf_counter_ns (+ CUDA events)" if cuda
                  else "perf_counter_ns")


# p99 is the interpolation of the slowest 1% of requests: below 100 requests that is fewer than one
# request, so its value is read off the one or two slowest calls and no interval can cover it.
MIN_P99_REQUESTS = 100
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
TOO_FEW_FOR_P99 = f"too few requests (n < {MIN_P99_REQUESTS})"


def latency_stats(latencies_ns: list[int] | np.ndarray, *,
                  resamples: int = BOOTSTRAP_RESAMPLES,
                  seed: int = BOOTSTRAP_SEED) -> dict[str, Any]:
    """Summary of raw latencies, in ms: count, total_ms, mean, std, min, p50, p90, p95, p99, max,
    and bootstrap intervals for p50 and p99.

    Percentiles are NumPy's `np.percentile` with its default linear interpolation; std is the
    sample standard deviation (ddof=1; 0 for a single value); cv = std / mean.

    Intervals: `p50_ci` / `p99_ci` = [low, high] ms, the percentile bootstrap (`resamples`
    resamples of the raw latencies with replacement, seeded by `seed`, so the same latencies give
    the same interval) at `ci_level` (0.95). `p99_reliable` is False and `p99_note` says
    "too few requests (n < 100)" when fewer than `MIN_P99_REQUESTS` latencies back p99: `p99` is
    still the raw percentile (for old readers), but `p99_ci` is None and a report must print
    the note instead of the number. `p99_n` is the number of requests p99 rests on.
    """
    x = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if x.size == 0:
        raise ValueError("no latencies to summarise")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    out: dict[str, Any] = {
        "count": int(x.size),
        "total_ms": float(x.sum()),
        "mean": float(x.mean()),
        "std": std,
        "cv": std / float(x.mean()) if x.mean() > 0 else 0.0,
        "min": float(x.min()),
    }
    for q in PERCENTILES:
        out[f"p{q}"] = float(np.percentile(x, q))
    out["max"] = float(x.max())
    reliable = x.size >= MIN_P99_REQUESTS
    ci = bootstrap_percentile_ci(x, (50, 99) if reliable else (50,), resamples=resamples,
                                 seed=seed, level=CI_LEVEL)
    out.update({
        "p50_ci": ci[50],
        "p99_ci": ci.get(99),
        "p99_n": int(x.size),
        "p99_reliable": bool(reliable),
        "p99_note": None if reliable else TOO_FEW_FOR_P99,
        "ci_level": CI_LEVEL,
        "ci_method": f"percentile bootstrap, {resamples} resamples, seed {seed}",
    })
    return out


def bootstrap_percentile_ci(x: np.ndarray, qs: tuple[int, ...], *, resamples: int, seed: int,
                            level: float = CI_LEVEL) -> dict[int, list[float] | None]:
    """Percentile-bootstrap interval [low, high] of each percentile q in `qs` of the values `x`.

    Resampling is done in chunks (at most ~4 million drawn values at a time), so 10^4 latencies x
    2000 resamples need tens of MB, not 160. A single value gives [x, x].
    """
    x = np.asarray(x, dtype=np.float64)
    if x.size == 1:
        return {q: [float(x[0]), float(x[0])] for q in qs}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 4_000_000 // x.size))
    draws = []
    done = 0
    while done < resamples:
        m = min(chunk, resamples - done)
        idx = rng.integers(0, x.size, size=(m, x.size))
        draws.append(np.percentile(x[idx], qs, axis=1))  # [len(qs), m]
        done += m
    boot = np.concatenate(draws, axis=1)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boot, [alpha, 1 - alpha], axis=1)
    return {q: [float(lo[i]), float(hi[i])] for i, q in enumerate(qs)}


def throughput(latencies_ns: list[int], rows: list[int], tokens: list[int],
               padded_tokens: list[int]) -> dict[str, float]:
    """Requests and tokens per second of timed work (sum over calls / sum of latencies).

    rows, tokens, padded_tokens: one value per timed call (examples in the batch, non-padding
    tokens, tokens including padding). Time between calls (choosing the next request) is excluded.
    """
    seconds = float(np.sum(np.asarray(latencies_ns, dtype=np.float64))) / 1e9
    if seconds <= 0:
        return {"requests_per_s": 0.0, "tokens_per_s": 0.0, "padded_tokens_per_s": 0.0}
    return {
        "requests_per_s": float(np.sum(rows)) / seconds,
        "tokens_per_s": float(np.sum(tokens)) / seconds,
        "padded_tokens_per_s": float(np.sum(padded_tokens)) / seconds,
    }
