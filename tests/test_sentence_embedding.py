"""The sentence-embedding head (model.head: sentence-embedding) and its probe-fitted start."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from peftlab.errors import ModelError, SpecError
from peftlab.models import load_classifier, load_tokenizer, resolve_model
from peftlab.sentence_embedding import BertForSentenceEmbeddingClassification, fit_heads
from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec

PAIRS = [("the cat sat on the mat", "a dog ran"), ("good film", "a really bad film indeed, awful"),
         ("one two three four five six", "six")]


@pytest.fixture(scope="module")
def se_model(tiny_bert_dir: Path):
    resolved = resolve_model(str(tiny_bert_dir))
    tok = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tok, head="sentence-embedding")
    return model, tok


def _alone(model, tok, text):
    """The text encoded on its own by the bare encoder, mean-pooled: sentence-transformers."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state[0]
    return hidden, hidden.mean(0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_each_text_is_encoded_as_if_alone(se_model, side):
    model, tok = se_model
    assert isinstance(model, BertForSentenceEmbeddingClassification)
    tok.padding_side = side
    try:
        enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
        with torch.no_grad():
            feats = model.head_features(**enc)
            out = model(**enc, output_hidden_states=True)
    finally:
        tok.padding_side = "right"
    assert feats["paired"].all()
    for i, (a, b) in enumerate(PAIRS):
        _, u = _alone(model, tok, a)
        hb, v = _alone(model, tok, b)
        torch.testing.assert_close(feats["single"][i], u, atol=1e-5, rtol=1e-5)
        assert float(feats["pair"][i]) == pytest.approx(float(F.cosine_similarity(u, v, dim=0)),
                                                        abs=1e-5)
        # hidden states come back in the joint layout: b's first token where it stood
        first_b = enc["token_type_ids"][i].tolist().index(1)
        torch.testing.assert_close(out.hidden_states[-1][i, first_b], hb[1], atol=1e-5,
                                   rtol=1e-5)
        pads = enc["attention_mask"][i] == 0
        assert bool((out.hidden_states[-1][i][pads] == 0).all())


def test_single_and_pair_rows_each_use_their_head_in_one_batch(se_model):
    model, tok = se_model
    single = tok(["a lone sentence here"], return_tensors="pt")
    pair = tok(["the cat sat"], ["a dog ran away"], return_tensors="pt")
    mixed = tok(["a lone sentence here", "the cat sat"], padding=True, return_tensors="pt")
    # the tokenizer cannot mix singles and pairs in one call: build the pair row by hand
    rows = [single, pair]
    width = max(r["input_ids"].shape[1] for r in rows)
    mixed = {k: torch.cat([F.pad(r[k], (0, width - r[k].shape[1])) for r in rows])
             for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        both = model(**mixed).logits
        alone_single = model(**single).logits
        alone_pair = model(**pair).logits
        u = _alone(model, tok, "a lone sentence here")[1]
    torch.testing.assert_close(both[0], alone_single[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], alone_pair[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_single[0], model.classifier(u), atol=1e-5, rtol=1e-5)


def test_fit_heads_fits_each_head_on_its_rows(tiny_bert_dir):
    from datasets import Dataset

    resolved = resolve_model(str(tiny_bert_dir))
    tok = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tok, head="sentence-embedding")
    rng = np.random.default_rng(0)
    words = ["cat", "dog", "film", "good", "bad", "sat", "ran", "mat", "one", "two"]
    texts_a = [" ".join(rng.choice(words, 5)) for _ in range(40)]
    texts_b = [" ".join(rng.choice(words, 4)) for _ in range(40)]
    enc = tok(texts_a, texts_b, truncation=True, max_length=32)
    with torch.no_grad():
        cos = model.head_features(**tok(texts_a, texts_b, padding=True,
                                        return_tensors="pt"))["pair"][:, 0].numpy()
    labels = (cos > np.median(cos)).astype(int)  # a label the cosine decides
    ds = Dataset.from_dict({**{k: enc[k] for k in ("input_ids", "attention_mask",
                                                  "token_type_ids")}, "labels": labels})
    before = model.classifier.weight.detach().clone()
    report = fit_heads(model, ds, tok, batch_size=16, device="cpu")
    assert report["pair_classifier"]["fitted"] and "classifier" not in report  # no single rows
    assert torch.equal(model.classifier.weight, before)  # the unused head keeps its init
    with torch.no_grad():
        pred = model(**tok(texts_a, texts_b, padding=True, return_tensors="pt")).logits.argmax(1)
    acc = float((pred.numpy() == labels).mean())
    assert acc >= 0.9 and report["pair_classifier"]["train_accuracy"] == pytest.approx(acc)
    w = model.pair_classifier.weight.detach()[:, 0]
    assert float(w[1] - w[0]) > 0  # a higher cosine means label 1 here


def test_a_dimension_that_barely_varies_gets_no_large_weight():
    """The fitted head's raw weights: a feature constant over the training rows but for
    rounding noise (all-MiniLM-L6-v2's mean-pooled embeddings have one) must not get a weight
    of coefficient / its tiny spread, which fine-tuning would turn into large logit swings as
    soon as it moved that dimension."""
    from peftlab.sentence_embedding import _fit_linear

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    signal = 0.3 * (2 * y - 1) + 0.3 * rng.standard_normal(200)
    flat = 0.5 + 1e-7 * rng.standard_normal(200)
    x = np.stack([signal, flat, 0.3 * rng.standard_normal(200)], axis=1)
    weight, bias = _fit_linear(x, y, 2)
    assert weight.shape == (2, 3) and bias.shape == (2,)
    assert np.abs(weight[:, 1]).max() < 1.0  # per-dimension scaling gave ~4e4 here
    accuracy = float(((x @ weight.T + bias).argmax(1) == y).mean())
    assert accuracy > 0.8 and weight[1, 0] > weight[0, 0]  # the signal is read, with its sign
    moved = x.copy()
    moved[:, 1] += 0.01  # fine-tuning moves the flat dimension a little: logits barely change
    assert np.abs((moved - x) @ weight.T).max() < 0.01


def test_fit_heads_refuses_another_head(tiny_bert_dir):
    resolved = resolve_model(str(tiny_bert_dir))
    model = load_classifier(resolved, num_labels=2)
    with pytest.raises(TypeError, match="BertForSentenceEmbeddingClassification"):
        fit_heads(model, None, None, batch_size=4, device="cpu")


def test_sentence_embedding_needs_a_bert_encoder(tiny_llama_dir):
    with pytest.raises(ModelError, match="model.head: sentence-embedding needs a BERT-family"):
        load_classifier(resolve_model(str(tiny_llama_dir)), num_labels=2,
                        head="sentence-embedding")


def test_full_and_adapter_artifacts_reload_with_their_head(se_model, tmp_path):
    from peft import LoraConfig, get_peft_model

    from peftlab.artifacts import ModelLoader
    from peftlab.methods import get_method

    model, tok = se_model
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    with torch.no_grad():
        model.pair_classifier.weight.fill_(3.0)  # a head that differs from any fresh init
        want = model(**enc).logits
    get_method("full").save(model, tmp_path / "full")
    full = get_method("full").load_standalone(tmp_path / "full", dtype=torch.float32,
                                              device="cpu")
    assert isinstance(full, BertForSentenceEmbeddingClassification)
    with torch.no_grad():
        torch.testing.assert_close(full(**enc).logits, want)

    lora = get_peft_model(load_classifier(resolve_model(str(tmp_path / "full")), num_labels=2,
                                          head="sentence-embedding"),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"],
                                     modules_to_save=["classifier", "pair_classifier"],
                                     task_type="SEQ_CLS", init_lora_weights=False))
    lora.eval()
    with torch.no_grad():
        want_lora = lora(**enc).logits
    lora.save_pretrained(tmp_path / "adapter")
    loader = ModelLoader({"name": str(tmp_path / "full"), "head": "sentence-embedding"}, "cpu")
    art = {"kind": "adapter", "path": str(tmp_path / "adapter"), "name": "a", "num_labels": 2,
           "label_names": ["LABEL_0", "LABEL_1"], "method_type": "lora", "params": {}}
    with torch.no_grad():
        torch.testing.assert_close(loader.run(art)(**enc).logits, want_lora, atol=1e-5, rtol=1e-5)
        merged = loader.merged(art)
        assert isinstance(merged, BertForSentenceEmbeddingClassification)
        torch.testing.assert_close(merged(**enc).logits, want_lora, atol=1e-5, rtol=1e-5)


def test_probe_init_needs_the_sentence_embedding_head(tmp_path, tiny_bert_dir, glue_dir):
    from peftlab.pipeline import load_study

    spec = tiny_spec(tmp_path / "s", model_dir=tiny_bert_dir)
    spec["training"]["head_init"] = "probe"
    with pytest.raises(SpecError, match=r"spec.yaml: training.head_init: 'probe' fits the head"):
        load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir)).runs()


def test_new_keys_leave_existing_run_ids_alone(tmp_path, tiny_bert_dir, glue_dir):
    from peftlab.pipeline import load_study

    spec = tiny_spec(tmp_path / "s", model_dir=tiny_bert_dir)
    plain = load_study(write_spec(tmp_path / "a.yaml", spec), data_dir=str(glue_dir)).runs()
    ident = plain[0].identity()
    assert "head" not in ident["model"] and "head_init" not in ident["training"]
    spec["model"]["head"] = "sentence-embedding"
    spec["training"]["head_init"] = "probe"
    se = load_study(write_spec(tmp_path / "b.yaml", spec), data_dir=str(glue_dir)).runs()
    assert {r.run_id for r in se}.isdisjoint(r.run_id for r in plain)
    assert se[0].identity()["model"]["head"] == "sentence-embedding"


def test_a_study_with_the_head_trains_benchmarks_and_reports(tmp_path, tiny_bert_dir, glue_dir):
    """model.head: sentence-embedding with head_init: probe through every stage that loads a
    model: the single and pair tasks train, the probe-fitted baseline is recorded, and the
    unmerged (eager and fast path), merged (saved and reloaded) and mixed-adapter (one single +
    one pair task) units pass their correctness gates."""
    from peftlab.pipeline import load_study, run_stages
    from peftlab.records import BaselineRecord, BenchRecord, RunRecord, read

    bench = {"modes": ["unmerged", "merged", "mixed"], "batch_sizes": [2],
             "seq_lengths": ["data"], "warmup": 1, "min_iterations": 2, "min_seconds": 0.0,
             "threads": 1, "runs": "first_seed", "fast_path": True}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_bert_dir, tasks=("sst2", "rte"),
                     methods=("full", "lora"), seeds=(1,), bench=bench)
    spec["model"]["head"] = "sentence-embedding"
    spec["training"]["head_init"] = "probe"
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "baselines", "finetune", "represent", "bench", "stats", "report"])
    store = Store(study.output_dir, create=False)
    runs = read(store, RunRecord)
    assert len(runs) == 4 and {r.status for r in runs} == {"done"}
    assert all(r.config["training"]["head_init"] == "probe" for r in runs)
    base = {b.task: b for b in read(store, BaselineRecord)}
    assert set(base) == {"sst2", "rte"}
    for b in base.values():
        assert b.probe_head is not None and b.probe_error is None
        assert b.probe_head["metrics"]["accuracy"]["value"] is not None
    points = read(store, BenchRecord)
    assert {p.mode_key for p in points} >= {"merged", "mixed", "unmerged", "unmerged+fast"}
    assert all(p.status == "done" for p in points), [p.failure_reason for p in points]
    assert any(p.mode == "mixed" and set(p.tasks) == {"sst2", "rte"} for p in points)
    report = (study.output_dir / "report.md").read_text(encoding="utf-8")
    assert "Base, probe-fitted head [CI]" in report
    # the one-off bench finds the head the adapter was trained with (--head auto)
    from peftlab.sentence_embedding import saved_head

    lora = next(r for r in runs if r.task == "rte" and r.method == "lora")
    full = next(r for r in runs if r.task == "rte" and r.method == "full")
    assert saved_head([str(study.output_dir / lora.artifact)]) == "sentence-embedding"
    assert saved_head([str(study.output_dir / full.artifact)]) == "sentence-embedding"
    assert saved_head([str(tiny_bert_dir)]) == "sequence-classification"
    from typer.testing import CliRunner

    from peftlab.cli import app

    res = CliRunner().invoke(app, ["bench", "--model", str(tiny_bert_dir), "--adapter",
                                   str(study.output_dir / lora.artifact), "--mode", "unmerged",
                                   "--batch-size", "1", "--task", "rte", "--data-dir",
                                   str(glue_dir), "--json"])
    assert res.exit_code == 0, res.output
    assert '"status": "done"' in res.output


def test_one_call_and_two_calls_of_the_encoder_agree(se_model, monkeypatch):
    """Both sides in one call (little padding) or one call per side (much padding, or PEFT's
    per-row adapters) compute the same logits and hidden states."""
    model, tok = se_model
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    outs = []
    for one_call in (True, False):
        monkeypatch.setattr(BertForSentenceEmbeddingClassification, "_pads_little",
                            staticmethod(lambda *_, v=one_call: v))
        with torch.no_grad():
            outs.append(model(**enc, output_hidden_states=True))
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=1e-5, rtol=1e-5)
    for h0, h1 in zip(outs[0].hidden_states, outs[1].hidden_states, strict=True):
        torch.testing.assert_close(h0, h1, atol=1e-5, rtol=1e-5)
    monkeypatch.undo()
    assert BertForSentenceEmbeddingClassification._pads_little(1, 60, 12)  # b1: one call
    assert not BertForSentenceEmbeddingClassification._pads_little(16, 60, 12)  # RTE-like
    assert BertForSentenceEmbeddingClassification._pads_little(16, 30, 26)  # MRPC-like


def test_inputs_embeds_are_refused_with_a_reason(se_model):
    """Without a prompt-based adapter bound to it, the head cannot tell virtual tokens from
    the text in inputs_embeds: refused, not pooled wrongly."""
    model, _ = se_model
    with pytest.raises(ValueError, match="attach_peft"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long), inputs_embeds=torch.zeros(1, 4, 64))


def _prompted(tiny_bert_dir, kind="prompt", virtual=3):
    """A fresh classifier under a prompt-tuning (or p-tuning) adapter whose virtual tokens
    differ from any init, bound with attach_peft; and the tokenizer."""
    from peft import PromptEncoderConfig, PromptTuningConfig, get_peft_model

    from peftlab.sentence_embedding import attach_peft

    resolved = resolve_model(str(tiny_bert_dir))
    tok = load_tokenizer(resolved)
    torch.manual_seed(0)
    base = load_classifier(resolved, num_labels=2, tokenizer=tok, head="sentence-embedding")
    heads = ["classifier", "pair_classifier"]
    cfg = (PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=virtual,
                              modules_to_save=heads) if kind == "prompt"
           else PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=virtual,
                                    encoder_hidden_size=16, modules_to_save=heads))
    model = attach_peft(get_peft_model(base, cfg))
    with torch.no_grad():
        model.prompt_encoder["default"].embedding.weight.normal_(0.0, 0.5)
    return model.eval(), tok


@pytest.mark.parametrize("side", ["right", "left"])
def test_a_prompt_adapter_reads_each_text_after_its_virtual_tokens(tiny_bert_dir, side):
    """Prompt tuning through PEFT's own forward (inputs_embeds with the virtual tokens first):
    each text, b of a pair included, is encoded as [P1..Pv] [CLS] text [SEP] by the bare
    encoder, its embedding the mean over the text's tokens only (virtual tokens not pooled),
    and the hidden states come back in the caller's layout, virtual positions left out."""
    model, tok = _prompted(tiny_bert_dir)
    inner = model.get_base_model()
    prompt = model.prompt_encoder["default"].embedding.weight.detach()  # [v, hidden]

    def alone(text):
        ids = tok(text, return_tensors="pt")["input_ids"]
        embeds = torch.cat([prompt[None], inner.bert.embeddings.word_embeddings(ids)], dim=1)
        with torch.no_grad():
            hidden = inner.bert(inputs_embeds=embeds).last_hidden_state[0, len(prompt):]
        return hidden, hidden.mean(0)

    tok.padding_side = side
    try:
        pairs = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True,
                    return_tensors="pt")
        singles = tok([a for a, _ in PAIRS], padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**pairs, output_hidden_states=True)
            single = model(**singles, output_hidden_states=True)
    finally:
        tok.padding_side = "right"
    for i, (a, b_text) in enumerate(PAIRS):
        ha, u = alone(a)
        hb, v = alone(b_text)
        cos = F.cosine_similarity(u, v, dim=0)
        head = model.base_model.pair_classifier
        torch.testing.assert_close(out.logits[i], head(cos[None]), atol=1e-5, rtol=1e-5)
        # hidden states: the caller's layout (its mask's length), b's first token where it stood
        assert out.hidden_states[-1].shape[1] == pairs["input_ids"].shape[1]
        first_b = pairs["token_type_ids"][i].tolist().index(1)
        torch.testing.assert_close(out.hidden_states[-1][i, first_b], hb[1], atol=1e-5,
                                   rtol=1e-5)
        row = singles["attention_mask"][i].bool()
        torch.testing.assert_close(single.hidden_states[-1][i][row], ha, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.logits[i], model.base_model.classifier(u), atol=1e-5,
                                   rtol=1e-5)


def test_a_prompt_adapter_gives_the_same_logits_in_one_call_or_two(tiny_bert_dir, monkeypatch):
    model, tok = _prompted(tiny_bert_dir)
    enc = tok([a for a, _ in PAIRS], [b for _, b in PAIRS], padding=True, return_tensors="pt")
    outs = []
    for one_call in (True, False):
        monkeypatch.setattr(BertForSentenceEmbeddingClassification, "_pads_little",
                            staticmethod(lambda *_, v=one_call: v))
        with torch.no_grad():
            outs.append(model(**enc, output_hidden_states=True))
    torch.testing.assert_close(outs[0].logits, outs[1].logits, atol=1e-5, rtol=1e-5)
    for h0, h1 in zip(outs[0].hidden_states, outs[1].hidden_states, strict=True):
        torch.testing.assert_close(h0, h1, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["prompt", "ptuning"])
def test_a_prompt_adapter_saves_portable_and_reloads_to_its_logits(tiny_bert_dir, tmp_path, kind):
    """The portable layout of a prompt-based adapter: its virtual tokens (prompt_embeddings)
    beside the head (PEFT saves that head as base_model.<head>, not base_model.model.<head>),
    head.json says they are not pooled, and peftlab's loader rebuilds the same logits."""
    import json

    from peftlab.sentence_embedding import load_portable_adapter, save_portable

    model, tok = _prompted(tiny_bert_dir, kind)
    with torch.no_grad():
        model.base_model.classifier.modules_to_save["default"].weight.fill_(0.5)
        enc = tok(["a cat sat", "one two three four"], padding=True, return_tensors="pt")
        pair = tok(["a cat sat"], ["the dog ran"], return_tensors="pt")
        want, want_pair = model(**enc).logits, model(**pair).logits
    model.save_pretrained(tmp_path / "a")
    save_portable(tmp_path / "a", max_length=32)
    head = json.loads((tmp_path / "a" / "head.json").read_text(encoding="utf-8"))
    assert "3 virtual tokens" in head["virtual_tokens"] and "left out of the mean" in \
        head["virtual_tokens"]
    resolved = resolve_model(str(tiny_bert_dir))
    base = load_classifier(resolved, num_labels=2, tokenizer=tok, head="sentence-embedding")
    again = load_portable_adapter(base, tmp_path / "a", adapter_name="x")
    again.set_adapter("x")
    again.eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**enc).logits, want, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(again(**pair).logits, want_pair, atol=1e-5, rtol=1e-5)
