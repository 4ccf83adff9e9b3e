"""The serving benchmark as one bench job: every configuration and popularity pattern, under load.

    job = serving_job(model=model_spec, device="cpu", serving=spec.bench.serving, lora=[...],
                      full=[...], tasks=task_infos, seed=0, threads=2)
    result = run_isolated(job, isolation="forkserver", timeout_s=serving_timeout(job))
    rows = serving_rows(result)       # one JSON-ready row per (config, pattern, rate)

The job runs in a bench worker process (`worker.safe_run` dispatches on job["kind"]): it builds
every configuration's backend once (`serving_configs.serving_backends`: k merged models, one base
with k adapters twice (mixed batches / switching), k fully fine-tuned models), checks each against
the evaluation logits stored when its runs were trained (`serving_gate`: a configuration that
fails is not measured), turns each task's
evaluation examples into a workload (one workload per configuration, so each sees the same
requests in the same order), and for each popularity pattern runs `serving.serving_sweep`: the
configurations interleaved at each rising rate, each stopping at its first unsustained rate.
All configurations live in one process, so they are compared on memory by the bytes of the
weights each holds (`served_weight_bytes`), not by the process's peak.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from peftlab.bench.serving_configs import SERVING_CONFIGS, artifacts_for, serving_backends

SERVING_SETTINGS = ("configs", "patterns", "rates", "max_requests", "max_seconds",
                    "max_batch_size", "max_wait_ms", "zipf_exponent")


def serving_job(*, model: dict[str, Any], device: str, serving: Any, lora: list[dict[str, Any]],
                full: list[dict[str, Any]], tasks: dict[str, dict[str, Any]], seed: int,
                threads: int | None, gate_tolerance: dict[str, float],
                gate_examples: int) -> dict[str, Any]:
    """The JSON job (see the module docstring). lora / full: one artifact per task, same task
    order; serving: a `spec.ServingSpec`; gate_tolerance / gate_examples: the bench's gate
    settings (`serving_gate`)."""
    d = serving.model_dump(mode="json") if hasattr(serving, "model_dump") else dict(serving)
    # a configuration of fully fine-tuned models is left out when the study has none
    configs = [c for c in d["configs"] if SERVING_CONFIGS.get(c).serves != "full" or full]
    serves_full = any(SERVING_CONFIGS.get(c).serves == "full" for c in configs)
    return {"kind": "serving", "model": model, "device": device,
            "settings": {**{k: d[k] for k in SERVING_SETTINGS}, "configs": configs,
                         "seed": int(seed), "threads": threads},
            "lora": lora, "full": full if serves_full else [],
            "gate_tolerance": gate_tolerance, "gate_examples": int(gate_examples),
            "tasks": {t: tasks[t] for t in dict.fromkeys(a["task"] for a in lora)}}


def serving_timeout(job: dict[str, Any]) -> float:
    """Seconds the job may take: its load runs' bounds (window + drain + one batch) plus loads."""
    s = job["settings"]
    drain = max(1.0, 0.02 * float(s["max_wait_ms"]))
    runs = len(s["configs"]) * len(s["patterns"]) * len(s["rates"])
    return 600.0 + runs * (float(s["max_seconds"]) + drain + 10.0)


def run_serving_job(job: dict[str, Any]) -> dict[str, Any]:
    """Build the backends, run one interleaved sweep per pattern; JSON-ready result."""
    import pandas as pd
    import torch

    from peftlab.artifacts import ModelLoader
    from peftlab.bench.load import Workload, workload_from_encoded
    from peftlab.bench.serving import serving_sweep
    from peftlab.encode import encode_frame

    s = job["settings"]
    if s.get("threads"):
        torch.set_num_threads(int(s["threads"]))
    torch.manual_seed(int(s["seed"]))
    loader = ModelLoader(job["model"], job["device"])
    max_length = int(job["model"].get("max_length", 128))
    template = job["model"].get("pair_template", "{a}\n{b}")
    encoded = {}
    for task, info in job["tasks"].items():
        df = pd.DataFrame(info["rows"])
        encoded[task] = encode_frame(df, loader.tokenizer, max_length=max_length,
                                     pair_template=template, label_dtype=info["label_dtype"])
    per_task = workload_from_encoded(encoded).examples
    backends = serving_backends(loader, job["lora"], job["full"] or None, seed=int(s["seed"]),
                                configs=tuple(s["configs"]))
    gates = {c: serving_gate(b, artifacts_for(c, job["lora"], job["full"]), encoded, loader,
                             job) for c, b in backends.items()}
    failed = {c: g for c, g in gates.items() if not g["passed"]}
    backends = {c: b for c, b in backends.items() if c not in failed}
    if not backends:
        return {"status": "failed", "gates": gates,
                "failure_reason": "serving gate failed for every configuration: "
                                  + "; ".join(f for g in gates.values() for f in g["failures"])}
    tasks_of = {a["name"]: a["task"] for a in job["lora"] + job["full"]}
    sweeps = {}
    for pattern in s["patterns"]:
        workloads = {}
        for config in backends:
            ns = [a["name"] for a in artifacts_for(config, job["lora"], job["full"])]
            workloads[config] = Workload(names=ns, examples={n: per_task[tasks_of[n]]
                                                             for n in ns})
        sweeps[pattern] = serving_sweep(
            backends, workloads, loader.tokenizer, rates=list(s["rates"]), pattern=pattern,
            max_batch_size=int(s["max_batch_size"]), max_wait_ms=float(s["max_wait_ms"]),
            max_requests=int(s["max_requests"]), max_seconds=float(s["max_seconds"]),
            seed=int(s["seed"]), zipf_exponent=float(s["zipf_exponent"]),
            device=job["device"])
    return {"status": "done", "sweeps": sweeps, "gates": gates,
            "backends": {c: {**b.describe(), "served_weight_bytes": b.weight_bytes()}
                         for c, b in backends.items()},
            "tasks": [a["task"] for a in job["lora"]],
            "environment": {"device": job["device"], "torch_threads": torch.get_num_threads(),
                            "dtype": loader.dtype}}


def serving_gate(backend: Any, artifacts: list[dict[str, Any]], encoded: dict[str, Any],
                 loader: Any, job: dict[str, Any]) -> dict[str, Any]:
    """Before any load: the backend's logits on each task's first `gate_examples` evaluation
    examples (in evaluation order, through `backend.forward` as the server calls it) against the
    evaluation logits stored when the run was trained (`bench.gate` rule). A configuration that
    fails is not measured. Artifacts without stored logits are not checked."""
    import torch
    from safetensors.numpy import load_file

    from peftlab.bench.gate import compare_logits, gate_result
    from peftlab.bench.requests import ordered_batches

    tol = float(job["gate_tolerance"][loader.dtype])
    checks = []
    for art in artifacts:
        if not art.get("eval_logits"):
            continue
        name = f"{backend.name}[{art['name']}]"
        try:
            stored = load_file(art["eval_logits"])["logits"]
        except (OSError, KeyError, ValueError) as err:
            checks.append({"name": name, "reference": "evaluation logits stored at training",
                           "kind": "logits", "passed": False, "rel_diff": None,
                           "why": f"{art['eval_logits']} cannot be read: {err}"})
            continue
        enc = encoded[art["task"]]
        enc = enc.select(range(min(int(job["gate_examples"]), len(enc))))
        with torch.inference_mode():
            served = np.concatenate([
                backend.forward(r.inputs, [art["name"]] * r.rows).float().cpu().numpy()
                for r in ordered_batches(enc, loader.tokenizer, batch_size=8,
                                         device=job["device"])])
        ref = stored[: served.shape[0]]
        if ref.shape != served.shape:
            checks.append({"name": name, "reference": "evaluation logits stored at training",
                           "kind": "logits", "passed": False, "rel_diff": None,
                           "why": f"stored logits {list(stored.shape)}, served "
                                  f"{list(served.shape)}"})
            continue
        checks.append(compare_logits(name, served, "evaluation logits stored at training", ref,
                                     tolerance=tol))
    return gate_result(checks, dtype=loader.dtype, tolerance=tol) if checks else {
        "passed": True, "checks": [], "failures": [], "note": "no stored logits to check"}


def serving_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per load run: config, pattern, offered_rate, k, adapters, run_index, sustained,
    the sweep's saturation rate/throughput, and the run's row (answers never included)."""
    out = []
    for pattern, sweep in (result.get("sweeps") or {}).items():
        for config, summary in sweep.items():
            if config == "order":
                continue
            for row in summary["rows"]:
                out.append({"config": config, "pattern": pattern,
                            "offered_rate": float(row["offered_rate"]), "k": int(row["k"]),
                            "adapters": list(row["adapters"]),
                            "run_index": int(row["run_index"]),
                            "sustained": bool(row["sustained"]),
                            "saturation_rate": summary["saturation_rate"],
                            "saturation_throughput": summary["saturation_throughput"],
                            "gate": (result.get("gates") or {}).get(config),
                            "row": {k: v for k, v in row.items() if k != "answers"}})
    return out
