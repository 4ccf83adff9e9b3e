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
record (`peftlab.baselines.judge`: the lower bound of its bootstrap interval must clear the
majority-class rate, the best constant prediction and chance); the verdict is recomputed here from
the runs and baselines tables on every run, so studies whose finetune stage predates the guard are
judged too, and stored as one `summary/run/<run id>` record per run. A degenerate run is left out
of the drift and deployment comparisons (its seed is listed as "degenerate run (reason)"); a
comparison that loses pairs to degenerate runs and is left with fewer than `stats.min_runs` (or
with none) is "void", not "insufficient runs". The main-metric comparison keeps every run (a
method that failed to learn is worse), and is void only when every run of the task is degenerate.

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

`planned_families(study)` counts the members of each family from the spec alone (no results), and
`peftlab plan` prints it; the stats table's `settings` record holds, per family, the planned and
the tested count. Each comparison record carries `role` (primary / exploratory), `family`,
`question` (accuracy, RQ1, RQ2 or None) and `family_size` (comparisons tested in the family, the m
of the correction).

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
"""

from __future__ import annotations

import functools
import itertools
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as sst

from peftlab import stats as st
from peftlab.baselines import judge
from peftlab.errors import DegenerateInputError
from peftlab.measures import MEASURES, tested_measures
from peftlab.measures import label as measure_label
from peftlab.records import BaselineRecord, ForgettingRecord, WeightRecord, read
from peftlab.results import (
    RunView,
    bench_rows,
    main_metric_value,
    run_view,
    seq_sort_key,
    served_tasks,
)

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.plan import Study
    from peftlab.spec import StatsSpec

TABLE = "stats"
BANDS = ("early", "middle", "late", "mean")  # over transformer layers (layer >= 1)
EMBEDDINGS = "embeddings"  # layer 0, summarised on its own
PRIMARY = "primary"
FAMILY = {area: f"exploratory/{area}" for area in
          ("metric", "drift", "seed_noise", "latency", "serving", "forgetting", "readout")}


def declared_comparisons() -> list[tuple[Any, Any]]:
    """(mode, Comparison) for every latency comparison a registered mode declares, in the
    modes' order (see `peftlab.bench.mode.Comparison`)."""
    from peftlab.bench.modes import get_mode, mode_names

    return [(get_mode(m), c) for m in mode_names() for c in get_mode(m).comparisons]


# ----------------------------------------------------------------------------- roles


def endpoint_texts(cfg: StatsSpec) -> dict[str, str]:
    """The primary endpoint of each research question, in words (for records and the report)."""
    p = cfg.primary
    out = {}
    if p.accuracy is not None:
        out["accuracy"] = ("each task's main metric, each PEFT method vs full fine-tuning "
                           f"(TOST within \u00b1{cfg.metric_margin} absolute)")
    if p.drift is not None:
        band = ("mean over transformer layers" if p.drift.band == "mean"
                else f"{p.drift.band} transformer layers")
        where = ("across tasks (mixed model: task x method fixed, (task, seed) random)"
                 if p.drift.scope == "across_tasks" else "per task")
        out["RQ1"] = (f"{measure_label(p.drift.measure)} to the base model, {band}, PEFT minus "
                      f"full fine-tuning, {where}")
    if p.deployment is not None:
        d = p.deployment
        pairs = ", ".join(c.replace("_vs_", " vs ") for c in d.comparisons)
        seq = "the examples' own lengths" if d.seq_len == "data" else f"length {d.seq_len}"
        out["RQ2"] = (f"median latency per run at batch size {d.batch_size}, {seq}: {pairs}, "
                      "per task and PEFT method")
    return out


def role_metric(cfg: StatsSpec, is_main: bool) -> tuple[str, str, str | None]:
    """(role, family, question) of a main-metric / other-metric comparison."""
    if is_main and cfg.primary.accuracy is not None:
        return "primary", PRIMARY, "accuracy"
    return "exploratory", FAMILY["metric"], None


def role_drift(cfg: StatsSpec, measure: str, band: str, across: bool
               ) -> tuple[str, str, str | None]:
    p = cfg.primary.drift
    if (p is not None and measure == p.measure and band == p.band
            and across == (p.scope == "across_tasks")):
        return "primary", PRIMARY, "RQ1"
    return "exploratory", FAMILY["drift"], None


def role_latency(cfg: StatsSpec, pair: str, batch: int, seq: str) -> tuple[str, str, str | None]:
    d = cfg.primary.deployment
    if (d is not None and pair in d.comparisons and batch == d.batch_size
            and seq == str(d.seq_len)):
        return "primary", PRIMARY, "RQ2"
    return "exploratory", FAMILY["latency"], None


def _roled(role: tuple[str, str, str | None]) -> dict[str, Any]:
    return {"role": role[0], "family": role[1], "question": role[2]}


# ----------------------------------------------------------------------------- planned families


def planned_families(study: Study) -> dict[str, int]:
    """How many comparisons of each family the spec implies, from the spec alone (no results):
    tasks x methods x (metrics | tested measures x bands | declared latency comparisons x batch
    sizes x sequence lengths), as the stats stage enumerates them on a complete study. The
    primary family first, then the exploratory ones in area order; families of size 0 left out.
    """
    spec = study.spec
    cfg = spec.stats
    from peftlab.data import StudyData

    data = StudyData(study, None)
    methods = {m: e["type"] for m, e in spec.methods.items()}
    refs = [m for m, t in methods.items() if t == "full"]
    peft = [m for m, t in methods.items() if t != "full"]
    tasks = [t.name for t in spec.tasks]
    counts: dict[str, int] = defaultdict(int)
    pairs_peft_full = len(peft) * len(refs)
    for task in tasks:
        metrics = list(data.task(task).metrics)
        for i, _ in enumerate(metrics):
            counts[role_metric(cfg, i == 0)[1]] += pairs_peft_full
    measured = [m for m in tested_measures() if m in spec.drift.measures]
    n_method_pairs = len(list(itertools.combinations(methods, 2)))
    for measure, band in itertools.product(measured, BANDS):
        counts[role_drift(cfg, measure, band, False)[1]] += len(tasks) * n_method_pairs
    for measure in measured:
        counts[role_drift(cfg, measure, "mean", True)[1]] += pairs_peft_full
        if len(spec.seeds) >= 2:
            counts[FAMILY["seed_noise"]] += len(tasks) * len(methods)
    # every exploratory pooling repeats each drift and seed-noise comparison (readout family)
    per_readout = len(measured) * (len(BANDS) * len(tasks) * n_method_pairs + pairs_peft_full
                                   + (len(tasks) * len(methods) if len(spec.seeds) >= 2 else 0))
    counts[FAMILY["readout"]] += (len(spec.represent.poolings) - 1) * per_readout
    b = spec.bench
    points = [(batch, str(seq)) for batch in b.batch_sizes for seq in b.seq_lengths]
    for mode, comp in declared_comparisons():
        if mode.name not in b.modes or comp.other not in b.modes:
            continue
        if comp.reference == "single":  # compared per served task
            counts[FAMILY["serving"]] += len(peft) * len(points) * len(tasks)
            continue
        methods_a = peft if mode.artifact_kind == "peft" else refs
        methods_b = 1 if comp.reference == "same" else len(refs)
        for batch, seq in points:
            family = role_latency(cfg, f"{mode.name}_vs_{comp.other}", batch, seq)[1]
            counts[family] += len(tasks) * len(methods_a) * methods_b
    counts[FAMILY["forgetting"]] += planned_forgetting(study)
    order = [PRIMARY, *FAMILY.values()]
    return {f: counts[f] for f in order if counts.get(f)}


# ----------------------------------------------------------------------------- building blocks


@dataclass
class Pending:
    """A comparison before its family is corrected: its key, context fields and result."""

    key: str
    context: dict[str, Any]
    comparison: st.Comparison


def paired(values_a: dict[int, float], values_b: dict[int, float], seeds: list[int]
           ) -> tuple[list[int], list[float], list[float]]:
    """Seeds present on both sides (in spec order) and their values: the complete pairs."""
    both = [s for s in seeds if s in values_a and s in values_b]
    return both, [values_a[s] for s in both], [values_b[s] for s in both]


def merge_missing(*sides: dict[int, str]) -> dict[int, str]:
    """Why each incomplete seed is incomplete, both sides' reasons joined."""
    out: dict[int, list[str]] = defaultdict(list)
    for side in sides:
        for seed, reason in side.items():
            out[seed].append(reason)
    return {seed: "; ".join(reasons) for seed, reasons in out.items()}


def void_reason(where: str, before: list[int], excluded: dict[int, str], after: int,
                needed: int) -> str:
    """One plain sentence: why a comparison that lost pairs to degenerate runs is void."""
    lost = [s for s in before if s in excluded]
    if len(lost) == len(before):
        return (f"every complete pair on {where} involves a degenerate run (not above the "
                "majority-class or chance rate of its task), so there is nothing to compare")
    return (f"{len(lost)} of the {len(before)} complete pairs on {where} involve a degenerate run "
            f"(seed {', '.join(str(s) for s in lost)}), leaving {after}, fewer than the "
            f"{needed} needed")


def make_pending(key: str, context: dict[str, Any], values_a: dict[int, float],
                 values_b: dict[int, float], seeds: list[int], cfg: StatsSpec, label: str,
                 missing: dict[int, str], margin: float | None = None,
                 margin_relative: bool = True, excluded: dict[int, str] | None = None,
                 void_all: str | None = None) -> Pending:
    """Compare a vs b paired by seed; seeds without a complete pair are listed, not tested.

    excluded: seed -> why its pair is left out (a degenerate run); a comparison that those
    exclusions leave with fewer than stats.min_runs pairs (or with none) is void. void_all: a
    reason that makes the comparison void whatever the counts (every run of the task is
    degenerate)."""
    excluded = excluded or {}
    before, a0, b0 = paired(values_a, values_b, seeds)
    keep = [s for s in before if s not in excluded]
    a = [values_a[s] for s in keep]
    b = [values_b[s] for s in keep]
    needed = max(cfg.min_runs, 2)
    common = {"alpha": cfg.alpha, "equivalence_margin": margin, "margin_relative": margin_relative,
              "label": label, "power": cfg.power}
    lost = len(keep) < len(before)
    if void_all is not None:
        comparison = st.void_comparison(a0, b0, void_all, **common)
    elif lost and len(keep) < needed and (len(before) >= needed or not keep):
        where = context.get("where_text") or context.get("task", "")
        comparison = st.void_comparison(a0, b0, void_reason(where, before, excluded, len(keep),
                                                            needed), **common)
    else:
        comparison = st.compare(a, b, paired=True, min_n=cfg.min_runs, **common)
    miss = {**missing, **{s: r for s, r in excluded.items() if s in before}}
    context = {k: v for k, v in context.items() if k != "where_text"}
    return Pending(key, {**context, "seeds": keep, "values_a": a, "values_b": b,
                         "missing": {str(s): r for s, r in miss.items() if s not in keep}},
                   comparison)


def _t_power(d: float, n_pairs: int, df: float, alpha: float) -> float:
    """Power of a two-sided t-test with `df` degrees of freedom whose statistic has
    noncentrality d * sqrt(n_pairs): the across-task contrast of the mixed model (balanced
    pairs), where df = n_pairs - n_tasks, not n_pairs - 1. Both tails by the survival function
    (scipy's nct.cdf is NaN at large ncp)."""
    crit = sst.t.isf(alpha / 2, df)
    ncp = d * math.sqrt(n_pairs)
    return float(sst.nct.sf(crit, df, ncp) + sst.nct.sf(crit, df, -ncp))


def mixed_power_fields(n_pairs: int, n_tasks: int, sd_diff: float | None, dz: float | None,
                       alpha: float, power: float) -> dict[str, Any]:
    """`Comparison` power fields for the across-task estimate: the smallest |d_z| detectable
    with `power` at this many pairs and df = n_pairs - n_tasks, and the seeds per task that
    would detect the observed d_z (returned as runs_needed; None when d_z is 0 or undefined).
    Written here rather than taken from `stats.minimum_detectable_effect`, whose df is n - 1."""
    df = n_pairs - n_tasks
    if df < 1:
        return {"mde_alpha": alpha, "mde_dz": None, "mde_diff": None, "runs_needed": None}
    hi = 1.0
    while _t_power(hi, n_pairs, df, alpha) < power:
        hi *= 2
    mde = float(optimize.brentq(lambda d: _t_power(d, n_pairs, df, alpha) - power, 0.0, hi,
                                xtol=1e-10))
    needed = None
    if dz is not None and math.isfinite(dz) and dz != 0:
        for seeds in range(2, 10_000):
            if _t_power(abs(dz), seeds * n_tasks, seeds * n_tasks - n_tasks, alpha) >= power:
                needed = seeds
                break
    return {"mde_alpha": float(alpha), "mde_dz": mde,
            "mde_diff": mde * sd_diff if sd_diff else None, "runs_needed": needed}


def correct(pending: list[Pending], cfg: StatsSpec) -> list[tuple[str, dict[str, Any]]]:
    """apply_correction over each family (`context["family"]`); records in the input order.
    Across-task estimates get their power fields restated at their own df."""
    corrected = st.correct_by_family([p.comparison for p in pending],
                                     [p.context["family"] for p in pending], cfg.correction)
    out = []
    for p, c in zip(pending, corrected, strict=True):
        if p.context.get("kind") == "across_tasks" and c.status == "ok":
            c = replace(c, **mixed_power_fields(c.n, p.context["n_tasks"], c.sd_diff, c.effect,
                                                c.alpha / c.family_size, c.power))
        out.append((p.key, {"kind": p.context.get("kind", "comparison"), **p.context,
                            **c.as_dict()}))
    return out


@functools.lru_cache(maxsize=256)  # the same (df, confidence) for most of a study's summaries
def _t_quantile(df: int, confidence: float) -> float:
    return float(sst.t.ppf(0.5 + confidence / 2, df))


def mean_interval(values: list[float], confidence: float) -> tuple[float | None, float | None]:
    """t-interval of the mean over runs (None with fewer than 2 values)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None, None
    half = _t_quantile(x.size - 1, confidence) * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


def _defined(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if _defined(v)]
    return float(np.mean(vals)) if vals else None


def _max_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if _defined(v)]
    return float(max(vals)) if vals else None


# ----------------------------------------------------------------------------- degenerate runs


@dataclass
class Verdicts:
    """Every planned run's learned verdict (see the module docstring)."""

    by_run: dict[tuple[str, str, int], dict[str, Any]]  # (task, method, seed) -> verdict

    def degenerate(self, task: str, method: str, seed: int) -> str | None:
        """Why the run is degenerate ("degenerate run (...)"), or None when it learned or
        could not be judged."""
        v = self.by_run.get((task, method, seed))
        if v is None or v.get("learned") is not False:
            return None
        return f"{method}: degenerate run ({v['reason']})"

    def excluded(self, task: str, method: str, seeds: list[int]) -> dict[int, str]:
        return {s: r for s in seeds if (r := self.degenerate(task, method, s)) is not None}

    def all_degenerate(self, task: str) -> bool:
        judged = [v for (t, _, _), v in self.by_run.items() if t == task]
        return bool(judged) and all(v.get("learned") is False for v in judged)


def run_verdicts(ctx: Context, view: RunView) -> tuple[Verdicts, list[tuple[str, dict]]]:
    """Judge every done run against its task's baselines record: (verdicts, summary records)."""
    baselines = {r.task: r for r in read(ctx.store, BaselineRecord)}
    by_run: dict[tuple[str, str, int], dict[str, Any]] = {}
    records = []
    for task in view.tasks:
        base = baselines.get(task)
        for method in view.methods:
            for seed in view.seeds:
                rec = view.done(task, method, seed)
                if rec is None:
                    continue
                if base is not None:
                    probed = ((rec.get("config") or {}).get("training") or {}).get(
                        "head_init") == "probe"  # the run started from the probe-fitted head
                    v = judge(rec.get("metrics") or {}, rec.get("main_metric") or "",
                              base.baselines(), (base.untrained_head or {}).get("metrics"),
                              (base.probe_head or {}).get("metrics") if probed else None)
                    source = "baselines table"
                elif (rec.get("baselines") or {}).get("learned") is not None:
                    v, source = dict(rec["baselines"]), "the run's own record"
                else:
                    v = {"learned": None, "reason": "no baselines record for the task (run "
                                                    "`peftlab run SPEC --stages baselines`)"}
                    source = "none"
                by_run[(task, method, seed)] = v
                run_id = view.run_ids[(task, method, seed)]
                records.append((f"summary/run/{run_id}", {
                    "kind": "summary", "area": "runs", "task": task, "method": method,
                    "method_type": view.methods[method], "seed": seed, "run_id": run_id,
                    "source": source, **v}))
    return Verdicts(by_run), records


# ----------------------------------------------------------------------------- main metric


def metric_records(ctx: Context, view: RunView, cfg: StatsSpec, verdicts: Verdicts
                   ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """PEFT vs full on each task's metrics (comparisons) and per-method summaries of the main
    metric. The main metric is a primary endpoint (stats.primary.accuracy), the others are
    exploratory."""
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    for task in view.tasks:
        tdef = ctx.data.task(task)
        void_all = None
        if verdicts.all_degenerate(task):
            n = sum(1 for (t, _, _) in verdicts.by_run if t == task)
            void_all = (f"every run on {task} ({n} of {n}) is degenerate: none is above the "
                        "majority-class or chance rate, so comparing their scores says nothing "
                        "about the methods")
        for i, metric in enumerate(tdef.metrics):
            values: dict[str, dict[int, float]] = {}
            missing: dict[str, dict[int, str]] = {}
            for method in view.methods:
                values[method], missing[method] = {}, {}
                for seed in view.seeds:
                    rec = view.done(task, method, seed)
                    v = _metric(rec, metric)
                    if v is None:
                        missing[method][seed] = (view.why_missing(task, method, seed)
                                                 if rec is None
                                                 else f"{method}: {metric} not finite")
                    else:
                        values[method][seed] = v
                if i == 0:
                    summaries.append(_metric_summary(view, cfg, task, method, metric, tdef,
                                                     values[method], missing[method], verdicts))
            for ref in view.references():
                for method in view.peft():
                    context = {
                        "area": "metric", "task": task, "quantity": metric, "unit": metric,
                        "main_metric": i == 0, **_roled(role_metric(cfg, i == 0)),
                        "higher_is_better": tdef.higher_is_better,
                        "a": method, "b": ref, "method_a": method, "method_b": ref,
                        "runs_a": [view.run_ids[(task, method, s)] for s in view.seeds],
                        "runs_b": [view.run_ids[(task, ref, s)] for s in view.seeds],
                        "degenerate": {str(s): r for s in view.seeds for r in [
                            verdicts.degenerate(task, method, s), verdicts.degenerate(
                                task, ref, s)] if r is not None},
                    }
                    pending.append(make_pending(
                        f"comparison/metric/{task}/{metric}/{method} vs {ref}", context,
                        values[method], values[ref], view.seeds, cfg,
                        f"{task}: {method} vs {ref} ({metric})",
                        merge_missing(missing[method], missing[ref]), margin=cfg.metric_margin,
                        margin_relative=False, void_all=void_all))
    return pending, summaries


def _metric(rec: dict[str, Any] | None, metric: str) -> float | None:
    if rec is None:
        return None
    if metric == rec.get("main_metric"):
        return main_metric_value(rec)
    v = ((rec.get("metrics") or {}).get(metric) or {}).get("value")
    return float(v) if _defined(v) else None


def _metric_summary(view: RunView, cfg: StatsSpec, task: str, method: str, metric: str,
                    tdef: Any, values: dict[int, float], missing: dict[int, str],
                    verdicts: Verdicts) -> tuple[str, dict[str, Any]]:
    seeds = [s for s in view.seeds if s in values]
    vals = [values[s] for s in seeds]
    lo, hi = mean_interval(vals, 1 - cfg.alpha)
    return (f"summary/metric/{task}/{method}", {
        "kind": "summary", "area": "metric", "task": task, "method": method,
        "method_type": view.methods[method], "metric": metric,
        "higher_is_better": tdef.higher_is_better, "seeds": seeds, "values": vals,
        "run_ids": [view.run_ids[(task, method, s)] for s in seeds],
        "n": len(vals), "mean": float(np.mean(vals)) if vals else None,
        "ci_low": lo, "ci_high": hi, "confidence": 1 - cfg.alpha,
        "interval": "t-interval of the mean over seeds",
        "learned": {str(s): (verdicts.by_run.get((task, method, s)) or {}).get("learned")
                    for s in seeds},
        "missing": {str(s): r for s, r in missing.items()},
    })


def variance_records(ctx: Context, view: RunView, cfg: StatsSpec
                     ) -> list[tuple[str, dict[str, Any]]]:
    """Share of the main metric's variance from method vs seed, per task (complete seeds only,
    so the layout is balanced and the order of the factors does not matter)."""
    out = []
    for task in view.tasks:
        metric = ctx.data.task(task).metrics[0]
        rows = []
        complete = []
        for seed in view.seeds:
            recs = {m: view.done(task, m, seed) for m in view.methods}
            vals = {m: main_metric_value(r) for m, r in recs.items() if r is not None}
            if len(vals) == len(view.methods) and all(v is not None for v in vals.values()):
                complete.append(seed)
                rows += [{"method": m, "seed": str(seed), "value": v} for m, v in vals.items()]
        record: dict[str, Any] = {
            "kind": "variance", "area": "metric", "task": task, "metric": metric,
            "factors": ["method", "seed"], "seeds": complete, "n_seeds": len(complete),
            "methods": list(view.methods), "n": len(rows),
        }
        if len(view.methods) < 2:
            record.update(status="not applicable", note="one method: nothing to attribute")
        elif len(complete) < cfg.min_runs:
            record.update(status="insufficient runs",
                          note=f"{len(complete)} seed(s) with every method done, fewer than "
                               f"stats.min_runs = {cfg.min_runs}")
        else:
            try:
                vd = st.variance_decomposition(pd.DataFrame(rows), "value", ("method", "seed"))
                record.update(status="ok", **{k: v for k, v in vd.as_dict().items()
                                              if k not in ("value", "factors", "n")})
                record["note"] = ("additive model, one run per method x seed: the residual is "
                                  "the method x seed interaction")
            except DegenerateInputError as err:
                record.update(status="undefined", note=err.reason)
        out.append((f"variance/{task}", record))
    return out


# ----------------------------------------------------------------------------- drift


def band_layers(layers: list[int]) -> dict[str, list[int]]:
    """early/middle/late thirds of the transformer layers (index >= 1; numpy.array_split) and
    mean (all of them), then "embeddings" ([0], on its own) when layer 0 is present."""
    ordered = sorted(set(layers))
    blocks = [x for x in ordered if x >= 1]
    thirds = np.array_split(np.asarray(blocks, dtype=int), 3)
    out = {name: [int(x) for x in part] for name, part in zip(BANDS[:3], thirds, strict=True)}
    out["mean"] = blocks
    if 0 in ordered:
        out[EMBEDDINGS] = [0]
    return {name: ls for name, ls in out.items() if ls}


def band_value(by_layer: dict[int, dict[str, Any]], layers: list[int], measure: str
               ) -> dict[str, Any]:
    """Mean of a measure (and of its null floor) over a band's layers, undefined ones left out.

    by_layer: drift records of one comparison keyed by layer. Returns {value, null_mean,
    null_q95, p_max (largest permutation p over the band's layers), n_layers,
    undefined_layers}; value None when no layer of the band is defined.
    """
    vals, nulls, q95s, ps, undefined = [], [], [], [], []
    for layer in layers:
        rec = by_layer.get(layer)
        v = None if rec is None else (rec.get("values") or {}).get(measure)
        if not _defined(v):
            undefined.append(layer)
            continue
        vals.append(float(v))
        null = (rec.get("null") or {}).get(measure) or {}
        if _defined(null.get("null_mean")):
            nulls.append(float(null["null_mean"]))
        if _defined(null.get("null_q95")):
            q95s.append(float(null["null_q95"]))
        if _defined(null.get("p_value")):
            ps.append(float(null["p_value"]))
    return {"value": float(np.mean(vals)) if vals else None,
            "null_mean": float(np.mean(nulls)) if nulls else None,
            "null_q95": float(np.mean(q95s)) if q95s else None,
            "p_max": max(ps) if ps else None,
            "n_layers": len(vals), "undefined_layers": undefined}


@dataclass
class BandStats:
    """One method's drift on one task, measure and layer band (see `drift_band`)."""

    values: dict[int, float]  # seed -> mean over the band's defined layers, base vs run
    missing: dict[int, str]  # seed -> why it has no value
    excluded: dict[int, str]  # seed -> degenerate run (value kept in `values`, not tested)
    null_mean: float | None  # mean over (learned) runs of the band's mean permutation null
    null_q95: float | None  # the floor: mean over runs of the band's mean 95% null quantile
    p_max: float | None  # largest permutation p over runs and layers
    controls: dict[tuple[int, int], float]  # seed pair of learned runs -> band mean
    undefined: list[int]  # layers of the band left out for some run
    all_controls: dict[tuple[int, int], float]  # every seed pair, degenerate runs included

    def learned_values(self) -> dict[int, float]:
        return {s: v for s, v in self.values.items() if s not in self.excluded}

    def summary(self, confidence: float) -> dict[str, Any]:
        ctrl = list(self.controls.values())
        lo, hi = mean_interval(ctrl, confidence)
        return {"null_mean": self.null_mean, "null_q95": self.null_q95, "p_max": self.p_max,
                "seed_to_seed": ctrl, "seed_to_seed_mean": _mean_or_none(ctrl),
                "seed_to_seed_ci_low": lo, "seed_to_seed_ci_high": hi,
                "seed_pairs": [list(p) for p in self.controls], "n_seed_pairs": len(ctrl),
                "undefined_layers": self.undefined}


def drift_band(view: RunView, task: str, comps: dict[tuple[str, str, str], dict[int, Any]],
               measure: str, layers: list[int], verdicts: Verdicts) -> dict[str, BandStats]:
    """Per method: band means of every base-vs-run and seed-to-seed comparison of a task.

    comps: (kind, run_a, run_b) -> {layer: drift record}, for the task's current runs.
    Degenerate runs keep their value (shown) but are `excluded` from tests, floors and
    controls; a seed-to-seed pair with a degenerate run is left out of the control.
    """
    owner = view.method_of_run()
    values: dict[str, dict[int, float]] = defaultdict(dict)
    missing: dict[str, dict[int, str]] = defaultdict(dict)
    floors: dict[str, list[dict[str, Any]]] = defaultdict(list)
    controls: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    all_controls: dict[str, dict[tuple[int, int], float]] = defaultdict(dict)
    undefined: dict[str, set[int]] = defaultdict(set)
    for (kind, run_a, run_b), by_layer in sorted(comps.items()):
        _, method, seed = owner[run_b]
        bv = band_value(by_layer, layers, measure)
        undefined[method].update(bv["undefined_layers"])
        bad = verdicts.degenerate(task, method, seed)
        if kind == "seed_to_seed":
            seed_a = owner[run_a][2] if run_a in owner else None
            if bv["value"] is not None and seed_a is not None:
                all_controls[method][(seed_a, seed)] = bv["value"]
                if bad is None and verdicts.degenerate(task, method, seed_a) is None:
                    controls[method][(seed_a, seed)] = bv["value"]
        elif bv["value"] is None:
            missing[method][seed] = f"{method}: {measure} undefined on every layer of the band"
        else:
            values[method][seed] = bv["value"]
            if bad is None:
                floors[method].append(bv)
    out = {}
    for method in view.methods:
        for seed in view.seeds:
            if seed not in values[method] and seed not in missing[method]:
                missing[method][seed] = (view.why_missing(task, method, seed)
                                         if view.done(task, method, seed) is None
                                         else f"{method}: no drift records")
        if values[method] or controls[method]:
            out[method] = BandStats(
                values[method], missing[method],
                verdicts.excluded(task, method, list(values[method])),
                _mean_or_none([x["null_mean"] for x in floors[method]]),
                _mean_or_none([x["null_q95"] for x in floors[method]]),
                _max_or_none([x["p_max"] for x in floors[method]]),
                controls[method], sorted(undefined[method]), all_controls[method])
    return out


def method_pairs(view: RunView, methods: list[str]) -> list[tuple[str, str]]:
    """Every pair of methods once: PEFT before full (a = PEFT, b = full), else spec order."""
    out = []
    for x, y in itertools.combinations(methods, 2):
        if view.methods[x] == "full" and view.methods[y] != "full":
            x, y = y, x
        out.append((x, y))
    return out


def _task_drift(drift: list[dict[str, Any]], view: RunView
                ) -> dict[str, dict[tuple[str, str, str], dict[int, dict[str, Any]]]]:
    owner = view.method_of_run()
    by_task: dict[str, dict[tuple[str, str, str], dict[int, dict[str, Any]]]] = defaultdict(
        lambda: defaultdict(dict))
    for r in drift:
        if r.get("run_b") in owner and r.get("kind") in ("base_vs_run", "seed_to_seed"):
            by_task[r["task"]][(r["kind"], r["run_a"], r["run_b"])][r["layer"]] = r
    return by_task


def drift_records(store_records: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                  verdicts: Verdicts
                  ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per task, measure and band: method summaries (every measure; with null floor, seed-to-
    seed control and permutation p), method-vs-method comparisons paired by seed (tested
    measures, transformer-layer bands), the seed-noise test per method (tested measures, mean
    band), per-layer summaries, and the across-task mixed model per PEFT method."""
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    conf = 1 - cfg.alpha
    by_task = _task_drift(store_records, view)
    across: dict[str, list[dict[str, Any]]] = defaultdict(list)  # measure -> frame rows
    measures_seen: list[str] = []
    for task in view.tasks:
        comps = by_task.get(task, {})
        recs = [r for by_layer in comps.values() for r in by_layer.values()]
        present = [m for m in MEASURES.names()
                   if any(m in (r.get("values") or {}) for r in recs)]
        measures_seen += [m for m in present if m not in measures_seen]
        bands = band_layers([r["layer"] for r in recs]) if recs else {}
        summaries += layer_summaries(task, comps, view, present, cfg, verdicts)
        for measure, (band, layers) in itertools.product(present, bands.items()):
            unit = measure_label(measure)
            per = drift_band(view, task, comps, measure, layers, verdicts)
            for method, bs in per.items():
                seeds = [s for s in view.seeds if s in bs.values]
                learned = bs.learned_values()
                vals = [learned[s] for s in seeds if s in learned]
                lo, hi = mean_interval(vals, conf)
                summaries.append((f"summary/drift/{task}/{measure}/{band}/{method}", {
                    "kind": "summary", "area": "drift", "task": task, "method": method,
                    "method_type": view.methods[method], "measure": measure, "band": band,
                    "layers": layers, "seeds": [s for s in seeds if s in learned],
                    "values": vals, "n": len(vals),
                    "mean": float(np.mean(vals)) if vals else None, "ci_low": lo,
                    "ci_high": hi, "confidence": conf,
                    "degenerate": {str(s): r for s, r in bs.excluded.items()},
                    "degenerate_values": {str(s): bs.values[s] for s in bs.excluded},
                    **bs.summary(conf),
                }))
                if band == "mean" and measure in tested_measures():
                    across[measure] += [{"task": task, "method": method, "seed": s,
                                         "value": v} for s, v in learned.items()]
            if measure not in tested_measures() or band == EMBEDDINGS:
                continue
            where = f"{task}, {band} transformer layers"
            for a, b in method_pairs(view, list(per)):
                sides = {f"{k}_{side}": per[m].summary(conf)[k] for side, m in (("a", a), ("b", b))
                         for k in ("null_mean", "null_q95", "p_max", "seed_to_seed",
                                   "seed_to_seed_mean", "seed_to_seed_ci_low",
                                   "seed_to_seed_ci_high")}
                excluded = merge_missing(per[a].excluded, per[b].excluded)
                context = {
                    "area": "drift", "task": task, "quantity": measure, "unit": unit,
                    "higher_is_better": None, "measure": measure, "band": band,
                    "layers": layers, "a": a, "b": b, "method_a": a, "method_b": b,
                    **_roled(role_drift(cfg, measure, band, False)), **sides,
                    "runs_a": [view.run_ids[(task, a, s)] for s in view.seeds],
                    "runs_b": [view.run_ids[(task, b, s)] for s in view.seeds],
                    "where_text": where,
                }
                pending.append(make_pending(
                    f"comparison/drift/{measure}/{band}/{task}/{a} vs {b}", context,
                    per[a].values, per[b].values, view.seeds, cfg,
                    f"{task}: {a} vs {b} ({unit} to the base, {band} transformer layers)",
                    merge_missing(per[a].missing, per[b].missing), excluded=excluded))
            if band == "mean":
                pending += seed_noise(task, measure, per, view, cfg, layers)
    for measure in [m for m in tested_measures() if m in measures_seen]:
        pending += across_tasks(measure, across[measure], view, cfg)
    return pending, summaries


def readout_drift_records(store_records: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                          verdicts: Verdicts
                          ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """`drift_records` once per readout (pooling) of the drift table, each record tagged with
    its `pooling` and `readout`. The primary readout's (the pooling the classification head
    reads) keep their keys, roles and families; every exploratory pooling's are keyed
    "readout/<pooling>/<key>" (`primary_key` names the primary counterpart) and are exploratory,
    corrected together in family exploratory/readout, never primary."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in store_records:
        groups[(r.get("readout") or "primary", r.get("pooling") or "")].append(r)
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    # primary first; a study whose primary pooling changed keeps one primary group per pooling
    # only until the drift stage reruns, so every primary group is treated alike
    for (readout, pooling), recs in sorted(groups.items(), key=lambda kv: kv[0][0] != "primary"):
        ps, ss = drift_records(recs, view, cfg, verdicts)
        tag = {"pooling": pooling or None, "readout": readout}
        if readout == "primary":
            pending += [replace(p, context={**p.context, **tag}) for p in ps]
            summaries += [(k, {**rec, **tag}) for k, rec in ss]
            continue
        explore = {"role": "exploratory", "family": FAMILY["readout"], "question": None}
        pending += [Pending(f"readout/{pooling}/{p.key}",
                            {**p.context, **tag, **explore, "primary_key": p.key},
                            p.comparison) for p in ps]
        summaries += [(f"readout/{pooling}/{k}", {**rec, **tag, "primary_key": k})
                      for k, rec in ss]
    return pending, summaries


def seed_noise(task: str, measure: str, per: dict[str, BandStats], view: RunView,
               cfg: StatsSpec, layers: list[int]) -> list[Pending]:
    """Is a method's drift larger than what another seed does? Per method: each run's
    base-vs-run similarity (mean band) against the mean seed-to-seed similarity of the pairs of
    learned runs that contain it, paired by seed. Exploratory: a seed-to-seed pair enters the
    reference of both its seeds, so the references are not independent of each other."""
    out = []
    unit = measure_label(measure)
    for method, bs in per.items():
        ref: dict[int, float] = {}
        for seed in view.seeds:
            # a degenerate seed is excluded below; its reference (from every pair) only lets
            # the comparison see that a pair existed, so losing it makes the test void
            pairs = bs.all_controls if seed in bs.excluded else bs.controls
            vals = [v for (sa, sb), v in pairs.items() if seed in (sa, sb)]
            if vals:
                ref[seed] = float(np.mean(vals))
        missing = {s: f"{method}: no seed-to-seed pair of learned runs contains it"
                   for s in view.seeds if s not in ref}
        context = {
            "area": "seed_noise", "task": task, "quantity": measure, "unit": unit,
            "higher_is_better": None, "measure": measure, "band": "mean", "layers": layers,
            "a": f"{method} base vs run", "b": f"{method} seed vs seed", "method_a": method,
            "method_b": method, "role": "exploratory", "family": FAMILY["seed_noise"],
            "question": None, "null_q95_a": bs.null_q95,
            "reference": "mean over the seed-to-seed pairs of learned runs containing the seed",
            "where_text": f"{task}, {method}",
        }
        out.append(make_pending(
            f"comparison/seed_noise/{measure}/{task}/{method}", context, bs.values, ref,
            view.seeds, cfg,
            f"{task}: {method}, base vs run against seed vs seed ({unit}, mean over transformer "
            "layers)", merge_missing(bs.missing, missing), excluded=bs.excluded))
    return out


def across_tasks(measure: str, rows: list[dict[str, Any]], view: RunView, cfg: StatsSpec
                 ) -> list[Pending]:
    """Per PEFT method and full reference: the mixed model over every task's learned runs
    (`stats.mixed_effects`: task x method fixed, (task, seed) random intercept; OLS fallback).
    The mean band of `measure`; primary when it is the declared RQ1 endpoint."""
    out = []
    frame = pd.DataFrame(rows, columns=["task", "method", "seed", "value"])
    unit = measure_label(measure)
    for ref in view.references():
        for method in view.peft():
            role = role_drift(cfg, measure, "mean", True)
            res = st.mixed_effects(frame, "value", "method", "task", "seed", method, ref,
                                   cfg.alpha)
            label = f"across tasks: {method} vs {ref} ({unit} to the base, mean over " \
                    "transformer layers)"
            tasks_with = sorted({r["task"] for r in rows if r["method"] in (method, ref)},
                                key=view.tasks.index)
            context = {
                "kind": "across_tasks", "area": "drift", "task": "across tasks",
                "tasks": list(res.per_task), "tasks_without_pairs": [
                    t for t in view.tasks if t not in res.per_task],
                "quantity": measure, "unit": unit, "higher_is_better": None,
                "measure": measure, "band": "mean", "a": method, "b": ref, "method_a": method,
                "method_b": ref, **_roled(role), "fit": res.fit, "converged": res.converged,
                "per_task": res.per_task, "n_tasks": res.n_tasks, "n_seeds": res.n_seeds,
                "n_pairs": res.n_pairs, "n_dropped": res.n_dropped,
                "seed_variance": res.seed_variance, "residual_variance": res.residual_variance,
                "fit_reason": res.reason, "fit_warnings": res.warnings, "seeds": [],
                "values_a": [], "values_b": [], "missing": {},
                "model": "value ~ task x method (fixed) + (task, seed) random intercept; "
                         "effect = mean over tasks of the per-task difference",
            }
            common = {"label": label, "paired": True, "alpha": cfg.alpha,
                      "confidence": 1 - cfg.alpha, "power": cfg.power}
            if res.fit == "none" or res.p is None:
                status = "void" if not tasks_with else "insufficient runs"
                why = ("every run with drift records is degenerate (not above the "
                       "majority-class or chance rate of its task), so no task is evidence"
                       if status == "void" else res.reason or "not estimable")
                comparison = st.Comparison(status=status, outcome=status, n=res.n_pairs,
                                           n_a=res.n_pairs, n_b=res.n_pairs,
                                           diff=res.effect, reason=why, **common)
            else:
                var = res.residual_variance
                sd = math.sqrt(2 * var) if var is not None and var > 0 else None
                dz = res.effect / sd if sd else None
                comparison = st.Comparison(
                    status="ok", outcome=st.decide_outcome(res.p, None, cfg.alpha),
                    n=res.n_pairs, n_a=res.n_pairs, n_b=res.n_pairs,
                    diff=res.effect, diff_ci_low=res.ci_low, diff_ci_high=res.ci_high,
                    test=res.fit, statistic=res.statistic, df=res.df, p=res.p,
                    decision_test=res.fit, decision_p=res.p, p_adjusted=res.p,
                    effect_name="d_z (pooled within tasks)", effect=dz, sd_diff=sd,
                    note=res.reason, **common)
            out.append(Pending(f"across_tasks/drift/{measure}/{method} vs {ref}", context,
                               comparison))
    return out


def layer_summaries(task: str, comps: dict[tuple[str, str, str], dict[int, dict[str, Any]]],
                    view: RunView, measures: list[str], cfg: StatsSpec, verdicts: Verdicts
                    ) -> list[tuple[str, dict[str, Any]]]:
    """Per measure, method and layer: base-vs-run mean and t-interval over learned runs, the
    null floor (mean over runs of the 95% quantile; the null mean beside it), the largest
    permutation p, the mean bootstrap bounds over probe examples, the seed-to-seed control."""
    owner = view.method_of_run()
    conf = 1 - cfg.alpha
    cells: dict[tuple[str, str, int], dict[str, list[Any]]] = defaultdict(
        lambda: defaultdict(list))
    for (kind, run_a, run_b), by_layer in comps.items():
        _, method, seed = owner[run_b]
        if verdicts.degenerate(task, method, seed) is not None:
            continue
        if kind == "seed_to_seed" and run_a in owner and verdicts.degenerate(
                task, method, owner[run_a][2]) is not None:
            continue
        for layer, r in by_layer.items():
            boot = r.get("bootstrap") or {}
            for m in measures:
                v = (r.get("values") or {}).get(m)
                cell = cells[(m, method, layer)]
                if kind == "seed_to_seed":
                    if _defined(v):
                        cell["control"].append(float(v))
                    continue
                cell["layer_name"].append(r.get("layer_name"))
                if not _defined(v):
                    cell["undefined"].append(seed)
                    continue
                cell["values"].append(float(v))
                cell["seeds"].append(seed)
                null = (r.get("null") or {}).get(m) or {}
                for k in ("null_mean", "null_q95", "p_value"):
                    if _defined(null.get(k)):
                        cell[k].append(float(null[k]))
                if boot.get("measure") == m and _defined(boot.get("ci_low")):
                    cell["boot_low"].append(float(boot["ci_low"]))
                    cell["boot_high"].append(float(boot["ci_high"]))
    out = []
    for (m, method, layer), cell in sorted(cells.items(), key=lambda kv: (
            MEASURES.names().index(kv[0][0]), list(view.methods).index(kv[0][1]), kv[0][2])):
        vals = cell["values"]
        lo, hi = mean_interval(vals, conf)
        clo, chi = mean_interval(cell["control"], conf)
        out.append((f"summary/layer/{task}/{m}/{method}/L{layer:03d}", {
            "kind": "summary", "area": "drift_layer", "task": task, "measure": m,
            "method": method, "layer": layer,
            "layer_name": next((n for n in cell["layer_name"] if n), None),
            "seeds": cell["seeds"], "n": len(vals),
            "mean": float(np.mean(vals)) if vals else None, "ci_low": lo, "ci_high": hi,
            "confidence": conf, "interval": "t-interval of the mean over learned runs",
            "null_mean": _mean_or_none(cell["null_mean"]),
            "null_q95": _mean_or_none(cell["null_q95"]), "p_max": _max_or_none(cell["p_value"]),
            "bootstrap_low": _mean_or_none(cell["boot_low"]),
            "bootstrap_high": _mean_or_none(cell["boot_high"]),
            "seed_to_seed_mean": _mean_or_none(cell["control"]),
            "seed_to_seed_ci_low": clo, "seed_to_seed_ci_high": chi,
            "n_seed_pairs": len(cell["control"]), "undefined_seeds": cell["undefined"],
        }))
    return out


# ----------------------------------------------------------------------------- deployment


def latency_records(rows: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                    verdicts: Verdicts
                    ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """Per-run latency summaries and the deployment comparisons (see the module docstring).
    Seeds whose trained model is degenerate are left out of the comparisons (a serving group:
    when any of its adapters is)."""
    ok = [r for r in rows if r["ok"]]
    # (base_mode, task, method, batch, seq) -> {seed: p50 ms}
    unit: dict[tuple[Any, ...], dict[int, float]] = defaultdict(dict)
    units_rows: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for r in ok:
        if r["seed"] is None:
            continue
        if r["base_mode"] != r["mode"]:
            continue  # +compile variants are shown, but compared only with their own kind
        task = served_tasks(r)
        key = (r["base_mode"], task, r["method"], r["batch_size"], str(r["seq_len"]))
        unit[key][int(r["seed"])] = float(r["p50_ms"])
        units_rows[key].append(r)
    summaries = []
    for key, by_seed in sorted(unit.items(), key=lambda kv: _point_order(kv[0])):
        mode, task, method, batch, seq = key
        seeds = [s for s in view.seeds if s in by_seed] or sorted(by_seed)
        vals = [by_seed[s] for s in seeds]
        tput = [r["throughput"].get("requests_per_s") for r in units_rows[key]]
        summaries.append((f"summary/latency/{task}/{mode}/{method}/b{batch}/{seq}", {
            "kind": "summary", "area": "latency", "task": task, "mode": mode, "method": method,
            "batch_size": batch, "seq_len": units_rows[key][0]["seq_len"], "seeds": seeds,
            "values": vals, "unit": "ms (median latency of each run)", "n": len(vals),
            "median": float(np.median(vals)), "mean": float(np.mean(vals)),
            "requests_per_s": _mean_or_none(tput),
        }))

    pending: list[Pending] = []
    eager = [r for r in rows if r["base_mode"] == r["mode"]]
    points = sorted({(r["batch_size"], str(r["seq_len"])) for r in eager},
                    key=lambda p: (p[0], seq_sort_key(p[1])))
    # Every (mode, task, method, point) the bench tried, timed or not, and why a seed was not.
    tried = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"], str(r["seq_len"]))
             for r in eager}
    fails = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"], str(r["seq_len"]),
              r["seed"]): r["failure"] or "failed" for r in eager if not r["ok"]}
    adapters = {(r["base_mode"], served_tasks(r), r["method"], r["batch_size"],
                 str(r["seq_len"])): r["extras"].get("k") or len(r["run_ids"]) for r in eager}

    def values_of(mode: str, task: str, method: str, batch: int, seq: str
                  ) -> tuple[dict[int, float], dict[int, str]]:
        got = unit.get((mode, task, method, batch, seq), {})
        miss = {}
        for s in view.seeds:
            if s not in got:
                why = fails.get((mode, task, method, batch, seq, s))
                miss[s] = f"{mode} ({method}): " + (why or "not benchmarked")
        return got, miss

    declared = declared_comparisons()
    singles = [(m, c) for m, c in declared if c.reference != "single"]
    for task in view.tasks:
        for batch, seq in points:
            for mode, comp in singles:
                mode_a, mode_b = mode.name, comp.other
                methods_a = view.peft() if mode.artifact_kind == "peft" else view.references()
                for method_a in methods_a:
                    for method_b in [method_a] if comp.reference == "same" else view.references():
                        if not {(mode_a, task, method_a, batch, seq),
                                (mode_b, task, method_b, batch, seq)} & tried:
                            continue  # the study did not benchmark this pair at all
                        va, ma = values_of(mode_a, task, method_a, batch, seq)
                        vb, mb = values_of(mode_b, task, method_b, batch, seq)
                        eq = comp.equivalence
                        a, b = f"{method_a}/{mode_a}", f"{method_b}/{mode_b}"
                        pair = f"{mode_a}_vs_{mode_b}"
                        context = {
                            "area": "latency", "pair": pair,
                            **_roled(role_latency(cfg, pair, batch, seq)),
                            "task": task, "quantity": "median latency", "unit": "ms",
                            "higher_is_better": False, "batch_size": batch, "seq_len": seq,
                            "mode_a": mode_a, "mode_b": mode_b, "method_a": method_a,
                            "method_b": method_b, "a": a, "b": b,
                            "flops_share": _flops_share(units_rows.get(
                                (mode_a, task, method_a, batch, seq), [])),
                            "claim": comp.claim,
                            "where_text": f"{task}, batch {batch}, length {seq}",
                        }
                        excluded = verdicts.excluded(task, method_a, view.seeds)
                        if method_b != method_a:
                            excluded = merge_missing(
                                excluded, verdicts.excluded(task, method_b, view.seeds))
                        pending.append(make_pending(
                            f"comparison/latency/{pair}/{task}/b{batch}/{seq}/{a} vs {b}",
                            context, va, vb, view.seeds, cfg,
                            f"{task}, batch {batch}, length {seq}: {a} vs {b} (median latency)",
                            merge_missing(ma, mb), margin=cfg.latency_margin if eq else None,
                            excluded=excluded))
    # Several adapters on one base, compared per task on that task's requests in the stream with
    # that task's single adapter on the same batches (`bench.compare`): a pooled median against
    # a mean of per-task medians differs whenever the tasks' lengths differ, switch cost or not.
    from peftlab.bench.compare import matched_latencies, median, task_latencies

    by_seed_row: dict[tuple[Any, ...], dict[int, dict[str, Any]]] = defaultdict(dict)
    for key, rs in units_rows.items():
        for r in rs:
            by_seed_row[key][int(r["seed"])] = r
    for mode_obj, comp in [(m, c) for m, c in declared if c.reference == "single"]:
        mode, single_mode = mode_obj.name, comp.other
        for key in sorted((k for k in tried if k[0] == mode), key=_point_order):
            _, served, method, batch, seq = key
            tasks = list(dict.fromkeys(served.split("+")))
            _, miss_unit = values_of(mode, served, method, batch, seq)
            k = adapters[key]
            per_seed = {s: task_latencies(r) for s, r in by_seed_row.get(key, {}).items()}
            for task in tasks:
                va: dict[int, float] = {}
                vb: dict[int, float] = {}
                miss = dict(miss_unit)
                matched = []
                for s in view.seeds:
                    mine = per_seed.get(s, {}).get(task)
                    single_row = by_seed_row.get((single_mode, task, method, batch, seq),
                                                 {}).get(s)
                    if s in miss:
                        continue
                    if mine is None or not mine.ms:
                        miss[s] = f"{mode} ({method}): no timed request for {task} recorded"
                        continue
                    if single_row is None:
                        miss[s] = f"{single_mode} ({method}): not timed on {task}"
                        continue
                    ref, ok = matched_latencies(single_row, mine.batches)
                    va[s], vb[s] = median(mine.ms), median(ref)
                    matched.append(ok)
                context = {
                    "area": "serving", "role": "exploratory", "family": FAMILY["serving"],
                    "question": None, "pair": f"{mode}_vs_single", "task": task,
                    "served": served, "tasks": tasks, "quantity": "median latency",
                    "unit": "ms", "higher_is_better": False, "batch_size": batch,
                    "seq_len": seq, "mode_a": mode, "mode_b": single_mode,
                    "method_a": method, "method_b": method,
                    "a": f"{method}/{mode}-{k} ({task} requests)",
                    "b": f"{method}/single adapter ({task})",
                    "reference": f"the {single_mode} single-adapter median latency of the same "
                                 f"seed on {task}"
                                 + (", on the same prebuilt batches (same examples and lengths)"
                                    if matched and all(matched) else
                                    ", on all its requests (the stream's batches mix tasks)"),
                    "length_matched": bool(matched) and all(matched),
                    "k": k, "claim": comp.claim,
                    "where_text": f"{task} in {served}, batch {batch}, length {seq}",
                }
                # a group holding a degenerate adapter is left out whole, as its unit is
                excluded = merge_missing(*[verdicts.excluded(t, method, view.seeds)
                                           for t in tasks if t in view.tasks])
                pending.append(make_pending(
                    f"comparison/serving/{mode}_vs_single/{served}/{task}/b{batch}/{seq}/"
                    f"{method}", context, va, vb, view.seeds, cfg,
                    f"{task} in {served}, batch {batch}, length {seq}: {method} {mode}-{k} vs "
                    f"single adapter (median latency of {task}'s requests)", miss,
                    margin=cfg.latency_margin if comp.equivalence else None, excluded=excluded))
    return pending, summaries


def _point_order(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """(mode, task, method, batch, seq) keys in a readable order: numbers as numbers."""
    mode, task, method, batch, seq = key
    return (str(task), str(mode), str(method), batch, seq_sort_key(seq))


def _flops_share(rows: list[dict[str, Any]]) -> float | None:
    shares = [r["flops"].get("adapter_share") for r in rows]
    return _mean_or_none([s for s in shares if _defined(s)])


# ----------------------------------------------------------------------------- the stage


# ----------------------------------------------------------------------------- forgetting


def _probe_task_names(study: Study) -> list[str]:
    """The probe tasks the spec implies (`forgetting.tasks`, else the study's classification
    tasks), as the forgetting stage picks them."""
    from peftlab.data import StudyData

    cfg = study.spec.forgetting
    if cfg.tasks is not None:
        return [t.name for t in cfg.tasks]
    data = StudyData(study, None)
    return [t.name for t in study.spec.tasks if not data.task(t.name).is_regression]


def _has_heldout_text(study: Study, task: str) -> bool:
    cfg = study.spec.forgetting
    return cfg.text_file is not None or any(t.name != task for t in study.spec.tasks)


def planned_forgetting(study: Study) -> int:
    """Forgetting comparisons the spec implies: per tuning task, PEFT vs full on each off-task
    probe (probe task other than the task x probed layer) and on the held-out LM loss (where
    held-out text exists). Layers count as the distinct entries of `forgetting.layers` (on a
    one-block model "middle" and "last" are one layer, which the spec alone cannot tell); the
    LM loss is planned for every model, and for one without an LM head (an encoder) the stats
    stage lists it as not tested with the forgetting stage's reason."""
    spec = study.spec
    cfg = spec.forgetting
    if not cfg.enabled:
        return 0
    types = [e["type"] for e in spec.methods.values()]
    pairs = sum(t != "full" for t in types) * sum(t == "full" for t in types)
    probes = _probe_task_names(study)
    n_layers = len(dict.fromkeys(cfg.layers))
    total = 0
    for t in spec.tasks:
        total += sum(p != t.name for p in probes) * n_layers
        total += _has_heldout_text(study, t.name)
    return total * pairs


def _forgetting_units(recs: list[ForgettingRecord]) -> list[ForgettingRecord]:
    """The base's records, one per measured unit (probe task x layer, LM loss), stage order."""
    base = [r for r in recs if not r.is_run and (r.status == "done" or r.measure == "lm_loss")]
    return sorted(base, key=lambda r: (r.measure != "probe", r.probe_task or "", r.layer or 0))


def forgetting_context(unit: ForgettingRecord) -> dict[str, Any]:
    """The fields a forgetting comparison or summary carries about its unit."""
    if unit.measure == "lm_loss":
        return {"measure": "lm_loss", "unit": "nats per token", "probe_task": None,
                "layer": None, "layer_name": None, "higher_is_better": False,
                "quantity": "held-out LM loss change (after - before, nats per token)"}
    return {"measure": "probe", "unit": "accuracy", "probe_task": unit.probe_task,
            "layer": unit.layer, "layer_name": unit.layer_name, "higher_is_better": True,
            "quantity": f"{unit.probe_task} probe accuracy change at {unit.layer_name} "
                        "(run - base)"}


def forgetting_records(records: list[ForgettingRecord], view: RunView, cfg: StatsSpec,
                       verdicts: Verdicts, lm_tasks: set[str]
                       ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """PEFT vs full on each forgetting measure, paired by seed, per tuning task (family
    exploratory/forgetting), and per task x unit x method summaries (mean over learned runs with
    its t-interval). A run's value is its record's `difference` (probe: run minus base accuracy;
    LM loss: after minus before); degenerate runs are left out as in drift. lm_tasks: the
    tasks with held-out text (`planned_forgetting`), the only ones with an LM-loss test."""
    by_run = {(r.run_id, r.unit): r for r in records if r.is_run}
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    for task in view.tasks:
        for unit in _forgetting_units(records):
            if unit.measure == "probe" and unit.probe_task == task:
                continue  # a run is never probed on its own task
            if unit.measure == "lm_loss" and task not in lm_tasks:
                continue  # no held-out text for this task's runs (a one-task study)
            context = forgetting_context(unit)
            values: dict[str, dict[int, float]] = {}
            missing: dict[str, dict[int, str]] = {}
            for method in view.methods:
                values[method], missing[method] = {}, {}
                for seed in view.seeds:
                    rid = view.run_ids[(task, method, seed)]
                    rec = by_run.get((rid, unit.unit))
                    if view.done(task, method, seed) is None:
                        missing[method][seed] = view.why_missing(task, method, seed)
                    elif unit.status != "done":
                        missing[method][seed] = f"{method}: {unit.measure} skipped ({unit.reason})"
                    elif rec is None:
                        missing[method][seed] = f"{method}: no forgetting record"
                    elif rec.status != "done" or not _defined(rec.difference):
                        missing[method][seed] = (f"{method}: {unit.measure} skipped "
                                                 f"({rec.reason or 'no difference'})")
                    else:
                        values[method][seed] = float(rec.difference)
                excluded = verdicts.excluded(task, method, list(values[method]))
                learned = [s for s in view.seeds if s in values[method] and s not in excluded]
                vals = [values[method][s] for s in learned]
                lo, hi = mean_interval(vals, 1 - cfg.alpha)
                name = "lm_loss" if unit.measure == "lm_loss" else (
                    f"probe/{unit.probe_task}/L{unit.layer:03d}")
                summaries.append((f"summary/forgetting/{task}/{name}/{method}", {
                    "kind": "summary", "area": "forgetting", "task": task, "method": method,
                    "method_type": view.methods[method], **context, "seeds": learned,
                    "values": vals, "run_ids": [view.run_ids[(task, method, s)] for s in learned],
                    "n": len(vals), "mean": _mean_or_none(vals), "ci_low": lo, "ci_high": hi,
                    "confidence": 1 - cfg.alpha, "interval": "t-interval of the mean over seeds",
                    "excluded": {str(s): r for s, r in excluded.items()},
                    "missing": {str(s): r for s, r in missing[method].items()}}))
            for ref in view.references():
                for method in view.peft():
                    excluded = {**verdicts.excluded(task, method, view.seeds),
                                **verdicts.excluded(task, ref, view.seeds)}
                    ctx_ = {
                        "area": "forgetting", "task": task, **context,
                        "role": "exploratory", "family": FAMILY["forgetting"], "question": None,
                        "a": method, "b": ref, "method_a": method, "method_b": ref,
                        "runs_a": [view.run_ids[(task, method, s)] for s in view.seeds],
                        "runs_b": [view.run_ids[(task, ref, s)] for s in view.seeds],
                        "where_text": f"{task} ({unit.unit})"}
                    pending.append(make_pending(
                        f"comparison/forgetting/{task}/{name}/{method} vs {ref}", ctx_,
                        values[method], values[ref], view.seeds, cfg,
                        f"{task}: {method} vs {ref} ({unit.unit})",
                        merge_missing(missing[method], missing[ref]), excluded=excluded))
    return pending, summaries


def intruder_counts(weights: list[WeightRecord], own: set[str]) -> dict[str, dict[str, int]]:
    """Per run: {"intruder_dims": the sum over its adapted matrices of their intruder
    dimensions, "matrices": how many matrices had them defined}; runs without a defined matrix
    are left out."""
    out: dict[str, dict[str, int]] = {}
    for w in weights:
        dims = (w.stats or {}).get("intruder_dims")
        if w.run_id not in own or w.undefined or not _defined(dims):
            continue
        c = out.setdefault(w.run_id, {"intruder_dims": 0, "matrices": 0})
        c["intruder_dims"] += int(dims)
        c["matrices"] += 1
    return out


def intruder_correlations(records: list[ForgettingRecord], weights: list[WeightRecord],
                          view: RunView, cfg: StatsSpec, verdicts: Verdicts
                          ) -> list[tuple[str, dict[str, Any]]]:
    """Across learned runs (every task and method pooled): Spearman's rho between a run's
    intruder-dimension count and its forgetting on each unit, with a Fisher-z interval, a
    permutation p, Holm/Bonferroni (stats.correction) over these correlations, and n. A
    "not measured" record names the side that is missing."""
    owner = view.method_of_run()
    own = set(owner)
    counts = intruder_counts(weights, own)
    units = [u for u in _forgetting_units(records) if u.status == "done"]
    base = {"kind": "correlation", "area": "forgetting", "x": "intruder_dims",
            "x_label": "intruder dimensions of the run (sum over its adapted matrices)",
            "y": "difference", "role": "exploratory", "correction": cfg.correction}
    lacking = [what for what, present in (
        ("weight-space records with intruder dimensions (peftlab drift)", counts),
        ("forgetting measurements (peftlab forgetting)", units)) if not present]
    if lacking:
        return [("correlation/forgetting/none", {
            **base, "status": "not measured", "unit": None, "n": 0,
            "reason": "the study directory has no " + " and no ".join(lacking)})]
    out = []
    for unit in units:
        pairs = []
        for r in records:
            if not (r.is_run and r.unit == unit.unit and r.status == "done"
                    and _defined(r.difference) and r.run_id in counts):
                continue
            task, method, seed = owner.get(r.run_id, (None, None, None))
            if task is None or verdicts.degenerate(task, method, seed) is not None:
                continue
            pairs.append((r.run_id, counts[r.run_id]["intruder_dims"], float(r.difference)))
        pairs.sort(key=lambda p: p[0])
        x = [p[1] for p in pairs]
        y = [p[2] for p in pairs]
        corr = st.rank_correlation(x, y, confidence=1 - cfg.alpha, seed=0)
        name = "lm_loss" if unit.measure == "lm_loss" else (
            f"probe/{unit.probe_task}/L{unit.layer:03d}")
        out.append((f"correlation/forgetting/{name}", {
            **base, **forgetting_context(unit), "forgetting_unit": unit.unit,
            "status": "ok" if corr.estimate is not None else "undefined",
            "run_ids": [p[0] for p in pairs], "x_values": x, "y_values": y,
            "methods": [owner[p[0]][1] for p in pairs], **corr.as_dict()}))
    tested = [i for i, (_, r) in enumerate(out) if r["p"] is not None]
    adjusted = st.adjust_pvalues([out[i][1]["p"] for i in tested], cfg.correction)
    for i, p_adj in zip(tested, adjusted, strict=True):
        out[i][1].update(p_adjusted=p_adj, family_size=len(tested))
    return out


def build_stats(ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """Every record of the `stats` table, from the current contents of the study directory."""
    cfg = ctx.study.spec.stats
    view = run_view(ctx.study, ctx.store)
    verdicts, run_summaries = run_verdicts(ctx, view)
    metric_pending, metric_summaries = metric_records(ctx, view, cfg, verdicts)
    drift_pending, drift_summaries = readout_drift_records(ctx.store.records("drift"), view, cfg,
                                                   verdicts)
    lat_pending, lat_summaries = latency_records(bench_rows(ctx.store.records("bench")), view,
                                                 cfg, verdicts)
    forgetting = read(ctx.store, ForgettingRecord)
    lm_tasks = {t for t in view.tasks if _has_heldout_text(ctx.study, t)}
    fg_pending, fg_summaries = forgetting_records(forgetting, view, cfg, verdicts, lm_tasks)
    correlations = intruder_correlations(forgetting, read(ctx.store, WeightRecord), view, cfg,
                                         verdicts)
    comparisons = correct(metric_pending + drift_pending + lat_pending + fg_pending, cfg)
    planned = planned_families(ctx.study)
    order = [PRIMARY, *FAMILY.values()]
    families: dict[str, dict[str, Any]] = {
        f: {"role": "primary" if f == PRIMARY else "exploratory", "planned": n, "tested": 0,
            "comparisons": 0, "order": order.index(f)} for f, n in planned.items()}
    for _, rec in comparisons:
        fam = families.setdefault(rec["family"], {
            "role": rec["role"], "planned": 0, "tested": 0, "comparisons": 0,
            "order": order.index(rec["family"]) if rec["family"] in order else len(order)})
        fam["comparisons"] += 1
        fam["tested"] += rec["status"] == "ok"
    learned = [v.get("learned") for v in verdicts.by_run.values()]
    settings = ("settings", {
        "kind": "settings", "alpha": cfg.alpha, "correction": cfg.correction,
        "min_runs": cfg.min_runs, "metric_margin": cfg.metric_margin,
        "metric_margin_relative": False, "latency_margin": cfg.latency_margin,
        "latency_margin_relative": True, "power": cfg.power,
        "primary": cfg.primary.model_dump(mode="json"), "endpoints": endpoint_texts(cfg),
        "families": families,
        "runs": {"judged": sum(x is not None for x in learned),
                 "learned": sum(x is True for x in learned),
                 "degenerate": sum(x is False for x in learned),
                 "not_judged": sum(x is None for x in learned)},
        "bands": "transformer layers (index >= 1) split into three contiguous thirds "
                 "(numpy.array_split) + mean of all of them; layer 0 (embeddings) on its own",
        "floor": "the permutation null's 95% quantile (null_q95), mean over runs",
        "unit": "one value per independent run (seed); latency: the median of each run",
    })
    items = [settings, *comparisons, *run_summaries, *metric_summaries,
             *variance_records(ctx, view, cfg), *drift_summaries, *lat_summaries,
             *fg_summaries, *correlations]
    # Keys sort alphabetically in the store; `order` keeps the study's order (tasks as in the
    # spec, bands early to late) for the report.
    return [(key, {**rec, "order": i}) for i, (key, rec) in enumerate(items)]


def run(ctx: Context) -> None:
    """Build every comparison the study implies and replace the `stats` table with them."""
    items = build_stats(ctx)
    ctx.store.replace_where(TABLE, "", items)
    outcomes: dict[str, int] = defaultdict(int)
    for _, rec in items:
        if rec["kind"] in ("comparison", "across_tasks"):
            outcomes[rec["outcome"]] += 1
    told = ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items())) or "no comparisons"
    runs = items[0][1]["runs"]
    ctx.console.print(f"stats: {len(items)} records ({told}); runs that learned: "
                      f"{runs['learned']} of {runs['judged']}"
                      + (f", {runs['degenerate']} degenerate" if runs["degenerate"] else ""))
