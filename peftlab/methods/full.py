"""Full fine-tuning: every parameter trainable; saved with save_pretrained (safetensors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftlab.methods.base import Method, MethodParams, register


class FullParams(MethodParams):
    pass


@register
class Full(Method):
    name = "full"
    Params = FullParams
    is_peft = False
    supports_merge = False

    def prepare(self, model, params: dict[str, Any], *, head_names: list[str], total_steps: int):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def load(self, base, artifact_dir: Path):
        # A fully fine-tuned model is its own artifact: load it whole, same class as the base.
        model = type(base).from_pretrained(artifact_dir, use_safetensors=True, dtype=base.dtype)
        return model.to(base.device)
