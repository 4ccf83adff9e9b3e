"""Analytical compute of the base model's linear layers and of an adapter's extra path.

    f = linear_flops(peft_model)        # {"base_linear_flops_per_token": ..., "adapter_...": ...}

Counted per token, 1 multiply-accumulate = 2 FLOPs:
- base: every linear layer (nn.Linear, GPT-2 Conv1D) of the model, head included: in x out MACs.
  Attention's QK^T and AV products (which grow with sequence length), norms, activations and
  embedding lookups are not counted: this is the linear-layer floor.
- LoRA (and AdaLoRA, DoRA): per adapted matrix r x (in + out) MACs (x = A x, then B (A x)).
  DoRA also rescales the output (out MACs per token) and, on every call regardless of batch size,
  rebuilds the weight norm ||W + B A|| (out x r x in + out x in MACs), reported per call.
- (IA)^3: one elementwise scale per adapted feature (out, or in for feed-forward layers).
A merged adapter adds nothing: its update lives in W. So the ratio adapter/base is the share of
compute an unmerged adapter adds, the floor below which its measured overhead cannot be compute.
"""

from __future__ import annotations

from typing import Any

# Segments of module names that belong to a PEFT wrapper's internals, not to the base model.
_INTERNAL = ("lora_", "modules_to_save")


def _numel(x: Any) -> int:
    return int(x.weight.numel()) if hasattr(x, "weight") else int(x.numel())


def linear_flops(model: Any, adapters: list[str] | None = None) -> dict[str, Any]:
    """FLOPs per token of the base linear layers and of the active (or given) adapters' paths.

    model: a transformers model or a PeftModel; adapters: which adapters count (default: the
    active one(s)); in multi-adapter serving one adapter serves each request, so the per-token
    adapter cost is the mean over `adapters`. Returns {base_linear_flops_per_token,
    adapter_flops_per_token, adapter_flops_per_call (DoRA norm; 0 otherwise), adapter_share
    (adapter / base, per token), adapted_matrices, adapters}.
    """
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    base_macs = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        if any(part.startswith(_INTERNAL) for part in name.split(".")):
            continue  # adapter internals and PEFT's per-adapter head copies
        base_macs += int(module.weight.numel())

    if adapters is None:
        active = getattr(model, "active_adapters", None) or []
        adapters = list(active) if not isinstance(active, str) else [active]
    per_token, per_call, matrices = _adapter_macs(model, adapters)
    k = max(len(adapters), 1)
    adapter_tok = 2 * per_token / k
    return {
        "base_linear_flops_per_token": 2 * base_macs,
        "adapter_flops_per_token": adapter_tok,
        "adapter_flops_per_call": 2 * per_call / k,
        "adapter_share": adapter_tok / (2 * base_macs) if base_macs else None,
        "adapted_matrices": matrices // k,
        "adapters": adapters,
        "counted": "linear layers only (2 FLOPs per MAC); attention score products, norms, "
                   "activations and embeddings excluded",
    }


def _adapter_macs(model: Any, adapters: list[str]) -> tuple[int, int, int]:
    """(MACs per token, MACs per call, adapted matrices) summed over `adapters`."""
    if not adapters:
        return 0, 0, 0
    try:
        from peft.tuners.ia3 import IA3Layer
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0, 0, 0
    tok = call = matrices = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for a in adapters:
                if a not in module.lora_A:
                    continue
                matrices += 1
                tok += _numel(module.lora_A[a]) + _numel(module.lora_B[a])
                if getattr(module, "use_dora", {}).get(a, False):
                    fan_out, fan_in = module.out_features, module.in_features
                    r = module.r[a]
                    tok += fan_out  # magnitude rescale of the output
                    call += fan_out * r * fan_in + fan_out * fan_in  # ||W + BA|| every forward
        elif isinstance(module, IA3Layer):
            for a in adapters:
                if a in module.ia3_l:
                    matrices += 1
                    tok += _numel(module.ia3_l[a])
    return tok, call, matrices
