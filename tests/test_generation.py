"""Generation tasks: data (E2E folder, user files and their errors), target-only loss, decoding,
text metrics with bootstrap over inputs, a user CSV task end to end on a tiny causal LM, the
greedy-equality gate, and the per-token timing clock."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from peftlab.errors import DataError

E2E_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "e2e"


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer LlamaForCausalLM briefly pretrained on the fixed corpus (+ its tokenizer)."""
    from peftlab.testing import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-lm"), lm_head=True, pretrain_steps=20)


def _csv(path: Path, rows: list[list[str]], header=("mr", "ref")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def _toy_rows() -> list[list[str]]:
    # two inputs, two references each, the references of input 1 apart in the file
    return [["name[Aa], area[riverside]", "Aa is by the river."],
            ["name[Bb], area[city centre]", "Bb is in the city centre."],
            ["name[Aa], area[riverside]", "Aa sits by the river."],
            ["name[Bb], area[city centre]", "Bb is central."]]


# ------------------------------------------------------------------------------------- data


def test_user_file_groups_rows_of_one_prompt_as_references(tmp_path):
    from peftlab.generation import inputs_of
    from peftlab.tasks import load_split, make_file_task

    task = make_file_task("toy", None, kind="generation", text_columns=("prompt",))
    path = _csv(tmp_path / "t.csv", _toy_rows())
    df = load_split(task, "train", source="files", files={"train": path},
                    columns={"prompt": "mr", "target": "ref"})
    assert df["input"].tolist() == [0, 1, 0, 1]
    assert df["row"].tolist() == [2, 3, 4, 5]
    assert inputs_of(df) == [("name[Aa], area[riverside]",
                              ["Aa is by the river.", "Aa sits by the river."]),
                             ("name[Bb], area[city centre]",
                              ["Bb is in the city centre.", "Bb is central."])]


def test_subsample_by_input_keeps_references_together():
    from peftlab.tasks.sources import generation_frame, subsample_inputs

    inputs = [f"mr{i // 3}" for i in range(30)]  # 10 inputs x 3 references
    df = generation_frame(inputs, [f"ref{i}" for i in range(30)], list(range(30)))
    sub = subsample_inputs(df, 4, seed=0, references=2)
    assert sub["input"].nunique() == 4 and len(sub) == 8
    assert sorted(sub["input"].unique().tolist()) == [0, 1, 2, 3]
    for _, g in sub.groupby("text_a"):  # first 2 references of each chosen input, in order
        first = int(g["label"].iloc[0][3:])
        assert g["label"].tolist() == [f"ref{first}", f"ref{first + 1}"] and first % 3 == 0
    again = subsample_inputs(df, 4, seed=0, references=2)
    assert again.equals(sub)


@pytest.mark.parametrize("case, content, message", [
    ("malformed row", 'mr,ref\n"name[A]",A is here.\n"name[B]",B,extra\n',
     "line 3 has 3 fields"),
    ("missing column", 'mr,text\n"name[A]",A is here.\n', "line 1 (header): no column 'ref'"),
    ("empty target", 'mr,ref\n"name[A]",A is here.\n"name[B]","  "\n',
     "line 3: column 'ref' (target) is empty"),
])
def test_malformed_generation_file_is_one_error_line_exit_2(tmp_path, tiny_lm, case, content,
                                                            message):
    import os
    import subprocess
    import sys

    bad = tmp_path / "train.csv"
    bad.write_text(content, encoding="utf-8")
    good = _csv(tmp_path / "eval.csv", _toy_rows())
    spec = _spec(tmp_path, tiny_lm, train=bad, eval_=good)
    proc = subprocess.run([sys.executable, "-m", "peftlab.cli", "run", str(spec), "--stages",
                           "data"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert str(bad) in lines[0] and message in lines[0], lines[0]


def test_jsonl_non_text_target_names_file_line_and_column(tmp_path):
    from peftlab.tasks import load_split, make_file_task

    task = make_file_task("toy", None, kind="generation", text_columns=("prompt",))
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"p": "a", "t": "b"}) + "\n" + json.dumps({"p": "c", "t": 3})
                    + "\n")
    with pytest.raises(DataError, match=r"t\.jsonl: line 2: column 't' \(target\) holds 3"):
        load_split(task, "train", source="files", files={"train": path},
                   columns={"prompt": "p", "target": "t"})


@pytest.mark.skipif(not E2E_DIR.is_dir(), reason=f"E2E data not found at {E2E_DIR}")
def test_e2e_shared_layout_trains_on_devset_and_evaluates_on_testset():
    from peftlab.tasks import get_task, load_split
    from peftlab.tasks.sources import e2e_layout

    task = get_task("e2e_nlg")
    assert e2e_layout(E2E_DIR) == {"layout": "development",
                                   "train": str(E2E_DIR / "devset.csv"),
                                   "eval": str(E2E_DIR / "testset_w_refs.csv")}
    train = load_split(task, "train", source="builtin", glue_dir=E2E_DIR)
    test = load_split(task, "eval", source="builtin", glue_dir=E2E_DIR)
    assert (len(train), train["input"].nunique()) == (4672, 547)  # the README's counts
    assert (len(test), test["input"].nunique()) == (4693, 630)
    prices = set(test["text_a"].str.extract(r"(priceRange\[[^]]*\])")[0].dropna())
    assert "priceRange[less than £20]" in prices  # read as UTF-8


def test_e2e_official_layout_trains_on_trainset(tmp_path):
    from peftlab.tasks import get_task, load_split
    from peftlab.tasks.sources import e2e_layout

    for name in ("trainset.csv", "devset.csv", "testset_w_refs.csv"):
        _csv(tmp_path / name, [[f"name[{name}]", "x"]])
    assert e2e_layout(tmp_path)["layout"] == "official"
    train = load_split(get_task("e2e_nlg"), "train", source="builtin", glue_dir=tmp_path)
    assert train["text_a"].tolist() == ["name[trainset.csv]"]


def test_e2e_folder_missing_is_a_data_error(tmp_path, monkeypatch):
    from peftlab.tasks import get_task, load_split

    monkeypatch.delenv("PEFTLAB_E2E_DIR", raising=False)
    monkeypatch.delenv("PEFTLAB_DATA_DIR", raising=False)
    with pytest.raises(DataError, match="E2E NLG data was not found.*--data-dir"):
        load_split(get_task("e2e_nlg"), "eval", source="builtin", glue_dir=tmp_path)


# --------------------------------------------------------------------------------- metrics


def _refs():
    from peftlab.text_metrics import references

    return references([("name[Aa], area[riverside], familyFriendly[yes]",
                        ["Aa is a family place by the river.", "Aa, riverside, for kids."]),
                       ("name[Bb], eatType[pub]", ["Bb is a pub."]),
                       ("name[Cc], food[Thai]", ["Cc serves Thai food.", "Thai food at Cc.",
                                                 "Cc: Thai."])])


def test_bleu_and_chrf_are_sacrebleu_corpus_scores_against_all_references():
    import sacrebleu

    from peftlab.text_metrics import bleu, chrf

    refs = _refs()
    outs = ["Aa is by the river for kids.", "Bb is a pub.", "Cc has Thai food."]
    streams = [["Aa is a family place by the river.", "Bb is a pub.", "Cc serves Thai food."],
               ["Aa, riverside, for kids.", None, "Thai food at Cc."],
               [None, None, "Cc: Thai."]]
    assert bleu(refs, outs) == pytest.approx(sacrebleu.corpus_bleu(outs, streams).score)
    assert chrf(refs, outs) == pytest.approx(sacrebleu.corpus_chrf(outs, streams).score)


def test_replicates_equal_the_metric_on_the_resampled_inputs():
    from peftlab.metrics import counts_from_indices
    from peftlab.text_metrics import bleu, chrf, rouge_l, slot_error_rate, text_replicates

    refs = _refs()
    outs = np.array(["Aa is by the river.", "Bb is a pub.", "Cc has Thai food."], dtype=object)
    idx = np.array([[0, 0, 2], [1, 2, 2], [0, 1, 2]])
    reps = text_replicates(["bleu", "chrf", "rouge_l", "slot_error_rate"], refs, outs,
                           counts_from_indices(idx, 3))
    for b, row in enumerate(idx):
        for name, fn in (("bleu", bleu), ("chrf", chrf), ("rouge_l", rouge_l),
                         ("slot_error_rate", slot_error_rate)):
            assert reps[name][b] == pytest.approx(fn(refs[row], outs[row]), abs=1e-9), name


def test_slot_error_rate_counts_missing_values():
    from peftlab.text_metrics import parse_mr, slot_counts, slot_error_rate

    assert parse_mr("name[The Vaults], priceRange[more than £30], near[Café Adriatic]") == [
        ("name", "The Vaults"), ("priceRange", "more than £30"), ("near", "Café Adriatic")]
    assert parse_mr("just a prompt") == []
    assert slot_counts("name[Aa], area[riverside], familyFriendly[yes]",
                       "Aa is in the riverside area, good for children.") == (0, 3)
    assert slot_counts("name[Aa], area[riverside], familyFriendly[no]", "Aa.") == (2, 3)
    refs = _refs()
    # 3 + 2 + 2 slots; missing: riverside, familyFriendly (1st), none (2nd), Thai (3rd)
    assert slot_error_rate(refs, ["Aa is by the river.", "Bb is a pub.", "Cc."]) == \
        pytest.approx(100 * 3 / 7)


def test_intervals_resample_inputs_not_references():
    from peftlab.generation import score
    from peftlab.tasks import make_file_task

    task = make_file_task("toy", None, ["rouge_l"], ("prompt",), kind="generation")
    inputs = [("a", ["x y z"] * 20), ("b", ["p q"])]  # 21 references, 2 inputs
    res = score(task, inputs, ["x y z", "nothing"], n_bootstrap=400, seed=0)["rouge_l"]
    # over 2 inputs, a resample is {a,a}, {a,b} or {b,b}: 100, 50 or 0
    assert res["value"] == pytest.approx(50)
    assert res["ci_low"] == pytest.approx(0) and res["ci_high"] == pytest.approx(100)


# ------------------------------------------------------------------------- training, decoding


def test_loss_is_on_target_tokens_only(tiny_lm):
    from transformers import AutoTokenizer

    from peftlab.generation import encode_examples
    from peftlab.tasks.sources import generation_frame

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    df = generation_frame(["name[Aa]"], ["Aa is here"], [2])
    ds = encode_examples(df, tok, template="Facts: {input}\nSentence:", chat=False,
                         max_length=64)
    ids, labels = ds[0]["input_ids"], ds[0]["labels"]
    n_prompt = len(tok("Facts: name[Aa]\nSentence:")["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tok.eos_token_id  # the model learns to stop
    assert tok.decode(ids[n_prompt:-1]).strip() == "Aa is here"


def _spec(tmp_path: Path, model: Path, *, train: Path, eval_: Path, methods=None,
          seeds=(1,), training=None, generation=None) -> Path:
    methods = methods or {"lora": {"type": "lora", "r": 4, "alpha": 8,
                                   "target_modules": "all-linear",
                                   "training": {"learning_rate": 3e-3}}}
    spec = {
        "name": "gen", "output_dir": str(tmp_path / "study"), "device": "cpu",
        "model": {"name": str(model), "max_length": 48},
        "tasks": [{"name": "toy", "kind": "generation", "files": {"train": str(train),
                                                                  "eval": str(eval_)},
                   "columns": {"prompt": "mr", "target": "ref"},
                   "prompt_template": "Facts: {input}\nSentence:",
                   "metrics": ["bleu", "rouge_l", "chrf", "slot_error_rate"]}],
        "methods": methods, "seeds": list(seeds),
        "training": training or {"epochs": 1, "batch_size": 4, "bootstrap_samples": 20},
        "generation": {"max_new_tokens": 6, "few_shot": 1, "batch_size": 4,
                       **(generation or {})},
    }
    path = tmp_path / "spec.yaml"
    import yaml

    path.write_text(yaml.safe_dump(spec))
    return path


def test_user_csv_generation_task_end_to_end(tmp_path, tiny_lm):
    """data -> baselines -> finetune -> report on a user CSV: a full fine-tune that memorises
    two MRs writes their references, every output is stored and the record's metrics are
    recomputed from the stored outputs."""
    from peftlab.generation import score
    from peftlab.pipeline import load_study, run_stages
    from peftlab.store import Store

    rows = [r for r in _toy_rows() if r[1] in ("Aa is by the river.", "Bb is central.")]
    train = _csv(tmp_path / "train.csv", rows * 8)
    eval_ = _csv(tmp_path / "eval.csv", _toy_rows())
    spec = _spec(tmp_path, tiny_lm, train=train, eval_=eval_,
                 methods={"full": {"type": "full", "training": {"learning_rate": 3e-3}}},
                 training={"epochs": 12, "batch_size": 4, "bootstrap_samples": 50,
                           "warmup_ratio": 0.0, "scheduler": "constant",
                           "group_by_length": True},
                 generation={"max_new_tokens": 16})
    study = load_study(spec)
    run_stages(study, ["data", "baselines", "finetune", "forgetting", "report"])
    store = Store(study.output_dir, create=False)
    # no forgetting.tasks: the generation task has no classes and its text is the runs' own, so
    # the stage measures nothing and says why
    forgot = store.records("forgetting")
    assert forgot and {r["status"] for r in forgot} == {"skipped"}
    assert any("no held-out text" in r["reason"] for r in forgot if r["measure"] == "lm_loss")
    (run,) = [r for r in store.records("runs")]
    assert run["status"] == "done" and run["eval_examples"] == 2
    gens = sorted((g for g in store.records("generations") if g["run_id"] == run["run_id"]),
                  key=lambda g: g["input"])
    assert [g["output"] for g in gens] == ["Aa is by the river.", "Bb is central."]
    assert gens[0]["references"] == ["Aa is by the river.", "Aa sits by the river."]
    task = study_task(study)
    again = score(task, [(g["input_text"], g["references"]) for g in gens],
                  [g["output"] for g in gens], n_bootstrap=50, seed=1)
    assert again == run["metrics"]
    assert run["metrics"]["bleu"]["value"] == pytest.approx(100)
    names = {r["name"] for r in store.records("gen_baselines")}
    assert names == {"zero_shot", "few_shot_1", "template"}
    report = (study.output_dir / "report.md").read_text()
    assert "| full | 1 |" in report and "Sample outputs" in report
    assert "1 of 1 runs learned" in report  # BLEU 100 clears the untrained base and the template
    # the artifact's model card (the classifier's save path): the task's metrics, and code that
    # decodes the stored outputs again without peftlab
    card = (study.output_dir / run["artifact"] / "README.md").read_text(encoding="utf-8")
    assert "pipeline_tag: text-generation" in card and "text generator" in card
    for name in ("bleu", "rouge_l", "chrf", "slot_error_rate"):
        m = run["metrics"][name]
        main = " (main)" if name == "bleu" else ""
        assert (f"| {name}{main} | {m['value']:.4f} | [{m['ci_low']:.4f}, "
                f"{m['ci_high']:.4f}] |") in card, name
    assert "../generations.jsonl" in card and "AutoModelForCausalLM" in card
    out = _card_generate(study.output_dir / run["artifact"], [g["input_text"] for g in gens],
                         tmp_path)
    assert out == [g["output"] for g in gens]
    store.close()


def _card_generate(artifact: Path, texts: list[str], tmp: Path, *, base: Path | None = None,
                   merge: bool = False) -> list[str]:
    """The outputs of the model card's code for `texts`, run in a fresh process that cannot
    import peftlab."""
    import os
    import re
    import subprocess
    import sys

    card = (artifact / "README.md").read_text(encoding="utf-8")
    (code,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    sets = {"ARTIFACT": json.dumps(str(artifact))}
    if base is not None:
        sets.update(BASE=json.dumps(str(base)), MERGE=str(merge))
    for name, value in sets.items():
        code, n = re.subn(rf"^{name} = .*$", f"{name} = {value}", code, flags=re.M)
        assert n == 1, name
    script = tmp / "card.py"
    script.write_text("import json, sys\nsys.modules['peftlab'] = None  # not importable\n"
                      + code + f"\nprint(json.dumps(generate({texts!r})))\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp, capture_output=True,
                          text=True, timeout=300, env={**env, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def study_task(study):
    from peftlab.tasks import task_from_spec

    return task_from_spec(study.spec.tasks[0])


def test_run_ids_of_generation_runs_follow_prompt_not_bench_settings(tmp_path, tiny_lm):
    from peftlab.pipeline import load_study

    train = _csv(tmp_path / "train.csv", _toy_rows())
    ids = []
    for gen in ({}, {"bench_rounds": 7, "samples": 1}, {"prompt_template": "In: {input}\nOut:"}):
        spec = _spec(tmp_path, tiny_lm, train=train, eval_=train, generation=gen)
        ids.append(load_study(spec).runs()[0].run_id)
    assert ids[0] == ids[1] != ids[2]


# ------------------------------------------------------------------------ gate and the clock


def test_unmerged_merged_and_reloaded_adapters_give_identical_greedy_outputs(tmp_path, tiny_lm):
    import torch
    from peft import LoraConfig, TaskType, get_peft_model

    from peftlab.gen_study import gate
    from peftlab.generation import generate, load_causal_lm
    from peftlab.spec import ModelSpec

    spec = ModelSpec(name=str(tiny_lm), max_length=48)
    model, tok = load_causal_lm(spec, "cpu")
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapter changes the outputs
    peft = get_peft_model(model, LoraConfig(task_type=TaskType.CAUSAL_LM, r=4, lora_alpha=16,
                                            target_modules="all-linear",
                                            init_lora_weights=False))
    peft.save_pretrained(tmp_path / "adapter")
    prompts = ["Facts: name[Aa]\nSentence:", "Facts: name[Bb], area[riverside]\nSentence:",
               "hello", "the cat"]
    g = gate(spec, tmp_path / "adapter", "lora", prompts, "cpu", 8)
    assert g["passed"], g
    base, _ = load_causal_lm(spec, "cpu")
    plain = generate(base, tok, prompts, max_new_tokens=8, stop=())
    assert plain != g["outputs"]["unmerged"]  # the gate compared an adapter that matters


def test_step_clock_times_every_new_token(tiny_lm):
    from peftlab.gen_study import StepClock, timed_generate
    from peftlab.generation import load_causal_lm
    from peftlab.spec import ModelSpec

    model, tok = load_causal_lm(ModelSpec(name=str(tiny_lm)), "cpu")
    tok.padding_side = "left"
    enc = tok(["a b", "c d e f"], return_tensors="pt", padding=True)
    r = timed_generate(model, enc, 5, tok.pad_token_id)
    assert 0 < r["ttft"] <= r["latency"] and r["tpot"] > 0
    clock = StepClock()
    from transformers import StoppingCriteriaList

    out = model.generate(**enc, max_new_tokens=5, min_new_tokens=5, do_sample=False,
                         pad_token_id=tok.pad_token_id,
                         stopping_criteria=StoppingCriteriaList([clock]))
    assert len(clock.times) == 5 == out.shape[1] - enc["input_ids"].shape[1]


def test_chat_template_wraps_the_prompt_as_a_user_turn(tiny_lm):
    from transformers import AutoTokenizer

    from peftlab.errors import ModelError
    from peftlab.generation import prompt_text

    tok = AutoTokenizer.from_pretrained(tiny_lm)
    assert prompt_text("Facts: {input}\nSentence:", "name[A]", tok) == "Facts: name[A]\nSentence:"
    tok.chat_template = None
    with pytest.raises(ModelError, match="no chat template"):
        prompt_text("{input}", "x", tok, chat=True)
    tok.chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>"
                         "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    assert prompt_text("Facts: {input}", "name[A]", tok, chat=True) == \
        "<user>Facts: name[A]</user><assistant>"


def test_bench_summary_reads_per_token_ratios_by_block():
    """Synthetic rounds where unmerged takes 1.5x merged per token and TTFT is equal: the
    paired ratios come out as 1.5 and 1.0 with the block as unit."""
    from peftlab.gen_study import bench_summary

    rng = np.random.default_rng(0)

    def req(ttft, tpot, seg):
        return {"ttft": ttft, "tpot": tpot, "latency": ttft + 15 * tpot, "segment": seg}

    blocks = []
    for _ in range(3):
        rounds = []
        for _ in range(2):
            drift = rng.uniform(0.8, 1.2)  # the machine: the same for every condition in a round
            conds = {label: [req(0.1 * drift, f * 0.02 * drift, s) for s in (0, 1)]
                     for label, f in (("merged", 1.0), ("merged (again)", 1.0),
                                      ("unmerged", 1.5), ("base", 1.0))}
            rounds.append({"batch_size": 1, "conditions": conds})
        blocks.append({"rounds": rounds, "new_tokens": 16})
    out = bench_summary(blocks, alpha=0.05, margin=0.03)
    pairs = {(p["comparison"], p["metric"]): p for p in out["pairs"]}
    assert pairs[("unmerged_vs_merged", "tpot")]["ratio"] == pytest.approx(1.5)
    assert pairs[("unmerged_vs_merged", "ttft")]["ratio"] == pytest.approx(1.0)
    assert pairs[("unmerged_vs_merged", "tpot")]["n_blocks"] == 3
    assert pairs[("aa", "tpot")]["ratio"] == pytest.approx(1.0)
    modes = {(m["mode"], m["batch_size"]): m for m in out["modes"]}
    assert modes[("unmerged", 1)]["requests"] == 12
    lat = modes[("merged", 1)]["latency_ms"] / 1e3
    assert modes[("merged", 1)]["tokens_per_s"] == pytest.approx(16 / lat)


# --------------------------------------------------------------- forgetting, weights, the card

GLUE_DIR = E2E_DIR.parent / "glue"


@pytest.fixture(scope="module")
def measured_study(tmp_path_factory, tiny_lm):
    """A generation study of full fine-tuning and LoRA (one seed each) through training, the
    represent, forgetting and drift stages and the report; its GLUE probe task (sst2) read from
    the `glue` subfolder of the --data-dir."""
    from peftlab.pipeline import load_study, run_stages

    if not (GLUE_DIR / "SST-2").is_dir():
        pytest.skip(f"GLUE data not found at {GLUE_DIR}")
    tmp = tmp_path_factory.mktemp("measured")
    rows = _toy_rows() + [[f"name[{n}], food[{f}]", f"{n} serves {f} food."]
                          for n, f in (("Cc", "Thai"), ("Dd", "French"), ("Ee", "Indian"),
                                       ("Ff", "Chinese"))]
    train = _csv(tmp / "train.csv", rows * 3)
    eval_ = _csv(tmp / "eval.csv", rows)  # 6 inputs: drift's CKA needs at least 4
    spec = _spec(tmp, tiny_lm, train=train, eval_=eval_,
                 methods={"full": {"type": "full", "training": {"learning_rate": 3e-3}},
                          "lora": {"type": "lora", "r": 4, "alpha": 8,
                                   "target_modules": "all-linear",
                                   "training": {"learning_rate": 3e-3}}},
                 training={"epochs": 2, "batch_size": 4, "bootstrap_samples": 20})
    import yaml

    raw = yaml.safe_load(spec.read_text())
    raw["forgetting"] = {"tasks": ["sst2"], "probe_train_samples": 24, "probe_test_samples": 24,
                         "cv_folds": 2, "c_grid": [1.0], "lm_texts": 12,
                         "bootstrap_samples": 50}
    raw["drift"] = {"weight_modules": ["q_proj", "v_proj"]}
    spec.write_text(yaml.safe_dump(raw))
    study = load_study(spec, data_dir=GLUE_DIR.parent)  # holds glue/ (and e2e/)
    run_stages(study, ["data", "finetune", "represent", "forgetting", "drift", "report"])
    return study, tiny_lm, tmp


def _records(study, table):
    from peftlab.store import Store

    store = Store(study.output_dir, create=False)
    try:
        return store.records(table), {r["run_id"]: r for r in store.records("runs")}
    finally:
        store.close()


def test_forgetting_of_generation_runs_is_measured_and_reported(measured_study):
    """Every run gets a held-out LM loss record (its own LM head, paired with the base on the
    same sst2 sentences) and off-task probe records; the report shows both."""
    import math

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peftlab.stages.forgetting import _take
    from peftlab.tasks import get_task, load_split

    study, tiny_lm, _ = measured_study
    recs, runs = _records(study, "forgetting")
    assert len(runs) == 2
    lm = {r["model_key"]: r for r in recs if r["measure"] == "lm_loss"}
    assert set(lm) == {"base", *runs} and all(r["status"] == "done" for r in lm.values())
    assert lm["base"]["sources"] == ["sst2"] and lm["base"]["n_texts"] == 12
    for run_id in runs:
        r = lm[run_id]
        assert r["loss_before"] == pytest.approx(lm["base"]["loss"])
        assert r["difference"] == pytest.approx(r["loss_after"] - r["loss_before"])
        assert r["ci_low"] <= r["difference"] <= r["ci_high"]
        assert r["head"].startswith("each model's own LM head")
    # the full run's loss is the fine-tuned causal LM's own (its trained, untied lm_head), as
    # transformers computes it with labels = inputs, on the same seeded sst2 sentences
    full_id = next(i for i, r in runs.items() if r["method"] == "full")
    cfg = study.spec.forgetting
    df = load_split(get_task("sst2"), "eval", source="glue_dir", glue_dir=GLUE_DIR)
    texts = _take([t for t in df["text_a"].astype(str) if t.strip()], cfg.lm_texts,
                  cfg.probe_seed)
    art = study.output_dir / runs[full_id]["artifact"]
    tok = AutoTokenizer.from_pretrained(art)
    total = count = 0.0
    for path, key in ((art, full_id), (tiny_lm, "base")):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        total = count = 0.0
        for text in texts:
            ids = torch.tensor([tok(text, truncation=True, max_length=48)["input_ids"]])
            with torch.no_grad():
                loss = model(ids, labels=ids).loss.item()
            total, count = total + loss * (ids.shape[1] - 1), count + ids.shape[1] - 1
        want = lm[key]["loss_after"] if key != "base" else lm["base"]["loss"]
        assert total / count == pytest.approx(want, abs=1e-4), key
    probes = [r for r in recs if r["measure"] == "probe" and r["status"] == "done"]
    layers = {r["layer"] for r in probes}
    assert layers == {1, 2}  # middle and last block of the 2-block model
    assert {(r["model_key"], r["layer"]) for r in probes} == {
        (k, layer) for k in ("base", *runs) for layer in layers}
    assert all(r["probe_task"] == "sst2" and r["n_test"] == 24 for r in probes)
    report = (study.output_dir / "report.md").read_text()
    assert "## Forgetting (RQ1)" in report and "Held-out LM loss" in report
    base_row = (f"| base | - | {lm['base']['loss']:.4f} | {math.exp(lm['base']['loss']):.2f} |")
    assert base_row in report
    for run_id in runs:
        assert f"| {run_id} |" in report and f"{lm[run_id]['difference']:.4f}" in report
    assert "Off-task linear probes" in report and "| sst2 | block_2 |" in report
    assert "Forgetting: lora minus full on the held-out LM loss change" in report


def test_lora_generation_card_decodes_the_stored_outputs(measured_study):
    """The LoRA run's card: adapter on the base, unmerged and merged, gives the outputs the
    run stored."""
    from peftlab.generation import read_generations

    study, tiny_lm, tmp = measured_study
    _, runs = _records(study, "forgetting")
    lora = next(r for r in runs.values() if r["method"] == "lora")
    art = study.output_dir / lora["artifact"]
    card = (art / "README.md").read_text(encoding="utf-8")
    assert "library_name: peft" in card and "| bleu (main) |" in card
    gens = read_generations(art.parent / "generations.jsonl")
    texts = [g["input_text"] for g in gens]
    for merge in (False, True):
        assert _card_generate(art, texts, tmp, base=tiny_lm, merge=merge) == \
            [g["output"] for g in gens]


def test_weight_drift_of_generation_runs_is_measured_and_reported(measured_study):
    """The drift stage analyses the weights of generation runs (drift.weight_modules only):
    LoRA's update from its factors, full fine-tuning's as tuned minus base, the latter equal to
    the difference of the two checkpoints; the report shows the weight-space table."""
    import torch
    from transformers import AutoModelForCausalLM

    study, tiny_lm, _ = measured_study
    recs, runs = _records(study, "weights")
    by_run: dict[str, list[dict]] = {}
    for r in recs:
        by_run.setdefault(r["run_id"], []).append(r)
    assert set(by_run) == set(runs)
    for run_id, rs in by_run.items():
        assert sorted(r["module"] for r in rs) == [
            f"model.layers.{i}.self_attn.{m}" for i in (0, 1) for m in ("q_proj", "v_proj")]
        want = "B A (exact)" if runs[run_id]["method"] == "lora" else "tuned - base"
        assert {r["update"] for r in rs} == {want}
        assert all(r["stats"] is not None for r in rs)
        if want == "B A (exact)":
            assert {r["stats"]["lora_rank"] for r in rs} == {4}
            assert all(r["stats"]["numerical_rank"] <= 4 for r in rs)
    full_id = next(i for i, r in runs.items() if r["method"] == "full")
    base = AutoModelForCausalLM.from_pretrained(tiny_lm).state_dict()
    tuned = AutoModelForCausalLM.from_pretrained(
        study.output_dir / runs[full_id]["artifact"]).state_dict()
    rec = next(r for r in by_run[full_id] if r["module"] == "model.layers.0.self_attn.q_proj")
    name = "model.layers.0.self_attn.q_proj.weight"
    rel = (torch.linalg.norm((tuned[name] - base[name]).double())
           / torch.linalg.norm(base[name].double())).item()
    assert rel > 0 and rec["stats"]["relative_update"] == pytest.approx(rel, rel=1e-5)
    report = (study.output_dir / "report.md").read_text()
    assert "## Weight space" in report
    assert "| full | q_proj | tuned - base | 1 | 2 |" in report
    assert "| lora | v_proj | B A (exact) | 1 | 2 |" in report


def test_missing_probe_data_fails_at_the_data_stage(tmp_path, tiny_lm):
    """A generation study's GLUE probe task not found under --data-dir: one error line from the
    data stage, before any training."""
    import os
    import subprocess
    import sys

    import yaml

    rows = _csv(tmp_path / "t.csv", _toy_rows())
    spec = _spec(tmp_path, tiny_lm, train=rows, eval_=rows)
    raw = yaml.safe_load(spec.read_text())
    raw["forgetting"] = {"tasks": ["sst2"]}
    spec.write_text(yaml.safe_dump(raw))
    empty = tmp_path / "data"
    empty.mkdir()
    proc = subprocess.run([sys.executable, "-m", "peftlab.cli", "run", str(spec), "--stages",
                           "data", "--data-dir", str(empty)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]
    assert errors == lines[-1:] and "Traceback" not in proc.stderr, proc.stderr  # after the rule
    assert "SST-2/train.tsv" in errors[0] and str(empty) in errors[0], errors[0]


def test_report_states_the_unmerged_merged_ratio_per_token(measured_study, tmp_path):
    """RQ2 of a generation report: unmerged / merged for TTFT and time per output token, each
    with its interval (synthetic bench blocks in a copy of the measured study)."""
    import shutil

    from peftlab.gen_study import GEN_BENCH
    from peftlab.pipeline import load_study, run_stages
    from peftlab.store import Store

    study, _, _ = measured_study
    out = tmp_path / "copy"
    shutil.copytree(study.output_dir, out)
    copy = load_study(study.path, data_dir=str(GLUE_DIR.parent), output_dir=str(out))
    store = Store(out, create=False)
    rng = np.random.default_rng(1)
    for i in range(3):
        rounds = []
        for _ in range(2):
            drift = rng.uniform(0.9, 1.1)
            rounds.append({"batch_size": 1, "conditions": {
                label: [{"ttft": 0.1 * drift * f_ttft, "tpot": 0.02 * drift * f_tpot,
                         "latency": 0.4 * drift, "segment": 0}]
                for label, f_ttft, f_tpot in (("merged", 1.0, 1.0), ("merged (again)", 1.0, 1.0),
                                              ("unmerged", 1.2, 1.5))}})
        store.put(GEN_BENCH, f"block/{i}", {"kind": "block", "block": i, "rounds": rounds,
                                           "new_tokens": 16})
    store.close()
    run_stages(copy, ["report"])
    report = (out / "report.md").read_text()
    line = next(ln for ln in report.splitlines() if ln.startswith("**RQ2 (per token).**"))
    assert "TPOT at batch 1: 1.500 [" in line and "TTFT at batch 1: 1.200 [" in line, line
    assert "n = 3 blocks" in line


def _lm(method, seed, diff):
    return {"task": "t", "status": "done", "measure": "lm_loss", "run_id": f"{method}-{seed}",
            "method": method, "seed": seed, "difference": diff, "loss_after": 5.0 + diff,
            "ci_low": diff - 0.01, "ci_high": diff + 0.01, "n_texts": 8, "n_tokens": 80,
            "sources": ["sst2"], "confidence": 0.95}


def test_forgetting_answer_does_not_call_a_larger_gain_less_forgetting():
    """Both methods lowered the held-out loss (no forgetting): the sentence must say so, not
    'lora forgets less'; when both raised it, 'forgets less' is the right words."""
    from peftlab.gen_study import forgetting_lines

    base = {"task": None, "status": "done", "measure": "lm_loss", "run_id": None, "loss": 5.1}
    gains = [base] + [_lm("full", s, -0.09 + 0.002 * i) for i, s in enumerate((1, 2, 3))] + [
        _lm("lora", s, -0.11 + 0.001 * i) for i, s in enumerate((1, 2, 3))]
    _, answer = forgetting_lines(gains, "t", ["full", "lora"], [1, 2, 3], 0.05)
    assert "neither method forgot" in answer and "lora lowered it more" in answer
    assert "forgets less" not in answer
    losses = [base] + [_lm("full", s, 0.09 + 0.002 * i) for i, s in enumerate((1, 2, 3))] + [
        _lm("lora", s, 0.05 + 0.001 * i) for i, s in enumerate((1, 2, 3))]
    _, answer = forgetting_lines(losses, "t", ["full", "lora"], [1, 2, 3], 0.05)
    assert answer.split("nats/token: ")[1].startswith("lora forgets less")


def test_a_probe_at_the_majority_class_rate_is_flagged_not_read_as_forgetting():
    from peftlab.gen_study import forgetting_lines

    def probe(run_id, method, acc, layer=1):
        return {"task": "t" if run_id else None, "status": "done", "measure": "probe",
                "run_id": run_id, "method": method, "seed": 1, "probe_task": "sst2",
                "layer": layer, "layer_name": f"block_{layer}", "accuracy": acc,
                "majority_rate": 0.417, "difference": None if run_id is None else acc - 0.646,
                "ci_high": -0.1, "pooling": "last", "n_train": 48, "n_test": 48}

    lines, _ = forgetting_lines([probe(None, None, 0.646), probe("r1", "full", 0.417)], "t",
                                ["full"], [1], 0.05)
    text = "\n".join(lines)
    assert "(at majority)" in text and "Not evidence of forgetting: on sst2 block_1 full" in text
    lines, _ = forgetting_lines([probe(None, None, 0.646), probe("r1", "full", 0.60)], "t",
                                ["full"], [1], 0.05)
    assert "Not evidence of forgetting" not in "\n".join(lines)
