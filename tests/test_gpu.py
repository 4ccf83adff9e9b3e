"""CUDA paths that a CPU cannot exercise: QLoRA's 4-bit base, bench workers timing with CUDA events.

    pytest -m gpu tests/test_gpu.py        (skipped with a message without CUDA; conftest.py)

benchmarks/gpu_check.py runs these in the same device call as its own measurements.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _qlora_params() -> dict:
    from peftlab.methods import get_method

    return get_method("qlora").validate_params(
        {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}, where="test")


def test_qlora_base_loads_4bit_on_cuda_and_trains_only_the_adapter(tiny_llama_dir):
    import bitsandbytes as bnb

    from peftlab.artifacts import ModelLoader
    from peftlab.memory import PeakMemory
    from peftlab.methods import get_method
    from peftlab.models import head_module_names

    params = _qlora_params()
    loader = ModelLoader({"name": str(tiny_llama_dir), "dtype": "bfloat16", "max_length": 32},
                         "cuda")
    model = loader.base(2, ["negative", "positive"], 0, method_type="qlora", params=params)
    layers = model.config.num_hidden_layers
    # every decoder linear (q, k, v, o, gate, up, down) is 4-bit; the head is not quantised
    linear4 = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(linear4) == 7 * layers, linear4
    assert sum(isinstance(p, bnb.nn.Params4bit) for p in model.parameters()) == 7 * layers
    assert not isinstance(model.score, bnb.nn.Linear4bit)
    assert model.score.weight.dtype == torch.bfloat16
    assert all(p.device.type == "cuda" for p in model.parameters())
    # packed: two 4-bit values a byte, so a weight's storage holds half its element count
    q = model.model.layers[0].self_attn.q_proj
    assert q.weight.numel() * 2 == q.in_features * q.out_features

    peft_model = get_method("qlora").prepare(model, params, head_names=head_module_names(model),
                                             total_steps=1)
    batch = loader.tokenizer(["a good film", "a bad film"], return_tensors="pt",
                             padding=True).to("cuda")
    with PeakMemory("cuda") as mem:
        out = peft_model(**batch, labels=torch.tensor([1, 0], device="cuda"))
        out.loss.backward()
    assert torch.isfinite(out.loss)
    assert mem.cuda_peak_allocated and mem.cuda_peak_reserved >= mem.cuda_peak_allocated
    grads = {n: p.grad is not None for n, p in peft_model.named_parameters() if p.requires_grad}
    assert grads and all(grads.values())
    assert any("lora_A" in n for n in grads) and any("score" in n for n in grads)
    assert not any(isinstance(p, bnb.nn.Params4bit) and p.requires_grad
                   for p in peft_model.parameters())


def test_bench_workers_time_with_cuda_events_under_the_default_isolation(tiny_llama_dir):
    """If forked bench workers could not use CUDA, this fails: the default isolation
    (BenchSpec.isolation) must then become "subprocess" on CUDA."""
    import pandas as pd

    from peftlab.bench.plan import run_units
    from peftlab.bench.units import Unit
    from peftlab.data import task_info
    from peftlab.spec import BenchSpec
    from peftlab.tasks import get_task

    bench = BenchSpec(batch_sizes=[1, 4], seq_lengths=["data"], warmup=1, min_iterations=5,
                      min_seconds=0.0, load_repeats=1, gate_examples=8)
    assert bench.isolation == "forkserver"  # the default this test vouches for on CUDA
    texts = ["a good film", "a bad film", "it was fine", "never again", "loved it",
             "dull and long", "a small delight", "not for me"]
    rows = pd.DataFrame({"text_a": texts, "label": [1, 0, 1, 0, 1, 0, 1, 0],
                         "row": range(len(texts))})
    tasks = {"sst2": task_info(get_task("sst2"), rows)}
    model = {"name": str(tiny_llama_dir), "dtype": "bfloat16", "max_length": 32,
             "pair_template": "{a}\n{b}"}
    results = []
    unit = Unit(mode="base", name="sst2", artifacts=[], tasks_served=["sst2"])
    run_units([(unit, [(1, "data"), (4, "data")])], model=model, bench=bench, device="cuda",
              tasks=tasks, extra={}, sink=lambda u, recs, result: results.append(result))
    (result,) = results
    assert result["status"] == "done", result.get("failure_reason")
    assert result["process"]["isolation"] == "forkserver"
    assert result["environment"]["device"] == "cuda"
    assert result["gate"]["passed"]
    for point in result["points"]:
        assert "CUDA events" in point["timer"]
        assert len(point["device_latencies_ns"]) == len(point["latencies_ns"]) >= 5
        assert all(d > 0 for d in point["device_latencies_ns"])
        # the wall-clock latency holds the GPU span (it waits for the stream to finish)
        assert sum(point["latencies_ns"]) >= sum(point["device_latencies_ns"])
        assert point["memory"]["cuda_peak_allocated_bytes"] > 0
