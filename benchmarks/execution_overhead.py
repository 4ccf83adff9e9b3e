"""Wall time of the same tiny study on the local executor and on Ray, side by side.

    python benchmarks/execution_overhead.py --data-dir ../shared/data/glue [--repeats 3] [--cpus 2]

Runs the data, finetune and represent stages of the tiny study (`peftlab.testing.tiny_spec`:
SST-2 and RTE x full and LoRA x 3 seeds = 12 training runs, then 14 extractions) in fresh study
directories, alternating local and Ray (A, B, A, B, ...: timing on shared CPUs drifts within a
run), on one Ray runtime started once (`ray.init(num_cpus=--cpus)`, its start-up time printed
apart). Prints each backend's median wall time, the Ray/local ratio, and per unit the median time
from dispatch to record on the driver against the time the unit itself measured, whose
difference is the executor's cost per unit locally; on Ray it also holds the wait for a free
CPU (every unit is submitted at once). The first Ray study pays for starting the workers (each
imports torch and transformers); later ones reuse them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from peftlab.pipeline import load_study, run_stages  # noqa: E402
from peftlab.records import RunRecord, read  # noqa: E402
from peftlab.store import Store  # noqa: E402
from peftlab.testing import (  # noqa: E402
    build_tiny_llama,  # noqa: E402
    tiny_spec,
    write_spec,
)


def one(tmp: Path, model: Path, data_dir: str, backend: str) -> dict[str, float]:
    spec = tiny_spec(tmp / "study", model_dir=model, execution={"backend": backend})
    study = load_study(write_spec(tmp / "spec.yaml", spec), data_dir=data_dir)
    t0 = time.perf_counter()
    run_stages(study, ["data", "finetune", "represent"])
    wall = time.perf_counter() - t0
    store = Store(study.output_dir, create=False)
    try:
        runs = read(store, RunRecord)
        reps = store.records("represent")
    finally:
        store.close()
    assert len(runs) == 12 and all(r.status == "done" for r in runs)
    return {
        "wall_s": wall,
        "train_unit_s": statistics.median(r.provenance["execution"]["unit_s"] for r in runs),
        "train_wall_s": statistics.median(r.train_wall_s + r.eval_time_s for r in runs),
        "extract_unit_s": statistics.median(r["provenance"]["execution"]["unit_s"]
                                            for r in reps),
        "extract_s": statistics.median(r["extract_time_s"] for r in reps),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA_DIR",
                                                         "../shared/data/glue"))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()
    import ray

    torch.set_num_threads(1)  # Ray gives each 1-CPU unit one thread: the same for both
    with tempfile.TemporaryDirectory(prefix="peftlab-exec-") as td:
        root = Path(td)
        model = build_tiny_llama(root / "model")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False)
        start = time.perf_counter() - t0
        results: dict[str, list[dict[str, float]]] = {"local": [], "ray": []}
        try:
            for i in range(args.repeats):
                for backend in ("local", "ray"):
                    results[backend].append(one(root / f"{backend}-{i}", model, args.data_dir,
                                                backend))
        finally:
            ray.shutdown()
    local = [r["wall_s"] for r in results["local"]]
    cold, warm = results["ray"][0]["wall_s"], [r["wall_s"] for r in results["ray"][1:]]
    print(f"ray.init(num_cpus={args.cpus}): {start:.1f} s (once, not in the walls below)")
    print("local walls: " + ", ".join(f"{w:.1f}" for w in local) + " s")
    print(f"ray walls:   {cold:.1f} s (first study: workers start and import torch), "
          + ", ".join(f"{w:.1f}" for w in warm) + " s (workers reused)")
    print(f"ray / local: first {cold / statistics.median(local):.2f}"
          + (f", later {statistics.median(warm) / statistics.median(local):.2f} (medians)"
             if warm else ""))
    for b in ("local", "ray"):
        m = {k: statistics.median(r[k] for r in results[b]) for k in results[b][0]}
        # on Ray every unit is submitted at once: its dispatch-to-return time includes the time
        # it waited for a free CPU, so it is a latency, not a cost per unit
        print(f"{b:5s} per training unit: {m['train_wall_s']:.2f} s train + eval inside, "
              f"{m['train_unit_s']:.2f} s from dispatch to return; per extraction "
              f"{m['extract_s']:.2f} s inside, {m['extract_unit_s']:.2f} s dispatch to return")

if __name__ == "__main__":
    main()
