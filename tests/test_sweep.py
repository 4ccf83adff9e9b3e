"""Sweeps in the spec: a method's grid expands at study load into one named method entry per cell,
each with its own run ids; a grid that cannot expand is one error naming the sweep key.

    .venv/bin/python -m pytest tests/test_sweep.py -q
"""

from __future__ import annotations

import pytest

from peftlab.errors import SpecError
from peftlab.pipeline import load_study
from peftlab.sweep import sweep_cells, value_label
from peftlab.testing import tiny_spec, write_spec

GRID = {"r": [2, 8], "target_modules": {"qv": ["q_proj", "v_proj"], "all": "all-linear"},
        "learning_rate": [1.0e-4, 3.0e-4]}


def _load(tmp_path, model_dir, **kw):
    spec = tiny_spec(tmp_path / "study", model_dir=model_dir, seeds=(1, 2), **kw)
    return load_study(write_spec(tmp_path / "spec.yaml", spec))


def test_grid_expands_into_named_cells_with_their_own_values_and_ids(tmp_path, tiny_llama_dir):
    study = _load(tmp_path, tiny_llama_dir, sweep={"lora": GRID},
                  overrides=[{"methods": ["lora"], "tasks": ["rte"], "training": {"epochs": 2}}])
    names = list(study.spec.methods)
    assert names == ["full",
                     "lora-r2-qv-lr1e-4", "lora-r2-qv-lr3e-4", "lora-r2-all-lr1e-4",
                     "lora-r2-all-lr3e-4", "lora-r8-qv-lr1e-4", "lora-r8-qv-lr3e-4",
                     "lora-r8-all-lr1e-4", "lora-r8-all-lr3e-4"]
    runs = study.runs()
    assert len(runs) == 2 * 9 * 2  # tasks x methods x seeds
    assert len({rc.run_id for rc in runs}) == len(runs)
    cell = {rc.method: rc for rc in runs if rc.task == "rte" and rc.seed == 1}
    assert cell["lora-r8-all-lr3e-4"].params["r"] == 8
    assert cell["lora-r8-all-lr3e-4"].params["target_modules"] == "all-linear"
    assert cell["lora-r2-qv-lr1e-4"].params["target_modules"] == ["q_proj", "v_proj"]
    assert cell["lora-r2-qv-lr1e-4"].training.learning_rate == 1.0e-4
    assert cell["lora-r2-qv-lr1e-4"].params["alpha"] == 8  # the template's other settings stay
    # an override naming the swept method applies to each of its cells
    assert {rc.training.epochs for rc in runs if rc.task == "rte" and rc.method != "full"} == {2}
    assert sweep_cells(study.spec)["lora-r8-qv-lr3e-4"] == {
        "method": "lora", "values": {"r": "8", "target_modules": "qv", "learning_rate": "3e-4"}}
    # stable: the same spec loads to the same ids; a cell is the run a hand-written entry gives
    again = _load(tmp_path / "again", tiny_llama_dir, sweep={"lora": GRID},
                  overrides=[{"methods": ["lora"], "tasks": ["rte"], "training": {"epochs": 2}}])
    assert [rc.run_id for rc in again.runs()] == [rc.run_id for rc in runs]


def test_a_cell_trains_what_the_same_hand_written_entry_trains(tmp_path, tiny_llama_dir):
    swept = _load(tmp_path / "a", tiny_llama_dir, sweep={"lora": {"r": [8]}})
    hand = _load(tmp_path / "b", tiny_llama_dir)
    hand_rc = next(rc for rc in hand.runs() if rc.method == "lora")
    cell_rc = next(rc for rc in swept.runs() if rc.method == "lora-r8")
    hand_rc_r8 = hand.resolve(hand_rc.task, "lora", hand_rc.seed)
    assert cell_rc.identity()["params"] == {**hand_rc_r8.params, "r": 8}
    assert cell_rc.identity()["training"] == hand_rc_r8.identity()["training"]


def test_short_value_forms():
    assert [value_label(v) for v in (8, 3.0e-4, 0.05, 16.0, "pissa", True, ["query", "value"])] \
        == ["8", "3e-4", "0.05", "16", "pissa", "true", "qv"]


@pytest.mark.parametrize(("sweep", "key"), [
    ({"lorax": {"r": [2]}}, "sweep.lorax"),
    ({"lora": {"r": []}}, "sweep.lora.r"),
    ({"lora": {"r": 8}}, "sweep.lora.r"),
    ({"lora": {"r": [2, -1]}}, "sweep.lora (cell lora-r-1)"),
    ({"lora": {"target_modules": [["q_proj"], ["query"]]}}, "sweep.lora"),  # both 'q'
    ({"lora": {"dropout": [{"a": 1}]}}, "sweep.lora.dropout"),
])
def test_a_grid_that_cannot_expand_is_one_error_naming_the_key(tmp_path, tiny_llama_dir, sweep,
                                                                key):
    with pytest.raises(SpecError) as err:
        _load(tmp_path, tiny_llama_dir, sweep=sweep)
    msg = str(err.value)
    assert len(msg.splitlines()) == 1 and f"{key}" in msg, msg


def test_the_shipped_rank_by_targets_spec_expands_into_its_six_cells(tmp_path):
    study = load_study("lora-rank-targets", output_dir=str(tmp_path / "o"))
    assert list(study.spec.methods) == ["full", "lora-r2-qv", "lora-r2-all", "lora-r8-qv",
                                        "lora-r8-all", "lora-r32-qv", "lora-r32-all"]
    runs = study.runs()
    assert len(runs) == 1 * 7 * 3 and len({rc.run_id for rc in runs}) == len(runs)
    cells = {rc.method: rc for rc in runs if rc.task == "sst2" and rc.seed == 42}
    assert {cells[m].training.learning_rate for m in cells if m != "full"} == {1e-3}
    assert cells["lora-r32-qv"].params["target_modules"] == ["query", "value"]
    assert cells["lora-r2-all"].params["target_modules"] == "all-linear"
    assert {cells[m].params["r"] for m in cells if m != "full"} == {2, 8, 32}


def test_a_dotted_key_sweeps_a_peft_keyword_and_leaves_the_template_alone(tmp_path,
                                                                           tiny_llama_dir):
    loha = {"type": "peft", "config": "LoHaConfig",
            "params": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            "training": {"learning_rate": 5.0e-3}}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, methods=(), seeds=(1,))
    spec["methods"] = {"loha": loha}
    spec["sweep"] = {"loha": {"params.r": [2, 16]}}
    study = load_study(write_spec(tmp_path / "spec.yaml", spec))
    assert list(study.spec.methods) == ["loha-r2", "loha-r16"]
    got = {rc.method: rc.params for rc in study.runs() if rc.task == "sst2"}
    assert got["loha-r16"] == {"config": "LoHaConfig", "params": {**loha["params"], "r": 16}}
    assert got["loha-r2"]["params"]["r"] == 2 and got["loha-r2"]["params"]["alpha"] == 8
    spec["sweep"] = {"loha": {"params.rank": [2]}}  # PEFT's config names the bad keyword
    with pytest.raises(SpecError, match=r"sweep\.loha \(cell loha-rank2\)\.params\.rank: not a "
                                        "keyword of PEFT's LoHaConfig"):
        load_study(write_spec(tmp_path / "bad.yaml", spec))


def test_a_cell_or_override_of_peft_keywords_merges_into_the_entry_s_params(tmp_path,
                                                                             tiny_llama_dir):
    """A mapping value (a labelled `params` cell, an override's `params: {params: {...}}`) changes
    the keywords it names and keeps the entry's others, as a dotted key does."""
    loha = {"type": "peft", "config": "LoHaConfig",
            "params": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}}
    spec = tiny_spec(tmp_path / "study", model_dir=tiny_llama_dir, methods=(), seeds=(1,))
    spec["methods"] = {"loha": loha}
    spec["sweep"] = {"loha": {"params": {"small": {"r": 2}, "wide": {"alpha": 32}}}}
    spec["overrides"] = [{"tasks": ["rte"], "methods": ["loha"], "params": {"params": {"r": 16}}}]
    study = load_study(write_spec(tmp_path / "spec.yaml", spec))
    assert list(study.spec.methods) == ["loha-paramssmall", "loha-paramswide"]
    got = {(rc.task, rc.method.replace("params", "")): rc.params["params"] for rc in study.runs()}
    assert got[("sst2", "loha-small")] == {**loha["params"], "r": 2}
    assert got[("sst2", "loha-wide")] == {**loha["params"], "alpha": 32}
    assert got[("rte", "loha-small")] == {**loha["params"], "r": 16}
    assert got[("rte", "loha-wide")] == {**loha["params"], "r": 16, "alpha": 32}
