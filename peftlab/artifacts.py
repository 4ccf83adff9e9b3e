"""The one place that loads models: the pretrained base, a trained run, and serving setups.

    loader = ModelLoader(study.spec.model, device="cpu")
    base = loader.base(num_labels=2, label_names=["negative", "positive"], seed=0)
    tuned = loader.run(artifact)                    # adapter on a fresh base, or a full model
    served = loader.adapters([a, b], seed=0)        # several adapters on one base (first active)
    merged = loader.merged(artifact, seed=0)        # merge_and_unload, refused where it cannot be

    tokenizer, model = load_run(ctx, run_id)        # a study's finished run, from the store

Every stage (finetune, represent, drift, bench and the one-off bench) loads through here, so the
base is always loaded the same way for a method: its `base_load_options` hook decides dtype,
device map and quantisation (QLoRA's 4-bit base) for training, reloading and serving alike.

An *artifact* is a plain dict, so it can travel to bench worker processes as JSON:

    {"name": "sst2-lora-s1-ab12cd34",      # adapter name inside PEFT (no dots) / display name
     "path": "/abs/runs/<run>/artifact", "kind": "peft" | "full", "task": "sst2",
     "run_id": ..., "method_type": "lora", "params": {...}, "num_labels": 2, "label_names": [...]}

Artifacts of the sentence-embedding head hold the encoder and a head file rather than a
transformers classifier (`peftlab.sentence_embedding.save_portable`); they load back here into
the classifier that was trained, with the same weights.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftlab.errors import ModelError

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.runs import RunConfig
    from peftlab.spec import ModelSpec

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_name(text: str) -> str:
    """A name PEFT accepts for an adapter (a torch ModuleDict key: no dots)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text) or "adapter"


def _method(method_type: str | None) -> Any:
    from peftlab.methods import get_method

    return None if method_type in (None, "unknown") else get_method(method_type)


class ModelLoader:
    """Builds every model of one base (a `ModelSpec`, or its dict form) on one device."""

    def __init__(self, model_spec: ModelSpec | dict[str, Any], device: str):
        self.spec = model_spec if isinstance(model_spec, dict) else model_spec.model_dump(
            mode="json")
        self.device = device
        self.dtype = self.spec.get("dtype", "float32")

    @cached_property
    def resolved(self) -> Any:
        from peftlab.models import resolve_model

        s = self.spec
        return resolve_model(s["name"], gguf_file=s.get("gguf_file"), revision=s.get("revision"))

    @cached_property
    def tokenizer(self) -> Any:
        from peftlab.models import load_tokenizer

        return load_tokenizer(self.resolved, trust_remote_code=self.spec.get("trust_remote_code",
                                                                             False),
                              padding_side=self.spec.get("padding_side"))

    def base(self, num_labels: int, label_names: list[str] | None, seed: int | None = None, *,
             method_type: str | None = None, params: dict[str, Any] | None = None) -> Any:
        """The pretrained classifier, loaded the way `method_type` loads its base; a head the
        checkpoint lacks is initialised under `seed` (when given)."""
        from peftlab.models import load_classifier

        if seed is not None:
            from transformers import set_seed

            set_seed(seed)
        method = _method(method_type)
        options = dict(method.base_load_options(params or {}, device=self.device)) if (
            method is not None) else {}
        dtype = options.pop("dtype", self.dtype)
        model = load_classifier(self.resolved, num_labels=num_labels, dtype=dtype,
                                device=self.device, tokenizer=self.tokenizer,
                                trust_remote_code=self.spec.get("trust_remote_code", False),
                                label_names=label_names,
                                head=self.spec.get("head", "sequence-classification"), **options)
        # placed at load time (a quantised base): must never be moved with .to() afterwards
        model.peftlab_placed = "device_map" in options
        return model

    def _base_for(self, artifact: dict[str, Any], seed: int | None) -> Any:
        return self.base(artifact["num_labels"], artifact.get("label_names"), seed,
                         method_type=artifact.get("method_type"), params=artifact.get("params"))

    def run(self, artifact: dict[str, Any], seed: int | None = None) -> Any:
        """A trained run in eval mode: its adapter on a fresh base (PEFT) or its whole model."""
        if artifact["kind"] == "full":
            return self.full(artifact)
        return self.adapters([artifact], seed)

    def full(self, artifact: dict[str, Any]) -> Any:
        """A fully fine-tuned model from its own folder (no base needed)."""
        import torch

        from peftlab.methods import get_method
        from peftlab.sentence_embedding import is_portable, load_portable_full

        path = Path(artifact["path"])
        if is_portable(path):  # the encoder and head.safetensors (sentence-embedding head)
            return load_portable_full(path, dtype=getattr(torch, self.dtype), device=self.device)
        method = _method(artifact.get("method_type")) or get_method("full")
        if method.needs_base:
            method = get_method("full")
        return method.load_standalone(
            path, dtype=getattr(torch, self.dtype), device=self.device,
            trust_remote_code=self.spec.get("trust_remote_code", False))

    def adapters(self, artifacts: list[dict[str, Any]], seed: int | None = None) -> Any:
        """A PeftModel with every artifact loaded as a named adapter; the first one active.
        An adapter of a PEFT type peftlab has no method for loads with PEFT's own loader (the
        default `Method.load`)."""
        from peftlab.methods import Method
        from peftlab.sentence_embedding import is_portable, load_portable_adapter

        first = artifacts[0]
        base = self._base_for(first, seed)
        method = _method(first.get("method_type")) or Method()
        names = [a["name"] for a in artifacts]
        model = None
        try:
            for a in artifacts:
                path = Path(a["path"])
                if is_portable(path):  # an adapter of the bare encoder + head.safetensors
                    model = load_portable_adapter(model if model is not None else base, path,
                                                  adapter_name=a["name"])
                elif model is None:
                    model = method.load(base, path, adapter_name=a["name"])
                else:
                    (_method(a.get("method_type")) or method).load_more(
                        model, path, adapter_name=a["name"])
        except KeyError as err:  # PEFT looks up a tensor the file does not hold
            raise ModelError(f"cannot load adapter(s) {names} onto {self.resolved.describe()}: "
                             f"tensor {err} is missing from {ADAPTER_WEIGHTS} (saved without its "
                             "classification head?)") from err
        except (OSError, ValueError, RuntimeError) as err:
            raise ModelError(f"cannot load adapter(s) {names} onto {self.resolved.describe()}: "
                             f"{str(err).splitlines()[0]}") from err
        model.set_adapter(first["name"], inference_mode=True)
        if not getattr(base, "peftlab_placed", False):
            model.to(self.device)
        model.eval()
        return model

    def merged(self, artifact: dict[str, Any], seed: int | None = None) -> Any:
        """The adapter folded into the base weights (W <- W + scale * B A; the adapter's head
        replaces the base's), as a plain transformers model; refused where the method cannot."""
        method = _method(artifact.get("method_type"))
        if method is not None:
            method = method.for_params(artifact.get("params"))
        if method is not None and not method.supports_merge:
            raise ModelError(f"adapter {artifact['name']!r}: method {method.name!r} cannot be "
                             f"served merged: {method.merge_refusal or 'merge not supported'}")
        return merge(self.adapters([artifact], seed))

    def base_weight_files(self) -> list[Path]:
        """The base model's weight files on disk (for page-cache control and storage bytes)."""
        return base_weight_files(self.resolved)


def merge(peft_model: Any) -> Any:
    """merge_and_unload of a loaded PeftModel: W <- W + scale * B A for every adapted matrix."""
    return peft_model.merge_and_unload()


def base_weight_files(resolved: Any) -> list[Path]:
    """*.safetensors of a local/GGUF-converted model folder, or of its hub cache snapshot."""
    from peftlab.models import model_dir

    folder = model_dir(resolved)
    if folder is None:  # hub: the cached snapshot, if any
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(resolved.source, "config.json",
                                            revision=resolved.revision)
        except (OSError, ValueError):
            cached = None
        if not isinstance(cached, str):
            return []
        folder = Path(cached).parent
    return sorted(p.resolve() for p in Path(folder).glob("*.safetensors"))


def artifact_weight_files(artifact: dict[str, Any]) -> list[Path]:
    return sorted(Path(artifact["path"]).glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------
# A study's runs


def run_artifact(ctx: Context, rc: RunConfig) -> dict[str, Any]:
    """The artifact dict of a finished run of the study (ModelError when it is not usable)."""
    from peftlab.methods import get_method

    rec = ctx.store.get("runs", rc.run_id)
    if rec is None or rec.get("status") != "done":
        raise ModelError(f"run {rc.run_id} is not finished (status: "
                         f"{rec.get('status') if rec else 'not started'}); run `peftlab finetune`")
    path = ctx.store.root / rec["artifact"]
    if not path.is_dir():
        raise ModelError(f"{path}: the artifact of run {rc.run_id} is missing")
    task = ctx.data.task(rc.task)
    method = get_method(rc.method_type)
    return {"name": adapter_name(rc.run_id), "path": str(path),
            "kind": "peft" if method.is_peft else "full", "task": rc.task, "run_id": rc.run_id,
            "method_type": rc.method_type, "params": rc.params,
            "num_labels": task.num_labels, "label_names": task.head_label_names}


def base_for_run(ctx: Context, rc: RunConfig, *, device: str | None = None,
                 seed: int | None = None) -> tuple[Any, Any]:
    """(tokenizer, model): the pretrained base as a classifier for `rc`'s task, loaded the way
    `rc`'s method loads it (a fresh head, seeded by the caller or `seed`)."""
    task = ctx.data.task(rc.task)
    loader = ModelLoader(rc.model, device or ctx.device)
    model = loader.base(task.num_labels, task.head_label_names, seed,
                        method_type=rc.method_type, params=rc.params)
    return loader.tokenizer, model


def load_run(ctx: Context, run_id: str, *, device: str | None = None) -> tuple[Any, Any]:
    """(tokenizer, model) of a finished run, rebuilt from its artifact, in eval mode.

    PEFT runs: the pretrained base (loaded as the method loads it) with the saved adapter and its
    trained head on top, as a `PeftModel`; full runs: the saved model. A run of a generation
    task is a causal LM (`load_run_lm`: the adapter unmerged on its base, or the
    whole model).
    """
    rc = ctx.study.run(run_id)
    if rc is None:
        raise ModelError(f"run {run_id} is not part of this study's spec any more")
    artifact = run_artifact(ctx, rc)
    if ctx.data.task(rc.task).kind == "generation":
        model, tokenizer = load_run_lm(rc.model, Path(artifact["path"]), rc.method_type,
                                       device or ctx.device)
        return tokenizer, model
    loader = ModelLoader(rc.model, device or ctx.device)
    model = loader.run(artifact)
    model.eval()
    return loader.tokenizer, model


def base_source(ctx: Context) -> str:
    """What the base model's stored results derive from: "base:<model revision>" (a stage
    recomputes them when the weights change)."""
    from peftlab.models import model_revision, resolve_model

    m = ctx.study.spec.model
    return "base:" + model_revision(resolve_model(m.name, gguf_file=m.gguf_file,
                                                  revision=m.revision))


def run_source(ctx: Context, run_id: str) -> str:
    """What a run's stored results derive from: its artifact and when it finished (a retrained
    run gets a new one)."""
    rec = ctx.store.get("runs", run_id) or {}
    return f"run:{rec.get('artifact')}@{rec.get('finished')}"


# Causal LMs of generation studies (`peftlab.generation` trains and decodes them; loading lives
# here, beside ModelLoader, so that artifacts never imports the generation module).


def load_causal_lm(model_spec: Any, device: str, *, method_type: str | None = None,
                   params: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """(AutoModelForCausalLM, tokenizer) of the study's model, loaded the way `method_type`
    loads its base (QLoRA: 4-bit on CUDA); the config carries the tokenizer's pad id and the
    model is marked so that `methods.base.wrap_peft` makes a CAUSAL_LM adapter with no head."""
    from transformers import AutoModelForCausalLM

    from peftlab.errors import ModelError
    from peftlab.models.load import _location, _torch_dtype

    loader = ModelLoader(model_spec, device)
    tokenizer = loader.tokenizer
    method = _method(method_type)
    options = dict(method.base_load_options(params or {}, device=device)) if method else {}
    dtype = options.pop("dtype", loader.dtype)
    where, kwargs = _location(loader.resolved)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=_torch_dtype(dtype), use_safetensors=True,
            trust_remote_code=loader.spec.get("trust_remote_code", False), **options, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelError(f"cannot load {loader.resolved.describe()} as a causal language model: "
                         f"{str(err).splitlines()[0]}") from err
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if "device_map" not in options:
        model.to(device)
    model.peftlab_causal_lm = True
    model.eval()
    return model, tokenizer


def load_run_lm(model_spec: Any, artifact: Path, method_type: str, device: str) -> tuple[Any, Any]:
    """A trained generation run from its artifact folder: the fully fine-tuned model, or the
    adapter on a fresh base (unmerged, in inference mode)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    loader = ModelLoader(model_spec, device)
    if method_type == "full":
        model = AutoModelForCausalLM.from_pretrained(
            artifact, dtype=getattr(torch, loader.dtype), use_safetensors=True).to(device)
        model.eval()
        return model, loader.tokenizer
    base, tok = load_causal_lm(model_spec, device, method_type=method_type)
    model = PeftModel.from_pretrained(base, str(artifact), is_trainable=False)
    model.eval()
    return model, tok
