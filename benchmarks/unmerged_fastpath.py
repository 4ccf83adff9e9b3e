"""python -m benchmarks.unmerged_fastpath [--threads 2] [--rounds 15] [--batches 1 8]
                                         [--no-compile] [--no-diagnose] [--data-dir DIR]

Unmerged LoRA served eagerly by PEFT vs the unmerged fast path (`peftlab.bench.fastpath`) vs the
merged model, on the quickstart's model (all-MiniLM-L6-v2, `resolve_model("minilm")`) with a LoRA
r=8 adapter on every linear layer (alpha 16, dropout 0.05 as in studies/quickstart.yaml) whose A,
B and head are random and non-zero (init_lora_weights=False), so the adapter path is really
computed; no training is needed for timing. The adapter is saved and loaded back through
`ModelLoader`, as the bench loads a study's runs. Requests: SST-2 evaluation sentences, tokenised
to at most 64 tokens, batched with dynamic padding (`bench.requests.build_batches`).

Variants (each checked against PEFT unmerged and merged with the bench's gate rule first):
    unmerged         PEFT PeftModel, eager (what the bench's `unmerged` mode serves)
    fast             `fastpath.fused_lora`: [W; A] in one GEMM + one addmm per layer, eager
    merged           merge_and_unload, eager (the reference of every ratio)
  with compilation (--no-compile skips them; compile time printed apart from latency):
    unmerged+compile torch.compile of the PEFT model (the bench's "+compile" variant)
    fast+compile     torch.compile of the fused model
    hotswap+compile  PEFT's prepare_model_for_compiled_hotswap + torch.compile
    merged+compile   torch.compile of the merged model (the fair reference for compiled paths)
  diagnostics (--no-diagnose skips them): where the eager overhead comes from
    unmerged-nodrop  PEFT with its eval-mode nn.Dropout modules replaced by nn.Identity
    naive-3op        a plain module computing x W^T + b + (x A^T)(s B)^T (3 matmuls, no PEFT)

Rounds interleave the variants (order reversed every other round, ABBA-style, so a drift over the
run hits all alike); in each round every variant serves the same requests through
`timing.time_requests` and its median latency is taken; a ratio is variant / merged within the
round, and the printed ratio is the median over rounds (with the spread of the per-round ratios).
These shared CPUs drift by +/-30%: only same-round ratios are meaningful.
Also printed: per forward at batch 1, the nn.Module calls and ATen ops each eager variant runs
(exact counts, independent of machine load), and the cost of an adapter swap (PEFT set_adapter vs
the fast path's in-place copy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the hub is never needed here: fail fast if asked
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"
MAX_LENGTH = 64


def make_adapter(loader, out: Path, seed: int) -> dict:
    """A LoRA r=8 all-linear adapter with random non-zero A, B and head, saved as a run saves."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(seed)
    base = loader.base(2, ["negative", "positive"], seed)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.05,
                     target_modules="all-linear", init_lora_weights=False,
                     modules_to_save=["classifier"])
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for p in model.base_model.model.classifier.modules_to_save["default"].parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    return {"name": f"lora{seed}", "path": str(out), "kind": "peft", "task": "sst2",
            "run_id": None, "method_type": "lora", "params": {"r": 8},
            "num_labels": 2, "label_names": ["negative", "positive"]}


class Naive3Op(torch.nn.Module):
    """Diagnostic: LoRA as 3 plain matmuls, no PEFT dispatch, no dropout module."""

    def __init__(self, lora_layer, name):
        super().__init__()
        base = lora_layer.get_base_layer()
        self.weight, self.bias = base.weight, base.bias
        self.a = lora_layer.lora_A[name].weight
        self.b = (lora_layer.lora_B[name].weight * lora_layer.scaling[name]).detach()

    def forward(self, x):
        f = torch.nn.functional
        return f.linear(x, self.weight, self.bias) + f.linear(f.linear(x, self.a), self.b)


def replace_lora(peft_model, make):
    from peft.tuners.lora import LoraLayer

    inner = peft_model.get_base_model()
    for path, m in list(inner.named_modules()):
        if isinstance(m, LoraLayer):
            parent, _, child = path.rpartition(".")
            setattr(inner.get_submodule(parent) if parent else inner, child, make(m))
    return peft_model


def no_dropout(peft_model):
    from peft.tuners.lora import LoraLayer

    for m in peft_model.modules():
        if isinstance(m, LoraLayer):
            for k in list(m.lora_dropout):
                m.lora_dropout[k] = torch.nn.Identity()
    return peft_model


def counts_per_forward(model, inputs) -> tuple[int, int]:
    """(nn.Module calls, ATen ops) of one forward pass."""
    from torch.profiler import ProfilerActivity, profile

    calls = [0]

    def hook(module, args):
        calls[0] += 1

    handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        with torch.inference_mode():
            model(**inputs)
            calls[0] = 0
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(**inputs)
    finally:
        handle.remove()
    ops = sum(1 for e in prof.events() if e.name.startswith("aten::"))
    return calls[0], ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--requests", type=int, default=48, help="requests per variant per round "
                    "at batch 1 (divided by the batch size at larger batches, at least 8)")
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-diagnose", action="store_true")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()

    from peftlab.artifacts import ModelLoader
    from peftlab.bench.fastpath import compiled_hotswap, fused_lora
    from peftlab.bench.flops import linear_flops
    from peftlab.bench.gate import compare_logits
    from peftlab.bench.requests import build_batches
    from peftlab.bench.timing import time_requests
    from peftlab.encode import encode_frame
    from peftlab.tasks import get_task, load_split

    loader = ModelLoader({"name": "minilm", "max_length": MAX_LENGTH}, "cpu")
    tok = loader.tokenizer
    df = load_split(get_task("sst2"), "eval", source="glue_dir", glue_dir=args.data_dir)
    enc = encode_frame(df.iloc[:512], tok, max_length=MAX_LENGTH)
    tmp = Path(tempfile.mkdtemp(prefix="peftlab-fastpath-"))
    art = make_adapter(loader, tmp / "a", seed=1)
    art_b = make_adapter(loader, tmp / "b", seed=2)

    models: dict[str, object] = {}
    compile_ms: dict[str, float] = {}
    unmerged = loader.adapters([art], 0)
    flops = linear_flops(unmerged)
    models["unmerged"] = unmerged
    models["fast"] = fused_lora(loader.adapters([art], 0))
    models["merged"] = loader.merged(art, 0)
    if not args.no_diagnose:
        models["unmerged-nodrop"] = no_dropout(loader.adapters([art], 0))
        models["naive-3op"] = replace_lora(loader.adapters([art], 0),
                                           lambda m: Naive3Op(m, art["name"]))
    gate = build_batches(enc, tok, batch_size=8, seq_len="data", device="cpu", seed=0)[:4]
    with torch.inference_mode():
        ref_u = np.concatenate([unmerged(**r.inputs).logits.numpy() for r in gate])
        ref_m = np.concatenate([models["merged"](**r.inputs).logits.numpy() for r in gate])
    batches = {b: build_batches(enc, tok, batch_size=b, seq_len="data", device="cpu",
                                seed=b) for b in args.batches}
    if not args.no_compile:
        torch._dynamo.config.cache_size_limit = 64
        builders = {
            "unmerged+compile": lambda: torch.compile(loader.adapters([art], 0)),
            "fast+compile": lambda: fused_lora(loader.adapters([art], 0), compile=True),
            "hotswap+compile": lambda: compiled_hotswap(loader.adapters([art, art_b], 0)),
            "merged+compile": lambda: torch.compile(loader.merged(art, 0)),
        }
        for name, build in builders.items():
            model = build()
            shapes = {}
            for bs in batches.values():  # every distinct shape compiled before timing
                for r in bs:
                    shapes.setdefault(tuple(r.inputs["input_ids"].shape), r.inputs)
            for r in gate:
                shapes.setdefault(tuple(r.inputs["input_ids"].shape), r.inputs)
            t0 = time.perf_counter()
            with torch.inference_mode():
                for inputs in shapes.values():
                    model(**inputs)
            compile_ms[name] = (time.perf_counter() - t0) * 1e3
            models[name] = model
    print(f"all-MiniLM-L6-v2, LoRA r=8 all-linear ({flops['adapted_matrices']} matrices, adapter "
          f"FLOPs {flops['adapter_share']:.2%} of the linear layers), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("\ngate (bench rule, tolerance 1e-5) on 32 SST-2 examples:")
    with torch.inference_mode():
        for name, model in models.items():
            out = np.concatenate([model(**r.inputs).logits.float().numpy() for r in gate])
            cu = compare_logits(name, out, "unmerged", ref_u, tolerance=1e-5)
            cm = compare_logits(name, out, "merged", ref_m, tolerance=1e-5)
            print(f"  {name:17s} vs unmerged rel {cu['rel_diff']:.1e} vs merged rel "
                  f"{cm['rel_diff']:.1e}  {'pass' if cu['passed'] and cm['passed'] else 'FAIL'}")
            if not (cu["passed"] and cm["passed"]):
                raise SystemExit(f"{name} does not give the unmerged/merged logits")
    if compile_ms:
        print("\ncompile time (first call of every distinct request shape, not in any latency):")
        for name, ms in compile_ms.items():
            print(f"  {name:17s} {ms / 1e3:7.1f} s")

    if not args.no_diagnose:
        x = batches[min(args.batches)][0].inputs
        print(f"\nper forward at batch {min(args.batches)} ({x['input_ids'].shape[1]} tokens): "
              "nn.Module calls, ATen ops")
        for name in ("merged", "unmerged", "unmerged-nodrop", "naive-3op", "fast"):
            calls, ops = counts_per_forward(models[name], x)
            print(f"  {name:17s} {calls:5d} module calls {ops:6d} ATen ops")

    print(f"\n{args.rounds} interleaved rounds; p50 latency per variant (median over rounds) and "
          "ratio to merged in the same round (median [min-max] over rounds)")
    names = list(models)
    for b, reqs in batches.items():
        n = max(8, args.requests // b)
        p50 = {m: [] for m in names}
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else names[::-1]
            for name in order:
                stream = iter(reqs[i % len(reqs)] for i in range(10**9))
                model = models[name]
                with torch.inference_mode():
                    t = time_requests(lambda r, m=model: m(**r.inputs), lambda s=stream: next(s),
                                      warmup=2, min_iterations=n, min_seconds=0.0,
                                      max_seconds=120.0)
                p50[name].append(float(np.median(t.latencies_ns)) / 1e6)
            print(f"  (batch {b}: round {rnd + 1}/{args.rounds} done)", file=sys.stderr,
                  flush=True)
        print(f"\nbatch {b}:")
        for name in names:
            ratios = [a / m for a, m in zip(p50[name], p50["merged"], strict=True)]
            print(f"  {name:17s} p50 {statistics.median(p50[name]):7.3f} ms   /merged "
                  f"{statistics.median(ratios):.3f} [{min(ratios):.3f}-{max(ratios):.3f}]")
        summary = {m: statistics.median([a / r for a, r in zip(p50[m], p50["merged"],
                                                                strict=True)])
                   for m in names}
        line = (f"  => batch {b}: eager unmerged/merged {summary['unmerged']:.3f}, "
                f"fast unmerged/merged {summary['fast']:.3f}")
        if "fast+compile" in summary:
            mc = [a / r for a, r in zip(p50["fast+compile"], p50["merged+compile"], strict=True)]
            hc = [a / r for a, r in zip(p50["hotswap+compile"], p50["merged+compile"],
                                        strict=True)]
            line += (f"; compiled: fast+compile/merged+compile {statistics.median(mc):.3f}, "
                     f"hotswap+compile/merged+compile {statistics.median(hc):.3f}, "
                     f"fast+compile/merged (eager) {summary['fast+compile']:.3f}")
        print(line)

    # adapter swap: PEFT set_adapter on a two-adapter model vs the fast path's in-place copy
    peft2 = loader.adapters([art, art_b], 0)
    fast2 = fused_lora(loader.adapters([art, art_b], 0))
    swap = {"PEFT set_adapter": [], "fast set_adapter": []}
    names2 = [art["name"], art_b["name"]]
    for i in range(40):
        for label, m in (("PEFT set_adapter", peft2), ("fast set_adapter", fast2)):
            t0 = time.perf_counter_ns()
            m.set_adapter(names2[(i + 1) % 2], inference_mode=True)
            swap[label].append((time.perf_counter_ns() - t0) / 1e6)
    print("\nadapter swap (median of 40): " + ", ".join(
        f"{k} {statistics.median(v):.3f} ms" for k, v in swap.items()))


if __name__ == "__main__":
    main()
