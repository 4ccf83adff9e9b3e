"""Readers of a study's stored results that several stages share (stats, report, ...).

    view = run_view(study, store)          # the current spec's runs and their records, by seed
    rows = bench_rows(store.records("bench"))

Only runs the current spec still implies count (a record left by an earlier version of the spec
has another run id and is ignored); `bench_rows` is the one place that reads the bench stage's
record layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftlab.methods import get_method
from peftlab.records import BenchRecord, RunRecord, read_one

if TYPE_CHECKING:
    from peftlab.plan import Study
    from peftlab.store import Store


def serving_modes() -> tuple[str, ...]:
    """Modes that serve several adapters on one base (their rows serve several tasks)."""
    from peftlab.bench.modes import MODES

    return tuple(m.name for m in MODES.values() if m.max_artifacts is None or m.max_artifacts > 1)


def is_reference(method_type: str) -> bool:
    """Whether a method type is a reference that PEFT methods are compared against: one that the
    method registry declares not PEFT (full fine-tuning), whatever its name."""
    return not get_method(method_type).is_peft


@dataclass
class RunView:
    """The current spec's runs and their records: what every comparison pairs by seed.

    Only runs the spec still implies count (a record left by an earlier version of the spec has
    another run id and is ignored), and only `done` runs give values.
    """

    tasks: list[str]
    methods: dict[str, str]  # study method name -> method type, spec order
    seeds: list[int]
    records: dict[tuple[str, str, int], dict[str, Any]]  # (task, method, seed) -> runs record
    run_ids: dict[tuple[str, str, int], str]

    def done(self, task: str, method: str, seed: int) -> dict[str, Any] | None:
        rec = self.records.get((task, method, seed))
        return rec if rec is not None and rec.get("status") == "done" else None

    def why_missing(self, task: str, method: str, seed: int) -> str:
        rec = self.records.get((task, method, seed))
        if rec is None:
            return f"{method}: not run"
        reason = rec.get("failure_reason")
        return f"{method}: {rec.get('status', 'pending')}" + (f" ({reason})" if reason else "")

    def references(self) -> list[str]:
        """Reference methods (full fine-tuning): what each PEFT method is compared against."""
        return [m for m, t in self.methods.items() if is_reference(t)]

    def peft(self) -> list[str]:
        return [m for m, t in self.methods.items() if not is_reference(t)]

    def method_of_run(self) -> dict[str, tuple[str, str, int]]:
        return {rid: key for key, rid in self.run_ids.items()}


def run_view(study: Study, store: Store) -> RunView:
    spec = study.spec
    records: dict[tuple[str, str, int], dict[str, Any]] = {}
    run_ids: dict[tuple[str, str, int], str] = {}
    for rc in study.runs():
        key = (rc.task, rc.method, rc.seed)
        run_ids[key] = rc.run_id
        rec = read_one(store, RunRecord, rc.run_id)
        if rec is not None:
            records[key] = rec.dump()
    return RunView(tasks=[t.name for t in spec.tasks],
                   methods={m: e["type"] for m, e in spec.methods.items()},
                   seeds=list(spec.seeds), records=records, run_ids=run_ids)


def main_metric_value(rec: dict[str, Any]) -> float | None:
    """The main metric of a done run, or None when it is missing or not finite."""
    m = (rec.get("metrics") or {}).get(rec.get("main_metric") or "", {})
    v = m.get("value")
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def bench_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`bench` table records (`peftlab.bench.units.unit_records`) -> one flat row per (mode,
    unit, batch size, sequence length).

    The one place that reads the bench stage's record layout; analysis and report use only these
    rows. Fields: mode ("merged", "merged+compile"), base_mode (the registered mode), unit, task
    (the one task served; None for base-less multi/mixed), tasks (served), run_ids, method, seed,
    batch_size, seq_len, status, ok (timed after passing the gate), failure, gate, latency
    (latency_stats in ms), latencies_ms (raw), p50_ms (the per-run unit of the tests),
    throughput, memory (peak during the point), memory_after_load, load (cold_ms, warm_ms,
    warm_ms_median, page_cache), storage, flops, environment, extras.
    """
    rows = []
    serving = serving_modes()
    for raw in records:
        rec = BenchRecord.parse(raw).dump() | {"key": raw.get("key")}
        base_mode = str(rec.get("mode", ""))
        mode = str(rec.get("mode_key") or base_mode)
        tasks = list(rec.get("tasks") or ([rec["task"]] if rec.get("task") else []))
        raw = rec.get("latencies_ns") or []
        latency = rec.get("latency_ms") or {}
        gate = rec.get("gate") or {}
        status = rec.get("status", "failed")
        p50 = latency.get("p50")
        rows.append({
            "key": rec.get("key"),
            "mode": mode,
            "base_mode": base_mode,
            "unit": rec.get("unit"),
            # several adapters on one base serve several tasks (or one task's several seeds)
            "task": None if base_mode in serving else rec.get("task"),
            "tasks": tasks,
            "run_ids": [r for r in rec.get("run_ids") or [] if r],
            "method": rec.get("method"),
            "seed": rec.get("seed"),
            "batch_size": rec.get("batch_size"),
            "seq_len": rec.get("seq_len"),
            "status": status,
            "ok": status == "done" and gate.get("passed") is True and p50 is not None,
            "failure": (f"{status}: {rec.get('failure_reason')}" if status != "done"
                        else None),
            "gate": gate,
            "latency": latency,
            "latencies_ms": [x / 1e6 for x in raw],
            "p50_ms": p50,
            "throughput": rec.get("throughput") or {},
            "memory": rec.get("memory") or {},
            "memory_after_load": rec.get("memory_after_load") or {},
            "load": rec.get("load") or {},
            "storage": rec.get("storage") or {},
            "flops": rec.get("flops") or {},
            "environment": rec.get("environment") or {},
            "extras": rec.get("extras") or {},
        })
    return rows


def served_tasks(row: dict[str, Any]) -> str:
    """The task a bench row serves, or its served tasks joined with '+' (multi/mixed)."""
    return row["task"] or "+".join(dict.fromkeys(row["tasks"]))


def seq_sort_key(seq: Any) -> tuple[int, int]:
    """'data' (the examples' own lengths) first, then fixed lengths in increasing order."""
    return (0, 0) if seq == "data" else (1, int(seq))
