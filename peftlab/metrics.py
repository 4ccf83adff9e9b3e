"""Evaluation metrics over examples, registered by name, with bootstrap confidence intervals over
evaluation examples.

The unit here is the evaluation example: an interval from `compute_metrics` describes how much one
run's score would move on another draw of the evaluation set, NOT how much it varies between seeds
(that is `peftlab.stats`, whose unit is the run).

Point values come from scikit-learn (accuracy, F1, MCC) and SciPy (Pearson, Spearman). The bootstrap
recomputes every metric on each resample from resample counts with matrix products (one (B, n) count
matrix shared by all metrics), which gives the same numbers as calling those functions on the
resampled arrays, about 100x faster.

Every metric is a `Metric` in the `METRICS` registry: its function, the task kinds whose
predictions it scores (`peftlab.tasks.kinds`), whether higher is better, and optionally a
vectorised bootstrap and its value under chance (uniform random guessing over the labels). A
metric registered without them is bootstrapped by calling its function on each resample and its
chance value is simulated, so adding a metric is one `METRICS.register(Metric(...))`:

    METRICS.register(Metric("balanced_accuracy", balanced_accuracy, ("classification",)))

    python -c "from peftlab.metrics import compute_metrics as m; print(m(['f1'], [0, 1], [0, 1]))"
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st
from sklearn import metrics as skm

from peftlab.registry import Registry

# Conventions for undefined values, shared by the point value and every bootstrap replicate so the
# bootstrap describes the same estimator: F1 with no positive true or predicted label is 0
# (sklearn zero_division=0); MCC with a single true or predicted class is 0 (sklearn's rule);
# Pearson/Spearman of a constant array is NaN (SciPy's rule), and intervals skip those replicates.


def accuracy(y_true: Any, y_pred: Any) -> float:
    """Fraction of examples whose predicted label equals the true label."""
    return float(skm.accuracy_score(y_true, y_pred))


def f1(y_true: Any, y_pred: Any) -> float:
    """Binary F1 of the positive label 1 (labels must be binary); 0 when it is never present."""
    return float(skm.f1_score(y_true, y_pred, pos_label=1, average="binary", zero_division=0.0))


def macro_f1(y_true: Any, y_pred: Any) -> float:
    """Unweighted mean of per-class F1 over the labels present in y_true or y_pred."""
    return float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0.0))


def mcc(y_true: Any, y_pred: Any) -> float:
    """Matthews correlation coefficient (multiclass form); 0 when only one class occurs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "a single label was found": MCC is then 0
        return float(skm.matthews_corrcoef(y_true, y_pred))


def pearson(y_true: Any, y_pred: Any) -> float:
    """Pearson correlation of scores; NaN when either array is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.ConstantInputWarning)
        return float(st.pearsonr(np.asarray(y_true, float), np.asarray(y_pred, float)).statistic)


def spearman(y_true: Any, y_pred: Any) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either array is constant."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", st.ConstantInputWarning)
        return float(st.spearmanr(np.asarray(y_true, float), np.asarray(y_pred, float)).statistic)


# Bootstrap work is done in blocks of about this many (replicate, example) cells to bound memory.
_BLOCK_CELLS = 2_000_000


# --------------------------------------------------------------------------- vectorised replicates


def counts_from_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """(B, n) float matrix: how often each of the n examples occurs in each of the B resamples
    given as (B, n) integer indices."""
    indices = np.asarray(indices)
    b = indices.shape[0]
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(float)


def _ratio(num: np.ndarray, den: np.ndarray, undefined: float) -> np.ndarray:
    out = np.full(np.broadcast(num, den).shape, undefined, dtype=float)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _classification_replicates(names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                               counts: np.ndarray) -> dict[str, np.ndarray]:
    classes = np.unique(np.concatenate([y_true, y_pred]))
    true_hot = (y_true[:, None] == classes[None, :]).astype(float)  # (n, K)
    pred_hot = (y_pred[:, None] == classes[None, :]).astype(float)
    # Per replicate and class: true count, predicted count, true positives. (B, K) each.
    t_k, p_k, tp_k = counts @ true_hot, counts @ pred_hot, counts @ (true_hot * pred_hot)
    n = counts.sum(axis=1)
    out: dict[str, np.ndarray] = {}
    f1_k = _ratio(2 * tp_k, t_k + p_k, 0.0)
    if "accuracy" in names:
        out["accuracy"] = tp_k.sum(axis=1) / n
    if "f1" in names:
        positive = np.flatnonzero(classes == 1)
        out["f1"] = f1_k[:, positive[0]] if positive.size else np.zeros(counts.shape[0])
    if "macro_f1" in names:
        present = (t_k + p_k) > 0  # sklearn averages over labels seen in y_true or y_pred
        out["macro_f1"] = (f1_k * present).sum(axis=1) / present.sum(axis=1)
    if "mcc" in names:
        num = tp_k.sum(axis=1) * n - (t_k * p_k).sum(axis=1)
        den = np.sqrt((n**2 - (p_k**2).sum(axis=1)) * (n**2 - (t_k**2).sum(axis=1)))
        out["mcc"] = _ratio(num, den, 0.0)
    return out


def _weighted_corr(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Pearson correlation of x and y in each resample; x, y: (n,) or (B, n), counts: (B, n).
    NaN where either resample is constant (variance below rounding noise of the data's scale)."""
    n = counts.sum(axis=1)

    def wmean(v: np.ndarray) -> np.ndarray:
        return (counts * v).sum(axis=1) / n if v.ndim == 2 else counts @ v / n

    mx, my = wmean(x), wmean(y)
    vx, vy = wmean(x * x) - mx**2, wmean(y * y) - my**2
    cov = wmean(x * y) - mx * my
    tol_x, tol_y = 1e-12 * np.max(np.abs(x)) ** 2, 1e-12 * np.max(np.abs(y)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        r = cov / np.sqrt(vx * vy)
    r[(vx <= tol_x) | (vy <= tol_y)] = np.nan
    return np.clip(r, -1.0, 1.0)


def _resample_ranks(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, n) average rank that each example's value takes inside each resample (duplicated
    examples are ties): rank = #(values < v) + (#(values == v) + 1) / 2, with multiplicity."""
    order = np.argsort(x, kind="stable")
    _, starts, group_sorted = np.unique(x[order], return_index=True, return_inverse=True)
    group = np.empty_like(group_sorted)
    group[order] = group_sorted
    per_value = np.add.reduceat(counts[:, order], starts, axis=1)  # resample count of each value
    below = np.cumsum(per_value, axis=1) - per_value
    return (below + (per_value + 1) / 2)[:, group]


def _correlation_replicates(names: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                            counts: np.ndarray) -> dict[str, np.ndarray]:
    y_true, y_pred = y_true.astype(float), y_pred.astype(float)
    out: dict[str, np.ndarray] = {}
    if "pearson" in names:
        # Centring first keeps the moment formulas accurate for scores far from 0.
        out["pearson"] = _weighted_corr(y_true - y_true.mean(), y_pred - y_pred.mean(), counts)
    if "spearman" in names:
        half = (y_true.size + 1) / 2  # centre the ranks for the same reason
        out["spearman"] = _weighted_corr(_resample_ranks(y_true, counts) - half,
                                         _resample_ranks(y_pred, counts) - half, counts)
    return out


def _each_resample(metric: Metric, y_true: np.ndarray, y_pred: np.ndarray,
                   counts: np.ndarray) -> np.ndarray:
    """(B,) values of a metric with no vectorised form: its function on each resample, the
    examples repeated as often as `counts` says (metrics do not depend on example order)."""
    index = np.arange(y_true.size)
    out = np.empty(counts.shape[0])
    for b, row in enumerate(counts):
        take = np.repeat(index, row.astype(int))
        out[b] = metric.fn(y_true[take], y_pred[take])
    return out


# --------------------------------------------------------------------------- chance


def exact_binary_f1(labels: np.ndarray, k: int) -> float:
    """E[F1 of label 1] when every prediction is uniform over k labels, independently.

    TP ~ Binomial(P, 1/k) and FP ~ Binomial(N, 1/k) independently (P positives, N others);
    F1 = 2 TP / (P + TP + FP), 0 when that is 0/0 (sklearn's zero_division=0)."""
    pos = int(np.sum(labels == 1))
    neg = int(labels.size - pos)
    p = 1.0 / k
    tp = np.arange(pos + 1)
    fp = np.arange(neg + 1)
    ptp = st.binom.pmf(tp, pos, p)
    pfp = st.binom.pmf(fp, neg, p)
    den = pos + tp[:, None] + fp[None, :]
    f1 = np.divide(2.0 * tp[:, None], den, out=np.zeros(den.shape), where=den > 0)
    return float(ptp @ f1 @ pfp)


def simulated_chance(names: list[str], labels: np.ndarray, k: int, n_draws: int, seed: int
                     ) -> dict[str, float]:
    """Mean of each of the class metrics accuracy, f1, macro_f1 and mcc in `names` over `n_draws`
    uniform random predictions (seeded), vectorised over draws with the same conventions as
    above (sklearn's zero_division=0, MCC 0 for one class, macro-F1 over the labels present in
    y_true or y_pred). The same seed draws the same predictions whichever names are asked."""
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


def _simulation(n_draws: int, seed: int) -> str:
    return f"simulation ({n_draws} draws, seed {seed})"


def _chance_accuracy(labels: np.ndarray, k: int | None, n_draws: int, seed: int
                     ) -> tuple[float, str]:
    return 1.0 / k, "exact"


def _chance_binary_f1(labels: np.ndarray, k: int | None, n_draws: int, seed: int
                      ) -> tuple[float, str]:
    return exact_binary_f1(labels, k), "exact"


def _chance_simulated(name: str):
    def chance(labels: np.ndarray, k: int | None, n_draws: int, seed: int) -> tuple[float, str]:
        return simulated_chance([name], labels, k, n_draws, seed)[name], _simulation(n_draws, seed)

    return chance


def _chance_no_correlation(labels: np.ndarray, k: int | None, n_draws: int, seed: int
                           ) -> tuple[float, str]:
    return 0.0, "exact"  # scores independent of the targets: expected correlation 0


# --------------------------------------------------------------------------- the registry

# What a metric compares (`Metric.target`; a task kind's `target` says what its predictions are):
# "class" - class ids 0..K-1 (y_true labels, y_pred argmax), "score" - real numbers,
# "text" - generated text against `text_metrics.References` (the input and its references).
TARGETS = ("class", "score", "text")


@dataclass(frozen=True)
class Metric:
    """One evaluation metric.

    name: its key in specs, tables and the report; fn: (y_true (n,), y_pred (n,)) -> float;
    target: what it compares, "class" ids or "score"s (it scores the tasks whose kind predicts
    that, `applies_to`); higher_is_better: the direction a better model moves it;
    replicates: vectorised bootstrap, (names, y_true, y_pred, counts (B, n)) -> {name: (B,)},
    one function may serve a family of metrics at once (None: `fn` on each resample);
    chance: (labels (n,), k labels or None, n_draws, seed) -> (expected value under uniform
    random guessing over the k labels, "exact" or how it was simulated) (None: a seeded
    simulation of `fn` where the task has classes, no chance value otherwise).
    """

    name: str
    fn: Callable[[Any, Any], float]
    target: str = "class"
    higher_is_better: bool = True
    replicates: Callable[..., dict[str, np.ndarray]] | None = None
    chance: Callable[[np.ndarray, int | None, int, int], tuple[float, str]] | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"metric {self.name!r}: target must be one of {TARGETS}, "
                             f"got {self.target!r}")

    def __call__(self, y_true: Any, y_pred: Any) -> float:
        return self.fn(y_true, y_pred)

    def applies_to(self, kind: Any) -> bool:
        """Whether it scores tasks of `kind` (a `peftlab.tasks.kinds.TaskKind`)."""
        return kind.target == self.target

    def chance_value(self, labels: np.ndarray, k: int | None, n_draws: int, seed: int
                     ) -> tuple[float, str] | None:
        """(value under chance, how it was obtained), or None where it has none (no `chance`
        and no classes to guess among: k None)."""
        if self.chance is not None:
            return self.chance(labels, k, n_draws, seed)
        if k is None:
            return None
        rng = np.random.default_rng(seed)
        pred = rng.integers(0, k, size=(n_draws, labels.size))
        return float(np.mean([self.fn(labels, p) for p in pred])), _simulation(n_draws, seed)


METRICS: Registry[Metric] = Registry("metric")
for _metric in (
    Metric("accuracy", accuracy, replicates=_classification_replicates, chance=_chance_accuracy),
    Metric("f1", f1, replicates=_classification_replicates, chance=_chance_binary_f1),
    Metric("macro_f1", macro_f1, replicates=_classification_replicates,
           chance=_chance_simulated("macro_f1")),
    Metric("mcc", mcc, replicates=_classification_replicates, chance=_chance_simulated("mcc")),
    Metric("pearson", pearson, "score", replicates=_correlation_replicates,
           chance=_chance_no_correlation),
    Metric("spearman", spearman, "score", replicates=_correlation_replicates,
           chance=_chance_no_correlation),
):
    METRICS.register(_metric)


def _register_text_metrics() -> None:
    """The generation metrics (`peftlab.text_metrics`); one vectorised replicate function."""
    from peftlab import text_metrics as tm

    for name, fn, higher in (("bleu", tm.bleu, True), ("rouge_l", tm.rouge_l, True),
                             ("chrf", tm.chrf, True),
                             ("slot_error_rate", tm.slot_error_rate, False)):
        METRICS.register(Metric(name, fn, "text", higher_is_better=higher,
                                replicates=tm.text_replicates))


_register_text_metrics()


def get_metric(name: str, *, where: str | None = None) -> Metric:
    return METRICS.get(name, where=where)


def replicate_metrics(names: Sequence[str], y_true: Any, y_pred: Any,
                      counts: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric in `names` on each resample described by `counts` ((B, n) multiplicities of the
    n examples, see `counts_from_indices`); returns name -> (B,) values. Equal to each metric's
    function applied to the resampled arrays, with the module's conventions for undefined
    values. Metrics that share a vectorised `replicates` function are computed in one call."""
    _check_names(names)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    families: dict[Any, list[str]] = {}
    for name in names:
        families.setdefault(METRICS.get(name).replicates, []).append(name)
    out: dict[str, np.ndarray] = {}
    for replicates, members in families.items():
        if replicates is None:
            out |= {name: _each_resample(METRICS.get(name), y_true, y_pred, counts)
                    for name in members}
        else:
            out |= replicates(members, y_true, y_pred, counts)
    return {name: out[name] for name in names}


def _check_names(names: Sequence[str]) -> None:
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS.names())}")


def compute_metrics(
    names: Sequence[str],
    y_true: Any,
    y_pred: Any,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, dict[str, float | None]]:
    """Metrics with percentile bootstrap intervals over evaluation examples.

    y_true, y_pred: (n,) class ids ("class" metrics) or scores ("score" metrics), one entry
    per evaluation example. Each replicate resamples the n examples with replacement once and
    every metric is computed on that same resample. The same `seed` gives the same intervals.
    Returns name -> {"value", "ci_low", "ci_high"}; the interval is None when n_bootstrap is 0.

    Degenerate resamples (e.g. constant predictions, where Pearson/Spearman are undefined) give
    NaN replicates that are dropped by nan-aware percentiles (numpy.nanpercentile), so a few of
    them never turn an interval into NaN; only if every replicate is undefined is it NaN.
    """
    names = list(names)
    _check_names(names)
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or y_true.size == 0:
        raise ValueError(f"y_true and y_pred must be non-empty 1-D arrays of equal length, got "
                         f"shapes {y_true.shape} and {y_pred.shape}")
    # Point values first: they also validate the inputs (e.g. non-binary labels for "f1").
    values = {name: METRICS.get(name)(y_true, y_pred) for name in names}
    if n_bootstrap <= 0:
        return {name: {"value": values[name], "ci_low": None, "ci_high": None} for name in names}

    n = y_true.size
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    replicates: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, n_bootstrap, block):
        indices = rng.integers(0, n, size=(min(block, n_bootstrap - start), n))
        for name, reps in replicate_metrics(names, y_true, y_pred,
                                            counts_from_indices(indices, n)).items():
            replicates[name].append(reps)

    tail = 100 * (1 - confidence) / 2
    out: dict[str, dict[str, float | None]] = {}
    for name in names:
        reps = np.concatenate(replicates[name])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: interval stays NaN
            low, high = np.nanpercentile(reps, [tail, 100 - tail])
        out[name] = {"value": values[name], "ci_low": float(low), "ci_high": float(high)}
    return out


def paired_difference(name: str, y_true: Any, pred_a: Any, pred_b: Any,
                      n_bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0
                      ) -> dict[str, float | None]:
    """Metric `name` of predictions `pred_a` minus that of `pred_b`, both on the same evaluation
    examples, with a paired percentile bootstrap interval over those examples: each replicate
    resamples the n examples once and scores both predictions on that same resample, so what
    the two share (the examples both get right or wrong) cancels out of the interval.

    y_true, pred_a, pred_b: (n,) class ids or scores, one entry per example, in the same order.
    Returns {"estimate", "ci_low", "ci_high"} in the metric's units (a minus b); the interval is
    None when n_bootstrap is 0. Replicates where either side is undefined (NaN) are dropped.
    """
    _check_names([name])
    y_true, pred_a, pred_b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    if y_true.ndim != 1 or y_true.size == 0 or pred_a.shape != y_true.shape \
            or pred_b.shape != y_true.shape:
        raise ValueError(f"y_true, pred_a and pred_b must be non-empty 1-D arrays of equal "
                         f"length, got shapes {y_true.shape}, {pred_a.shape}, {pred_b.shape}")
    metric = METRICS.get(name)
    estimate = metric(y_true, pred_a) - metric(y_true, pred_b)
    if n_bootstrap <= 0:
        return {"estimate": float(estimate), "ci_low": None, "ci_high": None}
    n = y_true.size
    rng = np.random.default_rng(seed)
    block = max(1, _BLOCK_CELLS // n)
    diffs = []
    for start in range(0, n_bootstrap, block):
        counts = counts_from_indices(
            rng.integers(0, n, size=(min(block, n_bootstrap - start), n)), n)
        diffs.append(replicate_metrics([name], y_true, pred_a, counts)[name]
                     - replicate_metrics([name], y_true, pred_b, counts)[name])
    tail = 100 * (1 - confidence) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: interval stays NaN
        low, high = np.nanpercentile(np.concatenate(diffs), [tail, 100 - tail])
    return {"estimate": float(estimate), "ci_low": float(low), "ci_high": float(high)}
