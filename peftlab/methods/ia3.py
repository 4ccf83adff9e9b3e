"""(IA)^3: learned rescaling vectors (Liu et al. 2022) through PEFT's IA3Config."""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationInfo, field_validator

from peftlab.methods.base import Method, MethodParams, register, wrap_peft


class IA3Params(MethodParams):
    target_modules: list[str] | Literal["all-linear"] | None = None  # None: PEFT's default
    feedforward_modules: list[str] | None = None  # must be a subset of target_modules

    @field_validator("feedforward_modules")
    @classmethod
    def _subset_of_targets(cls, v: list[str] | None, info: ValidationInfo) -> list[str] | None:
        tm = info.data.get("target_modules")  # None or "all-linear": PEFT picks, nothing to check
        if v and isinstance(tm, list) and not set(v) <= set(tm):
            raise ValueError(f"must be a subset of target_modules {tm}")
        return v


@register
class IA3(Method):
    name = "ia3"
    Params = IA3Params

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import IA3Config, TaskType

        cfg = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=params["target_modules"],
            feedforward_modules=params["feedforward_modules"],
            modules_to_save=head_names,
        )
        return wrap_peft(model, cfg, head_names)
