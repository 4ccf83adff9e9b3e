"""Any PEFT method from its own config class: `{type: peft, config: VeraConfig, params: {...}}`.

PEFT has about forty method types; peftlab has a file of its own only for the few it tunes
specially (LoRA's fast path, AdaLoRA's rank allocation, QLoRA's quantised base). Every other one
is trained through this method: the spec names a PEFT config class and its keyword arguments,
and PEFT's config class is the validator (it is instantiated at spec load, so an unknown class,
a keyword it does not take, or a value its `__post_init__` refuses is one error naming the spec
key). `task_type` and `modules_to_save` are peftlab's to set, as for every other method: the
trained head is saved with the adapter.

What the rest of the pipeline asks of a method (can it be merged, can adapters be mixed in one
batch) is asked of PEFT, per configuration (`Method.for_params`), not declared:

- merge: the tuner's layer classes implement `merge` (PEFT's `BaseTunerLayer.merge` raises
  NotImplementedError); prompt-based methods (virtual tokens, no weight update) do not merge.
  A mergeable method's weight delta is read by drift from the merged weights.
- mixed batches: the tuner's layer classes implement `_mixed_batch_forward` (PEFT's
  `adapter_names=[...]` routing, LoRA and a few others).
- prompt-based methods: how PEFT hands the model their virtual tokens (`prompt_input`:
  embeddings in front of the input's, a key/value prefix, or a prompt per task id); the
  sentence-embedding head takes the first only (prompt tuning, p-tuning).
"""

from __future__ import annotations

import dataclasses
from functools import cache
from typing import Any

from peftlab.errors import SpecError
from peftlab.methods.base import Method, check_targets, register, wrap_peft

# Set by peftlab for every method: the task type from the head, the trained head modules.
RESERVED = ("task_type", "modules_to_save")


@cache
def config_classes() -> dict[str, type]:
    """{class name: PEFT config class} of every PEFT method type PEFT registers."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {cls.__name__: cls for cls in PEFT_TYPE_TO_CONFIG_MAPPING.values()}


def config_class(name: Any, where: str) -> type:
    classes = config_classes()
    if not isinstance(name, str) or name not in classes:
        raise SpecError(f"{where}: {name!r} is not a PEFT config class; PEFT "
                        f"{_peft_version()} has {', '.join(sorted(classes))}")
    return classes[name]


def _peft_version() -> str:
    import peft

    return peft.__version__


def _is_prompt_learning(cls: type) -> bool:
    from peft import PromptLearningConfig

    return issubclass(cls, PromptLearningConfig)


def _layer_classes(cls: type) -> list[type]:
    """The tuner's layer class and every subclass PEFT defines (Linear, Embedding, ...)."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    peft_type = next(t for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if c is cls)
    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type)
    base = getattr(tuner, "tuner_layer_cls", None)
    if base is None:
        return []
    out, todo = [], [base]
    while todo:
        c = todo.pop()
        out.append(c)
        todo += c.__subclasses__()
    return out


def _prompt_input(cls: type) -> str:
    """How PEFT's sequence-classification forward (`PeftModelForSequenceClassification`, peft
    0.21) hands a prompt-based method's virtual tokens to the model: "inputs_embeds" (embeddings
    in front of the input's: prompt tuning, p-tuning), "past_key_values" (a key/value prefix
    in every layer: prefix tuning, cartridges) or "task_ids" (one prompt per task, chosen by
    task ids peftlab does not pass: multitask prompt tuning)."""
    from peft import PeftType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    peft_type = next(t for t, c in PEFT_TYPE_TO_CONFIG_MAPPING.items() if c is cls)
    if peft_type in (PeftType.PREFIX_TUNING, PeftType.CARTRIDGE):
        return "past_key_values"
    if peft_type == PeftType.MULTITASK_PROMPT_TUNING:
        return "task_ids"
    return "inputs_embeds"


@cache
def capabilities(config: str) -> dict[str, Any]:
    """What PEFT's implementation of `config` (a config class name) can do, asked of its
    classes: {"supports_merge", "merge_refusal", "supports_mixed_batch"}."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    cls = config_classes()[config]
    if _is_prompt_learning(cls):
        return {"supports_merge": False, "supports_mixed_batch": False, "feeds_embeddings": True,
                "merge_refusal": f"{config} is prompt-based (virtual tokens): it has no weight "
                                 "update to merge",
                "prompt_input": _prompt_input(cls)}
    layers = _layer_classes(cls)
    merge = any(c.merge is not BaseTunerLayer.merge for c in layers)
    return {"supports_merge": merge,
            "merge_refusal": None if merge else f"PEFT's {config} layers do not implement merge",
            "supports_mixed_batch": any(hasattr(c, "_mixed_batch_forward") for c in layers)}


def _field_types(cls: type) -> dict[str, Any]:
    import typing

    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001  (a hint that does not resolve: PEFT's own check only)
        return {}


def build_config(config: str, kwargs: dict[str, Any], *, where: str) -> Any:
    """PEFT's config object for a sequence-classification run; SpecError naming the key."""
    from peft import TaskType

    cls = config_class(config, f"{where}.config")
    if not isinstance(kwargs, dict):
        raise SpecError(f"{where}.params: expected a mapping of {config} keyword arguments, "
                        f"got {kwargs!r}")
    fields = {f.name for f in dataclasses.fields(cls) if f.init}
    for key in kwargs:
        if key in RESERVED:
            raise SpecError(f"{where}.params.{key}: set by peftlab (the task's head), not by the "
                            "spec")
        if key not in fields:
            raise SpecError(f"{where}.params.{key}: not a keyword of PEFT's {config}; it takes "
                            f"{', '.join(sorted(fields - set(RESERVED)))}")
    hints = _field_types(cls)
    for key, value in kwargs.items():
        if key in hints:
            _check_type(hints[key], value, f"{where}.params.{key}", config)
    try:
        return cls(task_type=TaskType.SEQ_CLS, **kwargs)
    except (TypeError, ValueError) as err:
        raise SpecError(f"{where}.params: PEFT's {config} refuses these values: "
                        f"{str(err).splitlines()[0]}") from None


def _check_type(hint: Any, value: Any, where: str, config: str) -> None:
    """The value against the config field's annotation (PEFT's dataclasses do not check types:
    r: "eight" would fail only at training)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint)
    except Exception:  # noqa: BLE001  (an annotation pydantic cannot read: left to PEFT)
        return
    try:
        adapter.validate_python(value, strict=False)
    except ValidationError as err:
        msg = err.errors()[0]["msg"] if err.errors() else str(err)
        raise SpecError(f"{where}: {value!r} is not a valid value for {config} ({msg})") from None


@register
class Peft(Method):
    """Any PEFT method type, by its config class. Params: {"config": name, "params": {...}}."""

    name = "peft"
    # Asked of PEFT per configuration (`for_params`); these are the answers when it is unknown.
    supports_merge = False
    merge_refusal = "the PEFT config is not known"
    supports_mixed_batch = False

    def validate_params(self, params: dict[str, Any], *, where: str) -> dict[str, Any]:
        extra = sorted(set(params) - {"config", "params"})
        if extra:
            raise SpecError(f"{where}.{extra[0]}: not a setting of method type 'peft'; give "
                            "`config` (a PEFT config class, e.g. VeraConfig) and `params` (its "
                            "keyword arguments)")
        if "config" not in params:
            raise SpecError(f"{where}.config: required: the PEFT config class (e.g. VeraConfig, "
                            "LoHaConfig)")
        kwargs = params.get("params") or {}
        build_config(params["config"], kwargs, where=where)
        return {"config": params["config"], "params": dict(kwargs)}

    def for_params(self, params: dict[str, Any] | None) -> Method:
        if not params or params.get("config") not in config_classes():
            return self
        view = Peft()
        for key, value in capabilities(params["config"]).items():
            setattr(view, key, value)
        return view

    def check(self, params, *, linear_names, device, where):
        super().check({}, linear_names=linear_names, device=device, where=where)
        targets = (params.get("params") or {}).get("target_modules")
        if isinstance(targets, list):  # a string is a regex (or all-linear) for PEFT to match
            check_targets(targets, linear_names, f"{where}.params")

    def prepare(self, model, params, *, head_names, total_steps):
        cfg = build_config(params["config"], params.get("params") or {}, where="method")
        return wrap_peft(model, cfg, head_names)
