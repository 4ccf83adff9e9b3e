"""Introspection of a loaded model (or a PEFT wrapper around one): encoder or decoder, the task
head's modules, the backbone's linear layers (LoRA targets), parameter counts.

    head_module_names(model)     # ["score"] (Llama), ["classifier"] (BERT)
    linear_module_names(model)   # ["down_proj", "gate_proj", ...]
"""

from __future__ import annotations

from typing import Any

# Path segments of PEFT's own layers (adapter matrices, copies of saved modules): not LoRA targets.
_PEFT_SEGMENTS = ("lora_", "modules_to_save", "original_module")


def _unwrap(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def model_family(model_or_config: Any) -> str:
    """"decoder" (causal LM: default pooling "last") or "encoder" (masked LM: pooling "mean").

    Decided from the model type: a type with a masked-LM class in transformers is an encoder (BERT
    also has a causal-LM class, so that mapping is checked first), one with only a causal-LM class
    is a decoder; unknown types fall back to the architecture names, then "encoder".
    """
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    config = getattr(_unwrap(model_or_config), "config", model_or_config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    model_type = getattr(text_config, "model_type", None)
    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "encoder"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "decoder"
    architectures = getattr(config, "architectures", None) or []
    if any("CausalLM" in a or "LMHead" in a for a in architectures):
        return "decoder"
    return "encoder"


def head_module_names(model: Any) -> list[str]:
    """Top-level modules outside the backbone that hold parameters: the task head.

    ["score"] for Llama, ["classifier"] for BERT/RoBERTa, ["pre_classifier", "classifier"] for
    DistilBERT. PEFT needs these in `modules_to_save`, or the trained head is lost on save.
    """
    model = _unwrap(model)
    backbone = getattr(model, "base_model", model)
    return [
        name for name, child in model.named_children()
        if child is not backbone and any(True for _ in child.parameters())
    ]


def linear_module_names(model: Any) -> list[str]:
    """Sorted distinct leaf names of the backbone's linear layers (candidate LoRA targets).

    Tiny/real Llama: ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"].
    The task head is excluded; GPT-2 style `Conv1D` layers count as linear; inside a PEFT model the
    wrapped layer is reported under its original name and the adapter's own layers are skipped.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    model = _unwrap(model)
    heads = tuple(head_module_names(model))
    names: set[str] = set()
    for qualified, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        parts = qualified.split(".")
        if parts[0] in heads or any(p.startswith(_PEFT_SEGMENTS) for p in parts):
            continue
        if parts[-1] == "base_layer" and len(parts) > 1:  # PEFT LoRA wrapper around the original
            parts = parts[:-1]
        names.add(parts[-1])
    return sorted(names)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; tied weights count once; a bitsandbytes 4-bit weight
    counts its unpacked values (QLoRA's base is not a quarter of the model's size in weights)."""
    trainable = total = 0
    for param in model.parameters():  # `parameters()` already yields a shared tensor once
        n = param_count(param)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def param_count(param: Any) -> int:
    """Values held by one parameter. A bitsandbytes `Params4bit` packs two 4-bit values per byte
    of its storage dtype, so its `numel()` is 2 x itemsize times too small; the same correction
    as PEFT's `get_nb_trainable_parameters`, which counts only PeftModels."""
    n = param.numel()
    if type(param).__name__ == "Params4bit":
        storage = getattr(param, "quant_storage", None)
        n *= 2 * (storage.itemsize if storage is not None else 1)
    return n
