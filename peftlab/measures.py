"""Representational similarity measures, registered by name, and one layer's comparison.

    MEASURES.get("linear_cka_debiased").compute(x, y, cfg)      # x, y: (n_examples, features)
    compare_layer(x, y, cfg, where)                              # every configured measure

A measure declares what the rest of the pipeline needs to know about it: its label (report), whether
higher means more similar, whether it has a permutation null floor (drift computes it, the report
draws it), whether the stats stage tests it between methods, and whether it runs by default. A
study's `drift.measures` is checked against this registry when it loads (`validate.check_names`),
so adding a measure is one `register` call here (or in a plug-in) with no list of names to edit
elsewhere. The arithmetic lives in
`peftlab.similarity`; this module only names and wires it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.errors import DegenerateInputError, PeftlabError
from peftlab.registry import Registry

if TYPE_CHECKING:
    from peftlab.spec import DriftSpec, StatsSpec


@dataclass(frozen=True)
class Measure:
    """One similarity (or distance) between paired representations of two models.

    compute(x, y, cfg) -> float, unitless; raises DegenerateInputError where it is undefined.
    null(x, y, cfg) -> similarity.NullResult (permutation null at this n and d), or None.
    bootstrap(x, y, cfg) -> similarity_bootstrap.BootstrapResult over cfg.bootstrap resamples of
    probe examples, a fast form; measures without one are recomputed on each resample.
    """

    name: str
    label: str
    compute: Callable[[np.ndarray, np.ndarray, Any], float]
    null: Callable[[np.ndarray, np.ndarray, Any], Any] | None = None
    tested: bool = False  # compared between methods (paired by seed) in the stats stage
    higher_is_similar: bool = True  # False for distances (Procrustes)
    default: bool = True  # part of drift.measures when the spec does not list them
    bootstrap: Callable[[np.ndarray, np.ndarray, Any], Any] | None = None

    @property
    def has_null(self) -> bool:
        return self.null is not None


MEASURES: Registry[Measure] = Registry("drift measure")


def knn_k(cfg: DriftSpec, n: int) -> int:
    """drift.knn_k capped at n - 1 (an example has n - 1 possible neighbours)."""
    return max(1, min(cfg.knn_k, n - 1))


def _cka_null(debiased: bool, kernel: str) -> Callable[[np.ndarray, np.ndarray, Any], Any]:
    def null(x: np.ndarray, y: np.ndarray, cfg: Any) -> Any:
        from peftlab.similarity import cka_null

        return cka_null(x, y, cfg.null_permutations, cfg.seed, debiased=debiased, kernel=kernel,
                        sigma=cfg.rbf_sigma)

    return null


def _linear_cka(x, y, cfg):
    from peftlab.similarity import linear_cka

    return linear_cka(x, y)


def _linear_cka_debiased(x, y, cfg):
    from peftlab.similarity import linear_cka

    return linear_cka(x, y, debiased=True)


def _rbf_cka(x, y, cfg):
    from peftlab.similarity import rbf_cka

    return rbf_cka(x, y, sigma=cfg.rbf_sigma)


def _cosine(x, y, cfg):
    from peftlab.similarity import cosine_similarity

    return cosine_similarity(x, y).mean


def _centered_cosine(x, y, cfg):
    from peftlab.similarity import centered_cosine_similarity

    return centered_cosine_similarity(x, y).mean


def _cosine_null(centered: bool) -> Callable[[np.ndarray, np.ndarray, Any], Any]:
    def null(x: np.ndarray, y: np.ndarray, cfg: Any) -> Any:
        from peftlab.similarity import cosine_null

        return cosine_null(x, y, cfg.null_permutations, cfg.seed, centered=centered)

    return null


def _cka_bootstrap(debiased: bool) -> Callable[[np.ndarray, np.ndarray, Any], Any]:
    def boot(x: np.ndarray, y: np.ndarray, cfg: Any) -> Any:
        from peftlab.similarity_bootstrap import linear_cka_bootstrap

        return linear_cka_bootstrap(x, y, cfg.bootstrap, cfg.seed, debiased=debiased)

    return boot


def _cosine_bootstrap(centered: bool) -> Callable[[np.ndarray, np.ndarray, Any], Any]:
    def boot(x: np.ndarray, y: np.ndarray, cfg: Any) -> Any:
        from peftlab.similarity import centered_cosine_similarity, cosine_similarity
        from peftlab.similarity_bootstrap import mean_bootstrap

        # Centred: the per-example cosines keep the full probe set's centring (re-centring
        # each resample would move every value by O(1/n)).
        rows = (centered_cosine_similarity if centered else cosine_similarity)(x, y).per_row
        return mean_bootstrap(rows, cfg.bootstrap, cfg.seed,
                              what="mean of the per-example cosines")

    return boot


def _procrustes(x, y, cfg):
    from peftlab.similarity import procrustes_distance

    return procrustes_distance(x, y)


def _knn(x, y, cfg):
    from peftlab.similarity import knn_overlap

    return knn_overlap(x, y, k=knn_k(cfg, x.shape[0]))


for _m in (
    Measure("linear_cka_debiased", "debiased linear CKA", _linear_cka_debiased,
            null=_cka_null(True, "linear"), tested=True, bootstrap=_cka_bootstrap(True)),
    Measure("linear_cka", "linear CKA", _linear_cka, null=_cka_null(False, "linear"),
            bootstrap=_cka_bootstrap(False)),
    Measure("rbf_cka", "RBF CKA", _rbf_cka, null=_cka_null(False, "rbf"), default=False),
    # Centred (probe-set mean removed): the constant offset of massive-activation features
    # cancels, and its shuffled-rows baseline sits near 0. The uncentred cosine is kept for
    # comparison with earlier studies, always labelled "uncentred" and read against its own
    # shuffled baseline (near 1 for LLM hidden states).
    Measure("centered_cosine", "centred cosine", _centered_cosine, null=_cosine_null(True),
            tested=True, bootstrap=_cosine_bootstrap(True)),
    Measure("cosine", "uncentred cosine", _cosine, null=_cosine_null(False),
            bootstrap=_cosine_bootstrap(False)),
    Measure("procrustes", "Procrustes distance", _procrustes, higher_is_similar=False),
    Measure("knn", "kNN overlap", _knn),
):
    MEASURES.register(_m)


def default_measures() -> list[str]:
    return [m.name for m in MEASURES.values() if m.default]


def tested_measures(stats: StatsSpec | None = None) -> list[str]:
    """Measures the stats stage compares between methods: `stats.tested_measures` where the
    spec names them, else those the registry marks tested, in registration order."""
    if stats is not None and stats.tested_measures is not None:
        return list(stats.tested_measures)
    return [m.name for m in MEASURES.values() if m.tested]


def label(name: str) -> str:
    """The human name of a measure ("debiased linear CKA"); unknown names are returned as is."""
    return MEASURES.get(name).label if name in MEASURES else name


def null_floor(measure: Measure, x: np.ndarray, y: np.ndarray, cfg: DriftSpec
               ) -> dict[str, Any]:
    """Permutation null of a measure at this n and d (drift.null_permutations shuffles).

    {observed, null_mean, null_std, null_q95, p_value, n_permutations}; p_value is the share
    of shuffled pairings (plus one) whose value reaches the observed one. The floor the report
    draws and tables is null_q95 (a value below it is not distinguishable from unrelated
    representations at the 5% level); null_mean is kept for reference.
    """
    res = measure.null(x, y, cfg)
    return {"observed": res.observed, "null_mean": res.null_mean, "null_std": res.null_std,
            "null_q95": res.null_q95, "p_value": res.p_value,
            "n_permutations": res.n_permutations}


def bootstrap_interval(name: str, x: np.ndarray, y: np.ndarray, cfg: DriftSpec
                       ) -> dict[str, Any] | None:
    """The measure's percentile interval over cfg.bootstrap resamples of probe examples (seeded
    by cfg.seed, so every run and layer uses the same resamples), as a dict
    {measure, estimate, ci_low, ci_high, confidence, n_resamples, undefined, method}; None when
    cfg.bootstrap is 0 or the measure is undefined on these data."""
    if cfg.bootstrap <= 0:
        return None
    m = MEASURES.get(name, where="stats.primary.drift.measure")
    try:
        if m.bootstrap is not None:
            res = m.bootstrap(x, y, cfg)
        else:
            from peftlab.similarity_bootstrap import generic_bootstrap

            res = generic_bootstrap(lambda a, b: m.compute(a, b, cfg), x, y, cfg.bootstrap,
                                    cfg.seed)
    except DegenerateInputError:
        return None
    return {"measure": name, **res.as_dict()}


def compare_layer(x: np.ndarray, y: np.ndarray, cfg: DriftSpec, where: str) -> dict[str, Any]:
    """Every configured measure (and null floor, where the measure has one) of one layer.

    x, y: (n_examples, features), rows paired. Returns {values: {measure: float | None},
    undefined: {measure: reason}, null: {measure with a null: null_floor(...) | None}}. `where`
    names the comparison and layer in errors (bad input is an error, an undefined measure is not).
    """
    values: dict[str, float | None] = {}
    undefined: dict[str, str] = {}
    null: dict[str, dict[str, Any] | None] = {}
    # measures None (a DriftSpec built outside a study): the default measures
    for name in cfg.measures if cfg.measures is not None else default_measures():
        m = MEASURES.get(name, where="drift.measures")
        with_null = m.has_null and cfg.null_permutations > 0
        try:
            values[name] = float(m.compute(x, y, cfg))
            if with_null:
                null[name] = null_floor(m, x, y, cfg)
        except DegenerateInputError as err:
            values[name] = None
            undefined[name] = err.reason
            if with_null:
                null[name] = None
        except PeftlabError as err:
            raise PeftlabError(f"{where}: {name}: {err}") from None
    return {"values": values, "undefined": undefined, "null": null}
