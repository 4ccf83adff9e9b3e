"""The baselines stage: what a run of each task must beat, on the evaluation subset it is
evaluated on (run right after `data`).

    peftlab run quickstart --stages baselines

Per task, one `baselines` record (`peftlab.records.BaselineRecord`, key: the task):
- the majority-class predictor's value of every metric with its bootstrap interval over the
  evaluation examples, the best constant prediction per metric, and chance (uniform random
  guessing), from `peftlab.baseline_scores.baseline_metrics` on the evaluation labels;
- the base model with an untrained head, initialised under the study's first seed, evaluated on
  the same examples the runs are evaluated on (same tokenisation, pair template and padding), so
  a reader sees what the pretrained features give with no training at all;
- where the task's runs start from a head fitted on the frozen features (training.head_init:
  probe), that probe-fitted head too, fitted on the task's training subset: the runs' starting
  point, so a reader sees what fine-tuning added to it. Its evaluation logits and the labels are
  kept in baselines/<task>/start_eval_logits.safetensors (`start_logits` in the record): every
  run of the task starts from this same head (the training rows, the frozen base and the
  deterministic fit are the same for every seed and method, and an adapter starts as the
  identity), and the stats stage scores each run against it example by example
  (`baseline_scores.judge_start`).

The stats stage judges every run against this record (`peftlab.baseline_scores.judge`): a run whose
main metric's interval does not clear the majority and chance rates is flagged as degenerate and
left out of drift and deployment verdicts. Idempotent: a task whose evaluation rows, model and
settings are unchanged is skipped. The work is `peftlab.baseline_records.compute`, which the stats
stage also calls for tasks whose runs have no record (a study run without this stage).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftlab.baseline_records import compute

if TYPE_CHECKING:
    from peftlab.context import Context


def run(ctx: Context) -> None:
    """Fill the `baselines` table: one record per task of the study."""
    compute(ctx, [t.name for t in ctx.study.spec.tasks])
