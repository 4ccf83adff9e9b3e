"""Checking artifacts before any work, head tensors, memory release, and the page cache.

Models themselves are loaded by `peftlab.artifacts.ModelLoader` (the one loader of every stage).

Artifacts (what a study's runs saved, or what a user passes to `peftlab bench --adapter`) are
described by plain dicts so they can travel to worker processes as JSON:

    {"name": "sst2-lora-s1-ab12cd34",   # adapter name inside PEFT (no dots) / display name
     "path": "/abs/runs/<run>/artifact", "kind": "peft" | "full",
     "task": "sst2", "run_id": ..., "method_type": "lora", "num_labels": 2, "label_names": [...]}

`check_artifact` refuses, with one `ModelError` naming the adapter and what was expected, an artifact
that is missing, saved without its classification head, or built for another base model
(architecture or hidden size). It reads only safetensors headers and the base model's config (the
module tree is built on the meta device), so it costs milliseconds.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import mmap
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftlab.artifacts import ADAPTER_WEIGHTS, adapter_name, artifact_weight_files
from peftlab.errors import ModelError

__all__ = ["adapter_name", "artifact_weight_files"]  # re-exported for the modes

PEFT_PREFIX = "base_model.model."
# Prompt-based adapters (prompt tuning, prefix, p-tuning) wrap the model itself: their trained
# head is stored as base_model.<head>.
PROMPT_PREFIX = "base_model."


def relative_key(key: str) -> str:
    """A stored adapter tensor's name inside the base model (PEFT's prefix removed)."""
    for prefix in (PEFT_PREFIX, PROMPT_PREFIX):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key

# Leaf segments of adapter-internal tensors: whatever precedes them is the adapted base module.
_ADAPTER_SEGMENTS = ("lora_", "ia3_", "ranknum", "vera_", "boft_", "oft_", "hra_")


# ---------------------------------------------------------------------------------------------
# The base model's structure (meta device: no weights read)


def structures(model_spec: dict[str, Any]) -> Callable[[int], dict[str, Any]]:
    """`base_structure` of one model spec per number of labels, each loaded once (a study's
    tasks share a label count)."""
    bases: dict[int, dict[str, Any]] = {}

    def structure(num_labels: int) -> dict[str, Any]:
        if num_labels not in bases:
            bases[num_labels] = base_structure(model_spec, num_labels)
        return bases[num_labels]

    return structure


def base_structure(model_spec: dict[str, Any], num_labels: int) -> dict[str, Any]:
    """What an adapter must fit: module shapes and head tensor shapes of the base classifier.

    Returns {describe, model_type, architecture, hidden_size, max_positions,
    modules: {qualified name: [in_features, out_features]} (linear layers),
    head: {"score.weight": [num_labels, hidden], ...}, head_names: ["score"]}.
    """
    import torch

    from peftlab.models import (
        classifier_from_config,
        head_module_names,
        load_config,
        resolve_model,
    )

    resolved = resolve_model(model_spec["name"], gguf_file=model_spec.get("gguf_file"),
                             revision=model_spec.get("revision"))
    config = load_config(resolved, trust_remote_code=model_spec.get("trust_remote_code", False))
    config.num_labels = num_labels
    with torch.device("meta"):
        model = classifier_from_config(
            resolved, config, model_spec.get("head", "sequence-classification"),
            trust_remote_code=model_spec.get("trust_remote_code", False))
    modules = {}
    for name, module in model.named_modules():
        shape = _linear_shape(module)
        if shape is not None:
            modules[name] = list(shape)
    heads = head_module_names(model)
    head = {f"{h}.{n}": list(p.shape) for h in heads
            for n, p in getattr(model, h).named_parameters()}
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return {
        "describe": resolved.describe(),
        "model_type": getattr(text, "model_type", None),
        "architecture": type(model).__name__,
        "hidden_size": getattr(text, "hidden_size", None),
        "max_positions": getattr(text, "max_position_embeddings", None),
        "modules": modules,
        "head": head,
        "head_names": heads,
    }


def _linear_shape(module: Any) -> tuple[int, int] | None:
    """(in_features, out_features) of a linear layer (nn.Linear or GPT-2 Conv1D), else None."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, Conv1D):
        return module.weight.shape[0], module.nf
    return None


# ---------------------------------------------------------------------------------------------
# Artifact inspection and checks (bad input -> one ModelError)


def safetensors_shapes(path: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, read from a safetensors header only."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118


def artifact_kind(path: Path, name: str) -> str:
    """"peft" (adapter_config.json) or "full" (config.json); ModelError for anything else."""
    if not path.exists():
        raise ModelError(f"adapter {name!r}: {path} does not exist; expected a PEFT adapter folder "
                         f"(adapter_config.json + {ADAPTER_WEIGHTS}) or a fully fine-tuned model "
                         "folder (config.json + *.safetensors)")
    if not path.is_dir():
        raise ModelError(f"adapter {name!r}: {path} is a file; expected the folder that "
                         f"save_pretrained wrote (adapter_config.json + {ADAPTER_WEIGHTS})")
    if (path / "adapter_config.json").is_file():
        return "peft"
    if (path / "config.json").is_file():
        return "full"
    raise ModelError(f"adapter {name!r}: {path} holds neither adapter_config.json (a PEFT adapter) "
                     "nor config.json (a full model)")


def method_type_of(path: Path) -> str:
    """peftlab method name of an artifact folder: lora, dora, ia3, adalora, ... or full."""
    if not (path / "adapter_config.json").is_file():
        return "full"
    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    peft_type = str(cfg.get("peft_type", "")).lower()
    if peft_type == "lora" and cfg.get("use_dora"):
        return "dora"
    return peft_type or "unknown"


def check_artifact(artifact: dict[str, Any], base: dict[str, Any]) -> None:
    """Refuse an artifact that cannot serve on `base` (from `base_structure`): ModelError.

    PEFT adapters: adapter_config.json and adapter_model.safetensors present; every adapted module
    exists in the base with matching in/out features; the trained head is stored and has the
    base classifier's shapes (num_labels, hidden size). Full models: same architecture and hidden
    size as the base, weights present, head of the task's size.
    """
    name, path = artifact["name"], Path(artifact["path"])
    kind = artifact_kind(path, name)
    if kind != artifact["kind"]:
        raise ModelError(f"adapter {name!r}: {path} is a {kind} artifact, expected a "
                         f"{artifact['kind']} one")
    if kind == "full":
        _check_full(name, path, base)
        return
    weights = path / ADAPTER_WEIGHTS
    if not weights.is_file():
        other = sorted(p.name for p in path.glob("adapter_model.*"))
        hint = f" (found {other}: peftlab reads safetensors only)" if other else ""
        raise ModelError(f"adapter {name!r}: {weights} is missing{hint}; expected the adapter "
                         "weights saved by save_pretrained(safe_serialization=True)")
    cfg = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
    trained_on = cfg.get("base_model_name_or_path")
    shapes = safetensors_shapes(weights)
    from peftlab.sentence_embedding import is_portable, portable_adapter_shapes

    if is_portable(path):  # an adapter of the bare encoder, the head in its own file
        shapes = portable_adapter_shapes(path, shapes)
    where = (f"adapter {name!r} ({path}) does not fit the base model {base['describe']} "
             f"({base['architecture']}, hidden size {base['hidden_size']}); it was trained on "
             + (repr(trained_on) if trained_on else "a local model (its card names it)"))
    head_found: dict[str, list[int]] = {}
    for key, shape in shapes.items():
        rel = relative_key(key)
        parts = rel.split(".")
        if parts[0] in base["head_names"]:
            head_found[rel] = shape
            continue
        cut = next((i for i, p in enumerate(parts) if p.startswith(_ADAPTER_SEGMENTS)), None)
        if cut is None or cut == 0:  # 0: a tuner's model-level tensor (VeRA's shared vera_A)
            continue
        module = ".".join(parts[:cut])
        if module not in base["modules"]:
            raise ModelError(f"{where}: it adapts module {module!r}, which the base does not have "
                             "(a different architecture or number of layers)")
        fan_in, fan_out = base["modules"][module]
        leaf = parts[cut]
        if leaf == "lora_A" and shape[-1] != fan_in:
            raise ModelError(f"{where}: {module} takes {fan_in} input features in the base but "
                             f"the adapter's lora_A expects {shape[-1]} (hidden size differs)")
        if leaf == "lora_B" and shape[0] != fan_out:
            raise ModelError(f"{where}: {module} gives {fan_out} output features in the base but "
                             f"the adapter's lora_B gives {shape[0]} (hidden size differs)")
    if not head_found:
        raise ModelError(
            f"adapter {name!r} ({path}) was saved without its classification head: "
            f"{ADAPTER_WEIGHTS} holds no {'/'.join(base['head_names'])} tensors "
            f"(modules_to_save={cfg.get('modules_to_save')}). Served as is it would use the base "
            f"model's untrained head; save the adapter with modules_to_save={base['head_names']}")
    _check_head(name, head_found, base, artifact)


def _check_head(name: str, found: dict[str, list[int]], base: dict[str, Any],
                artifact: dict[str, Any]) -> None:
    for key, shape in found.items():
        want = base["head"].get(key)
        if want is None:
            raise ModelError(f"adapter {name!r}: head tensor {key!r} does not exist in the base "
                             f"classifier {base['architecture']} (its head tensors: "
                             f"{sorted(base['head'])})")
        if list(shape) != list(want):
            raise ModelError(
                f"adapter {name!r}: head tensor {key} has shape {shape} but the base classifier "
                f"for task {artifact.get('task')!r} ({artifact.get('num_labels')} labels, hidden "
                f"size {base['hidden_size']}) expects {want}")


def _check_full(name: str, path: Path, base: dict[str, Any]) -> None:
    cfg = json.loads((path / "config.json").read_text(encoding="utf-8"))
    text = cfg.get("text_config") or cfg
    if text.get("model_type") != base["model_type"] or (
            base["hidden_size"] is not None and text.get("hidden_size") != base["hidden_size"]):
        raise ModelError(
            f"full model {name!r} ({path}) is a {text.get('model_type')} model with hidden size "
            f"{text.get('hidden_size')}; expected a fine-tune of the base {base['describe']} "
            f"({base['model_type']}, hidden size {base['hidden_size']})")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ModelError(f"full model {name!r}: {path} has no *.safetensors weights")
    shapes: dict[str, list[int]] = {}
    for f in files:
        shapes.update(safetensors_shapes(f))
    head = {k: v for k, v in shapes.items() if k.split(".")[0] in base["head_names"]}
    if not head:
        raise ModelError(f"full model {name!r} ({path}) was saved without its classification head "
                         f"({'/'.join(base['head_names'])} tensors missing)")
    _check_head(name, head, base, {"task": None, "num_labels": cfg.get("num_labels")})


# ---------------------------------------------------------------------------------------------
# Head tensors: what the served model uses vs what the artifact stores


def artifact_head(artifact: dict[str, Any], head_names: list[str]) -> dict[str, Any]:
    """Head tensors stored in the artifact, keyed like the base model ("score.weight"): numpy."""
    from safetensors import safe_open

    from peftlab.sentence_embedding import HEAD_WEIGHTS

    path = Path(artifact["path"])
    files = [path / ADAPTER_WEIGHTS, path / HEAD_WEIGHTS] if artifact["kind"] == "peft" else (
        sorted(path.glob("*.safetensors")))
    out = {}
    for file in files:
        if not file.is_file():
            continue
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118
                rel = relative_key(key)
                if rel.split(".")[0] in head_names:
                    out[rel] = f.get_tensor(key).float().numpy()
    return out


def served_head(model: Any, adapter: str | None = None) -> dict[str, Any]:
    """Head tensors the model actually computes with for `adapter` (PEFT) or itself: numpy."""
    from peftlab.models import head_module_names

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    out = {}
    for h in head_module_names(inner):
        module = getattr(inner, h)
        copies = getattr(module, "modules_to_save", None)  # PEFT's ModulesToSaveWrapper
        if copies is not None:
            active = adapter or _active(model)
            # (torch ModuleDict has no .get)
            module = copies[active] if active in copies else module.original_module  # noqa: SIM401
        for n, p in module.named_parameters():
            out[f"{h}.{n}"] = p.detach().float().cpu().numpy()
    return out


def _active(model: Any) -> str | None:
    active = getattr(model, "active_adapter", None)
    return active[0] if isinstance(active, list) else active


def head_names_of(model: Any) -> list[str]:
    from peftlab.models import head_module_names

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return head_module_names(inner)


def for_serving(model: Any) -> Any:
    """`model` set up the same way whatever it was loaded from, returned for chaining: its
    config's `use_cache` off (on the text config too, for composite configs).

    A classifier never reuses a key/value cache, but a decoder whose config says use_cache
    builds one on every forward. A fully fine-tuned model is saved from training, where the
    cache is off, while the base an adapter loads onto (unmerged, merged) keeps the pretrained
    config's `use_cache: true`: served as loaded, the merged and unmerged models of a decoder
    pay for a cache the full model does not, a difference of configuration, not of serving
    strategy. Encoders (BERT) ignore the flag."""
    configs = [getattr(model, "config", None)]
    if configs[0] is not None and hasattr(configs[0], "get_text_config"):
        configs.append(configs[0].get_text_config())
    for cfg in configs:
        if cfg is not None and getattr(cfg, "use_cache", False):
            cfg.use_cache = False
    return model


def own_parameters(model: Any) -> Any:
    """`model` with every CPU parameter and buffer copied into memory of the process's own
    (torch's allocator: 64-byte aligned, anonymous), returned for chaining.

    transformers leaves weights loaded from safetensors as views into the memory-mapped file, at
    whatever address the file's header length puts them (all-MiniLM-L6-v2's own file: 24 bytes
    past a 64-byte boundary; a file saved by a run: 32), while an adapter merged into the base
    writes into those views. Two models of one architecture then read their weights from
    differently aligned, differently backed memory, and time differently for that alone
    (`benchmarks/merged_vs_full.py`). The latency comparisons serve every model from its own
    copy, so they compare architectures, not file headers. Device tensors are left as they are
    (copied to the device already). Shared tensors (tied embeddings) stay shared.
    """
    import torch

    copies: dict[tuple[Any, ...], Any] = {}
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.device.type != "cpu":
                continue
            key = (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
            if key not in copies:
                copies[key] = t.data.clone(memory_format=torch.contiguous_format)
            t.data = copies[key]
    return model


def release_memory(device: str) -> None:
    """Give freed model memory back (Python objects, CUDA cache, glibc heap) between loads, so
    the next measurement does not start from the previous model's leftovers."""
    gc.collect()
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


# ---------------------------------------------------------------------------------------------
# Page cache: make the first load as cold as the OS allows, and say how cold it was


def resident_bytes(path: Path) -> int | None:
    """Bytes of `path` currently in the OS page cache (mincore on a read-only mapping; Linux).

    None where it cannot be measured. Mapping a file does not read it, so this does not warm it.
    """
    if not sys.platform.startswith("linux"):
        return None
    size = path.stat().st_size
    if size == 0:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            return None
        try:
            pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                return None
            resident = sum(1 for b in bytes(vec) if b & 1)
            return min(resident * mmap.PAGESIZE, size)
        finally:
            libc.munmap(ctypes.c_void_p(addr), size)
    finally:
        os.close(fd)


def drop_page_cache(files: list[Path]) -> dict[str, Any]:
    """Ask the OS to evict `files` from the page cache before a cold load; report what happened.

    fsync first (dirty pages, e.g. an artifact written moments ago, cannot be evicted), then
    posix_fadvise(POSIX_FADV_DONTNEED). This is advisory: pages mapped by another process stay,
    and nothing is done to the drive's own cache. Dropping the whole cache (writing to
    /proc/sys/vm/drop_caches) needs root and is not attempted. The record keeps the resident
    bytes before and after (mincore), so a cold load is never claimed without evidence.
    """
    total = sum(f.stat().st_size for f in files)
    before = _sum_resident(files)
    errors = []
    advise = getattr(os, "posix_fadvise", None)
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            if advise is not None:
                try:
                    advise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                except OSError as err:
                    errors.append(f"{f.name}: {err.strerror}")
        finally:
            os.close(fd)
    after = _sum_resident(files)
    return {
        "method": "fsync + posix_fadvise(POSIX_FADV_DONTNEED)" if advise else
                  "none (posix_fadvise is not available on this platform)",
        "files": [str(f) for f in files],
        "file_bytes": total,
        "resident_bytes_before": before,
        "resident_bytes_after": after,
        "errors": errors,
        "cold": after == 0 if after is not None else None,
    }


def _sum_resident(files: list[Path]) -> int | None:
    values = [resident_bytes(f) for f in files]
    return None if any(v is None for v in values) else sum(values)
