"""Like-with-like latency of multi-adapter units: per task, against that task's single adapter.

    per_task = task_latencies(multi_row)            # task -> TaskLatencies(ms, batches)
    ref = matched_latencies(unmerged_row, per_task["sst2"].batches)   # the same batches only

A multi-adapter unit (modes `multi`, `mixed`) times one stream of requests for several tasks.
Its pooled median is not comparable with the mean of the single adapters' medians: three tasks
whose requests take 8, 12 and 22 ms with no switching cost at all pool to a median of 12 ms
against a mean of 14, "13% faster", the same for every seed. So each task is compared on its own:
the multi-adapter unit's requests for that task against the single adapter's requests on the
same prebuilt batches (same examples, same lengths: both streams are built from the same seed,
`requests.build_batches`), where the single stream's batch indices are recorded.

Rows are `results.bench_rows` rows: tasks (served, in adapter order), latencies_ms (raw, in
timed order) and extras: request_adapters (multi: the adapter index of each request),
request_row_adapters (mixed: the adapter index of each row of each request), request_batches
(the prebuilt batch index of each request; for multi, within its adapter's batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class TaskLatencies:
    """One task's requests inside a multi-adapter stream. ms: their latencies; batches: their
    prebuilt batch indices in the task's own batches (None: not comparable batch by batch, a
    mixed batch holds rows of several tasks)."""

    ms: list[float]
    batches: list[int] | None


def task_latencies(row: dict[str, Any]) -> dict[str, TaskLatencies]:
    """task -> its requests in `row`'s stream (see the module docstring); {} when the row does
    not record which adapter each request was for.

    multi: each request is for one adapter, hence one task. mixed: a request belongs to every
    task one of its rows is for (the latency those rows waited, padding to the batch's longest
    row included: the real cost of mixing); at batch size 1 that is one task per request.
    """
    tasks = list(row.get("tasks") or [])
    lat = list(row.get("latencies_ms") or [])
    ex = row.get("extras") or {}
    out: dict[str, TaskLatencies] = {}
    if ex.get("request_adapters") is not None:
        batches = ex.get("request_batches")
        for j, a in enumerate(ex["request_adapters"][: len(lat)]):
            t = out.setdefault(tasks[a], TaskLatencies([], [] if batches else None))
            t.ms.append(lat[j])
            if batches:
                t.batches.append(int(batches[j]))
        return out
    if ex.get("request_row_adapters") is not None:
        for j, rows in enumerate(ex["request_row_adapters"][: len(lat)]):
            for task in dict.fromkeys(tasks[a] for a in rows):
                out.setdefault(task, TaskLatencies([], None)).ms.append(lat[j])
    return out


def matched_latencies(single: dict[str, Any], batches: list[int] | None) -> tuple[list[float],
                                                                                 bool]:
    """(latencies, matched): the single-adapter row's latencies on the prebuilt batches in
    `batches` (matched True), or all of them when no batch can be matched (batches None, the row
    did not record its batches, or no batch in common)."""
    lat = list(single.get("latencies_ms") or [])
    mine = (single.get("extras") or {}).get("request_batches")
    if batches and mine:
        want = set(batches)
        sel = [x for x, b in zip(lat, mine, strict=False) if b in want]
        if sel:
            return sel, True
    return lat, False


def median(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
