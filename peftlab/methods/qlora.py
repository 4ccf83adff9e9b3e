"""QLoRA (Dettmers et al. 2023): LoRA on a 4-bit NF4 base via bitsandbytes; CUDA only.

The base is loaded through `base_load_options`, the same hook for training, reloading a run and
serving it: a `BitsAndBytesConfig` (4-bit NF4, double quantisation, bf16 compute by default), the
model placed on the current CUDA device with `device_map` (bitsandbytes weights cannot be moved
with `.to`), the classification head kept in the compute dtype. `prepare_model_for_kbit_training`
then readies it for training (norms in float32, input gradients for checkpointing) and LoRA goes
on top. Merged serving is refused: folding the update into NF4 weights re-quantises them, so the
merged model is a different, rounded model rather than the one that was evaluated.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from peftlab.errors import SpecError
from peftlab.methods.base import register, wrap_peft
from peftlab.methods.lora import Lora, LoraParams

# Modules never quantised: the task heads (peftlab trains and saves them in full precision).
HEAD_MODULES = ["score", "classifier", "pre_classifier"]


class QLoraParams(LoraParams):
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    dropout: float = Field(0.05, ge=0, lt=1)


@register
class QLora(Lora):
    name = "qlora"
    Params = QLoraParams
    needs_cuda = True
    quantized_base = True  # 4-bit weights placed by device_map: read where they are
    supports_mixed_batch = True
    # exact_low_rank (from Lora): the update is scaling * B A on a 4-bit base; the fast path
    # would fuse the packed 4-bit weights as if they were plain ones
    fast_path = False
    supports_merge = False
    merge_refusal = ("merging into a 4-bit NF4 base re-quantises the merged weights, so the "
                     "merged model is not the evaluated one; serve the adapter unmerged, or merge "
                     "into a bf16 copy of the base outside peftlab")

    def check(self, params, *, linear_names, device, where):
        super().check(params, linear_names=linear_names, device=device, where=where)
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SpecError(
                f"{where}: method 'qlora' needs the bitsandbytes package (pip install bitsandbytes)"
            ) from None

    def quantization_config(self, params: dict[str, Any]):
        """The BitsAndBytesConfig the base model is loaded with."""
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params["quant_type"],
            bnb_4bit_use_double_quant=params["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, params["compute_dtype"]),
            llm_int8_skip_modules=list(HEAD_MODULES),
        )

    def base_load_options(self, params, *, device):
        import torch

        # device_map places every weight at load time ("cuda" without an index: device 0).
        index = torch.device(device).index
        return {"quantization_config": self.quantization_config(params),
                "device_map": {"": index if index is not None else 0},
                "dtype": params["compute_dtype"]}

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
        return wrap_peft(model, self.peft_config(params, head_names), head_names)
