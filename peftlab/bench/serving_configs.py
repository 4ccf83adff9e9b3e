"""Serving configurations: how k tasks' models are held in memory and batched under load.

    backends = serving_backends(loader, lora_artifacts, full_artifacts, seed=0)
    SERVING_CONFIGS.get("mixed").label          # "one base, k adapters, mixed batches"

Each configuration is one `ServingConfig` registered in `SERVING_CONFIGS`: its name (as in
`bench.serving.configs` and the `serving` table), its label (the report's words for what it
holds), what it needs (k PEFT adapters or k fully fine-tuned models; the fast path variant) and how
its backend is built. The serving benchmark (`bench.serving`, `bench.serving_job`), the spec check
(`validate.check_names`) and the report (`stages.report.serving`) ask this registry; adding a
configuration is one `SERVING_CONFIGS.register(ServingConfig(...))`.

    merged  one merged model per task (k copies of the weights); a batch holds one task's requests
    mixed   one base with k adapters; a batch mixes adapters (PEFT's `adapter_names=[...]`, one
            name per row): the FIFO head and whoever follows it, any adapter
    switch  one base with k adapters, one active: a batch holds one adapter's requests and
            `set_adapter` runs before it when the adapter changes (inside its service time)
    full    one fully fine-tuned model per task (k models); batches per task, like `merged`
    fast    `switch` on the unmerged fast path (`peftlab.bench.fastpath`); built only when a fast
            variant is asked for (`serving_backends(..., fast_variant="fused")`), never by a spec

A backend (`Backend`) is what one batch runs on: forward(inputs, adapters) -> logits. Per-adapter
backends (merged, switch, full) get batches of one adapter's requests from the server.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from peftlab.bench.loading import for_serving
from peftlab.errors import PeftlabError
from peftlab.registry import Registry


class Backend:
    """One serving configuration. forward(inputs, adapters) -> logits [rows, labels] (a tensor).

    name: the configuration ("merged", "mixed", ...); per_adapter: batches hold one adapter's
    requests only; names: the adapters/models served, in workload index order; models: every
    model held in memory (for the served-weights bytes).
    """

    name: str = "backend"
    per_adapter: bool = True

    def __init__(self, names: list[str], models: list[Any]):
        self.names = list(names)
        self.models = models
        self.switches = 0
        self.switch_ms: list[float] = []

    def forward(self, inputs: dict[str, Any], adapters: list[str]) -> Any:
        raise NotImplementedError

    def weight_bytes(self) -> int:
        """Bytes of the parameters and buffers of every served model (shared tensors once)."""
        from peftlab.memory import param_bytes

        return param_bytes(*self.models)

    def describe(self) -> dict[str, Any]:
        return {"config": self.name, "adapters": self.names, "k": len(self.names),
                "models_in_memory": len(self.models), "per_adapter_batches": self.per_adapter}


class PerTaskModels(Backend):
    """k separate models (merged copies or fully fine-tuned), model `names[i]` for task i."""

    def __init__(self, name: str, models: dict[str, Any]):
        super().__init__(list(models), list(models.values()))
        self.name = name
        self.by_name = models

    def forward(self, inputs, adapters):
        return self.by_name[adapters[0]](**inputs).logits


class MixedAdapters(Backend):
    """One PeftModel with k adapters; each row goes through its own adapter."""

    name = "mixed"
    per_adapter = False

    def __init__(self, peft_model: Any, names: list[str]):
        super().__init__(names, [peft_model])
        self.model = peft_model

    def forward(self, inputs, adapters):
        return self.model(**inputs, adapter_names=list(adapters)).logits


class SwitchingAdapters(Backend):
    """One model with k adapters, one active; `set_adapter` when a batch needs another one.

    model: a PeftModel, or a `fastpath.SwappableModel` (the same set_adapter/active_adapter).
    """

    name = "switch"

    def __init__(self, model: Any, names: list[str], name: str = "switch"):
        super().__init__(names, [model])
        self.model = model
        self.name = name
        active = model.active_adapter
        self.active = active[0] if isinstance(active, list) else active

    def forward(self, inputs, adapters):
        want = adapters[0]
        if want != self.active:
            t0 = time.perf_counter_ns()
            # inference_mode=True: set_adapter would otherwise mark the adapter trainable
            self.model.set_adapter(want, inference_mode=True)
            self.switch_ms.append((time.perf_counter_ns() - t0) / 1e6)
            self.switches += 1
            self.active = want
        return self.model(**inputs).logits


# build(loader, artifacts, seed, fast_variant) -> Backend; artifacts: one per task, in order
Build = Callable[[Any, list[dict[str, Any]], int, str | None], Backend]


@dataclass(frozen=True)
class ServingConfig:
    """One serving configuration (see the module docstring).

    serves: the artifacts it is built from, "peft" (the k tasks' adapters of one PEFT method) or
    "full" (the k tasks' fully fine-tuned models). shares_base: one base holds the k adapters
    (what the report's decision weighs against the reference on memory and p99). reference: the
    configuration those are weighed against (k merged models). fast_variant: built on the fast
    path, only when a variant is asked for; a spec cannot ask for it.
    """

    name: str
    label: str
    serves: str
    build: Build
    shares_base: bool = False
    reference: bool = False
    fast_variant: bool = False


SERVING_CONFIGS: Registry[ServingConfig] = Registry("serving configuration")


def _names(artifacts: list[dict[str, Any]]) -> list[str]:
    return [a["name"] for a in artifacts]


def _merged(loader: Any, arts: list[dict[str, Any]], seed: int, _: str | None) -> Backend:
    return PerTaskModels("merged", {a["name"]: for_serving(loader.merged(a, seed))
                                    for a in arts})


def _mixed(loader: Any, arts: list[dict[str, Any]], seed: int, _: str | None) -> Backend:
    return MixedAdapters(for_serving(loader.adapters(arts, seed)), _names(arts))


def _switch(loader: Any, arts: list[dict[str, Any]], seed: int, _: str | None) -> Backend:
    return SwitchingAdapters(for_serving(loader.adapters(arts, seed)), _names(arts))


def _full(loader: Any, arts: list[dict[str, Any]], seed: int, _: str | None) -> Backend:
    return PerTaskModels("full", {a["name"]: for_serving(loader.full(a)) for a in arts})


def _fast(loader: Any, arts: list[dict[str, Any]], seed: int, variant: str | None) -> Backend:
    from peftlab.bench.fastpath import fast_model

    return SwitchingAdapters(fast_model(for_serving(loader.adapters(arts, seed)), variant),
                             _names(arts),
                             name="fast")


# Registration order is the order of the report's tables and figures.
SERVING_CONFIGS.register(ServingConfig("merged", "k merged models", "peft", _merged,
                                       reference=True))
SERVING_CONFIGS.register(ServingConfig("mixed", "one base, k adapters, mixed batches", "peft",
                                       _mixed, shares_base=True))
SERVING_CONFIGS.register(ServingConfig("switch", "one base, k adapters, switched per batch",
                                       "peft", _switch, shares_base=True))
SERVING_CONFIGS.register(ServingConfig("full", "k fully fine-tuned models", "full", _full))
SERVING_CONFIGS.register(ServingConfig("fast", "one base, k adapters, fast path", "peft", _fast,
                                       shares_base=True, fast_variant=True))


def spec_configs() -> list[str]:
    """The configurations a spec may ask for (bench.serving.configs), in order; its default."""
    return [c.name for c in SERVING_CONFIGS.values() if not c.fast_variant]


def artifacts_for(config: str, lora: list[dict[str, Any]], full: list[dict[str, Any]] | None
                  ) -> list[dict[str, Any]]:
    """The artifacts configuration `config` serves: `full` for one that serves fully fine-tuned
    models, else the PEFT adapters `lora`."""
    return (full or []) if SERVING_CONFIGS.get(config).serves == "full" else lora


def serving_backends(loader: Any, lora: list[dict[str, Any]], full: list[dict[str, Any]] | None,
                     *, seed: int, configs: tuple[str, ...] | list[str] | None = None,
                     fast_variant: str | None = None) -> dict[str, Backend]:
    """Build the backends of `configs` (default: `spec_configs()`) with the study's one model
    loader, in that order.

    lora: the k PEFT artifacts (one per task, in workload order); full: k fully fine-tuned
    artifacts for the same tasks in the same order (needed by a configuration that serves
    "full"). Each configuration loads its own copies. fast_variant ("fused", "fused+compile",
    ...): also every fast-variant configuration ("fast", on `fastpath.fast_model`).
    """
    names = list(spec_configs() if configs is None else configs)
    if fast_variant is not None:
        names += [c.name for c in SERVING_CONFIGS.values()
                  if c.fast_variant and c.name not in names]
    out: dict[str, Backend] = {}
    for name in names:
        config = SERVING_CONFIGS.get(name)
        if config.fast_variant and fast_variant is None:
            raise PeftlabError(f"serving config {name!r} runs on the fast path: pass "
                               "fast_variant (e.g. 'fused')")
        if config.serves == "full" and (not full or len(full) != len(lora)):
            raise PeftlabError(f"serving config {name!r} needs one fully fine-tuned artifact "
                               f"per task ({len(lora)}), got {len(full or [])}")
        out[name] = config.build(loader, artifacts_for(name, lora, full), seed, fast_variant)
    return out
