"""The results store: round trips, atomic batches, one writer at a time, crash safety, provenance.

Crash tests kill real writer processes with SIGKILL (no cleanup handlers run), then check what a
later process finds. The child processes import only `peftlab.store` (no torch): they start fast.
"""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from peftlab.errors import StoreError
from peftlab.store import DB_NAME, Store, atomic_write_text, provenance

TIMEOUT = 60  # seconds a child may take to reach its checkpoint on a busy machine


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    """Start `python -c code args...`; it reports progress on stdout, one line per checkpoint."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen[str], word: str) -> str:
    """Read the child's stdout up to a line starting with `word`; if it dies, fail with stderr."""
    assert proc.stdout is not None
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.wait(TIMEOUT)
            raise AssertionError(f"child exited ({proc.returncode}) before {word!r}: "
                                 f"{proc.stderr.read() if proc.stderr else ''}")
        if line.startswith(word):
            return line.strip()


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(TIMEOUT)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "study")
    yield s
    s.close()


# -- records -------------------------------------------------------------------------------------


def test_put_get_records_round_trip(store: Store) -> None:
    rec = {"task": "sst2", "seed": 42, "metrics": {"accuracy": 0.91, "f1": [0.9, 0.92]},
           "path": Path("runs/x"), "array": np.arange(3), "scalar": np.float32(0.5),
           "flag": True, "none": None, "text": "naïve — ünïcode"}
    store.put("runs", "b", rec)
    store.put("runs", "a", {"task": "rte", "seed": 1, "metrics": {"accuracy": 0.6}})
    got = store.get("runs", "b")
    assert got == {"task": "sst2", "seed": 42, "metrics": {"accuracy": 0.91, "f1": [0.9, 0.92]},
                   "path": "runs/x", "array": [0, 1, 2], "scalar": 0.5, "flag": True,
                   "none": None, "text": "naïve — ünïcode"}
    assert store.get("runs", "missing") is None
    assert store.get("drift", "b") is None  # tables are separate namespaces
    recs = store.records("runs")
    assert [r["key"] for r in recs] == ["a", "b"]  # ordered by key
    assert recs[1]["metrics"]["f1"] == [0.9, 0.92]
    assert store.keys("runs") == ["a", "b"]
    assert store.tables() == ["runs"]


def test_put_replaces_a_record(store: Store) -> None:
    store.put("runs", "a", {"status": "running", "pid": 1})
    store.put("runs", "a", {"status": "done"})
    assert store.get("runs", "a") == {"status": "done"}
    assert len(store.records("runs")) == 1


def test_table_is_a_flat_dataframe(store: Store) -> None:
    store.put_many("runs", [
        ("r1", {"task": "sst2", "seed": 1, "metrics": {"accuracy": 0.9}}),
        ("r2", {"task": "rte", "seed": 2, "metrics": {"accuracy": 0.6}}),
    ])
    df = store.table("runs")
    assert isinstance(df, pd.DataFrame)
    assert list(df["key"]) == ["r1", "r2"]
    assert list(df["metrics.accuracy"]) == [0.9, 0.6]
    assert list(df["seed"]) == [1, 2]
    nested = store.table("runs", flatten=False)
    assert nested.loc[0, "metrics"] == {"accuracy": 0.9}
    empty = store.table("nothing")
    assert isinstance(empty, pd.DataFrame) and empty.empty


def test_records_survive_reopening(tmp_path: Path) -> None:
    s = Store(tmp_path / "study")
    s.put("runs", "a", {"x": 1})
    s.close()
    again = Store(tmp_path / "study", create=False)
    assert again.get("runs", "a") == {"x": 1}
    again.close()


def test_replace_where_and_delete(store: Store) -> None:
    store.put_many("drift", [("sst2/r1/0", {"v": 1}), ("sst2/r1/1", {"v": 2}),
                             ("sst2/r10/0", {"v": 3}), ("rte/r1/0", {"v": 4})])
    store.replace_where("drift", "sst2/r1/", [("sst2/r1/0", {"v": 10})])
    assert store.keys("drift") == ["rte/r1/0", "sst2/r1/0", "sst2/r10/0"]
    assert store.get("drift", "sst2/r1/0") == {"v": 10}
    store.delete("drift", "rte/r1/0")
    assert store.keys("drift") == ["sst2/r1/0", "sst2/r10/0"]


def test_nan_and_inf_are_stored_as_null(store: Store) -> None:
    store.put("stats", "k", {
        "nan": float("nan"), "inf": float("inf"), "ninf": -math.inf, "ok": 1.5,
        "nested": {"xs": [1.0, float("nan"), np.float64("inf")], "t": (np.nan, 2.0)},
        "np32": np.float32("nan"), "arr": np.array([np.nan, 1.0]),
    })
    got = store.get("stats", "k")
    assert got == {"nan": None, "inf": None, "ninf": None, "ok": 1.5,
                   "nested": {"xs": [1.0, None, None], "t": [None, 2.0]},
                   "np32": None, "arr": [None, 1.0]}
    # The stored text is strict JSON: no NaN/Infinity tokens another reader would choke on.
    raw = sqlite3.connect(store.root / DB_NAME).execute("SELECT data FROM records").fetchone()[0]
    assert "NaN" not in raw and "Infinity" not in raw
    df = store.table("stats")
    assert pd.isna(df.loc[0, "nan"]) and df.loc[0, "ok"] == 1.5


def test_put_many_is_atomic_when_a_record_cannot_be_encoded(store: Store) -> None:
    store.put("runs", "old", {"v": 0})

    class Opaque:
        pass

    with pytest.raises(TypeError, match="Opaque"):
        store.put_many("runs", [("a", {"v": 1}), ("b", {"v": Opaque()}), ("c", {"v": 3})])
    assert store.keys("runs") == ["old"]


def test_put_many_is_atomic_when_the_database_write_fails(store: Store) -> None:
    """A failure inside the transaction (after the first rows were inserted) rolls back all."""
    store.put("runs", "old", {"v": 0})
    with pytest.raises(sqlite3.Error):
        # a key SQLite cannot bind fails on the second row, after the first was inserted
        store.put_many("runs", [("a", {"v": 1}), (object(), {"v": 2}), ("c", {"v": 3})])  # type: ignore[list-item]
    assert store.keys("runs") == ["old"]
    store.put("runs", "after", {"v": 4})  # the connection is usable again (no open transaction)
    assert store.keys("runs") == ["after", "old"]


def test_replace_where_is_atomic(store: Store) -> None:
    store.put_many("drift", [("t/a", {"v": 1}), ("t/b", {"v": 2})])

    class Opaque:
        pass

    with pytest.raises(TypeError):
        store.replace_where("drift", "t/", [("t/a", {"v": 10}), ("t/c", {"v": Opaque()})])
    assert {r["key"]: r["v"] for r in store.records("drift")} == {"t/a": 1, "t/b": 2}


# -- the study directory -------------------------------------------------------------------------


def test_output_dir_under_a_regular_file_is_refused(tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    target = blocker / "study"
    with pytest.raises(StoreError) as info:
        Store(target)
    msg = str(info.value)
    assert str(target) in msg and "not writable" in msg and "output_dir" in msg


def test_read_only_output_dir_is_refused(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: permissions do not stop writes (see the test above)")
        with pytest.raises(StoreError, match="not writable"):
            Store(ro / "study")
        with pytest.raises(StoreError, match="not writable"):
            Store(ro)
    finally:
        ro.chmod(0o700)


def test_opening_a_folder_that_is_not_a_study(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a study directory"):
        Store(tmp_path, create=False)
    with pytest.raises(StoreError, match="not a study directory"):
        Store(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()  # a reader creates nothing


# -- locking -------------------------------------------------------------------------------------

HOLD_LOCK = """
    import sys, time
    from peftlab.store import Store
    held = Store(sys.argv[1]).lock()  # kept referenced: the lock lives as long as the Store
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_process_cannot_take_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "study"
    holder = spawn(HOLD_LOCK, str(root))
    try:
        wait_for(holder, "locked")
        with pytest.raises(StoreError) as info:
            Store(root).lock()
        msg = str(info.value)
        assert str(root) in msg and "in use by another peftlab process" in msg
        assert f"pid {holder.pid}" in msg  # says who holds it
        # readers need no lock
        reader = Store(root, create=False)
        assert reader.tables() == []
        reader.close()
    finally:
        kill(holder)
    # the lock dies with its process: no stale lock after a crash
    s = Store(root).lock()
    assert f"pid {os.getpid()}" in (root / ".lock").read_text()
    s.close()


def test_lock_is_exclusive_within_one_process_too(tmp_path: Path) -> None:
    first = Store(tmp_path).lock()
    assert first.lock() is first  # taking it again from the same Store is a no-op
    with pytest.raises(StoreError, match="in use"):
        Store(tmp_path).lock()
    first.unlock()
    second = Store(tmp_path).lock()
    second.close()
    first.close()


# -- crashes -------------------------------------------------------------------------------------

KILLED_IN_ATOMIC_DIR = """
    import sys, time
    from peftlab.store import Store
    s = Store(sys.argv[1])
    with s.atomic_dir(s.path("runs", "r1")) as tmp:
        (tmp / "adapter_config.json").write_text("{}")
        (tmp / "adapter_model.safetensors").write_bytes(b"x" * 4096)
        print("inside", tmp, flush=True)
        time.sleep(120)
"""


def test_atomic_dir_completes(store: Store) -> None:
    final = store.path("runs", "r1")
    with store.atomic_dir(final) as tmp:
        assert tmp != final and not final.exists()
        (tmp / "weights.bin").write_bytes(b"abc")
    assert (final / "weights.bin").read_bytes() == b"abc"
    assert [p.name for p in final.parent.iterdir()] == ["r1"]
    # rewriting replaces the folder as a whole: no file of the old version survives
    with store.atomic_dir(final) as tmp:
        (tmp / "other.bin").write_bytes(b"new")
    assert sorted(p.name for p in final.iterdir()) == ["other.bin"]


def test_atomic_dir_error_leaves_nothing(store: Store) -> None:
    final = store.path("runs", "r1")
    with pytest.raises(RuntimeError), store.atomic_dir(final) as tmp:
        (tmp / "half").write_text("x")
        raise RuntimeError("training crashed")
    assert not final.exists()
    assert list(final.parent.iterdir()) == []


def test_killed_writer_leaves_no_complete_looking_artifact(tmp_path: Path) -> None:
    root = tmp_path / "study"
    child = spawn(KILLED_IN_ATOMIC_DIR, str(root))
    try:
        line = wait_for(child, "inside")
    finally:
        kill(child)
    tmp = Path(line.split(" ", 1)[1])
    final = root / "runs" / "r1"
    assert not final.exists(), "a killed writer's artifact looks complete"
    assert tmp.is_dir() and tmp.name.startswith("r1.tmp-")  # its leftovers, clearly temporary
    # a leftover file of an atomic text write is swept too
    (root / "spec.yaml.tmp-99999").write_text("half")
    s = Store(root)
    gone = s.sweep_partial()
    s.close()
    assert sorted(p.name for p in gone) == sorted([tmp.name, "spec.yaml.tmp-99999"])
    assert not tmp.exists()
    assert list((root / "runs").iterdir()) == []
    assert not list(root.rglob("*.tmp-*"))


def test_sweep_keeps_complete_artifacts(store: Store) -> None:
    with store.atomic_dir(store.path("runs", "done")) as tmp:
        (tmp / "w.bin").write_bytes(b"1")
    atomic_write_text(store.path("spec.yaml"), "name: x\n")
    store.put("runs", "done", {"status": "done"})
    assert store.sweep_partial() == []
    assert (store.path("runs", "done", "w.bin")).is_file()
    assert store.path("spec.yaml").read_text() == "name: x\n"
    assert store.get("runs", "done") == {"status": "done"}


KILLED_IN_PUT = """
    import sys
    from peftlab.store import Store
    s = Store(sys.argv[1])
    i = 0
    while True:
        # big records keep the writer inside SQLite most of the time
        s.put_many("runs", [(f"k{i:06d}-{j}", {"i": i, "j": j, "blob": "x" * 20000,
                                              "last": True}) for j in range(20)])
        print("committed", i, flush=True)
        i += 1
"""


def test_killed_process_mid_put_leaves_previous_records(tmp_path: Path) -> None:
    root = tmp_path / "study"
    s = Store(root)
    s.put("runs", "before", {"status": "done"})
    s.close()
    child = spawn(KILLED_IN_PUT, str(root))
    try:
        committed = int(wait_for(child, "committed 3").split()[1])
    finally:
        kill(child)
    db = sqlite3.connect(root / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    s = Store(root, create=False)
    assert s.get("runs", "before") == {"status": "done"}
    recs = [r for r in s.records("runs") if r["key"] != "before"]
    # every batch that reported its commit is there, and batches are whole: no torn record
    assert len(recs) >= (committed + 1) * 20
    assert len(recs) % 20 == 0
    for r in recs:
        assert r["blob"] == "x" * 20000 and r["last"] is True
    s.close()


# -- provenance ----------------------------------------------------------------------------------


def test_provenance_has_versions_device_and_commit() -> None:
    p = provenance(model_revision="abc", data_checksums={"train": "sha256:..."})
    for pkg in ("python", "peftlab", "torch", "transformers", "peft", "datasets", "numpy"):
        assert p["versions"][pkg] and p["versions"][pkg] != "not installed", pkg
    import torch

    assert p["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert {"platform", "cpu_count", "torch_threads"} <= set(p["device"])
    assert isinstance(p["toolkit_commit"], str) and p["toolkit_commit"]
    head = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:
        assert p["toolkit_commit"].startswith(head.stdout.strip())
    assert p["model_revision"] == "abc" and p["data_checksums"] == {"train": "sha256:..."}
    assert p["time"] and p["host"]


def test_provenance_round_trips_through_the_store(store: Store) -> None:
    store.put("runs", "r", {"status": "done", "provenance": provenance()})
    df = store.table("runs")
    assert {"provenance.versions.torch", "provenance.toolkit_commit",
            "provenance.device.platform"} <= set(df.columns)
