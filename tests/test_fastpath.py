"""The unmerged fast path: same logits as PEFT unmerged and merged, hot swaps without recompiling.

    .venv/bin/python -m pytest tests/test_fastpath.py -q

Adapters are made here with random non-zero A, B and head (PEFT's init_lora_weights=False), of two
ranks and alphas, so the adapter path changes the logits, a swap changes them again, and the
zero-padding of the smaller rank is exercised. They are saved and loaded back through
`ModelLoader`, as the bench loads a study's artifacts.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peftlab.bench.gate import compare_logits

TOL = 1e-5  # float32: relative to the logits' scale (the gate's rule)
HEAD = {"llama": "score", "bert": "classifier"}
TEXTS = ["the movie was a delight from start to finish",
         "a dull and lifeless film that never finds its footing",
         "visually stunning but emotionally empty", "it is"]


def make_lora_artifact(loader, out: Path, *, name: str, head: str, seed: int, r: int,
                       alpha: float, use_dora: bool = False) -> dict:
    """A LoRA adapter (all linear layers) with random A, B and head, saved like a study run."""
    from peft import LoraConfig, TaskType, get_peft_model

    torch.manual_seed(seed)
    base = loader.base(2, ["negative", "positive"], seed)
    cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=alpha, lora_dropout=0.1,
                     target_modules="all-linear", init_lora_weights=False, use_dora=use_dora,
                     modules_to_save=[head])
    model = get_peft_model(base, cfg)
    with torch.no_grad():
        for p in getattr(model.base_model.model, head).modules_to_save["default"].parameters():
            p.add_(torch.randn_like(p))
    model.save_pretrained(out, safe_serialization=True)
    return {"name": name, "path": str(out), "kind": "peft", "task": "sst2", "run_id": None,
            "method_type": "dora" if use_dora else "lora", "params": {"r": r},
            "num_labels": 2, "label_names": ["negative", "positive"]}


@pytest.fixture(scope="module", params=["llama", "bert"])
def setup(request, tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    """(loader, artifact a (r=4, alpha 8), artifact b (r=8, alpha 32), inputs) per tiny model."""
    from peftlab.artifacts import ModelLoader

    kind = request.param
    folder = tiny_llama_dir if kind == "llama" else tiny_bert_dir
    loader = ModelLoader({"name": str(folder), "max_length": 32}, "cpu")
    tmp = tmp_path_factory.mktemp(f"fast-{kind}")
    a = make_lora_artifact(loader, tmp / "a", name="a", head=HEAD[kind], seed=1, r=4, alpha=8)
    b = make_lora_artifact(loader, tmp / "b", name="b", head=HEAD[kind], seed=2, r=8, alpha=32)
    inputs = dict(loader.tokenizer(TEXTS, return_tensors="pt", padding=True))
    return kind, loader, a, b, inputs


def logits(model, inputs) -> np.ndarray:
    with torch.inference_mode():
        return model(**inputs).logits.float().numpy()


def assert_same(served, ref, what):
    check = compare_logits(what, served, "reference", ref, tolerance=TOL)
    assert check["passed"], check


def test_fused_fast_path_gives_the_logits_of_peft_unmerged_and_merged(setup):
    from peft.tuners.lora import LoraLayer

    from peftlab.bench.fastpath import fused_linear_class, fused_lora

    _, loader, a, _, inputs = setup
    unmerged = loader.adapters([a], 0)
    n_lora = sum(isinstance(m, LoraLayer) for m in unmerged.modules())
    ref = logits(unmerged, inputs)
    merged = logits(loader.merged(a, 0), inputs)
    base = logits(loader.base(2, ["negative", "positive"], 0), inputs)
    fast = fused_lora(loader.adapters([a], 0))
    served = logits(fast, inputs)
    assert_same(served, ref, "fused vs unmerged")
    assert_same(served, merged, "fused vs merged")
    # the adapter path is really computed: without it the logits are far from these
    assert np.abs(served - base).max() > 100 * TOL * np.abs(base).max()
    inner = fast.get_base_model()
    fused = [m for m in inner.modules() if isinstance(m, fused_linear_class())]
    assert len(fused) == n_lora and not any(isinstance(m, LoraLayer) for m in inner.modules())


def test_fused_hot_swap_serves_each_adapter_and_its_head(setup):
    from peftlab.bench.fastpath import fused_lora
    from peftlab.bench.loading import artifact_head, head_names_of, served_head

    kind, loader, a, b, inputs = setup
    ref_a = logits(loader.adapters([a], 0), inputs)
    ref_b = logits(loader.adapters([b], 0), inputs)
    assert np.abs(ref_a - ref_b).max() > 0.01 * np.abs(ref_a).max()  # distinct adapters
    fast = fused_lora(loader.adapters([a, b], 0))
    assert fast.adapters == ["a", "b"] and fast.active_adapter == "a"
    assert_same(logits(fast, inputs), ref_a, "fused[a]")
    fast.set_adapter("b", inference_mode=True)
    assert_same(logits(fast, inputs), ref_b, "fused[b] after a swap (rank 4 -> 8)")
    heads = head_names_of(fast)
    assert heads == [HEAD[kind]]
    for key, value in artifact_head(b, heads).items():
        np.testing.assert_allclose(served_head(fast)[key], value, rtol=0, atol=1e-6)
    fast.set_adapter("a")
    assert_same(logits(fast, inputs), ref_a, "fused[a] after swapping back (rank 8 -> 4)")
    assert fast.switches == 2 and len(fast.swap_ms) == 2
    fast.set_adapter("a")  # already active: nothing to do
    assert fast.switches == 2


@pytest.mark.parametrize("variant", ["fused+compile", "hotswap+compile"])
def test_compiled_fast_paths_swap_adapters_without_recompiling(setup, variant):
    from torch._dynamo.testing import CompileCounter

    from peftlab.bench.fastpath import compiled_hotswap, fused_lora

    _, loader, a, b, inputs = setup
    ref_a = logits(loader.adapters([a], 0), inputs)
    ref_b = logits(loader.adapters([b], 0), inputs)
    torch._dynamo.reset()
    counter = CompileCounter()  # dynamo's frontend decides recompiles; any backend shows them
    build = fused_lora if variant == "fused+compile" else compiled_hotswap
    kwargs = {"compile": True} if variant == "fused+compile" else {}
    fast = build(loader.adapters([a, b], 0), compile_options={"backend": counter}, **kwargs)
    assert fast.variant == variant and fast.compiled
    ms = fast.warm_up([inputs])
    assert ms > 0 and fast.compile_ms == ms
    compiled = counter.frame_count
    assert compiled >= 1
    assert_same(logits(fast, inputs), ref_a, f"{variant}[a]")
    fast.set_adapter("b")
    assert_same(logits(fast, inputs), ref_b, f"{variant}[b]")
    fast.set_adapter("a")
    assert_same(logits(fast, inputs), ref_a, f"{variant}[a] again")
    assert counter.frame_count == compiled  # two swaps, no new graph
    torch._dynamo.reset()


def test_fast_path_refuses_what_it_cannot_fuse(setup, tmp_path):
    from peftlab.bench.fastpath import FastPathUnsupported, fast_model, fused_lora

    kind, loader, _, _, _ = setup
    dora = make_lora_artifact(loader, tmp_path / "dora", name="d", head=HEAD[kind], seed=3, r=4,
                              alpha=8, use_dora=True)
    with pytest.raises(FastPathUnsupported, match="DoRA|variant"):
        fused_lora(loader.adapters([dora], 0))
    with pytest.raises(FastPathUnsupported, match="PeftModel"):
        fused_lora(loader.base(2, ["negative", "positive"], 0))
    with pytest.raises(Exception, match="unknown fast-path variant"):
        fast_model(None, "turbo")


def test_inductor_compiled_fast_path_matches_eager(setup):
    """torch.compile with the default (inductor) backend: real C++ kernels, ~6 s to build."""
    from peftlab.bench.fastpath import fused_lora

    kind, loader, a, b, inputs = setup
    if kind != "bert":
        pytest.skip("inductor is checked on the BERT model only (the quickstart's architecture)")
    ref_b = logits(loader.adapters([b], 0), inputs)
    torch._dynamo.reset()
    fast = fused_lora(loader.adapters([a, b], 0), compile=True)
    fast.warm_up([inputs])
    fast.set_adapter("b")
    assert_same(logits(fast, inputs), ref_b, "inductor fused[b]")
    torch._dynamo.reset()
