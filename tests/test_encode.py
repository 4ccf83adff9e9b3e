"""Tokenising task frames, padding batches, and finding the last real token."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import torch

from peftlab import encode
from peftlab.encode import encode_frame, last_token_index, make_collator
from peftlab.errors import DataError, ModelError
from peftlab.models import load_classifier, load_tokenizer, resolve_model


@pytest.fixture(scope="module")
def llama_tokenizer(tiny_llama_dir: Path):
    return load_tokenizer(resolve_model(str(tiny_llama_dir)))


@pytest.fixture(scope="module")
def bert_tokenizer(tiny_bert_dir: Path):
    return load_tokenizer(resolve_model(str(tiny_bert_dir)))


def single_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "row": [0, 1, 2],
        "text_a": ["a wonderful film", "dull", "the plot is thin and the jokes fall flat"],
        "label": [1, 0, 0],
    })


def pair_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "row": [0, 1],
        "text_a": ["the company said its profit rose", "a man is playing a guitar"],
        "text_b": ["profit rose , the company said", "a woman is reading a book in the park"],
        "label": [1, 0],
    })


# ----------------------------------------------------------------------------- encode_frame


def test_single_texts(llama_tokenizer) -> None:
    ds = encode_frame(single_frame(), llama_tokenizer, max_length=32)
    assert ds.column_names == ["input_ids", "attention_mask", "labels", "length"]
    assert ds.features["labels"].dtype == "int64"
    assert ds["labels"] == [1, 0, 0]
    for text, ids, mask, length in zip(single_frame()["text_a"], ds["input_ids"],
                                       ds["attention_mask"], ds["length"], strict=True):
        assert ids == llama_tokenizer(text)["input_ids"]  # same as one call per text, unpadded
        assert ids[0] == llama_tokenizer.bos_token_id
        assert mask == [1] * len(ids) and length == len(ids)


def test_batches_agree_with_one_call(llama_tokenizer, monkeypatch) -> None:
    frame = pd.concat([single_frame()] * 3, ignore_index=True)
    whole = encode_frame(frame, llama_tokenizer, max_length=32)
    monkeypatch.setattr(encode, "_BATCH", 2)  # batch boundaries inside the frame
    assert encode_frame(frame, llama_tokenizer, max_length=32).to_dict() == whole.to_dict()


def test_bert_pairs_use_the_separator(bert_tokenizer) -> None:
    ds = encode_frame(pair_frame(), bert_tokenizer, max_length=64)
    assert "token_type_ids" in ds.column_names
    sep = bert_tokenizer.sep_token_id
    for ids, types in zip(ds["input_ids"], ds["token_type_ids"], strict=True):
        assert ids[0] == bert_tokenizer.cls_token_id and ids.count(sep) == 2
        first_sep = ids.index(sep)
        assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}


def test_bert_pairs_truncate_the_longer_text(bert_tokenizer) -> None:
    frame = pd.DataFrame({"text_a": ["dull"], "text_b": [" ".join(["the film"] * 40)],
                          "label": [0]})
    ids = encode_frame(frame, bert_tokenizer, max_length=16)["input_ids"][0]
    assert len(ids) == 16
    sep = bert_tokenizer.sep_token_id
    assert ids[: ids.index(sep) + 1] == bert_tokenizer("dull")["input_ids"]  # text_a kept whole


def test_llama_pairs_use_the_template(llama_tokenizer) -> None:
    frame = pair_frame()
    default = encode_frame(frame, llama_tokenizer, max_length=64)
    custom = encode_frame(frame, llama_tokenizer, max_length=64, pair_template="{a} || {b}")
    for i, (a, b) in enumerate(zip(frame["text_a"], frame["text_b"], strict=True)):
        assert default["input_ids"][i] == llama_tokenizer(f"{a}\n{b}")["input_ids"]
        assert custom["input_ids"][i] == llama_tokenizer(f"{a} || {b}")["input_ids"]
    assert "token_type_ids" not in default.column_names


@pytest.mark.parametrize("template", ["{a} {a}", "{a} and more", "{b}: {a} {c}", "{a} {b"])
def test_bad_templates_are_rejected(llama_tokenizer, template: str) -> None:
    with pytest.raises(ModelError, match="pair_template"):
        encode_frame(pair_frame(), llama_tokenizer, max_length=32, pair_template=template)


def test_template_ignored_when_there_is_a_separator(bert_tokenizer) -> None:
    ds = encode_frame(pair_frame(), bert_tokenizer, max_length=64, pair_template="{a}")
    assert len(ds) == 2  # BERT pairs go to the tokenizer as (a, b); the template is not used


def test_regression_labels_and_truncation(llama_tokenizer) -> None:
    frame = single_frame().assign(label=[0.5, 3.25, 5.0])
    ds = encode_frame(frame, llama_tokenizer, max_length=4, label_dtype="float32")
    assert ds.features["labels"].dtype == "float32"
    assert ds["labels"] == [0.5, 3.25, 5.0]
    assert max(ds["length"]) == 4


def test_frame_errors(llama_tokenizer) -> None:
    with pytest.raises(DataError, match="text_a"):
        encode_frame(pd.DataFrame({"label": [0]}), llama_tokenizer, max_length=8)
    half = pair_frame().astype({"text_b": object})
    half.loc[1, "text_b"] = None
    with pytest.raises(DataError, match="text_b is missing in 1 of 2 rows"):
        encode_frame(half, llama_tokenizer, max_length=8)
    with pytest.raises(DataError, match="integer class ids"):
        encode_frame(single_frame().assign(label=["pos", "neg", "neg"]), llama_tokenizer,
                     max_length=8)
    with pytest.raises(ModelError, match="max_length"):
        encode_frame(single_frame(), llama_tokenizer, max_length=0)


def test_all_missing_text_b_means_single_texts(llama_tokenizer) -> None:
    frame = single_frame().assign(text_b=None)
    assert encode_frame(frame, llama_tokenizer, max_length=32).to_dict() == encode_frame(
        single_frame(), llama_tokenizer, max_length=32).to_dict()


def test_glue_sst2_after_normalisation(glue_dir: Path, llama_tokenizer) -> None:
    frame = pd.read_csv(glue_dir / "SST-2" / "dev.tsv", sep="\t", quoting=csv.QUOTE_NONE,
                        nrows=32)
    raw = frame.rename(columns={"sentence": "text_a"})
    assert raw["text_a"].str.endswith(" ").all()  # why the data loaders strip whitespace
    stripped = raw.assign(text_a=raw["text_a"].str.strip())
    space = llama_tokenizer.convert_tokens_to_ids("Ġ")
    raw_ids = encode_frame(raw, llama_tokenizer, max_length=128)["input_ids"]
    clean_ids = encode_frame(stripped, llama_tokenizer, max_length=128)["input_ids"]
    assert all(ids[-1] == space for ids in raw_ids)
    assert not any(ids[-1] == space for ids in clean_ids)


# ----------------------------------------------------------------------------- collator


def test_dynamic_and_fixed_padding(bert_tokenizer) -> None:
    ds = encode_frame(pair_frame(), bert_tokenizer, max_length=64)
    longest = max(ds["length"])
    batch = make_collator(bert_tokenizer)([ds[0], ds[1]])
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert batch["input_ids"].shape == (2, longest)
    assert batch["labels"].dtype == torch.int64
    assert batch["attention_mask"].sum(dim=1).tolist() == ds["length"]
    fixed = make_collator(bert_tokenizer, pad_to=40)([ds[0], ds[1]])
    assert fixed["input_ids"].shape == (2, 40)
    with pytest.raises(ModelError, match="pad_to"):
        make_collator(bert_tokenizer, pad_to=0)


def test_collator_float_labels_and_padding_side(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    frame = single_frame().assign(label=[0.5, 1.0, 2.0])
    for side in ("right", "left"):
        tokenizer = load_tokenizer(resolved, padding_side=side)
        ds = encode_frame(frame, tokenizer, max_length=32, label_dtype="float32")
        batch = make_collator(tokenizer)([ds[i] for i in range(3)])
        assert batch["labels"].dtype == torch.float32
        short = batch["attention_mask"][1]  # "dull": shortest row
        real_at_start = bool(short[0])
        assert real_at_start == (side == "right")


# ----------------------------------------------------------------------------- last token


def test_last_token_index_by_hand() -> None:
    pad = 0
    right = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9], [5, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 5, 6, 7], [5, 6, 7, 8, 9], [0, 0, 0, 0, 5]])
    assert last_token_index(right, right != pad, pad).tolist() == [2, 4, 0]
    assert last_token_index(left, left != pad, pad).tolist() == [4, 4, 4]
    # Without a pad id the attention mask alone decides.
    assert last_token_index(right, right != pad, None).tolist() == [2, 4, 0]


def test_last_token_skips_pad_ids_inside_the_text_like_the_head() -> None:
    # pad = eos: a text ending in eos has its eos skipped by LlamaForSequenceClassification.
    ids = torch.tensor([[1, 7, 2, 2, 2]])
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    assert last_token_index(ids, mask, pad_token_id=2).tolist() == [1]


def test_last_token_matches_the_llama_head(tiny_llama_dir: Path) -> None:
    resolved = resolve_model(str(tiny_llama_dir))
    texts = ["a wonderful film", "dull", "the plot is thin and the jokes fall flat"]
    for side in ("right", "left"):
        tokenizer = load_tokenizer(resolved, padding_side=side)
        model = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        index = last_token_index(batch["input_ids"], batch["attention_mask"],
                                 tokenizer.pad_token_id)
        lengths = batch["attention_mask"].sum(dim=1)
        expected = lengths - 1 if side == "right" else torch.full_like(lengths, lengths.max() - 1)
        assert index.tolist() == expected.tolist()
        with torch.no_grad():
            hidden = model.model(**batch).last_hidden_state  # [batch, seq, hidden]
            logits = model(**batch).logits  # the head's own pooling
        pooled = model.score(hidden[torch.arange(len(texts)), index])
        torch.testing.assert_close(pooled, logits)
