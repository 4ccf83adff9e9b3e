"""Every kind of artifact a study writes loads with plain transformers / PEFT /
sentence-transformers to the logits it was evaluated with, and names no path of the machine that
trained it.

Kinds: a full model and a LoRA adapter with transformers' head (tiny BERT: a single-text task and
a pair the tokenizer joins natively; tiny Llama: a pair joined by the pair template), and both
with the sentence-embedding head (tiny BERT). Each artifact's README.md holds the loading code;
a fresh Python process that imports no peftlab runs it on the run's evaluation texts (adapters:
also merged) and compares with the run's stored eval_logits.safetensors.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peftlab.store import Store
from peftlab.testing import tiny_study

TOLERANCE = 1e-4
TRAINING = {"epochs": 1, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 50,
            "max_steps": 2}

# Runs in a fresh interpreter: it must import nothing from peftlab (checked at the end).
PLAIN_SCRIPT = r'''
import json
import sys

import numpy as np
from safetensors.numpy import load_file

jobs = json.load(open(sys.argv[1], encoding="utf-8"))
out = []
for job in jobs:
    space = {}
    if job["kind"] == "card":
        exec(compile(job["code"], job["name"], "exec"), space)
        rows = []
        for start in range(0, len(job["texts"][0]), 16):
            rows.append(space["logits"](*[t[start:start + 16] for t in job["texts"]]).numpy())
        got = np.concatenate(rows)
    else:  # the sentence-transformers snippet: embeddings -> the head's single-text layer
        space["texts"] = job["texts"][0]
        exec(compile(job["code"], job["name"], "exec"), space)
        head = load_file(job["head"])
        emb = space["embeddings"].float().numpy()
        got = emb @ head["classifier.weight"].T + head["classifier.bias"]
    stored = load_file(job["logits"])["logits"]
    out.append({"name": job["name"], "shape": list(got.shape), "stored": list(stored.shape),
                "max_abs_diff": float(np.abs(got - stored).max())})
peftlab = sorted(m for m in sys.modules if m == "peftlab" or m.startswith("peftlab."))
print(json.dumps({"results": out, "peftlab_modules": peftlab}))
'''


@pytest.fixture(scope="module")
def studies(tmp_path_factory, tiny_bert_dir, tiny_llama_dir, glue_dir) -> dict[str, Any]:
    """Three tiny finished studies (two steps per run): name -> (study, base model folder)."""
    out = {}
    for name, model_dir, tasks, methods, head in (
            ("bert", tiny_bert_dir, ("sst2", "rte"), ("full", "lora"),
             "sequence-classification"),
            ("llama", tiny_llama_dir, ("rte",), ("full", "lora"), "sequence-classification"),
            ("se", tiny_bert_dir, ("sst2", "rte"), ("full", "lora"), "sentence-embedding")):
        training = dict(TRAINING, **({"head_init": "probe"} if head == "sentence-embedding"
                                     else {}))
        study = tiny_study(tmp_path_factory.mktemp(name), model_dir=model_dir, glue_dir=glue_dir,
                           tasks=tasks, methods=methods, seeds=(1,), train_samples=24,
                           eval_samples=20, training=training,
                           model={"name": str(model_dir), "max_length": 48, "head": head})
        out[name] = (study, model_dir)
    return out


def _runs(studies: dict[str, Any]) -> list[dict[str, Any]]:
    """Every finished run: {study, model_dir, rec, artifact, logits, texts}."""
    from peftlab.context import Context

    out = []
    for name, (study, model_dir) in studies.items():
        store = Store(study.output_dir, create=False)
        try:
            ctx = Context(study=study, store=store)
            for rec in store.records("runs"):
                assert rec["status"] == "done", rec.get("failure_reason")
                frame = ctx.data.split(rec["task"], "eval")
                pair = "text_b" in frame.columns and bool(frame["text_b"].notna().all())
                cols = ["text_a", "text_b"] if pair else ["text_a"]
                out.append({"study": name, "model_dir": model_dir, "rec": rec,
                            "artifact": study.output_dir / rec["artifact"],
                            "logits": study.output_dir / rec["eval_logits"],
                            "texts": [frame[c].tolist() for c in cols]})
        finally:
            store.close()
    assert len(out) == 10  # 4 + 2 + 4 runs: an empty list must not pass
    return out


def _code_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def _set(code: str, name: str, value: str) -> str:
    """`code` with the line `NAME = ...` set to `NAME = value` (exactly one such line)."""
    new, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
    assert n == 1, f"{name} is set {n} times in the card's code"
    return new


def test_model_card_code_reproduces_the_eval_logits_without_peftlab(studies, tmp_path):
    jobs = []
    st = importlib.util.find_spec("sentence_transformers") is not None
    for run in _runs(studies):
        card = (run["artifact"] / "README.md").read_text(encoding="utf-8")
        blocks = _code_blocks(card)
        code = _set(blocks[0], "ARTIFACT", json.dumps(str(run["artifact"])))
        adapter = (run["artifact"] / "adapter_config.json").is_file()
        base = {"logits": str(run["logits"]), "texts": run["texts"]}
        if adapter:
            code = _set(code, "BASE", json.dumps(str(run["model_dir"])))
            for merge in ("False", "True"):
                jobs.append({**base, "kind": "card", "name": f"{run['rec']['run_id']} merge={merge}",
                             "code": _set(code, "MERGE", merge)})
        else:
            jobs.append({**base, "kind": "card", "name": run["rec"]["run_id"], "code": code})
        if run["study"] == "se" and run["rec"]["task"] == "sst2" and st:
            prefix = f"ARTIFACT = {json.dumps(str(run['artifact']))}\n"
            if adapter:
                prefix += f"BASE = {json.dumps(str(run['model_dir']))}\n"
            jobs.append({**base, "kind": "sentence-transformers", "code": prefix + blocks[1],
                         "name": f"{run['rec']['run_id']} SentenceTransformer",
                         "head": str(run["artifact"] / "head.safetensors")})
    (tmp_path / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (tmp_path / "plain.py").write_text(PLAIN_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(tmp_path / "plain.py"), str(tmp_path / "jobs.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["peftlab_modules"] == []
    results = out["results"]
    assert len(results) == len(jobs) >= 16  # 10 runs, 6 adapters merged too (+2 ST with it)
    for r in results:
        assert r["shape"] == r["stored"], r
        assert r["max_abs_diff"] < TOLERANCE, r


def test_peftlab_reloads_every_artifact_to_its_eval_logits(studies):
    """peftlab's own loading (the stages and the bench) gives the stored logits back."""
    from safetensors.numpy import load_file

    from peftlab.artifacts import load_run
    from peftlab.context import Context
    from peftlab.encode import encode_frame, predict

    runs = _runs(studies)
    for run in runs:
        study = studies[run["study"]][0]
        store = Store(study.output_dir, create=False)
        try:
            ctx = Context(study=study, store=store)
            tokenizer, model = load_run(ctx, run["rec"]["run_id"], device="cpu")
            data = encode_frame(ctx.data.split(run["rec"]["task"], "eval"), tokenizer,
                                max_length=48)
            logits = predict(model, data, tokenizer, 8, "cpu")
        finally:
            store.close()
        np.testing.assert_allclose(logits, load_file(run["logits"])["logits"], rtol=1e-5,
                                   atol=1e-5, err_msg=run["rec"]["run_id"])


# A JSON string that is an absolute path of two or more parts ("/" alone is a vocabulary token).
_ABSOLUTE = re.compile(r"^((/[^/\s]+){2,}|[A-Za-z]:[\\/])")


def _absolute_paths(text: str, roots: list[str]) -> list[str]:
    """Absolute paths in `text`: any of `roots` anywhere, or a JSON string value that is one."""
    found = [r for r in roots if r in text]
    try:
        values = _strings(json.loads(text))
    except ValueError:
        values = []
    return found + [v for v in values if _ABSOLUTE.match(v)]


def _strings(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for k, v in data.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(data, list):
        return [s for v in data for s in _strings(v)]
    return []


def test_no_artifact_file_holds_an_absolute_path(studies):
    import tempfile

    runs = _runs(studies)
    roots = sorted({str(r["model_dir"]) for r in runs} | {str(s.output_dir) for s, _ in
                                                          studies.values()}
                   | {sys.prefix, tempfile.gettempdir() + os.sep, str(Path.home()) + os.sep,
                      os.getcwd() + os.sep})
    files = [f for r in runs for f in r["artifact"].rglob("*") if f.is_file()]
    assert len(files) >= 60
    bad = {}
    for f in files:
        text = f.read_bytes().decode("utf-8", errors="replace")
        if f.suffix == ".safetensors":  # the JSON header: tensor names and metadata
            size = int.from_bytes(f.read_bytes()[:8], "little")
            text = f.read_bytes()[8:8 + size].decode("utf-8")
        found = _absolute_paths(text, roots)
        if found:
            bad[str(f)] = found[:3]
    assert not bad, bad


def test_sentence_embedding_artifacts_claim_no_classifier_head(studies):
    """The encoder is stored as what plain classes build from it (a BertModel, or an adapter of
    one), the head in head.safetensors; nothing says SEQ_CLS or names the head as a module."""
    from safetensors import safe_open

    runs = [r for r in _runs(studies) if r["study"] == "se"]
    assert len(runs) == 4
    for run in runs:
        art = run["artifact"]
        head = json.loads((art / "head.json").read_text(encoding="utf-8"))
        assert head["format"] == "peftlab/sentence-embedding-head/v1"
        with safe_open(str(art / "head.safetensors"), framework="np") as f:
            shapes = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        assert shapes == {"classifier.weight": [2, 64], "classifier.bias": [2],
                          "pair_classifier.weight": [2, 1], "pair_classifier.bias": [2]}
        if (art / "adapter_config.json").is_file():
            cfg = json.loads((art / "adapter_config.json").read_text(encoding="utf-8"))
            assert cfg["task_type"] == "FEATURE_EXTRACTION" and cfg["modules_to_save"] is None
            assert cfg["base_model_name_or_path"] is None  # a local base: named in the card only
            with safe_open(str(art / "adapter_model.safetensors"), framework="np") as f:
                keys = list(f.keys())  # noqa: SIM118
            assert keys and all(k.startswith("base_model.model.encoder.") for k in keys), keys
        else:
            cfg = json.loads((art / "config.json").read_text(encoding="utf-8"))
            assert cfg["architectures"] == ["BertModel"]
            with safe_open(str(art / "model.safetensors"), framework="np") as f:
                assert not any(k.startswith(("bert.", "classifier", "pair_classifier"))
                               for k in f.keys())  # noqa: SIM118
        card = (art / "README.md").read_text(encoding="utf-8")
        assert "AutoModelForSequenceClassification.from_pretrained" not in _code_blocks(card)[0]


def test_the_card_says_what_the_run_was(studies):
    run = next(r for r in _runs(studies) if r["study"] == "bert" and r["rec"]["method"] == "lora"
               and r["rec"]["task"] == "rte")
    card = (run["artifact"] / "README.md").read_text(encoding="utf-8")
    rec = run["rec"]
    acc = rec["metrics"]["accuracy"]
    assert card.startswith("---\n") and "library_name: peft" in card
    assert f"| Study | `{studies['bert'][0].spec.name}` |" in card
    assert f"| Run | `{rec['run_id']}` |" in card and "| Seed | 1 |" in card
    assert "`rte` (nyu-mll/glue, config rte)" in card and "(type `lora`): alpha=8.0" in card
    assert (f"| accuracy (main) | {acc['value']:.4f} | [{acc['ci_low']:.4f}, "
            f"{acc['ci_high']:.4f}] |") in card
    assert "More Information Needed" not in card  # not PEFT's empty template


def test_an_alias_base_is_named_by_its_hub_id(studies, tmp_path):
    """A run on an alias (here: a copy of a tiny artifact finished as if its base were the
    minilm alias) names the hub id in adapter_config.json, the card's metadata and its code."""
    import shutil

    from peftlab.model_card import finish_artifact
    from peftlab.models import ALIASES, load_tokenizer, resolve_model
    from peftlab.tasks import get_task

    study = studies["bert"][0]
    run = next(r for r in _runs(studies) if r["study"] == "bert" and r["rec"]["method"] == "lora"
               and r["rec"]["task"] == "sst2")
    folder = tmp_path / "artifact"
    shutil.copytree(run["artifact"], folder)
    finish_artifact(folder, study.run(run["rec"]["run_id"]), get_task("sst2"),
                    metrics=run["rec"]["metrics"], study="s",
                    tokenizer=load_tokenizer(resolve_model(str(run["model_dir"]))),
                    base=resolve_model("minilm"), train_examples=24, eval_examples=20)
    hub = ALIASES["minilm"]
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    card = (folder / "README.md").read_text(encoding="utf-8")
    assert cfg["base_model_name_or_path"] == hub
    assert f"base_model: {hub}\n" in card and f'BASE = "{hub}"  # the base model\n' in card


def test_a_prompt_adapters_card_code_reproduces_its_eval_logits(tmp_path, tiny_bert_dir,
                                                                 glue_dir):
    """Prompt tuning with the sentence-embedding head (a single-text and a pair task): the
    card's code, run without peftlab, reads the encoder's hidden states after the virtual
    tokens PEFT puts first and gives the stored eval logits; it offers no merge (nothing to
    fold in) and says sentence-transformers cannot load the adapter."""
    from peftlab.pipeline import load_study, run_stages
    from peftlab.testing import tiny_spec, write_spec

    spec = tiny_spec(tmp_path / "s", model_dir=tiny_bert_dir, tasks=("sst2", "rte"), methods=(),
                     seeds=(1,), train_samples=24, eval_samples=20,
                     training=dict(TRAINING, head_init="probe"),
                     model={"name": str(tiny_bert_dir), "max_length": 48,
                            "head": "sentence-embedding"})
    spec["methods"] = {"prompt": {"type": "peft", "config": "PromptTuningConfig",
                                  "params": {"num_virtual_tokens": 4},
                                  "training": {"learning_rate": 0.05}}}
    study = load_study(write_spec(tmp_path / "spec.yaml", spec), data_dir=str(glue_dir))
    run_stages(study, ["data", "finetune"])
    store = Store(study.output_dir, create=False)
    try:
        from peftlab.context import Context

        ctx = Context(study=study, store=store)
        recs = list(store.records("runs"))
        jobs = []
        for rec in recs:
            assert rec["status"] == "done", rec.get("failure_reason")
            frame = ctx.data.split(rec["task"], "eval")
            cols = ["text_a", "text_b"] if rec["task"] == "rte" else ["text_a"]
            art = study.output_dir / rec["artifact"]
            card = (art / "README.md").read_text(encoding="utf-8")
            assert "MERGE" not in card and "takes no prompt-based adapter" in card
            code = _set(_code_blocks(card)[0], "ARTIFACT", json.dumps(str(art)))
            jobs.append({"kind": "card", "name": rec["run_id"],
                         "code": _set(code, "BASE", json.dumps(str(tiny_bert_dir))),
                         "logits": str(study.output_dir / rec["eval_logits"]),
                         "texts": [frame[c].tolist() for c in cols]})
    finally:
        store.close()
    assert len(jobs) == 2
    (tmp_path / "jobs.json").write_text(json.dumps(jobs), encoding="utf-8")
    (tmp_path / "plain.py").write_text(PLAIN_SCRIPT, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(tmp_path / "plain.py"), str(tmp_path / "jobs.json")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["peftlab_modules"] == [] and len(out["results"]) == 2
    for r in out["results"]:
        assert r["shape"] == r["stored"], r
        assert r["max_abs_diff"] < TOLERANCE, r
