"""(IA)^3: learned rescaling vectors (Liu et al. 2022) through PEFT's IA3Config."""

from __future__ import annotations

from typing import Literal

from peftlab.methods.base import Method, MethodParams, register, wrap_peft


class IA3Params(MethodParams):
    target_modules: list[str] | Literal["all-linear"] | None = None  # None: PEFT's default
    feedforward_modules: list[str] | None = None  # must be a subset of target_modules


@register
class IA3(Method):
    name = "ia3"
    Params = IA3Params

    def check(self, params, *, linear_names, device, where):
        super().check(params, linear_names=linear_names, device=device, where=where)
        ff, tm = params.get("feedforward_modules"), params.get("target_modules")
        if ff and isinstance(tm, list) and not set(ff) <= set(tm):
            from peftlab.errors import SpecError

            raise SpecError(f"{where}.feedforward_modules: {ff} must be a subset of {tm}")

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import IA3Config, TaskType

        cfg = IA3Config(
            task_type=TaskType.SEQ_CLS,
            target_modules=params["target_modules"],
            feedforward_modules=params["feedforward_modules"],
            modules_to_save=head_names,
        )
        return wrap_peft(model, cfg, head_names)
