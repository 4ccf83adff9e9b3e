"""Units of bench work (a mode on its artifacts, with its sweep points), jobs and records.

A unit is what one worker process does: e.g. `merged` on run sst2-lora-s1-ab12cd34, or `multi` on
the LoRA adapters of seed 1 for every task. Each of its sweep points becomes one `bench` record:

    key = "<mode>/<unit>/b<batch size>/s<seq len>"      e.g. "merged/sst2-lora-s1-ab12cd34/b8/sdata"

where <mode> may carry the "+compile" variant and <unit> is the run id, "+"-joined run ids for
multi/mixed, or the task name for `base`. Shared by the study stage and the one-off command.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from peftlab.errors import PeftlabError, SpecError

# BenchSpec fields that change a measurement: a record measured under other values is redone.
SETTINGS_KEYS = ("warmup", "min_iterations", "min_seconds", "max_seconds", "interleave",
                 "multi_k", "threads", "seed", "gate_tolerance", "gate_examples", "load_repeats",
                 "drop_page_cache")


@dataclass
class Unit:
    """One mode on its artifacts. mode: registered name plus optional "+compile"."""

    mode: str
    name: str
    artifacts: list[dict[str, Any]]
    tasks_served: list[str]
    method: str | None = None
    method_type: str | None = None
    seed: int | None = None
    unsupported: str | None = None  # why this mode cannot serve these artifacts
    points: list[tuple[int, int | str]] = field(default_factory=list)
    # where the unit runs in the schedule: {block, position, of, index, scheme} (stages/bench.py)
    order: dict[str, Any] | None = None

    @property
    def mode_name(self) -> str:
        return self.mode.split("+")[0]

    @property
    def variant(self) -> str:
        """"eager", "compile" (torch.compile) or "fast" (the fused unmerged fast path)."""
        for v in ("compile", "fast"):
            if self.mode.endswith("+" + v):
                return v
        return "eager"

    def key(self, batch_size: int, seq_len: int | str) -> str:
        return f"{self.mode}/{self.name}/b{batch_size}/s{seq_len}"


def bench_settings(bench: Any) -> dict[str, Any]:
    """The measurement settings of a BenchSpec, as stored in every record."""
    d = bench.model_dump(mode="json")
    return {k: d[k] for k in SETTINGS_KEYS}


def settings_hash(settings: dict[str, Any], model: dict[str, Any], device: str) -> str:
    """12 hex digits identifying what a measurement depends on besides its unit and point."""
    text = json.dumps({"settings": settings, "model": model, "device": device}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sweep_points(batch_sizes: list[int], seq_lengths: list[int | str]) -> list[tuple[int, Any]]:
    return [(b, s) for b in batch_sizes for s in seq_lengths]


def check_lengths(seq_lengths: list[int | str], base: dict[str, Any], where: str) -> None:
    """Fixed lengths beyond the model's position embeddings cannot run: SpecError."""
    limit = base.get("max_positions")
    too_long = [s for s in seq_lengths if s != "data" and limit and int(s) > int(limit)]
    if too_long:
        raise SpecError(f"{where}: sequence length(s) {too_long} exceed the {limit} positions of "
                        f"{base['describe']}")


def make_job(unit: Unit, *, model: dict[str, Any], device: str, settings: dict[str, Any],
             tasks: dict[str, dict[str, Any]], points: list[tuple[int, Any]]) -> dict[str, Any]:
    """The JSON job a worker runs (see `worker.run_job`). tasks: name -> {num_labels,
    label_names, label_dtype, rows (the evaluation examples as records)}."""
    return {
        "mode": unit.mode_name,
        "variant": unit.variant,
        "unit": unit.name,
        "model": model,
        "device": device,
        "artifacts": unit.artifacts,
        "tasks_served": unit.tasks_served,
        "tasks": {t: tasks[t] for t in dict.fromkeys(unit.tasks_served)},
        "settings": settings,
        "points": [[b, s] for b, s in points],
    }


def unit_records(unit: Unit, result: dict[str, Any], points: list[tuple[int, Any]], *,
                 settings: dict[str, Any], digest: str, extra: dict[str, Any]
                 ) -> list[tuple[str, dict[str, Any]]]:
    """(key, record) for each sweep point of a unit's result (see the module docstring); each
    record is built through `records.BenchRecord`."""
    from peftlab.records import BenchRecord

    common = {
        "mode": unit.mode_name,
        "variant": unit.variant,
        "mode_key": unit.mode,
        "unit": unit.name,
        "tasks": unit.tasks_served,
        "task": unit.tasks_served[0] if len(set(unit.tasks_served)) == 1 else None,
        "method": unit.method,
        "method_type": unit.method_type,
        "seed": unit.seed,
        "run_ids": [a.get("run_id") for a in unit.artifacts],
        "adapter_names": [a["name"] for a in unit.artifacts],
        "artifacts": [{k: a.get(k) for k in ("name", "path", "kind", "run_id", "task",
                                             "method_type")} for a in unit.artifacts],
        "settings": settings,
        "settings_hash": digest,
        "order": unit.order,
        **{k: result.get(k) for k in ("process", "environment", "load", "gate", "storage",
                                      "flops", "memory_after_load")},
        **extra,
    }
    by_point = {(p["batch_size"], p["seq_len"]): p for p in result.get("points", [])}
    out = []
    for b, s in points:
        point = by_point.get((b, s))
        if result.get("status") == "done" and point is not None:
            rec = {**common, "status": "done", **point}
        else:
            rec = {**common, "status": result.get("status", "failed"), "batch_size": b,
                   "seq_len": s, "failure_reason": result.get("failure_reason")
                   or "no result for this sweep point"}
            if result.get("traceback"):
                rec["traceback"] = result["traceback"]
        built = BenchRecord(**rec)
        out.append((built.key, built.dump()))
    return out


def unsupported_records(unit: Unit, points: list[tuple[int, Any]], *, settings: dict[str, Any],
                        digest: str) -> list[tuple[str, dict[str, Any]]]:
    result = {"status": "unsupported", "failure_reason": unit.unsupported}
    return unit_records(unit, result, points, settings=settings, digest=digest, extra={})


def raise_worker_error(unit: Unit, result: dict[str, Any]) -> None:
    """A user-fixable error inside the worker (status "error") becomes the same error here."""
    import peftlab.errors as errors

    cls = getattr(errors, result.get("error_type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, PeftlabError)):
        cls = PeftlabError
    raise cls(f"bench {unit.mode} on {unit.name}: {result.get('message')}")


def timeout_for(points: list[tuple[int, Any]], settings: dict[str, Any]) -> float:
    """Seconds a unit process may take before it is killed: loads, gate and every point's cap."""
    return 900.0 + len(points) * (float(settings["max_seconds"]) + 120.0)
