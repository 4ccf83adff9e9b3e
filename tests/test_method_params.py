"""Method parameters that only make sense together are refused at spec load, naming the key.

    .venv/bin/python -m pytest tests/test_method_params.py -q
"""

from __future__ import annotations

import pytest

from peftlab.errors import SpecError
from peftlab.methods import get_method


def test_adalora_target_rank_above_initial_rank_is_refused():
    adalora = get_method("adalora")
    with pytest.raises(SpecError, match=r"methods\.ada: target_r: .*must be <= init_r \(4\)"):
        adalora.validate_params({"init_r": 4, "target_r": 8}, where="methods.ada")
    assert adalora.validate_params({"init_r": 8, "target_r": 8}, where="x")["target_r"] == 8
    # init_r itself refused: one error about it, none about target_r
    with pytest.raises(SpecError) as err:
        adalora.validate_params({"init_r": 0, "target_r": 8}, where="x")
    assert "init_r" in str(err.value) and "target_r" not in str(err.value)


def test_ia3_feedforward_modules_outside_target_modules_are_refused():
    ia3 = get_method("ia3")
    with pytest.raises(SpecError, match=r"feedforward_modules: .*must be a subset of "
                                        r"target_modules \['q_proj', 'v_proj'\]"):
        ia3.validate_params({"target_modules": ["q_proj", "v_proj"],
                             "feedforward_modules": ["down_proj"]}, where="methods.ia3")
    ok = {"target_modules": ["q_proj", "down_proj"], "feedforward_modules": ["down_proj"]}
    assert ia3.validate_params(ok, where="x")["feedforward_modules"] == ["down_proj"]
    # PEFT's own target list (None or all-linear): nothing to compare with here
    assert ia3.validate_params({"feedforward_modules": ["down_proj"]}, where="x")
