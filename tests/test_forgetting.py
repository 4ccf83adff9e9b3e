"""Forgetting: off-task probes and held-out LM loss, on tiny models whose answers are known.

    .venv/bin/python -m pytest tests/test_forgetting.py -q

The base of the end-to-end tests is a tiny causal Llama pretrained for a few steps on the fixed
corpus (so its LM loss is far below ln(vocab)) whose input embeddings carry a "group" direction:
+v for 30 words, -v for 30 others. A synthetic probe task asks for the group of a sentence's last
word, with different words in its train and eval files, so only a representation that encodes the
group (the base's) can generalise; a backbone replaced by noise cannot (chance), and predicts the
corpus far worse.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from rich.console import Console

from peftlab.context import Context
from peftlab.errors import PeftlabError, SpecError
from peftlab.forgetting_measures import (
    LMLosses,
    fit_probe,
    lm_loss_difference,
    lm_losses,
    paired_accuracy_difference,
    probe_correct,
    resolve_layers,
    token_losses,
)
from peftlab.pipeline import load_study, open_study_store
from peftlab.testing import tiny_spec, tiny_study, write_spec

FILLERS = ["the", "a", "movie", "said", "was", "good", "bad", "it"]


# ----------------------------------------------------------------------------- fixtures


def _group_words(tokenizer) -> list[str]:
    """60 words that are one token each after a space (so they are a sentence's last token)."""
    vocab = tokenizer.get_vocab()
    words = sorted(w[1:] for w in vocab if w.startswith("Ġ") and w[1:].isalpha() and len(w) >= 3)
    words = [w for w in words
             if tokenizer(" " + w, add_special_tokens=False)["input_ids"] == [vocab["Ġ" + w]]]
    assert len(words) >= 60, len(words)
    return list(np.random.default_rng(0).permutation(words)[:60])


@pytest.fixture(scope="module")
def lm_base(tmp_path_factory) -> dict:
    """A pretrained tiny causal Llama with a group direction in 60 word embeddings, and the
    synthetic probe task's files (train words and eval words disjoint)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from peftlab.testing import build_tiny_llama

    root = tmp_path_factory.mktemp("forgetting")
    folder = build_tiny_llama(root / "base", lm_head=True, pretrain_steps=80)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    vocab = tokenizer.get_vocab()
    words = _group_words(tokenizer)
    group_a, group_b = words[:30], words[30:]
    weights = load_file(folder / "model.safetensors")
    emb = weights["model.embed_tokens.weight"].clone()
    v = torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(1))
    v = v / v.norm() * emb.norm(dim=1).mean()  # as long as an average embedding row
    for w in group_a:
        emb[vocab["Ġ" + w]] += v
    for w in group_b:
        emb[vocab["Ġ" + w]] -= v
    weights["model.embed_tokens.weight"] = emb
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    rng = np.random.default_rng(2)

    def write(path: Path, a: list[str], b: list[str], n: int) -> Path:
        rows = []
        for i in range(n):
            label = i % 2
            prefix = " ".join(rng.choice(FILLERS, size=int(rng.integers(1, 4))))
            rows.append({"text": f"{prefix} {rng.choice(b if label else a)}", "label": label})
        pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
        return path

    from peftlab.testing.tiny_models import _CORPUS

    text_file = root / "heldout.txt"
    text_file.write_text("\n".join(_CORPUS[:40]) + "\n\n", encoding="utf-8")  # a blank line too
    return {"dir": folder, "text_file": text_file,
            "train": write(root / "synth-train.tsv", group_a[:18], group_b[:18], 96),
            "eval": write(root / "synth-eval.tsv", group_a[18:], group_b[18:], 64)}


def _synth_task(lm_base: dict) -> dict:
    return {"name": "synth", "files": {"train": str(lm_base["train"]),
                                       "eval": str(lm_base["eval"])},
            "columns": {"text_a": "text", "label": "label"}, "label_names": ["a", "b"]}


def _forgetting(study):
    """Run the forgetting stage alone on a study; return its records by key."""
    from peftlab.stages.forgetting import run as forgetting_stage

    store = open_study_store(study)
    try:
        forgetting_stage(Context(study=study, store=store, console=Console(quiet=True)))
        return {r["key"]: r for r in store.records("forgetting")}
    finally:
        store.close()


def _artifact(study, rc) -> Path:
    store = open_study_store(study)
    try:
        return store.root / store.get("runs", rc.run_id)["artifact"]
    finally:
        store.close()


@pytest.fixture(scope="module")
def noise_study(lm_base, glue_dir, tmp_path_factory):
    """Two full runs on SST-2 whose artifacts are then replaced: s1's backbone by noise (each
    weight matrix by Gaussian noise of its own standard deviation), s2's by the base's own
    backbone (the base against itself). Returns (study, records, noise run, copy run)."""
    from safetensors.torch import load_file, save_file

    tmp = tmp_path_factory.mktemp("noise-study")
    study = tiny_study(
        tmp, model_dir=lm_base["dir"], glue_dir=glue_dir, tasks=("sst2",), methods=("full",),
        seeds=(1, 2), training={"max_steps": 1, "batch_size": 8, "bootstrap_samples": 10},
        forgetting={"tasks": [_synth_task(lm_base)], "text_file": str(lm_base["text_file"]),
                    "probe_train_samples": 96, "probe_test_samples": 64, "lm_texts": None,
                    "bootstrap_samples": 500})
    noise_rc, copy_rc = study.runs()
    base = load_file(lm_base["dir"] / "model.safetensors")
    gen = torch.Generator().manual_seed(3)
    for rc in (noise_rc, copy_rc):
        path = _artifact(study, rc) / "model.safetensors"
        tensors = load_file(path)
        for name, t in tensors.items():
            if name.startswith("score"):
                continue
            if rc is copy_rc:
                tensors[name] = base[name].clone()
            elif t.ndim == 2:
                tensors[name] = torch.randn(t.shape, generator=gen) * t.std()
        save_file(tensors, path, metadata={"format": "pt"})
    return study, _forgetting(study), noise_rc, copy_rc


# ----------------------------------------------------------------------------- end to end


def test_noise_backbone_forgets_the_probe_task_the_base_solves(noise_study):
    study, recs, noise, _ = noise_study
    for layer in (1, 2):  # the middle (block 1 of 2) and the last block
        base = recs[f"probe/synth/L{layer:03d}/base"]
        run = recs[f"probe/synth/L{layer:03d}/{noise.run_id}"]
        assert base["accuracy"] >= 0.95 and base["n_test"] == 64 and base["n_train"] == 96
        assert run["base_accuracy"] == base["accuracy"]
        assert run["accuracy"] <= 0.7  # unseen words: chance without the group direction
        assert run["difference"] == pytest.approx(run["accuracy"] - base["accuracy"])
        assert run["ci_high"] < -0.2 and run["ci_low"] <= run["difference"] <= run["ci_high"]
        assert (run["task"], run["method"], run["seed"], run["probe_task"]) == (
            "sst2", "full", 1, "synth")
        assert run["c"] in study.spec.forgetting.c_grid and len(run["correct"]) == 64
        assert run["probe_task_source"] == "files" and run["layer_name"] == f"block_{layer}"


def test_noise_backbone_raises_the_lm_loss_read_by_the_base_head(noise_study):
    _, recs, noise, _ = noise_study
    base, run = recs["lm_loss/base"], recs[f"lm_loss/{noise.run_id}"]
    assert base["status"] == run["status"] == "done"
    assert base["loss"] < 0.6 * math.log(512)  # the pretrained base predicts its corpus
    assert run["loss_before"] == pytest.approx(base["loss"])
    assert run["difference"] > 2.0 and run["ci_low"] > 1.0
    assert run["n_texts"] == 40 and run["n_tokens"] == base["n_tokens"] > 40
    assert run["sources"] == ["file:heldout.txt"] and "lm_head" in run["head"]


def test_the_base_against_itself_is_zero_within_the_interval(noise_study):
    _, recs, _, copy = noise_study
    for layer in (1, 2):
        run = recs[f"probe/synth/L{layer:03d}/{copy.run_id}"]
        assert run["difference"] == 0.0 and run["ci_low"] <= 0.0 <= run["ci_high"]
    lm = recs[f"lm_loss/{copy.run_id}"]
    assert lm["difference"] == pytest.approx(0.0, abs=1e-6)
    assert lm["ci_low"] <= 0.0 <= lm["ci_high"]


def test_loss_before_is_the_base_causal_lms_own_loss(noise_study, lm_base):
    """The stage's base loss (base backbone + base head) equals transformers' causal-LM loss
    with labels on the same texts; a run's loss after equals the causal LM built from the run's
    backbone and the base's head."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    study, recs, noise, _ = noise_study
    texts = [t for t in lm_base["text_file"].read_text().splitlines() if t.strip()]
    tokenizer = AutoTokenizer.from_pretrained(lm_base["dir"])
    batch = tokenizer(texts, padding=True, truncation=True, max_length=48, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    lm = AutoModelForCausalLM.from_pretrained(lm_base["dir"]).eval()
    with torch.no_grad():
        before = lm(**batch, labels=labels).loss.item()
        run_weights = load_file(_artifact(study, noise) / "model.safetensors")
        lm.load_state_dict({k: v for k, v in run_weights.items() if k.startswith("model.")},
                           strict=False)  # the run's backbone, the base's lm_head kept
        after = lm(**batch, labels=labels).loss.item()
    assert recs["lm_loss/base"]["loss"] == pytest.approx(before, rel=1e-5)
    assert recs[f"lm_loss/{noise.run_id}"]["loss_after"] == pytest.approx(after, rel=1e-5)


def test_without_a_text_file_a_one_task_study_reads_its_probe_tasks_sentences(noise_study):
    """A one-task study probed elsewhere (the SmolLM2 readout study: SST-2 tuned, MRPC probed)
    has no other study task to read: the LM loss reads the probe tasks' evaluation sentences,
    and a run tuned on SST-2 never reads SST-2's."""
    import dataclasses

    from peftlab.stages.forgetting import _split, probe_tasks, text_sources

    study, *_ = noise_study
    cfg = study.spec.forgetting.model_copy(update={"text_file": None, "lm_texts": 20})
    study = dataclasses.replace(study, spec=study.spec.model_copy(update={"forgetting": cfg}))
    store = open_study_store(study)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        sources = {s.name: s for s in text_sources(ctx)}
        (probe,) = probe_tasks(ctx)[0]
        assert set(sources) == {"sst2", "synth"}
        texts = _split(ctx, probe, "eval")["text_a"].astype(str).tolist()
        assert len(sources["synth"].texts) == 20 and set(sources["synth"].texts) <= set(texts)
    finally:
        store.close()


def test_rerun_loads_no_model_and_a_new_setting_remeasures(noise_study, monkeypatch):
    study, recs, noise, _ = noise_study

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded again")

    monkeypatch.setattr("peftlab.stages.forgetting._load", no_load)
    monkeypatch.setattr("peftlab.stages.forgetting.load_lm_head", no_load)
    again = _forgetting(study)
    assert {k: r["provenance"]["time"] for k, r in again.items()} == {
        k: r["provenance"]["time"] for k, r in recs.items()}
    monkeypatch.undo()

    spec = study.spec.model_dump(mode="json")
    spec["forgetting"] = {**spec["forgetting"], "layers": ["last"], "probe_test_samples": 40}
    changed = load_study(write_spec(study.path, spec), data_dir=str(study.data_dir))
    out = _forgetting(changed)
    assert f"probe/synth/L001/{noise.run_id}" not in out  # the middle layer is no longer asked
    assert out[f"probe/synth/L002/{noise.run_id}"]["n_test"] == 40
    assert out["lm_loss/base"]["provenance"] == recs["lm_loss/base"]["provenance"]


# ----------------------------------------------------------------------------- off-task data


@pytest.fixture(scope="module")
def bert_study(tiny_bert_dir, glue_dir, tmp_path_factory):
    """LoRA runs on SST-2 and RTE of the tiny BERT, probed on both tasks and on a user file
    that repeats 40 SST-2 training sentences among 60 new ones."""
    tmp = tmp_path_factory.mktemp("bert-study")
    sst2 = pd.read_csv(glue_dir / "SST-2" / "train.tsv", sep="\t", quoting=3)
    rng = np.random.default_rng(0)
    new = [{"sentence": " ".join(rng.choice(FILLERS, size=5)) + f" number {i}", "label": i % 2}
           for i in range(60)]
    held = [{"sentence": " ".join(rng.choice(FILLERS, size=5)) + f" item {i}", "label": i % 2}
            for i in range(30)]
    copied = pd.concat([sst2.iloc[:40], pd.DataFrame(new)], ignore_index=True)
    copied.to_csv(tmp / "copy-train.tsv", sep="\t", index=False)
    pd.DataFrame(held).to_csv(tmp / "copy-eval.tsv", sep="\t", index=False)
    copy_task = {"name": "sst2copy", "files": {"train": str(tmp / "copy-train.tsv"),
                                               "eval": str(tmp / "copy-eval.tsv")},
                 "columns": {"text_a": "sentence", "label": "label"},
                 "label_names": ["negative", "positive"]}
    study = tiny_study(
        tmp, model_dir=tiny_bert_dir, glue_dir=glue_dir, tasks=("sst2", "rte"),
        methods=("lora",), seeds=(1,), train_samples=2000,
        training={"max_steps": 1, "batch_size": 8, "bootstrap_samples": 10},
        forgetting={"tasks": ["sst2", "rte", copy_task], "probe_train_samples": 40,
                    "probe_test_samples": 24, "cv_folds": 3, "bootstrap_samples": 100})
    return study, _forgetting(study)


def test_a_run_is_never_probed_on_its_own_task_or_its_training_text(bert_study):
    from peftlab.data import StudyData

    study, recs = bert_study
    data = StudyData(study)
    probes = [r for r in recs.values() if r["measure"] == "probe" and r["status"] == "done"]
    base_rows = {r["probe_task"]: r for r in probes if r["model_key"] == "base"}
    assert set(base_rows) == {"sst2", "rte", "sst2copy"}
    for rc in study.runs():
        mine = {r["probe_task"] for r in probes if r["run_id"] == rc.run_id}
        assert mine == {"sst2", "rte", "sst2copy"} - {rc.task}
        tuned = set(data.split(rc.task, "train")["text_a"])
        for task in mine:
            rows = base_rows[task]
            train = _probe_texts(study, data, task, "train", rows["train_rows"])
            test = _probe_texts(study, data, task, "eval", rows["test_rows"])
            assert not (set(train) | set(test)) & tuned, (rc.task, task)
    # The copied SST-2 sentences are left out of the user file's probe examples.
    copy = base_rows["sst2copy"]
    assert copy["excluded_overlap"] == 40 and copy["n_train"] == 40
    assert min(copy["train_rows"]) > 41  # lines 2-41 of the file are the copied ones


def _probe_texts(study, data, task, split, rows):
    """The texts of probe rows (row ids: line numbers for files, indices for GLUE splits)."""
    if task == "sst2copy":
        from peftlab.tasks import load_split, make_file_task

        spec = study.spec.forgetting.tasks[2]
        df = load_split(make_file_task(task, ("negative", "positive")), split, source="files",
                        files=dict(spec.files), columns=dict(spec.columns))
    else:
        df = data.split(task, split, subsample=False)
    return df.set_index("row").loc[rows, "text_a"].tolist()


def test_encoder_lm_loss_is_skipped_with_the_reason(bert_study):
    study, recs = bert_study
    lm = [r for r in recs.values() if r["measure"] == "lm_loss"]
    assert len(lm) == 1 + len(study.runs())
    assert all(r["status"] == "skipped" and "encoder" in r["reason"] for r in lm)


def test_check_off_task_refuses_the_run_own_data(bert_study):
    from peftlab.stages.forgetting import ProbeTask, check_off_task

    study, _ = bert_study
    store = open_study_store(study)
    try:
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        rc = next(r for r in study.runs() if r.task == "sst2")
        rte = ctx.data.task("rte")
        leak = ProbeTask("other", rte, "files", None, 8, 8,
                         train=ctx.data.split("sst2", "train").iloc[:8],
                         test=ctx.data.split("rte", "eval").iloc[:8])
        with pytest.raises(PeftlabError, match="in the training data of run"):
            check_off_task(ctx, rc, leak)
        with pytest.raises(PeftlabError, match="its own task"):
            check_off_task(ctx, rc, ProbeTask("sst2", rte, "study", None, 8, 8,
                                              train=leak.test, test=leak.test))
    finally:
        store.close()


def test_a_run_tuned_on_the_only_probe_task_gets_a_skip_record(bert_study, tmp_path):
    """As in the quickstart (probes on SST-2 alone): SST-2 runs are recorded as not probed, with
    the reason; records of probe tasks the spec dropped are deleted."""
    import shutil

    study, _ = bert_study
    shutil.copytree(study.output_dir, tmp_path / "copy")
    spec = study.spec.model_dump(mode="json")
    spec["output_dir"] = str(tmp_path / "copy")
    spec["forgetting"] = {**spec["forgetting"], "tasks": ["sst2"]}
    recs = _forgetting(load_study(write_spec(tmp_path / "spec.yaml", spec),
                                 data_dir=str(study.data_dir)))
    sst2_run, rte_run = (next(r for r in study.runs() if r.task == t) for t in ("sst2", "rte"))
    skip = recs[f"probe/none/{sst2_run.run_id}"]
    assert skip["status"] == "skipped" and "tuned on sst2, the only probe task" in skip["reason"]
    assert {r["probe_task"] for r in recs.values() if r["run_id"] == rte_run.run_id
            and r["measure"] == "probe"} == {"sst2"}
    assert not any(r.get("probe_task") in ("rte", "sst2copy") for r in recs.values())


def test_a_checkpoint_without_lm_head_is_skipped_with_the_reason(tmp_path, tiny_llama_dir):
    from peftlab.stages.forgetting import load_lm_head
    from peftlab.store import Store

    study = load_study(write_spec(tmp_path / "spec.yaml",
                                 tiny_spec(tmp_path / "s", model_dir=tiny_llama_dir)))
    ctx = Context(study=study, store=Store(tmp_path / "s"), console=Console(quiet=True))
    head, reason = load_lm_head(ctx)  # a LlamaForSequenceClassification checkpoint, untied
    assert head is None and "lm_head.weight" in reason and "no LM head" in reason


def test_spec_rejects_bad_probe_tasks(tmp_path, tiny_llama_dir):
    for tasks, match in (([], "at least one probe task"), (["nosuchtask"], "unknown task"),
                         (["stsb"], "regression"), (["rte", "rte"], "unique")):
        spec = tiny_spec(tmp_path / "s", model_dir=tiny_llama_dir,
                         forgetting={"tasks": tasks})
        with pytest.raises(SpecError, match=match) as err:
            load_study(write_spec(tmp_path / "spec.yaml", spec))
        assert "forgetting.tasks" in str(err.value)


# ----------------------------------------------------------------------------- the library


def test_probe_cross_validates_with_the_scaler_inside_each_fold():
    """C and the cross-validation scores are those of a hand-written fold loop that fits the
    scaler on each fold's training part only."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=60)
    x = rng.normal(size=(60, 8)) * np.array([10, 1, 1, 1, 1, 1, 1, 100]) + y[:, None] * 0.8
    grid = [0.001, 0.1, 10.0]
    probe = fit_probe(x, y, c_grid=grid, folds=4, seed=3)
    manual = []
    for c in grid:
        scores = []
        for tr, te in StratifiedKFold(4, shuffle=True, random_state=3).split(x, y):
            scaler = StandardScaler().fit(x[tr])
            clf = LogisticRegression(C=c, max_iter=1000).fit(scaler.transform(x[tr]), y[tr])
            scores.append((clf.predict(scaler.transform(x[te])) == y[te]).mean())
        manual.append(float(np.mean(scores)))
    assert probe.cv_scores == pytest.approx(manual)
    assert probe.c == grid[int(np.argmax(manual))] and probe.folds == 4
    assert probe_correct(probe, x, y).dtype == bool


def test_probe_folds_are_capped_by_the_rarest_class_and_need_two_per_class():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(20, 3)), np.array([0] * 17 + [1] * 3)
    assert fit_probe(x, y, c_grid=[1.0], folds=5, seed=0).folds == 3
    with pytest.raises(PeftlabError, match="two or more"):
        fit_probe(x, np.array([0] * 19 + [1]), c_grid=[1.0], folds=5, seed=0)


def test_paired_difference_is_zero_for_identical_models_and_paired_when_they_differ():
    rng = np.random.default_rng(0)
    base = rng.random(200) < 0.5
    same = paired_accuracy_difference(base, base.copy(), n_resamples=500, seed=0)
    assert (same.estimate, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    # The run gets 10 more examples right and none fewer: the paired interval is narrow (an
    # unpaired one at accuracy 0.5 and n = 200 would span about +/-0.1).
    better = base.copy()
    better[np.flatnonzero(~base)[:10]] = True
    iv = paired_accuracy_difference(better, base, n_resamples=1000, seed=0)
    assert iv.estimate == pytest.approx(0.05)
    assert 0.0 < iv.ci_low < 0.05 < iv.ci_high < 0.09
    again = paired_accuracy_difference(better, base, n_resamples=1000, seed=0)
    assert (again.ci_low, again.ci_high) == (iv.ci_low, iv.ci_high)


def test_layers_resolve_middle_last_and_indices():
    assert resolve_layers(["middle", "last"], 31) == [15, 30]  # SmolLM2: 30 blocks
    assert resolve_layers(["middle", "last"], 3) == [1, 2]
    assert resolve_layers(["last", 2, 0], 3) == [2, 0]
    assert resolve_layers(["middle", "last"], 2) == [1]  # one block: the same layer once
    with pytest.raises(PeftlabError, match="index 0..2"):
        resolve_layers([3], 3)


def test_token_losses_never_read_padding():
    torch.manual_seed(0)
    head = torch.nn.Linear(4, 7, bias=False)
    hidden = torch.randn(2, 5, 4)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    sums, counts = token_losses(hidden, ids, mask, head)
    garbage_h, garbage_ids = hidden.clone(), ids.clone()
    garbage_h[mask == 0] = 1e3
    garbage_ids[mask == 0] = 6
    sums2, _ = token_losses(garbage_h, garbage_ids, mask, head)
    assert counts.tolist() == [2, 3] and torch.allclose(sums, sums2)
    logits = head(hidden[0, :2])
    assert sums[0].item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, ids[0, 1:3], reduction="sum").item())


@pytest.mark.parametrize("side", ["right", "left"])
def test_lm_losses_equal_the_causal_lm_loss_with_labels(lm_base, side):
    """Base classifier backbone + the causal LM's head = AutoModelForCausalLM's own loss."""
    from transformers import AutoModelForCausalLM

    from peftlab.encode import encode_frame
    from peftlab.models import load_classifier, load_tokenizer, resolve_model
    from peftlab.testing.tiny_models import _CORPUS

    resolved = resolve_model(str(lm_base["dir"]))
    tokenizer = load_tokenizer(resolved, padding_side=side)
    classifier = load_classifier(resolved, num_labels=2, tokenizer=tokenizer)
    lm = AutoModelForCausalLM.from_pretrained(lm_base["dir"]).eval()
    texts = _CORPUS[40:52] + ["a", "the movie"]  # a one-token text predicts nothing
    ds = encode_frame(pd.DataFrame({"text_a": texts, "label": 0}), tokenizer, max_length=16)
    got = lm_losses(classifier, lm.get_output_embeddings(), ds, tokenizer, batch_size=5)
    tokenizer.padding_side = "right"
    batch = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        want = lm(**batch, labels=labels).loss.item()
    assert got.mean == pytest.approx(want, rel=1e-5)
    assert got.tokens.tolist() == (batch["attention_mask"].sum(1) - 1).tolist()


def test_lm_loss_difference_pairs_texts():
    before = LMLosses(np.array([3.0, 8.0, 1.0]), np.array([1, 4, 1]))
    same = lm_loss_difference(before, before, n_resamples=200, seed=0)
    assert (same.estimate, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    after = LMLosses(before.sums + np.array([0.6, 2.4, 0.6]), before.tokens)  # +0.6 a token
    iv = lm_loss_difference(after, before, n_resamples=200, seed=0)
    assert iv.estimate == pytest.approx(0.6)
    assert iv.ci_low == pytest.approx(0.6) and iv.ci_high == pytest.approx(0.6)
    with pytest.raises(PeftlabError, match="same tokens"):
        lm_loss_difference(LMLosses(after.sums, np.array([1, 4, 2])), before, n_resamples=10,
                           seed=0)


def test_stage_is_listed_after_represent():
    from peftlab.pipeline import STAGES

    assert STAGES.index("forgetting") == STAGES.index("represent") + 1


def test_the_cli_has_a_forgetting_command():
    from typer.testing import CliRunner

    from peftlab.cli import app

    result = CliRunner().invoke(app, ["forgetting", "--help"])
    assert result.exit_code == 0 and "probe" in result.output


# ----------------------------------------------------------------------------- records


def test_every_stored_record_reads_back_through_its_type(noise_study):
    """The stage writes through `ForgettingRecord`: each stored record validates, derives the key
    it is stored under, and an unknown field is refused on read."""
    from peftlab.errors import StoreError
    from peftlab.records import ForgettingRecord

    _, recs, _, _ = noise_study
    kinds = set()
    for key, raw in recs.items():
        rec = ForgettingRecord.parse(raw)
        assert rec.key == key
        kinds.add((rec.measure, rec.status, rec.is_run))
    assert kinds == {("probe", "done", False), ("probe", "done", True),
                     ("lm_loss", "done", False), ("lm_loss", "done", True)}
    with pytest.raises(StoreError, match="does not match its schema"):
        ForgettingRecord.parse({**recs["lm_loss/base"], "los": 1.0})


# ----------------------------------------------------------------------------- stats, report


def _sample_built(root: Path, edit=None) -> dict:
    """The sample study (peftlab.testing.sample_study: forgetting records for every finished run),
    optionally edited through its store, then the stats and report stages."""
    from peftlab.stages.report import run as report_stage
    from peftlab.stages.stats import run as stats_stage
    from peftlab.store import Store
    from peftlab.testing.sample_study import write_sample

    study = write_sample(root)
    store = Store(study.output_dir)
    try:
        if edit is not None:
            edit(store)
        ctx = Context(study=study, store=store, console=Console(quiet=True))
        stats_stage(ctx)
        report_stage(ctx)
        tables = {t: store.records(t) for t in ("runs", "stats", "forgetting", "weights")}
    finally:
        store.close()
    out = study.output_dir
    return {"study": study, "md": (out / "report.md").read_text(encoding="utf-8"),
            "html": (out / "report.html").read_text(encoding="utf-8"), **tables}


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return _sample_built(tmp_path_factory.mktemp("forgetting-report"))


def _md_section(md: str, title: str) -> str:
    import re

    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", md, flags=re.M | re.S)
    assert m, f"no section {title!r}"
    return m.group(1)


def _run_diffs(sample) -> dict[tuple[str, str], float]:
    """(run id, unit) -> the stored difference of every measured run record."""
    from peftlab.records import ForgettingRecord

    recs = [ForgettingRecord.parse(r) for r in sample["forgetting"]]
    return {(r.run_id, r.unit): r.difference for r in recs if r.is_run and r.status == "done"}


def test_the_report_has_the_forgetting_section_and_figure(sample):
    import base64
    import xml.etree.ElementTree as ET

    from peftlab.stages.report import format as f

    md = sample["md"]
    assert md.index("## Weight space\n") < md.index("## Forgetting\n") < md.index(
        "## Deployment\n")
    section = _md_section(md, "Forgetting")
    assert "*Figure" in section and "Learning against forgetting" in section
    root = ET.fromstring(sample["html"].removeprefix("<!DOCTYPE html>"))
    img = next(i for i in root.iter("img") if i.get("alt") == "Learning against forgetting")
    png = base64.b64decode(img.get("src").split(",", 1)[1], validate=True)
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 20_000
    # every measured run's change is printed with its interval, from the stored record
    for raw in sample["forgetting"]:
        if raw.get("run_id") and raw["status"] == "done":
            cell = (f"{f.metric(raw['difference'])} "
                    f"{f.interval(raw['ci_low'], raw['ci_high'], f.metric)}")
            assert f"| {raw['run_id']} |" in section and cell in section, raw["key"]
    # the summaries' t-intervals over seeds and the tests' outcomes
    for sm in (r for r in sample["stats"] if r["kind"] == "summary"
               and r["area"] == "forgetting" and r["n"] >= 2):
        assert f.interval(sm["ci_low"], sm["ci_high"], f.metric) in section
    assert "Intruder dimensions and forgetting" in section and "Spearman" in section
    assert "Not measured" not in section and "Why skipped" not in section


def test_paired_forgetting_tests_are_in_their_own_exploratory_family(sample):
    from peftlab import stats

    comps = [r for r in sample["stats"] if r["kind"] == "comparison"
             and r["area"] == "forgetting"]
    # 3 tasks x (2 other probe tasks x 2 layers + the LM loss) x lora vs full
    assert len(comps) == 3 * (2 * 2 + 1)
    assert {(c["role"], c["family"], c["question"]) for c in comps} == {
        ("exploratory", "exploratory/forgetting", None)}
    diffs = _run_diffs(sample)
    runs = {(r["task"], r["method"], r["seed"]): r["run_id"] for r in sample["runs"]}
    for c in comps:
        unit = ("lm_loss" if c["measure"] == "lm_loss"
                else f"probe {c['probe_task']} L{c['layer']}")
        assert c["probe_task"] != c["task"]  # never probed on its own task
        for side in ("a", "b"):  # each value is the run's own stored difference, by seed
            want = [diffs[(runs[(c["task"], c[f"method_{side}"], s)], unit)] for s in c["seeds"]]
            assert c[f"values_{side}"] == pytest.approx(want)
    by_task = {t: [c for c in comps if c["task"] == t] for t in ("sst2", "mrpc", "rte")}
    assert all(c["outcome"] == "void" for c in by_task["mrpc"])  # every MRPC run degenerate
    assert all(c["outcome"] == "insufficient runs" for c in by_task["rte"])  # 2 learned pairs
    tested = [c for c in comps if c["status"] == "ok"]
    assert [c["task"] for c in tested] == ["sst2"] * 5 and all(c["n"] == 3 for c in tested)
    for c, p_adj in zip(tested, stats.holm([c["decision_p"] for c in tested]), strict=True):
        assert c["family_size"] == len(tested) and c["p_adjusted"] == pytest.approx(p_adj)
    settings = next(r for r in sample["stats"] if r["kind"] == "settings")
    fam = settings["families"]["exploratory/forgetting"]
    assert fam["planned"] == fam["comparisons"] == len(comps) and fam["tested"] == len(tested)
    # the LM loss: higher is worse, and the findings say who forgets more
    lm = next(c for c in tested if c["measure"] == "lm_loss")
    assert lm["higher_is_better"] is False and lm["diff"] < 0  # lora's rise is smaller
    findings = _md_section(sample["md"], "Findings")
    assert "Exploratory: forgetting" in findings
    assert "sst2-tuned, held-out LM loss: lora vs full on held-out LM loss change" in findings


def test_the_intruder_correlation_pairs_each_learned_run_with_itself(sample):
    from scipy import stats as sst

    diffs = _run_diffs(sample)
    intruders: dict[str, int] = {}
    for w in sample["weights"]:
        intruders[w["run_id"]] = intruders.get(w["run_id"], 0) + w["stats"]["intruder_dims"]
    learned = {r["run_id"] for r in sample["stats"] if r["kind"] == "summary"
               and r["area"] == "runs" and r["learned"] is True}
    corr = [r for r in sample["stats"] if r["kind"] == "correlation"]
    assert len(corr) == 3 * 2 + 1  # every probe task x layer, and the LM loss
    for c in corr:
        unit = c["forgetting_unit"]
        want = sorted(rid for (rid, u) in diffs if u == unit and rid in learned)
        assert c["run_ids"] == want and c["n"] == len(want)
        assert c["x_values"] == [intruders[r] for r in want]
        assert c["y_values"] == pytest.approx([diffs[(r, unit)] for r in want])
        assert c["estimate"] == pytest.approx(sst.spearmanr(c["x_values"],
                                                            c["y_values"]).statistic)
        assert c["ci_low"] <= c["estimate"] <= c["ci_high"] and 0 < c["p"] <= 1
        assert c["p_adjusted"] >= c["p"] and c["family_size"] == len(corr)
    lm = next(c for c in corr if c["measure"] == "lm_loss")
    # 10 learned runs: SST-2 x 6 and RTE x 4 (full s3 failed, lora s2 degenerate; MRPC none)
    assert lm["n"] == 10 and sorted(set(lm["methods"])) == ["full", "lora"]


def test_a_missing_side_says_not_measured_and_a_skipped_measure_says_why(tmp_path):
    """No weight-space records: the correlation is 'not measured', naming that side. An
    encoder's LM loss (skipped with the reason): the report lists it and says in one line that
    it does not apply; no comparison is made for it (not "insufficient runs")."""
    from peftlab.records import ForgettingRecord, write

    reason = "minilm is an encoder with no causal LM head"

    def edit(store):
        store.replace_where("weights", "", [])
        recs = [ForgettingRecord.parse(r) for r in store.records("forgetting")]
        lm = [r for r in recs if r.measure == "lm_loss"]
        store.replace_where("forgetting", "lm_loss/", [])
        write(store, [ForgettingRecord(
            measure="lm_loss", status="skipped", reason=reason, model_key=r.model_key,
            run_id=r.run_id, task=r.task, method=r.method, method_type=r.method_type,
            seed=r.seed, settings=r.settings, source=r.source, base_source=r.base_source,
            provenance=r.provenance) for r in lm])

    built = _sample_built(tmp_path, edit)
    corr = [r for r in built["stats"] if r["kind"] == "correlation"]
    assert [(c["status"], c["n"]) for c in corr] == [("not measured", 0)]
    assert "weight-space records" in corr[0]["reason"]
    section = _md_section(built["md"], "Forgetting")
    assert "Intruder dimensions and forgetting**: **not measured**" in section
    assert "| held-out LM loss | " + reason in section  # the skipped measure, with its reason
    assert f"**Held-out LM loss: not applicable** ({reason})" in section
    lm = [r for r in built["stats"] if r.get("area") == "forgetting"
          and r.get("measure") == "lm_loss"]
    assert lm == []  # neither comparisons nor summaries: the measure does not apply
    probes = [r for r in built["stats"] if r["kind"] == "comparison"
              and r.get("area") == "forgetting"]
    assert probes and all(c["measure"] == "probe" for c in probes)
    assert "insufficient runs" not in "".join(
        line for line in _md_section(built["md"], "Findings").splitlines()
        if "LM loss" in line)


def test_without_forgetting_records_the_section_says_not_measured(tmp_path):
    built = _sample_built(tmp_path, lambda store: store.replace_where("forgetting", "", []))
    section = _md_section(built["md"], "Forgetting")
    assert "**Not measured**" in section and "peftlab forgetting" in section
    assert not [r for r in built["stats"] if r.get("area") == "forgetting"
                and r["kind"] == "comparison"]
    corr = [r for r in built["stats"] if r["kind"] == "correlation"]
    assert corr[0]["status"] == "not measured" and "forgetting measurements" in corr[0]["reason"]


# ----------------------------------------------------------------------------- the correlation


def test_rank_correlation_matches_scipy_and_the_exact_permutation_test():
    import itertools

    from scipy import stats as sst

    from peftlab.stats import rank_correlation

    rng = np.random.default_rng(0)
    x = np.array([0, 0, 2, 2, 4, 1])  # ties, as intruder counts have
    y = 0.3 * x + rng.normal(size=6)
    got = rank_correlation(x, y, confidence=0.9)
    rho = sst.spearmanr(x, y).statistic
    assert got.estimate == pytest.approx(rho)
    # exact: every one of the 6! pairings, two-sided as scipy's permutation_test reads it
    perms = np.array([sst.spearmanr(np.asarray(p), y).statistic
                      for p in itertools.permutations(x)])
    tol = 1e-12
    p = min(1.0, 2 * min(np.mean(perms >= rho - tol), np.mean(perms <= rho + tol)))
    assert got.p == pytest.approx(p) and got.p_method.startswith("exact")
    # Fisher z with the Bonett-Wright variance for Spearman's rho
    half = sst.norm.ppf(0.95) * np.sqrt((1 + rho**2 / 2) / (6 - 3))
    assert (got.ci_low, got.ci_high) == pytest.approx(
        (np.tanh(np.arctanh(rho) - half), np.tanh(np.arctanh(rho) + half)))
    big = rank_correlation(np.arange(12), np.arange(12) ** 2, seed=1)
    assert big.estimate == pytest.approx(1.0) and big.p < 0.001
    assert big.p_method.startswith("Monte Carlo")
    assert rank_correlation([1, 2, 3], [3, 2, 1]).reason == "3 pair(s): at least 4 needed"
    flat = rank_correlation([2, 2, 2, 2], [1, 2, 3, 4])
    assert flat.estimate is None and "x constant" in flat.reason


def test_probe_floor_rule_is_the_wilson_lower_bound_against_majority_and_chance():
    from scipy.stats import binomtest

    from peftlab.forgetting_measures import probe_floor_reason

    reads = [1] * 30 + [0] * 10  # 0.75, Wilson 95% lower bound 0.598
    assert probe_floor_reason(0.75, reads, 0.5, 2, "sst2", "block_15") is None
    assert binomtest(30, 40).proportion_ci(method="wilson").low > 0.5
    above_but_not_clear = [1] * 24 + [0] * 16  # 0.60 > 0.5, but its lower bound is 0.4460
    why = probe_floor_reason(0.60, above_but_not_clear, 0.5, 2, "sst2", "block_15")
    assert why is not None and why.startswith("the base model's sst2 probe at block_15 scores "
                                              "0.6000 [0.4460,")
    assert "not above the majority-class rate 0.5000 or chance 0.5000" in why
    # the higher floor counts: chance above the majority rate on a 3-class probe
    assert probe_floor_reason(0.45, [1] * 18 + [0] * 22, 0.2, 3, "mnli", "block_1") is not None


def test_a_base_probe_at_the_majority_rate_voids_its_measure(tmp_path):
    """The base's MRPC probe at one layer reads nothing (half right, majority rate 0.5): the
    sst2 runs' comparisons on that measure are void with the reason, their summaries carry it,
    the intruder correlation is void, and the report says which measure and why; every other
    measure is tested as before."""
    edited: dict = {}

    def edit(store):
        key = next(k for k in store.keys("forgetting")
                   if k.startswith("probe/mrpc/") and k.endswith("/base"))
        rec = store.get("forgetting", key)
        n = len(rec["correct"])
        rec.update(correct=[1] * (n // 2) + [0] * (n - n // 2), accuracy=(n // 2) / n,
                   majority_rate=0.5)
        store.put("forgetting", key, rec)
        edited["layer"] = rec["layer"]

    out = _sample_built(tmp_path, edit)

    def on_unit(r):
        return r.get("probe_task") == "mrpc" and r.get("layer") == edited["layer"]

    comps = [r for r in out["stats"] if r["kind"] == "comparison" and r["area"] == "forgetting"
             and r["task"] == "sst2"]
    hit = [c for c in comps if on_unit(c)]
    assert hit and all(c["outcome"] == "void" and "not above the majority-class rate 0.5000"
                       in c["reason"] for c in hit)
    assert all(c["status"] == "ok" for c in comps if not on_unit(c))
    sums = [r for r in out["stats"] if r["kind"] == "summary" and r["area"] == "forgetting"]
    assert all(bool(s["void_reason"]) == on_unit(s) for s in sums)
    corr = next(r for r in out["stats"] if r["kind"] == "correlation"
                and r["area"] == "forgetting" and on_unit(r))
    assert corr["status"] == "void" and corr["p"] is None
    section = _md_section(out["md"], "Forgetting").replace("\\_", "_")  # markdown escapes
    assert "Probes with nothing to forget (1 of 7 measures):" in section
    assert f"mrpc probe, block_{edited['layer']}: the base model's mrpc probe" in section
    trust = _md_section(out["md"], "Can these answers be trusted?")
    assert ("the base model's own probe does not beat its majority-class rate, so nothing can "
            "be forgotten there (sst2-tuned runs): 1 comparison") in trust
