"""Watching a study that runs in a subprocess, for tests that kill it at a known point.

    proc = subprocess.Popen([sys.executable, "-m", "peftlab", "run", str(spec_file)])
    steps = wait_for_records(db, proc, "runs", lambda recs: running_steps(recs.get(rid), 2),
                             what="a run mid-training")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def wait_for_records(db: Path, proc: Any, table: str, found: Any, *, what: str,
                     timeout: float = 240.0) -> Any:
    """Poll a study's `results.sqlite` (`db`) while `proc` (a subprocess.Popen writing it) runs,
    until `found(records)` is truthy, and return that value; `records` is {key: record dict} of
    `table`. Raise AssertionError, naming `what`, when the process ends first or `timeout`
    seconds pass. For tests that SIGKILL a study at a known point (a run mid-training, a trial
    mid-search). Reads SQLite directly: opening the Store would take the writer's lock."""
    import json
    import sqlite3
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the process ended (exit {proc.returncode}) before {what}")
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    rows = con.execute("SELECT key, data FROM records WHERE tbl=?",
                                       (table,)).fetchall()
            except sqlite3.OperationalError:  # the table is being created
                rows = []
            value = found({key: json.loads(data) for key, data in rows})
            if value:
                return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def running_steps(record: dict[str, Any] | None, steps: int) -> int | None:
    """The steps a `running` runs record reports, when at least `steps`; else None."""
    if record and record.get("status") == "running" and record.get("steps", 0) >= steps:
        return record["steps"]
    return None
