"""The timing loop and the statistics derived from its raw latencies.

    timing = time_requests(call, stream.next, warmup=10, min_iterations=50, min_seconds=2.0,
                           max_seconds=60.0, device="cpu")
    stats = latency_stats(timing.latencies_ns)          # ms: mean, std, p50, p90, p95, p99, ...

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
) -> Timing:
    """Warm up, then time `call(next_request())` until the stopping rule is met.

    `after(request)` runs after each timed call's second clock read (bookkeeping that must not be
    timed, e.g. reading which adapter is active). `before_timing()` runs once between warm-up and
    the first timed call. Returns a `Timing` with every raw latency.
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
    clock = time.perf_counter_ns
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


def latency_stats(latencies_ns: list[int] | np.ndarray) -> dict[str, float | int]:
    """Summary of raw latencies, in ms: count, total_ms, mean, std, min, p50, p90, p95, p99, max.

    Percentiles are NumPy's `np.percentile` with its default linear interpolation; std is the
    sample standard deviation (ddof=1; 0 for a single value); cv = std / mean.
    """
    x = np.asarray(latencies_ns, dtype=np.float64) / 1e6
    if x.size == 0:
        raise ValueError("no latencies to summarise")
    std = float(np.std(x, ddof=1)) if x.size > 1 else 0.0
    out: dict[str, float | int] = {
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
    return out


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
