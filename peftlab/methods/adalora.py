"""AdaLoRA (Zhang et al. 2023): LoRA with a rank budget reallocated during training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from peftlab.methods.base import Method, MethodParams, register, wrap_peft
from peftlab.methods.lora import lora_fields


class AdaLoraParams(MethodParams):
    init_r: int = Field(12, gt=0)
    target_r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] | None = None
    tinit_ratio: float = Field(0.1, ge=0, lt=1)  # share of steps before pruning starts
    tfinal_ratio: float = Field(0.3, ge=0, lt=1)  # share of final steps at the target budget
    delta_t: int = Field(1, gt=0)
    orth_reg_weight: float = Field(0.5, ge=0)

    @field_validator("target_r")
    @classmethod
    def _within_init_r(cls, v: int, info: ValidationInfo) -> int:
        # the budget only shrinks: PEFT prunes from init_r down to target_r
        init_r = info.data.get("init_r")  # absent when init_r itself was refused
        if init_r is not None and v > init_r:
            raise ValueError(f"must be <= init_r ({init_r})")
        return v


class _RankAllocation:
    """Calls PEFT's update_and_allocate after each optimizer step, before gradients are zeroed.

    The Trainer does not know AdaLoRA; PEFT documents that the training loop must make this call.
    """

    def __new__(cls):
        from transformers import TrainerCallback

        class RankAllocation(TrainerCallback):
            def on_optimizer_step(self, args, state, control, model=None, **kwargs):
                model.base_model.update_and_allocate(state.global_step)

        return RankAllocation()


@register
class AdaLora(Method):
    name = "adalora"
    Params = AdaLoraParams

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import AdaLoraConfig, TaskType

        tinit = int(params["tinit_ratio"] * total_steps)
        tfinal = int(params["tfinal_ratio"] * total_steps)
        if tinit + tfinal >= total_steps:  # PEFT requires a budgeting phase
            tinit, tfinal = 0, 0
        cfg = AdaLoraConfig(
            task_type=TaskType.SEQ_CLS,
            init_r=params["init_r"],
            target_r=params["target_r"],
            **lora_fields(params),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=params["delta_t"],
            orth_reg_weight=params["orth_reg_weight"],
            total_step=max(total_steps, 1),
            modules_to_save=head_names,
        )
        return wrap_peft(model, cfg, head_names)

    def callbacks(self):
        return [_RankAllocation()]
