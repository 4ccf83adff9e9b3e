"""Open-loop load against an engine server, and the per-token metrics the field reports.

    prompts = EnginePrompts(names=["sst2", "mrpc"], prompts={"sst2": [...], "mrpc": [...]},
                            max_tokens=32)
    row = engine_load_run({"sst2": url_a, "mrpc": url_b}, prompts, rate=2.0, pattern="skewed",
                          max_requests=120, max_seconds=60.0, drain_seconds=30.0,
                          slo=Slo(ttft_ms=2000, tpot_ms=200), min_requests=100)

The arrivals, the adapter popularity and the driver are the in-process serving benchmark's
(`peftlab.bench.load`: Poisson arrivals, uniform / Zipf-skewed popularity, requests sent at their
scheduled time whether or not earlier ones were answered); only the server differs: each request
is one streaming HTTP request (`client.complete`) on its own thread, to the URL that serves its
model (one server with k adapters: the same URL for all; k merged models: one URL each).

Per-token metrics (all in ms; latencies from the *scheduled* arrival, so a late driver or a full
queue adds to them, never hides in them):
    ttft     time to first token: scheduled arrival -> first streamed output
    tpot     time per output token, per request: (last output - first output) / (tokens - 1)
    itl      inter-token latency: every gap between consecutive streamed outputs, all requests
    e2e      end-to-end: scheduled arrival -> last output
Each is `bench.timing.latency_stats` (p50/p90/p99 with bootstrap intervals; p99 marked "too few
requests" below 100). Throughput: completed requests and output tokens per second over (last
answer - first arrival). Goodput: completed requests per second that met both objectives
(ttft <= slo.ttft_ms and tpot <= slo.tpot_ms), as DistServe defines it. Validity of one load run:
`enough_requests` (completed >= min_requests) and `sustained` (every request answered and
throughput >= KEEP_UP_RATIO x the realised arrival rate, as `bench.serving` defines it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftlab.bench.engines.client import Timing, complete
from peftlab.bench.load import (
    DEFAULT_ZIPF_EXPONENT,
    adapter_popularity,
    arrival_window,
    drive_open_loop,
    poisson_arrivals,
)
from peftlab.bench.serving import KEEP_UP_RATIO
from peftlab.bench.timing import latency_stats
from peftlab.errors import PeftlabError


@dataclass
class Slo:
    """Latency objectives of goodput (ms)."""

    ttft_ms: float = 2000.0
    tpot_ms: float = 250.0


@dataclass
class EnginePrompts:
    """What an engine load run sends: per model name, prompts (text or token ids), cycled in
    order, each with `max_tokens` output tokens, or with its own output length where `lengths`
    gives one per prompt (a generation task's reference lengths). names: popularity order
    (index 0 the most popular under a skewed pattern)."""

    names: list[str]
    prompts: dict[str, list[str | list[int]]]
    max_tokens: int = 32
    lengths: dict[str, list[int]] | None = None  # name -> output tokens per prompt (same order)

    def __post_init__(self) -> None:
        empty = [n for n in self.names if not self.prompts.get(n)]
        if empty:
            raise PeftlabError(f"no prompts to send for model(s) {empty}")
        for n, ls in (self.lengths or {}).items():
            if len(ls) != len(self.prompts.get(n) or []) or any(x < 1 for x in ls):
                raise PeftlabError(f"model {n}: one output length >= 1 per prompt is needed")
        self._cursor: dict[str, int] = {}

    def take(self, name: str) -> dict[str, Any]:
        i = self._cursor.get(name, 0)
        self._cursor[name] = i + 1
        rows = self.prompts[name]
        lengths = (self.lengths or {}).get(name)
        return {"prompt": rows[i % len(rows)],
                "max_tokens": lengths[i % len(rows)] if lengths else self.max_tokens}


class EngineLoadServer:
    """The "server" `bench.load.drive_open_loop` drives: submit() starts one streaming request on
    its own thread against the URL serving the request's model; stop() aborts those still in
    flight (they count as unserved)."""

    def __init__(self, urls: dict[str, str], *, alive: Any = None):
        self.urls = urls
        self.timings: dict[int, Timing] = {}
        self.error: str | None = None
        self._alive = alive  # () -> bool: is every server still running?
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._finished = 0

    def submit(self, request_id: int, adapter: str, features: dict, arrival_ns: int) -> None:
        t = Timing(request_id, adapter, arrival_ns)
        self.timings[request_id] = t
        th = threading.Thread(target=self._run, args=(t, features), daemon=True,
                              name=f"peftlab-request-{request_id}")
        self._threads.append(th)
        th.start()

    def _run(self, t: Timing, features: dict) -> None:
        complete(self.urls[t.model], model=t.model, prompt=features["prompt"],
                 max_tokens=features["max_tokens"], arrival_ns=t.arrival_ns, timing=t)
        with self._lock:
            self._finished += 1
            if t.status == "error" and self.error is None and self._alive is not None \
                    and not self._alive():
                self.error = f"the server stopped while serving (request {t.id}: {t.error})"

    def answered(self) -> int:
        return self._finished

    def stop(self, grace_s: float = 10.0) -> None:
        """Abort the requests in flight and wait at most `grace_s` in all for their threads
        (one shared deadline: a Ctrl-C during a load run with 100 requests in flight must not
        wait 10 s per request; the threads are daemons, gone with the process)."""
        for t in self.timings.values():
            t.close()
        deadline = time.monotonic() + grace_s
        for th in self._threads:
            th.join(timeout=max(0.0, deadline - time.monotonic()))


def _stats(values_ns: list[int]) -> dict[str, Any] | None:
    return latency_stats(values_ns) if values_ns else None


def summarize_timings(timings: list[Timing], *, offered: int, window_s: float,
                      slo: Slo, min_requests: int) -> dict[str, Any]:
    """The per-token metrics of one load run (see the module docstring), JSON-ready."""
    done = [t for t in timings if t.status == "done"]
    counts = {s: sum(1 for t in timings if t.status == s) for s in ("done", "error", "unserved")}
    counts["unserved"] += offered - len(timings)
    ttft = [t.first_ns - t.arrival_ns for t in done]
    e2e = [t.done_ns - t.arrival_ns for t in done]
    tpot = [(t.token_ns[-1] - t.first_ns) / max(t.output_tokens - 1, 1) for t in done
            if t.output_tokens > 1]
    itl = [b - a for t in done for a, b in zip(t.token_ns, t.token_ns[1:], strict=False)]
    if done:
        span_s = max((max(t.done_ns for t in done) - min(t.arrival_ns for t in timings)) / 1e9,
                     1e-9)
    else:
        span_s = 0.0
    out_tokens = sum(t.output_tokens for t in done)
    good = [t for t in done if (t.first_ns - t.arrival_ns) / 1e6 <= slo.ttft_ms
            and (t.output_tokens <= 1 or (t.token_ns[-1] - t.first_ns)
                 / max(t.output_tokens - 1, 1) / 1e6 <= slo.tpot_ms)]
    realised = offered / window_s if window_s > 0 else 0.0
    rps = len(done) / span_s if span_s else 0.0
    all_answered = counts["done"] == offered and offered > 0
    keeps_up = bool(all_answered and rps >= KEEP_UP_RATIO * realised)
    enough = counts["done"] >= min_requests
    reasons = []
    if not enough:
        reasons.append(f"too few completed requests ({counts['done']} < {min_requests})")
    if not keeps_up:
        reasons.append("rate not sustained (unanswered requests or throughput < "
                       f"{KEEP_UP_RATIO} x arrivals)")
    return {
        "requests": {"offered": offered, **counts},
        "realised_arrival_rate": realised,
        "arrival_window_s": window_s,
        "ttft_ms": _stats(ttft), "tpot_ms": _stats([int(x) for x in tpot]),
        "itl_ms": _stats(itl), "e2e_ms": _stats(e2e),
        "latency_ms": _stats(e2e),  # what `bench.serving.sustained` and its sweep read
        "latency_from": "scheduled arrival (open loop); tpot and itl between streamed outputs",
        "throughput_rps": rps,
        "output_tokens_per_s": out_tokens / span_s if span_s else 0.0,
        "output_tokens": out_tokens,
        "goodput_rps": len(good) / span_s if span_s else 0.0,
        "goodput_share": len(good) / offered if offered else 0.0,
        "slo": {"ttft_ms": slo.ttft_ms, "tpot_ms": slo.tpot_ms},
        "keeps_up": keeps_up,
        "valid": bool(enough and keeps_up),
        "enough_requests": enough,
        "min_requests": min_requests,
        "invalid_because": reasons,
        "errors": sorted({t.error for t in timings if t.error})[:5],
    }


def engine_load_run(urls: dict[str, str], prompts: EnginePrompts, *, rate: float, pattern: str,
                    max_requests: int, max_seconds: float, drain_seconds: float, seed: int = 0,
                    zipf_exponent: float = DEFAULT_ZIPF_EXPONENT, slo: Slo | None = None,
                    min_requests: int = 100, alive: Any = None) -> dict[str, Any]:
    """Offer Poisson load at `rate` requests/s (at most max_requests within max_seconds, then at
    most drain_seconds for the answers) over `prompts.names` with popularity `pattern`; urls:
    model name -> the base URL of the server that serves it. Returns `summarize_timings`'s row
    with the run's settings."""
    missing = [n for n in prompts.names if n not in urls]
    if missing:
        raise PeftlabError(f"no server for model(s) {missing}")
    times = poisson_arrivals(rate, max_requests=max_requests, max_seconds=max_seconds, seed=seed)
    who = adapter_popularity(pattern, len(prompts.names), len(times), seed=seed + 1,
                             zipf_exponent=zipf_exponent)
    server = EngineLoadServer(urls, alive=alive)
    window = arrival_window(times, max_requests=max_requests, max_seconds=max_seconds)
    t0 = time.perf_counter()
    drive = drive_open_loop(server, prompts, times, who, window_s=window,
                            drain_seconds=drain_seconds)
    row = summarize_timings(list(server.timings.values()), offered=drive.offered,
                            window_s=window, slo=slo or Slo(), min_requests=min_requests)
    counts = np.bincount(who[:drive.offered], minlength=len(prompts.names))
    row.update({"offered_rate": float(rate), "pattern": pattern, "k": len(prompts.names),
                "zipf_exponent": zipf_exponent if pattern == "skewed" else None,
                "max_requests": max_requests, "max_seconds": max_seconds,
                "drain_seconds": drain_seconds, "seed": seed,
                "max_tokens": "per prompt" if prompts.lengths else prompts.max_tokens,
                "requests_per_model": {n: int(c) for n, c in zip(prompts.names, counts, strict=False)},
                "stopped_by": drive.stopped_by, "wall_s": time.perf_counter() - t0,
                "driver_lag_ms_p99": float(np.percentile(drive.lag_ms, 99))
                if drive.lag_ms else None})
    return row
