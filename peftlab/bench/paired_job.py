"""One block of the paired latency design, inside its own process (`bench.paired`).

    job = paired_job(group, block=0, rounds=6, model=..., device="cpu", settings=...,
                     tasks=..., batch_size=1, seq_len="data", requests=8, seed=42)
    result = run_isolated(job, isolation="forkserver", timeout_s=paired_timeout(job))

In the worker (`run_paired_job`), in order:

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

import gc
import os
import time
import zlib
from typing import Any

import numpy as np

SEGMENT_WARMUP = 1  # untimed requests when a model's segment starts
CHECK_REQUESTS = 8  # requests whose logits the same-artifact check compares


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


def run_paired_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one block (see the module docstring); JSON-ready result."""
    import torch

    from peftlab.bench.loading import for_serving, own_parameters
    from peftlab.bench.modes import get_mode
    from peftlab.bench.timing import synchronizer, time_requests
    from peftlab.bench.worker import WorkerEnv, environment_of

    t_start = time.perf_counter()
    process = {"pid": os.getpid(), "parent_pid": os.getppid(),
               "isolation": job.get("isolation", "in-process")}
    gc.freeze()
    if job.get("isolation") in ("forkserver", "subprocess") and not job.get("log"):
        import transformers

        transformers.logging.set_verbosity_error()  # as `worker.run_job`: no log, no reports
    settings = job["settings"]
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    torch.manual_seed(int(settings["seed"]))
    env = WorkerEnv(job)
    rng = np.random.default_rng([int(settings["seed"]), int(job["block"]),
                                 zlib.crc32(job["group"].encode())])
    conds = job["conditions"]
    labels = [c["label"] for c in conds]

    # 1. load, in a drawn order, each model into memory of its own
    calls: dict[str, Any] = {}
    models: dict[str, Any] = {}
    load_order = [labels[i] for i in rng.permutation(len(labels))]
    for label in load_order:
        c = next(x for x in conds if x["label"] == label)
        mode = get_mode(c["mode"])
        env.artifacts = [c["artifact"]]
        models[label] = for_serving(mode.load(env))
        if job.get("own_memory", True):  # off only to measure what it changes (benchmarks/)
            own_parameters(models[label])
        calls[label] = mode.make_call(env, models[label], models[label])
    load_s = time.perf_counter() - t_start
    environment = environment_of(env, "eager")
    base = {"process": process, "environment": environment, "load_order": load_order}

    # 2. the same artifact under two modes (or twice) must serve the same logits
    seed = int(settings["seed"]) * 1_000_003 + int(job["block"])
    reqs = env.batches(job["task"], int(job["batch_size"]), job["seq_len"], seed)
    t0 = time.perf_counter()
    probe = reqs[:CHECK_REQUESTS]
    logits = {lab: env.logits(calls[lab], probe) for lab in labels}
    checks = []
    for i, a in enumerate(conds):
        for b in conds[i + 1:]:
            if a["artifact"]["path"] == b["artifact"]["path"]:
                checks.append(env.compare(a["label"], logits[a["label"]], b["label"],
                                          logits[b["label"]]))
    check_s = time.perf_counter() - t0
    failed = [c for c in checks if not c["passed"]]
    if failed:
        return {**base, "status": "failed", "check": checks, "rounds": [],
                "failure_reason": "the same artifact served under two modes gave other logits "
                                  "(not timed): " + "; ".join(
                                      f"{c['name']} vs {c['reference']}: relative difference "
                                      f"{c['rel_diff']:.2e}" for c in failed)}

    # 3. warm-up
    sync = synchronizer(env.device)
    t0 = time.perf_counter()
    longest = max(reqs, key=lambda r: r.padded_tokens)
    with torch.inference_mode():
        for label in load_order:
            for r in [longest] + reqs[: int(settings["warmup"])]:
                calls[label](r)
        sync()
    warm_s = time.perf_counter() - t0

    # 4. rounds
    n = int(job["requests"])
    out_rounds = []
    round_s = []
    gc.collect()
    gc.disable()
    try:
        with torch.inference_mode():
            for r in range(int(job["rounds"])):
                t0 = time.perf_counter()
                chosen = [reqs[(r * n + i) % len(reqs)] for i in range(n)]
                order = [labels[i] for i in rng.permutation(len(labels))]
                order = order + order[::-1]
                ns: dict[str, list[list[int]]] = {lab: [] for lab in labels}
                for label in order:
                    for w in chosen[:SEGMENT_WARMUP]:
                        calls[label](w)
                    sync()
                    it = iter(chosen)
                    timing = time_requests(calls[label], lambda it=it: next(it), warmup=0,
                                           min_iterations=n, min_seconds=0.0,
                                           max_seconds=float(settings["max_seconds"]),
                                           device=env.device)
                    ns[label].append([int(x) for x in timing.latencies_ns])
                out_rounds.append({"round": r, "order": order, "ns": ns})
                round_s.append(time.perf_counter() - t0)
    finally:
        gc.enable()
    return {**base, "status": "done", "check": checks, "rounds": out_rounds,
            "timing": {"load_s": load_s, "check_s": check_s, "warm_s": warm_s,
                       "rounds_s": float(sum(round_s)), "round_s": round_s,
                       "worker_s": time.perf_counter() - t_start}}
