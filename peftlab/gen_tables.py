"""The generation report's tables of the forgetting and drift stages' records (held-out LM loss,
off-task probes, weight space), and the number formatting they share with
`peftlab.gen_study.report`. Kept apart from gen_study, which runs the represent and bench steps
and writes the report, so that each module stays readable."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _f(x: Any, nd: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.{nd}f}"


def _t_interval(values: list[float], alpha: float) -> tuple[float, float | None, float | None]:
    from scipy import stats as st

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, None, None
    m = float(v.mean())
    if v.size < 2:
        return m, None, None
    h = float(st.t.ppf(1 - alpha / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
    return m, m - h, m + h


def _paired_word(d: tuple, a: str, less: str, more: str) -> str:
    """'inconclusive' when the interval of d holds 0, else `a` + `less` (d < 0) or `more`."""
    if d[1] is None or d[1] <= 0 <= d[2]:
        return "inconclusive"
    return f"{a} {less if d[0] < 0 else more}"


def _forgetting_word(d: tuple, a: str, b: str, lm: list[dict[str, Any]], alpha: float) -> str:
    """What the paired difference of two methods' held-out loss changes says. 'Forgets less'
    only where the methods did forget (their loss rose): when both lowered the held-out loss
    (the tuned models predict the generic text better than the base), a lower change is not
    less forgetting but more of that gain, and the sentence says so."""
    means = {m: _t_interval([r["difference"] for r in lm if r["method"] == m], alpha)
             for m in (a, b)}
    shown = "; ".join(f"{m} {_f(e[0], 4)} [{_f(e[1], 4)}, {_f(e[2], 4)}]"
                      for m, e in means.items())
    if all(e[2] is not None and e[2] < 0 for e in means.values()):
        tail = (f"neither method forgot: both lowered the held-out loss against the base "
                f"({shown} nats/token)")
        if d[1] is None or d[1] <= 0 <= d[2]:
            return f"{tail}, by amounts the seeds do not tell apart"
        return f"{tail}; {a if d[0] < 0 else b} lowered it more"
    return _paired_word(d, a, "forgets less", "forgets more") + f" (changes: {shown})"


def forgetting_lines(recs: list[dict[str, Any]], task: str, methods: list[str],
                     seeds: list[int], alpha: float) -> tuple[list[str], str | None]:
    """The report's forgetting section for one task from `forgetting` records (written by
    `peftlab.stages.forgetting`), and the RQ1 sentence comparing the last method with the first
    on the held-out LM loss change (paired by seed); ([], None) when nothing was stored."""
    if not recs:
        return [], None
    runs = [r for r in recs if r.get("task") == task and r["status"] == "done"]
    base_lm = next((r for r in recs if r["measure"] == "lm_loss" and r["run_id"] is None
                    and r["status"] == "done"), None)
    lm = [r for r in runs if r["measure"] == "lm_loss"]
    out = ["## Forgetting (RQ1)", ""]
    answer = None
    if base_lm is not None and lm:
        conf = lm[0].get("confidence") or 0.95
        sources = ", ".join(lm[0]["sources"])
        out += [f"Held-out LM loss: mean next-token negative log-likelihood (nats per token) "
                f"of each model through its own LM head on {lm[0]['n_texts']} texts "
                f"({lm[0]['n_tokens']} predicted tokens; source: {sources}) that no run was "
                "tuned on; perplexity = exp(loss). Change = run minus base on the same texts "
                f"(positive = forgotten), {100 * conf:g}% paired bootstrap over texts per run; "
                f"method rows: mean over seeds, {100 * (1 - alpha):g}% t interval over seeds.",
                "", "| model | seed | loss | perplexity | change (nats/token) | interval | "
                "perplexity ratio |", "|---|---|---|---|---|---|---|",
                f"| base | - | {_f(base_lm['loss'], 4)} | {_f(math.exp(base_lm['loss']), 2)} "
                "| - | - | - |"]
        for m in methods:
            mr = sorted((r for r in lm if r["method"] == m), key=lambda r: r["seed"])
            for r in mr:
                out.append(f"| {r['run_id']} | {r['seed']} | {_f(r['loss_after'], 4)} | "
                           f"{_f(math.exp(r['loss_after']), 2)} | {_f(r['difference'], 4)} | "
                           f"[{_f(r['ci_low'], 4)}, {_f(r['ci_high'], 4)}] | "
                           f"{_f(math.exp(r['difference']), 3)} |")
            if mr:
                e = _t_interval([r["difference"] for r in mr], alpha)
                after = float(np.mean([r["loss_after"] for r in mr]))
                out.append(f"| **{m}** (mean of {len(mr)}) | - | {_f(after, 4)} | "
                           f"{_f(math.exp(after), 2)} | {_f(e[0], 4)} | [{_f(e[1], 4)}, "
                           f"{_f(e[2], 4)}] | {_f(math.exp(e[0]), 3)} |")
        out.append("")
        if len(methods) >= 2:
            a, b = methods[-1], methods[0]
            per = {(r["method"], r["seed"]): r["difference"] for r in lm}
            diffs = [per[(a, s)] - per[(b, s)] for s in seeds if (a, s) in per and (b, s) in per]
            d = _t_interval(diffs, alpha)
            answer = (f"Forgetting: {a} minus {b} on the held-out LM loss change (paired by "
                      f"seed, n = {len(diffs)}): {_f(d[0], 4)} [{_f(d[1], 4)}, {_f(d[2], 4)}] "
                      f"nats/token: {_forgetting_word(d, a, b, lm, alpha)}.")
    probes = [r for r in runs if r["measure"] == "probe"]
    if probes:
        base = {(r["probe_task"], r["layer"]): r for r in recs if r["measure"] == "probe"
                and r["run_id"] is None and r["status"] == "done"}
        first = probes[0]
        out += [f"Off-task linear probes: logistic regression on each model's pooled "
                f"({first['pooling']}) hidden states; {first['n_train']} training and "
                f"{first['n_test']} test examples per probe task, the same for every model. "
                "Change = run minus base test accuracy (negative = forgotten); mean over seeds "
                f"with a {100 * (1 - alpha):g}% t interval; the last column counts runs whose "
                "own paired bootstrap interval over test examples lies below 0.", "",
                "| probe task | layer | majority-class rate | base accuracy | method | "
                "accuracy (mean) | change | interval | runs below base |",
                "|---|---|---|---|---|---|---|---|---|"]
        degenerate: list[str] = []
        for (task_name, layer), b in sorted(base.items()):
            for m in methods:
                mr = [r for r in probes if r["probe_task"] == task_name and r["layer"] == layer
                      and r["method"] == m]
                if not mr:
                    continue
                e = _t_interval([r["difference"] for r in mr], alpha)
                below = sum(1 for r in mr if r.get("ci_high") is not None and r["ci_high"] < 0)
                maj = b.get("majority_rate")
                at_majority = maj is not None and (
                    b["accuracy"] <= maj + 1e-9
                    or any(r["accuracy"] <= maj + 1e-9 for r in mr))
                if at_majority:
                    degenerate.append(f"{task_name} {b['layer_name']} {m}")
                out.append(f"| {task_name} | {b['layer_name']} | {_f(maj, 3)} | "
                           f"{_f(b['accuracy'], 3)}{' (at majority)' if at_majority else ''} | "
                           f"{m} | "
                           f"{_f(float(np.mean([r['accuracy'] for r in mr])), 3)} | "
                           f"{_f(e[0], 3)} | [{_f(e[1], 3)}, {_f(e[2], 3)}] | "
                           f"{below} of {len(mr)} |")
        out.append("")
        if degenerate:
            out += ["Not evidence of forgetting: on " + ", ".join(degenerate) + " the base's or "
                    "a run's probe scores no better than always predicting the training split's "
                    "majority class (the probe found no signal in those features at this "
                    "sample size), so its change measures the probe, not the model.", ""]
    reasons = sorted({r["reason"] for r in recs if r["status"] == "skipped" and r.get("reason")})
    if reasons:
        out += ["Not measured: " + "; ".join(reasons) + ".", ""]
    return out, answer


def weight_lines(recs: list[dict[str, Any]], task: str, methods: list[str]) -> list[str]:
    """The report's weight-space table for one task from `weights` records (written by the
    drift stage, `peftlab.stages.drift.weight_drift`): per method and matrix kind, the mean
    over matrices and runs of the update's size, ranks and intruder dimensions."""
    recs = [r for r in recs if r["task"] == task]
    if not recs:
        return []
    first = next((r["stats"] for r in recs if r.get("stats")), {})
    out = ["## Weight space", "",
           "The update of every analysed matrix (`drift.weight_modules`): LoRA's from its factors "
           "('B A (exact)'), full fine-tuning's as tuned minus base; means over the matrices of a "
           "kind and over runs. Ranks count singular values above a cut-off set by the "
           "weights' precision; intruder dimensions are top-"
           f"{first.get('top_k', '-')} singular vectors of the tuned matrix with |cosine| below "
           f"{first.get('epsilon', '-')} to every singular vector of the base.", "",
           "| method | matrix | update | runs | matrices | relative update (Frobenius, dW / W) | "
           "effective rank | numerical rank | intruder dims |",
           "|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        kinds = sorted({(r["matrix"], r["update"]) for r in recs if r["method"] == m})
        for matrix, update in kinds:
            group = [r for r in recs if r["method"] == m and r["matrix"] == matrix
                     and r["update"] == update]
            ok = [r["stats"] for r in group if r.get("stats")]

            def mean(key: str, ok: list[dict[str, Any]] = ok) -> float | None:
                vals = [x[key] for x in ok if x.get(key) is not None]
                return float(np.mean(vals)) if vals else None

            out.append(f"| {m} | {matrix} | {update} | {len({r['run_id'] for r in group})} | "
                       f"{len(group)} | {_f(mean('relative_update'), 5)} | "
                       f"{_f(mean('effective_rank'), 2)} | {_f(mean('numerical_rank'), 1)} | "
                       f"{_f(mean('intruder_dims'), 2)} |")
    out.append("")
    return out
