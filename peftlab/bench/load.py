"""Open-loop load: Poisson arrivals, adapter popularity, and the driver that offers them to a server.

    times = poisson_arrivals(20.0, max_requests=500, max_seconds=10.0, seed=0)   # s, increasing
    who = adapter_popularity("skewed", k=4, n=len(times), seed=0, zipf_exponent=1.5)
    run = drive_open_loop(server, workload, times, who, window_s=10.0, drain_seconds=2.0)

Open loop: each request is sent at its scheduled time whether or not earlier ones are answered. A
closed loop (send, wait, send) lets a slow server slow its own load, so queueing never shows and
tail latency is understated ("coordinated omission"). Latency here runs from the *scheduled*
arrival to the answer, so a driver that wakes late (the server thread holds the GIL) adds to the
measured latency instead of hiding it; the lag is recorded per request.

Popularity patterns (the four of Punica's multi-tenant LoRA benchmarks), for k adapters:
    distinct   each request for a different adapter than the one before, in turn (0, 1, .., k-1, 0..)
    uniform    each request's adapter drawn uniformly at random
    skewed     drawn from a Zipf law over adapter ranks: P(adapter i) = (i+1)^-s / sum_j (j+1)^-s,
               i = 0..k-1, exponent s = `zipf_exponent` (default 1.5; adapter 0 most popular)
    identical  every request for adapter 0
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from peftlab.bench.clock import SYSTEM_CLOCK, Clock
from peftlab.errors import PeftlabError

PATTERNS = ("distinct", "uniform", "skewed", "identical")
DEFAULT_ZIPF_EXPONENT = 1.5
# While the driver runs, the interpreter hands the GIL over every 0.5 ms instead of every 5 ms,
# so a driver waiting for its next arrival wakes within ~0.5 ms while the server thread runs
# Python code (the model's module calls); the default would add up to 5 ms of lag per request.
DRIVER_SWITCH_INTERVAL_S = 0.0005


def poisson_arrivals(rate: float, *, max_requests: int, max_seconds: float, seed: int
                     ) -> np.ndarray:
    """Arrival times (s from the start, increasing) of a Poisson process of `rate` requests/s.

    Inter-arrival gaps are exponential with mean 1/rate (seeded `numpy.random.default_rng(seed)`);
    the first request arrives after the first gap. The sequence is cut at `max_requests` requests
    and before `max_seconds`, whichever comes first. Returns float64 [n], n <= max_requests.
    """
    if not rate > 0:
        raise PeftlabError(f"arrival rate must be > 0 requests/s, got {rate!r}")
    if max_requests < 1 or not max_seconds > 0:
        raise PeftlabError(f"max_requests must be >= 1 and max_seconds > 0, got {max_requests} "
                           f"and {max_seconds}")
    rng = np.random.default_rng(seed)
    gaps = rng.exponential(1.0 / rate, size=max_requests)
    times = np.cumsum(gaps)
    return times[times < max_seconds]


def popularity_probabilities(pattern: str, k: int, *,
                             zipf_exponent: float = DEFAULT_ZIPF_EXPONENT) -> np.ndarray:
    """P(adapter i) for i in [0, k) under `pattern` (distinct: the long-run share, 1/k each)."""
    check_pattern(pattern, k, zipf_exponent)
    if pattern in ("distinct", "uniform"):
        return np.full(k, 1.0 / k)
    if pattern == "identical":
        p = np.zeros(k)
        p[0] = 1.0
        return p
    w = np.arange(1, k + 1, dtype=np.float64) ** -float(zipf_exponent)
    return w / w.sum()


def check_pattern(pattern: str, k: int, zipf_exponent: float) -> None:
    if pattern not in PATTERNS:
        raise PeftlabError(f"adapter popularity pattern must be one of {PATTERNS}, got "
                           f"{pattern!r}")
    if k < 1:
        raise PeftlabError(f"need at least one adapter, got k={k}")
    if pattern == "skewed" and not zipf_exponent > 0:
        raise PeftlabError(f"zipf_exponent must be > 0, got {zipf_exponent!r}")


def adapter_popularity(pattern: str, k: int, n: int, *, seed: int,
                       zipf_exponent: float = DEFAULT_ZIPF_EXPONENT) -> np.ndarray:
    """The adapter index (int64 [n], values in [0, k)) of each of n requests under `pattern`."""
    check_pattern(pattern, k, zipf_exponent)
    if pattern == "distinct":
        return np.arange(n, dtype=np.int64) % k
    if pattern == "identical":
        return np.zeros(n, dtype=np.int64)
    p = popularity_probabilities(pattern, k, zipf_exponent=zipf_exponent)
    return np.random.default_rng(seed).choice(k, size=n, p=p).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# The driver


@dataclass
class Workload:
    """Tokenised requests per adapter (unpadded), cycled: what the driver sends.

    names: adapter (or model) names in index order (popularity index i -> names[i]); examples:
    name -> list of feature dicts ({"input_ids": [...], "attention_mask": [...], ...}), each one
    request of one example, taken in order and cycled.
    """

    names: list[str]
    examples: dict[str, list[dict[str, list[int]]]]
    cursor: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        empty = [n for n in self.names if not self.examples.get(n)]
        if empty:
            raise PeftlabError(f"no examples to send for adapter(s) {empty}")

    def take(self, name: str) -> dict[str, list[int]]:
        i = self.cursor.get(name, 0)
        self.cursor[name] = i + 1
        rows = self.examples[name]
        return rows[i % len(rows)]


def workload_from_encoded(encoded: dict[str, Any]) -> Workload:
    """A Workload from name -> `encode.encode_frame` Dataset (or list of feature dicts)."""
    cols = ("input_ids", "attention_mask", "token_type_ids")
    examples = {}
    for name, ds in encoded.items():
        if isinstance(ds, list):
            examples[name] = ds
            continue
        have = [c for c in cols if c in ds.column_names]
        data = ds[:]
        examples[name] = [{c: data[c][i] for c in have} for i in range(len(ds))]
    return Workload(names=list(encoded), examples=examples)


def workload_from_frames(frames: dict[str, Any], tokenizer: Any, *, max_length: int,
                         pair_template: str = "{a}\n{b}") -> Workload:
    """A Workload from name -> task frame (text_a, [text_b], label), tokenised as the bench does
    (`encode.encode_frame`: truncated to max_length, unpadded)."""
    from peftlab.encode import encode_frame

    return workload_from_encoded({name: encode_frame(df, tokenizer, max_length=max_length,
                                                     pair_template=pair_template)
                                  for name, df in frames.items()})


@dataclass
class DriveResult:
    """What the driver did: offered requests, when, and how the run ended (times in s)."""

    offered: int
    scheduled_offered: int
    arrival_window_s: float
    wall_s: float
    stopped_by: str  # "all_answered" | "drain_timeout" | "server_error"
    lag_ms: list[float]


def drive_open_loop(server: Any, workload: Workload, times: np.ndarray, adapters: np.ndarray, *,
                    window_s: float, drain_seconds: float, clock: Clock = SYSTEM_CLOCK
                    ) -> DriveResult:
    """Send request i for adapter `workload.names[adapters[i]]` at `times[i]` s after the start.

    server: started, with submit(request_id, adapter, features, arrival_ns), answered() -> int,
    error (None or a message) and stop() (answers every request still queued "unserved").
    window_s: the arrival window (the time bound of the arrivals, or the last arrival when the
    count bound cut them first). The driver never waits for an answer before sending; after the
    window it waits at most `drain_seconds` for outstanding answers, then stops the server. So a
    run ends by itself within window_s + drain_seconds + the one batch in flight at that moment,
    however slow the server. clock: the server's (`peftlab.bench.clock`), read and slept on here.
    """
    if len(times) != len(adapters):
        raise PeftlabError(f"{len(times)} arrival times but {len(adapters)} adapter choices")
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(DRIVER_SWITCH_INTERVAL_S)
    now_ns, sleep = clock.now_ns, clock.sleep
    lag: list[float] = []
    offered = 0
    stopped_by = "all_answered"
    start = now_ns()
    try:
        for i, (t, a) in enumerate(zip(times, adapters, strict=True)):
            if t > window_s:
                break
            due = start + int(t * 1e9)
            while True:
                now = now_ns()
                if now >= due:
                    break
                sleep(min((due - now) / 1e9, 0.05))
            if server.error is not None:
                stopped_by = "server_error"
                break
            name = workload.names[int(a)]
            server.submit(i, name, workload.take(name), due)
            lag.append((now_ns() - due) / 1e6)
            offered += 1
        deadline = start + int((window_s + drain_seconds) * 1e9)
        while server.answered() < offered and server.error is None:
            now = now_ns()
            if now >= deadline:
                stopped_by = "drain_timeout"
                break
            sleep(min((deadline - now) / 1e9, 0.005))
        if server.error is not None:
            stopped_by = "server_error"
    finally:
        server.stop()
        sys.setswitchinterval(old_interval)
    return DriveResult(offered=offered, scheduled_offered=len(times), arrival_window_s=window_s,
                       wall_s=(now_ns() - start) / 1e9, stopped_by=stopped_by, lag_ms=lag)


def arrival_window(times: np.ndarray, *, max_requests: int, max_seconds: float) -> float:
    """The span the arrivals cover (s): the last arrival when the count bound cut them, else
    the time bound (the realised arrival rate is requests / this window)."""
    if len(times) >= max_requests:
        return float(times[-1])
    return float(max_seconds)
