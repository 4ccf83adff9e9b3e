"""The stats stage: every comparison a study implies, tested at the level of independent runs.

    peftlab stats quickstart

The unit of analysis is the independent run (one seed of one task x method); a benchmark enters
as the per-run summary (the median latency of each trained model), never as its requests. Every
comparison goes through `peftlab.stats.compare` (paired t-test, or the exact Wilcoxon test when t
is undefined by zero spread; d_z with interval; mean and relative difference with intervals; TOST
when a margin is declared; the minimum detectable effect) and then through `apply_correction`
over its family, so the report can phrase each finding from its outcome: different, negligible
(significant but inside the margin), equivalent, inconclusive, insufficient runs (fewer than
`stats.min_runs` complete pairs: no test) or void (the runs are not evidence: see below).

Runs that learned nothing. Every done run's main metric is judged against its task's `baselines`
record (`peftlab.baseline_scores.judge`: the lower bound of its bootstrap interval must clear the
majority-class rate, the best constant prediction and chance); the verdict is recomputed here from
the runs and baselines tables on every run, so studies whose finetune stage predates the guard are
judged too, and stored as one `summary/run/<run id>` record per run. A degenerate run is left out
of the drift and deployment comparisons (its seed is listed as "degenerate run (reason)"); a
comparison that loses pairs to degenerate runs and is left with fewer than `stats.min_runs` (or
with none) is "void", not "insufficient runs". The main-metric comparison keeps every run (a
method that failed to learn is worse), and is void only when every run of the task is degenerate.
A task with runs and no baselines record gets one computed here (`baseline_records.compute`); a
run that still cannot be judged is "not judged" and left out like a degenerate run, never counted
as learned. A run that started from the probe-fitted head (training.head_init: probe) is also
judged against that start (`baseline_scores.judge_start`: improved / no detectable change /
worse, by the paired bootstrap interval of its main metric minus the start's over the same
evaluation examples). Each run's verdicts also go to the `verdicts` table (key: the run id), the
one `peftlab results DIR --table verdicts` shows.

Primary endpoints and families. `stats.primary` declares one primary endpoint per research
question; those comparisons form ONE family, "primary", corrected together across the whole
study. Every other comparison is exploratory, corrected within its area's family:

    primary                 accuracy: each task's main metric, each PEFT method vs each full
                            fine-tuning method (TOST within +/- stats.metric_margin, absolute);
                            RQ1: base-vs-run similarity (primary.drift.measure, averaged over
                            primary.drift.band), PEFT minus full: across tasks, one mixed model
                            per PEFT method (scope across_tasks; the per-task tests are then
                            exploratory) or per task (scope per_task);
                            RQ2: per task and PEFT method, the declared latency comparisons
                            (default unmerged vs merged, merged vs full) at one sweep point
                            (default batch size 1, the examples' own lengths)
    exploratory/metric      the tasks' other metrics, PEFT vs full
    exploratory/drift       per task, every tested measure x layer band x pair of methods; and
                            the across-task mixed model of every tested measure's mean band that
                            is not the primary endpoint
    exploratory/seed_noise  per task, method and tested measure (mean band): base-vs-run
                            similarity vs the same method's seed-to-seed similarity
    exploratory/latency     every other latency comparison the bench modes declare (every task,
                            batch size and sequence length)
    exploratory/serving     several adapters on one base vs the same adapters served one at a
                            time, per served task (that task's requests in the stream against its
                            single adapter on the same batches), batch size and sequence length
    exploratory/forgetting  per task, PEFT vs full on each forgetting measure (off-task probe
                            accuracy change per probe task and layer, held-out LM loss change)
    exploratory/readout     every drift and seed-noise comparison (RQ1's included) again under
                            each exploratory pooling (`represent.pooling: [last, mean]`; the
                            primary readout is the pooling the head reads), keyed
                            "readout/<pooling>/<key>" (`readout_drift_records`)

Forgetting also gives `correlation` records: across learned runs, Spearman's rho between a run's
intruder-dimension count (weights table) and its forgetting on each measure, with interval, p
(corrected over these correlations) and n, or "not measured" naming the missing side.

`peftlab.families.planned_families(study)` counts the members of each family from the spec alone
(no results), and `peftlab plan` prints it; the stats table's `settings` record holds, per family,
the planned and the tested count. Each comparison record carries `role` (primary / exploratory),
`family`, `question` (accuracy, RQ1, RQ2 or None) and `family_size` (comparisons tested in the
family, the m of the correction).

Layer bands are over transformer layers only: layer 0 (the embedding output, which LoRA on
attention cannot change by construction) is summarised on its own as band "embeddings" and is
never tested or averaged into early/middle/late/mean. The layers present in the `drift` table
from 1 on are split into three contiguous thirds (`numpy.array_split`: early, middle, late) plus
`mean` (all of them). A layer whose measure is undefined (stored as None) is left out of its
band's mean, never turned into NaN. Floors are the permutation null's 95% quantile (`null_q95`;
the null mean is kept beside it).

Besides comparisons the table holds `summary` records: per run (area "runs": the learned verdict),
per task x method (metric), per task x measure x band x method and per task x measure x method x
layer (drift: mean and t-interval over seeds, null floor, seed-to-seed control, permutation p,
the bootstrap interval over probe examples), per run and sweep point (latency); one `variance`
record per task and one `settings` record. The whole table is replaced atomically on every run.

One module per area, each with `build(inputs)`: verdicts (runs), metric, variance, drift (with
bands, seed_noise, across_tasks; once per readout pooling in readout), latency (latency and
serving), forgetting, intruder (correlations); `common` holds what they share and `build`
assembles the table (`AREAS`, `build_stats`, `run`).
"""

from peftlab.stages.stats.build import TABLE, build_stats, run

__all__ = ["TABLE", "build_stats", "run"]
