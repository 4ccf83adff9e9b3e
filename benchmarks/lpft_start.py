"""Does fine-tuning improve on the probe-fitted head it starts from? One run per task x method.

    python benchmarks/lpft_start.py --data-dir ../shared/data/glue --tasks sst2 rte \
        --methods full lora [--set training.learning_rate=1e-5] [--set methods.lora...]

Loads a spec (default: the shipped quickstart), keeps one seed and the named tasks and methods,
applies `--set KEY=VALUE` edits (dotted keys into the spec; VALUE parsed as YAML), and trains each
run with peftlab's own engine (`training.train_and_evaluate`). Before training, the run's model
as it starts (head fitted on the frozen base, adapter at its identity initialisation) is
evaluated on the same evaluation examples, so each line prints the start's main metric, the
run's, and the paired bootstrap interval of their difference (`metrics.paired_difference`), the
rule the stats stage judges `improved` by, with the training time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import yaml  # noqa: E402


def _set(spec: dict, dotted: str) -> None:
    key, _, raw = dotted.partition("=")
    *path, last = key.split(".")
    node = spec
    for part in path:
        node = node.setdefault(part, {})
    node[last] = yaml.safe_load(raw)


def main() -> None:
    import numpy as np

    from peftlab.encode import predict
    from peftlab.metrics import get_metric, paired_difference
    from peftlab.pipeline import load_study
    from peftlab.spec import find_spec
    from peftlab.training import train_and_evaluate

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="quickstart")
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--tasks", nargs="+", default=["sst2", "rte"])
    ap.add_argument("--methods", nargs="+", default=["full", "lora"])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    spec = yaml.safe_load(Path(find_spec(args.spec)).read_text(encoding="utf-8"))
    spec["tasks"] = [t for t in spec["tasks"]
                     if (t if isinstance(t, str) else t["name"]) in args.tasks]
    spec["methods"] = {m: v for m, v in spec["methods"].items() if m in args.methods}
    spec["seeds"] = [args.seed]
    spec["overrides"] = [o for o in spec.get("overrides") or []
                         if set(o.get("tasks") or args.tasks) & set(args.tasks)
                         and set(o.get("methods") or args.methods) & set(args.methods)]
    for o in spec["overrides"]:
        o["tasks"] = [t for t in o.get("tasks") or args.tasks if t in args.tasks]
        o["methods"] = [m for m in o.get("methods") or args.methods if m in args.methods]
    for edit in args.set:
        _set(spec, edit)
    with tempfile.TemporaryDirectory(prefix="lpft-") as tmp:
        spec["output_dir"] = str(Path(tmp) / "study")
        path = Path(tmp) / "spec.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
        study = load_study(path, data_dir=args.data_dir)
        from peftlab.data import StudyData

        data = StudyData(study)
        for rc in study.runs():
            task = data.task(rc.task)
            start: dict = {}

            def on_start(prep, start=start, rc=rc):
                prep.model.eval()
                start["logits"] = predict(prep.model, prep.eval, prep.tokenizer,
                                          rc.training.eval_batch_size, "cpu",
                                          pad_to=rc.training.pad_to)
                prep.model.train()

            t0 = time.perf_counter()
            res = train_and_evaluate(rc, task, data.split(rc.task, "train"),
                                     data.split(rc.task, "eval"), device="cpu",
                                     on_start=on_start)
            wall = time.perf_counter() - t0
            y = data.split(rc.task, "eval")["label"].to_numpy()
            main = task.metrics[0]
            if res.status != "done":
                print(f"{rc.task} {rc.method}: failed ({res.failure_reason})")
                continue
            kind = task.task_kind
            start_pred = kind.predictions(task, start["logits"])
            d = paired_difference(main, y, kind.predictions(task, res.logits), start_pred,
                                  n_bootstrap=1000, seed=rc.seed)
            start_value = get_metric(main)(y, start_pred)
            s = float(np.asarray(start["logits"]).std())
            print(f"{rc.task} {rc.method} lr {rc.training.learning_rate:g}: {main} start "
                  f"{start_value:.4f} -> "
                  f"{res.metrics[main]['value']:.4f}, diff {d['estimate']:+.4f} "
                  f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]; start logit sd {s:.2f}; "
                  f"{res.steps} steps, {wall:.1f} s", flush=True)


if __name__ == "__main__":
    main()
