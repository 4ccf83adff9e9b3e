"""The report's forgetting section: what each run cost the base model's other abilities.

Read from the `forgetting` table (`records.ForgettingRecord`, written by the forgetting stage) and
the `stats` table (the forgetting summaries, the paired comparisons of family
exploratory/forgetting and the intruder-dimension correlations); nothing here computes a statistic
the report prints. The learning-forgetting figure puts each run's main metric (what it learned)
against its forgetting on each measure (what it lost), one point per run, coloured by method.

Signs, as stored: a probe's change is run minus base accuracy on the off-task probe test examples
(negative = forgotten); the LM loss change is after minus before in nats per token (positive =
forgotten).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from peftlab.records import ForgettingRecord, read
from peftlab.results import main_metric_value
from peftlab.stages.report import figures as figs
from peftlab.stages.report import findings as fnd
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Paragraph, Section, Strong, Table
from peftlab.stages.report.stored import not_measured

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def unit_label(r: ForgettingRecord | dict[str, Any]) -> str:
    """'rte probe, block_3' or 'held-out LM loss' (a record or a stats record of one unit)."""
    get = r.get if isinstance(r, dict) else lambda k: getattr(r, k)
    if get("measure") == "lm_loss":
        return "held-out LM loss"
    return f"{get('probe_task')} probe, {get('layer_name')}"


def axis_label(measure: str) -> str:
    """Short enough for a panel a third of the figure wide; the caption gives the signs."""
    return ("loss change, after \u2212 before (nats/token)" if measure == "lm_loss"
            else "accuracy change, run \u2212 base")


def _units(recs: list[ForgettingRecord]) -> list[ForgettingRecord]:
    """One record per measured unit (the base's), probes first by task and layer."""
    base = [r for r in recs if not r.is_run and r.status == "done"]
    return sorted(base, key=lambda r: (r.measure != "probe", r.probe_task or "", r.layer or 0))


def learning_forgetting_figure(panels: list[dict[str, Any]], methods: list[str],
                               tasks: list[str]) -> bytes:
    """One panel per forgetting measure: each run's main metric (y) against its forgetting (x),
    with the run's interval over probe test examples / held-out texts as a horizontal bar.

    panels: [{title, measure, points: [{method, task, x, lo, hi, y, degenerate}]}]; colour: the
    method; marker: the tuning task (a degenerate run is drawn hollow); vertical line: no change.
    """
    cols = min(len(panels), 3)
    rows = -(-len(panels) // cols)
    fig = figs.new_figure(2.6 * cols + 0.8, 2.35 * rows + 0.5)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, panel in zip(axes, panels, strict=False):
        for p in panel["points"]:
            c = figs.color(methods, p["method"])
            if p.get("lo") is not None and p.get("hi") is not None:
                ax.plot([p["lo"], p["hi"]], [p["y"], p["y"]], color=c, lw=1.0, alpha=0.55,
                        zorder=2)
            marker = MARKERS[tasks.index(p["task"]) % len(MARKERS)] if p["task"] in tasks \
                else "o"
            ax.scatter([p["x"]], [p["y"]], s=26, marker=marker, zorder=3,
                       facecolors="white" if p["degenerate"] else c, edgecolors=c)
        ax.axvline(0, color="#57606a", lw=0.9, ls=":")
        ax.set_title(panel["title"], fontsize=8)
        ax.set_xlabel(axis_label(panel["measure"]), fontsize=7)
        ax.set_ylabel("task main metric", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    legend_ax = axes[0]
    # the legend lists only what is drawn: a task whose runs have no point (e.g. SST-2 when
    # every probe is on SST-2) gets no marker entry
    drawn = [p for panel in panels for p in panel["points"]]
    for m in [m for m in methods if any(p["method"] == m for p in drawn)]:
        legend_ax.scatter([], [], color=figs.color(methods, m), marker="o", label=m)
    for t in [t for t in tasks if any(p["task"] == t for p in drawn)]:
        legend_ax.scatter([], [], color="#57606a", marker=MARKERS[tasks.index(t) % len(MARKERS)],
                          label=f"tuned on {t}")
    if any(p["degenerate"] for p in drawn):
        legend_ax.scatter([], [], facecolors="white", edgecolors="#57606a",
                          label="degenerate run")
    legend_ax.legend(fontsize=6, frameon=False, loc="best")
    return figs.to_png(fig)


def forgetting(res: Any) -> Section:
    """The forgetting section (`res`: the report's `stored.Results`)."""
    s = Section("Forgetting", "forgetting")
    store = res.ctx.store
    own = set(res.view.run_ids.values())
    recs = [r for r in read(store, ForgettingRecord) if r.run_id is None or r.run_id in own]
    if not recs:
        return s.add(not_measured("forgetting records", "forgetting"))
    units = _units(recs)
    probe = next((u for u in units if u.measure == "probe"), None)
    lm = next((u for u in units if u.measure == "lm_loss"), None)
    spans: list[str] = [
        "What tuning cost the base model's other abilities, measured on data no run was tuned "
        "on. "]
    if probe is not None:
        spans.append(
            f"Off-task probes: a logistic-regression probe per model on its {probe.pooling}-"
            f"pooled hidden states of another task ({probe.n_train} training, {probe.n_test} "
            "test examples; C chosen by cross-validation on the training examples only); the "
            "change is the run's probe accuracy minus the base's on the same test examples, "
            "with a paired bootstrap interval over them. ")
    if lm is not None:
        spans.append(
            f"Held-out LM loss: each tuned backbone read by the base model's LM head "
            f"({lm.head}) on {lm.n_texts} held-out texts ({', '.join(lm.sources or [])}); the "
            "change is the loss after minus before in nats per token, with a paired bootstrap "
            "interval over texts. ")
    spans.append("Degenerate runs are drawn hollow and left out of the tests.")
    s.add(Paragraph.of(*spans))
    lm_skipped = next((r for r in recs if not r.is_run and r.measure == "lm_loss"
                       and r.status == "skipped"), None)
    if lm is None and lm_skipped is not None:
        s.add(Paragraph.of(Strong("Held-out LM loss: not applicable"),
                           f" ({lm_skipped.reason}); no LM-loss comparison is made."))
    skipped = _skipped_table(recs)
    if skipped is not None:
        s.add(skipped)
    if not units:
        return s.add(Paragraph.of(Strong("Not measured"), ": no forgetting measure was taken "
                                  "(every one was skipped, for the reasons above)."))
    figure = _figure(res, recs, units)
    if figure is not None:
        s.add(figure)
    summaries = [x for x in res.summaries_of("forgetting")]
    floors = {unit_label(x): x["void_reason"] for x in summaries if x.get("void_reason")}
    if floors:
        s.add(Paragraph.of(
            Strong(f"Probes with nothing to forget ({len(floors)} of "
                   f"{len({unit_label(x) for x in summaries})} measures):"),
            " the base model's own probe does not beat the majority-class rate, so these "
            "measures cannot show forgetting and their comparisons are void: "
            + "; ".join(f"{label}: {why}" for label, why in floors.items()) + "."))
    if summaries:
        s.add(_summary_table(res, summaries, {u.unit: u for u in units}, recs))
    s.add(_run_table(res, recs))
    comps = res.comparisons_of("forgetting")
    if comps:
        s.add(fnd.comparison_table(comps, "PEFT vs full fine-tuning on forgetting, paired by "
                                          "seed, per tuning task and measure (family "
                                          "exploratory/forgetting; no equivalence margin is "
                                          "declared, so no 'equivalent' claim is made)."))
    s.add(*_correlation_blocks(res))
    return s


def _skipped_table(recs: list[ForgettingRecord]) -> Table | None:
    """Measures that were not taken, one row per (measure, reason) with the models it covers."""
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in recs:
        if r.status == "skipped":
            groups[(r.measure, r.reason or f.MISSING)].append(r.model_key)
    if not groups:
        return None
    rows = [[{"lm_loss": "held-out LM loss", "probe": "off-task probe"}[m], reason,
             f"{len(keys)}: {', '.join(keys[:4])}" + (f", and {len(keys) - 4} more"
                                                     if len(keys) > 4 else "")]
            for (m, reason), keys in groups.items()]
    return Table(["Measure", "Why skipped", "Models"], rows,
                 "Forgetting measures that were not taken, with the forgetting stage's reason.")


def _figure(res: Any, recs: list[ForgettingRecord], units: list[ForgettingRecord]
            ) -> Figure | None:
    view = res.view
    owner = view.method_of_run()
    panels = []
    for unit in units:
        points = []
        for r in recs:
            if not (r.is_run and r.unit == unit.unit and r.status == "done"
                    and r.difference is not None and r.run_id in owner):
                continue
            task, method, seed = owner[r.run_id]
            run = view.done(task, method, seed)
            y = main_metric_value(run) if run is not None else None
            if y is None:
                continue
            points.append({"method": method, "task": task, "x": r.difference, "lo": r.ci_low,
                           "hi": r.ci_high, "y": y,
                           "degenerate": (res.verdicts.get((task, method, seed)) or {}).get(
                               "learned") is False})
        if points:
            panels.append({"title": unit_label(unit), "measure": unit.measure,
                           "points": points})
    if not panels:
        return None
    return Figure(learning_forgetting_figure(panels, list(view.methods), list(view.tasks)),
                  "Learning against forgetting",
                  "Learning against forgetting: each run's main metric on its own task (y) "
                  "against its forgetting on each measure (x, with its interval over probe test "
                  "examples or held-out texts): probe accuracy change below 0 and LM loss change "
                  "above 0 mean forgotten; colour: method, marker: the task it was tuned on; "
                  "hollow: degenerate run; dotted: no change.")


def _summary_table(res: Any, summaries: list[dict[str, Any]],
                   units: dict[str, ForgettingRecord], recs: list[ForgettingRecord]) -> Table:
    runs = [r for r in recs if r.is_run and r.measure == "lm_loss" and r.status == "done"]
    rows = []
    for sm in summaries:
        key = "lm_loss" if sm["measure"] == "lm_loss" else (
            f"probe {sm['probe_task']} L{sm['layer']}")
        unit = units.get(key)
        base = unit.accuracy if unit else None
        if sm["measure"] == "lm_loss":  # the base on this task's held-out sources
            base = next((r.loss_before for r in runs if r.task == sm["task"]
                         and r.loss_before is not None), unit.loss if unit else None)
        comp = res.find(area="forgetting", task=sm["task"], measure=sm["measure"],
                        probe_task=sm.get("probe_task"), layer=sm.get("layer"),
                        method_a=sm["method"])
        rows.append([sm["task"], unit_label(sm), sm["method"], str(sm["n"]), f.metric(base),
                     f.metric(sm.get("base_majority_rate")), f.metric(sm.get("mean")),
                     f.interval(sm.get("ci_low"), sm.get("ci_high"), f.metric),
                     fnd.outcome_cell(comp) if comp else f.MISSING])
    return Table(["Tuned on", "Measure", "Method", "Runs", "Base", "Majority class",
                  "Mean change", f"{round(100 * (1 - res.spec.stats.alpha))}% CI over seeds",
                  "PEFT vs full (outcome)"], rows,
                 "Forgetting per tuning task, measure and method: the mean change over learned "
                 "runs with its t-interval over seeds, beside the base model's own value "
                 "(probe accuracy, or LM loss in nats per token) and the probe's majority-class "
                 "rate on its test examples (the floor a probe must beat to read the task).",
                 numeric=[False, False, False, True, True, True, True, True, False])


def _run_table(res: Any, recs: list[ForgettingRecord]) -> Table:
    view = res.view
    owner = view.method_of_run()
    order = {rid: i for i, rid in enumerate(view.run_ids.values())}
    rows = []
    runs = sorted((r for r in recs if r.is_run and r.status == "done" and r.run_id in owner),
                  key=lambda r: (order.get(r.run_id, 0), r.measure != "probe",
                                 r.probe_task or "", r.layer or 0))
    for r in runs:
        task, method, seed = owner[r.run_id]
        run = view.done(task, method, seed)
        before, after = ((r.loss_before, r.loss_after) if r.measure == "lm_loss"
                         else (r.base_accuracy, r.accuracy))
        rows.append([r.run_id, unit_label(r), f.metric(before), f.metric(after),
                     f"{f.metric(r.difference)} {f.interval(r.ci_low, r.ci_high, f.metric)}",
                     f.metric(main_metric_value(run) if run else None)])
    return Table(["Run", "Measure", "Base", "Run", "Change [CI]", "Main metric"], rows,
                 "Every run on every forgetting measure: the base's value, the run's, and the "
                 "change with its paired bootstrap interval (probe test examples or held-out "
                 "texts).", numeric=[False, False, True, True, True, True])


def _correlation_blocks(res: Any) -> list[Any]:
    corr = [r for r in res.stats if r.get("kind") == "correlation"
            and r.get("area") == "forgetting"]
    lead = Strong("Intruder dimensions and forgetting")
    if not corr:
        return [Paragraph.of(lead, ": ", Strong("not measured"), " (no correlation records: "
                             "run peftlab stats).")]
    if all(c["status"] == "not measured" for c in corr):
        return [Paragraph.of(lead, ": ", Strong("not measured"), f" ({corr[0]['reason']}).")]
    rows = []
    for c in corr:
        n_by = defaultdict(int)
        for m in c.get("methods") or []:
            n_by[m] += 1
        rows.append([unit_label(c), str(c["n"]),
                     ", ".join(f"{m} {k}" for m, k in n_by.items()) or f.MISSING,
                     f.metric(c.get("estimate")),
                     f.interval(c.get("ci_low"), c.get("ci_high"), f.metric),
                     f.pvalue(c.get("p")), f.pvalue(c.get("p_adjusted")),
                     c.get("reason") or c.get("p_method", "")])
    first = corr[0]
    return [Paragraph.of(
        lead, ": across learned runs (every task and method pooled), Spearman's rank "
        "correlation between a run's intruder-dimension count (summed over its adapted "
        "matrices, weight-space section) and its forgetting on each measure; interval: "
        f"Fisher z ({round(100 * first.get('confidence', 0.95))}%), p: permutation of the "
        f"pairing, {fnd.correction_name(first)}-corrected over these correlations. Methods "
        "are pooled, so a difference between methods alone can drive a correlation (the runs "
        "of each method are counted beside it); degenerate runs are left out."),
        Table(["Measure", "Runs (n)", "Runs per method", "Spearman rho", "CI", "p",
               "Corrected p", "p method / why undefined"], rows,
              numeric=[False, True, False, True, True, True, True, False])]
