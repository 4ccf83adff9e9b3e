"""A small, fixed study directory with results in the shapes the stages write, without training.

    python -m peftlab.testing.sample_study /tmp/sample-study      # then open /tmp/sample-study/report.html
    python -m peftlab.testing.sample_study /tmp/qs-sample --quickstart   # the quickstart's shape

For tests of the stats stage and the report, and to preview a report in seconds. The study: SST-2,
MRPC and RTE x {full, lora} x seeds 1, 2, 3, where RTE's full run of seed 3 failed (so RTE has 2
complete pairs: "insufficient runs"). With `degenerate=True` (the default) every MRPC run scores
exactly what always predicting "equivalent" scores (F1 0.8 on 16 of 24 positives: the quickstart's
case), and RTE's lora run of seed 2 sits at chance, so the stats stage must flag them and void what
rests on them; `degenerate=False` gives every run a score well above its baselines. Drift and
weight records for all three tasks; forgetting records for every finished run (each task probed
on the other two at two layers, and the held-out LM loss); benchmark records for all three (full,
unmerged, merged at batch 1 and 4, plus base, multi-3 and mixed-3 over the three tasks). Every value is drawn from a
seeded generator, so the store is identical on every call. Dataset and spec text carry markup
(`<script>`, `|`) to test escaping.

The record layouts follow the stages' code: `runs` (finetune._record_done), `data`
(study.data_stage), `baselines` (stages.baselines, built with `peftlab.baseline_scores`), `drift`
(drift._compare_runs), `weights` (drift.weight_drift), `forgetting` (stages.forgetting); `bench`
records are made by the bench stage's own `bench.units.unit_records` from worker results shaped
like `bench.worker.run_job`'s.
When a stage changes its records, update the builder here.

`write_sample(root, quickstart=True)` writes the sample shaped like the shipped quickstart
instead: a MiniLM encoder read by the sentence-embedding head (mean pooling, no LM head, so the
held-out LM loss is skipped with the reason), LoRA on every linear layer at other learning rates
than full fine-tuning (one task overridden), every run finished, drift that stays close to 1 for
both methods, weight-space records of the query and value matrices only, off-task probes on SST-2
only, batch sizes 1 and 8 with 12 timed calls per point (too few for p95 and p99), multi-adapter
calls matched batch by batch and mixed ones not, and serving-under-load records (merged, mixed,
switch x uniform, skewed) where mixed batching sustains no rate.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np

from peftlab.pipeline import load_study
from peftlab.plan import Study
from peftlab.records import (
    BaselineRecord,
    DataRecord,
    DriftRecord,
    ForgettingRecord,
    RunRecord,
    WeightRecord,
    write,
)

TASKS = ("sst2", "mrpc", "rte")
SEEDS = (1, 2, 3)
FAILED = ("rte", "full", 3)  # the run that failed: RTE is left with 2 complete pairs
DEGENERATE_TASK = "mrpc"  # every run at the majority-class rate (degenerate=True)
DEGENERATE_RUN = ("rte", "lora", 2)  # at chance (degenerate=True)
DRIFT_TASKS = ("sst2", "mrpc", "rte")
BENCH_TASKS = TASKS
N_LAYERS = 6
EVAL_EXAMPLES = 24
# label counts of the evaluation subset (label id order): MRPC has 16 "equivalent" of 24, so
# always predicting it gives F1 0.8 and accuracy 0.667
EVAL_LABELS = {"sst2": (12, 12), "mrpc": (8, 16), "rte": (12, 12)}
SCRIPT = "<script>alert(1)</script>"
PROVENANCE = {
    "versions": {"python": "3.11.2", "peftlab": "0.1.0", "torch": "2.13.0",
                 "transformers": "5.24.0", "peft": "0.21.2"},
    "device": {"platform": "Linux-x86_64", "machine": "x86_64", "cpu_count": 2,
               "torch_threads": 2},
    "toolkit_commit": "0123456789abcdef0123456789abcdef01234567",
    "host": "sample-host",
    "time": "2025-01-01T00:00:00+0000",
}
# Main metric per task and method: (mean over seeds, spread between seeds). SST-2: lora clearly
# below full; MRPC: the two are close.
METRIC_MEANS = {("sst2", "full"): (0.86, 0.004), ("sst2", "lora"): (0.81, 0.004),
                ("mrpc", "full"): (0.90, 0.01), ("mrpc", "lora"): (0.905, 0.01),
                ("rte", "full"): (0.68, 0.01), ("rte", "lora"): (0.66, 0.01)}
# Median latency (ms) per mode at batch 1; batch b costs (1 + 0.4 (b - 1)) times as much: unmerged
# LoRA about a third slower than merged, merged as fast as full.
MODE_MS = {"base": 2.0, "full": 2.0, "unmerged": 2.7, "merged": 2.0, "multi": 2.9,
           "mixed": 3.1}


def sample_spec(output_dir: Path) -> dict[str, Any]:
    return {
        "name": "sample",
        "description": f"A fixed sample study {SCRIPT} | with markup",
        "output_dir": str(output_dir),
        "device": "cpu",
        "model": {"name": "peftlab-sample/tiny-llama", "max_length": 48},
        "data": {"train_samples": 32, "eval_samples": 24},
        "tasks": list(TASKS),
        "methods": {"full": {"type": "full"},
                    "lora": {"type": "lora", "r": 4, "alpha": 8,
                             "target_modules": ["q_proj", "v_proj"]}},
        "seeds": list(SEEDS),
        "bench": {"batch_sizes": [1, 4], "seq_lengths": ["data"]},
    }


# The quickstart shape: learning rates as the shipped quickstart sets them, drift close to 1 for
# both methods (slope per layer), latency per mode at batch 1 (MiniLM-sized: tens of ms).
QS_RATES = {"full": 9.4e-5, "lora": 3.4e-4, ("mrpc", "lora"): 9.4e-4}
QS_SLOPE = {"full": 0.004, "lora": 0.0015}
QS_MODE_MS = {"base": 14.0, "full": 14.2, "unmerged": 18.5, "merged": 14.4, "multi": 19.0,
              "mixed": 24.0}
QS_CALLS = 12  # timed calls per sweep point: p95 needs 20, p99 100
QS_BATCHES = (1, 8)
QS_LM_SKIP = ("minilm is an encoder (bert) with no causal LM head: the held-out LM loss "
              "applies to decoder models only")


def quickstart_spec(output_dir: Path) -> dict[str, Any]:
    """The sample spec in the shipped quickstart's shape (see the module docstring)."""
    spec = sample_spec(output_dir)
    spec.update({
        "model": {"name": "minilm", "max_length": 64, "head": "sentence-embedding"},
        "methods": {"full": {"type": "full", "training": {"learning_rate": QS_RATES["full"]}},
                    "lora": {"type": "lora", "r": 8, "alpha": 16, "dropout": 0.05,
                             "target_modules": "all-linear",
                             "training": {"learning_rate": QS_RATES["lora"]}}},
        "overrides": [{"tasks": ["mrpc"], "methods": ["lora"],
                       "training": {"learning_rate": QS_RATES[("mrpc", "lora")]}}],
        "represent": {"pooling": "auto"},
        "forgetting": {"tasks": ["sst2"]},
        "drift": {"weight_modules": ["query", "value"]},
        "bench": {"modes": ["base", "full", "unmerged", "merged", "multi", "mixed"],
                  "batch_sizes": list(QS_BATCHES), "seq_lengths": ["data"],
                  "serving": {"configs": ["merged", "mixed", "switch"],
                              "patterns": ["uniform", "skewed"], "rates": [25, 50, 100, 200],
                              "max_requests": 100, "max_seconds": 0.8, "max_batch_size": 8,
                              "max_wait_ms": 5}},
        "stats": {"correction": "holm", "latency_margin": 0.03},
    })
    return spec


def eval_labels(task: str) -> np.ndarray:
    """The sample's evaluation labels of a task (label ids, in a fixed order)."""
    neg, pos = EVAL_LABELS[task]
    return np.array([0] * neg + [1] * pos)


def write_sample(root: Path, degenerate: bool = True, quickstart: bool = False) -> Study:
    """Write the sample spec (root/spec.yaml) and its study directory (root/study); return it.
    degenerate: MRPC's runs and one RTE run learned nothing (see the module docstring);
    quickstart: the quickstart's shape (encoder, sentence-embedding head, serving records)."""
    import yaml

    from peftlab.store import Store

    root.mkdir(parents=True, exist_ok=True)
    spec_path = root / "spec.yaml"
    spec = (quickstart_spec if quickstart else sample_spec)(root / "study")
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    study = load_study(spec_path)
    store = Store(study.output_dir)
    try:
        store.put("meta", "study", {"name": study.spec.name,
                                    "spec": study.spec.model_dump(mode="json"),
                                    "provenance": PROVENANCE})
        rng = np.random.default_rng(0)
        # Built through the same record types the stages write (peftlab.records), so the
        # sample cannot drift from what a real study holds.
        runs = run_records(study, rng, degenerate, fail=not quickstart)
        write(store, runs)
        write(store, data_records())
        write(store, baseline_records(study))
        done = [r.dump() for r in runs if r.status == "done"]
        if quickstart:
            write(store, drift_records(done, rng, slopes=QS_SLOPE, pooling="mean"))
            write(store, weight_records(done, rng, leaves=("query", "value"), encoder=True))
            write(store, qs_forgetting_records(done, np.random.default_rng(7)))
            store.put_many("bench", bench_records(done, rng, mode_ms=QS_MODE_MS,
                                                  batches=QS_BATCHES, calls=QS_CALLS))
            write(store, serving_records(done))
        else:
            write(store, drift_records(done, rng))
            write(store, weight_records(done, rng))
            write(store, forgetting_records(done, np.random.default_rng(7)))
            store.put_many("bench", bench_records(done, rng))
    finally:
        store.close()
    return study


def _metrics_of(task: str, pred: np.ndarray, seed: int) -> dict[str, dict[str, float | None]]:
    """Every metric of the task for predictions `pred` on the sample's evaluation labels, with
    bootstrap intervals (what a run or a baseline that predicts `pred` would record)."""
    from peftlab.metrics import compute_metrics
    from peftlab.tasks import get_task

    return compute_metrics(list(get_task(task).metrics), eval_labels(task), pred,
                           n_bootstrap=200, seed=seed)


def baseline_records(study: Study) -> list[BaselineRecord]:
    """The baselines stage's records, from `peftlab.baseline_scores` on the sample's labels; the
    untrained head predicts the same label for 20 of 24 examples."""
    from peftlab.baseline_scores import baseline_metrics
    from peftlab.tasks import get_task

    out = []
    for task in TASKS:
        tdef = get_task(task)
        b = baseline_metrics(tdef, eval_labels(task), n_bootstrap=200, seed=0)
        pred = np.array([1] * 20 + [0] * 4)
        out.append(BaselineRecord(
            task=task, main_metric=tdef.metrics[0], metrics=list(tdef.metrics),
            eval_examples=EVAL_EXAMPLES, content_checksum=f"eval{task}".ljust(64, "1"),
            label_counts=b["label_counts"], majority=b["majority"],
            best_constant=b["best_constant"], chance=b["chance"],
            untrained_head={"seed": study.spec.seeds[0], "metrics": _metrics_of(task, pred, 0),
                            "predicted": {tdef.label_names[0]: 4 / 24,
                                          tdef.label_names[1]: 20 / 24}},
            n_bootstrap=200, confidence=0.95, seed=0, stamp={}, provenance=PROVENANCE))
    return out


def run_records(study: Study, rng: np.random.Generator, degenerate: bool = True,
                fail: bool = True) -> list[RunRecord]:
    """One run record per planned run; fail: RTE's full run of seed 3 failed (FAILED)."""
    out = []
    for rc in study.runs():
        metric = "f1" if rc.task == "mrpc" else "accuracy"
        base = {"run_id": rc.run_id, "task": rc.task, "method": rc.method,
                "method_type": rc.method_type, "seed": rc.seed, "config": rc.as_dict()}
        if fail and (rc.task, rc.method, rc.seed) == FAILED:
            out.append(RunRecord(**base, status="failed",
                                 failure_reason="loss became nan at step 3",
                                 loss_curve=[0.7, 0.69]))
            continue
        mean, spread = METRIC_MEANS[(rc.task, rc.method)]
        value = float(mean + spread * rng.standard_normal())
        metrics = {metric: {"value": value, "ci_low": value - 0.04, "ci_high": value + 0.035}}
        if metric == "f1":
            acc = value - 0.05
            metrics["accuracy"] = {"value": acc, "ci_low": acc - 0.04, "ci_high": acc + 0.04}
        if degenerate and (rc.task == DEGENERATE_TASK
                           or (rc.task, rc.method, rc.seed) == DEGENERATE_RUN):
            # always the majority label (MRPC) / the first label (RTE, balanced: chance)
            pred = np.full(EVAL_EXAMPLES, 1 if rc.task == DEGENERATE_TASK else 0)
            metrics = _metrics_of(rc.task, pred, rc.seed)
        full = rc.method_type == "full"
        trainable = 106_000 if full else 2_300
        out.append(RunRecord(**{
            **base, "status": "done", "main_metric": metric, "metrics": metrics,
            "params": {"trainable": trainable, "trainable_head": 130,
                       "trainable_non_head": trainable - 130, "base_total": 106_000,
                       "total_with_method": 106_000 + (0 if full else 2_170),
                       "trainable_share_of_base": trainable / 106_000},
            "artifact": f"runs/{rc.run_id}/artifact",
            "artifact_bytes": 440_000 if full else 12_800,
            "artifact_weight_bytes": 425_000 if full else 9_600,
            "train_time_s": float(3.0 + rng.random()), "eval_time_s": 0.2, "steps": 4,
            "train_samples_per_s": 40.0, "train_tokens_per_s": 900.0, "padding_share": 0.3,
            "memory": {"rss_peak_bytes": 900_000_000, "rss_start_bytes": 850_000_000,
                       "cuda_peak_allocated_bytes": None, "cuda_peak_reserved_bytes": None},
            "loss_curve": [0.70, 0.65, 0.60, 0.55], "train_examples": 32, "eval_examples": 24,
            "provenance": {**PROVENANCE, "model_revision": "sample-revision-1",
                           "data_checksums": {"train": "a" * 64, "eval": "b" * 64}},
        }))
    return out


def data_records() -> list[DataRecord]:
    out = []
    for task, split in itertools.product(TASKS, ("train", "eval")):
        labels = (["negative", SCRIPT] if task == "sst2" else ["not_equivalent | x", "equivalent"]
                  if task == "mrpc" else ["entailment", "not_entailment"])
        rows = 6_000 if split == "train" else 800
        used = 32 if split == "train" else EVAL_EXAMPLES
        used_counts = [used // 2, used // 2] if split == "train" else list(EVAL_LABELS[task])
        out.append(DataRecord(**{
            "task": task, "split": split, "source": "glue_dir",
            "path": f"/data/glue/{task}/{split}.tsv", "checksum": f"{task}{split}".ljust(64, "0"),
            "content_checksum": f"{split}{task}".ljust(64, "1"), "rows": rows, "rows_used": used,
            "describe": {"rows": rows, "label_counts": dict(zip(labels, [rows // 2, rows - rows // 2],
                                                                strict=True))},
            "describe_used": {"rows": used, "label_counts": dict(zip(labels, used_counts,
                                                                     strict=True))},
        }))
    return out


def _layer_record(task: str, kind: str, method: str, run_a: str, run_b: str, seed_a: Any,
                  seed_b: int, layer: int, similarity: float, rng: np.random.Generator,
                  pooling: str = "last") -> DriftRecord:
    """One drift record as drift._compare_runs writes it, with every default measure; layer 0's
    debiased CKA is undefined (every pooled vector identical), as the embedding layer can be."""
    values: dict[str, float | None] = {
        "linear_cka_debiased": similarity,
        "linear_cka": min(1.0, similarity + 0.05),
        "centered_cosine": min(1.0, similarity - 0.03 * rng.random()),
        "cosine": min(1.0, 0.97 + 0.03 * similarity),
        "procrustes": max(0.0, 1.2 * (1.0 - similarity) + 0.01 * rng.random()),
        "knn": min(1.0, 0.4 + 0.5 * similarity),
    }
    undefined = {}
    null: dict[str, Any] = {}
    # null floors: debiased CKA and centred cosine near 0, biased CKA and uncentred cosine high
    for m, floor in (("linear_cka_debiased", 0.0), ("linear_cka", 0.62),
                     ("centered_cosine", 0.0), ("cosine", 0.95)):
        null[m] = {"observed": values[m], "null_mean": floor + 0.01 * rng.random(),
                   "null_std": 0.01, "null_q95": floor + 0.03, "p_value": 1 / 21,
                   "n_permutations": 20}
    boot = {"measure": "linear_cka_debiased", "estimate": similarity,
            "ci_low": similarity - 0.02, "ci_high": min(1.0, similarity + 0.015),
            "confidence": 0.95, "n_resamples": 100, "undefined": 0,
            "method": "percentile bootstrap over probe examples"}
    if layer == 0:
        values["linear_cka_debiased"] = None
        null["linear_cka_debiased"] = None
        boot = None
        undefined["linear_cka_debiased"] = "every example has the same pooled vector: CKA is 0/0"
    return DriftRecord(
        task=task, method=method, method_type=method, kind=kind, run_a=run_a, run_b=run_b,
        seed_a=seed_a, seed_b=seed_b, layer=layer,
        layer_name="embeddings" if layer == 0 else f"block {layer - 1}", n_layers=N_LAYERS,
        n=24, d_a=32, d_b=32, pooling=pooling, probe_hash="c" * 64, values=values,
        undefined=undefined, null=null, bootstrap=boot, knn_k=10, settings={}, stamp={},
        provenance=PROVENANCE)


def drift_records(done: list[dict[str, Any]], rng: np.random.Generator,
                  slopes: dict[str, float] | None = None, pooling: str = "last"
                  ) -> list[DriftRecord]:
    """Base-vs-run and seed-to-seed records per layer; slopes: the similarity lost per layer
    per method (default: full 0.08, lora 0.03, full drifting more with depth; seed to seed
    0.02). Given slopes (the quickstart's, near 1), seed to seed loses a quarter of each
    method's slope and the noise shrinks with them."""
    s2s = ({m: x / 4 for m, x in slopes.items()} if slopes
           else {"full": 0.02, "lora": 0.02})
    noise = 0.001 if slopes else 0.005
    slopes = slopes or {"full": 0.08, "lora": 0.03}
    out = []
    for task in DRIFT_TASKS:
        runs = [r for r in done if r["task"] == task]
        for r in runs:
            slope = slopes[r["method"]]
            for layer in range(N_LAYERS):
                sim = 1.0 - slope * layer + noise * rng.standard_normal()
                out.append(_layer_record(task, "base_vs_run", r["method"], "base", r["run_id"],
                                         None, r["seed"], layer, float(min(sim, 1.0)), rng,
                                         pooling))
        for method in ("full", "lora"):
            group = sorted((r for r in runs if r["method"] == method), key=lambda r: r["seed"])
            for a, b in itertools.combinations(group, 2):
                for layer in range(N_LAYERS):
                    sim = 1.0 - s2s[method] * layer + noise * rng.standard_normal()
                    out.append(_layer_record(task, "seed_to_seed", method, a["run_id"],
                                             b["run_id"], a["seed"], b["seed"], layer,
                                             float(min(sim, 1.0)), rng, pooling))
    return out


def weight_records(done: list[dict[str, Any]], rng: np.random.Generator,
                   leaves: tuple[str, ...] | None = None, encoder: bool = False
                   ) -> list[WeightRecord]:
    """Per run, two blocks of matrices: by default LoRA's q_proj/v_proj and full's also down_proj
    (Llama names); `leaves` gives every method the same ones (drift.weight_modules), under BERT's
    module names when `encoder`."""
    out = []
    for r in done:
        if r["task"] not in DRIFT_TASKS:
            continue
        peft = r["method_type"] != "full"
        mine = leaves or (("q_proj", "v_proj") if peft else ("q_proj", "v_proj", "down_proj"))
        for block, leaf in itertools.product(range(2), mine):
            part = "mlp" if leaf == "down_proj" else "self_attn"
            module = (f"encoder.layer.{block}.attention.self.{leaf}" if encoder
                      else f"model.layers.{block}.{part}.{leaf}")
            upd = float((0.02 if peft else 0.2) * (1 + 0.1 * rng.random()))
            stats = {"update_fro": upd, "base_fro": 4.0, "relative_update": upd / 4.0,
                     "effective_rank": float(3.6 if peft else 20 + rng.random()),
                     "rank_energy": 4 if peft else 18, "numerical_rank": 4 if peft else 32,
                     "rank_cutoff": 1e-15 if peft else 2.4e-7,
                     "cutoff_rule": ("max(out, in) * eps * sigma_max" if peft else
                                     "max(max(out, in) * eps * sigma_max, eps / 2 * ||tuned||_F)"),
                     "intruder_dims": int(peft and block == 1),
                     "update_singular_values": [upd * 0.6, upd * 0.3],
                     "source": "delta" if peft else "difference",
                     "dtype": "float64" if peft else "float32", "top_k": 10, "epsilon": 0.5,
                     "energy": 0.9}
            if peft:
                stats["lora_rank"] = 4
            out.append(WeightRecord(
                task=r["task"], run_id=r["run_id"], method=r["method"],
                method_type=r["method_type"], seed=r["seed"], is_peft=peft, module=module,
                matrix=leaf, block=block, shape=[32, 32],
                update="B A (exact)" if peft else "tuned - base",
                stats=stats, undefined=None, settings={}, stamp={}, provenance=PROVENANCE))
    return out


# Forgetting: the probed layers (the default "middle" and "last" of N_LAYERS - 1 blocks), probe
# test examples, and per method the mean probe accuracy change (run - base) and LM loss change
# (nats per token): full fine-tuning forgets more than LoRA, more at the last layer.
FORGETTING_LAYERS = (2, 5)
PROBE_TEST = 40
PROBE_FORGET = {"full": 0.10, "lora": 0.03}  # share of the base's right answers lost
LM_RISE = {"full": 0.30, "lora": 0.08}


def forgetting_records(done: list[dict[str, Any]], rng: np.random.Generator
                       ) -> list[ForgettingRecord]:
    """The forgetting stage's records: every task probes the others (the stage's default), at
    two layers, and the held-out LM loss (the other tasks' evaluation sentences); run minus
    base intervals from `peftlab.forgetting_measures`'s own paired bootstraps."""
    from peftlab.forgetting_measures import LMLosses, lm_loss_difference

    common = {"settings": {"layers": list(FORGETTING_LAYERS)}, "base_source": "base:sample",
              "provenance": PROVENANCE}
    base_id = {"model_key": "base", "run_id": None, "task": None, "method": None,
               "method_type": None, "seed": None, "source": "base:sample"}
    out = []
    base_correct = {}
    for task, layer in itertools.product(TASKS, FORGETTING_LAYERS):
        correct = (rng.random(PROBE_TEST) < 0.9 - 0.02 * layer).astype(int)
        base_correct[(task, layer)] = correct
        out.append(_base_probe_record({**base_id, **common}, task, layer, "last", correct))
    texts = 30
    tokens = rng.integers(8, 20, size=texts)
    base_sums = tokens * (2.5 + 0.2 * rng.standard_normal(texts))
    sources = {t: [x for x in TASKS if x != t] for t in TASKS}
    out.append(ForgettingRecord(
        **base_id, **common, measure="lm_loss", status="done", sources=list(TASKS),
        n_texts=texts * len(TASKS), n_tokens=int(tokens.sum()) * len(TASKS), max_length=48,
        text_hash="e" * 64, head="the base's input embeddings (tied LM head)",
        loss=float(base_sums.sum() / tokens.sum()), time_s=0.5,
        per_source={t: {"n_texts": texts, "n_tokens": int(tokens.sum()),
                        "loss": float(base_sums.sum() / tokens.sum()),
                        "sums": base_sums.tolist(), "tokens": tokens.tolist()}
                    for t in TASKS}))
    for r in done:
        run_id = {"model_key": r["run_id"], "run_id": r["run_id"], "task": r["task"],
                  "method": r["method"], "method_type": r["method_type"], "seed": r["seed"],
                  "source": f"run:runs/{r['run_id']}/artifact"}
        for probe_task, layer in itertools.product(TASKS, FORGETTING_LAYERS):
            if probe_task == r["task"]:
                continue
            base = base_correct[(probe_task, layer)]
            lose = PROBE_FORGET[r["method"]] * (layer / FORGETTING_LAYERS[-1])
            correct = np.where(rng.random(PROBE_TEST) < lose, 0, base)
            out.append(_probe_record({**run_id, **common}, probe_task, layer, "last",
                                     correct, base))
        n = texts * len(sources[r["task"]])
        before = LMLosses(np.tile(base_sums, len(sources[r["task"]])),
                          np.tile(tokens, len(sources[r["task"]])))
        rise = LM_RISE[r["method"]] * (1 + 0.3 * rng.standard_normal())
        after = LMLosses(before.sums + before.tokens * (rise + 0.05 * rng.standard_normal(n)),
                         before.tokens)
        iv = lm_loss_difference(after, before, n_resamples=200, seed=0)
        out.append(ForgettingRecord(
            **run_id, **common, measure="lm_loss", status="done",
            sources=sources[r["task"]], n_texts=n, n_tokens=before.n_tokens, max_length=48,
            text_hash="e" * 64, head="the base's input embeddings (tied LM head)", time_s=0.5,
            loss_before=before.mean, loss_after=after.mean, difference=iv.estimate,
            ci_low=iv.ci_low, ci_high=iv.ci_high, confidence=0.95, ci_method=iv.method,
            bootstrap_samples=200, base_result="f" * 64))
    return out


def _point(mode: str, batch: int, rng: np.random.Generator, k: int = 1,
           mode_ms: dict[str, float] | None = None, calls: int = 40,
           matched: bool = False) -> dict[str, Any]:
    """One timed sweep point as `bench.worker.run_point` returns it: `calls` timed calls;
    matched: record each call's prebuilt batch index (single adapters and multi), so multi's
    calls can be matched batch by batch with the single adapter's; mixed batches are padded to
    rows of every task (more tokens per call)."""
    from peftlab.bench.timing import latency_stats, throughput

    median = ((mode_ms or MODE_MS)[mode] * (1 + 0.4 * (batch - 1))
              * (1 + 0.02 * rng.standard_normal()))
    raw = [int(x * 1e6) for x in median * rng.lognormal(0.0, 0.08, size=calls)]
    tokens = [batch * 12] * len(raw)
    padded = [batch * (30 if mode == "mixed" and batch > 1 else 16)] * len(raw)
    point: dict[str, Any] = {
        "batch_size": batch, "seq_len": "data", "latencies_ns": raw,
        "latency_ms": latency_stats(raw), "device_latencies_ns": [], "device_latency_ms": None,
        "throughput": throughput(raw, [batch] * len(raw), tokens,
                                 padded if mode_ms is not None else tokens),
        "iterations": len(raw), "stopped_by": "min_reached", "timer": "perf_counter_ns",
        "memory": {"rss_peak_bytes": 1_000_000_000 + 1_000_000 * batch,
                   "rss_start_bytes": 990_000_000, "cuda_peak_allocated_bytes": None,
                   "cuda_peak_reserved_bytes": None},
    }
    if mode == "multi":
        switched = [i % 2 for i in range(len(raw))]
        lat = np.asarray(raw) / 1e6
        flags = np.asarray(switched, dtype=bool)
        point["extras"] = dict(k=k, switches=int(flags.sum()), switch_share=float(flags.mean()),
                               p50_ms_with_switch=float(np.median(lat[flags])),
                               p50_ms_without_switch=float(np.median(lat[~flags])),
                               request_adapters=[i % k for i in range(len(raw))])
        if matched:  # the i-th call of an adapter is its i-th prebuilt batch
            point["extras"]["request_batches"] = [i // k for i in range(len(raw))]
    elif matched and mode == "unmerged":
        point["extras"] = {"request_batches": list(range(len(raw)))}
    if mode == "mixed":
        point["extras"] = dict(k=k, request_row_adapters=[
            [(i * batch + j) % k for j in range(batch)] for i in range(len(raw))])
    return point


def _unit_result(mode: str, n_artifacts: int, rng: np.random.Generator) -> dict[str, Any]:
    """A worker result (`bench.worker.run_job`) for one unit, without its points."""
    return {
        "status": "done",
        "process": {"pid": 1234, "isolation": "forkserver"},
        "environment": {"device": "cpu", "device_name": "Sample CPU", "dtype": "float32",
                        "torch_threads": 2, "variant": "eager"},
        "load": {"cold_ms": 400 + 50 * rng.random(), "warm_ms": [110.0, 100.0, 120.0],
                 "warm_ms_median": 110.0,
                 "page_cache": {"method": "fsync + posix_fadvise(POSIX_FADV_DONTNEED)",
                                "file_bytes": 440_000, "resident_bytes_before": 440_000,
                                "resident_bytes_after": 0, "errors": [], "cold": True}},
        "memory_after_load": {"rss_bytes": 950_000_000, "rss_delta_bytes": 40_000_000,
                              "model_param_bytes": 424_000},
        "gate": {"passed": True, "dtype": "float32", "tolerance": 1e-4,
                 "rule": "max|a-b| / max(max|a|, max|b|) <= tolerance",
                 "checks": [{"name": mode, "reference": "reloaded", "kind": "logits",
                             "rel_diff": 2e-7, "passed": True}], "failures": []},
        "storage": {"base_weight_bytes": 424_000, "artifact_bytes": 12_800 * n_artifacts,
                    "artifact_weight_bytes": 9_600 * n_artifacts, "artifacts": {},
                    "loaded_file_bytes": 424_000 + 9_600 * n_artifacts,
                    "served_param_bytes": 424_000},
        "flops": ({"base_linear_flops_per_token": 200_000, "adapter_flops_per_token": 1_000,
                   "adapter_share": 0.005} if mode in ("unmerged", "multi", "mixed") else
                  {"base_linear_flops_per_token": 200_000, "adapter_flops_per_token": 0,
                   "adapter_share": 0.0}),
    }


def bench_records(done: list[dict[str, Any]], rng: np.random.Generator,
                  mode_ms: dict[str, float] | None = None, batches: tuple[int, ...] = (1, 4),
                  calls: int = 40) -> list[tuple[str, dict[str, Any]]]:
    """Bench records built by the bench stage's own `unit_records`, from sample worker results;
    mode_ms, batches, calls: the quickstart shape's latencies, batch sizes and timed calls per
    point (given mode_ms, multi's calls are matched batch by batch with the single adapters')."""
    from peftlab.bench.units import Unit, unit_records

    def artifact(r: dict[str, Any]) -> dict[str, Any]:
        return {"name": r["run_id"].replace(".", "_"), "path": f"/study/runs/{r['run_id']}",
                "kind": "full" if r["method_type"] == "full" else "peft", "task": r["task"],
                "run_id": r["run_id"], "method_type": r["method_type"]}

    units = []
    for task in BENCH_TASKS:
        units.append(Unit("base", task, [], [task]))
        for r in (r for r in done if r["task"] == task):
            modes = ("full",) if r["method_type"] == "full" else ("unmerged", "merged")
            units += [Unit(m, r["run_id"], [artifact(r)], [task], r["method"], r["method_type"],
                           r["seed"]) for m in modes]
    for mode, seed in itertools.product(("multi", "mixed"), SEEDS):
        group = [r for r in done if r["method"] == "lora" and r["seed"] == seed
                 and r["task"] in BENCH_TASKS]
        units.append(Unit(mode, "+".join(r["run_id"] for r in group),
                          [artifact(r) for r in group], [r["task"] for r in group], "lora",
                          "lora", seed))
    points = [(b, "data") for b in batches]
    out = []
    for unit in units:
        result = {**_unit_result(unit.mode, len(unit.artifacts), rng),
                  "points": [_point(unit.mode, b, rng, len(unit.artifacts), mode_ms, calls,
                                    matched=mode_ms is not None) for b, _ in points]}
        out += unit_records(unit, result, points, settings={"warmup": 3}, digest="sample",
                            extra={"provenance": PROVENANCE})
    return out


def qs_forgetting_records(done: list[dict[str, Any]], rng: np.random.Generator
                          ) -> list[ForgettingRecord]:
    """The quickstart's forgetting records: every model probed on SST-2 alone (at two layers,
    mean pooling; SST-2's own runs get none, with the reason), and the held-out LM loss skipped
    for the base and every run (an encoder has no LM head)."""

    common = {"settings": {"layers": list(FORGETTING_LAYERS)}, "base_source": "base:sample",
              "provenance": PROVENANCE}
    base_id = {"model_key": "base", "run_id": None, "task": None, "method": None,
               "method_type": None, "seed": None, "source": "base:sample"}
    out = [ForgettingRecord(**base_id, **common, measure="lm_loss", status="skipped",
                            reason=QS_LM_SKIP)]
    base_correct = {}
    for layer in FORGETTING_LAYERS:
        correct = (rng.random(PROBE_TEST) < 0.8).astype(int)
        base_correct[layer] = correct
        out.append(_base_probe_record({**base_id, **common}, "sst2", layer, "mean", correct))
    for r in done:
        run_id = {"model_key": r["run_id"], "run_id": r["run_id"], "task": r["task"],
                  "method": r["method"], "method_type": r["method_type"], "seed": r["seed"],
                  "source": f"run:runs/{r['run_id']}/artifact"}
        out.append(ForgettingRecord(**run_id, **common, measure="lm_loss", status="skipped",
                                    reason=QS_LM_SKIP))
        if r["task"] == "sst2":
            out.append(ForgettingRecord(
                **run_id, **common, measure="probe", status="skipped", probe_task=None,
                reason="no off-task probe task: the run was tuned on sst2, the only probe "
                       "task"))
            continue
        for layer in FORGETTING_LAYERS:
            base = base_correct[layer]
            # tiny changes: a mean near 0, so a relative change would explode
            flip = rng.random(PROBE_TEST) < 0.03
            correct = np.where(flip, 1 - base, base)
            out.append(_probe_record({**run_id, **common}, "sst2", layer, "mean", correct,
                                     base))
    return out


# Serving under load (quickstart shape): per configuration, (offered rate, achieved throughput,
# realised arrival rate, p50 ms) of each load run until the first unsustained one; merged keeps up
# to 50 req/s, switch to 25 (achieving 16.5 against a realised 17.5: sustained), mixed at none.
QS_SERVING = {
    "merged": [(25.0, 24.0, 25.0, 38.0), (50.0, 46.0, 48.0, 44.0), (100.0, 41.0, 96.0, 900.0)],
    "switch": [(25.0, 16.5, 17.5, 70.0), (50.0, 17.0, 45.0, 1200.0)],
    "mixed": [(25.0, 9.0, 24.0, 300.0)],
}
QS_SERVING_BYTES = {"merged": 3 * 90_900_000, "switch": 95_200_000, "mixed": 95_200_000}


def serving_records(done: list[dict[str, Any]]) -> list[Any]:
    """The serving table of the quickstart shape (`records.ServingRecord`), from QS_SERVING:
    rows shaped like `bench.serving.serve_at_rate`'s, the sweep's verdicts and saturation."""
    from peftlab.bench.timing import latency_stats
    from peftlab.records import ServingRecord

    adapters = [r["run_id"] for r in done if r["method"] == "lora" and r["seed"] == SEEDS[0]]
    settings = {"max_batch_size": 8, "max_wait_ms": 5.0, "max_requests": 100,
                "max_seconds": 0.8}
    out = []
    index = 0
    for pattern in ("uniform", "skewed"):
        for config, runs in QS_SERVING.items():
            sustained = [rate for rate, thr, real, _ in runs if thr >= 0.9 * real]
            sat = max(sustained) if sustained else None
            sat_thr = next((thr for rate, thr, _, _ in runs if rate == sat), None)
            for rate, thr, real, p50 in runs:
                n = int(min(100, rate * 0.8))
                lat = latency_stats([int(p50 * 1e6 * (0.9 + 0.2 * i / n)) for i in range(n)])
                row = {"offered_rate": rate, "pattern": pattern, "k": len(adapters),
                       "realised_arrival_rate": real, "arrival_window_s": n / real,
                       "requests": {"scheduled": n, "offered": n,
                                    "done": n if thr >= 0.9 * real else n - 3,
                                    "unserved": 0 if thr >= 0.9 * real else 3, "error": 0},
                       "latency_ms": lat, "throughput_rps": thr,
                       "keeps_up": thr >= 0.9 * real,
                       "batches": {"count": n // 2, "size_mean": 2.0,
                                   "adapters_per_batch_mean": 1.5},
                       "memory": {"served_weight_bytes": QS_SERVING_BYTES[config]}}
                out.append(ServingRecord(
                    config=config, pattern=pattern, offered_rate=rate, k=len(adapters),
                    adapters=adapters, seed=SEEDS[0], run_index=index,
                    sustained=thr >= 0.9 * real, saturation_rate=sat,
                    saturation_throughput=sat_thr, row=row, settings=settings,
                    settings_hash="sample"))
                index += 1
    return out


if __name__ == "__main__":
    import sys

    from rich.console import Console

    from peftlab.context import Context
    from peftlab.stages import report as report_stage
    from peftlab.stages import stats as stats_stage
    from peftlab.store import Store

    args = [a for a in sys.argv[1:] if a != "--quickstart"]
    study = write_sample(Path(args[0] if args else "sample-study"),
                         degenerate="--quickstart" not in sys.argv,
                         quickstart="--quickstart" in sys.argv)
    store = Store(study.output_dir)
    try:
        ctx = Context(study=study, store=store, console=Console(stderr=True))
        stats_stage.run(ctx)
        report_stage.run(ctx)
    finally:
        store.close()


def _probe_record(fields: dict[str, Any], probe_task: str, layer: int, pooling: str,
                  correct: np.ndarray, base: np.ndarray) -> ForgettingRecord:
    """A done off-task probe record: `correct` (the run's probe, 0/1 per test example) against
    `base` (the base model's), with the paired bootstrap difference the forgetting stage stores."""
    from peftlab.forgetting_measures import paired_accuracy_difference

    iv = paired_accuracy_difference(correct, base, n_resamples=200, seed=0)
    return ForgettingRecord(
        **fields, measure="probe", status="done", probe_task=probe_task,
        probe_task_source="study", layer=layer, layer_name=f"block_{layer}",
        n_layers=N_LAYERS, pooling=pooling, n_train=64, n_test=PROBE_TEST,
        n_classes=2, majority_rate=0.5, excluded_overlap=0, probe_hash="d" * 64,
        accuracy=float(correct.mean()), c=0.1, cv_accuracy=0.8, cv_scores=[0.7, 0.8],
        cv_folds=5, converged=True, correct=correct.astype(int).tolist(),
        base_accuracy=float(base.mean()), base_c=0.1, base_result="f" * 64,
        difference=iv.estimate, ci_low=iv.ci_low, ci_high=iv.ci_high,
        confidence=0.95, ci_method=iv.method, bootstrap_samples=200)


def _base_probe_record(fields: dict[str, Any], probe_task: str, layer: int, pooling: str,
                       correct: np.ndarray) -> ForgettingRecord:
    """The base model's done off-task probe record (`correct`: 0/1 per test example)."""
    return ForgettingRecord(
        **fields, measure="probe", status="done", probe_task=probe_task,
        probe_task_source="study", layer=layer, layer_name=f"block_{layer}",
        n_layers=N_LAYERS, pooling=pooling, n_train=64, n_test=PROBE_TEST, n_classes=2,
        majority_rate=0.5, excluded_overlap=0, probe_hash="d" * 64,
        accuracy=float(correct.mean()), c=0.1, cv_accuracy=0.8, cv_scores=[0.7, 0.8],
        cv_folds=5, converged=True, correct=correct.tolist(),
        train_rows=list(range(64)), test_rows=list(range(PROBE_TEST)))
