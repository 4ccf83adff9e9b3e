"""The two forgetting measures: what tuning cost the base model's other abilities.

    probe = fit_probe(x_train, y_train, c_grid=[0.01, 0.1, 1], folds=5, seed=0)
    correct = probe_correct(probe, x_test, y_test)              # bool (n_test,)
    diff = paired_accuracy_difference(correct_run, correct_base, n_resamples=1000, seed=0)
    before = lm_losses(base_model, lm_head, dataset, tokenizer, batch_size=8)
    after = lm_losses(tuned_model, lm_head, dataset, tokenizer, batch_size=8)
    rise = lm_loss_difference(after, before, n_resamples=1000, seed=0)   # nats per token

Two measures, both "run minus base" on data the run was not tuned on:

- **Off-task linear probe.** A logistic-regression probe is fitted on a model's pooled
  representations of another task's training examples and scored on that task's evaluation
  examples. Each model (the base and every run) gets its own probe, fitted the same way: features
  standardised and the inverse regularisation strength C chosen by stratified k-fold
  cross-validation on the probe TRAINING examples only (scaler and classifier refitted inside
  every fold, so no statistic of a held-out fold leaks into its training), then refitted on all of
  them. The measure is run accuracy minus base accuracy on the same test examples (a fraction;
  negative = the run lost information the base had), with a paired percentile bootstrap interval
  over test examples (both models' correctness resampled with the same indices).
- **Held-out language-model loss** (decoder models). The tuned backbone's final hidden states (for
  Llama the output of the final RMSNorm, which is what an LM head reads and what transformers
  returns as `last_hidden_state` and as the last entry of `hidden_states`) go through the BASE
  model's LM head; the loss is the next-token cross-entropy in nats per token, averaged over every
  predicted token of every text (a token-weighted mean, so long texts are not down-weighted), the
  way PEFT's `method_comparison/MetaMathQA/run.py` (`calculate_mean_per_token_loss`) measures it:
  each text tokenised on its own (special tokens as the tokenizer adds them, truncated to a
  maximum length), position t predicting token t + 1, padding never read. Forgetting is the loss
  after tuning minus the loss before (the base model itself), on the same texts; the interval is
  a paired bootstrap over texts of that difference of token-weighted means.

No files and no store: the probe functions take arrays, `lm_losses` runs the models it is given
over the texts it is given (on `device`, in inference mode); the forgetting stage loads the
models, extracts the features and writes the records.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftlab.errors import DataError, PeftlabError
from peftlab.stats import Interval, bootstrap_ci

# The classifier's iteration cap. Standardised features converge in tens of iterations; the cap
# only matters for nearly separable data at large C, where the fit is flagged (`converged`).
MAX_ITER = 1000


# ----------------------------------------------------------------------------- layers


def resolve_layers(layers: list[str | int], n_layers: int) -> list[int]:
    """Hidden-state indices for `layers` ("middle", "last" or indices), duplicates dropped.

    n_layers: hidden states a model returns (embeddings + blocks, so blocks = n_layers - 1).
    "last" is the final block (index n_layers - 1), "middle" the middle block
    ((n_layers - 1) // 2, at least 1: block 15 of SmolLM2's 30, block 1 of a 2-block model).
    An index outside 0..n_layers - 1 raises PeftlabError.
    """
    if n_layers < 2:
        raise PeftlabError(f"a model with {n_layers} hidden state(s) has no block to probe")
    blocks = n_layers - 1
    out: list[int] = []
    for layer in layers:
        if layer == "last":
            index = blocks
        elif layer == "middle":
            index = max(1, blocks // 2)
        elif isinstance(layer, int) and not isinstance(layer, bool) and 0 <= layer <= blocks:
            index = layer
        else:
            raise PeftlabError(f"layer {layer!r} is not 'middle', 'last' or an index 0..{blocks} "
                               f"(0 = embeddings, {blocks} = the last of {blocks} blocks)")
        if index not in out:
            out.append(index)
    return out


# ----------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """A fitted probe: the scaler + logistic-regression pipeline and how it was chosen.

    c: the inverse regularisation strength cross-validation chose; cv_accuracy: its mean accuracy
    over the held-out folds (a fraction); cv_scores: mean held-out accuracy of every C of the grid,
    in grid order; folds: the number of folds used (capped by the rarest class); converged: the
    final refit stopped before `MAX_ITER` iterations.
    """

    pipeline: Any
    c: float
    cv_accuracy: float
    cv_scores: list[float]
    folds: int
    converged: bool


def fit_probe(x_train: np.ndarray, y_train: np.ndarray, *, c_grid: list[float], folds: int,
              seed: int) -> Probe:
    """Fit a standardised logistic-regression probe, C chosen by cross-validation on the
    training examples only.

    x_train: (n, d) features (any float dtype; fitted in float64); y_train: (n,) integer class
    ids. Folds: `StratifiedKFold(min(folds, rarest class count), shuffle=True,
    random_state=seed)`, so the same inputs and seed give the same folds and the same probe. The
    grid is searched in ascending C; of equally good values the smallest C (the strongest
    regularisation) wins (GridSearchCV keeps the first of tied ranks). Raises DataError when
    fewer than two classes, or a class with a single example, leave nothing to cross-validate.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise PeftlabError(f"probe features must be (n, d) with n labels, got {x.shape} and "
                           f"{y.shape}")
    if not c_grid or any(not c > 0 for c in c_grid):
        raise PeftlabError(f"the probe's C grid must hold positive values, got {c_grid}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2 or counts.min() < 2:
        per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
        raise DataError(f"probe training examples per class {per_class}: a probe needs two or "
                        "more classes with two or more examples each")
    k = int(min(folds, counts.min()))
    grid = sorted(float(c) for c in c_grid)
    search = GridSearchCV(
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER)),
        {"logisticregression__C": grid},
        cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed),
        scoring="accuracy", refit=True, n_jobs=None)
    # One BLAS thread: these problems are tiny (hundreds of rows), and L-BFGS's BLAS calls on 2
    # threads cost 60x more than on one (166 vs 2.7 ms per fit of 96 x 64 features, measured).
    # Applied here, after the imports above loaded SciPy's own BLAS, so that one is limited too.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # A fold's fit at a large C may stop at MAX_ITER on separable data; the final refit's
        # convergence is recorded below instead of a warning per fold.
        warnings.simplefilter("ignore", ConvergenceWarning)
        search.fit(x, y)
    final = search.best_estimator_[-1]
    return Probe(pipeline=search.best_estimator_,
                 c=float(search.best_params_["logisticregression__C"]),
                 cv_accuracy=float(search.best_score_),
                 cv_scores=[float(s) for s in search.cv_results_["mean_test_score"]],
                 folds=k, converged=bool(np.all(np.asarray(final.n_iter_) < MAX_ITER)))


def probe_correct(probe: Probe, x_test: np.ndarray, y_test: np.ndarray) -> np.ndarray:
    """Whether the probe classifies each test example right: bool (n_test,)."""
    pred = probe.pipeline.predict(np.asarray(x_test, dtype=np.float64))
    return np.asarray(pred == np.asarray(y_test), dtype=bool)


def paired_accuracy_difference(correct_run: np.ndarray, correct_base: np.ndarray, *,
                               n_resamples: int, seed: int,
                               confidence: float = 0.95) -> Interval:
    """Run accuracy minus base accuracy on the same test examples, with a paired bootstrap CI.

    correct_run, correct_base: bool/0-1 (n_test,), entry i of both about test example i. The
    estimate is a difference of fractions (-0.10 = the run's probe gets 10 points fewer right);
    the percentile interval resamples test examples, the same indices for both models, with
    `numpy.random.default_rng(seed)` (`stats.bootstrap_ci`). Identical vectors give [0, 0].
    n_resamples 0: the estimate with a NaN interval.
    """
    run = np.asarray(correct_run, dtype=np.float64)
    base = np.asarray(correct_base, dtype=np.float64)
    if run.shape != base.shape or run.ndim != 1 or run.size == 0:
        raise PeftlabError(f"paired correctness vectors must be 1-D of one length, got "
                           f"{run.shape} and {base.shape}")
    if n_resamples <= 0:
        estimate = float(run.mean() - base.mean())
        return Interval(estimate, float("nan"), float("nan"), confidence, "none")
    return bootstrap_ci((run, base), _mean_difference, n_resamples=n_resamples,
                        confidence=confidence, seed=seed, paired=True)


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def majority_rate(y_train: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of always predicting the training split's most frequent class (a fraction):
    the floor a probe must beat to show that a representation holds anything about the task."""
    classes, counts = np.unique(np.asarray(y_train), return_counts=True)
    return float(np.mean(np.asarray(y_test) == classes[np.argmax(counts)]))


def probe_floor_reason(accuracy: float, correct: list[int] | None, majority: float | None,
                       n_classes: int | None, probe_task: str | None, layer_name: str | None,
                       confidence: float = 0.95) -> str | None:
    """Why the base model's probe leaves nothing to forget, or None when it reads the task.

    A probe that does not beat always predicting the majority class (or chance) shows that the
    base's hidden states hold nothing of the task it can read at this size: a run's change
    there is not forgetting, it is the noise of a probe that knows nothing (it can only move
    up). The base reads the task when the lower bound of the Wilson score interval of its test
    accuracy (scipy's binomtest; the probe's test examples are the trials) clears both floors,
    the rule the learned check applies to a run's main metric."""
    from scipy.stats import binomtest

    floors = [f for f in (majority, 1.0 / n_classes if n_classes else None) if f is not None]
    if not correct or not floors:
        return None
    ci = binomtest(int(sum(correct)), len(correct)).proportion_ci(confidence, method="wilson")
    floor = max(floors)
    if ci.low > floor:
        return None
    return (f"the base model's {probe_task} probe at {layer_name} scores {accuracy:.4f} "
            f"[{ci.low:.4f}, {ci.high:.4f}] on {len(correct)} test examples, not above the "
            f"majority-class rate {majority:.4f}" + (f" or chance {1 / n_classes:.4f}"
                                                     if n_classes else "")
            + ": it reads nothing of the task there, so a run's change is not forgetting")


# ----------------------------------------------------------------------------- LM loss


@dataclass(frozen=True)
class LMLosses:
    """Per-text next-token cross-entropy: sums (n_texts,) in nats, tokens (n_texts,) predicted
    tokens (a text of t tokens predicts t - 1). `mean` is the token-weighted nats per token."""

    sums: np.ndarray
    tokens: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.sum())

    @property
    def mean(self) -> float:
        n = self.n_tokens
        return float(self.sums.sum() / n) if n else float("nan")


def backbone(model: Any) -> Any:
    """The transformers backbone (LlamaModel, BertModel, ...) of a model, inside a PEFT wrapper
    if any. Adapters of LoRA-family methods are injected into the backbone's own layers, so
    calling it runs the tuned backbone."""
    get_base = getattr(model, "get_base_model", None)
    inner = get_base() if callable(get_base) else model
    return inner.base_model  # transformers: getattr(self, self.base_model_prefix)


def token_losses(hidden: Any, input_ids: Any, attention_mask: Any, lm_head: Any
                 ) -> tuple[Any, Any]:
    """Next-token cross-entropy of one batch: (loss sums [batch] in nats, predicted tokens
    [batch]).

    hidden: [batch, seq, hidden] final hidden states (what the LM head reads); input_ids and
    attention_mask: [batch, seq]. Position t predicts token t + 1 where both positions are real
    (mask 1), so padding on either side is never read or predicted. Logits are computed one row
    at a time in float32 ([seq, vocab] at a time: 49,152-token vocabularies make a whole batch's
    logits hundreds of MB).
    """
    import torch
    import torch.nn.functional as F

    real = attention_mask.bool()
    pairs = real[:, :-1] & real[:, 1:]  # [batch, seq - 1]
    sums, counts = [], []
    for i in range(hidden.shape[0]):
        logits = lm_head(hidden[i, :-1].float())  # [seq - 1, vocab]
        losses = F.cross_entropy(logits, input_ids[i, 1:], reduction="none")
        sums.append(losses.masked_fill(~pairs[i], 0.0).sum())
        counts.append(pairs[i].sum())
    return torch.stack(sums), torch.stack(counts)


def lm_losses(model: Any, lm_head: Any, dataset: Any, tokenizer: Any, *, batch_size: int,
              device: Any = "cpu") -> LMLosses:
    """Per-text LM loss of `model`'s backbone read by `lm_head`, in dataset order.

    model: a transformers model or PeftModel whose backbone returns `last_hidden_state` (a
    classifier is fine: its head is not used); lm_head: a module mapping [.., hidden] to
    [.., vocab] logits (the base model's `get_output_embeddings()`), on `device`; dataset: an
    `encode.encode_frame` dataset of the texts (one text per example). Under left padding each
    row's position ids count from its first real token, as under right padding.
    """
    import inspect

    import torch

    from peftlab.encode import iter_batches

    if len(dataset) == 0:
        raise PeftlabError("no held-out text: nothing to measure the LM loss on")
    net = backbone(model)
    takes_positions = "position_ids" in inspect.signature(net.forward).parameters
    sums, tokens = [], []
    with torch.inference_mode():
        for batch in iter_batches(dataset, tokenizer, batch_size, device):
            mask = batch["attention_mask"]
            inputs = {"input_ids": batch["input_ids"], "attention_mask": mask}
            if takes_positions and bool((mask[:, 0] == 0).any()):
                inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
            hidden = net(**inputs).last_hidden_state
            s, n = token_losses(hidden, batch["input_ids"], mask, lm_head)
            sums.append(s.double().cpu().numpy())
            tokens.append(n.cpu().numpy())
    return LMLosses(np.concatenate(sums), np.concatenate(tokens).astype(np.int64))


def lm_loss_difference(after: LMLosses, before: LMLosses, *, n_resamples: int, seed: int,
                       confidence: float = 0.95) -> Interval:
    """Mean loss after minus before (nats per token; > 0 = the tuned model predicts the held-out
    text worse), with a paired percentile bootstrap interval over texts.

    after, before: the same texts in the same order (token counts must agree). Each resample
    draws texts with replacement and recomputes both token-weighted means on them.
    """
    if not np.array_equal(after.tokens, before.tokens):
        raise PeftlabError("LM losses before and after are not on the same tokens")
    if after.n_tokens == 0:
        raise PeftlabError("the held-out texts hold no predicted token (each text needs two)")
    estimate = after.mean - before.mean
    if n_resamples <= 0:
        return Interval(estimate, float("nan"), float("nan"), confidence, "none")
    tokens = after.tokens.astype(np.float64)
    iv = bootstrap_ci((after.sums, before.sums, tokens), _weighted_mean_difference,
                      n_resamples=n_resamples, confidence=confidence, seed=seed, paired=True)
    return Interval(estimate, iv.ci_low, iv.ci_high, confidence, iv.method)


def _weighted_mean_difference(a: np.ndarray, b: np.ndarray, t: np.ndarray,
                              axis: int = -1) -> np.ndarray:
    total = np.sum(t, axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):  # a resample of one-token texts only
        return (np.sum(a, axis=axis) - np.sum(b, axis=axis)) / total
