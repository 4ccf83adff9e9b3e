"""Small finished studies for tests and benchmarks: a spec written to disk and fine-tuned.

    from peftlab.testing import tiny_study
    study = tiny_study(tmp_path, model_dir=build_tiny_llama(tmp_path / "m"), glue_dir=glue)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from peftlab.pipeline import load_study
from peftlab.plan import Study

METHOD_PRESETS: dict[str, dict[str, Any]] = {
    "full": {"type": "full", "training": {"learning_rate": 1.0e-3}},
    "lora": {"type": "lora", "r": 4, "alpha": 8, "training": {"learning_rate": 5.0e-3}},
    "dora": {"type": "dora", "r": 4, "alpha": 8, "training": {"learning_rate": 5.0e-3}},
    "ia3": {"type": "ia3", "training": {"learning_rate": 1.0e-2}},
    "adalora": {"type": "adalora", "init_r": 6, "target_r": 4, "training": {"learning_rate": 5e-3}},
}


def tiny_spec(output_dir: Path, *, model_dir: Path, tasks: tuple[str, ...] = ("sst2", "rte"),
              methods: tuple[str, ...] = ("full", "lora"), seeds: tuple[int, ...] = (1, 2, 3),
              train_samples: int = 32, eval_samples: int = 24, **sections: Any) -> dict[str, Any]:
    """A spec dict for a seconds-long study of a tiny model; `sections` override whole keys."""
    spec: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(output_dir),
        "device": "cpu",
        "model": {"name": str(model_dir), "max_length": 48},
        "data": {"train_samples": train_samples, "eval_samples": eval_samples},
        "tasks": list(tasks),
        "methods": {m: copy.deepcopy(METHOD_PRESETS[m]) for m in methods},
        "seeds": list(seeds),
        "training": {"epochs": 1, "batch_size": 8, "logging_steps": 1, "bootstrap_samples": 100},
        "represent": {"probe_samples": 24, "batch_size": 8},
        "drift": {"null_permutations": 20},
        "bench": {"batch_sizes": [1, 4], "seq_lengths": ["data"], "warmup": 1,
                  "min_iterations": 3, "min_seconds": 0.0, "threads": 1},
    }
    spec.update(sections)
    if isinstance(spec.get("bench"), dict) and "paired" not in spec["bench"]:
        spec["bench"] = {**spec["bench"], "paired": dict(TINY_PAIRED)}
    return spec


# The paired latency design of a tiny study (unless its bench section says otherwise): the two
# pilot blocks per task and method, of 2 short rounds, and no more.
TINY_PAIRED = {"budget_s": 60.0, "pilot_rounds": 2, "requests": 2, "min_blocks": 2,
               "max_blocks": 2}


def write_spec(path: Path, spec: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return path


def tiny_study(tmp_path: Path, *, model_dir: Path, glue_dir: Path, stages: list[str] | None = None,
               **kwargs: Any) -> Study:
    """Write a tiny spec under `tmp_path`, run `stages` (default: data + finetune), return it."""
    from peftlab.pipeline import run_stages

    spec_path = write_spec(tmp_path / "spec.yaml",
                           tiny_spec(tmp_path / "study", model_dir=model_dir, **kwargs))
    study = load_study(spec_path, data_dir=str(glue_dir))
    run_stages(study, stages or ["data", "finetune"])
    return study
