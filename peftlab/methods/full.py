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
    merge_refusal = "a fully fine-tuned model has no adapter to merge"
    needs_base = False

    def prepare(self, model, params: dict[str, Any], *, head_names: list[str], total_steps: int):
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    def save(self, model, out_dir: Path, *, base_name: str | None = None) -> None:
        model.save_pretrained(out_dir, safe_serialization=True)

    def load(self, base, artifact_dir: Path, *, adapter_name: str = "default"):
        # A fully fine-tuned model is its own artifact: load it whole, same class as the base.
        model = type(base).from_pretrained(artifact_dir, use_safetensors=True, dtype=base.dtype)
        return model.to(base.device)

    def load_standalone(self, artifact_dir: Path, *, dtype: Any, device: Any,
                        trust_remote_code: bool = False):
        from transformers import AutoConfig

        from peftlab.errors import ModelError
        from peftlab.models import saved_classifier_class

        try:
            config = AutoConfig.from_pretrained(artifact_dir, trust_remote_code=trust_remote_code)
            model = saved_classifier_class(config).from_pretrained(
                artifact_dir, config=config, dtype=dtype, use_safetensors=True,
                trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot load the fully fine-tuned model in {artifact_dir}: "
                             f"{str(err).splitlines()[0]}") from err
        return model.to(device).eval()
