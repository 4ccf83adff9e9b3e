"""Run an engine server so that it never outlives the peftlab process that started it.

    python watchdog.py PARENT_PID PIDFILE GRACE_S -- COMMAND...

Standard library only, run as a file (not `-m peftlab...`), so it starts in milliseconds with
any Python. It is the direct child of peftlab and starts COMMAND (the server) in a new session,
i.e. its own process group, which the server's own children (vLLM's engine core, its workers)
join. The whole group is stopped (SIGTERM, then SIGKILL after GRACE_S seconds) when

- the watchdog receives SIGTERM, SIGINT or SIGHUP (peftlab's stop, a Ctrl-C at the terminal,
  which reaches the watchdog but not the server's session, or a closed terminal);
- peftlab dies, however it died (SIGKILL included): the kernel sends the watchdog SIGTERM
  (prctl PR_SET_PDEATHSIG, Linux) and, as a fallback on other systems or when the parent died
  before prctl ran, the watchdog sees its parent pid change within POLL_S;
- the server exits by itself (its leftover children are stopped; the watchdog exits with the
  server's exit code, or 128 + the signal that ended it).

PIDFILE receives the server's pid (= its process group id) once it started, so peftlab can stop
the group itself if the watchdog is gone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time

POLL_S = 0.2
PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the parent-pid poll below still catches the parent's death


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace_s: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the process group, wait up to grace_s for it to empty, then SIGKILL it."""
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader, or it stays a zombie member of the group
        if not _group_alive(pgid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        print("usage: watchdog.py PARENT_PID PIDFILE GRACE_S -- COMMAND...", file=sys.stderr)
        return 2
    parent, pidfile, grace = int(argv[0]), argv[1], float(argv[2])
    command = argv[4:]
    _set_parent_death_signal()
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    proc = subprocess.Popen(command, start_new_session=True)
    tmp = pidfile + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(f"{proc.pid}\n")
    os.replace(tmp, pidfile)
    code = 0
    try:
        while True:
            if stopping or os.getppid() != parent:
                code = 128 + (stopping[0] if stopping else signal.SIGTERM)
                break
            ret = proc.poll()
            if ret is not None:
                code = ret if ret >= 0 else 128 - ret
                break
            time.sleep(POLL_S)
    finally:
        stop_group(proc.pid, grace, proc)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
