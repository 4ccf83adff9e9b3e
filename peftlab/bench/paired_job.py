"""The job of one block of the paired latency design (`bench.paired`), run in a process of its own.

    job = paired_job(group, block=0, rounds=6, model=..., device="cpu", settings=...,
                     tasks=..., batch_size=1, seq_len="data", requests=8)
    result = run_isolated(job, isolation="forkserver", timeout_s=paired_timeout(job))

In the worker process (`worker.run_paired_job`), in order:

1. every condition's model is built by its mode (`Mode.load`), in an order drawn for the block,
   set up for serving alike (`loading.for_serving`: no key/value cache) and its weights copied
   into memory of the process's own (`loading.own_parameters`): loaded from safetensors,
   weights stay views into the mapped file, aligned by the accident of its header, and a
   merged adapter writes into them, so without the copy two models of one architecture would
   be served from differently aligned, differently backed memory;
2. a check: conditions serving the same artifact (unmerged and merged, the A/A copy and its
   original) must give the same logits on the block's first requests (the gate's rule and
   tolerance); a failure ends the block, untimed;
3. warm-up: each model serves the longest request and `warmup` others;
4. rounds: in each, the conditions in an order drawn for the round and then mirrored (every
   condition twice, ABBA), each time one untimed request (its weights back in the caches) and
   then the round's `requests` requests, the same for every condition, timed one by one
   (`timing.time_requests`) with the garbage collector paused.

The result carries every timed latency, per round and condition, in serving order.
"""

from __future__ import annotations

from typing import Any


def paired_job(group: Any, *, block: int, rounds: int, model: dict[str, Any], device: str,
               settings: dict[str, Any], tasks: dict[str, dict[str, Any]], batch_size: int,
               seq_len: int | str, requests: int) -> dict[str, Any]:
    """The JSON job of one block of `group` (`bench.paired.Group`): the artifacts of training
    seed `group.seed_of(block)`."""
    seed = group.seed_of(block)
    return {
        "kind": "paired",
        "mode": "paired",
        "group": group.name,
        "block": block,
        "rounds": rounds,
        "requests": requests,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "model": model,
        "device": device,
        "settings": settings,
        "task": group.task,
        "tasks": {group.task: tasks[group.task]},
        "tasks_served": [group.task],
        "artifacts": [c.artifacts[seed] for c in group.conditions],
        "conditions": [{"label": c.label, "mode": c.mode, "artifact": c.artifacts[seed]}
                       for c in group.conditions],
        "training_seed": seed,
    }


def paired_timeout(job: dict[str, Any]) -> float:
    """Seconds a block process may take before it is killed: loads, then every round's cap."""
    return 900.0 + job["rounds"] * float(job["settings"]["max_seconds"])
