"""LoRA (and DoRA, rsLoRA, PiSSA/OLoRA/gaussian initialisations) through PEFT's LoraConfig."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from peftlab.methods.base import Method, MethodParams, register, wrap_peft


class LoraParams(MethodParams):
    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None  # None: PEFT's per-model default
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = False
    use_dora: bool = False
    # True = PEFT's default (Kaiming A, zero B); also gaussian, pissa, pissa_niter_N, olora, ...
    init: bool | str = True


def lora_fields(params: dict[str, Any]) -> dict[str, Any]:
    """The LoRA family's shared parameters (LoRA, DoRA, QLoRA, AdaLoRA) as PEFT config fields."""
    return {"lora_alpha": params["alpha"], "lora_dropout": params["dropout"],
            "target_modules": params["target_modules"]}


@register
class Lora(Method):
    name = "lora"
    Params = LoraParams
    supports_mixed_batch = True
    exact_low_rank = True  # W + scaling * B A, read from the factors
    fast_path = True

    def peft_config(self, params: dict[str, Any], head_names: list[str]):
        from peft import LoraConfig, TaskType

        return LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=params["r"],
            **lora_fields(params),
            bias=params["bias"],
            use_rslora=params["use_rslora"],
            use_dora=params["use_dora"],
            init_lora_weights=params["init"],
            # the freshly initialised classification head must be trained and saved with the adapter
            modules_to_save=head_names,
        )

    def prepare(self, model, params, *, head_names, total_steps):
        return wrap_peft(model, self.peft_config(params, head_names), head_names)


class DoraParams(LoraParams):
    use_dora: bool = True


@register
class Dora(Lora):
    """LoRA with weight decomposition (Liu et al. 2024); PEFT cannot mix DoRA adapters in a batch."""

    name = "dora"
    Params = DoraParams
    supports_mixed_batch = False
    exact_low_rank = False  # the magnitude vector rescales the merged columns
    fast_path = False  # the fused kernel has no magnitude vector
