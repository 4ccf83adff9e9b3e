"""The fine-tuning engine on tiny models: every method learns, counts, saves and reloads exactly,
failures are recorded without stopping the study, and a killed run restarts cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from toy_data import toy_files, toy_task

from peftlab.context import Context
from peftlab.pipeline import load_study, plan, run_stages
from peftlab.store import Store
from peftlab.testing import running_steps, tiny_spec, wait_for_records, write_spec


def _toy_task(root: Path) -> dict:
    return toy_task(toy_files(root))


def _study(tmp_path: Path, model_dir: Path, **kw):
    spec = tiny_spec(tmp_path / "study", model_dir=model_dir, **kw)
    return load_study(write_spec(tmp_path / "spec.yaml", spec))


@pytest.fixture(scope="module")
def toy_study(tmp_path_factory, tiny_llama_dir):
    """Every method on the toy task, one seed, enough steps for the loss to fall."""
    tmp = tmp_path_factory.mktemp("toy")
    study = _study(tmp, tiny_llama_dir, tasks=[_toy_task(tmp)],
                   methods=("full", "lora", "dora", "ia3", "adalora"), seeds=(7,),
                   training={"epochs": 4, "batch_size": 8, "logging_steps": 1,
                             "bootstrap_samples": 100, "warmup_ratio": 0.0},
                   data={})
    run_stages(study, ["data", "finetune"])
    return study


def _records(study):
    store = Store(study.output_dir, create=False)
    try:
        return {r["method"]: r for r in store.records("runs")}
    finally:
        store.close()


@pytest.mark.parametrize("method", ["full", "lora", "dora", "ia3", "adalora"])
def test_every_method_learns_the_toy_task(toy_study, method):
    rec = _records(toy_study)[method]
    assert rec["status"] == "done", rec.get("failure_reason")
    losses = rec["loss_curve"]
    assert len(losses) == rec["steps"] == 32  # 64 examples / batch 8 x 4 epochs
    first, last = np.mean(losses[:4]), np.mean(losses[-4:])
    assert last < first * 0.9, (method, first, last)
    acc = rec["metrics"]["accuracy"]
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"]


@pytest.mark.parametrize("method", ["full", "lora", "dora", "ia3", "adalora"])
def test_reloaded_artifact_gives_the_trained_logits(toy_study, method):
    """The artifact on disk (adapter + trained head, or full model) reproduces the in-memory
    model's evaluation logits, saved at training time."""
    from safetensors.numpy import load_file

    from peftlab.artifacts import load_run
    from peftlab.encode import encode_frame, predict

    rec = _records(toy_study)[method]
    store = Store(toy_study.output_dir, create=False)
    ctx = Context(study=toy_study, store=store)
    try:
        tokenizer, model = load_run(ctx, rec["run_id"], device="cpu")
        data = encode_frame(ctx.data.split("toy", "eval"), tokenizer, max_length=48,
                            pair_template="{a}\n{b}", label_dtype="int64")
        logits = predict(model, data, tokenizer, 16, "cpu")
    finally:
        store.close()
    saved = load_file(toy_study.output_dir / rec["eval_logits"])["logits"]
    np.testing.assert_allclose(logits, saved, rtol=1e-5, atol=1e-5)
    assert (logits.argmax(-1) == saved.argmax(-1)).all()


def test_peft_artifact_is_plain_peft_format(toy_study):
    """Any peft user can load the adapter with PeftModel.from_pretrained."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    rec = _records(toy_study)["lora"]
    art = toy_study.output_dir / rec["artifact"]
    assert (art / "adapter_config.json").is_file() and (art / "adapter_model.safetensors").is_file()
    base = AutoModelForSequenceClassification.from_pretrained(toy_study.spec.model.name)
    model = PeftModel.from_pretrained(base, art)
    assert model.active_adapters == ["default"]
    full = _records(toy_study)["full"]
    assert (toy_study.output_dir / full["artifact"] / "model.safetensors").is_file()


def test_lora_parameter_counts_match_hand_computation(toy_study):
    """2 layers, hidden 64, 4 heads, 2 KV heads (GQA): q_proj 64->64, v_proj 64->32."""
    p = _records(toy_study)["lora"]["params"]
    r = 4
    per_layer = r * (64 + 64) + r * (64 + 32)
    head = 2 * 64  # score: [num_labels, hidden], no bias
    assert p["trainable"] == 2 * per_layer + head == 1920
    assert p["trainable_head"] == head
    assert p["trainable_non_head"] == 2 * per_layer


def test_full_counts_every_parameter(toy_study):
    p = _records(toy_study)["full"]["params"]
    assert p["trainable"] == p["base_total"]
    assert p["trainable_share_of_base"] == 1.0


def test_record_holds_what_the_issue_lists(toy_study):
    rec = _records(toy_study)["lora"]
    for key in ("task", "method", "seed", "config", "params", "artifact_bytes", "train_time_s",
                "train_samples_per_s", "train_tokens_per_s", "memory", "loss_curve", "metrics",
                "status", "provenance"):
        assert key in rec, key
    assert rec["config"]["training"]["learning_rate"] == 5.0e-3
    assert rec["memory"]["rss_peak_bytes"] > 0
    art = toy_study.output_dir / rec["artifact"]
    assert rec["artifact_bytes"] == sum(f.stat().st_size for f in art.rglob("*") if f.is_file())
    prov = rec["provenance"]
    assert prov["versions"]["peft"] and prov["model_revision"]
    assert set(prov["data_checksums"]) == {"train", "eval"}


def test_nan_loss_marks_run_failed_and_study_goes_on(tmp_path, tiny_llama_dir, monkeypatch):
    import transformers

    original = transformers.Trainer.compute_loss

    def poisoned(self, model, inputs, *args, **kwargs):
        loss = original(self, model, inputs, *args, **kwargs)
        if self.args.seed == 2 and self.state.global_step >= 1:
            loss = loss * float("nan")
        return loss

    monkeypatch.setattr(transformers.Trainer, "compute_loss", poisoned)
    study = _study(tmp_path, tiny_llama_dir, tasks=[_toy_task(tmp_path)], methods=("lora",),
                   seeds=(1, 2, 3), data={})
    run_stages(study, ["data", "finetune"])
    rows = {r["seed"]: r for r in plan(study)}
    assert rows[2]["status"] == "failed" and "nan" in rows[2]["reason"]
    assert rows[1]["status"] == rows[3]["status"] == "done"
    # a failed run leaves no artifact that a later stage could mistake for a trained model
    assert not any(p.name.startswith(rows[2]["run_id"]) for p in (study.output_dir / "runs").iterdir())
    # and a rerun does not retrain it: failed is a final state shown by plan
    run_stages(study, ["finetune"])
    assert {r["seed"]: r["status"] for r in plan(study)}[2] == "failed"


def test_divergence_threshold_stops_the_run(tmp_path, tiny_llama_dir):
    training = {"epochs": 1, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 0,
                "warmup_ratio": 0.0, "divergence_loss": 1e-6}
    study = _study(tmp_path, tiny_llama_dir, tasks=[_toy_task(tmp_path)], methods=("lora",),
                   seeds=(1,), data={}, training=training)
    run_stages(study, ["data", "finetune"])
    (row,) = plan(study)
    assert row["status"] == "failed" and row["reason"].startswith("diverged")


def test_killed_run_restarts_cleanly(tmp_path, tiny_llama_dir):
    """SIGKILL mid-training: plan says interrupted, the next run trains it again from scratch."""
    training = {"max_steps": 400, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 0}
    study = _study(tmp_path, tiny_llama_dir, tasks=[_toy_task(tmp_path)], methods=("lora",),
                   seeds=(1,), data={}, training=training)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "peftlab.cli", "run", str(study.path),
                             "--stages", "data,finetune"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        seen = wait_for_records(study.output_dir / "results.sqlite", proc, "runs",
                                lambda recs: running_steps(next(iter(recs.values()), None), 3),
                                what="step 3 of the run")
        proc.send_signal(signal.SIGKILL)  # mid-training: 3 of 400 steps are done
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 <= seen < 400
    (row,) = plan(study)
    assert row["status"] == "interrupted"
    leftovers = list((study.output_dir / "runs").glob("*.tmp-*"))
    assert leftovers, "the killed process should have left its temporary folder"

    run_stages(study, ["finetune"])
    (row,) = plan(study)
    assert row["status"] == "done"
    assert not list((study.output_dir / "runs").glob("*.tmp-*"))
    store = Store(study.output_dir, create=False)
    rec = store.get("runs", row["run_id"])
    store.close()
    assert rec["steps"] == 400 and len(rec["loss_curve"]) == 400  # trained from scratch


def test_seeded_runs_repeat_exactly(tmp_path, tiny_llama_dir):
    """Same seed -> same data order, head and adapter init -> the same loss curve."""
    curves = []
    for i in range(2):
        study = _study(tmp_path / str(i), tiny_llama_dir, tasks=[_toy_task(tmp_path)],
                       methods=("lora",), seeds=(5,), data={},
                       training={"max_steps": 5, "batch_size": 8, "bootstrap_samples": 0})
        run_stages(study, ["data", "finetune"])
        store = Store(study.output_dir, create=False)
        curves.append(store.records("runs")[0]["loss_curve"])
        store.close()
    assert curves[0] == curves[1]
