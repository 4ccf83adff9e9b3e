"""What a run must beat to count as having learned: the majority-class and chance rates.

    b = baseline_metrics(task, eval_labels, n_bootstrap=1000, seed=0)
    verdict = judge(run["metrics"], run["main_metric"], b, untrained=head_metrics)
    verdict["learned"], verdict["reason"]

A model that learned nothing can still score well: on MRPC, always predicting "equivalent" gives
F1 0.82, and RTE sits at chance. So every run's main metric is set against
- the majority-class predictor (always the eval set's most frequent label), with its bootstrap
  interval over evaluation examples, and the best constant predictor per metric (always the
  same label, whichever scores best: for F1 that is always the positive label, which can beat
  the majority class when positives are the minority);
- chance: uniform random guessing over the K labels, the expected metric value (each metric's
  `Metric.chance_value`: exact for accuracy, 1/K, and for binary F1, by summing over the
  binomial counts of true and false positives; by seeded simulation for macro-F1, MCC and
  metrics without a formula; 0 for correlations of regression tasks).
Which of these a task gets is its kind's (`TaskKind.baselines`): the constant predictors need
classes. A run learned when the lower bound of its main metric's bootstrap interval is above all
of them (the point value when no interval was computed), or, for a classification task whose main
metric is not accuracy (the kind's `learned_fallback`), when accuracy's lower bound is above
accuracy's (`judge`). The base model with an untrained head is kept beside them as context (what
the pretrained features give with no training at all).

A run that starts from more than nothing (a head fitted on the frozen base, `training.head_init:
probe`) is also judged against that start (`judge_start`): its main metric minus the start's, on
the same evaluation examples, with a paired bootstrap interval over them. It improved when the
interval's lower bound is above 0, ended worse when the upper bound is below 0, else shows no
detectable change. A run can clear every trivial baseline and still be worse than where it began,
so `learned` and `improved` are separate verdicts.

Pure functions (labels in, numbers out); the `baselines` stage computes them on the study's
evaluation subset and the stats stage judges every run with `judge`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from peftlab.metrics import METRICS, compute_metrics, paired_difference

CHANCE_SIMULATIONS = 2000
RULE = ("learned = the lower bound of the main metric's bootstrap interval over evaluation "
        "examples is above the majority-class rate, the best constant prediction and chance, "
        "or, for a classification task whose main metric is not accuracy (such as F1, which "
        "always predicting the majority class can score high), accuracy's is above accuracy's")


def _label_name(task: Any, label: int) -> str:
    names = task.label_names or ()
    return str(names[label]) if 0 <= label < len(names) else str(label)


def baseline_metrics(task: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0,
                     confidence: float = 0.95, n_simulations: int = CHANCE_SIMULATIONS
                     ) -> dict[str, Any]:
    """The majority-class, best-constant and chance values of every metric of `task` on the
    evaluation labels `labels` ((n,) class ids, or float targets for regression), as its kind
    defines them (`TaskKind.baselines`: `class_baselines` or `score_baselines`).

    task: a `peftlab.tasks.TaskDef` (its `metrics`, `label_names`, `task_kind`).
    Returns a JSON-ready dict:
      n, metrics, label_counts {label name: count},
      majority: {label, label_name, share, metrics: {name: {value, ci_low, ci_high}}} (bootstrap
        interval over the n examples, `n_bootstrap` resamples, `seed`), None for regression;
      best_constant: {name: {label, label_name, value}} (the best single-label prediction per
        metric), {} for regression;
      chance: {rule, metrics: {name: {value, method}}}, method "exact" or "simulation (N draws)".
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise ValueError(f"labels must be a non-empty 1-D array, got shape {y.shape}")
    return task.task_kind.baselines(task, y, n_bootstrap=n_bootstrap, seed=seed,
                                    confidence=confidence, n_simulations=n_simulations)


def _header(task: Any, y: np.ndarray, n_bootstrap: int, seed: int, confidence: float
            ) -> dict[str, Any]:
    return {"n": int(y.size), "metrics": list(task.metrics), "confidence": confidence,
            "n_bootstrap": int(n_bootstrap), "seed": int(seed)}


def score_baselines(task: Any, y: np.ndarray, *, n_bootstrap: int, seed: int, confidence: float,
                    n_simulations: int, chance_rule: str) -> dict[str, Any]:
    """Baselines of a task whose labels are scores, not classes: no constant predictor, only
    chance (each metric's `chance_value`, left out where a metric has none)."""
    out = _header(task, y, n_bootstrap, seed, confidence)
    chance = {}
    for name in task.metrics:
        got = METRICS.get(name).chance_value(y, None, n_simulations, seed)
        if got is not None:
            chance[name] = {"value": got[0], "method": got[1]}
    out.update(label_counts={}, majority=None, best_constant={},
               chance={"rule": chance_rule, "metrics": chance})
    return out


def class_baselines(task: Any, y: np.ndarray, *, n_bootstrap: int, seed: int, confidence: float,
                    n_simulations: int, chance_rule: str) -> dict[str, Any]:
    """Baselines of a task whose labels are class ids 0..K-1 (K = len(task.label_names)): the
    majority class, the best constant label per metric, chance over the K labels."""
    out = _header(task, y, n_bootstrap, seed, confidence)
    names = list(task.metrics)
    y = y.astype(int)
    k = len(task.label_names)
    counts = np.bincount(y, minlength=k)
    majority = int(np.argmax(counts))  # ties: the lowest label id
    const = np.full(y.size, majority)
    out["label_counts"] = {_label_name(task, i): int(c) for i, c in enumerate(counts)}
    out["majority"] = {
        "label": majority, "label_name": _label_name(task, majority),
        "share": float(counts[majority] / y.size),
        "metrics": compute_metrics(names, y, const, n_bootstrap=n_bootstrap,
                                   confidence=confidence, seed=seed)}
    best = {}
    for name in names:
        metric = METRICS.get(name)
        scores = [metric(y, np.full(y.size, c)) for c in range(k)]
        c = int(np.argmax(scores) if metric.higher_is_better else np.argmin(scores))
        best[name] = {"label": c, "label_name": _label_name(task, c), "value": float(scores[c])}
    out["best_constant"] = best
    chance: dict[str, dict[str, Any]] = {}
    for name in names:
        value, method = METRICS.get(name).chance_value(y, k, n_simulations, seed)
        chance[name] = {"value": value, "method": method}
    out["chance"] = {"rule": chance_rule.format(k=k), "metrics": chance}
    return out


def _num(x: float | None) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{x:.4f}"


def judge(run_metrics: dict[str, dict[str, Any]], main_metric: str, baselines: dict[str, Any],
          untrained: dict[str, dict[str, Any]] | None = None,
          probe: dict[str, dict[str, Any]] | None = None,
          fallback: str | None = "accuracy") -> dict[str, Any]:
    """Did a run learn? Its main metric against the baselines of its evaluation set, and where
    that metric cannot tell (a classification task whose main metric is not accuracy), its
    accuracy against theirs. `fallback`: that second metric, the task kind's
    `learned_fallback` (None: the main metric decides alone); it only applies where the run and
    the chance baselines both have it.

    Accuracy is the metric on which no constant predictor beats the majority share; F1 is not:
    on MRPC always predicting "equivalent" scores F1 0.8166 on the quickstart's 200 examples,
    so a run can be distinguishable from every constant predictor on accuracy while its F1
    interval still reaches below 0.8166. `criterion` names the metric that decided; the reason
    gives both. Arguments and the other keys as in `_judge_metric`.
    """
    verdict = _judge_metric(run_metrics, main_metric, baselines, untrained, probe)
    context = verdict.pop("context")
    verdict["criterion"] = main_metric
    if not (verdict["learned"] or fallback is None or main_metric == fallback
            or fallback not in run_metrics
            or fallback not in ((baselines.get("chance") or {}).get("metrics") or {})):
        acc = _judge_metric(run_metrics, fallback, baselines)
        if acc["learned"]:
            return {**verdict, "learned": True, "criterion": fallback, "floor": acc["floor"],
                    "margin": acc["margin"],
                    "reason": f"{verdict['reason']}; but on {fallback}, where no constant "
                              f"predictor beats the majority share, it learned: {acc['reason']}"
                              f"{context}"}
        verdict["reason"] += f"; on {fallback} neither: {acc['reason']}"
    verdict["reason"] += context
    return verdict


def _judge_metric(run_metrics: dict[str, dict[str, Any]], main_metric: str,
                  baselines: dict[str, Any], untrained: dict[str, dict[str, Any]] | None = None,
                  probe: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """One metric of a run against the baselines of its evaluation set.

    run_metrics: the run's metrics {name: {value, ci_low, ci_high}} (a `runs` record's
    `metrics`); baselines: `baseline_metrics(...)` of the same evaluation examples; untrained:
    the metrics of the base model with an untrained head there, probe: with its head fitted on
    the frozen features, where the run started from that (both context only, not a criterion).
    Returns {learned, reason (one sentence with the numbers, without the context), context
    (the untrained and probe-fitted heads' scores, as a clause), main_metric, value, ci_low,
    ci_high, majority, best_constant, chance, untrained_head, probe_head, floor (the largest
    baseline), margin (lower bound minus floor; > 0 when learned), rule}.
    """
    m = run_metrics.get(main_metric) or {}
    value, lo, hi = m.get("value"), m.get("ci_low"), m.get("ci_high")
    maj = ((baselines.get("majority") or {}).get("metrics") or {}).get(main_metric, {})
    majority = maj.get("value")
    best = (baselines.get("best_constant") or {}).get(main_metric) or {}
    chance = ((baselines.get("chance") or {}).get("metrics") or {}).get(main_metric, {}).get(
        "value")
    head = ((untrained or {}).get(main_metric) or {}).get("value")
    fitted = ((probe or {}).get(main_metric) or {}).get("value")
    out = {"main_metric": main_metric, "value": value, "ci_low": lo, "ci_high": hi,
           "majority": majority, "best_constant": best.get("value"), "chance": chance,
           "untrained_head": head, "probe_head": fitted, "rule": RULE}
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return {**out, "learned": False, "floor": None, "margin": None, "context": "",
                "reason": f"{main_metric} has no finite value, so the run is no evidence"}
    candidates = []  # (value, description), the largest is the floor to clear
    if majority is not None:
        name = (baselines.get("majority") or {}).get("label_name")
        candidates.append((majority, f"the majority-class rate {_num(majority)} (always "
                                     f"'{name}')"))
    if best.get("value") is not None and (majority is None or best["value"] > majority):
        candidates.append((best["value"], f"the best constant prediction {_num(best['value'])} "
                                          f"(always '{best.get('label_name')}')"))
    if chance is not None:
        candidates.append((chance, f"chance {_num(chance)}"))
    if not candidates:
        return {**out, "learned": True, "floor": None, "margin": None, "context": "",
                "reason": f"{main_metric} {_num(value)}: no baseline defined for this task"}
    floor, floor_text = max(candidates, key=lambda c: c[0])
    has_ci = isinstance(lo, (int, float)) and math.isfinite(lo)
    bound = float(lo) if has_ci else float(value)
    learned = bound > floor
    shown = (f"{main_metric} {_num(value)} [{_num(lo)}, {_num(hi)}]" if has_ci
             else f"{main_metric} {_num(value)} (no bootstrap interval)")
    others = [text for v, text in candidates if text != floor_text]
    context = f"; the base model with an untrained head scores {_num(head)}" if (
        head is not None) else ""
    if fitted is not None:
        context += (f"; the run started from the head fitted on the frozen base, which "
                    f"scores {_num(fitted)}")
    also = f"; {', '.join(others)}" if others else ""
    what = "the lower bound of its interval" if has_ci else "its value"
    if learned:
        above = " and ".join([floor_text, *others])
        reason = (f"{shown} is above {above}: {what} clears the highest by "
                  f"{_num(bound - floor)}")
    elif abs(float(value) - floor) <= 1e-12:
        reason = (f"{shown} equals {floor_text}, indistinguishable from a model that learned "
                  f"nothing{also}")
    else:
        reason = (f"{shown} is not above {floor_text}: {what}, {_num(bound)}, does not clear "
                  f"it{also}")
    return {**out, "learned": bool(learned), "floor": float(floor),
            "margin": float(bound - floor), "reason": reason, "context": context}


START_RULE = ("improved = the lower bound of the paired bootstrap interval of the main metric's "
              "difference, run minus its start, over the same evaluation examples, is above 0; "
              "worse = the upper bound is below 0; else no detectable change")


def no_start(reason: str) -> dict[str, Any]:
    """The start fields of a verdict for a run that cannot be judged against a start (none
    that is non-trivial, or its predictions are missing): `improved` None with the reason."""
    return {"improved": None, "change": None, "start": None, "start_value": None,
            "improvement": None, "improvement_reason": reason}


def judge_start(main_metric: str, labels: Any, run_pred: Any, start_pred: Any, *,
                start: str, n_bootstrap: int = 1000, confidence: float = 0.95,
                seed: int = 0) -> dict[str, Any]:
    """Did fine-tuning improve on the model it started from? The run's and its start's
    predictions on the same evaluation examples, compared on the main metric by a paired
    bootstrap over the examples (`metrics.paired_difference`, run minus start).

    labels, run_pred, start_pred: (n,) label ids (or scores), in the same example order.
    start: what the start was, for the reason (e.g. "the probe-fitted head").
    Returns {improved (bool; None without an interval), change ("improved", "no detectable
    change" or "worse", on the side the metric is better on: a lower-is-better metric improves
    when the difference's interval is below 0), start, start_value (the start's metric),
    improvement {estimate, ci_low, ci_high} (run minus start, metric units),
    improvement_reason (one sentence with the numbers), start_rule}.
    """
    metric = METRICS.get(main_metric)
    start_value = float(metric(np.asarray(labels), np.asarray(start_pred)))
    diff = paired_difference(main_metric, labels, run_pred, start_pred,
                             n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
    est, lo, hi = diff["estimate"], diff["ci_low"], diff["ci_high"]
    out = {"start": start, "start_value": start_value, "improvement": diff,
           "start_rule": START_RULE}
    shown = (f"{main_metric} {_num(start_value + est)} against {_num(start_value)} for "
             f"{start}: difference {est:+.4f}")
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return {**out, "improved": None, "change": None,
                "improvement_reason": f"{shown}, with no interval to judge it by "
                                      "(training.bootstrap_samples is 0, or it is undefined)"}
    sign = 1.0 if metric.higher_is_better else -1.0
    better, worse = (lo, hi) if sign > 0 else (-hi, -lo)
    position = "above 0" if lo > 0 else "below 0" if hi < 0 else "includes 0"
    if better > 0:
        change, verdict = "improved", "the run improved on its start"
    elif worse < 0:
        change, verdict = "worse", "the run ended below its start"
    else:
        change, verdict = "no detectable change", "no detectable change from its start"
    return {**out, "improved": change == "improved", "change": change,
            "improvement_reason": f"{shown} [{lo:+.4f}, {hi:+.4f}] "
                                  f"({round(100 * confidence)}% paired bootstrap over the same "
                                  f"{np.asarray(labels).size} examples), {position}: {verdict}"}
