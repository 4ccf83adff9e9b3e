"""Readout sensitivity (issue 16): several poolings from one forward pass, the pooled-token
diagnostic, the flag when a drift verdict depends on the pooling, and data.strip_whitespace.

    .venv/bin/python -m pytest tests/test_readout.py -q
"""

from __future__ import annotations

import contextlib

import pandas as pd
import pytest
import torch
from rich.console import Console

from peftlab.context import Context
from peftlab.data import StudyData
from peftlab.encode import encode_frame, iter_batches
from peftlab.errors import PeftlabError, SpecError
from peftlab.extraction import (
    extract,
    load_representations,
    pooled_token_ids,
    primary_pooling,
    resolve_pooling,
    resolve_poolings,
    token_diagnostic,
    token_kind,
)
from peftlab.models import load_classifier, load_tokenizer, resolve_model
from peftlab.pipeline import load_study, run_stages
from peftlab.records import DriftRecord, RepresentRecord, write
from peftlab.store import Store
from peftlab.testing import MIXED_LENGTH_TEXTS, tiny_spec, tiny_study, write_spec

TEXTS = MIXED_LENGTH_TEXTS


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    resolved = resolve_model(str(tiny_llama_dir))
    tokenizer = load_tokenizer(resolved)
    return tokenizer, load_classifier(resolved, num_labels=2, tokenizer=tokenizer)


def _dataset(tokenizer, texts=TEXTS):
    df = pd.DataFrame({"text_a": texts, "label": [i % 2 for i in range(len(texts))],
                       "row": range(len(texts))})
    return encode_frame(df, tokenizer, max_length=48)


@contextlib.contextmanager
def _store(study):
    store = Store(study.output_dir)
    try:
        yield store
    finally:
        store.close()


class _Calls:
    """Counts calls of a model's top-level forward (a pre-hook sees every `model(...)`)."""

    def __init__(self, model):
        self.n = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.n += 1


# ----------------------------------------------------------------------------- one forward pass


def test_every_pooling_comes_from_one_forward_pass_per_batch(llama):
    tokenizer, model = llama
    ds = _dataset(tokenizer)
    calls = _Calls(model)
    try:
        both = extract(model, tokenizer, ds, pooling=["last", "mean", "first"],
                       batch_size=len(TEXTS))
        assert calls.n == 1  # three poolings, one batch, one model call
        calls.n = 0
        extract(model, tokenizer, ds, pooling=["last", "mean"], batch_size=2)
        assert calls.n == 3  # ceil(5 / 2) batches, whatever the number of poolings
        calls.n = 0
        singles = {p: extract(model, tokenizer, ds, pooling=p, batch_size=len(TEXTS))
                   for p in ("last", "mean", "first")}
        assert calls.n == 3  # one pass per single-pooling extraction: the list saves two
    finally:
        calls.handle.remove()
    assert set(both) == {"last", "mean", "first"}
    for p, single in singles.items():
        assert both[p].shape == single.shape == (3, len(TEXTS), 64)
        torch.testing.assert_close(torch.from_numpy(both[p]), torch.from_numpy(single))
    # the readouts really are different positions
    assert not torch.allclose(torch.from_numpy(both["last"]), torch.from_numpy(both["mean"]))


def test_first_pooling_reads_the_first_real_token_under_left_padding(llama):
    tokenizer, model = llama
    ds = _dataset(tokenizer)
    right = extract(model, tokenizer, ds, pooling="first", batch_size=len(TEXTS))
    tokenizer.padding_side = "left"
    try:
        batch = next(iter_batches(ds, tokenizer, len(TEXTS), "cpu"))
        assert (batch["attention_mask"][:, 0] == 0).any()
        left = extract(model, tokenizer, ds, pooling="first", batch_size=len(TEXTS))
    finally:
        tokenizer.padding_side = "right"
    scale = float(abs(right).max())
    assert abs(right - left).max() <= 1e-5 * scale
    # every text starts with <s>: its embedding-layer vector is the same for every example
    assert abs(right[0] - right[0][:1]).max() == 0


# ----------------------------------------------------------------------------- spec


def test_pooling_list_in_the_spec_and_which_one_is_primary(tmp_path, tiny_llama_dir,
                                                           tiny_bert_dir):
    def spec(pooling, model=tiny_llama_dir):
        path = write_spec(tmp_path / "s.yaml", tiny_spec(
            tmp_path / "study", model_dir=model,
            represent={"probe_samples": 8, "pooling": pooling}))
        return load_study(path)

    assert spec("last").spec.represent.poolings == ["last"]  # a single string stays valid
    assert spec(["mean", "last"]).spec.represent.poolings == ["mean", "last"]
    for bad, word in ((["last", "last"], "twice"), (["auto", "mean"], "auto"),
                      ([], "at least one"), (["last", "max"], "max")):
        with pytest.raises(SpecError, match=r"represent\.pooling") as err:
            spec(bad)
        assert word in str(err.value)
    from transformers import AutoConfig

    llama_cfg = AutoConfig.from_pretrained(tiny_llama_dir)
    bert_cfg = AutoConfig.from_pretrained(tiny_bert_dir)
    # the head's readout is primary when listed: last for a decoder, first for an encoder
    assert primary_pooling(resolve_poolings(["mean", "last"], llama_cfg), llama_cfg) == "last"
    assert primary_pooling(["mean", "first"], bert_cfg) == "first"
    assert primary_pooling(["mean"], bert_cfg) == "mean"  # else the first listed
    assert resolve_poolings("auto", bert_cfg) == ["mean"]
    assert resolve_pooling(["mean", "last"], llama_cfg) == "last"  # what forgetting pools with


# ----------------------------------------------------------------------------- diagnostic


def test_probes_that_all_end_in_one_token_give_share_one_and_a_warning(llama):
    tokenizer, _ = llama
    same_end = [t + " ." for t in TEXTS]
    ids = pooled_token_ids(_dataset(tokenizer, same_end)["input_ids"], "last",
                           tokenizer.pad_token_id)
    d = token_diagnostic(ids, tokenizer)
    assert d["top_share"] == 1.0 and d["distinct"] == 1 and d["warn"]
    assert d["top"][0]["text"] == "." and d["top_is_punctuation"]
    assert not d["top_is_whitespace"]
    # a trailing space, kept, is its own token for this byte-level BPE: whitespace
    spaced = token_diagnostic(pooled_token_ids(
        _dataset(tokenizer, [t + " " for t in TEXTS])["input_ids"], "last",
        tokenizer.pad_token_id), tokenizer)
    assert spaced["top"][0]["token"] == "\u0120" and spaced["top_is_whitespace"]
    assert spaced["warn"]
    # the texts as they are end in five different tokens: no warning
    plain = token_diagnostic(pooled_token_ids(_dataset(tokenizer)["input_ids"], "last",
                                              tokenizer.pad_token_id), tokenizer)
    assert plain["top_share"] == pytest.approx(1 / 5) and not plain["warn"]
    assert plain["distinct"] == 5
    # first pooling reads <s> for every text: a special token
    first = token_diagnostic(pooled_token_ids(_dataset(tokenizer)["input_ids"], "first",
                                              tokenizer.pad_token_id), tokenizer)
    assert first["top_share"] == 1.0 and first["top_is_special"]
    # the threshold is a strict "more than"
    assert not token_diagnostic(ids, tokenizer, warn_share=1.0)["warn"]
    with pytest.raises(PeftlabError, match="last' or 'first"):
        pooled_token_ids([[1, 2]], "mean", None)


def test_pooled_token_ids_follow_the_heads_rule_and_token_kinds():
    # last: the rightmost id that is not the pad id (as LlamaForSequenceClassification reads)
    assert pooled_token_ids([[5, 6, 0, 0], [7]], "last", 0).tolist() == [6, 7]
    assert pooled_token_ids([[0, 0]], "last", 0).tolist() == [0]  # no real token: index 0
    assert pooled_token_ids([[5, 6]], "first", 0).tolist() == [5]
    assert [token_kind(t) for t in (" ", "\n", " .", "...", " '", " film", "!a")] == [
        "whitespace", "whitespace", "punctuation", "punctuation", "punctuation", "content",
        "content"]


# ----------------------------------------------------------------------------- strip_whitespace


def test_strip_whitespace_changes_run_ids_and_the_text(tmp_path, tiny_llama_dir, glue_dir):
    def study(**data):
        path = write_spec(tmp_path / f"s{len(data)}{data}.yaml".replace(" ", ""), tiny_spec(
            tmp_path / "study", model_dir=tiny_llama_dir, tasks=("sst2",), seeds=(1,),
            data={"train_samples": 8, "eval_samples": 8, **data}))
        return load_study(path, data_dir=str(glue_dir))

    default, stripped, kept = study(), study(strip_whitespace=True), study(strip_whitespace=False)
    ids = {name: [rc.run_id for rc in s.runs()]
           for name, s in (("default", default), ("stripped", stripped), ("kept", kept))}
    assert ids["default"] == ids["stripped"]  # the default keeps the ids runs already have
    assert not set(ids["kept"]) & set(ids["default"])
    assert all("strip_whitespace" not in rc.as_dict() for rc in default.runs())
    assert all(rc.as_dict()["strip_whitespace"] is False for rc in kept.runs())
    d_kept, d_default = StudyData(kept), StudyData(default)
    text_kept = d_kept.split("sst2", "eval")["text_a"]
    text_default = d_default.split("sst2", "eval")["text_a"]
    assert all(t.endswith(" ") for t in text_kept)  # every GLUE SST-2 sentence ends in a space
    assert (text_kept.str.rstrip() == text_default).all()
    assert d_kept.checksum("sst2", "eval") != d_default.checksum("sst2", "eval")
    assert d_kept.normalisation()["strip_whitespace"] is False
    assert "kept" in d_kept.normalisation()["rule"]


# ----------------------------------------------------------------------------- the pipeline


@pytest.fixture(scope="module")
def kept(tmp_path_factory, tiny_llama_dir, glue_dir):
    """A tiny SST-2 study on unstripped text, pooled [last, mean], through the report."""
    tmp = tmp_path_factory.mktemp("readout")
    # max_length 256: no SST-2 dev sentence is truncated, so each keeps its final space
    study = tiny_study(
        tmp, model_dir=tiny_llama_dir, glue_dir=glue_dir, tasks=("sst2",), seeds=(1, 2),
        model={"name": str(tiny_llama_dir), "max_length": 256},
        data={"train_samples": 32, "eval_samples": 24, "strip_whitespace": False},
        represent={"probe_samples": 24, "batch_size": 8, "pooling": ["mean", "last"]},
        stages=["data", "baselines", "finetune", "represent", "drift", "stats", "report"])
    return study


def test_poolings_are_stored_side_by_side_and_drift_runs_for_each(kept):
    with _store(kept) as store:
        base = store.get("represent", "sst2/base")
        other = store.get("represent", "sst2/base/mean")
        assert base["pooling"] == "last"  # the head's readout, though listed second
        assert RepresentRecord.parse(base).readout == "primary"
        assert base["poolings"] == ["last", "mean"] and base["head_pooling"] == "last"
        assert other["pooling"] == "mean" and other["readout"] == "exploratory"
        assert other["file"] == "represent/sst2/mean/base.safetensors"
        assert other["content_sha256"] != base["content_sha256"]
        last, _ = load_representations(store, "sst2", "base")
        mean, _ = load_representations(store, "sst2", "base", "mean")
        assert last[1].shape == mean[1].shape and abs(last[1] - mean[1]).max() > 0
        # provenance: the text rule the vectors were extracted under
        assert base["provenance"]["text_normalisation"]["strip_whitespace"] is False
        runs = store.records("runs")
        assert runs and all(r["config"]["strip_whitespace"] is False for r in runs)
        drift = store.records("drift")
        primary = [r for r in drift if r.get("readout", "primary") == "primary"]
        explore = [r for r in drift if r.get("readout") == "exploratory"]
        assert primary and len(explore) == len(primary)
        assert {r["pooling"] for r in primary} == {"last"}
        assert {r["pooling"] for r in explore} == {"mean"}
        assert all(r["key"].startswith("mean/") for r in explore)


def test_the_diagnostic_warns_when_every_probe_is_read_at_the_space_token(kept):
    with _store(kept) as store:
        assert [r["key"] for r in store.records("readout")] == ["sst2/last"]  # not for mean
        rec = store.get("readout", "sst2/last")
    d = rec["diagnostic"]
    assert d["n"] == 24 and d["top_share"] == 1.0 and d["warn"]
    assert d["top"][0]["token"] == "\u0120" and d["top_is_whitespace"]
    assert rec["readout"] == "primary" and rec["strip_whitespace"] is False
    md = kept.output_dir.joinpath("report.md").read_text(encoding="utf-8")
    readout = md.split("## Readout sensitivity", 1)[1].split("\n## ", 1)[0]
    assert "**Primary readout:** last pooling (what the classification head reads)" in readout
    assert "**Readout warning:** on sst2, last pooling (primary) reads a whitespace token" in readout
    assert "for 24 of 24 probes (100.00%" in readout
    assert "(data.strip\\_whitespace: false)" in readout and "is kept" in readout
    answers = md.split("## Answers", 1)[1].split("\n## ", 1)[0]
    assert "**Readout warning:**" in answers  # next to the primary verdict
    assert "| last (primary) | mean (exploratory) |" in readout  # drift side by side
    rows = [line for line in readout.splitlines() if line.startswith("| sst2 | full (2 runs) |")]
    assert [r.split(" | ")[2] for r in rows] == ["0", "1", "2", "mean over transformer layers"]
    assert all("\u2014" not in r for r in rows)
    # every probe pooled at the same token: identical embedding-layer vectors, CKA undefined
    assert rows[0].split(" | ")[3] == "undefined" and rows[0].split(" | ")[4] != "undefined"


def test_exploratory_poolings_are_their_own_stats_family(kept):
    with _store(kept) as store:
        stats = store.records("stats")
    settings = next(r for r in stats if r["kind"] == "settings")
    comps = [r for r in stats if r["kind"] in ("comparison", "across_tasks")]
    explore = [c for c in comps if c.get("readout") == "exploratory"]
    assert explore and all(c["family"] == "exploratory/readout" and c["role"] == "exploratory"
                           and c["question"] is None and c["pooling"] == "mean"
                           and c["key"].startswith("readout/mean/") for c in explore)
    primary_keys = {c["key"] for c in comps if c.get("readout") == "primary"}
    assert {c["primary_key"] for c in explore} <= primary_keys
    assert all(c["pooling"] == "last" for c in comps if c["area"] == "drift"
               and c.get("readout") == "primary")
    fams = settings["families"]
    fam = fams["exploratory/readout"]
    twins = [c for c in comps if c.get("readout") == "primary"
             and c["area"] in ("drift", "seed_noise")]
    assert fam["comparisons"] == len(explore) == len(twins)  # each drift comparison once more
    # planned from the spec alone: every exploratory drift and seed-noise comparison plus the
    # RQ1 across-task one (lora vs full), repeated for the one exploratory pooling
    assert fam["planned"] == (fams["exploratory/drift"]["planned"]
                              + fams["exploratory/seed_noise"]["planned"] + 1)
    # the primary family did not grow: no exploratory readout is primary
    assert all(c.get("readout") != "exploratory" for c in comps if c["role"] == "primary")


def test_represent_and_drift_reruns_reuse_every_pooling(kept):
    with _store(kept) as store:
        before = {r["key"]: r["content_sha256"] for r in store.records("represent")}
        drift_before = {r["key"]: r["stamp"] for r in store.records("drift")}
    run_stages(kept, ["represent", "drift"])
    with _store(kept) as store:
        assert {r["key"]: r["content_sha256"] for r in store.records("represent")} == before
        assert {r["key"]: r["stamp"] for r in store.records("drift")} == drift_before


# ----------------------------------------------------------------------------- the summary flag


def _reverse(rec: dict) -> dict:
    """A base-vs-run drift record with full's and lora's drift swapped (1 - v scaled by the
    sample's slopes 0.08 / 0.03), so under this readout lora moves further than full."""
    factor = {"full": 0.03 / 0.08, "lora": 0.08 / 0.03}[rec["method"]]
    values = dict(rec["values"])
    if rec["kind"] == "base_vs_run":
        for m in ("linear_cka_debiased", "centered_cosine"):
            if values.get(m) is not None:
                values[m] = 1 - (1 - values[m]) * factor
    return {**rec, "values": values}


def test_a_verdict_that_reverses_under_another_pooling_is_flagged(tmp_path):
    from peftlab.stages import report as report_stage
    from peftlab.stages import stats as stats_stage
    from peftlab.testing.sample_study import write_sample

    study = write_sample(tmp_path, degenerate=False)
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage.run(ctx)
        report_stage.run(ctx)
        plain = store.path("report.md").read_text(encoding="utf-8")
        extra = [DriftRecord.parse({k: v for k, v in _reverse(r).items() if k != "key"})
                 .model_copy(update={"pooling": "mean", "readout": "exploratory"})
                 for r in store.records("drift")]
        write(store, extra)
        stats_stage.run(ctx)
        report_stage.run(ctx)
        md = store.path("report.md").read_text(encoding="utf-8")
        stats = store.records("stats")
    finally:
        store.close()
    assert "Depends on the readout" not in plain  # one readout: nothing to flag
    rq1 = [c for c in stats if c.get("question") == "RQ1"]
    assert rq1 and all(c.get("readout") == "primary" for c in rq1)
    twin = {c["primary_key"]: c for c in stats if c.get("readout") == "exploratory"}
    for c in rq1:  # the primary verdict reverses under mean pooling
        assert c["diff"] > 0 > twin[c["key"]]["diff"]
    answers = md.split("## Answers", 1)[1].split("\n## ", 1)[0]
    assert "**Depends on the readout:**" in answers
    assert "under the primary last pooling but" in answers and "direction reversed" in answers
    readout = md.split("## Readout sensitivity", 1)[1].split("\n## ", 1)[0]
    assert "**Agreement between poolings:**" in readout and "direction reversed" in readout
    # the primary answer's own numbers are unchanged by the exploratory readout
    rq1_plain = plain.split("## Answers", 1)[1].split("**RQ2", 1)[0]
    assert rq1_plain.split("\n\n")[1] in answers
