"""One bench unit (a mode on its artifacts) in its own process: load, gate, time, report.

    python -m peftlab.bench.worker JOB.json RESULT.json

The parent (`peftlab.bench.runner`) starts one such process per unit, so one mode's allocations,
compiled graphs and caches cannot leak into the next, and collects the JSON result. In order:

1. cold load: the page cache of the weight files is dropped (see `loading.drop_page_cache`), then
   the mode's model is built once and timed; then `load_repeats` repeated (warm) loads;
2. correctness gate against reference models (`mode.gate`); a failure ends the unit: not timed;
3. for each sweep point (batch size x sequence length): build the requests (tokenised, padded and
   on the device before any timing), a memory pass (the warm-up calls plus the longest request,
   under `PeakMemory`), then the timing loop (`timing.time_requests`) with the garbage collector
   paused (as `timeit` does) and no sampling thread running.

A block of the paired latency design (a job of kind "paired", `bench.paired_job`) runs here
too (`run_paired_job`): several models in one process, timed alternately.

torch, transformers and peft are imported at module level on purpose: the forkserver imports this
module once and every unit process forked from it starts with them loaded.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import peft  # noqa: F401  (imported once in the forkserver, see the module docstring)
import psutil
import torch
import transformers  # noqa: F401

from peftlab.artifacts import artifact_weight_files
from peftlab.bench.env import GATE_BATCH, WorkerEnv
from peftlab.bench.flops import linear_flops
from peftlab.bench.gate import compare_logits, gate_result
from peftlab.bench.loading import (
    drop_page_cache,
    for_serving,
    own_parameters,
    release_memory,
)
from peftlab.bench.mode import Mode
from peftlab.bench.modes import get_mode
from peftlab.bench.timing import latency_stats, synchronizer, throughput, time_requests
from peftlab.errors import PeftlabError
from peftlab.memory import PeakMemory, param_bytes
from peftlab.store import atomic_write_text, dir_bytes, dumps

# Modes this process has run, oldest first: the isolation evidence each result carries. In an
# isolated unit process it is empty when the unit starts.
_MODES_RUN_HERE: list[str] = []
# ---------------------------------------------------------------------------------------------


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Run one unit (see the module docstring) and return its JSON-ready result."""
    process = {"pid": os.getpid(), "parent_pid": os.getppid(),
               "modes_run_before_in_process": list(_MODES_RUN_HERE),
               "isolation": job.get("isolation", "in-process")}
    _MODES_RUN_HERE.append(job["mode"])
    # Everything alive now (the imported libraries: ~10^6 objects) is never garbage: freezing it
    # makes each later gc.collect() between loads take milliseconds instead of ~0.4 s.
    gc.freeze()
    if job.get("isolation") in ("forkserver", "subprocess") and not job.get("log"):
        # A unit loads its model 3-6 times (cold, repeats, gate references): with no study log
        # to hold them, one "newly initialized head" report per load is noise on the console;
        # the gate checks the head instead. With a log (child_main), they are kept there.
        transformers.logging.set_verbosity_error()
    settings = job["settings"]
    if settings.get("threads"):
        torch.set_num_threads(int(settings["threads"]))
    torch.manual_seed(int(settings["seed"]))
    mode = get_mode(job["mode"])
    env = WorkerEnv(job)
    device = env.device
    sync = synchronizer(device)
    environment = environment_of(env, job.get("variant", "eager"))
    base = {"process": process, "environment": environment}

    # 1. load: cold (page cache dropped), then repeated
    files = mode.weight_files(env)
    if settings.get("drop_page_cache", True):
        page_cache = drop_page_cache(files)
    else:
        page_cache = {"method": "none (bench.drop_page_cache is false)",
                      "files": [str(f) for f in files]}
    release_memory(device)
    rss0 = psutil.Process().memory_info().rss
    t0 = time.perf_counter_ns()
    model = _load(mode, env, job)
    sync()
    cold_ms = (time.perf_counter_ns() - t0) / 1e6
    after_load = {"rss_bytes": psutil.Process().memory_info().rss,
                  "rss_delta_bytes": psutil.Process().memory_info().rss - rss0,
                  "model_param_bytes": param_bytes(model)}
    if device.startswith("cuda"):
        after_load["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
        after_load["cuda_reserved_bytes"] = torch.cuda.memory_reserved()
    warm = []
    for _ in range(int(settings.get("load_repeats", 3))):
        del model
        release_memory(device)
        t0 = time.perf_counter_ns()
        model = _load(mode, env, job)
        sync()
        warm.append((time.perf_counter_ns() - t0) / 1e6)
    load = {"cold_ms": cold_ms, "warm_ms": warm,
            "warm_ms_median": float(np.median(warm)) if warm else None,
            "page_cache": page_cache,
            "cold_means": "first load in a fresh process after the page-cache drop above; it "
                          "includes first use of the model code (lazy imports, allocator growth)",
            "warm_means": "the same load repeated in the same process (page cache warm)"}
    base.update(load=load, memory_after_load=after_load,
                storage=_storage(env, model, files),
                flops=env.state.get("unfused_flops") or linear_flops(model, mode.adapters(env)))

    # 2. the correctness gate
    forward = torch.compile(model) if job.get("variant") == "compile" else model
    call = mode.make_call(env, model, forward)
    checks = mode.gate(env, model, call) + training_checks(env, mode, call)
    gate = gate_result(checks, dtype=env.dtype, tolerance=env.tolerance)
    base["gate"] = gate
    if not gate["passed"]:
        return {**base, "status": "failed", "points": [],
                "failure_reason": "correctness gate failed (not timed): "
                                  + "; ".join(gate["failures"])}

    # 3. the sweep
    points = [run_point(env, mode, model, call, int(b), s) for b, s in job["points"]]
    return {**base, "status": "done", "points": points}


def environment_of(env: WorkerEnv, variant: str) -> dict[str, Any]:
    """Where a unit ran: device, dtype, threads, variant and library versions."""
    device = env.device
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if device.startswith("cuda") else
        _cpu_name(),
        "dtype": env.dtype,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "variant": variant,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
    }


def _load(mode: Mode, env: WorkerEnv, job: dict[str, Any]) -> Any:
    """The mode's model; for the "fast" variant rewritten onto the fused fast path (the fusing
    is part of the load time). The FLOPs of the adapter path are counted before fusing."""
    model = for_serving(mode.load(env))
    if job.get("variant") == "fast":
        from peftlab.bench.fastpath import fused_lora

        env.state["unfused_flops"] = linear_flops(model, mode.adapters(env))
        model = fused_lora(model)
    return model


def run_point(env: WorkerEnv, mode: Mode, model: Any, call: Any, batch_size: int,
              seq_len: int | str) -> dict[str, Any]:
    """Memory pass then timing loop for one sweep point; every raw latency is returned."""
    s = env.settings
    seed = env.seed * 1_000_003 + batch_size * 1009 + (0 if seq_len == "data" else int(seq_len))
    stream = mode.stream(env, batch_size, seq_len, seed)
    sync = synchronizer(env.device)
    env.state.pop("seen", None)
    warmup = int(s["warmup"])
    with torch.inference_mode():
        # Memory is measured here, not in the timed loop: the RSS sampling thread would compete
        # with the timed work for the CPU.
        with PeakMemory(env.device) as mem:
            t0 = time.perf_counter_ns()
            call(stream.next())
            sync()
            first_ms = (time.perf_counter_ns() - t0) / 1e6
            extra = [stream.next() for _ in range(max(warmup - 1, 0))] + [stream.longest()]
            if env.job.get("variant") == "compile":
                # every shape the stream holds is compiled here, not inside the timed loop
                extra += stream.distinct()
            for request in extra:
                call(request)
            sync()
        after = mode.observe(env, model)
        gc.collect()
        gc.disable()
        try:
            timing = time_requests(
                call, stream.next, warmup=0, min_iterations=int(s["min_iterations"]),
                min_seconds=float(s["min_seconds"]), max_seconds=float(s["max_seconds"]),
                device=env.device, after=after,
                before_timing=lambda: env.state.__setitem__("active_before_timing",
                                                            env.state.get("active")))
        finally:
            gc.enable()
    rows = [r.rows for r in timing.requests]
    tokens = [r.tokens for r in timing.requests]
    padded = [r.padded_tokens for r in timing.requests]
    point = {
        "batch_size": batch_size,
        "seq_len": seq_len,
        "latencies_ns": timing.latencies_ns,
        "latency_ms": latency_stats(timing.latencies_ns),
        "device_latencies_ns": timing.device_latencies_ns,
        "device_latency_ms": latency_stats(timing.device_latencies_ns)
        if timing.device_latencies_ns else None,
        "throughput": throughput(timing.latencies_ns, rows, tokens, padded),
        "iterations": len(timing.latencies_ns),
        "stopped_by": timing.stopped_by,
        "timed_wall_s": timing.wall_s,
        "timer": timing.timer,
        "gc_paused_while_timing": True,
        "first_call_ms": first_ms,
        "warmup_calls": 1 + len(extra),
        "tokens_per_request_mean": float(np.mean(tokens)),
        "padded_len_mean": float(np.mean([p / r for p, r in zip(padded, rows, strict=True)])),
        "memory": mem.as_dict(),
        "memory_measured_over": "the warm-up calls and one call with the longest request"
        + (" (and, compiled, one call per distinct request shape)"
           if env.job.get("variant") == "compile" else ""),
    }
    point["extras"] = mode.extras(env, timing, env.state)
    if hasattr(stream, "position"):
        # per timed request, the index of its prebuilt batch: two streams built with the same
        # seed hold the same examples at the same index (comparisons at the same lengths)
        point["extras"]["request_batches"] = [stream.position(r) for r in timing.requests]
    return point


# The training precision whose logits a served float32 model is held to: autocast in bf16/fp16
# moves logits by about that dtype's rounding, so the check uses that dtype's tolerance.
_PRECISION_DTYPE = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def training_checks(env: WorkerEnv, mode: Mode, call: Any) -> list[dict[str, Any]]:
    """Each served artifact's logits on its task's first `gate_examples` evaluation examples
    against the evaluation logits stored when its run was trained (`eval_logits`, in evaluation
    order): the gate's references above are loaded from the same saved artifact, so only this
    check catches an artifact that differs from the model that was evaluated.

    Artifacts without stored logits (a one-off bench of an adapter folder) get no check; a
    stored path that is missing or unreadable fails the check.
    """
    from peftlab.bench.requests import ordered_batches

    out = []
    for art in env.artifacts:
        path = art.get("eval_logits")
        if not path:
            continue
        name = f"{mode.name}[{art['name']}]" if len(env.artifacts) > 1 else mode.name
        ref_name = "evaluation logits stored at training"
        try:
            from safetensors.numpy import load_file

            stored = load_file(path)["logits"]
        except (OSError, KeyError, ValueError) as err:
            out.append({"name": name, "reference": ref_name, "kind": "logits", "passed": False,
                        "rel_diff": None, "why": f"the run's stored evaluation logits {path} "
                                                f"cannot be read ({type(err).__name__}: {err})"})
            continue
        enc = env.encoded(art["task"], env._length("data"), gate=True)
        adapter = art["name"] if mode.artifact_kind == "peft" else None
        requests = ordered_batches(enc, env.loader.tokenizer, batch_size=GATE_BATCH,
                                   device=env.device, adapter=adapter)
        served = env.logits(call, requests)
        dtype = _PRECISION_DTYPE.get(art.get("eval_precision") or "fp32", "float32")
        tol = max(env.tolerance, float(env.settings["gate_tolerance"][dtype]))
        if stored.shape[0] < served.shape[0] or stored.shape[1:] != served.shape[1:]:
            out.append({"name": name, "reference": ref_name, "kind": "logits", "passed": False,
                        "rel_diff": None, "why": f"the stored evaluation logits have shape "
                                                f"{list(stored.shape)}, the served ones "
                                                f"{list(served.shape)}"})
            continue
        check = compare_logits(name, served, ref_name, stored[: served.shape[0]], tolerance=tol)
        out.append({**check, "training_precision": art.get("eval_precision")})
    return out


def _storage(env: WorkerEnv, model: Any, files: list[Path]) -> dict[str, Any]:
    """Bytes on disk of the base weights and of each artifact, and of the model in memory."""
    base_files = env.loader.base_weight_files()
    per = {a["name"]: {"bytes": dir_bytes(Path(a["path"])),
                       "weight_bytes": sum(f.stat().st_size for f in artifact_weight_files(a)),
                       "kind": a["kind"]} for a in env.artifacts}
    return {
        "base_weight_bytes": sum(f.stat().st_size for f in base_files),
        "artifact_bytes": sum(v["bytes"] for v in per.values()),
        "artifact_weight_bytes": sum(v["weight_bytes"] for v in per.values()),
        "artifacts": per,
        "loaded_file_bytes": sum(f.stat().st_size for f in files),
        "served_param_bytes": param_bytes(model),
    }


# A block of the paired design (`run_paired_job`)
SEGMENT_WARMUP = 1  # untimed requests when a model's segment starts
CHECK_REQUESTS = 8  # requests whose logits the same-artifact check compares


def run_paired_job(job: dict[str, Any]) -> dict[str, Any]:
    """One block of the paired latency design (`bench.paired_job` says what it does and why):
    load every condition's model, check the ones serving one artifact agree, warm up, then the
    ABBA rounds; JSON-ready result with every timed latency per round and condition."""
    t_start = time.perf_counter()
    process = {"pid": os.getpid(), "parent_pid": os.getppid(),
               "isolation": job.get("isolation", "in-process")}
    gc.freeze()
    if job.get("isolation") in ("forkserver", "subprocess") and not job.get("log"):
        transformers.logging.set_verbosity_error()  # as `run_job`: no log, no reports
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


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def safe_run(job: dict[str, Any]) -> dict[str, Any]:
    """run_job, with every exception turned into a result the parent can record or re-raise.

    status "error": a user-fixable PeftlabError (the parent re-raises it); "failed": anything else
    (CUDA out of memory, a library error), recorded with its reason so the study goes on.
    """
    try:
        if job.get("kind") == "serving":  # serving under load (`peftlab.bench.serving_job`)
            from peftlab.bench.serving_job import run_serving_job

            return run_serving_job(job)
        if job.get("kind") == "paired":  # a block of the paired design (`bench.paired_job`)
            return run_paired_job(job)
        return run_job(job)
    except PeftlabError as err:
        return {"status": "error", "error_type": type(err).__name__, "message": str(err),
                "process": {"pid": os.getpid()}}
    except torch.cuda.OutOfMemoryError as err:
        return {"status": "failed", "failure_reason": f"CUDA out of memory: {str(err)[:300]}",
                "process": {"pid": os.getpid()}}
    except Exception as err:  # noqa: BLE001  (recorded with its traceback, never swallowed)
        return {"status": "failed", "failure_reason": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-6000:], "process": {"pid": os.getpid()}}


def child_main(job: dict[str, Any], result_path: str) -> None:
    """Entry point of a unit process: run the job, write the result JSON atomically.

    With `job["log"]` (the parent's `peftlab.logs.child_settings()`), everything the process
    writes (library warnings, load reports, stray prints) goes to the study's log.txt under the
    unit's label instead of the console.
    """
    if job.get("log"):
        from peftlab.logs import capture_child

        capture_child(job["log"])
    atomic_write_text(Path(result_path), dumps(safe_run(job)))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m peftlab.bench.worker JOB.json RESULT.json")
    child_main(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8")), sys.argv[2])
