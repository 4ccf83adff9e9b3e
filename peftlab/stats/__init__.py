"""Statistics for comparing methods across independent runs: tests, effect sizes, corrections,
equivalence, power, intervals and a mixed model across tasks. Pure functions; every result is a
frozen dataclass with `as_dict()`.

Unit of analysis: every `a`/`b` argument holds ONE VALUE PER INDEPENDENT RUN (a seed, i.e. a
separately trained model or a separately repeated benchmark process), e.g. the median latency of
each run in ms or the accuracy of each seed. Never pass per-request latencies or per-example scores:
they are not independent and would make any difference "significant". Comparisons are paired:
`a[i]` and `b[i]` come from the same unit (same seed, same task, same machine session).

Degenerate inputs follow stated conventions instead of returning NaN, inf or 0 p-values:
- zero spread of the paired differences (all equal, up to 1e-12 of the data's scale; e.g. one
  example better on every seed) leaves the t statistic undefined: it and its p-value are None
  with the reason, and `compare` decides on the exact Wilcoxon signed-rank test instead (TOST on
  the exact one-sided signed-rank tests), saying so in `decision_test` / `tost_test`;
- effect sizes whose standard deviation is zero are undefined: NaN in `cohens_dz`, None in a
  `Comparison`.

Outcomes (`OUTCOMES`) read significance and equivalence together (Lakens, Scheel & Isager 2018,
"Equivalence testing for psychological research"): "different" (significant, and TOST does not
place the difference inside the declared margin), "negligible" (significant, but TOST places the
whole (1 - 2 alpha) interval inside the margin), "equivalent" (TOST significant, not significant),
"inconclusive" (neither), "insufficient runs" (too few pairs: nothing tested) and "void" (set by
callers for degenerate runs, see `void_comparison`). Without a margin a significant difference is
"different".

    python -c "from peftlab.stats import compare; print(compare([10.1, 10.3, 10], [7.6, 7.5, 8]))"

Modules: `base` (names, input checks), `significance` (tests, d_z), `multiplicity` (Holm,
Bonferroni), `equivalence` (TOST), `intervals` (bootstrap, relative difference), `power`,
`comparison` (`compare` and the family corrections), `variance` (variance shares), `mixed`
(across tasks) and `correlation` (Spearman). Import from here: `from peftlab.stats import compare`.
"""

from __future__ import annotations

from peftlab.stats.base import (
    CORRECTIONS,
    OUTCOMES,
    RANK_TEST,
    STATUSES,
    T_TEST,
    zero_spread_reason,
)
from peftlab.stats.comparison import (
    Comparison,
    apply_correction,
    compare,
    correct_by_family,
    decide_outcome,
    void_comparison,
)
from peftlab.stats.correlation import SPEARMAN, CorrelationResult, rank_correlation
from peftlab.stats.equivalence import TostResult, tost_paired
from peftlab.stats.intervals import Interval, bootstrap_ci, relative_difference_ci
from peftlab.stats.mixed import MixedEffectsResult, mixed_effects, mixed_power_fields
from peftlab.stats.multiplicity import adjust_pvalues, bonferroni, holm
from peftlab.stats.power import (
    minimum_detectable_difference,
    minimum_detectable_effect,
    runs_needed,
    t_power,
)
from peftlab.stats.significance import (
    EffectSize,
    HypothesisTestResult,
    cohens_dz,
    paired_permutation_test,
    paired_ttest,
    wilcoxon_signed_rank,
)
from peftlab.stats.variance import VarianceDecomposition, variance_decomposition

__all__ = [
    "CORRECTIONS", "OUTCOMES", "RANK_TEST", "SPEARMAN", "STATUSES", "T_TEST", "Comparison",
    "CorrelationResult", "EffectSize", "HypothesisTestResult", "Interval", "MixedEffectsResult",
    "TostResult", "VarianceDecomposition", "adjust_pvalues", "apply_correction", "bonferroni",
    "bootstrap_ci", "cohens_dz", "compare", "correct_by_family", "decide_outcome", "holm",
    "minimum_detectable_difference", "minimum_detectable_effect", "mixed_effects",
    "mixed_power_fields", "paired_permutation_test", "paired_ttest", "rank_correlation",
    "relative_difference_ci", "runs_needed", "t_power", "tost_paired", "variance_decomposition",
    "void_comparison", "wilcoxon_signed_rank", "zero_spread_reason",
]
