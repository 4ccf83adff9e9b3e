"""Comparing paired runs in one call: `compare` (tests, effect size, intervals, TOST, power and
the outcome word), `void_comparison` for runs that are not evidence, and the corrections of a
declared family (`apply_correction`, `correct_by_family`) that set each final outcome."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import numpy as np

from peftlab.errors import DegenerateInputError
from peftlab.stats.base import CORRECTIONS, RANK_TEST, _Record, _sample
from peftlab.stats.equivalence import tost_paired
from peftlab.stats.intervals import relative_difference_ci
from peftlab.stats.multiplicity import adjust_pvalues
from peftlab.stats.power import minimum_detectable_effect, runs_needed
from peftlab.stats.significance import cohens_dz, paired_ttest, wilcoxon_signed_rank


@dataclass(frozen=True)
class Comparison(_Record):
    """Everything the report says about one paired comparison "a vs b" (see `compare`).

    Units: `mean_a`, `mean_b`, `diff` (= mean_a - mean_b), its CI, `tost_low`/`tost_high`,
    `sd_diff` (SD of the paired differences) and `mde_diff` are in the inputs' unit; `rel_diff` =
    mean_a / mean_b - 1 is a fraction (0.35 = a is 35% higher); `effect` and `mde_dz` are d_z
    (unitless). Intervals are at `confidence` = 1 - alpha, except TOST's (1 - 2*alpha). Fields are
    None when not computed or undefined (never NaN/inf).

    Tests: `test`/`statistic`/`df`/`p` are the paired t-test; `statistic` and `p` are None when
    t is undefined (zero spread, `t_undefined_reason` says why). `rank_*` is the exact Wilcoxon
    signed-rank test. `decision_test` names the test whose p-value decides (the t-test, or the
    Wilcoxon test when t is undefined), `decision_p` is its p-value and `p_adjusted` that p-value
    corrected over the family. `tost_test` names the equivalence test used.

    Outcome (one of OUTCOMES) from `p_adjusted` and `tost_p_adjusted` (see `decide_outcome`); a
    fresh `compare` result is a family of one (`correction="none"`, `family_size=1`) until
    `apply_correction` runs over the declared family. `status` is "ok" (tested), "insufficient
    runs" or "void" (not tested; `reason` says why).

    Power (what the study could detect): `mde_dz` is the smallest |d_z| a two-sided paired t-test
    at `mde_alpha` detects with probability `power` at this n (`minimum_detectable_effect`),
    `mde_diff` = mde_dz * sd_diff the same in the inputs' unit, `runs_needed` the fewest pairs
    giving that power for the observed d_z (`runs_needed`; None when d_z is 0 or undefined).
    `mde_alpha` is alpha / family_size: Holm's first (strictest) step, Bonferroni's level.
    """

    label: str
    status: str  # one of STATUSES
    outcome: str  # one of OUTCOMES
    paired: bool  # always True: comparisons are paired by run (seed)
    n: int  # pairs
    n_a: int
    n_b: int
    alpha: float
    confidence: float
    mean_a: float | None = None
    mean_b: float | None = None
    diff: float | None = None
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    rel_diff: float | None = None
    rel_diff_ci_low: float | None = None
    rel_diff_ci_high: float | None = None
    test: str | None = None
    statistic: float | None = None
    df: float | None = None
    p: float | None = None
    t_undefined_reason: str | None = None
    rank_test: str | None = None
    rank_statistic: float | None = None
    rank_p: float | None = None
    decision_test: str | None = None
    decision_p: float | None = None
    p_adjusted: float | None = None
    effect_name: str | None = None
    effect: float | None = None
    effect_ci_low: float | None = None
    effect_ci_high: float | None = None
    equivalence_margin: float | None = None
    margin_relative: bool | None = None
    tost_test: str | None = None
    tost_low: float | None = None
    tost_high: float | None = None
    tost_p: float | None = None
    tost_p_adjusted: float | None = None
    equivalent: bool | None = None
    correction: str = "none"
    family_size: int = 1
    sd_diff: float | None = None
    power: float = 0.8
    mde_alpha: float | None = None
    mde_dz: float | None = None
    mde_diff: float | None = None
    runs_needed: int | None = None
    reason: str = ""
    note: str = ""




def decide_outcome(p_adjusted: float, tost_p_adjusted: float | None, alpha: float) -> str:
    """The outcome word from the (corrected) decision p-value and TOST p-value.

    significant = p_adjusted < alpha; equivalent = tost_p_adjusted < alpha (None: no margin).
    significant and equivalent -> "negligible" (different, but the whole TOST interval lies
    inside the margin); significant only -> "different"; equivalent only -> "equivalent";
    neither -> "inconclusive". This is the four-way reading of Lakens, Scheel & Isager (2018).
    """
    significant = p_adjusted < alpha
    equivalent = tost_p_adjusted is not None and tost_p_adjusted < alpha
    if significant:
        return "negligible" if equivalent else "different"
    return "equivalent" if equivalent else "inconclusive"


def _power_fields(n: int, sd_diff: float | None, dz: float | None, alpha: float,
                  power: float) -> dict[str, Any]:
    """The Comparison's power fields at level `alpha` (see Comparison)."""
    mde = minimum_detectable_effect(n, alpha, power)
    return {
        "mde_alpha": float(alpha), "mde_dz": mde,
        "mde_diff": mde * sd_diff if sd_diff else None,  # zero spread: no unit to scale by
        "runs_needed": runs_needed(dz, alpha, power) if dz is not None else None,
    }


def _common(label: str, n: int, alpha: float, equivalence_margin: float | None,
            margin_relative: bool, power: float) -> dict[str, Any]:
    return {"label": label, "paired": True, "n": n, "n_a": n, "n_b": n, "alpha": alpha,
            "confidence": 1 - alpha, "equivalence_margin": equivalence_margin,
            "margin_relative": margin_relative if equivalence_margin is not None else None,
            "power": power}


def _means(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    return {k: float(x.mean()) for k, x in (("mean_a", a), ("mean_b", b)) if x.size}


def compare(
    a: Any,
    b: Any,
    paired: bool = True,
    alpha: float = 0.05,
    equivalence_margin: float | None = None,
    min_n: int = 3,
    margin_relative: bool = True,
    label: str = "",
    power: float = 0.8,
) -> Comparison:
    """Compare paired runs of condition a with runs of condition b: the stats stage's entry point.

    a, b: one value per independent run (seed), paired by index, in any common unit. `paired`
    must be True (kept so callers can say so; unpaired comparisons are not offered because no
    study design here produces them). With fewer than `min_n` pairs no test runs: status and
    outcome "insufficient runs". Otherwise: paired t-test as the decision test (the exact Wilcoxon
    signed-rank test when t is undefined by zero spread), the Wilcoxon test alongside; d_z with
    CI; mean difference and relative difference with CIs at 1 - alpha; TOST when
    `equivalence_margin` is given (a fraction of mean(b) when `margin_relative`, else in the
    inputs' unit); the minimum detectable effect at this n (`power`). The outcome (see
    `decide_outcome`) is provisional (family of one) until `apply_correction` is run over the
    whole declared family.
    """
    if not paired:
        raise ValueError("compare is paired-only: pass one value per run for a and b, paired by"
                         " seed")
    a_arr, b_arr = _sample(a, "a"), _sample(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    n = a_arr.size
    common = _common(label, n, alpha, equivalence_margin, margin_relative, power)
    needed = max(min_n, 2)
    if n < needed:
        return Comparison(status="insufficient runs", outcome="insufficient runs",
                          reason=f"{n} complete pair(s), fewer than the {needed} needed",
                          **_means(a_arr, b_arr), **common)

    notes = []
    test = paired_ttest(a_arr, b_arr, 1 - alpha)
    rank = wilcoxon_signed_rank(a_arr, b_arr)
    effect = cohens_dz(a_arr, b_arr, 1 - alpha)
    tost = (tost_paired(a_arr, b_arr, equivalence_margin, margin_relative, alpha)
            if equivalence_margin is not None else None)
    t_defined = test.pvalue is not None
    decision = test if t_defined else rank
    if not t_defined:
        notes.append(f"{test.note}; the exact {RANK_TEST} test decides")
    rel_fields: dict[str, float] = {}
    try:
        rel = relative_difference_ci(a_arr, b_arr, confidence=1 - alpha)
        rel_fields = {"rel_diff": rel.estimate, "rel_diff_ci_low": rel.ci_low,
                      "rel_diff_ci_high": rel.ci_high}
    except DegenerateInputError as err:  # mean(b) == 0: report the rest, say why this is missing
        notes.append(err.reason)
    if rank.note:
        notes.append(f"{rank.test}: {rank.note}")
    if 2.0 / 2**n >= alpha:  # smallest exact two-sided p is 2 / 2^n
        notes.append(f"{rank.test} cannot reach p < {alpha} with {n} pairs")
    dz = effect.value if math.isfinite(effect.value) else None
    if dz is None:
        notes.append(f"{effect.name} undefined: zero spread")
    sd_diff = float((a_arr - b_arr).std(ddof=1)) if t_defined else 0.0
    decision_p = cast(float, decision.pvalue)  # the t-test when defined, else the rank test
    tost_p = tost.pvalue if tost else None
    return Comparison(
        status="ok", outcome=decide_outcome(decision_p, tost_p, alpha),
        **_means(a_arr, b_arr), diff=test.estimate,
        diff_ci_low=test.ci_low, diff_ci_high=test.ci_high, **rel_fields,
        test=test.test, statistic=test.statistic, df=test.df, p=test.pvalue,
        t_undefined_reason=None if t_defined else test.note,
        rank_test=rank.test, rank_statistic=rank.statistic, rank_p=rank.pvalue,
        decision_test=decision.test, decision_p=decision_p, p_adjusted=decision_p,
        effect_name=effect.name, effect=dz,
        effect_ci_low=effect.ci_low if dz is not None else None,
        effect_ci_high=effect.ci_high if dz is not None else None,
        tost_test=tost.test if tost else None,
        tost_low=tost.low if tost else None, tost_high=tost.high if tost else None,
        tost_p=tost_p, tost_p_adjusted=tost_p, equivalent=tost.equivalent if tost else None,
        sd_diff=sd_diff, **_power_fields(n, sd_diff, dz, alpha, power),
        note="; ".join(notes), **common,
    )


def void_comparison(
    a: Any,
    b: Any,
    reason: str,
    *,
    alpha: float = 0.05,
    label: str = "",
    equivalence_margin: float | None = None,
    margin_relative: bool = True,
    power: float = 0.8,
) -> Comparison:
    """A comparison that is not evidence: status and outcome "void", `reason` saying why (e.g.
    "every lora run on mrpc is at the majority-class rate"). a, b: the per-run values that
    would have been compared (may be empty; equal lengths), kept as n and means so the record
    still shows what was there. No test is run; `apply_correction` leaves it out of the family.
    """
    if not reason:
        raise ValueError("a void comparison needs its reason")
    a_arr, b_arr = _sample(a, "a"), _sample(b, "b")
    if a_arr.size != b_arr.size:
        raise ValueError(f"paired samples need equal lengths, got {a_arr.size} and {b_arr.size}")
    return Comparison(status="void", outcome="void", reason=reason, **_means(a_arr, b_arr),
                      **_common(label, a_arr.size, alpha, equivalence_margin, margin_relative,
                                power))


def apply_correction(comparisons: Sequence[Comparison], method: str = "holm") -> list[Comparison]:
    """Correct a declared family of comparisons for multiplicity and set each final `outcome`.

    The family is every comparison with status "ok" ("insufficient runs" and "void" entries carry
    no p-value and are passed through unchanged), of any size (one study-wide family of primary
    endpoints is fine). The decision p-values are adjusted together; the TOST p-values of the
    comparisons that have a margin form a second family, adjusted the same way. The outcome is
    then `decide_outcome(p_adjusted, tost_p_adjusted, alpha)`, and the power fields are restated
    at alpha / family size. Returns new Comparison objects in the input order.
    """
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    tested = [i for i, c in enumerate(comparisons) if c.status == "ok"]
    with_margin = [i for i in tested if comparisons[i].tost_p is not None]
    p_adj = dict(zip(tested, adjust_pvalues([comparisons[i].decision_p for i in tested], method),
                     strict=True))
    tost_adj = dict(zip(with_margin,
                        adjust_pvalues([comparisons[i].tost_p for i in with_margin], method),
                        strict=True))
    m = len(tested)
    out = []
    for i, c in enumerate(comparisons):
        if i not in p_adj:
            out.append(c)
            continue
        t_adj = tost_adj.get(i)
        out.append(replace(
            c, p_adjusted=p_adj[i], tost_p_adjusted=t_adj,
            equivalent=None if t_adj is None else bool(t_adj < c.alpha),
            outcome=decide_outcome(p_adj[i], t_adj, c.alpha), correction=method, family_size=m,
            **_power_fields(c.n, c.sd_diff, c.effect, c.alpha / m, c.power),
        ))
    return out


def correct_by_family(comparisons: Sequence[Comparison], families: Sequence[Hashable],
                      method: str = "holm") -> list[Comparison]:
    """`apply_correction` over each family separately: families[i] names the family of
    comparisons[i] (e.g. "primary" for the study's pre-declared endpoints, corrected together
    across tasks and areas, and "exploratory/drift/cka" for the rest). Returns the corrected
    comparisons in the input order."""
    if len(families) != len(comparisons):
        raise ValueError(f"need one family per comparison, got {len(families)} for "
                         f"{len(comparisons)}")
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, key in enumerate(families):
        members[key].append(i)
    out: list[Comparison | None] = [None] * len(comparisons)
    for idx in members.values():
        for i, c in zip(idx, apply_correction([comparisons[i] for i in idx], method),
                        strict=True):
            out[i] = c
    return out  # type: ignore[return-value]  # every index belongs to one family
