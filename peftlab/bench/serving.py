"""Serving under load: an in-process server with dynamic batching, offered open-loop Poisson load.

    backends = serving_backends(loader, lora_artifacts, full_artifacts, seed=0)  # serving_configs
    row = serve_at_rate(backends["mixed"], workload, tokenizer, rate=40.0, pattern="skewed",
                        max_batch_size=8, max_wait_ms=5.0, max_requests=400, max_seconds=10.0)
    sweep = saturation_sweep(lambda rate: serve_at_rate(..., rate=rate, ...), [5, 10, 20, 40])
    sweeps = serving_sweep(backends, workloads, tokenizer, rates=[5, 10, 20], pattern="uniform",
                           max_batch_size=8, max_wait_ms=5.0, max_requests=400, max_seconds=10.0)

The server (`BatchingServer`) runs on a background thread: requests wait in one FIFO queue; a batch
starts when `max_batch_size` eligible requests are queued or `max_wait_ms` after the oldest one
was received, whichever comes first, then is padded (dynamic padding: the longest example), run
through the backend and answered. The load (`peftlab.bench.load`) is open loop, so when the
server cannot keep up the queue grows and latency shows it.

The configurations (merged, mixed, switch, full, fast) and their backends, each serving every
request of the same workload, are registered in `peftlab.bench.serving_configs`.

Memory: `served_weight_bytes` counts exactly the weights a configuration holds (k copies for
merged/full, one base plus adapters for mixed/switch). Process peaks (RSS, CUDA) include whatever
else the process holds: to compare configurations by whole-process peak, build one configuration
per process (`serving_backends(..., configs=("merged",))`), as the bench isolates its units.

Per-adapter batching (merged, switch, full) takes the oldest queued request's adapter and gathers
up to `max_batch_size` requests of that adapter in arrival order; the others keep their place.

Per (configuration, pattern, rate) `serve_at_rate` returns a JSON-ready row: latency from the
scheduled arrival to the answer (p50/p99 with bootstrap intervals, the number of requests they rest
on, and "too few requests (n < 100)" for p99 below 100), queueing delay, batch sizes, adapter
switches, achieved throughput, whether the server kept up, peak memory (RSS on CPU, CUDA peak
allocated/reserved on GPU) and the bytes of the served weights.
"""

from __future__ import annotations

import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftlab.bench.clock import SYSTEM_CLOCK, Clock
from peftlab.bench.load import (
    DEFAULT_ZIPF_EXPONENT,
    Workload,
    adapter_popularity,
    arrival_window,
    drive_open_loop,
    poisson_arrivals,
)
from peftlab.bench.serving_configs import Backend
from peftlab.bench.timing import latency_stats
from peftlab.errors import PeftlabError

# a rate is sustained when the achieved throughput is at least this share of the arrival rate
KEEP_UP_RATIO = 0.9


# ---------------------------------------------------------------------------------------------
# The server


@dataclass
class Answer:
    """The one answer to one request. Times: the server clock's ns (`time.perf_counter_ns` in
    production); status done | unserved | error."""

    id: int
    adapter: str
    status: str
    arrival_ns: int
    submit_ns: int
    start_ns: int | None = None
    done_ns: int | None = None
    batch: int | None = None
    logits: np.ndarray | None = None
    example: dict | None = None  # the request's features (kept for checks, never copied)


class BatchingServer:
    """Dynamic batching on a background thread (see the module docstring).

    collate(list of feature dicts) -> padded tensors on the device. After `stop()`, every
    request submitted has exactly one `Answer` in `answers` (those never run: "unserved").
    batches: one dict per batch run (size, adapters, start/end ns, service ms). clock: where
    time, waits and the server's thread come from (`peftlab.bench.clock`; tests simulate it).
    """

    def __init__(self, backend: Backend, collate: Callable[[list[dict]], dict[str, Any]], *,
                 max_batch_size: int, max_wait_ms: float, device: str = "cpu",
                 clock: Clock = SYSTEM_CLOCK):
        if max_batch_size < 1 or max_wait_ms < 0:
            raise PeftlabError(f"max_batch_size must be >= 1 and max_wait_ms >= 0, got "
                               f"{max_batch_size} and {max_wait_ms}")
        self.backend = backend
        self.collate = collate
        self.max_batch_size = int(max_batch_size)
        self.max_wait_ns = int(max_wait_ms * 1e6)
        self.device = device
        self.answers: dict[int, Answer] = {}
        self.batches: list[dict[str, Any]] = []
        self.error: str | None = None
        self._queue: list[tuple[int, str, dict, int, int]] = []
        self._now = clock.now_ns
        self._cond = clock.condition()
        self._stopping = False
        self._submitted = 0
        self._thread = clock.thread(self._loop, "peftlab-server")

    # -- client side -----------------------------------------------------------------------------
    def start(self) -> BatchingServer:
        self._thread.start()
        return self

    def submit(self, request_id: int, adapter: str, features: dict, arrival_ns: int) -> None:
        with self._cond:
            if self._stopping:
                raise PeftlabError("the server is stopped")
            self._queue.append((request_id, adapter, features, arrival_ns, self._now()))
            self._submitted += 1
            self._cond.notify()

    def answered(self) -> int:
        return len(self.answers)

    def stop(self, timeout_s: float = 600.0) -> None:
        """Stop after the batch in flight; answer every queued request "unserved"."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        with self._cond:
            for rid, adapter, features, arrival, submit in self._queue:
                self._answer(Answer(rid, adapter, "unserved", arrival, submit, example=features))
            self._queue.clear()

    # -- server side -----------------------------------------------------------------------------
    def _answer(self, answer: Answer) -> None:
        if answer.id in self.answers:  # a bug in batching, never a measurement
            raise RuntimeError(f"request {answer.id} answered twice")
        self.answers[answer.id] = answer

    def _eligible(self, adapter: str | None) -> list[int]:
        """Queue positions of the next batch: FIFO, one adapter only when `adapter` is given."""
        if adapter is None:
            return list(range(min(len(self._queue), self.max_batch_size)))
        picked = [i for i, q in enumerate(self._queue) if q[1] == adapter]
        return picked[: self.max_batch_size]

    def _next_batch(self) -> list[tuple[int, str, dict, int, int]] | None:
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            head = self._queue[0]
            adapter = head[1] if self.backend.per_adapter else None
            deadline = head[4] + self.max_wait_ns
            while not self._stopping:
                picked = self._eligible(adapter)
                remaining = deadline - self._now()
                if len(picked) >= self.max_batch_size or remaining <= 0:
                    break
                self._cond.wait(remaining / 1e9)
            if self._stopping:
                return None
            take = set(picked)
            batch = [self._queue[i] for i in picked]
            self._queue = [q for i, q in enumerate(self._queue) if i not in take]
            return batch

    def _loop(self) -> None:
        import torch

        with torch.inference_mode():  # thread-local: entered on the server's own thread
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                start = self._now()
                try:
                    inputs = {k: v.to(self.device) for k, v in
                              self.collate([q[2] for q in batch]).items() if k != "labels"}
                    logits = self.backend.forward(inputs, [q[1] for q in batch])
                    values = logits.float().cpu().numpy()  # the answer leaves the device
                except Exception as err:  # noqa: BLE001  (recorded; the run reports it)
                    with self._cond:
                        self.error = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
                        for rid, adapter, features, arrival, submit in batch:
                            self._answer(Answer(rid, adapter, "error", arrival, submit,
                                                example=features))
                        self._stopping = True
                    return
                done = self._now()
                b = len(self.batches)
                self.batches.append({"size": len(batch), "adapters": sorted({q[1] for q in batch}),
                                     "start_ns": start, "done_ns": done,
                                     "service_ms": (done - start) / 1e6})
                with self._cond:
                    for row, (rid, adapter, features, arrival, submit) in enumerate(batch):
                        self._answer(Answer(rid, adapter, "done", arrival, submit, start, done, b,
                                            values[row], features))


# ---------------------------------------------------------------------------------------------
# One load point, and the sweep over rates


def serve_at_rate(backend: Backend, workload: Workload, tokenizer: Any, *, rate: float,
                  pattern: str, max_batch_size: int, max_wait_ms: float, max_requests: int,
                  max_seconds: float, drain_seconds: float | None = None, seed: int = 0,
                  zipf_exponent: float = DEFAULT_ZIPF_EXPONENT, device: str = "cpu",
                  keep_logits: bool = False, clock: Clock = SYSTEM_CLOCK) -> dict[str, Any]:
    """Offer Poisson load at `rate` requests/s to `backend` behind a batching server.

    Arrivals: at most `max_requests` within `max_seconds` (seeded); adapters: `pattern` over the
    workload's names. The run ends by itself after the last arrival + `drain_seconds` (default:
    max(1 s, 20 x max_wait)) at the latest; requests not answered by then count as unserved.
    Returns the JSON-ready row described in the module docstring (`keep_logits`: also the
    answers themselves, for tests). clock: the server's and the driver's (`peftlab.bench.clock`).
    """
    from peftlab.encode import make_collator
    from peftlab.memory import PeakMemory

    k = len(workload.names)
    drain = float(drain_seconds) if drain_seconds is not None else max(1.0, 0.02 * max_wait_ms)
    times = poisson_arrivals(rate, max_requests=max_requests, max_seconds=max_seconds, seed=seed)
    who = adapter_popularity(pattern, k, len(times), seed=seed + 1, zipf_exponent=zipf_exponent)
    switches0, switch_ms0 = backend.switches, len(backend.switch_ms)
    cuda_start = None
    if str(device).startswith("cuda"):
        import torch

        cuda_start = torch.cuda.memory_allocated()
    server = BatchingServer(backend, make_collator(tokenizer), max_batch_size=max_batch_size,
                            max_wait_ms=max_wait_ms, device=device, clock=clock)
    with PeakMemory(device) as mem:
        server.start()
        drive = drive_open_loop(server, workload, times, who, drain_seconds=drain,
                                window_s=arrival_window(times, max_requests=max_requests,
                                                        max_seconds=max_seconds), clock=clock)
    row = summarize(server, drive, offered_rate=float(rate), pattern=pattern, k=k,
                    max_requests=max_requests,
                    max_seconds=max_seconds, drain_seconds=drain, seed=seed,
                    zipf_exponent=zipf_exponent)
    row["switches"] = backend.switches - switches0
    sw = backend.switch_ms[switch_ms0:]
    row["switch_ms"] = {"count": len(sw), "p50": float(np.median(sw)) if sw else None,
                        "total": float(np.sum(sw)) if sw else 0.0}
    m = mem.as_dict()
    row["memory"] = {
        **m,
        "served_weight_bytes": backend.weight_bytes(),
        "rss_increase_bytes": m["rss_peak_bytes"] - m["rss_start_bytes"],
        "cuda_allocated_start_bytes": cuda_start,
        "cuda_increase_bytes": (m["cuda_peak_allocated_bytes"] - cuda_start
                                if cuda_start is not None else None),
        "measured_over": "the whole load run (RSS sampled every 20 ms; CUDA peak allocator "
                         "statistics). Peaks are the process's: with several backends loaded "
                         "they include all of them, so configurations compare by "
                         "served_weight_bytes and the increases over the start",
    }
    row.update(backend.describe())
    if keep_logits:
        row["answers"] = server.answers
    return row


def summarize(server: BatchingServer, drive: Any, **meta: Any) -> dict[str, Any]:
    """The JSON-ready row of one load run (see `serve_at_rate`)."""
    answers = list(server.answers.values())
    done = [a for a in answers if a.status == "done"]
    counts = Counter(a.status for a in answers)
    lat = [a.done_ns - a.arrival_ns for a in done]
    queue = [a.start_ns - a.arrival_ns for a in done]
    arrivals = [a.arrival_ns for a in answers]
    window = drive.arrival_window_s
    if done:
        first = min(arrivals)
        last = max(a.done_ns for a in done)
        throughput = len(done) / max((last - first) / 1e9, 1e-9)
    else:
        throughput = 0.0
    realised = drive.offered / window if window > 0 else 0.0
    sizes = [b["size"] for b in server.batches]
    mix = [len(b["adapters"]) for b in server.batches]
    lag = np.asarray(drive.lag_ms) if drive.lag_ms else np.zeros(1)
    all_answered = counts.get("done", 0) == drive.offered
    keeps_up = bool(all_answered and drive.offered > 0
                    and throughput >= KEEP_UP_RATIO * realised)
    return {
        **meta,
        "realised_arrival_rate": realised,
        "arrival_window_s": window,
        "max_batch_size": server.max_batch_size,
        "max_wait_ms": server.max_wait_ns / 1e6,
        "requests": {"scheduled": drive.scheduled_offered, "offered": drive.offered,
                     "done": counts.get("done", 0), "unserved": counts.get("unserved", 0),
                     "error": counts.get("error", 0)},
        "answered_once": len(answers) == drive.offered,
        "latency_ms": latency_stats(lat) if lat else None,
        "latency_from": "scheduled arrival to answer (open loop)",
        "queue_ms": latency_stats(queue) if queue else None,
        "service_ms_per_batch": ({"p50": float(np.median([b["service_ms"] for b in
                                                           server.batches])),
                                  "mean": float(np.mean([b["service_ms"] for b in
                                                         server.batches]))}
                                 if server.batches else None),
        "throughput_rps": throughput,
        "throughput_means": "answered requests / (last answer - first arrival)",
        "keeps_up": keeps_up,
        "batches": {"count": len(sizes), "size_mean": float(np.mean(sizes)) if sizes else None,
                    "size_hist": {str(s): c for s, c in sorted(Counter(sizes).items())},
                    "adapters_per_batch_mean": float(np.mean(mix)) if mix else None},
        "driver_lag_ms": {"p50": float(np.median(lag)), "p99": float(np.percentile(lag, 99)),
                          "max": float(lag.max())},
        "stopped_by": drive.stopped_by,
        "wall_s": drive.wall_s,
        "error": server.error,
    }


def sustained(row: dict[str, Any], p99_bound_ms: float | None = None) -> bool:
    """Did the server sustain this load? (the definition `saturation_sweep` uses)"""
    if not row["keeps_up"]:
        return False
    if p99_bound_ms is None:
        return True
    lat = row.get("latency_ms")
    return lat is not None and lat["p99"] <= p99_bound_ms


def saturation_sweep(run_at_rate: Callable[[float], dict[str, Any]], rates: list[float], *,
                     p99_bound_ms: float | None = None, stop_after: int = 1) -> dict[str, Any]:
    """Run `run_at_rate(rate)` for rising `rates` and find the saturation throughput.

    A rate is *sustained* when (1) every request offered in the run was answered (none left
    unserved when the run's time bound expired, no error), (2) the achieved throughput (answered
    requests / (last answer - first arrival)) is at least KEEP_UP_RATIO (0.9) of the realised
    arrival rate (requests offered / arrival window), and (3) when `p99_bound_ms` is given, the
    p99 latency (scheduled arrival to answer) is at most that bound.

    The sweep runs the rates in increasing order and stops after `stop_after` consecutive
    unsustained rates. saturation_rate: the highest offered rate sustained below the first
    unsustained one; saturation_throughput: the achieved throughput at that rate (requests/s);
    both None when no rate was sustained. `first_unsustained_rate` says where it broke (None:
    never, so the true saturation is above the highest rate tried: `saturated` False).
    """
    if not rates:
        raise PeftlabError("a saturation sweep needs at least one rate")
    rows: list[dict[str, Any]] = []
    for rate in sorted(float(r) for r in rates):
        row = run_at_rate(rate)
        row["sustained"] = sustained(row, p99_bound_ms)
        rows.append(row)
        if _sweep_over(rows, stop_after):
            break
    return sweep_summary(rows, p99_bound_ms=p99_bound_ms)


def _sweep_over(rows: list[dict[str, Any]], stop_after: int) -> bool:
    """True once the last `stop_after` rows (in rate order) were all unsustained."""
    tail = rows[-stop_after:]
    return len(tail) == stop_after and not any(r["sustained"] for r in tail)


def sweep_summary(rows: list[dict[str, Any]], *, p99_bound_ms: float | None) -> dict[str, Any]:
    """Saturation figures of sweep rows (each with "sustained"), see `saturation_sweep`."""
    best, broke = None, None
    for row in sorted(rows, key=lambda r: r["offered_rate"]):
        if not row["sustained"]:
            broke = row["offered_rate"]
            break
        best = row
    return {
        "rows": rows,
        "saturation_rate": best["offered_rate"] if best else None,
        "saturation_throughput": best["throughput_rps"] if best else None,
        "p99_ms_at_saturation": (best["latency_ms"] or {}).get("p99") if best else None,
        "first_unsustained_rate": broke,
        "saturated": broke is not None,
        "p99_bound_ms": p99_bound_ms,
        "keep_up_ratio": KEEP_UP_RATIO,
        "definition": "highest offered rate at which every request was answered within the run, "
                      f"achieved throughput >= {KEEP_UP_RATIO} x the arrival rate"
                      + (f" and p99 <= {p99_bound_ms} ms" if p99_bound_ms is not None else "")
                      + ", among rising rates up to the first that failed",
    }


def serving_sweep(backends: dict[str, Backend], workloads: dict[str, Workload], tokenizer: Any,
                  *, rates: list[float], pattern: str, p99_bound_ms: float | None = None,
                  stop_after: int = 1, **serve: Any) -> dict[str, Any]:
    """Saturation sweeps of several configurations, interleaved: at each rising rate every
    configuration still going runs once, in an order rotated from rate to rate, so a drift of
    the machine's speed over the sweep hits all configurations alike (a configuration stops
    after `stop_after` consecutive unsustained rates).

    workloads: config -> its Workload (the same requests; "full" under its own model names).
    serve: the other `serve_at_rate` arguments (max_batch_size, max_wait_ms, max_requests,
    max_seconds, seed, ...). Returns {config: sweep summary (see `saturation_sweep`)} plus
    "order": the (rate, config) run order.
    """
    if not rates:
        raise PeftlabError("a saturation sweep needs at least one rate")
    names = list(backends)
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    order: list[list[Any]] = []
    for i, rate in enumerate(sorted(float(r) for r in rates)):
        turn = names[i % len(names):] + names[: i % len(names)]
        for name in turn:
            if rows[name] and _sweep_over(rows[name], stop_after):
                continue
            row = serve_at_rate(backends[name], workloads[name], tokenizer, rate=rate,
                                pattern=pattern, **serve)
            row["sustained"] = sustained(row, p99_bound_ms)
            row["run_index"] = len(order)
            order.append([rate, name])
            rows[name].append(row)
    out: dict[str, Any] = {n: sweep_summary(rows[n], p99_bound_ms=p99_bound_ms) for n in names}
    out["order"] = order
    return out


def rising_rates(start: float, factor: float, steps: int) -> list[float]:
    """start, start*factor, ... (`steps` rates, requests/s): a geometric series for sweeps."""
    if not start > 0 or not factor > 1 or steps < 1:
        raise PeftlabError(f"rising rates need start > 0, factor > 1, steps >= 1; got {start}, "
                           f"{factor}, {steps}")
    return [float(start * factor ** i) for i in range(steps)]
