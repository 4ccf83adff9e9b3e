"""Run one bench unit in a process of its own and bring back its JSON result.

    result = run_isolated(job, isolation="forkserver", timeout_s=900)

isolation "forkserver": a server process (`peftlab.bench.server`) imports torch, transformers and
peft once (it never touches CUDA, so the children may); each unit is a fresh child forked from
that pristine server, so no allocation, compiled graph, cache or module-level state of one unit
reaches the next, and no unit pays the ~5-15 s of imports. The server takes its environment when
it starts (the first isolated unit of this Python process) and ends with it.
isolation "subprocess": `python -m peftlab.bench.worker JOB RESULT`, a new interpreter per unit
(nothing shared at all, imports paid every time).
"in-process": `worker.safe_run` in this process, for tests and debugging only (not isolated).

Either way the child writes its result to a JSON file (atomically), so a child that dies (killed
for memory, segfault) is reported with its exit code instead of hanging the parent. What a child
writes to stderr (library warnings, load reports) goes to the study's log.txt under its unit's
label, never to the console: the job carries the parent's log settings (`peftlab.logs`), and the
server's own stderr is a pipe the parent reads into the same log.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from peftlab import logs
from peftlab.errors import PeftlabError

ISOLATIONS = ("forkserver", "subprocess", "in-process")


def run_isolated(job: dict[str, Any], *, isolation: str = "forkserver",
                 timeout_s: float = 3600.0) -> dict[str, Any]:
    """The unit's result dict (see `worker.run_job`); status "failed" if the child died."""
    if isolation not in ISOLATIONS:
        raise PeftlabError(f"isolation must be one of {ISOLATIONS}, got {isolation!r}")
    job = {**job, "isolation": isolation, "log": logs.child_settings()}
    if isolation == "in-process":
        from peftlab.bench.worker import safe_run

        return json.loads(_roundtrip(safe_run(job)))
    with tempfile.TemporaryDirectory(prefix="peftlab-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        if isolation == "subprocess":
            job_path = Path(tmp) / "job.json"
            job_path.write_text(_roundtrip(job), encoding="utf-8")
            proc = subprocess.Popen(
                [sys.executable, "-m", "peftlab.bench.worker", str(job_path), str(result_path)],
                stderr=subprocess.PIPE)
            reader = logs.pump(proc.stderr)  # its imports' warnings, before it logs by itself
            try:
                code: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            reader.join(timeout=10)
            proc.stderr.close()
        else:
            code = _run_forkserver(job, Path(tmp) / "job.json", result_path, timeout_s)
        if result_path.is_file():
            return json.loads(result_path.read_text(encoding="utf-8"))
    if code is None:
        why = f"timed out after {timeout_s:.0f} s and was killed"
    elif code < 0:
        why = f"was killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
    else:
        why = f"exited with code {code}"
    return {"status": "failed", "failure_reason": f"the bench worker process {why} before "
                                                  "writing a result", "process": {}}


class ForkServer:
    """Client of `python -m peftlab.bench.server`, started on first use, one per process."""

    def __init__(self) -> None:
        # stderr: a pipe read into the active study log (the server's import-time warnings;
        # a child that was given no log settings writes there too)
        self.proc = subprocess.Popen([sys.executable, "-m", "peftlab.bench.server"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.reader = logs.pump(self.proc.stderr)
        self.fd = self.proc.stdout.fileno()
        self.buf = b""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def run(self, job_path: Path, result_path: Path, timeout_s: float) -> int | None:
        """Exit code of the unit's child (None: killed after `timeout_s`)."""
        request = json.dumps({"job": str(job_path), "result": str(result_path)}) + "\n"
        self.proc.stdin.write(request.encode())
        self.proc.stdin.flush()
        started = self._read(600.0)  # the first unit waits for the server's imports
        if started is None:
            raise PeftlabError("the bench fork server did not start a worker within 600 s")
        child = int(started["started"])
        done = self._read(timeout_s)
        if done is None:  # the child ran past its time: end it (by its pid), collect the report
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            self._read(60.0)
            return None
        return int(done["exit_code"])

    def _read(self, timeout_s: float) -> dict[str, Any] | None:
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                raise PeftlabError(f"the bench fork server exited (code {self.proc.wait()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def close(self) -> None:
        if self.alive():
            self.proc.stdin.close()  # end of input ends the server
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # The server is gone: its stderr reader sees end of file; then close our ends of the
        # pipes (left open, the interpreter warns about them at exit, on the user's console).
        self.reader.join(timeout=10)
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()


_SERVER: dict[str, ForkServer] = {}


def _run_forkserver(job: dict[str, Any], job_path: Path, result_path: Path,
                    timeout_s: float) -> int | None:
    server = _SERVER.get("server")
    if server is None or not server.alive():
        server = _SERVER["server"] = ForkServer()
        atexit.register(server.close)
    job_path.write_text(_roundtrip(job), encoding="utf-8")
    try:
        return server.run(job_path, result_path, timeout_s)
    except PeftlabError:
        server.close()
        _SERVER.pop("server", None)
        raise


def _roundtrip(obj: Any) -> str:
    """JSON text of a job/result (the same form whichever isolation carries it)."""
    from peftlab.store import dumps

    return dumps(obj)
