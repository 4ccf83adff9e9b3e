"""Registries own the names: a deployment mode and a similarity measure registered from inside a
test are validated by the spec, planned or computed by their stage, tested by the stats stage and
shown in the report, with no other edit anywhere.

    .venv/bin/python -m pytest tests/test_registries.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from rich.console import Console

from peftlab.bench.mode import MODES, Comparison
from peftlab.bench.modes.merged import Merged
from peftlab.errors import SpecError
from peftlab.measures import MEASURES, Measure
from peftlab.pipeline import load_study, run_stages
from peftlab.registry import Registry
from peftlab.store import Store
from peftlab.testing import tiny_spec, write_spec


class MergedAgain(Merged):
    """A plug-in mode: the merged model under another name, compared with `merged`."""

    name = "merged_again"
    order = 35
    label = "merged adapter, second copy"
    comparisons = (Comparison("merged", "same", equivalence=True,
                              claim="two merged copies serve alike"),)


def mean_abs_difference(x: np.ndarray, y: np.ndarray, cfg) -> float:
    """A plug-in measure: 1 / (1 + mean |x - y|) over paired rows (1 when identical)."""
    return float(1.0 / (1.0 + np.abs(np.asarray(x, float) - np.asarray(y, float)).mean()))


PLUGIN_MEASURE = Measure("mean_abs_closeness", "mean absolute closeness", mean_abs_difference,
                         tested=True, default=False)


@pytest.fixture(scope="module")
def plugin_study(tmp_path_factory, tiny_llama_dir, glue_dir):
    """A tiny study run end to end with both plug-ins registered (and unregistered after)."""
    tmp = tmp_path_factory.mktemp("plugins")
    with MODES.temporarily(MergedAgain), MEASURES.temporarily(PLUGIN_MEASURE):
        spec = tiny_spec(tmp / "study", model_dir=tiny_llama_dir, tasks=("sst2",),
                         train_samples=32, eval_samples=16,
                         training={"max_steps": 2, "batch_size": 8, "bootstrap_samples": 10},
                         drift={"null_permutations": 5,
                                "measures": ["linear_cka_debiased", "mean_abs_closeness"]},
                         bench={"modes": ["merged", "merged_again"], "batch_sizes": [1],
                                "seq_lengths": ["data"], "warmup": 1, "min_iterations": 3,
                                "min_seconds": 0.0, "threads": 1, "load_repeats": 1,
                                "gate_examples": 4, "isolation": "in-process"})
        study = load_study(write_spec(tmp / "spec.yaml", spec), data_dir=str(glue_dir))
        run_stages(study, console=Console(quiet=True))
        store = Store(study.output_dir, create=False)
        tables = {t: store.records(t) for t in ("bench", "drift", "stats")}
        store.close()
        report = (study.output_dir / "report.md").read_text(encoding="utf-8")
    return study, tables, report


def test_a_registered_mode_is_validated_planned_measured_tested_and_reported(plugin_study):
    _, tables, report = plugin_study
    again = [r for r in tables["bench"] if r["mode"] == "merged_again"]
    assert len(again) == 3 and all(r["status"] == "done" for r in again)  # one per LoRA seed
    comps = [r for r in tables["stats"] if r.get("kind") == "comparison"
             and r.get("pair") == "merged_again_vs_merged"]
    assert {c["family"] for c in comps} == {"exploratory/latency"}
    assert len(comps) == 1 and comps[0]["n"] == 3 and comps[0]["claim"] == (
        "two merged copies serve alike")
    # declared as an equivalence comparison (tiny random models learn nothing in two steps, so
    # the stats stage voids it: the margin is there, the TOST is not run)
    assert comps[0]["equivalence_margin"] is not None
    assert "merged_again" in report


def test_a_registered_measure_is_validated_computed_tested_and_reported(plugin_study):
    _, tables, report = plugin_study
    values = [r["values"]["mean_abs_closeness"] for r in tables["drift"]]
    assert values and all(0 < v <= 1 for v in values)
    assert all("mean_abs_closeness" not in r["null"] for r in tables["drift"])  # declared no null
    tested = {(r["measure"], r["band"], r["family"]) for r in tables["stats"]
              if r.get("kind") == "comparison" and r["area"] == "drift"}
    assert ("mean_abs_closeness", "mean", "exploratory/drift") in tested
    assert "mean absolute closeness" in report  # the report uses the registered label


def test_unregistered_names_are_refused_by_the_spec(tmp_path, tiny_llama_dir):
    """After the block the plug-ins are gone again, and the spec says so naming the key."""
    assert "merged_again" not in MODES and "mean_abs_closeness" not in MEASURES
    for section, key in (({"bench": {"modes": ["merged_again"]}}, "bench.modes"),
                         ({"drift": {"measures": ["mean_abs_closeness"]}}, "drift.measures")):
        path = write_spec(tmp_path / f"{key}.yaml",
                          tiny_spec(tmp_path / "s", model_dir=tiny_llama_dir, **section))
        with pytest.raises(SpecError, match=rf"{key}.*unknown"):
            load_study(path)


def test_registry_refuses_duplicates_and_names_the_kind():
    reg: Registry = Registry("widget")

    class W:
        name = "w"

    reg.register(W)
    with pytest.raises(ValueError, match="widget 'w' is already registered"):
        reg.register(W)
    with pytest.raises(SpecError, match=r"here: unknown widget 'v'; expected one of \['w'\]"):
        reg.get("v", where="here")
