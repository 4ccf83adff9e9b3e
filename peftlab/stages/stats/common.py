"""What every comparison area of the stats stage shares: the inputs it reads (`Inputs`), a
comparison before its family is corrected (`Pending`, `make_pending`, which pairs runs by seed and
makes a comparison void when degenerate runs leave too few pairs), the correction over families
(`correct`), and small summaries of per-run values (`mean_interval`, `mean_or_none`, ...).
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats as sst

from peftlab import stats as st
from peftlab.results import RunView
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.spec import StatsSpec

Record = tuple[str, dict[str, Any]]  # (key in the stats table, record)


@dataclass
class Inputs:
    """What every area reads: the study (and through `ctx.store` its stored results), its runs by
    seed, the stats settings and every run's learned verdict."""

    ctx: Context
    view: RunView
    cfg: StatsSpec
    verdicts: Verdicts


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
    """One plain sentence: why a comparison that lost pairs to degenerate (or unjudged) runs is
    void."""
    lost = [s for s in before if s in excluded]
    unjudged = [s for s in lost if "not judged (" in excluded[s]]
    run = ("a degenerate run" if not unjudged else "a run that could not be judged"
           if len(unjudged) == len(lost) else "a degenerate or unjudged run")
    if len(lost) == len(before):
        why = (" (not above the majority-class or chance rate of its task)" if not unjudged
               else " (no baselines to judge it by: the run's verdict says why)")
        return (f"every complete pair on {where} involves {run}{why}, so there is nothing to "
                "compare")
    return (f"{len(lost)} of the {len(before)} complete pairs on {where} involve {run} "
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


def correct(pending: list[Pending], cfg: StatsSpec) -> list[Record]:
    """apply_correction over each family (`context["family"]`); records in the input order.
    Across-task estimates get their power fields restated at their own df."""
    corrected = st.correct_by_family([p.comparison for p in pending],
                                     [p.context["family"] for p in pending], cfg.correction)
    out = []
    for p, c in zip(pending, corrected, strict=True):
        if p.context.get("kind") == "across_tasks" and c.status == "ok":
            c = replace(c, **st.mixed_power_fields(c.n, p.context["n_tasks"], c.sd_diff, c.effect,
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


def defined(v: Any) -> bool:
    """A finite number (not a bool, None or NaN): a value that can enter a mean."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def mean_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if defined(v)]
    return float(np.mean(vals)) if vals else None


def max_or_none(values: list[float | None]) -> float | None:
    vals = [v for v in values if defined(v)]
    return float(max(vals)) if vals else None
