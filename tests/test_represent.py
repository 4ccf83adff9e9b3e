"""Representation extraction: pooling never reads padding, `last` is what the head reads, reuse.

    .venv/bin/python -m pytest tests/test_represent.py -q
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from rich.console import Console

from peftlab.context import Context
from peftlab.encode import encode_frame, iter_batches
from peftlab.extraction import extract, load_representations, probe_hash, resolve_pooling
from peftlab.models import load_classifier, load_tokenizer, resolve_model
from peftlab.pipeline import load_study, open_study_store, run_stages
from peftlab.stages.represent import run as represent_stage
from peftlab.testing import MIXED_LENGTH_TEXTS, tiny_spec, write_spec

TEXTS = MIXED_LENGTH_TEXTS


def _load(folder):
    resolved = resolve_model(str(folder))
    tokenizer = load_tokenizer(resolved)
    model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
    return tokenizer, model


def _dataset(tokenizer):
    df = pd.DataFrame({"text_a": TEXTS, "label": [1, 0, 0, 1, 1], "row": range(len(TEXTS))})
    return encode_frame(df, tokenizer, max_length=48)


def _close(a, b):
    # Another padded length changes matmul shapes, hence float rounding (~1e-7 relative) only.
    scale = float(abs(a).max())
    assert abs(a - b).max() <= 1e-5 * scale, abs(a - b).max() / scale


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    return _load(tiny_llama_dir)


@pytest.fixture(scope="module")
def bert(tiny_bert_dir):
    return _load(tiny_bert_dir)


@pytest.mark.parametrize(("which", "pooling"), [("llama", "last"), ("bert", "mean")])
def test_same_vectors_for_right_and_left_padding(which, pooling, request):
    # BERT's absolute position embeddings make this fail unless positions count from each
    # row's first real token; Llama's rotary ones are shift-invariant up to rounding.
    tokenizer, model = request.getfixturevalue(which)
    ds = _dataset(tokenizer)
    assert tokenizer.padding_side == "right"
    right = extract(model, tokenizer, ds, pooling=pooling, batch_size=len(TEXTS))
    alone = extract(model, tokenizer, ds, pooling=pooling, batch_size=1)  # no padding at all
    tokenizer.padding_side = "left"
    try:
        batch = next(iter_batches(ds, tokenizer, len(TEXTS), "cpu"))
        assert (batch["attention_mask"][:, 0] == 0).any()  # the batch really is left-padded
        left = extract(model, tokenizer, ds, pooling=pooling, batch_size=len(TEXTS))
    finally:
        tokenizer.padding_side = "right"
    assert right.shape == (3, len(TEXTS), 64)  # embeddings + 2 blocks
    _close(right, left)
    _close(right, alone)


def test_last_pooling_reads_what_the_llama_head_reads(llama):
    tokenizer, model = llama
    ds = _dataset(tokenizer)
    reps = extract(model, tokenizer, ds, pooling="last", batch_size=len(TEXTS))
    batch = next(iter_batches(ds, tokenizer, len(TEXTS), "cpu"))
    with torch.inference_mode():
        logits = model(**batch).logits
        from_pooled = model.score(torch.from_numpy(reps[-1]))
    torch.testing.assert_close(from_pooled, logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("which", ["llama", "bert"])
@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_vectors_never_read_padding(which, pooling, request):
    tokenizer, model = request.getfixturevalue(which)
    ds = _dataset(tokenizer)
    before = extract(model, tokenizer, ds, pooling=pooling, batch_size=len(TEXTS))
    longer = extract(model, tokenizer, ds, pooling=pooling, batch_size=len(TEXTS), pad_to=48)
    embeddings = model.get_input_embeddings().weight
    saved = embeddings[tokenizer.pad_token_id].clone()
    with torch.no_grad():
        embeddings[tokenizer.pad_token_id] = 1000.0  # padding that leaked in would dominate
    try:
        odd_pad = extract(model, tokenizer, ds, pooling=pooling, batch_size=len(TEXTS))
    finally:
        with torch.no_grad():
            embeddings[tokenizer.pad_token_id] = saved
    _close(before, longer)
    _close(before, odd_pad)


def test_default_pooling_follows_the_model_family(llama, bert):
    assert resolve_pooling("auto", llama[1]) == "last"
    assert resolve_pooling("auto", bert[1]) == "mean"
    assert resolve_pooling("mean", llama[1]) == "mean"


def test_probe_hash_covers_rows_texts_and_order():
    df = pd.DataFrame({"text_a": ["a b", "c"], "label": [0, 1], "row": [3, 7]})
    h = probe_hash(df)
    assert probe_hash(df.copy()) == h
    assert probe_hash(df.iloc[::-1].reset_index(drop=True)) != h
    assert probe_hash(df.assign(row=[3, 8])) != h
    assert probe_hash(df.assign(text_a=["a", "b c"])) != h  # field boundaries cannot shift


def _represent(study):
    store = open_study_store(study)
    try:
        represent_stage(Context(study=study, store=store, console=Console(quiet=True)))
    finally:
        store.close()
    return study


def test_stage_extracts_once_and_re_extracts_a_new_probe(tmp_path, tiny_llama_dir, glue_dir,
                                                        monkeypatch):
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, tasks=("rte",),
                     methods=("lora",), seeds=(1,),
                     training={"max_steps": 1, "batch_size": 8, "bootstrap_samples": 10})
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune"], console=Console(quiet=True))
    _represent(study)
    (run,) = study.runs()
    store = open_study_store(study)
    try:
        base, base_man = load_representations(store, "rte", "base")
        tuned, run_man = load_representations(store, "rte", run.run_id)
    finally:
        store.close()
    assert sorted(base) == [0, 1, 2] and base[0].shape == (24, 64)
    assert base[0].dtype == "float32"
    assert run_man["probe_hash"] == base_man["probe_hash"]
    assert run_man["probe_rows"] == base_man["probe_rows"]
    assert (run_man["n"], run_man["d"], run_man["layers"], run_man["pooling"]) == (
        24, 64, 3, "last")
    assert run_man["run_id"] == run.run_id and base_man["run_id"] is None

    # A second run extracts nothing: extraction would now fail.
    def no_extraction(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr("peftlab.stages.represent.extract", no_extraction)
    _represent(study)
    monkeypatch.undo()

    # Another probe set (and storage dtype) invalidates every file; the run ids stay the same.
    spec["represent"] = {"probe_samples": 20, "probe_seed": 5, "batch_size": 8,
                         "dtype": "float16"}
    study2 = _represent(load_study(write_spec(tmp_path / "spec.yaml", spec),
                                  data_dir=str(glue_dir)))
    assert [r.run_id for r in study2.runs()] == [run.run_id]
    store = open_study_store(study2)
    try:
        for key in ("base", run.run_id):
            layers, man = load_representations(store, "rte", key)
            assert man["probe_hash"] != base_man["probe_hash"]
            assert layers[2].shape == (20, 64) and layers[2].dtype == "float16"
    finally:
        store.close()
