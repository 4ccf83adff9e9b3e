"""The study directory: artifacts on disk, results in SQLite, one writer at a time, provenance.

Layout of a study directory:

    results.sqlite            every results table (runs, drift, weights, bench, stats, ...)
    spec.yaml                 the spec the study was last run with
    .lock                     held by the peftlab process that is writing
    runs/<run_id>/            a trained run's artifact (PEFT adapter or full model) + tokenizer
    represent/<task>/         pooled hidden states (safetensors) + manifest
    report.md, report.html    the report

Results are rows of a table keyed by a string; each row is a JSON record. SQLite commits are atomic,
so a process killed mid-write leaves the previous state, never a half-written record. Artifacts are
written to a temporary folder and renamed into place (`atomic_dir`), so a folder that exists is
complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from peftlab.errors import StoreError

DB_NAME = "results.sqlite"


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):  # numpy arrays and scalars
        return o.tolist()
    if hasattr(o, "model_dump"):
        return o.model_dump(mode="json")
    raise TypeError(f"cannot store {type(o).__name__} in a results record")


def _clean(o: Any) -> Any:
    # JSON has no NaN/inf: store them as null so every reader (pandas, browsers, jq) agrees.
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def dumps(record: Any) -> str:
    return json.dumps(_clean(json.loads(json.dumps(record, default=_json_default))), sort_keys=True)


class Store:
    """Results tables of one study directory. Readers need no lock; writers call `lock()`."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True):
        self.root = Path(root)
        if create:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                probe = self.root / f".write-probe-{os.getpid()}"
                probe.write_text("ok")
                probe.unlink()
            except OSError as e:
                raise StoreError(
                    f"{self.root}: the study directory is not writable ({e.strerror}); "
                    "choose another output_dir or --output-dir"
                ) from None
        elif not (self.root / DB_NAME).is_file():
            raise StoreError(f"{self.root}: not a study directory (no {DB_NAME} inside)")
        self._lock_fh: Any = None
        self._db = sqlite3.connect(self.root / DB_NAME, timeout=30, isolation_level=None)
        # WAL: readers never block the writer and a crash leaves the last committed state.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS records (tbl TEXT NOT NULL, key TEXT NOT NULL, "
            "data TEXT NOT NULL, updated REAL NOT NULL, PRIMARY KEY (tbl, key))"
        )

    # -- locking ---------------------------------------------------------------------------------
    def lock(self) -> Store:
        """Take the study's writer lock for the life of this process; a second writer is refused."""
        if self._lock_fh is not None:
            return self
        fh = open(self.root / ".lock", "a+")  # noqa: SIM115  (held open while the process runs)
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "unknown"
            fh.close()
            raise StoreError(
                f"{self.root}: the study directory is in use by another peftlab process "
                f"({holder}); wait for it to finish, or use another output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.ctime()}")
        fh.flush()
        self._lock_fh = fh
        return self

    def unlock(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def close(self) -> None:
        self.unlock()
        self._db.close()

    # -- records ---------------------------------------------------------------------------------
    def put(self, table: str, key: str, record: dict[str, Any]) -> None:
        self.put_many(table, [(key, record)])

    def put_many(self, table: str, items: list[tuple[str, dict[str, Any]]]) -> None:
        """Write several records in one transaction: all of them land, or none."""
        rows = [(table, key, dumps(rec), time.time()) for key, rec in items]
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)

    def replace_where(self, table: str, prefix: str, items: list[tuple[str, dict[str, Any]]]
                      ) -> None:
        """Atomically drop every record whose key starts with `prefix` and write `items`."""
        rows = [(table, key, dumps(rec), time.time()) for key, rec in items]
        with self._transaction() as db:
            db.execute("DELETE FROM records WHERE tbl = ? AND substr(key, 1, ?) = ?",
                       (table, len(prefix), prefix))
            db.executemany("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)", rows)

    def delete(self, table: str, key: str) -> None:
        with self._transaction() as db:
            db.execute("DELETE FROM records WHERE tbl = ? AND key = ?", (table, key))

    def get(self, table: str, key: str) -> dict[str, Any] | None:
        row = self._db.execute(
            "SELECT data FROM records WHERE tbl = ? AND key = ?", (table, key)
        ).fetchone()
        return json.loads(row[0]) if row else None

    def records(self, table: str) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT key, data FROM records WHERE tbl = ? ORDER BY key", (table,)
        ).fetchall()
        return [{"key": k, **json.loads(d)} for k, d in rows]

    def keys(self, table: str) -> list[str]:
        return [r[0] for r in self._db.execute(
            "SELECT key FROM records WHERE tbl = ? ORDER BY key", (table,))]

    def tables(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT tbl FROM records ORDER BY tbl")]

    def table(self, name: str, *, flatten: bool = True):
        """A results table as a pandas DataFrame (nested records flattened to dotted columns)."""
        import pandas as pd

        recs = self.records(name)
        if not recs:
            return pd.DataFrame()
        return pd.json_normalize(recs) if flatten else pd.DataFrame(recs)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        else:
            self._db.execute("COMMIT")

    # -- artifacts -------------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def atomic_dir(self, final: Path) -> contextlib.AbstractContextManager[Path]:
        """`atomic_dir(final)`: a temporary folder that becomes `final` only if the block ends."""
        return atomic_dir(final)

    def sweep_partial(self) -> list[Path]:
        """Remove leftovers of killed processes (`*.tmp-<pid>` folders and files)."""
        gone = []
        for p in self.root.rglob("*.tmp-*"):
            if p.exists():
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                gone.append(p)
        return gone


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes `final` only if the block finishes.

    A process killed inside the block leaves `<final>.tmp-<pid>`, which `sweep_partial` removes
    on the next run, so a half-written artifact is never read as complete. Needs no store: a
    remote worker writing an artifact into the study directory uses it too.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = final.with_name(f"{final.name}.tmp-old-{os.getpid()}")
    if final.exists():  # moved aside, not deleted, so a kill here loses nothing complete
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old or the new content, never a torn one.

    A killed process leaves `<name>.tmp-<pid>`, which `Store.sweep_partial` removes.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dir_bytes(path: Path) -> int:
    """Bytes on disk of every file under `path` (an artifact's storage cost)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# -- provenance ----------------------------------------------------------------------------------
_PACKAGES = ("peftlab", "torch", "transformers", "peft", "datasets", "accelerate", "safetensors",
             "numpy", "scipy", "pandas", "tokenizers")


@cache
def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


@cache
def toolkit_commit() -> str:
    """The git commit of the peftlab checkout in use ('+dirty' if it has local changes)."""
    src = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--", "peftlab"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"


@cache
def device_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_count"] = torch.cuda.device_count()
    return info


def provenance(**extra: Any) -> dict[str, Any]:
    """The stamp every record carries: versions, device, toolkit commit, time, plus `extra`
    (resolved config, model revision, data checksums: whatever the stage knows)."""
    return {
        "versions": package_versions(),
        "device": device_info(),
        "toolkit_commit": toolkit_commit(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
