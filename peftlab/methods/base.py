"""The interface every fine-tuning method follows, and the registry.

Adding a method is one file in this folder defining a `Method` subclass with `@register`, plus one
import line in `peftlab/methods/__init__.py`. Full fine-tuning is a method like the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from peftlab.errors import SpecError, format_validation
from peftlab.registry import Registry

if TYPE_CHECKING:
    import torch.nn as nn


class MethodParams(BaseModel):
    """Base of every method's parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Method:
    """One way of fine-tuning a base model.

    Lifecycle: `validate_params` at spec load (cheap, no model), `check` once the model's structure
    is known (target modules exist, the device can run it), `base_load_options` when the base is
    loaded (for training, reloading and serving alike: dtype, device map, quantisation),
    `prepare` before training, `save` after, `load` to get the tuned model back onto a freshly
    loaded base (or, for methods whose artifact is a whole model, `load_standalone`).
    """

    name: ClassVar[str]
    Params: ClassVar[type[MethodParams]] = MethodParams
    is_peft: ClassVar[bool] = True
    supports_merge: ClassVar[bool] = True  # merge_and_unload gives a plain model
    # Why a merged deployment is refused, when it is (shown in the bench table and the report).
    merge_refusal: ClassVar[str | None] = None
    supports_mixed_batch: ClassVar[bool] = False  # PEFT's adapter_names=[...] in one forward pass
    needs_cuda: ClassVar[bool] = False
    needs_base: ClassVar[bool] = True  # False: the artifact is a whole model (full fine-tuning)
    # Each adapted matrix's update is exactly scaling * B @ A (no magnitude vector, no SVD-form
    # reparametrisation), so weight analysis reads it from the adapter factors, free of the
    # rounding a merged matrix carries (`stages.drift`).
    exact_low_rank: ClassVar[bool] = False
    # The base is loaded quantised and placed at load time by `base_load_options` (device_map):
    # its weights are read on the device the method put them on, never moved to the CPU first.
    quantized_base: ClassVar[bool] = False
    # `bench.fastpath.fused_lora` can serve its adapters (plain LoRA factors on linear layers):
    # the bench's "+fast" variant applies.
    fast_path: ClassVar[bool] = False
    # A prompt-based method (virtual tokens: prompt tuning, prefix, p-tuning): the model is not
    # fed the input ids alone. `prompt_input` says how PEFT feeds the virtual tokens:
    # "inputs_embeds" (in front of the input's embeddings), "past_key_values" (a key/value
    # prefix in every layer) or "task_ids" (a prompt per task); the sentence-embedding head
    # takes the first only (`generic._prompt_input`).
    feeds_embeddings: ClassVar[bool] = False
    prompt_input: ClassVar[str | None] = None

    def for_params(self, params: dict[str, Any] | None) -> Method:
        """This method as configured by `params` (a run's validated parameters; None: unknown),
        whose capability attributes (`supports_merge`, `supports_mixed_batch`, ...) answer for
        that configuration. Default: the method itself (its capabilities are its class's); the
        generic PEFT method asks PEFT about the configured config class."""
        return self

    def validate_params(self, params: dict[str, Any], *, where: str) -> dict[str, Any]:
        try:
            p = self.Params(**params)
        except ValidationError as e:
            raise SpecError(format_validation(e, where)) from None
        return p.model_dump(mode="json")

    def check(self, params: dict[str, Any], *, linear_names: list[str] | None, device: str,
              where: str) -> None:
        """Refuse, before any training, what this model or device cannot do: a CUDA-only method
        off CUDA, and `target_modules` (for methods that take them) naming no linear layer of the
        model."""
        if self.needs_cuda and device != "cuda":
            raise SpecError(
                f"{where}: method {self.name!r} needs a CUDA device, but this study runs on "
                f"{device!r}"
            )
        if "target_modules" in params:
            check_targets(params["target_modules"], linear_names, where)

    def base_load_options(self, params: dict[str, Any], *, device: str) -> dict[str, Any]:
        """Extra keyword arguments of `models.load_classifier` for this method's base model
        (e.g. QLoRA's `quantization_config` and `device_map`). Default: none."""
        return {}

    def prepare(self, model: nn.Module, params: dict[str, Any], *, head_names: list[str],
                total_steps: int) -> nn.Module:
        raise NotImplementedError

    def save(self, model: nn.Module, out_dir: Path, *, base_name: str | None = None) -> None:
        """Save in the library's own format (PEFT adapter dir or save_pretrained safetensors).

        base_name: what the artifact should name as its base (`base_model_name_or_path` of a PEFT
        adapter): a hub id where the base has one, so the adapter loads elsewhere with plain
        `AutoPeftModelForSequenceClassification`; None keeps what PEFT recorded. It is written
        into adapter_config.json after saving: PEFT's save looks the base up by that name (to see
        whether the vocabulary changed), which must not send an offline machine to the hub.
        """
        import json

        model.save_pretrained(out_dir, safe_serialization=True)
        config = Path(out_dir) / "adapter_config.json"
        if base_name is not None and config.is_file():
            data = json.loads(config.read_text(encoding="utf-8"))
            data["base_model_name_or_path"] = base_name
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")

    def load(self, base: nn.Module, artifact_dir: Path, *, adapter_name: str = "default"
             ) -> nn.Module:
        """Return the tuned model built on `base` (a freshly loaded pretrained classifier)."""
        from peft import PeftModel

        return PeftModel.from_pretrained(base, artifact_dir, adapter_name=adapter_name,
                                         is_trainable=False)

    def load_more(self, model: nn.Module, artifact_dir: Path, *, adapter_name: str) -> None:
        """Add another adapter of this method to a loaded PeftModel (several on one base)."""
        model.load_adapter(artifact_dir, adapter_name=adapter_name, is_trainable=False)

    def load_standalone(self, artifact_dir: Path, *, dtype: Any, device: Any,
                        trust_remote_code: bool = False) -> nn.Module:
        """The tuned model from its artifact alone (methods with `needs_base = False`)."""
        raise NotImplementedError(f"method {self.name!r} needs its base model to load")

    def callbacks(self) -> list[Any]:
        """Trainer callbacks the method needs (e.g. AdaLoRA's rank allocation)."""
        return []


def wrap_peft(model: nn.Module, config: Any, head_names: list[str]) -> nn.Module:
    """get_peft_model, with `modules_to_save` listing the trained head modules once.

    For sequence classification PEFT appends its own guesses ("classifier", "score") to the list
    given, so a Llama adapter would record ['score', 'classifier', 'score']; the wrapped modules
    are decided at this point, so the recorded list is set back to the heads that exist.
    """
    from peft import TaskType, get_peft_model

    if getattr(model, "peftlab_causal_lm", False):
        # a generation task's causal LM (`peftlab.generation`): its LM head writes the text and
        # stays the base's; PEFT's causal-LM wrapper passes generate() through
        config.task_type = TaskType.CAUSAL_LM
        head_names = []
    heads = list(dict.fromkeys(head_names))  # before PEFT extends the list it was given in place
    config.modules_to_save = list(heads)
    peft_model = get_peft_model(model, config)
    for cfg in peft_model.peft_config.values():
        cfg.modules_to_save = list(heads)
    return peft_model


METHODS: Registry[Method] = Registry("method type")


def register(cls: type[Method]) -> type[Method]:
    return METHODS.register(cls)


def get_method(name: str | None, *, where: str = "method") -> Method:
    return METHODS.get(name, where=where)


def method_for(name: str, params: dict[str, Any] | None) -> Method:
    """The registered method `name` configured by a run's `params` (`Method.for_params`): ask
    capabilities of this, not of `get_method`, where the run's parameters are known."""
    return get_method(name).for_params(params)


def method_names() -> list[str]:
    return sorted(METHODS.names())


def methods_with(capability: str) -> list[str]:
    """Sorted names of the registered methods whose `capability` attribute is true
    (e.g. "exact_low_rank")."""
    return sorted(name for name, m in METHODS.items() if getattr(m, capability))


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
