"""The study spec: shipped specs load, overrides resolve as written, run ids are stable, and every
bad spec fails at load with a SpecError naming the file and the key path.

No model is loaded here: specs name the `tinyllama` alias, which resolves without the network.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from peftlab.errors import SpecError
from peftlab.pipeline import load_study
from peftlab.plan import Study
from peftlab.runs import RunConfig
from peftlab.spec import SHIPPED_DIR
from peftlab.testing import tiny_spec, write_spec

STUDIES = SHIPPED_DIR  # peftlab/studies: package data
SHIPPED = sorted(STUDIES.glob("*.yaml")) + sorted(STUDIES.glob("*.yml"))


def base_spec(tmp_path: Path, **kw: Any) -> dict[str, Any]:
    """A valid spec dict: tasks sst2 + rte, methods full + lora, seeds 1..3.

    Deep-copied: `tiny_spec` hands out the module-level METHOD_PRESETS dicts themselves, so editing
    a method in one test would otherwise leak into every later one.
    """
    spec = tiny_spec(tmp_path / "study", model_dir="tinyllama", **kw)  # type: ignore[arg-type]
    return copy.deepcopy(spec)


def load(tmp_path: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Study:
    return load_study(write_spec(tmp_path / name, spec))


def spec_error(tmp_path: Path, spec: dict[str, Any], name: str = "bad.yaml") -> str:
    """Load `spec` expecting a SpecError; return its message (which must name the file)."""
    path = write_spec(tmp_path / name, spec)
    with pytest.raises(SpecError) as info:
        load_study(path)
    msg = str(info.value)
    assert str(path) in msg, f"the message does not name the spec file: {msg}"
    return msg


def by_key(study: Study) -> dict[tuple[str, str, int], RunConfig]:
    return {(r.task, r.method, r.seed): r for r in study.runs()}


# -- shipped specs -------------------------------------------------------------------------------


def test_studies_folder_has_specs() -> None:
    names = {p.name for p in SHIPPED}
    assert {"quickstart.yaml", "tinyllama-glue.yaml"} <= names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_spec_loads_and_validates(path: Path, tmp_path: Path) -> None:
    from peftlab.validate import deep_check

    study = load_study(path, output_dir=str(tmp_path / "out"))
    runs = study.runs()
    assert runs, f"{path.name} implies no training runs"
    assert len({r.run_id for r in runs}) == len(runs), "run ids must be unique"
    # Model structure and device checks (data comes from the hub or a folder: not checked here).
    notes = deep_check(study, check_data=False)
    assert isinstance(notes, list)


def test_tinyllama_glue_is_the_reference_study(tmp_path: Path) -> None:
    from peftlab.pipeline import plan

    study = load_study(STUDIES / "tinyllama-glue.yaml", output_dir=str(tmp_path / "out"))
    all_rows = plan(study)
    rows = [r for r in all_rows if r.get("kind") != "search trial"]
    assert len(all_rows) - len(rows) == 6 * study.spec.search.n_trials  # 12 trials x 6
    assert len(rows) == 18
    assert {(r["task"], r["method"], r["seed"]) for r in rows} == {
        (t, m, s) for t in ("sst2", "mrpc", "rte") for m in ("full", "lora")
        for s in (42, 1337, 2024)
    }
    # the original's design: every run waits for its task x method's search
    assert all(r["status"] == "waiting" and r["reason"].startswith("for search") for r in rows)
    assert len({r["reason"] for r in rows}) == 6
    search = study.spec.search
    full_lr = search.methods["full"]["learning_rate"]
    lora = search.methods["lora"]
    # the ranges contain the original study's chosen values (full 3e-6..5e-6; LoRA alpha 8-64)
    assert full_lr.low <= 3e-6 and full_lr.high >= 5e-6 and full_lr.log
    assert {8, 16, 32, 64} <= set(lora["alpha"])
    assert lora["learning_rate"].low <= 2e-4 <= lora["learning_rate"].high

    spec = study.spec
    assert spec.model.name == "tinyllama"
    assert spec.represent.probe_samples == 500
    runs = by_key(study)
    lora = runs[("sst2", "lora", 42)]
    assert lora.method_type == "lora"
    assert lora.params["r"] == 8
    assert lora.params["target_modules"] == ["q_proj", "v_proj"]
    for rc in runs.values():
        tr = rc.training
        assert tr.epochs == 3
        assert tr.batch_size * tr.grad_accum == 16
        assert tr.scheduler == "cosine"


def test_tinyllama_alias_names_the_reference_checkpoint() -> None:
    from peftlab.models import resolve_model

    resolved = resolve_model("tinyllama")
    assert resolved.source == "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T"


# -- overrides -----------------------------------------------------------------------------------


def test_per_task_overrides_in_reference_study_resolve_as_written(tmp_path: Path) -> None:
    # the reference study's shape with hand-set per-task values in place of its search
    doc = yaml.safe_load((STUDIES / "tinyllama-glue.yaml").read_text())
    doc.pop("search")
    doc["methods"]["full"]["training"]["learning_rate"] = 2.0e-5
    doc["methods"]["lora"]["training"]["learning_rate"] = 2.0e-4
    doc["overrides"] = [
        {"tasks": ["mrpc", "rte"], "methods": ["full"], "training": {"learning_rate": 1.0e-5}},
        {"tasks": ["mrpc", "rte"], "methods": ["lora"], "params": {"alpha": 32}}]
    path = tmp_path / "ref.yaml"
    path.write_text(yaml.safe_dump(doc))
    runs = by_key(load_study(path, output_dir=str(tmp_path / "o")))
    for seed in (42, 1337, 2024):
        # full fine-tuning: 2e-5 on SST-2, 1e-5 on the small pair tasks
        assert runs[("sst2", "full", seed)].training.learning_rate == pytest.approx(2e-5)
        assert runs[("mrpc", "full", seed)].training.learning_rate == pytest.approx(1e-5)
        assert runs[("rte", "full", seed)].training.learning_rate == pytest.approx(1e-5)
        # LoRA: one learning rate, alpha 16 on SST-2 and 32 on the pair tasks
        for task in ("sst2", "mrpc", "rte"):
            assert runs[(task, "lora", seed)].training.learning_rate == pytest.approx(2e-4)
        assert runs[("sst2", "lora", seed)].params["alpha"] == 16
        assert runs[("mrpc", "lora", seed)].params["alpha"] == 32
        assert runs[("rte", "lora", seed)].params["alpha"] == 32
        assert runs[("mrpc", "lora", seed)].params["r"] == 8  # untouched by the override


def test_resolution_order_later_wins(tmp_path: Path) -> None:
    spec = base_spec(tmp_path, seeds=(1,))
    spec["training"].update(learning_rate=1e-4, warmup_ratio=0.2, weight_decay=0.01)
    spec["tasks"] = ["sst2", {"name": "rte", "training": {"learning_rate": 3e-4,
                                                           "warmup_ratio": 0.3}}]
    spec["methods"]["lora"]["training"] = {"learning_rate": 5e-3}
    spec["overrides"] = [
        {"tasks": ["rte"], "methods": ["lora"], "training": {"learning_rate": 7e-3},
         "params": {"alpha": 64}},
        {"tasks": ["rte"], "methods": ["lora"], "training": {"learning_rate": 9e-3}},
        {"methods": ["full"], "training": {"weight_decay": 0.1}},
    ]
    runs = by_key(load(tmp_path, spec))
    sst2_full, rte_full = runs[("sst2", "full", 1)], runs[("rte", "full", 1)]
    sst2_lora, rte_lora = runs[("sst2", "lora", 1)], runs[("rte", "lora", 1)]
    # method-level training beats study-wide and task-level training
    assert sst2_full.training.learning_rate == pytest.approx(1e-3)  # preset full: 1e-3
    assert sst2_lora.training.learning_rate == pytest.approx(5e-3)
    # task-level training beats study-wide where no method sets the key
    assert rte_full.training.warmup_ratio == pytest.approx(0.3)
    assert sst2_full.training.warmup_ratio == pytest.approx(0.2)
    # overrides apply in order, later wins; they touch only the named tasks/methods
    assert rte_lora.training.learning_rate == pytest.approx(9e-3)
    assert rte_lora.params["alpha"] == 64
    assert sst2_lora.params["alpha"] == 8
    assert rte_full.training.weight_decay == pytest.approx(0.1)
    assert sst2_full.training.weight_decay == pytest.approx(0.1)
    assert rte_lora.training.weight_decay == pytest.approx(0.01)


def test_method_params_get_defaults_filled_in(tmp_path: Path) -> None:
    rc = by_key(load(tmp_path, base_spec(tmp_path, seeds=(1,))))[("sst2", "lora", 1)]
    assert rc.params["r"] == 4 and rc.params["alpha"] == 8
    assert {"dropout", "target_modules", "bias"} <= set(rc.params)


# -- run ids -------------------------------------------------------------------------------------


def ids(study: Study) -> dict[tuple[str, str, int], str]:
    return {k: rc.run_id for k, rc in by_key(study).items()}


def test_run_ids_are_deterministic_and_readable(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    first = ids(load(tmp_path, spec, "a.yaml"))
    again = ids(load(tmp_path, copy.deepcopy(spec), "b.yaml"))  # another file, same content
    assert first == again
    for (task, method, seed), run_id in first.items():
        assert re.fullmatch(rf"{task}-{method}-s{seed}-[0-9a-f]{{8}}", run_id), run_id
    assert len(set(first.values())) == len(first)


def test_run_ids_are_the_same_in_a_new_process(tmp_path: Path) -> None:
    """Ids must not depend on hash randomisation or object addresses."""
    import subprocess
    import sys

    path = write_spec(tmp_path / "spec.yaml", base_spec(tmp_path, seeds=(1,)))
    code = ("import sys; from peftlab.pipeline import load_study; "
            "print(' '.join(r.run_id for r in load_study(sys.argv[1]).runs()))")
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [r.run_id for r in load_study(path).runs()]


@pytest.mark.parametrize(
    ("change", "affected"),
    [
        (lambda s: s["training"].update(epochs=2), {"full", "lora"}),
        (lambda s: s["training"].update(warmup_ratio=0.2), {"full", "lora"}),
        (lambda s: s["training"].update(batch_size=4), {"full", "lora"}),
        (lambda s: s["methods"]["lora"]["training"].update(learning_rate=1e-4), {"lora"}),
        (lambda s: s["methods"]["lora"].update(r=8), {"lora"}),
        (lambda s: s["methods"]["lora"].update(alpha=32), {"lora"}),
        (lambda s: s["data"].update(train_samples=64), {"full", "lora"}),
        (lambda s: s["model"].update(max_length=64), {"full", "lora"}),
    ],
    ids=["epochs", "warmup", "batch", "lora-lr", "lora-r", "lora-alpha", "train-samples",
         "max-length"],
)
def test_run_id_changes_with_what_changes_the_model(tmp_path: Path, change, affected) -> None:
    spec = base_spec(tmp_path)
    before = ids(load(tmp_path, spec, "a.yaml"))
    changed = copy.deepcopy(spec)
    change(changed)
    after = ids(load(tmp_path, changed, "b.yaml"))
    for key, run_id in before.items():
        if key[1] in affected:
            assert after[key] != run_id, f"{key}: the id ignored a change"
        else:
            assert after[key] == run_id, f"{key}: the id changed although its run did not"


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s["training"].update(report_to=["tensorboard"]),
        lambda s: s["training"].update(logging_steps=50),
        lambda s: s["training"].update(eval_batch_size=7),
        lambda s: s.update(name="renamed", description="another description"),
        lambda s: s.update(output_dir="/somewhere/else"),
        lambda s: s["drift"].update(null_permutations=5),
        lambda s: s["bench"].update(batch_sizes=[1]),
        lambda s: s.update(seeds=[1, 2, 3, 4]),  # adding a seed keeps the old runs' ids
    ],
    ids=["report_to", "logging_steps", "eval_batch_size", "name", "output_dir", "drift", "bench",
         "more-seeds"],
)
def test_run_id_ignores_what_does_not_change_the_model(tmp_path: Path, change) -> None:
    spec = base_spec(tmp_path)
    before = ids(load(tmp_path, spec, "a.yaml"))
    changed = copy.deepcopy(spec)
    change(changed)
    after = ids(load(tmp_path, changed, "b.yaml"))
    assert {k: after[k] for k in before} == before


def test_run_id_changes_with_the_label_mapping_of_a_file_task(tmp_path: Path) -> None:
    for name in ("train.csv", "eval.csv"):
        (tmp_path / name).write_text("text,label\ngood film,pos\nbad film,neg\n")
    task = {"name": "mine", "files": {"train": str(tmp_path / "train.csv"),
                                      "eval": str(tmp_path / "eval.csv")},
            "columns": {"text_a": "text", "label": "label"}, "label_names": ["neg", "pos"]}
    spec = base_spec(tmp_path, seeds=(1,))
    spec["tasks"] = [task]
    swapped = copy.deepcopy(spec)
    swapped["tasks"][0]["label_names"] = ["pos", "neg"]
    a = ids(load(tmp_path, spec, "a.yaml"))
    b = ids(load(tmp_path, swapped, "b.yaml"))
    assert all(a[k] != b[k] for k in a)


# -- bad specs: SpecError naming the file and the key path ---------------------------------------


def test_unknown_top_level_key(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["trainig"] = {"epochs": 1}
    msg = spec_error(tmp_path, spec)
    assert "trainig" in msg and "unknown key" in msg


@pytest.mark.parametrize(
    ("section", "key", "path"),
    [
        ("training", "lerning_rate", "training.lerning_rate"),
        ("model", "nmae", "model.nmae"),
        ("data", "train_sample", "data.train_sample"),
        ("represent", "probe_sample", "represent.probe_sample"),
        ("bench", "warmups", "bench.warmups"),
    ],
)
def test_unknown_nested_key(tmp_path: Path, section: str, key: str, path: str) -> None:
    spec = base_spec(tmp_path)
    spec[section][key] = 1
    msg = spec_error(tmp_path, spec)
    assert path in msg and "unknown key" in msg


def test_unknown_method_parameter(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"]["rank"] = 8
    msg = spec_error(tmp_path, spec)
    assert re.search(r"methods\.lora(\.|: )rank", msg), msg
    assert "unknown key" in msg


@pytest.mark.parametrize(
    ("where", "key_path"),
    [("tasks", "tasks[sst2].training"), ("method", "methods.lora.training"),
     ("override", "overrides[0].training")],
)
def test_unknown_training_key_in_a_layer(tmp_path: Path, where: str, key_path: str) -> None:
    spec = base_spec(tmp_path)
    if where == "tasks":
        spec["tasks"] = [{"name": "sst2", "training": {"lerning_rate": 1e-3}}, "rte"]
    elif where == "method":
        spec["methods"]["lora"]["training"]["lerning_rate"] = 1e-3
    else:
        spec["overrides"] = [{"tasks": ["rte"], "training": {"lerning_rate": 1e-3}}]
    msg = spec_error(tmp_path, spec)
    assert key_path in msg and "lerning_rate" in msg
    assert "learning_rate" in msg  # the message lists what was expected


@pytest.mark.parametrize(
    ("section", "key", "value", "path", "expected"),
    [
        ("training", "batch_size", "many", "training.batch_size", "integer"),
        ("training", "epochs", "three", "training.epochs", "number"),
        ("training", "scheduler", "cosin", "training.scheduler", "cosine"),
        ("model", "max_length", [128], "model.max_length", "integer"),
        ("data", "train_samples", "all", "data.train_samples", "integer"),
    ],
)
def test_wrong_type(tmp_path: Path, section, key, value, path, expected) -> None:
    spec = base_spec(tmp_path)
    spec[section][key] = value
    msg = spec_error(tmp_path, spec)
    assert path in msg and expected in msg and repr(value) in msg


def test_wrong_type_for_seeds_and_methods(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["seeds"] = [1, 1.5]
    msg = spec_error(tmp_path, spec, "seeds.yaml")
    assert "seeds" in msg and "integer" in msg
    spec = base_spec(tmp_path)
    spec["methods"]["lora"] = "lora"
    msg = spec_error(tmp_path, spec, "methods.yaml")
    assert "methods.lora" in msg


@pytest.mark.parametrize("field", ["name", "output_dir", "model", "tasks", "methods", "seeds"])
def test_missing_required_field(tmp_path: Path, field: str) -> None:
    spec = base_spec(tmp_path)
    del spec[field]
    msg = spec_error(tmp_path, spec)
    assert re.search(rf"\b{field}\b.*missing", msg), msg


def test_missing_nested_field(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    del spec["model"]["name"]
    msg = spec_error(tmp_path, spec)
    assert "model.name" in msg and "missing" in msg


def test_method_without_type(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    del spec["methods"]["lora"]["type"]
    msg = spec_error(tmp_path, spec)
    assert "methods.lora" in msg and "type" in msg


def test_unknown_task(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["tasks"] = ["sst2", "sst3"]
    msg = spec_error(tmp_path, spec)
    assert "tasks[1].name" in msg and "'sst3'" in msg
    assert "sst2" in msg and "mrpc" in msg  # lists the known tasks


def test_empty_and_duplicate_tasks_and_seeds(tmp_path: Path) -> None:
    for i, (key, value, words) in enumerate([
        ("tasks", [], "at least one task"),
        ("tasks", ["sst2", "sst2"], "unique"),
        ("seeds", [], "at least one seed"),
        ("seeds", [1, 1], "unique"),
        ("methods", {}, "at least one method"),
    ]):
        spec = base_spec(tmp_path)
        spec[key] = value
        msg = spec_error(tmp_path, spec, f"bad{i}.yaml")
        assert key in msg and words in msg


def test_unknown_method_type(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"]["type"] = "lorra"
    msg = spec_error(tmp_path, spec)
    assert "methods.lora.type" in msg and "'lorra'" in msg
    assert "lora" in msg.split("'lorra'")[1] and "full" in msg  # lists the registered types


def test_method_type_that_is_not_a_string(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"]["type"] = ["lora"]
    msg = spec_error(tmp_path, spec)
    assert "methods.lora.type" in msg


@pytest.mark.parametrize("value", [5, "fast"])
def test_method_training_that_is_not_a_mapping(tmp_path: Path, value: Any) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"]["training"] = value
    msg = spec_error(tmp_path, spec)
    assert "methods.lora.training" in msg and "mapping" in msg


def _unknown_model_error(tmp_path: Path, name: str) -> tuple[Path, Exception]:
    """Load a spec naming model `name` and run the model checks of `validate` on it."""
    from peftlab.errors import PeftlabError
    from peftlab.validate import deep_check

    spec = base_spec(tmp_path)
    spec["model"]["name"] = name
    path = write_spec(tmp_path / "bad.yaml", spec)
    with pytest.raises(PeftlabError) as info:
        deep_check(load_study(path), check_data=False)
    return path, info.value


@pytest.mark.parametrize("name", ["tinyllamma", "no-such-model"])
def test_unknown_model_alias_is_refused_before_training(tmp_path: Path, name: str) -> None:
    """Fails at load or, at the latest, in `validate` (deep_check), with the aliases listed."""
    _, err = _unknown_model_error(tmp_path, name)
    msg = str(err)
    assert f"'{name}'" in msg and "tinyllama" in msg and "minilm" in msg


def test_unknown_model_alias_names_file_and_key(tmp_path: Path) -> None:
    path, err = _unknown_model_error(tmp_path, "tinyllamma")
    assert isinstance(err, SpecError), type(err).__name__
    assert str(path) in str(err) and "model.name" in str(err), str(err)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("r", 0, "greater than 0"), ("r", -4, "greater than 0"), ("r", 2.5, "integer"),
     ("alpha", 0, "greater than 0"), ("alpha", -16, "greater than 0"),
     ("dropout", 1.5, "less than 1")],
)
def test_bad_lora_parameter(tmp_path: Path, key: str, value: Any, expected: str) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"][key] = value
    msg = spec_error(tmp_path, spec)
    assert re.search(rf"methods\.lora(\.|: ){key}\b", msg), msg
    assert expected in msg and repr(value) in msg


@pytest.mark.parametrize("value", [0, -1e-4])
def test_learning_rate_not_positive(tmp_path: Path, value: float) -> None:
    spec = base_spec(tmp_path)
    spec["training"]["learning_rate"] = value
    msg = spec_error(tmp_path, spec)
    assert "training.learning_rate" in msg and "greater than 0" in msg


def test_learning_rate_not_positive_in_a_method(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["methods"]["lora"]["training"]["learning_rate"] = 0
    msg = spec_error(tmp_path, spec)
    assert "learning_rate" in msg and "greater than 0" in msg and "lora" in msg


@pytest.mark.parametrize("layer", ["method", "override"])
def test_bad_training_value_names_the_layer_that_set_it(tmp_path: Path, layer: str) -> None:
    spec = base_spec(tmp_path)
    if layer == "method":
        spec["methods"]["lora"]["training"]["learning_rate"] = 0
        key_path = r"methods\.lora\.training(\.|: )learning_rate"
    else:
        spec["overrides"] = [{"tasks": ["rte"], "methods": ["full"],
                              "training": {"learning_rate": -1}}]
        key_path = r"overrides\[0\]\.training(\.|: )learning_rate"
    msg = spec_error(tmp_path, spec)
    assert re.search(key_path, msg), msg


def test_bad_override_param_names_the_override(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["overrides"] = [{"tasks": ["rte"], "methods": ["lora"], "params": {"alpha": -1}}]
    msg = spec_error(tmp_path, spec)
    assert "overrides[0].params" in msg and "alpha" in msg, msg


def test_bad_override_param_is_refused(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["overrides"] = [{"tasks": ["rte"], "methods": ["lora"], "params": {"alpha": -1}}]
    msg = spec_error(tmp_path, spec)
    assert "alpha" in msg and "greater than 0" in msg


def test_override_naming_an_unknown_task(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["overrides"] = [{"tasks": ["mrpc"], "training": {"learning_rate": 1e-3}}]
    msg = spec_error(tmp_path, spec)
    assert "overrides[0].tasks" in msg and "'mrpc'" in msg
    assert "rte" in msg and "sst2" in msg  # the study's tasks


def test_override_naming_an_unknown_method(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["overrides"] = [{"methods": ["dora"], "params": {"alpha": 4}}]
    msg = spec_error(tmp_path, spec)
    assert "overrides[0].methods" in msg and "'dora'" in msg
    assert "full" in msg and "lora" in msg


def test_unknown_key_in_an_override(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["overrides"] = [{"task": ["sst2"], "training": {"learning_rate": 1e-3}}]
    msg = spec_error(tmp_path, spec)
    assert "overrides" in msg and "task" in msg and "unknown key" in msg


def test_several_errors_are_all_reported(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["training"]["lerning_rate"] = 1
    spec["bench"]["warmups"] = 1
    msg = spec_error(tmp_path, spec)
    assert "training.lerning_rate" in msg and "bench.warmups" in msg


def test_file_level_problems(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match=re.escape(str(missing))):
        load_study(missing)
    bad_yaml = tmp_path / "broken.yaml"
    bad_yaml.write_text("name: x\ntasks: [sst2\n")
    with pytest.raises(SpecError, match=re.escape(str(bad_yaml)) + ".*YAML"):
        load_study(bad_yaml)
    a_list = tmp_path / "list.yaml"
    a_list.write_text("- sst2\n- rte\n")
    with pytest.raises(SpecError, match=re.escape(str(a_list)) + ".*mapping"):
        load_study(a_list)


def test_glue_dir_source_without_a_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    monkeypatch.delenv("PEFTLAB_DATA_DIR", raising=False)
    spec = base_spec(tmp_path)
    spec["data"]["source"] = "glue_dir"
    msg = spec_error(tmp_path, spec)
    assert "data.source" in msg and "glue_dir" in msg


def test_file_task_needs_mapping_and_labels(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["tasks"] = [{"name": "mine", "files": {"train": "t.csv", "eval": "e.csv"},
                      "columns": {"text_a": "text", "label": "label"}}]
    msg = spec_error(tmp_path, spec)
    assert "tasks.0" in msg and "label_names" in msg


# -- duplicate keys ------------------------------------------------------------------------------


def _line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line number of the nth line that starts with `needle` (indentation included)."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if line.startswith(needle)]
    return hits[nth - 1]


def test_duplicate_keys_at_any_depth_are_refused_with_key_path_and_lines(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys silently; a spec must refuse them instead."""
    text = write_spec(tmp_path / "ok.yaml", base_spec(tmp_path)).read_text()
    assert "  epochs: 1\n" in text and "    r: 4\n" in text
    text = ("name: first\n" + text.replace("  epochs: 1\n", "  epochs: 1\n  epochs: 5\n")
            .replace("    r: 4\n", "    r: 4\n    r: 16\n") + "name: last\n")
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_study(path)
    msg = str(info.value)
    lines = msg.splitlines()
    assert len(lines) == 3 and all(line.startswith(f"{path}: ") for line in lines), msg
    name = [_line_of(text, "name: ", n) for n in (1, 2, 3)]
    assert f"{path}: name: key 'name' is given more than once " \
           f"(lines {name[0]}, {name[1]} and {name[2]})" in msg
    epochs = _line_of(text, "  epochs: 1")
    assert f"{path}: training.epochs: key 'epochs' is given more than once " \
           f"(lines {epochs} and {epochs + 1})" in msg
    r = _line_of(text, "    r: 4")
    assert f"methods.lora.r: key 'r' is given more than once (lines {r} and {r + 1})" in msg


def test_duplicate_keys_inside_a_list_and_a_flow_mapping(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    text = write_spec(tmp_path / "ok.yaml", base_spec(tmp_path)).read_text()
    assert "tasks:\n- sst2\n- rte\n" in text
    text = text.replace("tasks:\n- sst2\n- rte\n", "tasks:\n- sst2\n- {name: rte, train_samples: 8, "
                                                    "train_samples: 9}\n")
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_study(path)
    line = _line_of(text, "- {name: rte")
    assert str(info.value) == (f"{path}: tasks[1].train_samples: key 'train_samples' is given "
                               f"more than once (2 times on line {line}); keep one")


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    """`<<: *defaults` then an override is how YAML shares settings: not a repeated key."""
    text = write_spec(tmp_path / "ok.yaml", base_spec(tmp_path)).read_text()
    assert "\ntraining:\n" in text
    text = text.replace("\ntraining:\n", "\ntraining:\n  <<: {epochs: 7, batch_size: 4}\n")
    path = tmp_path / "merge.yaml"
    path.write_text(text)
    study = load_study(path)
    assert study.spec.training.epochs == 1  # the file's own key wins over the merged one
    assert study.spec.training.batch_size == 8


# -- shipped specs by name; starter specs --------------------------------------------------------


def test_shipped_specs_load_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from peftlab.spec import find_spec, shipped_specs

    monkeypatch.chdir(tmp_path)
    assert set(shipped_specs()) >= {"quickstart", "tinyllama-glue"}
    for name, path in shipped_specs().items():
        assert path.parent == SHIPPED_DIR and find_spec(name) == path
        assert find_spec(f"{name}.yaml") == path
        assert load_study(name, output_dir=str(tmp_path / "o")).path == path
    # a file of your own wins over a shipped name; a path into a folder is never a name
    mine = write_spec(tmp_path / "quickstart.yaml", base_spec(tmp_path))
    assert find_spec("quickstart.yaml") == Path("quickstart.yaml")
    assert load_study("quickstart.yaml").spec.name == "tiny" and mine.is_file()
    with pytest.raises(SpecError, match="sub/quickstart: spec file not found.*quickstart, "):
        find_spec("sub/quickstart")
    with pytest.raises(SpecError, match="'?nope'?: spec file not found.*tinyllama-glue"):
        load_study("nope")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_starter_spec_is_the_shipped_one_renamed(path: Path, tmp_path: Path) -> None:
    from peftlab.starter import starter_spec

    target = tmp_path / "my study-2.yaml"
    text = starter_spec(path, target)
    target.write_text(text)
    new = load_study(target)
    old = load_study(path, output_dir=str(tmp_path / "unused"))
    assert new.spec.name == "my study-2"
    assert new.spec.output_dir == Path("runs/my study-2")
    assert [r.run_id for r in new.runs()] == [r.run_id for r in old.runs()]
    assert new.spec.model_dump(exclude={"name", "output_dir"}) == \
        old.spec.model_dump(exclude={"name", "output_dir"})
    assert f"peftlab run {target}" in text and "written by `peftlab init`" in text
    first_comment = path.read_text().splitlines()[0]
    assert first_comment in text  # the shipped spec's own explanation stays


# -- relative paths ------------------------------------------------------------------------------


def test_relative_input_paths_resolve_against_the_spec_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_llama_dir: Path) -> None:
    """Data files, a GLUE folder, a text file and a model folder beside the spec are found from
    anywhere; output_dir stays relative to the current directory."""
    sub = tmp_path / "sub"
    (sub / "data").mkdir(parents=True)
    (sub / "model").symlink_to(tiny_llama_dir)
    (sub / "glue").mkdir()
    (sub / "train.csv").write_text("text,stars\ngood,pos\nbad,neg\n")
    (sub / "data" / "eval.csv").write_text("text,stars\nfine,pos\n")
    spec = base_spec(tmp_path)
    spec["output_dir"] = "out/study"
    spec["model"]["name"] = "model"
    spec["data"] = {"glue_dir": "glue"}
    spec["forgetting"] = {"text_file": "data/held-out.txt"}  # the LM-loss texts
    spec["tasks"] = [{"name": "reviews", "files": {"train": "train.csv", "eval": "data/eval.csv"},
                      "columns": {"text_a": "text", "label": "stars"},
                      "label_names": ["neg", "pos"]}]
    write_spec(sub / "user.yaml", spec)
    monkeypatch.chdir(tmp_path)
    study = load_study("sub/user.yaml")
    s = study.spec
    assert s.tasks[0].files == {"train": sub / "train.csv", "eval": sub / "data" / "eval.csv"}
    assert s.data.glue_dir == sub / "glue"
    assert s.forgetting.text_file == sub / "data" / "held-out.txt"
    assert s.model.name == str(sub / "model")  # the folder as written: symlinks are kept
    assert s.output_dir == Path("out/study")  # not the spec's folder
    assert study.runs()[0].task_data["files"]["train"] == str(sub / "train.csv")
    # the same spec read from inside its folder means the same files
    monkeypatch.chdir(sub)
    assert load_study("user.yaml").spec.tasks[0].files == s.tasks[0].files


def test_model_aliases_and_hub_ids_are_not_paths(tmp_path: Path) -> None:
    spec = base_spec(tmp_path)
    spec["model"]["name"] = "tinyllama"
    assert load(tmp_path, spec).spec.model.name == "tinyllama"
    (tmp_path / "tinyllama").write_text("a file, not a model folder")
    assert load(tmp_path, spec, "again.yaml").spec.model.name == "tinyllama"


# -- the schema alone; names checked against the registries at load; searched values given ------


def test_the_schema_leaves_registry_defaults_to_the_loader(tmp_path: Path) -> None:
    """spec.py knows no registry: left out, drift.measures and bench.modes stay None in the
    schema and are filled in from the registries when the study loads."""
    from peftlab.bench.modes import mode_names
    from peftlab.measures import default_measures
    from peftlab.spec import parse_spec, read_spec

    path = write_spec(tmp_path / "spec.yaml", base_spec(tmp_path))
    schema_only = parse_spec(read_spec(path), path)
    assert schema_only.drift.measures is None and schema_only.bench.modes is None
    study = load_study(path)
    assert study.spec.drift.measures == default_measures() != []
    assert study.spec.bench.modes == mode_names() != []
    given = base_spec(tmp_path, drift={"measures": ["linear_cka_debiased", "cosine"]},
                      bench={"modes": ["base", "merged"]})
    study = load(tmp_path, given, "given.yaml")
    assert study.spec.drift.measures == ["linear_cka_debiased", "cosine"]
    assert study.spec.bench.modes == ["base", "merged"]


def test_registry_names_are_refused_in_the_schemas_own_form(tmp_path: Path) -> None:
    """Every bad name is one line, as a schema error would be: file, key path, the rule, the
    value given; in the order of the spec's sections."""
    from peftlab.bench.modes import mode_names
    from peftlab.measures import MEASURES

    spec = base_spec(tmp_path, drift={"measures": ["nosuch"]}, bench={"modes": ["merged", "x"]})
    path = write_spec(tmp_path / "bad.yaml", spec)
    with pytest.raises(SpecError) as info:
        load_study(path)
    assert str(info.value).splitlines() == [
        f"{path}: drift.measures: Value error, unknown measure(s) ['nosuch']; expected any of "
        f"{MEASURES.names()} (got ['nosuch'])",
        f"{path}: bench.modes: Value error, unknown mode(s) ['x']; expected any of "
        f"{mode_names()} (got ['merged', 'x'])"]
    spec = base_spec(tmp_path, bench={"modes": ["merged", "merged"]})
    assert spec_error(tmp_path, spec).endswith(
        "bench.modes: Value error, modes must be unique, got ['merged', 'merged'] "
        "(got ['merged', 'merged'])")


def test_the_primary_drift_measure_must_be_measured(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, base_spec(tmp_path, drift={"measures": ["linear_cka"]}))
    assert msg.endswith(": (top level): Value error, stats.primary.drift.measure "
                        "'linear_cka_debiased' is not in drift.measures ['linear_cka']: add it "
                        "there, or name a measured one"), msg
    msg = spec_error(tmp_path, base_spec(tmp_path, stats={"primary": {"drift": {
        "measure": "cosine"}}}))
    assert "stats.primary.drift.measure: Value error, the primary drift measure must be one " \
           "the stats stage tests" in msg and "(got 'cosine')" in msg


def test_tested_measures_must_be_measured_and_hold_the_primary(tmp_path: Path) -> None:
    msg = spec_error(tmp_path, base_spec(tmp_path, drift={"measures": [
        "linear_cka_debiased", "cosine"]}, stats={"tested_measures": ["linear_cka_debiased",
                                                                      "linear_cka"]}))
    assert "stats.tested_measures: Value error, measure(s) ['linear_cka'] are not measured: " \
           "expected any of drift.measures ['linear_cka_debiased', 'cosine']" in msg, msg
    msg = spec_error(tmp_path, base_spec(tmp_path, stats={"tested_measures": ["linear_cka"]}))
    assert "stats.primary.drift.measure: Value error, the primary drift measure must be one " \
           "the stats stage tests: ['linear_cka']" in msg, msg
    assert "must be a non-empty list without repeats" in spec_error(
        tmp_path, base_spec(tmp_path, stats={"tested_measures": ["cosine", "cosine"]}))
    ok = load(tmp_path, base_spec(tmp_path, stats={"tested_measures": [
        "linear_cka_debiased", "cosine"]}))
    assert ok.spec.stats.tested_measures == ["linear_cka_debiased", "cosine"]


def test_searched_runs_resolve_with_the_outcomes_their_caller_gives(tmp_path: Path) -> None:
    """The plan never opens the study directory: which searches finished is handed to the Study
    (`refresh`), and a run then takes its search's best values and an id of its own."""
    search = {"n_trials": 2, "methods": {"lora": {"learning_rate": [1.0e-4, 1.0e-3]},
                                         "full": {"learning_rate": [1.0e-5, 1.0e-4]}}}
    study = load(tmp_path, base_spec(tmp_path, search=search))
    assert not study.output_dir.exists()  # loading read no store: there is none
    before = by_key(study)
    assert all(rc.waiting for rc in before.values())
    sc = study.search_config("sst2", "lora")
    best = {"trial": 1, "params": {"learning_rate": 1.0e-3}, "values": {"accuracy": 0.9}}
    study.refresh({sc.search_id: {"best": best}})
    after = by_key(study)
    chosen = after[("sst2", "lora", 1)]
    assert not chosen.waiting and chosen.training.learning_rate == 1.0e-3
    assert chosen.search == {"id": sc.search_id, "study": sc.study_name, **best}
    assert chosen.run_id.startswith("sst2-lora-s1-") and not chosen.run_id.endswith("waiting")
    assert after[("sst2", "full", 1)].waiting  # its search has no outcome yet
    study.refresh({})
    assert by_key(study) == before
