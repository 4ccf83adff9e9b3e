"""The Representational drift section: every measure per layer and per layer band, base vs run,
beside its null floor and the seed-to-seed control, and the drift comparisons (`drift` records and
the `stats` table's drift summaries).
"""

from __future__ import annotations

from peftlab.measures import MEASURES
from peftlab.measures import label as measure_label
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Details, Figure, Paragraph, Section, Strong, Table
from peftlab.stages.report.stored import Results, conf_label, not_measured


def _measures(res: Results) -> list[str]:
    """Every measure the drift table holds, in registration order."""
    present = {m for r in res.drift for m in (r.get("values") or {})}
    return [m for m in MEASURES.names() if m in present]


def drift(res: Results) -> Section:
    s = Section("Representational drift", "drift")
    if not res.drift:
        return s.add(not_measured("representation drift records", "drift"))
    v = res.view
    methods = list(v.methods)
    first = res.drift[0]
    measures = _measures(res)
    labels = {m: measure_label(m) for m in measures}
    boot = next((r["bootstrap"] for r in res.drift if r.get("bootstrap")), None)
    s.add(Paragraph.of(
        f"Similarity of each run's pooled representations ({first.get('pooling')} pooling, "
        f"n = {first.get('n')} probe examples) to the base model's, per layer, for every "
        f"measure computed ({', '.join(labels.values())}). Lines: mean over learned runs, "
        f"band: {conf_label(res)} t-interval over seeds; dotted: the null floor (95% quantile of "
        "the measure after shuffling the pairing of examples, at the same n and d); dashed and "
        "hatched: the seed-to-seed control (two runs of the same method). Layer 0 (embeddings) "
        "is drawn apart and left out of every band; layers where a measure is undefined are "
        "left out of every mean."
        + (f" The primary measure ({measure_label(boot['measure'])}) also has a bootstrap "
           f"interval over probe examples per run and layer ({boot['n_resamples']} resamples)."
           if boot else "")))
    degenerate = [d for d in res.degenerate_runs()]
    if degenerate:
        s.add(Paragraph.of(f"{len(degenerate)} degenerate run(s) are left out of the lines, "
                           "floors, controls and tests: "
                           + ", ".join(d["run_id"] for d in degenerate) + "."))
    layer_sums = res.summaries_of("drift_layer")
    for task in v.tasks:
        ls = [r for r in layer_sums if r["task"] == task]
        if not ls and any(r["task"] == task for r in res.drift):
            s.add(Paragraph.of(Strong(f"{task}:"), " every run with drift records is "
                               "degenerate, so there is no learned run to draw; its drift "
                               "comparisons are void."))
        if ls:
            s.add(Figure(figs.drift_figure(task, ls, measures, methods, labels),
                         f"Per-layer drift on {task}",
                         f"{task}: similarity to the base model per layer, one panel per "
                         "measure (line: mean over learned runs; band: t-interval over seeds; "
                         "dotted: null floor q95; dashed/hatched: seed-to-seed)."))
    undefined = sorted({(v.tasks.index(r["task"]), r["layer"], m, why) for r in res.drift
                        for m, why in (r.get("undefined") or {}).items()})
    if undefined:
        s.add(Table(["Task", "Layer", "Measure", "Why undefined"],
                    [[v.tasks[t], str(layer), measure_label(m), why]
                     for t, layer, m, why in undefined],
                    "Layers left out of the means (measure undefined there)."))
    rows = []
    for sm in res.summaries_of("drift"):
        layers = sm["layers"]
        span = f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else str(layers[0])
        rows.append([sm["task"], measure_label(sm["measure"]), f"{sm['band']} ({span})",
                     sm["method"], str(sm["n"]), f.similarity(sm.get("mean")),
                     f.interval(sm.get("ci_low"), sm.get("ci_high"), f.similarity),
                     f.similarity(sm.get("null_q95")), f.similarity(sm.get("null_mean")),
                     f.pvalue(sm.get("p_max")), f.similarity(sm.get("seed_to_seed_mean")),
                     f.interval(sm.get("seed_to_seed_ci_low"), sm.get("seed_to_seed_ci_high"),
                                f.similarity)])
    s.add(Table(["Task", "Measure", "Band (layers)", "Method", "Runs", "Mean",
                 f"{conf_label(res)} CI over seeds", "Null floor (q95)", "Null mean",
                 "Permutation p (max)", "Seed-to-seed", "Seed-to-seed CI"], rows,
                "Every measure per layer band: base vs run over learned runs, beside its null "
                "floor (the largest permutation p over runs and layers: every value clears its "
                "floor when it is small) and the seed-to-seed control. Procrustes is a distance "
                "(0 = same up to rotation); the rest are similarities.",
                numeric=[False, False, False, False, True, True, True, True, True, True, True,
                         True]))
    lrows = []
    for sm in layer_sums:
        lrows.append([sm["task"], measure_label(sm["measure"]),
                      f"{sm['layer']} ({sm.get('layer_name') or ''})", sm["method"],
                      str(sm["n"]), f.similarity(sm.get("mean")),
                      f.interval(sm.get("ci_low"), sm.get("ci_high"), f.similarity),
                      f.interval(sm.get("bootstrap_low"), sm.get("bootstrap_high"),
                                 f.similarity),
                      f.similarity(sm.get("null_q95")), f.pvalue(sm.get("p_max")),
                      f.similarity(sm.get("seed_to_seed_mean"))])
    if lrows:
        # hundreds of rows: folded in both renderings, the band table above summarises them
        layer_table = Table(
            ["Task", "Measure", "Layer", "Method", "Runs", "Mean",
             f"{conf_label(res)} CI over seeds", "Probe bootstrap CI (mean bounds)",
             "Null floor (q95)", "Permutation p (max)", "Seed-to-seed"], lrows,
            "Every measure per layer (base vs run, learned runs): the t-interval over seeds, "
            "the bootstrap interval over probe examples (primary measure; bounds averaged over "
            "runs), the null floor and the largest permutation p.",
            numeric=[False, False, False, False, True, True, True, True, True, True, True],
            fold=False)
        s.add(Details(f"Per-layer values ({len(lrows)} rows; the band table above summarises "
                      "them)", [layer_table]))
    comps = [c for c in res.comparisons_of("drift")]
    if comps:
        s.add(fnd.comparison_table(comps, "Method vs method on base-vs-run similarity, paired "
                                          "by seed, per task and band, and across tasks (mixed "
                                          "model)."))
    noise = res.comparisons_of("seed_noise")
    if noise:
        s.add(fnd.comparison_table(noise, "Drift against seed noise: each run's similarity to "
                                          "the base vs the mean seed-to-seed similarity of the "
                                          "pairs containing it (mean over transformer layers; "
                                          "exploratory, the references share pairs)."))
    return s
