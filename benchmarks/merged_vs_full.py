"""python -m benchmarks.merged_vs_full [--threads 2] [--rounds 12] [--requests 24]
                                     [--processes 6] [--data-dir DIR]

Why does the bench measure a merged LoRA adapter slower than the fully fine-tuned model, when
after `merge_and_unload` both are the same architecture with matrices of the same shapes?

On the quickstart's model (all-MiniLM-L6-v2 with the sentence-embedding head, `minilm`), with a
"full" artifact saved as a full run saves it (`save_pretrained`) and a LoRA r=8 all-linear adapter
with random non-zero A, B and head (so the merge really changes every matrix), loaded through
`ModelLoader` exactly as the bench loads them:

1. Structure, side by side: the class, the module tree (any PEFT layer, `base_layer` or adapter
   attribute left after merging), hooks, training flag, attention implementation, parameter
   dtypes, contiguity, strides, `requires_grad`, and where each parameter's memory lives: the
   64-byte alignment of its address (what an AVX-512 load wants) and whether it is a view into a
   memory-mapped safetensors file or memory of the process's own (/proc/self/maps).
2. Latency in one process: every variant below serves the same batch-1 requests (SST-2
   evaluation sentences, the data's own lengths, as the primary comparison) in rounds, the order
   mirrored from round to round; per round the median latency of each variant, and its ratio to
   `full` in the same round. Printed: medians over rounds and the ratio's [min-max].
       full             `ModelLoader.full` (what the bench's `full` mode serves)
       merged           `ModelLoader.merged` (what the bench's `merged` mode serves)
       merged-reloaded  the merged model saved and loaded back like `full`
       full-owned       `full` with every parameter copied into memory of its own
       merged-owned     `merged` likewise (`peftlab.bench.loading.own_parameters`)
3. Across processes, as the bench measured (`--processes`, 0 skips): the bench's own worker runs
   the `full` and `merged` units alternately, each in a fresh forked process with its gate, and
   the batch-1 median of each is paired with its neighbour; then the bench's paired design
   (`peftlab.bench.paired_job`), both models in one process per block, with the weights copied
   into memory of the process's own (as the bench serves them) and, in alternate blocks, left
   where loading put them.

The machine is shared and noisy: only ratios within a round (or a neighbouring pair of
processes) are read, and medians over them are quoted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never needed here: fail fast if asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
MODEL = {"name": "minilm", "max_length": 64, "head": "sentence-embedding"}
LABELS = ["negative", "positive"]


def make_artifacts(loader, out: Path) -> tuple[dict, dict]:
    """(full artifact, LoRA artifact) saved under `out` as the finetune stage saves runs."""
    from peft import LoraConfig, TaskType

    from peftlab.methods.base import wrap_peft
    from peftlab.models import head_module_names

    torch.manual_seed(0)
    full = loader.base(2, LABELS, 0)
    with torch.no_grad():  # a "trained" model: every weight moved a little
        for p in full.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    full.save_pretrained(out / "full", safe_serialization=True)
    base = loader.base(2, LABELS, 0)
    heads = head_module_names(base)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                     target_modules="all-linear", init_lora_weights=False)
    peft_model = wrap_peft(base, cfg, heads)
    peft_model.save_pretrained(out / "lora", safe_serialization=True)
    common = {"task": "sst2", "run_id": None, "num_labels": 2, "label_names": LABELS}
    return ({"name": "full", "path": str(out / "full"), "kind": "full", "method_type": "full",
             **common},
            {"name": "lora", "path": str(out / "lora"), "kind": "peft", "method_type": "lora",
             "params": {"r": 8}, **common})


def mapped_files() -> list[tuple[int, int, str]]:
    """(start, end, path) of every file mapping of this process (/proc/self/maps)."""
    out = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/"):
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi, parts[5]))
    return out


def structure(model) -> dict:
    """What could make two models of one architecture run at different speeds."""
    maps = mapped_files()
    params = list(model.named_parameters())

    def backing(ptr: int) -> str:
        hit = next((p for lo, hi, p in maps if lo <= ptr < hi), None)
        return "file " + Path(hit).name if hit else "anonymous"

    peft_left = [n for n, m in model.named_modules()
                 if type(m).__module__.split(".")[0] == "peft" or hasattr(m, "base_layer")
                 or any(k.startswith("lora_") for k in vars(m))]
    return {
        "class": type(model).__name__,
        "modules": len(list(model.modules())),
        "peft leftovers": len(peft_left),
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "training": any(m.training for m in model.modules()),
        "attention": getattr(model.config, "_attn_implementation", None),
        "use_cache": getattr(model.config, "use_cache", None),
        "dtypes": sorted({str(p.dtype).replace("torch.", "") for _, p in params}),
        "non-contiguous": sum(not p.is_contiguous() for _, p in params),
        "transposed": sum(p.dim() == 2 and p.stride() != (p.shape[1], 1) for _, p in params),
        "requires_grad": sum(p.requires_grad for _, p in params),
        "64B-aligned": f"{sum(p.data_ptr() % 64 == 0 for _, p in params)}/{len(params)}",
        "address mod 64": sorted({p.data_ptr() % 64 for _, p in params}),
        "memory": sorted({backing(p.data_ptr()) for _, p in params}),
    }


def time_rounds(models: dict, requests: list, rounds: int, n: int, clock: str
                ) -> dict[str, list[float]]:
    """Per variant, its median latency (ms) in each round; every variant serves the same n
    requests within a round, the variants' order mirrored from round to round.

    clock "wall": `time.perf_counter_ns` (what the bench times); "cpu": the calling thread's CPU
    time (`time.thread_time_ns`, with one torch thread all the work runs there), which other
    processes competing for the cores do not inflate."""
    import time

    read = time.perf_counter_ns if clock == "wall" else time.thread_time_ns
    names = list(models)
    p50 = {m: [] for m in names}
    for rnd in range(rounds):
        chosen = [requests[(rnd * n + i) % len(requests)] for i in range(n)]
        for name in names if rnd % 2 == 0 else names[::-1]:
            model = models[name]
            lat = []
            with torch.inference_mode():
                model(**chosen[0].inputs)  # one untimed call: this model's weights in cache
                for r in chosen:
                    t0 = read()
                    model(**r.inputs)
                    lat.append(read() - t0)
            p50[name].append(float(np.median(lat)) / 1e6)
        print(f"  (round {rnd + 1}/{rounds})", file=sys.stderr, flush=True)
    return p50


def print_ratios(p50: dict[str, list[float]], ref: str) -> None:
    for name, vals in p50.items():
        ratios = [a / r for a, r in zip(vals, p50[ref], strict=True)]
        print(f"  {name:16s} p50 {statistics.median(vals):7.3f} ms   /{ref} "
              f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")


def across_processes(art_full: dict, art_lora: dict, data_dir: Path, threads: int,
                     processes: int) -> None:
    """The bench's own units, full and merged alternately, each in a fresh forked process."""
    from peftlab.bench.runner import run_isolated
    from peftlab.bench.units import Unit, make_job
    from peftlab.data import task_info
    from peftlab.spec import BenchSpec
    from peftlab.tasks import get_task, load_split

    bench = BenchSpec(modes=["full", "merged"], batch_sizes=[1], seq_lengths=["data"],
                      warmup=2, min_iterations=24, min_seconds=0.0, threads=threads,
                      load_repeats=1, gate_examples=8)
    from peftlab.bench.units import bench_settings

    settings = bench_settings(bench)
    task = get_task("sst2")
    tasks = {"sst2": task_info(task, load_split(task, "eval", source="glue_dir",
                                                 glue_dir=data_dir).iloc[:200])}
    p50 = {"full": [], "merged": []}
    for i in range(processes):
        order = ["full", "merged"] if i % 2 == 0 else ["merged", "full"]
        for mode in order:
            art = art_full if mode == "full" else art_lora
            unit = Unit(mode=mode, name=art["name"], artifacts=[art], tasks_served=["sst2"])
            job = make_job(unit, model=MODEL, device="cpu", settings=settings, tasks=tasks,
                           points=[(1, "data")])
            result = run_isolated(job, isolation="forkserver", timeout_s=600)
            if result.get("status") != "done":
                raise SystemExit(f"{mode}: {result.get('failure_reason')}")
            p50[mode].append(result["points"][0]["latency_ms"]["p50"])
        print(f"  (process pair {i + 1}/{processes})", file=sys.stderr, flush=True)
    print(f"\nacross processes: the bench's units, one process each, {processes} pairs "
          "(order alternated)")
    print_ratios({"merged": p50["merged"], "full": p50["full"]}, "full")
    paired_blocks(art_full, art_lora, settings, tasks, processes)


def paired_blocks(art_full: dict, art_lora: dict, settings: dict, tasks: dict,
                  blocks: int) -> None:
    """The bench's paired design on full vs merged: both models in one fresh process per
    block, ABBA rounds; with the weights in memory of the process's own (as the bench serves
    them) and, alternately, left where loading put them."""
    from peftlab.bench.paired import Condition, Group, PairedComparison
    from peftlab.bench.paired_job import paired_job, paired_timeout
    from peftlab.bench.runner import run_isolated
    from peftlab.latency_design import analyse_pairs, log_latency

    group = Group("sst2/lora", "sst2",
                  [Condition("full/full", "full", "full", {None: art_full}),
                   Condition("lora/merged", "merged", "lora", {None: art_lora})],
                  [PairedComparison("merged_vs_full", "lora/merged", "full/full", True)],
                  seeds=[None])
    obs: dict[bool, list[list[float]]] = {True: [], False: []}
    for i in range(2 * blocks):
        own = i % 2 == 0
        job = paired_job(group, block=i, rounds=8, model=MODEL, device="cpu",
                         settings=settings, tasks=tasks, batch_size=1, seq_len="data",
                         requests=8)
        job["own_memory"] = own
        result = run_isolated(job, isolation="forkserver", timeout_s=paired_timeout(job))
        if result.get("status") != "done":
            raise SystemExit(f"paired block: {result.get('failure_reason')}")
        obs[own].append([log_latency(r["ns"]["lora/merged"]) - log_latency(r["ns"]["full/full"])
                         for r in result["rounds"]])
        print(f"  (paired block {i + 1}/{2 * blocks})", file=sys.stderr, flush=True)
    print(f"\npaired design (both models in one process, 8 ABBA rounds x 8 requests per block, "
          f"{blocks} blocks each): merged / full")
    for own in (True, False):
        res = analyse_pairs(obs[own])
        where = "weights in the process's own memory" if own else "weights where loading put them"
        print(f"  {where:38s} {res['ratio']:.3f} [{res['ci_low']:.3f}-{res['ci_high']:.3f}] "
              f"(block medians {', '.join(f'{np.exp(np.mean(b)):.3f}' for b in obs[own])})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12, help="in-process rounds (0: skip)")
    ap.add_argument("--requests", type=int, default=24, help="batch-1 requests per variant per "
                    "round")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: thread CPU time (needs --threads 1), robust to a loaded machine")
    ap.add_argument("--processes", type=int, default=6, help="pairs of bench unit processes "
                    "(0: skip)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("PEFTLAB_DATA_DIR",
                                                                         DEFAULT_DATA)))
    args = ap.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu needs --threads 1 (other threads' CPU time is not counted)")
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()

    from peftlab.artifacts import ModelLoader
    from peftlab.bench.gate import compare_logits
    from peftlab.bench.loading import own_parameters
    from peftlab.bench.requests import build_batches
    from peftlab.encode import encode_frame
    from peftlab.models import saved_classifier_class
    from peftlab.tasks import get_task, load_split

    loader = ModelLoader(MODEL, "cpu")
    tok = loader.tokenizer
    df = load_split(get_task("sst2"), "eval", source="glue_dir", glue_dir=args.data_dir)
    enc = encode_frame(df.iloc[:256], tok, max_length=MODEL["max_length"])
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-merged-vs-full-"))
    art_full, art_lora = make_artifacts(loader, tmp)

    models = {"full": loader.full(art_full), "merged": loader.merged(art_lora, 0)}
    models["merged"].save_pretrained(tmp / "merged", safe_serialization=True)
    models["merged-reloaded"] = saved_classifier_class(models["merged"].config).from_pretrained(
        tmp / "merged", use_safetensors=True).eval()
    models["full-owned"] = own_parameters(loader.full(art_full))
    models["merged-owned"] = own_parameters(loader.merged(art_lora, 0))

    requests = build_batches(enc, tok, batch_size=1, seq_len="data", device="cpu", seed=1)
    print(f"all-MiniLM-L6-v2 (sentence-embedding head), LoRA r=8 all-linear merged; torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}")
    print("\nstructure:")
    rows = {name: structure(m) for name, m in models.items()}
    for key in next(iter(rows.values())):
        print(f"  {key:15s} " + "  ".join(f"{name}={rows[name][key]}" for name in rows))
    gate = requests[:16]
    with torch.inference_mode():
        ref = np.concatenate([models["merged"](**r.inputs).logits.numpy() for r in gate])
        for name in ("merged-reloaded", "merged-owned"):
            out = np.concatenate([models[name](**r.inputs).logits.numpy() for r in gate])
            check = compare_logits(name, out, "merged", ref, tolerance=1e-5)
            if not check["passed"]:
                raise SystemExit(f"{name} does not give merged's logits: {check}")

    if args.rounds:
        in_process(models, requests, args)
    if args.processes:
        across_processes(art_full, art_lora, args.data_dir, args.threads, args.processes)


def in_process(models: dict, requests: list, args: argparse.Namespace) -> None:
    print(f"\none process, {args.clock} clock, {args.rounds} rounds x {args.requests} batch-1 "
          "requests per variant (order mirrored each round): median p50 and ratio to full in "
          "the same round (median [min-max])")
    print_ratios(time_rounds(models, requests, args.rounds, args.requests, args.clock), "full")


if __name__ == "__main__":
    main()
