"""The spec's `engine:` block: serving the study's models on a real engine (vLLM).

    engine:
      name: vllm
      python: /opt/engine-venv/bin/python   # else $PEFTLAB_ENGINE_PYTHON, else .venv-engine
      adapters_k: 8
      rates: [1, 2, 4, 8]
      popularity: [uniform, skewed]

With this block `peftlab run` has a `serve` stage (after bench, `peftlab.stages.serve`): it
starts the engine's server from its own environment (scripts/build-engine-env.sh) for each
configuration (base alone; 1, fewer_adapters and k adapters on one server; k merged models, one
server each, as many as fit; k-1 adapters beside a fully fine-tuned model) and drives it with
open-loop load at rising rates (`peftlab.bench.engines`). Without it the stage is skipped.

The schema lives here rather than in `peftlab.spec` (which holds it as `StudySpec.engine`), and
like it depends on nothing else in peftlab: a bad key or value fails the spec's loading with one
line naming `engine.<key>`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CONFIGS = ("base", "adapters", "merged", "mixed")


class EngineSpec(BaseModel):
    """Serving on a real engine under open-loop load (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)  # a misspelt key is an error

    name: Literal["vllm"] = "vllm"
    # the engine environment's python (scripts/build-engine-env.sh); None: $PEFTLAB_ENGINE_PYTHON
    # or .venv-engine
    python: str | None = None
    configs: list[Literal["base", "adapters", "merged", "mixed"]] = Field(
        default_factory=lambda: list(CONFIGS))
    # k: adapters on one server in the largest configuration, merged models, names of the mixed
    # workload. A study with fewer LoRA runs serves copies of its adapters under distinct names
    # (the engine loads each as its own adapter) and says so.
    adapters_k: int = Field(8, ge=1)
    fewer_adapters: list[int] = Field(default_factory=lambda: [1, 3])  # also on one server, < k
    # merged-model servers up at once: "fit" = as many as the free memory holds (measured on the
    # base model's server, same size), at most k; a number: at most that many (on a GPU, give
    # one, with gpu_memory_fraction: "fit" measures the host's memory, not the device's)
    merged_servers: int | Literal["fit"] = "fit"
    popularity: list[Literal["uniform", "skewed"]] = Field(
        default_factory=lambda: ["uniform", "skewed"])
    zipf_exponent: float = Field(1.5, gt=0)  # the skewed popularity (power law)
    rates: list[float] = Field(default_factory=lambda: [1.0, 2.0, 4.0, 8.0, 16.0])  # requests/s
    max_requests: int = Field(100, ge=1)  # per load run
    max_seconds: float = Field(60.0, gt=0)  # arrival window per load run
    drain_seconds: float = Field(60.0, gt=0)  # then at most this long for the answers
    min_requests: int = Field(100, ge=1)  # a load run with fewer completed is marked invalid
    # output tokens per request (end-of-sequence ignored): "data" = the token length of a
    # reference of the prompt's input (generation tasks), at most generation.max_new_tokens
    max_tokens: int | Literal["data"] = "data"
    prompts_per_task: int = Field(64, ge=1)  # evaluation inputs used as prompts, per task
    slo_ttft_ms: float = Field(2000.0, gt=0)  # goodput objectives
    slo_tpot_ms: float = Field(250.0, gt=0)
    max_model_len: int = Field(512, ge=16)
    max_num_seqs: int = Field(16, ge=1)
    kv_cache_gib: float = Field(0.5, gt=0)  # KV cache per server (--kv-cache-memory-bytes)
    # GPU: the share of the device's memory each server may hold (vLLM refuses to start when
    # less is free, so several servers on one GPU need a share each); None: vLLM's 0.9
    gpu_memory_fraction: float | None = Field(None, gt=0, le=1)
    startup_timeout_s: float = Field(600.0, gt=0)

    @field_validator("rates")
    @classmethod
    def _rates(cls, v: list[float]) -> list[float]:
        if not v or any(not r > 0 for r in v):
            raise ValueError(f"rates must be a non-empty list of requests/s > 0, got {v}")
        return sorted({float(r) for r in v})

    @field_validator("configs", "popularity")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"must be a non-empty list without repeats, got {v}")
        return v

    @field_validator("merged_servers", "max_tokens")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        bad = [n for n in self.fewer_adapters if not 1 <= n < self.adapters_k]
        if bad:
            raise ValueError(f"fewer_adapters must each be between 1 and adapters_k - 1 "
                             f"({self.adapters_k - 1}), got {bad}")
        if self.merged_servers == "fit" and "merged" in self.configs and \
                "base" not in self.configs:
            raise ValueError("merged_servers 'fit' measures a server on the base model's: "
                             "configs must include base, or give merged_servers a number")
        if self.min_requests > self.max_requests:
            raise ValueError(f"min_requests ({self.min_requests}) > max_requests "
                             f"({self.max_requests}): every load run would be invalid")
        return self

    def counts(self) -> list[int]:
        """Adapters on one server, one configuration each: fewer_adapters and k, ascending."""
        return sorted({*self.fewer_adapters, self.adapters_k})

    def quick(self) -> EngineSpec:
        """The short sweep (`python -m peftlab.bench.engines --quick`): rates 1, 2, 4, 8
        req/s, 40 requests within 40 s each: fewer than min_requests, so every load run is
        marked invalid, as it should be (model_copy skips the check that refuses that)."""
        return self.model_copy(update={"rates": [1.0, 2.0, 4.0, 8.0], "max_requests": 40,
                                       "max_seconds": 40.0, "drain_seconds": 30.0})
