"""A clock of simulated time for the serving loop and the load generator (`peftlab.bench.clock`).

    clock = VirtualClock()                       # time 0; the creating thread runs
    row = serve_at_rate(backend, workload, tokenizer, ..., clock=clock)
    # a fake backend "computes" with clock.sleep(0.02): 20 ms of simulated time, none of real time

Time stands still while any thread of the clock can run, and jumps to the earliest deadline
when all of them wait (in `sleep`, a condition's `wait`, a thread's `join`). One thread of the
clock runs at a time, and the turn passes only inside those calls, to the thread whose deadline
or wake-up comes first (ties: the thread that joined the clock first). So a run is a function of
its inputs alone: the same arrivals give the same batches, latencies and time bounds on every
machine, however busy, and a test can assert them exactly.

The threads of the clock are the one that created it and those started with `thread()`. Other
threads (a memory sampler, say) run as usual but must not call the clock's waits.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(eq=False)
class _Member:
    """One thread of the clock and what it waits for."""

    order: int
    waiting: bool = False
    deadline: int | None = None  # ns; None: until woken
    on: Any = None  # the condition or thread it waits on
    woken: bool = False  # by a notify or a thread's end, not by its deadline
    since: int = 0  # when it started waiting on `on` (orders a condition's waiters)


class VirtualClock:
    """Simulated time in ns (`now_ns`), with `sleep`, `condition` and `thread` as in
    `peftlab.bench.clock.SystemClock`. See the module docstring for how time advances."""

    def __init__(self, start_ns: int = 0):
        self._ns = int(start_ns)
        self._lock = threading.Condition()  # guards the schedule; passes the turn
        self._orders = itertools.count()
        self._stamps = itertools.count()
        me = _Member(next(self._orders))
        self._members: dict[int, _Member] = {threading.get_ident(): me}
        self._running: _Member = me

    # -- the SystemClock interface ----------------------------------------------------------------
    def now_ns(self) -> int:
        return self._ns

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._wait(self._me(), self._deadline(seconds), None)

    def condition(self) -> _Condition:
        return _Condition(self)

    def thread(self, target: Callable[[], None], name: str) -> _Thread:
        return _Thread(self, target, name)

    # -- scheduling (all under self._lock) --------------------------------------------------------
    def _me(self) -> _Member:
        me = self._members.get(threading.get_ident())
        if me is None or me is not self._running:
            raise RuntimeError("VirtualClock: called from a thread that is not the clock's "
                               "running thread")
        return me

    def _deadline(self, seconds: float | None) -> int | None:
        return None if seconds is None else self._ns + max(0, round(seconds * 1e9))

    def _wait(self, me: _Member, deadline: int | None, on: Any) -> bool:
        """Give the turn away until woken or `deadline`; True when woken (not timed out)."""
        me.waiting, me.deadline, me.on, me.woken = True, deadline, on, False
        me.since = next(self._stamps)
        self._pass_turn()
        while self._running is not me:
            self._lock.wait()
        return me.woken

    def _wake(self, member: _Member) -> None:
        member.waiting, member.deadline, member.on, member.woken = False, None, None, True

    def _pass_turn(self) -> None:
        """Hand the turn to the first thread able to run, advancing time when none is."""
        members = sorted(self._members.values(), key=lambda m: m.order)
        ready = [m for m in members if not m.waiting]
        if not ready:
            timed = [m for m in members if m.deadline is not None]
            if not timed:
                raise RuntimeError("VirtualClock: every thread waits with no deadline (deadlock)")
            self._ns = max(self._ns, min(m.deadline for m in timed))
            for m in timed:
                if m.deadline <= self._ns:
                    m.waiting, m.deadline, m.on = False, None, None
            ready = [m for m in members if not m.waiting]
        self._running = ready[0]
        self._lock.notify_all()

    def _notify(self, on: Any, n: int | None) -> None:
        waiters = sorted((m for m in self._members.values() if m.waiting and m.on is on),
                         key=lambda m: m.since)
        for m in waiters if n is None else waiters[:n]:
            self._wake(m)


class _Condition:
    """`threading.Condition` on virtual time. Only the clock's running thread executes, so the
    lock itself has nothing to exclude; waits and notifications go through the clock."""

    def __init__(self, clock: VirtualClock):
        self._clock = clock

    def __enter__(self) -> _Condition:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def wait(self, timeout: float | None = None) -> bool:
        clock = self._clock
        with clock._lock:
            return clock._wait(clock._me(), clock._deadline(timeout), self)

    def notify(self, n: int = 1) -> None:
        with self._clock._lock:
            self._clock._notify(self, n)

    def notify_all(self) -> None:
        with self._clock._lock:
            self._clock._notify(self, None)


class _Thread:
    """A thread of the clock: it runs only when the clock gives it the turn."""

    def __init__(self, clock: VirtualClock, target: Callable[[], None], name: str):
        self._clock = clock
        self._target = target
        self._member: _Member | None = None
        self._done = False
        self._real = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        clock = self._clock
        with clock._lock:
            clock._me()  # started by the running thread, which keeps the turn
            self._member = _Member(next(clock._orders))
        self._real.start()
        with clock._lock:  # registered under the new thread's id before it can be chosen
            clock._members[self._real.ident] = self._member

    def _run(self) -> None:
        clock = self._clock
        with clock._lock:
            while self._member is None or clock._members.get(threading.get_ident()) is not \
                    self._member or clock._running is not self._member:
                clock._lock.wait()
        try:
            self._target()
        finally:
            with clock._lock:
                self._done = True
                del clock._members[threading.get_ident()]
                clock._notify(self, None)  # wake whoever joins this thread
                clock._pass_turn()

    def is_alive(self) -> bool:
        return self._real.is_alive() and not self._done

    def join(self, timeout: float | None = None) -> None:
        clock = self._clock
        with clock._lock:
            if self._member is None or self._done:
                return
            clock._wait(clock._me(), clock._deadline(timeout), self)
