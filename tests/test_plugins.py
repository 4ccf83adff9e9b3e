"""Plug-ins need no edit anywhere else: a fine-tuning method, a metric, a task kind, a similarity
measure and a deployment mode, each defined and registered in this file, run through the stages
that use them on a tiny model, and the records those stages wrote are checked.

    .venv/bin/python -m pytest tests/test_plugins.py -q

One tiny study (two tasks, the plug-in method and DoRA, two seeds) is run once with all five
registered (`Registry.temporarily`, so nothing leaks into other tests); each test then checks
one plug-in. DoRA is the control: it lacks the capabilities the plug-in method declares, so the
same stages must treat it differently.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydantic import Field
from rich.console import Console
from safetensors.numpy import load_file
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn import metrics as skm
from toy_data import toy_files, toy_task

from peftlab.bench.mode import MODES, Capability, Comparison, Mode, alone_logits
from peftlab.data import StudyData
from peftlab.errors import DegenerateInputError
from peftlab.extraction import BASE_KEY, load_representations
from peftlab.measures import MEASURES, Measure
from peftlab.methods.base import METHODS, Method, MethodParams, wrap_peft
from peftlab.metrics import METRICS, Metric
from peftlab.pipeline import load_study, run_stages
from peftlab.store import Store
from peftlab.tasks import TASK_KINDS, TASKS, GlueLayout, TaskDef, TaskKind
from peftlab.testing.fixtures import METHOD_PRESETS, tiny_spec, write_spec

# ----------------------------------------------------------------------------- the plug-ins


class QueryValueLoraParams(MethodParams):
    r: int = Field(2, gt=0)


class QueryValueLora(Method):
    """A method: LoRA of rank r on the attention query and value projections only. Its update is
    exactly scaling * B A and plain LoRA on linear layers, so it declares both capabilities."""

    name = "qv_lora"
    Params = QueryValueLoraParams
    exact_low_rank = True
    fast_path = True

    def prepare(self, model, params, *, head_names, total_steps):
        from peft import LoraConfig, TaskType

        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=params["r"], lora_alpha=2 * params["r"],
                            lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
        return wrap_peft(model, config, head_names)


def balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in y_true (sklearn)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a resample predicting an absent class
        return float(skm.balanced_accuracy_score(y_true, y_pred))


# No vectorised bootstrap and no chance formula: the generic paths must serve it.
BALANCED = Metric("balanced_accuracy", balanced_accuracy)


class Ordinal(TaskKind):
    """A task kind: ordered classes, predicted as one score (the head regresses the class id,
    trained with MSE) and rounded to the nearest class."""

    name = "ordinal"
    label_dtype = "float32"
    chance_rule = "uniform random guessing over the {k} ordered classes"

    def num_labels(self, task):
        return 1

    def predictions(self, task, logits):
        top = len(task.label_names) - 1
        return np.clip(np.rint(np.asarray(logits)[:, 0]), 0, top).astype(np.int64)


ORD_LABELS = ("bad", "fine", "good")
ORD_WORDS = (("awful", "poor", "dull"), ("okay", "fair", "plain"), ("great", "superb", "happy"))


def ordinal_task() -> TaskDef:
    """A task of the ordinal kind in a GLUE-style folder (defined once the kind is registered:
    a task is validated against its kind when defined)."""
    return TaskDef("toyord", ("sentence",), ORD_LABELS, ("accuracy",), kind="ordinal",
                   glue=GlueLayout("TOYORD", (("train", "train.tsv"), ("eval", "dev.tsv")),
                                   text_a="sentence", label="label", num_fields=2))


def write_ordinal_task(glue_dir: Path, n_train: int = 48, n_eval: int = 24) -> None:
    """glue_dir/TOYORD/{train,dev}.tsv: sentence<TAB>label, labels cycling 0, 1, 2."""
    folder = glue_dir / "TOYORD"
    folder.mkdir(parents=True)
    for name, n in (("train.tsv", n_train), ("dev.tsv", n_eval)):
        lines = ["sentence\tlabel"] + [
            f"the film was {ORD_WORDS[i % 3][(i // 3) % 3]} number {i}\t{i % 3}" for i in range(n)]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def rsa(x: np.ndarray, y: np.ndarray, cfg) -> float:
    """Representational similarity analysis: Spearman correlation of the two models' pairwise
    Euclidean distances between examples (the upper triangles of the (n, n) distance matrices)."""
    dx, dy = pdist(np.asarray(x, np.float64)), pdist(np.asarray(y, np.float64))
    if np.ptp(dx) == 0 or np.ptp(dy) == 0:
        raise DegenerateInputError("RSA is undefined when every pair of examples is as far apart")
    return float(spearmanr(dx, dy).statistic)


# No null and no fast bootstrap; it is the primary drift measure, so drift recomputes it on
# each resample for the interval.
RSA = Measure("rsa", "RSA (Spearman of example distances)", rsa, tested=True, default=False)


class Folded(Mode):
    """A deployment mode: the adapter folded into the base by hand from its low-rank factors
    (W += scaling * B A in each adapted layer, then PEFT's unload keeps the trained head), served
    as a plain model. Only methods whose factors are the exact update can be folded."""

    name = "folded"
    order = 36
    label = "adapter folded from its factors"
    needs = Capability("exact_low_rank", "has no exact low-rank factors to fold")
    comparisons = (Comparison("merged", "same", equivalence=True,
                              claim="folding by hand serves as merging does"),)

    def load(self, env):
        import torch
        from peft.tuners.lora import LoraLayer

        model = env.loader.adapters(env.artifacts, env.seed)
        name = env.artifacts[0]["name"]
        with torch.no_grad():
            for module in model.modules():
                if isinstance(module, LoraLayer) and name in module.lora_A:
                    weight = module.get_base_layer().weight
                    delta = (module.lora_B[name].weight @ module.lora_A[name].weight
                             ) * module.scaling[name]
                    weight += delta.to(weight.dtype)
        return model.unload().eval()

    def gate(self, env, model, call):
        art = env.artifacts[0]
        requests = env.gate_requests(art["task"])
        return [env.compare("folded", env.logits(call, requests), "unmerged (other seed)",
                            alone_logits(env, art, requests))]


# ----------------------------------------------------------------------------- the study


@pytest.fixture(scope="module")
def study_tables(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("plugins")
    write_ordinal_task(tmp / "glue")
    toy = {**toy_task(toy_files(tmp / "toy")), "metrics": ["balanced_accuracy", "accuracy"]}
    with (METHODS.temporarily(QueryValueLora), METRICS.temporarily(BALANCED),
          TASK_KINDS.temporarily(Ordinal), MEASURES.temporarily(RSA), MODES.temporarily(Folded),
          TASKS.temporarily(ordinal_task())):
        spec = tiny_spec(
            tmp / "study", model_dir=tiny_llama_dir, tasks=(toy, "toyord"), methods=(),
            seeds=(1, 2), train_samples=32, eval_samples=16,
            training={"max_steps": 2, "batch_size": 8, "bootstrap_samples": 20},
            represent={"probe_samples": 16, "batch_size": 8},
            drift={"null_permutations": 5, "bootstrap": 10,
                   "measures": ["linear_cka_debiased", "rsa"]},
            stats={"primary": {"drift": {"measure": "rsa"}}},
            bench={"modes": ["unmerged", "merged", "folded"], "fast_path": True,
                   "runs": "first_seed", "batch_sizes": [1], "seq_lengths": ["data"],
                   "warmup": 1, "min_iterations": 3, "min_seconds": 0.0, "threads": 1,
                   "load_repeats": 1, "gate_examples": 4, "isolation": "in-process"})
        spec["methods"] = {"qv": {"type": "qv_lora", "r": 2,
                                  "training": {"learning_rate": 5.0e-3}},
                           "dora": copy.deepcopy(METHOD_PRESETS["dora"])}
        study = load_study(write_spec(tmp / "spec.yaml", spec), data_dir=str(tmp / "glue"))
        run_stages(study, ["data", "baselines", "finetune", "represent", "drift", "bench",
                           "stats"], console=Console(quiet=True))
        data = StudyData(study)
        eval_labels = {t: data.split(t, "eval")["label"].to_numpy() for t in ("toy", "toyord")}
        store = Store(study.output_dir, create=False)
        tables = {t: store.records(t) for t in ("runs", "baselines", "weights", "drift", "bench",
                                                "stats")}
        reps = {(t, k): load_representations(store, t, k)[0]
                for t in ("toy",) for k in [BASE_KEY] + [r["run_id"] for r in tables["runs"]
                                                        if r["task"] == t]}
        logits = {r["run_id"]: load_file(str(store.root / r["eval_logits"]))["logits"]
                  for r in tables["runs"]}
        store.close()
    return tables, eval_labels, reps, logits


def _runs(tables, **match):
    found = [r for r in tables["runs"] if all(r.get(k) == v for k, v in match.items())]
    assert found, f"no runs with {match}"
    return found


# ----------------------------------------------------------------------------- the checks


def test_plug_ins_are_gone_after_the_block(study_tables):
    assert "qv_lora" not in METHODS and "balanced_accuracy" not in METRICS
    assert "ordinal" not in TASK_KINDS and "toyord" not in TASKS
    assert "rsa" not in MEASURES and "folded" not in MODES


def test_a_registered_method_trains_and_its_capabilities_route_drift_and_bench(study_tables):
    tables, _, _, _ = study_tables
    runs = _runs(tables, method_type="qv_lora")
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)  # 2 tasks x 2 seeds
    # exact_low_rank: its weights are read from the factors, rank r, on its target modules only
    mine = [w for w in tables["weights"] if w["method_type"] == "qv_lora"]
    assert mine and {w["update"] for w in mine} == {"B A (exact)"}
    assert {w["matrix"] for w in mine} == {"q_proj", "v_proj"}
    assert {w["stats"]["lora_rank"] for w in mine} == {2}
    # ... while DoRA, which lacks it, is merged
    assert {w["update"] for w in tables["weights"] if w["method_type"] == "dora"} == {
        "merged - base"}
    # fast_path: the "+fast" variant serves it, and refuses DoRA
    fast = [b for b in tables["bench"] if b["mode_key"] == "unmerged+fast"]
    assert {b["status"] for b in fast if b["method_type"] == "qv_lora"} == {"done"}
    refused = [b for b in fast if b["method_type"] == "dora"]
    assert refused and all(b["status"] == "unsupported" and "+fast" in b["failure_reason"]
                           for b in refused)


def test_a_registered_metric_is_computed_bootstrapped_and_given_baselines(study_tables):
    tables, eval_labels, _, logits = study_tables
    runs = _runs(tables, task="toy")
    assert all(r["main_metric"] == "balanced_accuracy" for r in runs)
    for r in runs:
        m = r["metrics"]["balanced_accuracy"]
        expected = skm.balanced_accuracy_score(eval_labels["toy"], logits[r["run_id"]].argmax(-1))
        assert m["value"] == pytest.approx(expected, abs=1e-12)
        assert m["ci_low"] <= m["value"] <= m["ci_high"]  # the per-resample bootstrap ran
    (base,) = [b for b in tables["baselines"] if b["task"] == "toy"]
    # a constant prediction recalls one of the two classes: balanced accuracy 1/2 exactly
    assert base["majority"]["metrics"]["balanced_accuracy"]["value"] == 0.5
    assert base["best_constant"]["balanced_accuracy"]["value"] == 0.5
    chance = base["chance"]["metrics"]["balanced_accuracy"]
    assert chance["method"].startswith("simulation") and abs(chance["value"] - 0.5) < 0.05


def test_a_registered_task_kind_sizes_the_head_predicts_and_sets_the_baselines(study_tables):
    tables, eval_labels, _, logits = study_tables
    runs = _runs(tables, task="toyord")
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    y = eval_labels["toyord"]
    assert sorted(set(y.tolist())) == [0, 1, 2]  # class ids in the data frame
    for r in runs:
        out = logits[r["run_id"]]
        assert out.shape == (len(y), 1)  # one score per example, not three class logits
        pred = np.clip(np.rint(out[:, 0]), 0, 2)
        assert r["metrics"]["accuracy"]["value"] == pytest.approx(float((pred == y).mean()))
    (base,) = [b for b in tables["baselines"] if b["task"] == "toyord"]
    assert base["chance"]["rule"] == "uniform random guessing over the 3 ordered classes"
    assert base["chance"]["metrics"]["accuracy"]["value"] == pytest.approx(1 / 3)
    assert set(base["label_counts"]) == set(ORD_LABELS)
    shares = base["untrained_head"]["predicted"]  # the kind's rounded predictions, counted
    assert set(shares) == set(ORD_LABELS) and sum(shares.values()) == pytest.approx(1.0)


def test_a_registered_measure_is_computed_bootstrapped_and_tested(study_tables):
    tables, _, reps, _ = study_tables
    records = [d for d in tables["drift"] if d["task"] == "toy"]
    assert {d["kind"] for d in records} == {"base_vs_run", "seed_to_seed"}
    checked = 0
    for d in records:
        if d["kind"] != "base_vs_run":
            continue
        x, y = reps[("toy", BASE_KEY)][d["layer"]], reps[("toy", d["run_b"])][d["layer"]]
        assert d["values"]["rsa"] == pytest.approx(rsa(x, y, None), abs=1e-12)
        assert d["bootstrap"]["measure"] == "rsa"  # the primary measure's interval
        assert d["bootstrap"]["ci_low"] <= d["bootstrap"]["ci_high"]
        checked += 1
    assert checked == 4 * len({d["layer"] for d in records})  # 4 runs of toy, every layer
    tested = {(s.get("measure"), s.get("family")) for s in tables["stats"]
              if s.get("kind") == "comparison" and s.get("area") == "drift"}
    assert any(m == "rsa" for m, _ in tested)


def test_a_registered_mode_serves_what_its_capability_allows_and_passes_its_gate(study_tables):
    tables, _, _, _ = study_tables
    folded = [b for b in tables["bench"] if b["mode"] == "folded"]
    served = [b for b in folded if b["method_type"] == "qv_lora"]
    assert len({b["unit"] for b in served}) == 2  # one per task, first seed
    assert all(b["status"] == "done" and b["gate"]["passed"] for b in served)
    refused = [b for b in folded if b["method_type"] == "dora"]
    assert refused and all(b["status"] == "unsupported"
                           and "no exact low-rank factors" in b["failure_reason"]
                           for b in refused)
