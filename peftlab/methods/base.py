"""The interface every fine-tuning method follows, and the registry.

Adding a method is one file in this folder defining a `Method` subclass with `@register`, plus one
import line in `peftlab/methods/__init__.py`. Full fine-tuning is a method like the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from peftlab.errors import SpecError

if TYPE_CHECKING:
    import torch.nn as nn


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Method:
    """One way of fine-tuning a base model.

    Lifecycle: `validate_params` at spec load (cheap, no model), `check` once the model's structure
    is known (target modules exist, the device can run it), `prepare` before training, `save` after,
    `load` to get the tuned model back onto a freshly loaded base.
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    is_peft: ClassVar[bool] = True
    supports_merge: ClassVar[bool] = True  # merge_and_unload gives a plain model
    supports_mixed_batch: ClassVar[bool] = False  # PEFT's adapter_names=[...] in one forward pass
    needs_cuda: ClassVar[bool] = False

    def validate_params(self, params: dict[str, Any], *, where: str) -> dict[str, Any]:
        try:
            p = self.Params(**params)
        except ValidationError as e:
            from peftlab.spec import _format_validation

            raise SpecError(_format_validation(e, where)) from None
        return p.model_dump(mode="json")

    def check(self, params: dict[str, Any], *, linear_names: list[str] | None, device: str,
              where: str) -> None:
        """Refuse, before any training, what this model or device cannot do."""
        if self.needs_cuda and device != "cuda":
            raise SpecError(
                f"{where}: method {self.name!r} needs a CUDA device, but this study runs on "
                f"{device!r}"
            )

    def prepare(self, model: nn.Module, params: dict[str, Any], *, head_names: list[str],
                total_steps: int) -> nn.Module:
        raise NotImplementedError

    def save(self, model: nn.Module, out_dir: Path) -> None:
        """Save in the library's own format (PEFT adapter dir or save_pretrained safetensors)."""
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base: nn.Module, artifact_dir: Path) -> nn.Module:
        """Return the tuned model built on `base` (a freshly loaded pretrained classifier)."""
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, artifact_dir, is_trainable=False)
        return model

    def callbacks(self) -> list[Any]:
        """Trainer callbacks the method needs (e.g. AdaLoRA's rank allocation)."""
        return []


_REGISTRY: dict[str, Method] = {}


def register(cls: type[Method]) -> type[Method]:
    _REGISTRY[cls.name] = cls()
    return cls


def get_method(name: str | None, *, where: str = "method") -> Method:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise SpecError(
            f"{where}: unknown method type {name!r}; expected one of {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name]


def method_names() -> list[str]:
    return sorted(_REGISTRY)


def check_targets(targets: list[str] | str | None, linear_names: list[str] | None,
                  where: str) -> None:
    """Target modules must name linear layers the model has (PEFT matches name suffixes).

    `linear_names` is None when the model's structure is not known yet (no local config).
    """
    if targets is None or targets == "all-linear" or linear_names is None:
        return
    if isinstance(targets, str):
        targets = [targets]
    unknown = [t for t in targets if t.split(".")[-1] not in linear_names]
    if unknown:
        raise SpecError(
            f"{where}.target_modules: {unknown} not found in the model; its linear modules are "
            f"{sorted(linear_names)} (or use 'all-linear')"
        )
