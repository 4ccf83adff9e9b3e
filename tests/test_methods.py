"""Methods' loading hooks and saved artifacts: QLoRA's 4-bit base (loading arguments, checked on
CPU; the GPU run belongs to benchmarks/gpu_check.py), refused merges, portable base names and a
head listed once in modules_to_save.

    .venv/bin/python -m pytest tests/test_methods.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from peftlab.artifacts import ModelLoader
from peftlab.errors import ModelError
from peftlab.methods import get_method
from peftlab.models import load_classifier, portable_name, resolve_model

QLORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _capture_from_pretrained(monkeypatch):
    """Record the keyword arguments of AutoModelForSequenceClassification.from_pretrained, and
    load the tiny model without them (no bitsandbytes or GPU here)."""
    import transformers

    calls = []
    real = transformers.AutoModelForSequenceClassification.from_pretrained

    def fake(where, **kwargs):
        calls.append(kwargs)
        kwargs = {k: v for k, v in kwargs.items() if k not in ("quantization_config",
                                                               "device_map")}
        return real(where, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForSequenceClassification, "from_pretrained", fake)
    monkeypatch.setattr("peftlab.models.load._check_device", lambda device: torch.device("cpu"))
    return calls


def test_qlora_loads_its_base_4bit_nf4_double_quant_bf16(monkeypatch, tiny_llama_dir):
    method = get_method("qlora")
    params = method.validate_params(QLORA, where="methods.qlora")
    options = method.base_load_options(params, device="cuda:1")
    q = options["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert "score" in q.llm_int8_skip_modules  # the trained head stays in full precision
    assert options["device_map"] == {"": 1} and options["dtype"] == "bfloat16"
    assert method.base_load_options(params, device="cuda")["device_map"] == {"": 0}

    calls = _capture_from_pretrained(monkeypatch)
    loader = ModelLoader({"name": str(tiny_llama_dir)}, "cuda:1")
    model = loader.base(2, ["a", "b"], 0, method_type="qlora", params=params)
    (kw,) = calls
    assert kw["quantization_config"] is q.__class__(**q.to_dict()) or (
        kw["quantization_config"].to_dict() == q.to_dict())
    assert kw["device_map"] == {"": 1} and kw["dtype"] == torch.bfloat16
    assert model.device.type == "cpu"  # placed by device_map, never moved with .to()


def test_other_methods_load_their_base_plainly(monkeypatch, tiny_llama_dir):
    calls = _capture_from_pretrained(monkeypatch)
    loader = ModelLoader({"name": str(tiny_llama_dir)}, "cpu")
    for mtype in ("full", "lora", "dora", "ia3", "adalora"):
        loader.base(2, None, 0, method_type=mtype, params=None)
    assert all("quantization_config" not in kw and "device_map" not in kw for kw in calls)


def test_a_qlora_run_reloads_and_serves_on_the_same_4bit_base(monkeypatch, tiny_llama_dir,
                                                              tmp_path):
    """Reloading a QLoRA adapter (drift, bench, represent) goes through the same hook."""
    from peftlab.models import head_module_names

    lora = get_method("lora")
    base = load_classifier(resolve_model(str(tiny_llama_dir)), num_labels=2)
    params = lora.validate_params(QLORA, where="x")
    lora.save(lora.prepare(base, params, head_names=head_module_names(base), total_steps=1),
              tmp_path / "a")
    calls = _capture_from_pretrained(monkeypatch)
    qparams = get_method("qlora").validate_params(QLORA, where="x")
    artifact = {"name": "a", "path": str(tmp_path / "a"), "kind": "peft", "task": "sst2",
                "run_id": "a", "method_type": "qlora", "params": qparams, "num_labels": 2,
                "label_names": None}
    loader = ModelLoader({"name": str(tiny_llama_dir)}, "cuda")
    loader.run(artifact)
    assert calls and calls[0]["quantization_config"].load_in_4bit
    with pytest.raises(ModelError, match="cannot be served merged: merging into a 4-bit"):
        loader.merged(artifact)


def test_merged_mode_refuses_qlora_with_the_reason():
    from peftlab.bench.modes import UnsupportedMode, get_mode

    art = {"name": "q", "path": "/x", "kind": "peft", "method_type": "qlora"}
    with pytest.raises(UnsupportedMode, match="re-quantises the merged weights"):
        get_mode("merged").check([art], [get_method("qlora")])


@pytest.mark.parametrize("mtype", ["lora", "ia3", "adalora"])
def test_adapter_names_its_base_portably_and_its_head_once(tiny_llama_dir, tmp_path, mtype):
    from peftlab.models import head_module_names

    method = get_method(mtype)
    base = load_classifier(resolve_model(str(tiny_llama_dir)), num_labels=2)
    params = method.validate_params({"target_modules": ["q_proj", "v_proj"]} if mtype != "lora"
                                    else {"r": 4}, where="x")
    model = method.prepare(base, params, head_names=head_module_names(base), total_steps=10)
    method.save(model, tmp_path / "a", base_name="owner/some-model")
    cfg = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == "owner/some-model"
    assert cfg["modules_to_save"] == ["score"]  # PEFT alone records ['score', 'classifier', ...]


def test_portable_name_is_the_hub_id_of_aliases_and_hub_models(tiny_llama_dir):
    from peftlab.models import ALIASES

    assert portable_name(resolve_model("minilm")) == ALIASES["minilm"]
    assert portable_name(resolve_model("owner/model")) == "owner/model"
    assert portable_name(resolve_model(str(tiny_llama_dir))) is None  # a user's own folder
