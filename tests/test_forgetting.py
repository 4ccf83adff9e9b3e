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

from peftlab.errors import PeftlabError, SpecError
from peftlab.fixtures import tiny_spec, tiny_study, write_spec
from peftlab.forgetting import (
    LMLosses,
    fit_probe,
    lm_loss_difference,
    lm_losses,
    paired_accuracy_difference,
    probe_correct,
    resolve_layers,
    token_losses,
)
from peftlab.spec import load_spec
from peftlab.study import Context, open_study_store

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

    from peftlab.testing import _CORPUS

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
    changed = load_spec(write_spec(study.path, spec), data_dir=str(study.data_dir))
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
    recs = _forgetting(load_spec(write_spec(tmp_path / "spec.yaml", spec),
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

    study = load_spec(write_spec(tmp_path / "spec.yaml",
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
            load_spec(write_spec(tmp_path / "spec.yaml", spec))
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
    from peftlab.testing import _CORPUS

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
    from peftlab.study import STAGES

    assert STAGES.index("forgetting") == STAGES.index("represent") + 1


def test_the_cli_has_a_forgetting_command():
    from typer.testing import CliRunner

    from peftlab.cli import app

    result = CliRunner().invoke(app, ["forgetting", "--help"])
    assert result.exit_code == 0 and "probe" in result.output
