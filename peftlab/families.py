"""The comparison families a study's stats are corrected in, and how many comparisons each holds.

    peftlab plan quickstart          # prints planned_families(study)

`stats.primary` declares one primary endpoint per research question; those comparisons form ONE
family, "primary", corrected together across the whole study (`role_metric`, `role_drift`,
`role_latency` say which comparison is one). Every other comparison is exploratory, corrected
within its area's family (`FAMILY`): the stats stage (`peftlab.stages.stats`) lists what each holds.
`FAMILIES` is the order the report shows them in.

`planned_families(study)` counts the members of each family from the spec alone (no results), as
the stats stage enumerates them on a complete study; the stats table's `settings` record holds,
per family, the planned and the tested count. PEFT methods are compared against the reference
methods: those the method registry declares not PEFT (`peftlab.results.is_reference`).
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import TYPE_CHECKING, Any

from peftlab.measures import label as measure_label
from peftlab.measures import tested_measures
from peftlab.results import is_reference

if TYPE_CHECKING:
    from peftlab.plan import Study
    from peftlab.spec import StatsSpec

BANDS = ("early", "middle", "late", "mean")  # over transformer layers (layer >= 1)
EMBEDDINGS = "embeddings"  # layer 0, summarised on its own
PRIMARY = "primary"
FAMILY = {area: f"exploratory/{area}" for area in
          ("metric", "drift", "seed_noise", "latency", "serving", "forgetting", "readout")}
FAMILIES = (PRIMARY, *FAMILY.values())  # the primary family first, then the areas in order


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


def roled(role: tuple[str, str, str | None]) -> dict[str, Any]:
    """A role as the record fields every comparison carries: role, family, question."""
    return {"role": role[0], "family": role[1], "question": role[2]}


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
    refs = [m for m, t in methods.items() if is_reference(t)]
    peft = [m for m, t in methods.items() if not is_reference(t)]
    tasks = [t.name for t in spec.tasks]
    counts: dict[str, int] = defaultdict(int)
    pairs_peft_full = len(peft) * len(refs)
    for task in tasks:
        metrics = list(data.task(task).metrics)
        for i, _ in enumerate(metrics):
            counts[role_metric(cfg, i == 0)[1]] += pairs_peft_full
    measured = [m for m in tested_measures(cfg) if m in spec.drift.measures]
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
    return {f: counts[f] for f in FAMILIES if counts.get(f)}




def probe_task_names(study: Study) -> list[str]:
    """The probe tasks the spec implies (`forgetting.tasks`, else the study's classification
    tasks), as the forgetting stage picks them."""
    from peftlab.data import StudyData

    cfg = study.spec.forgetting
    if cfg.tasks is not None:
        return [t.name for t in cfg.tasks]
    data = StudyData(study, None)
    return [t.name for t in study.spec.tasks if data.task(t.name).has_classes]


def has_heldout_text(study: Study, task: str) -> bool:
    """Whether runs tuned on `task` have held-out text for the LM-loss measure of forgetting:
    `forgetting.text_file`, or another task of the study."""
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
    pairs = sum(not is_reference(t) for t in types) * sum(is_reference(t) for t in types)
    probes = probe_task_names(study)
    n_layers = len(dict.fromkeys(cfg.layers))
    total = 0
    for t in spec.tasks:
        total += sum(p != t.name for p in probes) * n_layers
        total += has_heldout_text(study, t.name)
    return total * pairs

