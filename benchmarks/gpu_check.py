"""python -m benchmarks.gpu_check [--device auto|cuda|cpu] [--small] [--data-dir DIR] [--out PATH]
                                 [--budget-s S] [--steps N] [--engine]

GPU readiness in one run (issue 15): every CUDA path of peftlab exercised once on a model with
TinyLlama-1.1B's architecture, and the reference study's wall time estimated from what it measured.

1. Builds a LlamaForCausalLM from a config (22 layers, hidden 2048, 32 heads, 4 KV heads,
   intermediate 5632, vocabulary 32000; random weights, bf16; no hub), saved to a temporary folder
   with a tokenizer built here: a byte-level BPE trained on the GLUE training texts of SST-2, MRPC
   and RTE up to 32000 entries (`peftlab.testing.build_tiny_tokenizer(lines=...)`), no pad token
   (like TinyLlama's; peftlab sets one). Why not the tiny test tokenizer padded to 32000: its 512
   entries cut a word into ~3 tokens, so sequences, and with them every time measured, would be
   about twice too long. The BPE gives 1.37 tokens per word on RTE (TinyLlama's SentencePiece,
   trained on general text, cuts English a little finer); the JSON records tokens per example.
2. Writes a study spec derived from the shipped `tinyllama-glue` spec (its batch 8, accumulation 2,
   bf16, learning rates, LoRA r=8 on q_proj/v_proj), with that folder as model, `max_steps` 20 and
   seeded subsamples of the real GLUE files (real lengths), plus a `qlora` method on CUDA.
3. Trains full, LoRA and QLoRA on SST-2 (and LoRA on MRPC and RTE, the adapters of multi-3 and
   mixed-3) through the finetune stage's own `train_run`: step time, peak allocated and reserved
   CUDA memory, trainable parameters. QLoRA's base, loaded as the method loads it, is shown to be
   4-bit: its Params4bit count and weight bytes against the bf16 base.
4. Extracts representations of 500 SST-2 probes with `peftlab.extraction.extract`, each
   model loaded as the represent stage loads it (base, full, LoRA): seconds per example.
5. Benchmarks base, full, unmerged, merged, multi-3 and mixed-3 at batch 1, 8 and 32 through the
   bench planner and runner (`peftlab.bench.plan.run_units`) with the study's isolation (a process
   per unit, forked from the bench server) and CUDA event timing, after the correctness gate
   (QLoRA is not benchmarked: its base re-quantises at every load); then
   the unmerged fast path (`peftlab.bench.fastpath.fused_lora`) against PEFT unmerged and merged
   in this process, interleaved.
6. Records the relative logit differences unmerged vs merged vs reloaded (the gate's measure) in
   bf16, fp16 and fp32 and prints the gate tolerances they imply next to the current ones
   (`BenchSpec.gate_tolerance`, see `peftlab/bench/gate.py`).
7. Estimates the wall time of `tinyllama-glue` on this device: planned optimizer steps (the spec's
   resolved plan) x measured step time, plus evaluation, extraction and bench from measured costs.

Prints one table; writes one JSON (`$OUT/gpu_check.json` when OUT is set, else --out, default
./gpu_check.json) after every section, so a run stopped by its time limit still leaves what it
measured. Sections past --budget-s are skipped with the reason.

`--small` (with `--device cpu`): a 2-layer config instead of TinyLlama's, QLoRA skipped (bitsandbytes'
4-bit layers need CUDA), fp32, 5 steps, fewer probes and shorter timing: about 30 s of CPU time
(measured: 29-33 s user time; 1.5-2 min of wall time on this loaded 2-core machine);
tests/test_gpu_check.py runs it.

Before anything heavy, the script imports what it needs and exits (code 2) within seconds naming
every missing package. On the GPU host (no network), carry the missing wheels and the GLUE files
first: here, `bash benchmarks/gpu_wheels.sh` fills `.gpu/` (wheels + GLUE train/dev files, 50 MiB).
Then the one call of the `run` device tool (carry [".gpu"], timeout_s 420); it installs the
wheels (~15 s), runs the gpu tests (<= 60 s) and this script (<= 270 s, sections past 210 s
skipped), then prints the table from the JSON even if the script was stopped (<= 6 minutes):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .gpu/wheels/*.whl || exit 3; export PYTHONPATH=$PWD:/tmp/site \
      PEFTLAB_DATA_DIR=$PWD/.gpu/glue HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1; \
    timeout 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu.py \
      > $OUT/pytest_gpu.txt 2>&1; echo "pytest rc=$?"; tail -15 $OUT/pytest_gpu.txt; \
    timeout 270 python3 -m benchmarks.gpu_check --device cuda --budget-s 210 \
      > $OUT/gpu_check.txt 2>&1; echo "gpu_check rc=$?"; \
    grep -E "^\[|error|warning" $OUT/gpu_check.txt | tail -40; \
    python3 benchmarks/gpu_check.py --table $OUT/gpu_check.json; \
    cp /tmp/peftlab-gpu-check.log $OUT/ 2>/dev/null; true

(the same command on one line: `bash benchmarks/gpu_wheels.sh --print-command`).

`--engine` (its own run: vLLM's servers take a minute or more each to start): builds the model,
trains full and the three LoRA runs, then runs the serve stage on them with vLLM (base; 1, 2 and 3
adapters on one server; 2 merged models, one server each with a fifth of the GPU; 2 adapters
beside the full model; uniform and skewed popularity; 4-64 req/s, 100 requests of 32 tokens
per rate) and prints each configuration's saturation, TTFT and TPOT and the decision line.
It needs vLLM (CUDA build) on the host: an engine environment ($PEFTLAB_ENGINE_PYTHON,
.venv-engine) or `vllm` importable by the host's Python; the wheels do not travel (about 1 GB
with its torch), so without one the section is skipped with the reason. On the device tool:
`timeout 560 python3 -m benchmarks.gpu_check --device cuda --engine --budget-s 540` (after the
same pip/PYTHONPATH prefix as above). On CPU, `--device cpu --small --engine` with the CPU
engine environment runs the same path on a head_dim-64 tiny model (minutes).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: a lookup fails at once
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "glue"

# TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T, config.json).
TINYLLAMA = {"num_hidden_layers": 22, "hidden_size": 2048, "num_attention_heads": 32,
             "num_key_value_heads": 4, "intermediate_size": 5632, "vocab_size": 32000,
             "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
# --small: the test suite's tiny Llama shape (peftlab.testing.build_tiny_llama defaults).
SMALL = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 512,
         "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0}
SEED = 42  # the shipped spec's first seed
TASKS = ("sst2", "mrpc", "rte")
BATCHES = (1, 8, 32)

# (module, pip name): what the paths this script runs import. bitsandbytes only on CUDA.
REQUIRED = [("torch", "torch"), ("transformers", "transformers"), ("peft", "peft"),
            ("accelerate", "accelerate"), ("datasets", "datasets"), ("pydantic", "pydantic"),
            ("pydantic_core", "pydantic-core"), ("yaml", "PyYAML"), ("safetensors", "safetensors"),
            ("tokenizers", "tokenizers"), ("numpy", "numpy"), ("scipy", "scipy"),
            ("pandas", "pandas"), ("pyarrow", "pyarrow"), ("sklearn", "scikit-learn"),
            ("psutil", "psutil"), ("rich", "rich"), ("typer", "typer"),
            ("threadpoolctl", "threadpoolctl"), ("dill", "dill"), ("multiprocess", "multiprocess")]
# peftlab modules the check runs through (their imports surface a missing dependency by name)
PEFTLAB_MODULES = ["peftlab.spec", "peftlab.pipeline", "peftlab.stages.finetune",
                   "peftlab.stages.represent", "peftlab.stages.bench", "peftlab.bench.plan",
                   "peftlab.bench.worker", "peftlab.bench.gate", "peftlab.testing"]
# distributions whose declared requirements are compared with what is installed (warnings)
CHECK_REQUIREMENTS = ("transformers", "peft", "datasets", "pydantic", "accelerate")


# ---------------------------------------------------------------------------------------------
# 0. imports first


def check_imports(cuda: bool) -> list[str]:
    """Import every needed module; return one line per missing or broken one (empty: all fine).

    A failed import names the module that is really missing (e.g. `dill` inside `datasets`), so
    one run names every package to carry. Takes a few seconds (torch's import).
    """
    problems: list[str] = []
    seen: set[str] = set()
    wanted = REQUIRED + ([("bitsandbytes", "bitsandbytes")] if cuda else [])
    for module, pip_name in wanted:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            missing = err.name or module
            if missing in seen:  # already named through an earlier import
                continue
            seen.add(missing)
            via = "" if missing == module else f" (needed by {module})"
            problems.append(f"missing package {missing!r}{via}: pip name "
                            f"{pip_name if missing == module else missing}")
        except Exception as err:  # noqa: BLE001  (a broken install, e.g. a CUDA library)
            problems.append(f"{module} ({pip_name}) fails to import: {type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else ''}")
    if not problems:
        for module in PEFTLAB_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as err:
                problems.append(f"missing package {err.name!r} (needed by {module})")
            except Exception as err:  # noqa: BLE001
                problems.append(f"{module} fails to import: {type(err).__name__}: {err}")
    return problems


def requirement_warnings() -> list[str]:
    """Declared requirements of the key distributions that the installed versions do not meet
    (printed, not fatal: pip's resolver is stricter than what actually breaks)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return []
    out = []
    for dist in CHECK_REQUIREMENTS:
        try:
            reqs = importlib.metadata.requires(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in reqs:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            try:
                have = importlib.metadata.version(req.name)
            except importlib.metadata.PackageNotFoundError:
                continue  # a missing one is reported by check_imports when it matters
            if req.specifier and not req.specifier.contains(have, prereleases=True):
                out.append(f"{dist} wants {req}, installed {req.name} {have}")
    return out


# ---------------------------------------------------------------------------------------------
# helpers


class Report:
    """The JSON document, rewritten after every section."""

    def __init__(self, path: Path, budget_s: float):
        self.path = path
        self.t0 = time.perf_counter()
        self.budget_s = budget_s
        self.doc: dict[str, Any] = {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:],
                                    "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                    "sections": {}}

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over_budget(self) -> bool:
        return self.elapsed() > self.budget_s

    def section(self, name: str, status: str, seconds: float, reason: str | None = None) -> None:
        self.doc["sections"][name] = {"status": status, "seconds": round(seconds, 3),
                                      **({"reason": reason} if reason else {})}
        self.write()

    def write(self) -> None:
        self.doc["elapsed_s"] = round(self.elapsed(), 3)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=1, default=_json_default) + "\n",
                       encoding="utf-8")
        tmp.replace(self.path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):
        return obj.item()
    return str(obj)


_CONSOLE = sys.stderr  # the real stderr: progress lines stay on the console while
# `script_log` sends library messages (which also arrive on sys.stderr) to its log file


def say(msg: str) -> None:
    print(msg, file=_CONSOLE, flush=True)


def run_section(report: Report, name: str, fn: Any, *args: Any, always: bool = False) -> Any:
    """Run one section; record done/failed/skipped with its time. Failures do not stop the run
    (later sections say what they could not use); the traceback goes into the JSON. A section
    that would start past the time budget is skipped, unless `always` (cheap ones)."""
    import traceback

    if report.over_budget() and not always:
        report.section(name, "skipped", 0.0, f"time budget of {report.budget_s:.0f} s spent "
                                             f"({report.elapsed():.0f} s elapsed)")
        say(f"[{report.elapsed():6.1f} s] {name}: skipped (time budget)")
        return None
    say(f"[{report.elapsed():6.1f} s] {name} ...")
    t0 = time.perf_counter()
    try:
        out = fn(*args)
    except Skipped as why:
        report.section(name, "skipped", time.perf_counter() - t0, str(why))
        say(f"[{report.elapsed():6.1f} s] {name}: skipped ({why})")
        return None
    except Exception as err:  # noqa: BLE001  (recorded; the next sections still run)
        report.section(name, "failed", time.perf_counter() - t0, f"{type(err).__name__}: {err}")
        report.doc.setdefault("tracebacks", {})[name] = traceback.format_exc()[-4000:]
        report.write()
        say(f"[{report.elapsed():6.1f} s] {name}: FAILED {type(err).__name__}: {err}")
        return None
    report.section(name, "done", time.perf_counter() - t0)
    say(f"[{report.elapsed():6.1f} s] {name}: done in {time.perf_counter() - t0:.1f} s")
    return out


class Skipped(Exception):
    """A section that cannot run here (the reason is recorded)."""


def release(device: str) -> None:
    from peftlab.bench.loading import release_memory

    release_memory(device)


# ---------------------------------------------------------------------------------------------
# 1. model and tokenizer


def glue_lines(data_dir: Path) -> list[str]:
    """Every training text of SST-2, MRPC and RTE (the tokenizer's corpus)."""
    from peftlab.tasks import get_task, load_split

    lines: list[str] = []
    for name in TASKS:
        df = load_split(get_task(name), "train", source="glue_dir", glue_dir=data_dir)
        for col in ("text_a", "text_b"):
            if col in df.columns:
                lines += [str(t) for t in df[col].tolist()]
    return lines


def build_model(folder: Path, arch: dict[str, Any], device: str, data_dir: Path,
                small: bool) -> dict[str, Any]:
    """Save a random bf16 LlamaForCausalLM of `arch` and its tokenizer in `folder`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from peftlab.testing import build_tiny_tokenizer

    t0 = time.perf_counter()
    if small:
        tokenizer = build_tiny_tokenizer("llama", with_pad=False)
        trained_on = "the fixed corpus of peftlab.testing (the test suite's tokenizer)"
    else:
        tokenizer = build_tiny_tokenizer("llama", vocab_size=arch["vocab_size"], with_pad=False,
                                         lines=glue_lines(data_dir))
        trained_on = "GLUE SST-2, MRPC and RTE training texts (byte-level BPE)"
    tok_s = time.perf_counter() - t0
    if len(tokenizer) > arch["vocab_size"]:
        raise RuntimeError(f"tokenizer has {len(tokenizer)} entries > vocab {arch['vocab_size']}")
    config = LlamaConfig(**arch, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
                         hidden_act="silu", attention_bias=False)
    t1 = time.perf_counter()
    # Random init on the device (seconds on a GPU instead of a minute of CPU init for 1.1 B
    # parameters), in bf16 as the checkpoint is distributed.
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    init_s = time.perf_counter() - t1
    n_params = sum(p.numel() for p in model.parameters())
    t2 = time.perf_counter()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    save_s = time.perf_counter() - t2
    del model
    release(device)
    return {"architecture": arch, "class": "LlamaForCausalLM (loaded as "
            "LlamaForSequenceClassification with a fresh score head)", "dtype": "bfloat16",
            "parameters": n_params, "weight_file_bytes": sum(
                p.stat().st_size for p in folder.glob("*.safetensors")),
            "tokenizer": {"entries": len(tokenizer), "vocab_size_of_model": arch["vocab_size"],
                          "trained_on": trained_on, "pad_token": tokenizer.pad_token,
                          "build_s": tok_s},
            "init_s": init_s, "save_s": save_s}


# ---------------------------------------------------------------------------------------------
# 2. the study


def write_study(tmp: Path, model_dir: Path, device: str, small: bool, steps: int,
                data_dir: Path) -> Any:
    """A spec derived from the shipped tinyllama-glue spec; returns the loaded Study."""
    import copy

    from peftlab.pipeline import load_study
    from peftlab.spec import find_spec, read_yaml
    from peftlab.testing import write_spec

    ref = read_yaml(find_spec("tinyllama-glue"))
    spec = copy.deepcopy(ref)
    tr = spec["training"]
    n_train = tr["batch_size"] * tr["grad_accum"] * steps  # every step sees new examples
    spec.update(name="gpu-check", description="benchmarks/gpu_check.py", device=device,
                output_dir=str(tmp / "study"))
    # bf16 is what the GPU run checks; the CPU --small run (CI) is in fp32, which CPUs without
    # bf16 units compute faster, and which keeps the script's own test short.
    dtype, precision = ("float32", "fp32") if small else ("bfloat16", "bf16")
    spec["model"] = {**spec["model"], "name": str(model_dir), "dtype": dtype}
    spec["data"] = {"train_samples": n_train, "eval_samples": 64 if small else 128, "seed": 0}
    spec["seeds"] = [SEED]
    spec["training"] = {**tr, "max_steps": steps, "logging_steps": 5, "precision": precision,
                        "bootstrap_samples": 100}
    if device == "cuda":
        lora = spec["methods"]["lora"]
        spec["methods"]["qlora"] = {**{k: v for k, v in lora.items() if k != "type"},
                                    "type": "qlora"}
    spec["represent"] = {**spec["represent"], "probe_samples": 32 if small else 500}
    spec["bench"] = {
        "modes": ["base", "full", "unmerged", "merged", "multi", "mixed"],
        "batch_sizes": list(BATCHES),
        "seq_lengths": ["data"] if small else ["data", 384],
        "warmup": 1 if small else 5,
        "min_iterations": 3 if small else 30,
        "min_seconds": 0.0 if small else 0.3,
        "load_repeats": 1,
        "gate_examples": 16 if small else 32,
        **({"threads": 1} if device == "cpu" else {}),
    }
    spec.pop("overrides", None)  # per-task rates do not change a step's cost
    spec.pop("search", None)  # the check times steps; `estimate` adds the reference's trials
    path = write_spec(tmp / "gpu-check.yaml", spec)
    return load_study(path, data_dir=str(data_dir))


# ---------------------------------------------------------------------------------------------
# 3. training


def train_all(ctx: Any, methods: list[str], report: Report) -> dict[str, Any]:
    """train_run for full/LoRA/QLoRA on SST-2 and LoRA on MRPC and RTE; one row per run."""
    from peftlab.encode import encode_frame
    from peftlab.stages.finetune import train_run

    # QLoRA last: a CUDA fault in bitsandbytes would leave this process's CUDA context unusable,
    # and the LoRA adapters of multi-3/mixed-3 must exist before that.
    plan = [("sst2", m) for m in methods if m != "qlora"] + [
        (t, "lora") for t in TASKS if t != "sst2"] + [("sst2", m) for m in methods
                                                       if m == "qlora"]
    rows = []
    for task, method in plan:
        rc = next(r for r in ctx.study.runs() if r.task == task and r.method == method)
        t0 = time.perf_counter()
        try:
            rec = train_run(ctx, rc)
        except Exception as err:  # noqa: BLE001  (recorded; the other runs still train)
            import traceback

            rec = {"status": "error", "failure_reason": f"{type(err).__name__}: {err}",
                   "traceback": traceback.format_exc()[-3000:]}
        wall = time.perf_counter() - t0
        release(ctx.device)
        row: dict[str, Any] = {"task": task, "method": method, "method_type": rc.method_type,
                               "run_id": rc.run_id, "status": rec["status"], "wall_s": wall}
        if rec["status"] != "done":
            row["failure_reason"] = rec.get("failure_reason")
            if rec.get("traceback"):
                row["traceback"] = rec["traceback"]
        else:
            mem = rec.get("memory") or {}
            train_df = ctx.data.split(task, "train")
            tok = ctx_tokenizer(ctx)
            lengths = encode_frame(train_df, tok, max_length=rc.model.max_length,
                                   pair_template=rc.model.pair_template)["length"]
            row.update(
                steps=rec["steps"], train_time_s=rec["train_time_s"],
                step_time_s=rec["train_time_s"] / rec["steps"],
                train_wall_s=rec["train_wall_s"], eval_time_s=rec["eval_time_s"],
                eval_examples=rec["eval_examples"], samples_per_s=rec["train_samples_per_s"],
                tokens_per_s=rec["train_tokens_per_s"], padding_share=rec["padding_share"],
                peak_allocated_bytes=mem.get("cuda_peak_allocated_bytes"),
                peak_reserved_bytes=mem.get("cuda_peak_reserved_bytes"),
                rss_peak_bytes=mem.get("rss_peak_bytes"),
                trainable_params=rec["params"]["trainable"],
                trainable_share=rec["params"]["trainable_share_of_base"],
                base_params=rec["params"]["base_total"],
                tokens_per_example=float(sum(lengths) / len(lengths)),
                words_per_example=float(train_df[[c for c in ("text_a", "text_b")
                                                  if c in train_df.columns]]
                                        .apply(lambda r: sum(len(str(x).split()) for x in r),
                                               axis=1).mean()),
                loss_first=rec["loss_curve"][0] if rec["loss_curve"] else None,
                loss_last=rec["loss_curve"][-1] if rec["loss_curve"] else None,
                # outside the training loop: loading, evaluation, saving the artifact
                overhead_s=wall - rec["train_time_s"] - rec["eval_time_s"])
        rows.append(row)
        report.doc["train"] = rows
        report.write()
        say(f"  train {task}/{method}: {row['status']}"
            + (f", {row['step_time_s'] * 1e3:.1f} ms/step" if row.get("step_time_s") else "")
            + (f" ({row.get('failure_reason')})" if row["status"] != "done" else ""))
    return {"rows": rows}


_TOKENIZERS: dict[str, Any] = {}


def ctx_tokenizer(ctx: Any) -> Any:
    from peftlab.artifacts import ModelLoader

    name = ctx.study.spec.model.name
    if name not in _TOKENIZERS:
        _TOKENIZERS[name] = ModelLoader(ctx.study.spec.model, ctx.device).tokenizer
    return _TOKENIZERS[name]


def qlora_evidence(ctx: Any) -> dict[str, Any]:
    """The QLoRA base loaded as the method loads it (`ModelLoader.base`), against the bf16 base:
    Linear4bit modules, Params4bit parameters and weight bytes (parameters + buffers; a 4-bit
    weight is stored packed, two values a byte, plus its quantisation statistics)."""
    import torch

    if not ctx.device.startswith("cuda"):
        raise Skipped("bitsandbytes' 4-bit layers need CUDA")
    import bitsandbytes as bnb

    from peftlab.artifacts import ModelLoader
    from peftlab.memory import param_bytes

    rc = next(r for r in ctx.study.runs() if r.method == "qlora")
    task = ctx.data.task(rc.task)
    loader = ModelLoader(rc.model, ctx.device)
    out: dict[str, Any] = {}
    for label, method_type, params in (("bf16", "lora", None), ("4bit", "qlora", rc.params)):
        release(ctx.device)
        before = torch.cuda.memory_allocated()
        model = loader.base(len(task.label_names), list(task.label_names), SEED,
                            method_type=method_type, params=params)
        torch.cuda.synchronize()
        linear_bytes = 0
        for module in model.modules():
            if isinstance(module, torch.nn.Linear | bnb.nn.Linear4bit) and module is not getattr(
                    model, "score", None):
                linear_bytes += module.weight.numel() * module.weight.element_size()
                state = getattr(module.weight, "quant_state", None)
                if state is not None:  # absmax and the nested statistics of double quant
                    linear_bytes += sum(t.numel() * t.element_size() for t in _tensors(state))
        stored = sum(p.numel() for p in model.parameters())
        # a Params4bit holds its weight packed (two values a byte): its numel is half the
        # weight's element count, which quant_state.shape keeps
        logical = sum(math.prod(p.quant_state.shape) if isinstance(p, bnb.nn.Params4bit)
                      else p.numel() for p in model.parameters())
        out[label] = {
            "parameters": logical, "parameter_numel": stored,
            "linear4bit_modules": sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()),
            "params4bit": sum(isinstance(p, bnb.nn.Params4bit) for p in model.parameters()),
            "param_bytes": param_bytes(model),
            "decoder_linear_weight_bytes": linear_bytes,
            "cuda_allocated_bytes": torch.cuda.memory_allocated() - before,
            "quantized": bool(getattr(model, "is_quantized", False)),
        }
        del model
    release(ctx.device)
    b, q = out["bf16"], out["4bit"]
    out["ratio_param_bytes"] = q["param_bytes"] / b["param_bytes"]
    out["ratio_linear_weight_bytes"] = (q["decoder_linear_weight_bytes"]
                                        / b["decoder_linear_weight_bytes"])
    out["ratio_cuda_allocated"] = q["cuda_allocated_bytes"] / max(b["cuda_allocated_bytes"], 1)
    out["note"] = ("the embedding (vocab x hidden), norms and the head stay in bf16, so the "
                   "whole model's ratio sits above the linear layers' ~0.25; "
                   "parameter_numel < parameters shows that numel-based counts "
                   "(models.count_parameters) count packed 4-bit storage, not weights")
    return out


def _tensors(state: Any) -> list[Any]:
    """Tensors inside a bitsandbytes QuantState (absmax, code, nested state)."""
    import torch

    found = []
    for value in vars(state).values():
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif value is not None and hasattr(value, "absmax"):
            found += _tensors(value)
    return found


# ---------------------------------------------------------------------------------------------
# 4. representations


def represent(ctx: Any, methods: list[str]) -> list[dict[str, Any]]:
    """`extraction.extract` of the base and each finished SST-2 run on the probe set (the
    represent stage's probes: the evaluation split subsampled by represent.probe_samples and
    probe_seed), each model loaded as the stage loads it (`ModelLoader.base`, `load_run`)."""
    from peftlab.artifacts import ModelLoader, load_run
    from peftlab.context import run_status
    from peftlab.encode import encode_frame
    from peftlab.extraction import extract, resolve_pooling
    from peftlab.tasks import subsample

    runs = [r for r in ctx.study.runs() if r.task == "sst2" and r.method in methods
            and run_status(ctx.store, r)["status"] == "done"]
    if not runs:
        raise Skipped("no finished SST-2 run to extract")
    cfg = ctx.study.spec.represent
    m = ctx.study.spec.model
    probe = subsample(ctx.data.split("sst2", "eval", subsample=False), cfg.probe_samples,
                      cfg.probe_seed)
    task = ctx.data.task("sst2")
    rows, dataset = [], None
    for rc in [None, *runs]:
        t0 = time.perf_counter()
        if rc is None:
            loader = ModelLoader(m, ctx.device)
            model = loader.base(len(task.label_names), list(task.label_names), SEED)
            tokenizer = loader.tokenizer
        else:
            tokenizer, model = load_run(ctx, rc.run_id)
        model.eval()
        if dataset is None:
            dataset = encode_frame(probe, tokenizer, max_length=m.max_length,
                                   pair_template=m.pair_template)
        pooling = resolve_pooling(cfg.pooling if isinstance(cfg.pooling, str) else
                                  cfg.pooling[0], model)
        t1 = time.perf_counter()
        reps = extract(model, tokenizer, dataset, pooling=pooling, batch_size=cfg.batch_size,
                       device=ctx.device)
        seconds = time.perf_counter() - t1
        del model
        release(ctx.device)
        layers, n, d = reps.shape
        rows.append({"model": "base" if rc is None else rc.method,
                     "key": "base" if rc is None else rc.run_id, "n": n, "layers": layers,
                     "d": d, "pooling": pooling, "batch_size": cfg.batch_size,
                     "extract_time_s": seconds, "s_per_example": seconds / n,
                     "load_s": t1 - t0, "tokens_per_example": float(
                         sum(dataset["length"]) / len(dataset))})
    return rows


# ---------------------------------------------------------------------------------------------
# 5. bench


def bench(ctx: Any, report: Report) -> dict[str, Any]:
    """base, full, unmerged, merged (SST-2 runs) and multi-3, mixed-3 (the three LoRA adapters)
    through the bench runner, each unit in a process of its own under the study's isolation."""
    from peftlab.artifacts import run_artifact
    from peftlab.bench.mode import Candidate, PlanSettings
    from peftlab.bench.plan import plan_units, run_units
    from peftlab.bench.units import sweep_points
    from peftlab.context import run_status
    from peftlab.methods import get_method
    from peftlab.stages.bench import schedule

    spec = ctx.study.spec
    done = [r for r in ctx.study.runs() if run_status(ctx.store, r)["status"] == "done"]
    if not any(r.method == "lora" and r.task == "sst2" for r in done):
        raise Skipped("the SST-2 LoRA run did not finish")
    # QLoRA is left out: its 4-bit base re-quantises at every load (cold, repeat, gate
    # references), which would cost more of the GPU run than it tells about serving.
    cands = [Candidate(run_artifact(ctx, r), r.method, r.seed, get_method(r.method_type))
             for r in done if r.method in ("full", "lora")]
    settings = PlanSettings(tasks=list(TASKS), seeds=[SEED], multi_k=None, variants=[""])
    single = plan_units([c for c in cands if c.task == "sst2"],
                        modes=["base", "full", "unmerged", "merged"], settings=settings)
    single = [u for u in single if u.tasks_served == ["sst2"]]  # the base once, on SST-2
    lora = [c for c in cands if c.method == "lora"]
    several = plan_units(lora, modes=["multi", "mixed"], settings=settings) if len(lora) > 1 \
        else []
    units = schedule(single + several, settings)
    tasks = {t: ctx.data.task_info(t) for t in TASKS}
    points = sweep_points(spec.bench.batch_sizes, spec.bench.seq_lengths)
    rows: list[dict[str, Any]] = []
    clock = {"t": time.perf_counter()}

    def sink(unit: Any, records: list[tuple[str, dict[str, Any]]], result: dict[str, Any]
             ) -> None:
        ctx.store.put_many("bench", records)
        now = time.perf_counter()
        rows.append(unit_row(unit, result, now - clock["t"]))
        clock["t"] = now
        report.doc["bench"] = {"isolation": spec.bench.isolation, "units": rows}
        report.write()
        r = rows[-1]
        say(f"  bench {r['mode']}/{r['unit']}: {r['status']} in {r['wall_s']:.1f} s"
            + (f" ({r.get('reason')})" if r.get("reason") else ""))

    run_units([(u, points) for u in units], model=spec.model.model_dump(mode="json"),
              bench=spec.bench, device=ctx.device, tasks=tasks, extra={}, sink=sink)
    return {"isolation": spec.bench.isolation, "units": rows, "ratios": ratios(rows)}


def unit_row(unit: Any, result: dict[str, Any], wall_s: float) -> dict[str, Any]:
    """What the table and the estimate need of one unit's result."""
    row: dict[str, Any] = {"mode": unit.mode, "unit": unit.name, "method": unit.method,
                           "tasks": unit.tasks_served, "status": result.get("status"),
                           "wall_s": wall_s}
    if result.get("failure_reason"):
        row["reason"] = result["failure_reason"]
    if result.get("traceback"):
        row["traceback"] = result["traceback"][-2000:]
    proc = result.get("process") or {}
    row["process"] = {k: proc.get(k) for k in ("isolation", "pid", "parent_pid",
                                               "modes_run_before_in_process")}
    env = result.get("environment") or {}
    row["device_name"] = env.get("device_name")
    load = result.get("load") or {}
    row["load_cold_ms"] = load.get("cold_ms")
    row["load_warm_ms"] = load.get("warm_ms_median")
    row["memory_after_load"] = result.get("memory_after_load")
    gate = result.get("gate") or {}
    row["gate"] = {"passed": gate.get("passed"), "dtype": gate.get("dtype"),
                   "tolerance": gate.get("tolerance"),
                   "checks": [{k: c.get(k) for k in ("name", "reference", "kind", "rel_diff",
                                                      "max_abs_diff", "scale", "pred_flips",
                                                      "decisive_flips", "passed")}
                              for c in gate.get("checks", [])]}
    pts = []
    for p in result.get("points", []):
        lat = p["latency_ms"]
        dev = p.get("device_latency_ms") or {}
        mem = p.get("memory") or {}
        pts.append({"batch_size": p["batch_size"], "seq_len": p["seq_len"],
                    "p50_ms": lat["p50"], "mean_ms": lat["mean"], "p99_ms": lat["p99"],
                    "device_p50_ms": dev.get("p50"), "timer": p["timer"],
                    "cuda_events": bool(p.get("device_latencies_ns")),
                    "iterations": p["iterations"], "timed_wall_s": p["timed_wall_s"],
                    "warmup_calls": p["warmup_calls"],
                    "padded_tokens_per_request": p["padded_len_mean"] * p["batch_size"],
                    "requests_per_s": p["throughput"]["requests_per_s"],
                    "peak_allocated_bytes": mem.get("cuda_peak_allocated_bytes"),
                    "peak_reserved_bytes": mem.get("cuda_peak_reserved_bytes")})
    row["points"] = pts
    # the unit's fixed cost: process start, loads, gate (everything but the timed sweep)
    row["fixed_s"] = wall_s - sum(p["timed_wall_s"] for p in pts)
    return row


def _p50(rows: list[dict[str, Any]], mode: str, method: str | None, batch: int,
         seq: Any = "data") -> float | None:
    for r in rows:
        if r["mode"] == mode and (method is None or r["method"] == method) and \
                r["status"] == "done":
            for p in r["points"]:
                if p["batch_size"] == batch and p["seq_len"] == seq:
                    return p["p50_ms"]
    return None


def ratios(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    """p50 latency ratios at each batch size (evaluation lengths)."""
    out: dict[str, float | None] = {}
    pairs = {"unmerged/merged": (("unmerged", "lora"), ("merged", "lora")),
             "merged/full": (("merged", "lora"), ("full", "full")),
             "unmerged/full": (("unmerged", "lora"), ("full", "full")),
             "qlora_unmerged/lora_unmerged": (("unmerged", "qlora"), ("unmerged", "lora")),
             "multi3/unmerged": (("multi", "lora"), ("unmerged", "lora")),
             "mixed3/unmerged": (("mixed", "lora"), ("unmerged", "lora")),
             "full/base": (("full", "full"), ("base", None))}
    for b in BATCHES:
        for name, ((ma, ka), (mb, kb)) in pairs.items():
            a, c = _p50(rows, ma, ka, b), _p50(rows, mb, kb, b)
            out[f"{name} b{b}"] = a / c if a and c else None
    return out


def fastpath(ctx: Any) -> dict[str, Any]:
    """PEFT unmerged vs the fused fast path vs merged, in this process, interleaved rounds:
    the same requests (SST-2 evaluation sentences) through `timing.time_requests` (CUDA events on
    CUDA), checked first with the gate's rule at the serving dtype's tolerance."""
    import numpy as np
    import torch

    try:
        from peftlab.bench.fastpath import fused_lora
    except ImportError as err:
        raise Skipped(f"peftlab.bench.fastpath is not available: {err}") from None
    from peftlab.artifacts import ModelLoader, run_artifact
    from peftlab.bench.gate import compare_logits
    from peftlab.bench.requests import build_batches
    from peftlab.bench.timing import time_requests
    from peftlab.context import run_status
    from peftlab.encode import encode_frame

    rc = next((r for r in ctx.study.runs() if r.task == "sst2" and r.method == "lora"), None)
    if rc is None or run_status(ctx.store, rc)["status"] != "done":
        raise Skipped("the SST-2 LoRA run did not finish")
    spec = ctx.study.spec
    art = run_artifact(ctx, rc)
    loader = ModelLoader(rc.model, ctx.device)
    tol = spec.bench.gate_tolerance[rc.model.dtype]
    models = {"unmerged": loader.adapters([art], SEED),
              "fast": fused_lora(loader.adapters([art], SEED)),
              "merged": loader.merged(art, SEED)}
    enc = encode_frame(ctx.data.split("sst2", "eval"), loader.tokenizer,
                       max_length=rc.model.max_length, pair_template=rc.model.pair_template)
    gate_reqs = build_batches(enc, loader.tokenizer, batch_size=8, seq_len="data",
                              device=ctx.device, seed=0)[:4]
    with torch.inference_mode():
        logits = {n: np.concatenate([m(**r.inputs).logits.float().cpu().numpy()
                                     for r in gate_reqs]) for n, m in models.items()}
    gate = [compare_logits("fast", logits["fast"], ref, logits[ref], tolerance=tol)
            for ref in ("unmerged", "merged")]
    out: dict[str, Any] = {"gate": [{k: g[k] for k in ("reference", "rel_diff", "passed")}
                                    for g in gate], "tolerance": tol, "points": []}
    if not all(g["passed"] for g in gate):
        raise RuntimeError(f"fast path disagrees with PEFT: {out['gate']}")
    small = ctx.device == "cpu"
    rounds = 3
    for b in BATCHES:
        reqs = build_batches(enc, loader.tokenizer, batch_size=b, seq_len="data",
                             device=ctx.device, seed=b)
        p50: dict[str, list[float]] = {n: [] for n in models}
        for rnd in range(rounds):
            for name in (list(models) if rnd % 2 == 0 else list(models)[::-1]):
                stream = iter(reqs[i % len(reqs)] for i in range(10**9))
                model = models[name]
                with torch.inference_mode():
                    t = time_requests(lambda r, m=model: m(**r.inputs), lambda s=stream: next(s),
                                      warmup=1 if small else 5,
                                      min_iterations=3 if small else 30,
                                      min_seconds=0.0 if small else 0.2, max_seconds=30.0,
                                      device=ctx.device)
                p50[name].append(float(np.median(t.latencies_ns)) / 1e6)
        med = {n: statistics.median(v) for n, v in p50.items()}
        out["points"].append({
            "batch_size": b, "p50_ms": med, "timer": t.timer,
            "fast/merged": statistics.median(
                f / m for f, m in zip(p50["fast"], p50["merged"], strict=True)),
            "unmerged/merged": statistics.median(
                u / m for u, m in zip(p50["unmerged"], p50["merged"], strict=True)),
            "rounds": rounds})
    del models
    release(ctx.device)
    return out


# ---------------------------------------------------------------------------------------------
# 6. precision: unmerged vs merged vs reloaded


def precision(ctx: Any, dtypes: list[str]) -> dict[str, Any]:
    """Per serving dtype: the gate's relative difference between the SST-2 LoRA run served
    unmerged, reloaded from disk (another seed for any fresh head, as the gate does) and merged
    (merge_and_unload of the reloaded one), on the gate's examples."""
    import numpy as np
    import torch

    from peftlab.artifacts import ModelLoader, merge, run_artifact
    from peftlab.bench.gate import relative_difference
    from peftlab.bench.requests import build_batches
    from peftlab.context import run_status
    from peftlab.encode import encode_frame

    rc = next((r for r in ctx.study.runs() if r.task == "sst2" and r.method == "lora"), None)
    if rc is None or run_status(ctx.store, rc)["status"] != "done":
        raise Skipped("the SST-2 LoRA run did not finish")
    spec = ctx.study.spec
    art = run_artifact(ctx, rc)
    eval_df = ctx.data.split("sst2", "eval").iloc[: spec.bench.gate_examples]
    out: dict[str, Any] = {}
    for dtype in dtypes:
        loader = ModelLoader({**rc.model.model_dump(mode="json"), "dtype": dtype}, ctx.device)
        enc = encode_frame(eval_df, loader.tokenizer, max_length=rc.model.max_length,
                           pair_template=rc.model.pair_template)
        reqs = build_batches(enc, loader.tokenizer, batch_size=8, seq_len="data",
                             device=ctx.device, seed=SEED)

        def logits(model: Any, requests: list[Any] = reqs) -> Any:
            with torch.inference_mode():
                return np.concatenate([model(**r.inputs).logits.float().cpu().numpy()
                                       for r in requests])

        unmerged = logits(loader.adapters([art], SEED))
        release(ctx.device)
        reloaded_model = loader.adapters([art], SEED + 1)
        reloaded = logits(reloaded_model)
        merged = logits(merge(reloaded_model))
        del reloaded_model
        release(ctx.device)
        pairs = {"unmerged_vs_reloaded": (unmerged, reloaded),
                 "unmerged_vs_merged": (unmerged, merged),
                 "reloaded_vs_merged": (reloaded, merged)}
        out[dtype] = {}
        for name, (a, b) in pairs.items():
            diff, scale, rel = relative_difference(a, b)
            out[dtype][name] = {"rel_diff": rel, "max_abs_diff": diff, "scale": scale,
                                "pred_flips": int((a.argmax(1) != b.argmax(1)).sum())}
        out[dtype]["n"] = len(unmerged)
    return out


def implied_tolerances(doc: dict[str, Any], current: dict[str, float]) -> dict[str, Any]:
    """Per dtype: the largest relative difference measured (this process's probe and the bench
    workers' gate checks), and the tolerance it implies: 4x that, rounded up to 1, 2 or 5 x 10^k
    (so rounding noise on other inputs and models has room, while an adapter that did not load
    -a difference of order 1- still fails)."""
    measured: dict[str, float] = {}
    for dtype, pairs in (doc.get("precision") or {}).items():
        vals = [v["rel_diff"] for k, v in pairs.items() if isinstance(v, dict)]
        if vals:
            measured[dtype] = max(vals)
    for unit in (doc.get("bench") or {}).get("units", []):
        gate = unit.get("gate") or {}
        vals = [c["rel_diff"] for c in gate.get("checks", [])
                if c.get("kind") == "logits" and c.get("rel_diff") is not None]
        if vals and gate.get("dtype"):
            measured[gate["dtype"]] = max(measured.get(gate["dtype"], 0.0), max(vals))
    out = {}
    for dtype, worst in measured.items():
        implied = _round_up_125(4 * worst) if worst > 0 else None
        out[dtype] = {"max_rel_diff": worst, "implied_tolerance": implied,
                      "current_tolerance": current.get(dtype),
                      "headroom": current[dtype] / worst if worst > 0 and dtype in current
                      else None}
    return out


def _round_up_125(x: float) -> float:
    k = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**k >= x * (1 - 1e-12):
            return float(f"{m * 10**k:.3g}")
    return float(10 ** (k + 1))


# ---------------------------------------------------------------------------------------------
# 6b. serving on vLLM (--engine)


def engine(ctx: Any, device: str, small: bool,
           overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The serve stage (`peftlab.stages.serve`) on this check's own runs: the base folder, the
    three LoRA runs (SST-2, MRPC, RTE) as adapters on one server, their merged models (2
    servers), the full run beside 2 adapters; uniform and skewed popularity, rising rates
    (`overrides`: engine-block keys over this check's own, e.g. faster rates for a stand-in
    server in the tests). Needs vLLM: an engine environment ($PEFTLAB_ENGINE_PYTHON, .venv-engine: scripts/build-engine-
    env.sh gpu) or vllm importable by this Python; skipped, saying so, otherwise. On CUDA each
    server holds a fixed share of the GPU (`gpu_memory_fraction`), so 2 fit side by side."""
    import dataclasses
    import importlib.util

    from peftlab.bench.engines.base import find_engine_python
    from peftlab.bench.engines.scenarios import EngineServingRecord
    from peftlab.context import Context
    from peftlab.engine_spec import EngineSpec
    from peftlab.records import read
    from peftlab.stages import serve

    python = find_engine_python() or (Path(sys.executable) if importlib.util.find_spec("vllm")
                                      else None)
    if python is None:
        raise Skipped("no vLLM here: build the engine environment with "
                      "scripts/build-engine-env.sh (needs the network), or set "
                      "PEFTLAB_ENGINE_PYTHON")
    cuda = device == "cuda"
    es = EngineSpec(**{
        "python": str(python), "adapters_k": 3, "fewer_adapters": [1], "merged_servers": 2,
        "rates": [4.0, 16.0, 64.0] if cuda else [2.0, 8.0],
        "max_requests": 100 if cuda else 12, "min_requests": 100 if cuda else 12,
        "max_seconds": 30.0, "drain_seconds": 30.0, "max_tokens": 32 if cuda else 8,
        "prompts_per_task": 64, "max_model_len": 512, "max_num_seqs": 32 if cuda else 4,
        "kv_cache_gib": 2.0 if cuda else 0.1, "gpu_memory_fraction": 0.2 if cuda else None,
        "startup_timeout_s": 600.0, **(overrides or {})})
    study = dataclasses.replace(ctx.study, spec=ctx.study.spec.model_copy(
        update={"engine": es}))
    serve.run(Context(study=study, store=ctx.store))
    recs = [r.dump() for r in read(ctx.store, EngineServingRecord)]
    from peftlab.stages.report.engine_serving import decision, summary_rows

    return {"python": str(python), "version": recs[0]["engine_version"] if recs else None,
            "summary": summary_rows(recs), "decision": decision(recs), "records": recs,
            "small": small}


# ---------------------------------------------------------------------------------------------
# 7. the reference study's wall time


def estimate(doc: dict[str, Any], data_dir: Path, tokenizer: Any) -> dict[str, Any]:
    """Wall time of the shipped tinyllama-glue spec on this device, from this run's measurements.

    Training: per planned run, optimizer steps (max_steps, else ceil(train rows / (batch x
    accumulation)) x epochs) x the measured step time of its method; tasks other than SST-2 use
    the LoRA step-time ratio of that task to SST-2 (measured: LoRA trained on all three) for every
    method; plus, per run, the measured fixed cost (load, save) and evaluation time per example x
    the task's evaluation rows. Represent: per task, (base + its runs) x (load + probes x seconds
    per example, scaled by the task's mean probe length over SST-2's). Bench: the spec's units
    (planned by the bench planner) x (their mode's measured fixed cost + per sweep point
    warm-up + max(min_seconds, min_iterations x p50)); p50 at other lengths interpolated linearly
    in padded tokens per request between the measured points of that mode and batch size.
    Search: the spec's trials per task x method, each counted as a whole training run on the
    training split minus the validation share (pruning makes the real figure smaller).
    Not included: the drift, stats and report stages (CPU work).
    """
    from peftlab.bench.mode import Candidate, PlanSettings
    from peftlab.bench.plan import plan_units
    from peftlab.data import StudyData
    from peftlab.encode import encode_frame
    from peftlab.methods import get_method
    from peftlab.pipeline import load_study

    train = [r for r in doc.get("train", []) if r["status"] == "done"]
    if not train:
        raise Skipped("no finished training run to take step times from")
    study = load_study("tinyllama-glue", data_dir=str(data_dir))
    spec = study.spec
    data = StudyData(study)
    step = {(r["method_type"], r["task"]): r["step_time_s"] for r in train}
    lora_sst2 = step.get(("lora", "sst2"))
    task_ratio = {t: (step[("lora", t)] / lora_sst2 if lora_sst2 and ("lora", t) in step
                      else 1.0) for t in TASKS}
    fixed = {r["method_type"]: r["overhead_s"] for r in train if r["task"] == "sst2"}
    eval_per_ex = {r["method_type"]: r["eval_time_s"] / r["eval_examples"] for r in train
                   if r["task"] == "sst2"}
    lengths = {}
    for t in TASKS:
        probe = data.split(t, "eval", subsample=False)
        enc = encode_frame(probe.iloc[: spec.represent.probe_samples], tokenizer,
                           max_length=spec.model.max_length,
                           pair_template=spec.model.pair_template)
        lengths[t] = float(sum(enc["length"]) / len(enc))
    runs, train_s, steps_total = [], 0.0, 0
    for rc in study.runs():
        n_train = len(data.split(rc.task, "train"))
        n_eval = len(data.split(rc.task, "eval"))
        tr = rc.training
        steps = tr.max_steps or math.ceil(max(n_train // (tr.batch_size * tr.grad_accum), 1)
                                          * tr.epochs)
        st = step.get((rc.method_type, rc.task)) or (
            step.get((rc.method_type, "sst2"), 0.0) * task_ratio[rc.task])
        seconds = (steps * st + fixed.get(rc.method_type, 0.0)
                   + n_eval * eval_per_ex.get(rc.method_type, 0.0))
        runs.append({"run_id": rc.run_id, "steps": steps, "step_time_s": st, "seconds": seconds})
        train_s += seconds
        steps_total += steps
    # the reference spec's search: n_trials per task x method, each training on the training
    # split minus the validation share for the run's epochs (an upper bound: pruning stops some)
    search_s, trials = 0.0, 0
    if spec.search is not None:
        firsts = {(rc.task, rc.method): rc for rc in study.runs()}
        for (task, _method), rc in firsts.items():
            n = spec.search.n_trials or 0
            n_fit = int(len(data.split(task, "train")) * (1 - spec.search.validation_share))
            tr = rc.training
            steps = tr.max_steps or math.ceil(max(n_fit // (tr.batch_size * tr.grad_accum), 1)
                                              * tr.epochs)
            st = step.get((rc.method_type, task)) or (
                step.get((rc.method_type, "sst2"), 0.0) * task_ratio[task])
            search_s += n * (steps * st + fixed.get(rc.method_type, 0.0))
            trials += n
    rep = doc.get("represent") or []
    rep_s = None
    if rep:
        per_ex = statistics.median(r["s_per_example"] for r in rep)
        load = statistics.median(r["load_s"] for r in rep)
        rep_s = 0.0
        for t in TASKS:
            models = 1 + sum(rc.task == t for rc in study.runs())
            rep_s += models * (load + spec.represent.probe_samples * per_ex
                               * lengths[t] / lengths["sst2"])
    bench_s, n_units = None, None
    units_doc = [u for u in (doc.get("bench") or {}).get("units", []) if u["status"] == "done"]
    if units_doc:
        cands = []
        for rc in study.runs():
            method = get_method(rc.method_type)
            art = {"name": rc.run_id, "path": "", "kind": "peft" if method.is_peft else "full",
                   "task": rc.task, "run_id": rc.run_id, "method_type": rc.method_type,
                   "params": rc.params, "num_labels": 2, "label_names": ["0", "1"]}
            cands.append(Candidate(art, rc.method, rc.seed, method))
        b = spec.bench
        seeds = list(spec.seeds) if b.runs == "all" else list(spec.seeds[:1])
        planned = plan_units([c for c in cands if c.seed in seeds], modes=list(b.modes),
                             settings=PlanSettings(tasks=[t.name for t in spec.tasks],
                                                   seeds=seeds, multi_k=b.multi_k,
                                                   variants=[""]))
        by_mode = {u["mode"]: u for u in units_doc}
        bench_s, n_units = 0.0, 0
        for unit in planned:
            measured = by_mode.get(unit.mode_name)
            if unit.unsupported or measured is None:
                continue
            n_units += 1
            bench_s += measured["fixed_s"]
            task_len = statistics.mean(lengths[t] for t in unit.tasks_served)
            for batch in b.batch_sizes:
                for seq in b.seq_lengths:
                    tokens = batch * (task_len if seq == "data" else int(seq))
                    p50 = _interpolate(measured["points"], batch, tokens) / 1e3
                    bench_s += b.warmup * p50 + max(b.min_seconds, b.min_iterations * p50)
    total = train_s + search_s + (rep_s or 0.0) + (bench_s or 0.0)
    return {"runs": len(runs), "optimizer_steps": steps_total, "train_s": train_s,
            "search_trials": trials, "search_s": search_s,
            "represent_s": rep_s, "bench_units": n_units, "bench_s": bench_s,
            "total_s": total, "total_h": total / 3600, "task_step_ratio": task_ratio,
            "probe_tokens_per_example": lengths, "per_run": runs,
            "not_included": "drift, stats and report stages; pruning of search trials "
                            "(counted whole); page-cache-cold first loads"}


def _interpolate(points: list[dict[str, Any]], batch: int, tokens: float) -> float:
    """p50 (ms) at `tokens` padded tokens per request, linear through the measured points of
    this batch size (one point: proportional to tokens)."""
    pts = sorted((p["padded_tokens_per_request"], p["p50_ms"]) for p in points
                 if p["batch_size"] == batch)
    if not pts:
        pts = sorted((p["padded_tokens_per_request"], p["p50_ms"]) for p in points)
    if len(pts) == 1 or pts[0][0] == pts[-1][0]:
        x0, y0 = pts[0]
        return y0 * tokens / x0 if x0 else y0
    (x0, y0), (x1, y1) = pts[0], pts[-1]
    return max(y0 + (y1 - y0) * (tokens - x0) / (x1 - x0), min(y0, y1) * 0.5)


# ---------------------------------------------------------------------------------------------
# the table


def _gib(n: Any) -> str:
    return f"{n / 2**30:.2f} GiB" if isinstance(n, int | float) else "-"


def _ms(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, int | float) else "-"


def table(doc: dict[str, Any]) -> str:
    lines = [f"gpu_check: {doc.get('device_name')} ({doc.get('device')}), torch "
             f"{doc.get('versions', {}).get('torch')}, transformers "
             f"{doc.get('versions', {}).get('transformers')}, peft "
             f"{doc.get('versions', {}).get('peft')}; model "
             f"{doc.get('model', {}).get('parameters', 0) / 1e6:.1f} M parameters "
             f"({doc.get('mode')}), elapsed {doc.get('elapsed_s', 0):.1f} s"]
    lines.append("")
    steps = {r.get("steps") for r in doc.get("train", []) if r.get("steps")}
    lines.append(f"{'training (' + '/'.join(map(str, sorted(steps))) + ' steps)':<26}{'ms/step':>9}{'peak alloc':>12}{'peak resv':>12}"
                 f"{'trainable':>14}{'share':>9}{'tok/ex':>8}")
    for r in doc.get("train", []):
        name = f"{r['task']}/{r['method']}"
        if r["status"] != "done":
            lines.append(f"{name:<26}{r['status']}: {r.get('failure_reason')}")
            continue
        lines.append(f"{name:<26}{r['step_time_s'] * 1e3:>9.1f}"
                     f"{_gib(r['peak_allocated_bytes']):>12}{_gib(r['peak_reserved_bytes']):>12}"
                     f"{r['trainable_params']:>14,}{r['trainable_share']:>9.2%}"
                     f"{r['tokens_per_example']:>8.1f}")
    q = doc.get("qlora")
    sec = doc["sections"].get("qlora evidence", {})
    if q:
        lines.append(f"QLoRA base: {q['4bit']['linear4bit_modules']} Linear4bit modules, "
                     f"{q['4bit']['params4bit']} Params4bit; weight bytes 4-bit/bf16: whole "
                     f"model {q['ratio_param_bytes']:.3f}, decoder linear layers "
                     f"{q['ratio_linear_weight_bytes']:.3f}, CUDA allocated "
                     f"{q['ratio_cuda_allocated']:.3f}; parameters "
                     f"{q['4bit']['parameters']:,} (numel {q['4bit']['parameter_numel']:,})")
    elif sec:
        lines.append(f"QLoRA: {sec.get('status')} ({sec.get('reason')})")
    rep = doc.get("represent") or []
    if rep:
        lines.append("")
        lines.append("representations (SST-2 probes, last-token pooling): " + ", ".join(
            f"{r['model']} {r['s_per_example'] * 1e3:.2f} ms/example (n {r['n']}, load "
            f"{r['load_s']:.1f} s)" for r in rep))
    units = (doc.get("bench") or {}).get("units", [])
    if units:
        lines.append("")
        lines.append(f"bench ({doc['bench'].get('isolation')}), p50 ms by batch (eval lengths)"
                     f"{'':<4}" + "".join(f"{'b' + str(b):>9}" for b in BATCHES)
                     + "  gate max rel   timer")
        for u in units:
            name = f"{u['mode']}/{u['method'] or 'base'}"
            if u["status"] != "done":
                lines.append(f"  {name:<48}{u['status']}: {str(u.get('reason'))[:90]}")
                continue
            cells = "".join(f"{_ms(_p50([u], u['mode'], None, b)):>9}" for b in BATCHES)
            rels = [c["rel_diff"] for c in u["gate"]["checks"] if c.get("kind") == "logits"
                    and c.get("rel_diff") is not None]
            ev = "CUDA events" if any(p["cuda_events"] for p in u["points"]) else "perf_counter"
            lines.append(f"  {name:<48}{cells}  {max(rels) if rels else 0:.2e}     {ev}")
        lines.append("  (multi-3 and mixed-3 serve SST-2, MRPC and RTE requests, longer on average "
                     "than the SST-2 requests of the other rows)")
        r = doc["bench"].get("ratios", {})
        lines.append("  ratios " + ", ".join(
            f"{k} {v:.3f}" for k, v in r.items() if v is not None and (
                k.startswith(("unmerged/merged", "merged/full", "multi3", "mixed3",
                              "qlora")))))
    fp = doc.get("fastpath")
    if fp:
        lines.append("fast path (in-process, interleaved): " + ", ".join(
            f"b{p['batch_size']} fast/merged {p['fast/merged']:.3f} (PEFT unmerged/merged "
            f"{p['unmerged/merged']:.3f})" for p in fp["points"]))
    eng = doc.get("engine")
    if eng:
        lines.append("")
        lines.append(f"serving on vLLM ({eng.get('version')}): configuration, popularity, "
                     "saturation, at rate: TTFT p50/p99, TPOT p50/p99 (ms)")
        for r in eng.get("summary") or []:
            lines.append(f"  {r[0]:<12} {r[1]:<9} {r[2]}, at {r[3]}: {r[4]}/{r[5]}, "
                         f"{r[6]}/{r[7]}")
        if eng.get("decision"):
            lines.append(f"  {eng['decision']}")
    tol = doc.get("tolerances")
    if tol:
        lines.append("")
        lines.append("gate tolerances (relative logit difference, unmerged vs merged vs "
                     "reloaded):")
        for dtype, t in tol.items():
            lines.append(f"  {dtype:<9} max measured {t['max_rel_diff']:.2e} -> implied "
                         f"{t['implied_tolerance']} (current {t['current_tolerance']}, headroom "
                         f"{t['headroom']:.0f}x)" if t.get("headroom") else
                         f"  {dtype:<9} max measured {t['max_rel_diff']:.2e}")
    est = doc.get("estimate")
    if est:
        lines.append("")
        lines.append(
            f"estimated tinyllama-glue on this device: {est['total_h']:.2f} h = training "
            f"{est['train_s'] / 3600:.2f} h ({est['runs']} runs, {est['optimizer_steps']:,} "
            f"steps) + search {est.get('search_s', 0) / 3600:.2f} h "
            f"({est.get('search_trials', 0)} trials) + represent "
            f"{(est['represent_s'] or 0) / 60:.1f} min + bench "
            f"{(est['bench_s'] or 0) / 60:.1f} min ({est['bench_units']} units); not included: "
            f"{est['not_included']}")
    skipped = {k: v for k, v in doc["sections"].items() if v["status"] != "done"}
    if skipped:
        lines.append("")
        for k, v in skipped.items():
            lines.append(f"section {k}: {v['status']} ({v.get('reason')})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    ap.add_argument("--small", action="store_true",
                    help="a 2-layer config instead of TinyLlama's (CI: --device cpu --small)")
    ap.add_argument("--data-dir", type=Path,
                    default=Path(os.environ.get("PEFTLAB_DATA_DIR", DEFAULT_DATA)))
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON path (default: $OUT/gpu_check.json, else ./gpu_check.json)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip the sections that would start after this many seconds "
                         "(default 260 on CUDA, 600 otherwise)")
    ap.add_argument("--steps", type=int, default=None,
                    help="optimizer steps per training run (default 20; 5 with --small)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (CPU)")
    ap.add_argument("--engine", action="store_true",
                    help="only: build, train, then serve the runs on vLLM (needs vLLM)")
    ap.add_argument("--table", type=Path, default=None, metavar="JSON",
                    help="print the table of a JSON this script wrote, and exit")
    args = ap.parse_args()
    if args.table is not None:
        print(table(json.loads(args.table.read_text(encoding="utf-8"))))
        return 0

    t_imports = time.perf_counter()
    import torch  # the first import the check needs anyway

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    problems = check_imports(device == "cuda")
    if problems:
        print("error: cannot run, missing or broken packages (carry them as wheels, see "
              "benchmarks/gpu_wheels.sh):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 2
    warnings = requirement_warnings()
    for w in warnings:
        say(f"warning: {w}")
    if not args.data_dir.is_dir():
        print(f"error: --data-dir {args.data_dir}: no GLUE folder there (set PEFTLAB_DATA_DIR)",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or (Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT")
                       else Path("gpu_check.json"))
    budget = args.budget_s if args.budget_s is not None else (260.0 if device == "cuda"
                                                              else 600.0)
    report = Report(out.resolve(), budget)
    from peftlab.logs import script_log

    with script_log("gpu-check"):  # library warnings and load reports: to a log file
        return run_check(args, device, report, warnings, time.perf_counter() - t_imports)


def run_check(args: argparse.Namespace, device: str, report: Report, warnings: list[str],
              import_check_s: float) -> int:
    """Every section in order (after the import check), then the table."""
    import peft
    import torch
    import transformers

    doc = report.doc
    doc.update(mode="small" if args.small else "tinyllama-1.1b", device=device,
               device_name=torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
               versions={"torch": torch.__version__, "transformers": transformers.__version__,
                         "peft": peft.__version__, "python": sys.version.split()[0],
                         **_optional_version("bitsandbytes")},
               import_check_s=import_check_s, requirement_warnings=warnings,
               data_dir=str(args.data_dir), json=str(report.path))
    report.write()

    from peftlab.bench.worker import GATE_BATCH  # noqa: F401  (bench imports resolved early)
    from peftlab.context import Context
    from peftlab.spec import BenchSpec
    from peftlab.store import Store

    tmp = Path(tempfile.mkdtemp(prefix="peftlab-gpu-check-"))
    try:
        arch = SMALL if args.small else TINYLLAMA
        if args.engine and args.small:  # head_dim 64: what vLLM's CPU attention supports
            arch = {**SMALL, "hidden_size": 128, "num_attention_heads": 2,
                    "num_key_value_heads": 1, "intermediate_size": 256}
        doc["model"] = run_section(report, "build model", build_model, tmp / "model", arch,
                                   device, args.data_dir, args.small) or {}
        report.write()
        if not doc["model"]:
            print(table(doc))
            return 1
        steps = args.steps or (5 if args.small else 20)
        study = write_study(tmp, tmp / "model", device, args.small, steps, args.data_dir)
        store = Store(study.output_dir).lock()
        ctx = Context(study=study, store=store)
        methods = ["full", "lora"] + (["qlora"] if device == "cuda" else [])
        if device != "cuda":
            doc["qlora_skipped"] = "bitsandbytes' 4-bit layers need CUDA (device is cpu)"
        # In order of what the GPU run must not miss (a section past the budget is skipped).
        if args.engine:  # its own run: vLLM's servers take minutes to start
            run_section(report, "train", train_all, ctx, [m for m in methods if m != "qlora"],
                        report)
            doc["engine"] = run_section(report, "engine", engine, ctx, device, args.small)
            store.close()
            report.write()
            print(table(doc))
            return 1 if any(v["status"] == "failed" for v in doc["sections"].values()) else 0
        run_section(report, "train", train_all, ctx, methods, report)
        doc["qlora"] = run_section(report, "qlora evidence", qlora_evidence, ctx)
        doc["bench"] = run_section(report, "bench", bench, ctx, report) or doc.get("bench")
        report.write()
        doc["fastpath"] = run_section(report, "fast path", fastpath, ctx)
        report.write()
        doc["represent"] = run_section(report, "represent", represent, ctx, ["full", "lora"])
        report.write()
        dtypes = ["bfloat16", "float16", "float32"]
        doc["precision"] = run_section(report, "precision", precision, ctx, dtypes)
        doc["tolerances"] = implied_tolerances(doc, BenchSpec().gate_tolerance)
        report.write()
        doc["estimate"] = run_section(report, "estimate", estimate, doc, args.data_dir,
                                      ctx_tokenizer(ctx), always=True)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report.write()
    print(table(doc))
    say(f"json: {report.path}")
    failed = [k for k, v in doc["sections"].items() if v["status"] == "failed"]
    return 1 if failed else 0


def _optional_version(dist: str) -> dict[str, str]:
    try:
        return {dist: importlib.metadata.version(dist)}
    except importlib.metadata.PackageNotFoundError:
        return {}


if __name__ == "__main__":
    sys.exit(main())
