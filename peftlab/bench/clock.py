"""The clock the serving loop and the load generator run on: real time, or a stand-in in tests.

    clock = SYSTEM_CLOCK                          # time.perf_counter_ns, time.sleep, threading
    t0 = clock.now_ns()
    clock.sleep(0.005)                            # seconds
    cond = clock.condition()                      # `with cond: cond.wait(timeout_s)`, notify()
    worker = clock.thread(loop, "peftlab-server")  # start(), is_alive(), join(timeout_s)

The batching server (`serving.BatchingServer`) and the open-loop driver (`load.drive_open_loop`)
read the time, sleep, wait on the server's condition and start the server's thread only through
a clock. In production that is `SYSTEM_CLOCK`, whose members are the standard library's own
functions (no wrapper: a clock read costs what `time.perf_counter_ns` costs). A test hands them a
clock of simulated time instead (`peftlab.testing.clock.VirtualClock`), so that batching, time
bounds and saturation are checked against exact times that do not depend on how busy the
machine is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, Protocol


class Clock(Protocol):
    """What the serving loop and the driver need from a clock (times in ns, durations in s)."""

    def now_ns(self) -> int: ...

    def sleep(self, seconds: float, /) -> None: ...

    def condition(self) -> Any: ...

    def thread(self, target: Callable[[], None], name: str) -> Any: ...


def _daemon_thread(target: Callable[[], None], name: str) -> threading.Thread:
    return threading.Thread(target=target, name=name, daemon=True)


class SystemClock:
    """Real time: `time.perf_counter_ns`, `time.sleep`, `threading.Condition`, a daemon thread."""

    now_ns = staticmethod(time.perf_counter_ns)
    sleep = staticmethod(time.sleep)
    condition = staticmethod(threading.Condition)
    thread = staticmethod(_daemon_thread)


SYSTEM_CLOCK = SystemClock()
