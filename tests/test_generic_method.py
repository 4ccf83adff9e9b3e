"""Any PEFT method from its own config (`type: peft`): PEFT's config class validates the spec,
and a method type peftlab has no file for (LoHa, prompt tuning) trains, reloads, drifts and
serves, with what it can do asked of PEFT.

    .venv/bin/python -m pytest tests/test_generic_method.py -q
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from peftlab.context import Context
from peftlab.methods import get_method, method_for, method_names
from peftlab.pipeline import load_study, run_stages
from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec

LOHA = {"type": "peft", "config": "LoHaConfig",
        "params": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"learning_rate": 5.0e-3}}
PROMPT = {"type": "peft", "config": "PromptTuningConfig", "params": {"num_virtual_tokens": 4},
          "training": {"learning_rate": 5.0e-2}}
BENCH = {"modes": ["unmerged", "merged", "mixed"], "batch_sizes": [1], "seq_lengths": ["data"],
         "warmup": 1, "min_iterations": 3, "min_seconds": 0.0, "threads": 1, "gate_examples": 8,
         "load_repeats": 1}


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_llama_dir, glue_dir):
    """LoHa and prompt tuning (no peftlab file for either) through finetune ... bench."""
    assert {"loha", "prompttuning"}.isdisjoint(method_names())  # nothing registered for them
    tmp = tmp_path_factory.mktemp("generic")
    spec = tiny_spec(tmp / "study", model_dir=tiny_llama_dir, methods=(), seeds=(1,),
                     training={"max_steps": 3, "batch_size": 8, "bootstrap_samples": 10},
                     bench=BENCH)
    spec["methods"] = {"loha": LOHA, "prompt": PROMPT}
    study = load_study(write_spec(tmp / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune", "represent", "drift", "bench"],
               console=Console(quiet=True))
    return study


def _table(study, name):
    store = Store(study.output_dir, create=False)
    try:
        return list(store.records(name))
    finally:
        store.close()


def test_capabilities_are_asked_of_peft_per_config():
    loha = method_for("peft", {"config": "LoHaConfig", "params": {}})
    prompt = method_for("peft", {"config": "PromptTuningConfig", "params": {}})
    lora = method_for("peft", {"config": "LoraConfig", "params": {}})
    assert loha.supports_merge and not loha.supports_mixed_batch
    assert not prompt.supports_merge and "prompt-based" in prompt.merge_refusal
    assert lora.supports_merge and lora.supports_mixed_batch
    # the registered methods keep their declared capabilities
    assert get_method("lora").for_params({"r": 8}) is get_method("lora")
    assert not get_method("dora").for_params({}).supports_mixed_batch


def test_methods_peftlab_has_no_file_for_train_and_reload(study):
    from peftlab.artifacts import load_run

    runs = {r["method"]: r for r in _table(study, "runs")}
    assert set(runs) == {"loha", "prompt"}
    for method, rec in runs.items():
        assert rec["status"] == "done", (method, rec.get("failure_reason"))
        assert 0 < rec["params"]["trainable_non_head"] < rec["params"]["base_total"] / 10
    store = Store(study.output_dir, create=False)
    try:
        _, model = load_run(Context(study=study, store=store), runs["loha"]["run_id"],
                            device="cpu")
    finally:
        store.close()
    assert {type(c).__name__ for c in model.peft_config.values()} == {"LoHaConfig"}


def test_drift_reads_the_merged_update_and_skips_what_cannot_merge(study):
    weights = _table(study, "weights")
    loha = [w for w in weights if w["method"] == "loha"]
    assert loha and {w["update"] for w in loha} == {"merged - base"}
    assert {w["matrix"] for w in loha} == {"q_proj", "v_proj"}
    assert not [w for w in weights if w["method"] == "prompt"]  # no weight update to read
    drift = _table(study, "drift")
    assert {r.get("method") for r in drift} >= {"loha", "prompt"}


def test_bench_serves_what_peft_supports_and_records_why_not(study):
    recs = {(r["mode"], r["method"]): r for r in _table(study, "bench")}
    assert recs[("unmerged", "loha")]["status"] == "done"
    assert recs[("unmerged", "prompt")]["status"] == "done"
    assert recs[("merged", "loha")]["status"] == "done"
    assert recs[("merged", "prompt")]["status"] == "unsupported"
    assert "prompt-based" in recs[("merged", "prompt")]["failure_reason"]
    assert recs[("mixed", "loha")]["status"] == "unsupported"
    assert "mixed-adapter" in recs[("mixed", "loha")]["failure_reason"]


def test_serving_picks_a_peft_method_that_peft_says_mixes_batches(tmp_path, tiny_llama_dir,
                                                                  glue_dir):
    """Serving under load serves the first PEFT method that can mix adapters in one batch,
    asked per config: a `type: peft` LoraConfig entry can, the LoHa entry before it cannot."""
    from peftlab.stages.bench import serving_models

    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, methods=(), seeds=(1,),
                     training={"max_steps": 2, "batch_size": 8, "bootstrap_samples": 10})
    spec["methods"] = {"loha": LOHA, "peftlora": {
        "type": "peft", "config": "LoraConfig",
        "params": {"r": 4, "target_modules": ["q_proj", "v_proj"]}}}
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune"], console=Console(quiet=True))
    store = Store(study.output_dir, create=False)
    try:
        seed, lora, full = serving_models(Context(study=study, store=store))
    finally:
        store.close()
    assert seed == 1 and full == []
    assert [a["run_id"] for a in lora] == [rc.run_id for rc in study.runs()
                                           if rc.method == "peftlora"]


@pytest.mark.parametrize(("entry", "key"), [
    ({"type": "peft", "config": "NoSuchConfig", "params": {}}, "methods.zoo.config"),
    ({"type": "peft", "config": "VeraConfig", "params": {"rank": 4}}, "methods.zoo.params.rank"),
])
def test_a_bad_peft_config_is_one_error_line_naming_the_key(tmp_path, tiny_llama_dir, entry, key):
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, methods=(), seeds=(1,))
    spec["methods"] = {"zoo": entry}
    path = write_spec(tmp_path / "spec.yaml", spec)
    out = subprocess.run([sys.executable, "-m", "peftlab.cli", "validate", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len([line for line in lines if line.startswith("error:")]) == 1, lines
    error = next(line for line in lines if line.startswith("error:"))
    assert f"{key}:" in error and "Traceback" not in out.stderr


def test_a_prefix_method_on_the_sentence_embedding_head_is_refused(tmp_path, tiny_bert_dir):
    """That head takes a prompt-based method's virtual tokens as embeddings in front of each
    text (prompt tuning, p-tuning: validated); PEFT feeds prefix tuning's as past_key_values,
    which the head's encoder calls are not given: one error line before any training."""
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_bert_dir, methods=("lora",), seeds=(1,))
    spec["model"]["head"] = "sentence-embedding"
    spec["methods"]["prefix"] = {"type": "peft", "config": "PrefixTuningConfig",
                                 "params": {"num_virtual_tokens": 4}}
    path = write_spec(tmp_path / "spec.yaml", spec)
    out = subprocess.run([sys.executable, "-m", "peftlab.cli", "validate", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 2, out.stdout + out.stderr
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "methods.prefix:" in errors[0], errors
    assert "PrefixTuningConfig" in errors[0] and "past_key_values" in errors[0]
    assert "Traceback" not in out.stderr
    del spec["methods"]["prefix"]  # prompt tuning and p-tuning validate, on single and pair tasks
    spec["methods"]["prompt"] = PROMPT
    spec["methods"]["ptuning"] = {"type": "peft", "config": "PromptEncoderConfig",
                                  "params": {"num_virtual_tokens": 4, "encoder_hidden_size": 16}}
    ok = subprocess.run([sys.executable, "-m", "peftlab.cli", "validate",
                         str(write_spec(tmp_path / "ok.yaml", spec))], capture_output=True,
                        text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_prompt_tuning_on_the_sentence_embedding_head_through_every_stage(tmp_path,
                                                                          tiny_bert_dir,
                                                                          glue_dir):
    """Prompt tuning (no peftlab file) with model.head: sentence-embedding on a single-text and
    a pair task: it trains from the probe-fitted head, represents (the text's positions: as
    many features as the base), drifts (no weight update: none read), is probed off-task on
    MRPC pairs, serves unmerged (its gate passed) with merged recorded unsupported for PEFT's
    reason, and is in the report."""
    from peftlab.extraction import load_representations

    bench = {"modes": ["base", "unmerged", "merged"], "batch_sizes": [1], "seq_lengths": ["data"],
             "warmup": 1, "min_iterations": 2, "min_seconds": 0.0, "threads": 1,
             "runs": "first_seed", "load_repeats": 1, "paired": None}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_bert_dir, methods=(), seeds=(1,),
                     tasks=("sst2", "rte"), bench=bench,
                     training={"max_steps": 3, "batch_size": 8, "bootstrap_samples": 10,
                               "head_init": "probe"},
                     forgetting={"tasks": ["mrpc"], "probe_train_samples": 24,
                                 "probe_test_samples": 24})
    spec["model"]["head"] = "sentence-embedding"
    spec["methods"] = {"prompt": PROMPT}
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "baselines", "finetune", "represent", "forgetting", "drift",
                       "bench", "stats", "report"], console=Console(quiet=True))
    runs = {r["task"]: r for r in _table(study, "runs")}
    assert {r["status"] for r in runs.values()} == {"done"}, runs
    assert runs["sst2"]["params"]["trainable_non_head"] == 4 * 64  # the virtual tokens alone
    store = Store(study.output_dir, create=False)
    try:
        for task, rec in runs.items():
            base, _ = load_representations(store, task, "base")
            run, _ = load_representations(store, task, rec["run_id"])
            assert run.keys() == base.keys()
            # the text's tokens pooled, as for the base; the virtual tokens changed them
            assert all(run[k].shape == base[k].shape for k in base)
            assert not np.allclose(run[max(base)], base[max(base)])
    finally:
        store.close()
    assert not [w for w in _table(study, "weights") if w["method"] == "prompt"]
    assert {d["task"] for d in _table(study, "drift") if d.get("method") == "prompt"} == \
        {"sst2", "rte"}
    probes = [f for f in _table(study, "forgetting")
              if f.get("method") == "prompt" and f["measure"] == "probe"]
    assert probes and {f["status"] for f in probes} == {"done"}
    assert {f["probe_task"] for f in probes} == {"mrpc"}
    recs = {(r["mode"], r["task"]): r for r in _table(study, "bench") if r.get("method")}
    for task in ("sst2", "rte"):
        assert recs[("unmerged", task)]["status"] == "done", recs[("unmerged", task)]
        assert recs[("merged", task)]["status"] == "unsupported"
        assert "prompt-based" in recs[("merged", task)]["failure_reason"]
    report = (study.output_dir / "report.md").read_text(encoding="utf-8")
    assert runs["sst2"]["run_id"] in report


def test_the_shipped_zoo_has_ten_peft_methods_and_initialisations(tmp_path):
    study = load_study("methods-zoo", output_dir=str(tmp_path / "o"))
    kinds = set()
    for name, entry in study.spec.methods.items():
        rc = study.resolve(study.spec.tasks[0].name, name, study.spec.seeds[0])
        if entry["type"] == "full":
            continue
        kinds.add((entry["type"], rc.params.get("config"), str(rc.params.get("init", True))))
    assert len(kinds) >= 10
    configs = {c for _, c, _ in kinds}
    assert {"VeraConfig", "LoHaConfig", "LoKrConfig", "OFTConfig"} <= configs
    assert {t for t, _, _ in kinds} >= {"lora", "dora", "ia3", "adalora", "peft"}
    assert ("lora", None, "pissa") in kinds
    assert "PromptTuningConfig" in configs  # a prompt-based method (the issue asks for one)


def test_vera_on_the_sentence_embedding_head_reloads_its_shared_projections(tmp_path,
                                                                           tiny_bert_dir,
                                                                           glue_dir):
    """VeRA keeps its shared random projections at the model level ("base_model.vera_A"): the
    sentence-embedding head's portable adapter must load them under that name (represent and
    every later stage reload the run), and the bench's artifact check must not read them as
    the adapter of a module the base lacks (it refused every VeRA run before)."""
    from safetensors import safe_open

    from peftlab.artifacts import load_run, run_artifact
    from peftlab.bench.loading import base_structure, check_artifact

    spec = tiny_spec(tmp_path / "study", model_dir=tiny_bert_dir, methods=(), seeds=(1,),
                     tasks=("rte",),
                     training={"max_steps": 2, "batch_size": 8, "bootstrap_samples": 10})
    spec["model"]["head"] = "sentence-embedding"
    spec["methods"] = {"vera": {"type": "peft", "config": "VeraConfig",
                                "params": {"r": 16, "target_modules": ["query", "value"]}}}
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune"], console=Console(quiet=True))
    (rc,) = study.runs()
    store = Store(study.output_dir, create=False)
    try:
        ctx = Context(study=study, store=store)
        _, model = load_run(ctx, rc.run_id, device="cpu")
        art = run_artifact(ctx, rc)
    finally:
        store.close()
    assert {type(c).__name__ for c in model.peft_config.values()} == {"VeraConfig"}
    with safe_open(str(Path(art["path"]) / "adapter_model.safetensors"),
                   framework="pt") as f:
        assert any(k.startswith("base_model.vera_A") for k in f.keys())  # noqa: SIM118
    check_artifact(art, base_structure(study.spec.model.model_dump(mode="json"), 2))
