"""Model folders for an engine server (from a study's classifier runs), the scenario plan, and
the spec's engine block."""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.bench.engines.folders import merged_folder, served_adapter
from peftlab.bench.engines.scenarios import plan_scenarios
from peftlab.errors import PeftlabError


@pytest.fixture(scope="module")
def causal_base(tmp_path_factory):
    from peftlab.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("causal"), lm_head=True)


def _classifier_adapter(base, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False, task_type="SEQ_CLS"))
    peft.save_pretrained(out)
    return out


def test_served_adapter_keeps_the_lora_matrices_and_drops_the_head(causal_base, tmp_path):
    from safetensors.torch import load_file

    src = _classifier_adapter(causal_base, tmp_path / "run")
    assert any("score" in k for k in load_file(src / "adapter_model.safetensors"))
    out = served_adapter(src, tmp_path / "served")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["task_type"] == "CAUSAL_LM" and config["modules_to_save"] is None
    kept = load_file(out / "adapter_model.safetensors")
    assert kept and all(".lora_A." in k or ".lora_B." in k for k in kept)
    assert len(kept) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    # the merged folder decodes as the base with the adapter applied (PEFT, unmerged)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = merged_folder(causal_base, out, tmp_path / "merged")
    ids = torch.tensor([[1, 5, 6, 7]])
    with torch.inference_mode():
        want = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(causal_base),
                                         out)(ids).logits
        got = AutoModelForCausalLM.from_pretrained(merged)(ids).logits
        base = AutoModelForCausalLM.from_pretrained(causal_base)(ids).logits
    assert torch.allclose(got, want, atol=1e-4) and not torch.allclose(got, base, atol=1e-3)
    assert (merged / "tokenizer.json").is_file()


def test_served_adapter_refuses_a_folder_without_an_adapter(tmp_path):
    with pytest.raises(PeftlabError, match="not a PEFT adapter folder"):
        served_adapter(tmp_path, tmp_path / "out")


def test_scenarios_hold_what_they_say():
    ads = {f"a{i}": f"/ad/a{i}" for i in range(8)}
    merged = {f"a{i}": f"/m/a{i}" for i in range(3)}
    plan = {s.config: s for s in plan_scenarios("/base", ads, merged, full=("full", "/full"),
                                                ks=[1, 3, 8], max_servers=3)}
    assert list(plan) == ["base", "adapters-1", "adapters-3", "adapters-8", "merged-3", "mixed"]
    assert plan["adapters-8"].servers[0].adapters == ads and len(plan["adapters-8"].servers) == 1
    assert [s.base for s in plan["merged-3"].servers] == ["/m/a0", "/m/a1", "/m/a2"]
    assert "(3 of 8: max_servers 3)" in plan["merged-3"].note
    mixed = plan["mixed"]
    assert len(mixed.servers[0].adapters) == 7 and mixed.route["full"] == 1
    with pytest.raises(PeftlabError, match="8 adapters asked for"):
        plan_scenarios("/base", dict(list(ads.items())[:2]), {}, ks=[8], max_servers=1)


def test_engine_block_of_the_spec():
    from pydantic import ValidationError

    from peftlab.engine_spec import EngineSpec

    s = EngineSpec(adapters_k=10, rates=[1, 2])
    assert s.adapters_k == 10 and s.name == "vllm" and s.quick().max_requests == 40
    with pytest.raises(ValidationError, match="kk"):
        EngineSpec(kk=1)


def test_full_folder_is_the_runs_body_with_the_bases_lm_head(causal_base, tmp_path):
    from transformers import AutoModelForCausalLM

    from peftlab.bench.engines.folders import full_folder
    from peftlab.testing import build_tiny_llama

    run = build_tiny_llama(tmp_path / "full-run", seed=3)  # a classifier, other weights
    out = full_folder(run, tmp_path / "served-full", base=causal_base)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    served = AutoModelForCausalLM.from_pretrained(out).state_dict()
    base = AutoModelForCausalLM.from_pretrained(causal_base).state_dict()
    from safetensors.torch import load_file

    body = load_file(run / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(served[key], body[key]) and not torch.equal(served[key], base[key])
    assert torch.equal(served["lm_head.weight"], base["lm_head.weight"])
