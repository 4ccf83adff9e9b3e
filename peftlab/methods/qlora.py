"""QLoRA (Dettmers et al. 2023): LoRA on a 4-bit NF4 base via bitsandbytes; CUDA only."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from peftlab.errors import SpecError
from peftlab.methods.base import register
from peftlab.methods.lora import Lora, LoraParams


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
    supports_mixed_batch = True

    def check(self, params, *, linear_names, device, where):
        super().check(params, linear_names=linear_names, device=device, where=where)
        try:
            import bitsandbytes  # noqa: F401
        except ImportError:
            raise SpecError(
                f"{where}: method 'qlora' needs the bitsandbytes package (pip install bitsandbytes)"
            ) from None

    def quantization_config(self, params):
        """Passed to from_pretrained when the base model is loaded for this method."""
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=params["quant_type"],
            bnb_4bit_use_double_quant=params["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, params["compute_dtype"]),
        )

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import get_peft_model, prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
        return get_peft_model(model, self.peft_config(params, head_names))
