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
- chance: uniform random guessing over the K labels, the expected metric value (exact for
  accuracy, 1/K, and for binary F1, by summing over the binomial counts of true and false
  positives; by seeded simulation for macro-F1 and MCC; 0 for correlations of regression tasks).
A run learned when the lower bound of its main metric's bootstrap interval is above all of them
(the point value when no interval was computed), or, for a classification task whose main
metric is not accuracy, when accuracy's lower bound is above accuracy's (`judge`). The base
model with an untrained head is kept beside them as context (what the pretrained features give
with no training at all).

Pure functions (labels in, numbers out); the `baselines` stage computes them on the study's
evaluation subset and the stats stage judges every run with `judge`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as sst

from peftlab.metrics import METRICS, compute_metrics

CHANCE_SIMULATIONS = 2000
RULE = ("learned = the lower bound of the main metric's bootstrap interval over evaluation "
        "examples is above the majority-class rate, the best constant prediction and chance, "
        "or, for a classification task whose main metric is not accuracy (such as F1, which "
        "always predicting the majority class can score high), accuracy's is above accuracy's")


def _label_name(task: Any, label: int) -> str:
    names = task.label_names or ()
    return str(names[label]) if 0 <= label < len(names) else str(label)


def _exact_binary_f1(labels: np.ndarray, k: int) -> float:
    """E[F1 of label 1] when every prediction is uniform over k labels, independently.

    TP ~ Binomial(P, 1/k) and FP ~ Binomial(N, 1/k) independently (P positives, N others);
    F1 = 2 TP / (P + TP + FP), 0 when that is 0/0 (sklearn's zero_division=0)."""
    pos = int(np.sum(labels == 1))
    neg = int(labels.size - pos)
    p = 1.0 / k
    tp = np.arange(pos + 1)
    fp = np.arange(neg + 1)
    ptp = sst.binom.pmf(tp, pos, p)
    pfp = sst.binom.pmf(fp, neg, p)
    den = pos + tp[:, None] + fp[None, :]
    f1 = np.divide(2.0 * tp[:, None], den, out=np.zeros(den.shape), where=den > 0)
    return float(ptp @ f1 @ pfp)


def _simulated(names: list[str], labels: np.ndarray, k: int, n_draws: int, seed: int
               ) -> dict[str, float]:
    """Mean of each metric over `n_draws` uniform random predictions (seeded), vectorised over
    draws with the same conventions as peftlab.metrics (sklearn's zero_division=0, MCC 0 for
    one class, macro-F1 over the labels present in y_true or y_pred)."""
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, k, size=(n_draws, labels.size))
    classes = np.arange(max(k, int(labels.max()) + 1))
    true_hot = (labels[:, None] == classes[None, :]).astype(float)  # (n, C)
    t_k = np.broadcast_to(true_hot.sum(axis=0), (n_draws, classes.size))
    p_k = np.stack([(pred == c).sum(axis=1) for c in classes], axis=1).astype(float)
    tp_k = np.stack([((pred == c) & (labels == c)).sum(axis=1) for c in classes], axis=1
                    ).astype(float)
    out = {}
    f1_k = np.divide(2 * tp_k, t_k + p_k, out=np.zeros_like(tp_k), where=(t_k + p_k) > 0)
    n = float(labels.size)
    for name in names:
        if name == "macro_f1":
            present = (t_k + p_k) > 0
            out[name] = float(((f1_k * present).sum(axis=1) / present.sum(axis=1)).mean())
        elif name == "mcc":
            num = tp_k.sum(axis=1) * n - (t_k * p_k).sum(axis=1)
            den = np.sqrt((n**2 - (p_k**2).sum(axis=1)) * (n**2 - (t_k**2).sum(axis=1)))
            out[name] = float(np.divide(num, den, out=np.zeros_like(num), where=den > 0).mean())
        elif name == "accuracy":
            out[name] = float((tp_k.sum(axis=1) / n).mean())
        elif name == "f1":
            out[name] = float(f1_k[:, 1].mean()) if classes.size > 1 else 0.0
    return out


def baseline_metrics(task: Any, labels: Any, n_bootstrap: int = 1000, seed: int = 0,
                     confidence: float = 0.95, n_simulations: int = CHANCE_SIMULATIONS
                     ) -> dict[str, Any]:
    """The majority-class, best-constant and chance values of every metric of `task` on the
    evaluation labels `labels` ((n,) class ids, or float targets for regression).

    task: a `peftlab.tasks.TaskDef` (its `metrics`, `label_names`, `is_regression`).
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
    names = list(task.metrics)
    out: dict[str, Any] = {"n": int(y.size), "metrics": names, "confidence": confidence,
                           "n_bootstrap": int(n_bootstrap), "seed": int(seed)}
    if task.is_regression:
        out.update(label_counts={}, majority=None, best_constant={}, chance={
            "rule": "random scores independent of the targets: expected correlation 0",
            "metrics": {m: {"value": 0.0, "method": "exact"} for m in names}})
        return out
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
        scores = [METRICS[name](y, np.full(y.size, c)) for c in range(k)]
        c = int(np.argmax(scores))
        best[name] = {"label": c, "label_name": _label_name(task, c), "value": float(scores[c])}
    out["best_constant"] = best
    chance: dict[str, dict[str, Any]] = {}
    simulate = [m for m in names if m not in ("accuracy", "f1")]
    simulated = _simulated(simulate, y, k, n_simulations, seed) if simulate else {}
    for name in names:
        if name == "accuracy":
            chance[name] = {"value": 1.0 / k, "method": "exact"}
        elif name == "f1":
            chance[name] = {"value": _exact_binary_f1(y, k), "method": "exact"}
        else:
            chance[name] = {"value": simulated[name],
                            "method": f"simulation ({n_simulations} draws, seed {seed})"}
    out["chance"] = {"rule": f"uniform random guessing over the {k} labels", "metrics": chance}
    return out


def _num(x: float | None) -> str:
    return "none" if x is None or not math.isfinite(x) else f"{x:.4f}"


def judge(run_metrics: dict[str, dict[str, Any]], main_metric: str, baselines: dict[str, Any],
          untrained: dict[str, dict[str, Any]] | None = None,
          probe: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """Did a run learn? Its main metric against the baselines of its evaluation set, and where
    that metric cannot tell (a classification task whose main metric is not accuracy), its
    accuracy against theirs.

    Accuracy is the metric on which no constant predictor beats the majority share; F1 is not:
    on MRPC always predicting "equivalent" scores F1 0.8166 on the quickstart's 200 examples,
    so a run can be distinguishable from every constant predictor on accuracy while its F1
    interval still reaches below 0.8166. `criterion` names the metric that decided; the reason
    gives both. Arguments and the other keys as in `_judge_metric`.
    """
    verdict = _judge_metric(run_metrics, main_metric, baselines, untrained, probe)
    context = verdict.pop("context")
    verdict["criterion"] = main_metric
    if not (verdict["learned"] or main_metric == "accuracy" or "accuracy" not in run_metrics
            or "accuracy" not in ((baselines.get("chance") or {}).get("metrics") or {})):
        acc = _judge_metric(run_metrics, "accuracy", baselines)
        if acc["learned"]:
            return {**verdict, "learned": True, "criterion": "accuracy", "floor": acc["floor"],
                    "margin": acc["margin"],
                    "reason": f"{verdict['reason']}; but on accuracy, where no constant "
                              f"predictor beats the majority share, it learned: {acc['reason']}"
                              f"{context}"}
        verdict["reason"] += f"; on accuracy neither: {acc['reason']}"
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
