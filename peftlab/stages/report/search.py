"""The report's search section: how each method's hyperparameters were chosen.

Read from the `search` table (`records.SearchTrialRecord` per trial, `records.SearchRecord` per
(task, method) search, both written by the search stage); nothing here computes a statistic the
report prints: the best trial, the history (best value so far), the parameter importances
(Optuna's fANOVA, or the reason there are none) and the budget sentence are stored in the summary.

Per task: the sentence stating each method's budget (a fair comparison gives every method of a
task the same one), the best parameters of each method, every trial, the parameter importances,
and one figure of the optimisation history (each trial's objective on the validation split and
the best so far, per method; a pruned trial at the last value it reported).

A study without a `search:` block says so in one sentence: its methods trained at the rates the
spec fixes (listed from the run configs), and where they came from is not checked, which is
itself worth knowing when reading the comparisons.
"""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import MaxNLocator

from peftlab.records import SearchRecord, SearchTrialRecord, read_search
from peftlab.stages.report import figures as figs
from peftlab.stages.report import format as f
from peftlab.stages.report.document import Figure, Paragraph, Section, Table
from peftlab.stages.report.stored import learning_rates_text, not_measured


def value_text(v: Any) -> str:
    """A searched value or an objective as printed: floats to 4 significant digits."""
    if isinstance(v, bool) or not isinstance(v, float):
        return f.text(v) if not isinstance(v, list) else ", ".join(map(str, v))
    return f"{v:.4g}"


def params_text(params: dict[str, Any] | None) -> str:
    """'learning_rate=0.0002, r=8' (sorted by name), or the missing mark."""
    if not params:
        return f.MISSING
    return ", ".join(f"{k}={value_text(v)}" for k, v in sorted(params.items()))


def values_text(values: dict[str, Any] | None) -> str:
    if not values:
        return f.MISSING
    return ", ".join(f"{k} {value_text(v)}" for k, v in values.items())


def history_figure(task: str, summaries: list[SearchRecord],
                   trials: list[SearchTrialRecord], methods: list[str]) -> bytes:
    """One task's optimisation history: x trial number, y the first objective on the validation
    split. Per method (colour): complete trials as dots, the best so far as a step line (both
    from the summary's stored history), pruned trials as crosses at the last value they reported
    (from the trial records)."""
    fig = figs.new_figure(6.0, 3.0)
    ax = fig.subplots()
    objective = summaries[0].objectives[0]["name"] if summaries else "objective"
    for k, s in enumerate(summaries):
        c = figs.color(methods, s.method)
        dx = 0.08 * (k - (len(summaries) - 1) / 2)  # methods side by side: equal values show
        done = [h for h in s.history if h.get("value") is not None]
        ax.scatter([h["trial"] + dx for h in done], [h["value"] for h in done], color=c, s=18,
                   zorder=3, label=s.method)
        best = [h for h in s.history if h.get("best") is not None]
        if best:
            ax.step([h["trial"] for h in best], [h["best"] for h in best], where="post",
                    color=c, lw=1.3, alpha=0.8)
        pruned = [t for t in trials if t.search_id == s.search_id and t.state == "pruned"
                  and t.intermediate]
        if pruned:
            ax.scatter([t.number + dx for t in pruned],
                       [t.intermediate[-1]["value"] for t in pruned], color=c, marker="x", s=22,
                       zorder=3)
    ax.plot([], [], "x", color="#57606a", label="pruned (last report)")
    ax.plot([], [], "-", color="#57606a", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"{objective} (validation split)")
    ax.set_title(task, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncols=2)
    return figs.to_png(fig)


def _trial_rows(trials: list[SearchTrialRecord], methods: list[str]) -> list[list[str]]:
    rows = []
    rank = {m: i for i, m in enumerate(methods)}
    for t in sorted(trials, key=lambda t: (rank.get(t.method, len(rank)), t.method, t.number)):
        if t.state == "pruned":
            outcome = f"pruned at step {t.pruned_at_step}"
        elif t.state in ("failed", "interrupted"):
            outcome = t.failure_reason or t.state
        else:
            outcome = values_text(t.values)
        rows.append([t.method, str(t.number), t.state, params_text(t.params), outcome,
                     f.integer(t.steps), f.seconds(t.duration_s)])
    return rows


def _importance_rows(summaries: list[SearchRecord]) -> list[list[str]]:
    rows = []
    for s in summaries:
        if s.importances:
            shown = ", ".join(f"{k} {f.share(v)}" for k, v in
                              sorted(s.importances.items(), key=lambda kv: -kv[1]))
            if len(s.space) == 1:  # fANOVA gives a lone parameter all of the variance
                shown += " (the only searched parameter, so all of the variance by construction)"
            rows.append([s.method, s.importance_method or f.MISSING, shown])
        else:
            rows.append([s.method, s.importance_method or f.MISSING,
                         f"none: {s.importance_error or 'the search has not finished'}"])
    return rows


def search_section(res: Any) -> Section:
    """The search section of the report (`res`: `stored.Results`)."""
    s = Section("Hyperparameter search", "search")
    if res.spec.search is None:
        rates = learning_rates_text(res)
        return s.add(Paragraph.of(
            "No search ran in this study: every method trained at the hyperparameters the spec "
            "fixes" + (f" (learning rates: {rates})" if rates else "") + ". Where those values "
            "came from (a search run elsewhere, as a spec's comments may say) is not recorded "
            "in the study directory, so peftlab does not check it; a difference between methods "
            "may come from these choices."))
    trials, summaries = read_search(res.ctx.store)
    if not summaries:
        return s.add(not_measured("search results", "search"))
    methods = list(res.spec.methods)
    tasks = [t.name for t in res.spec.tasks]
    order = {(t, m): (i, j) for i, t in enumerate(tasks) for j, m in enumerate(methods)}
    summaries = sorted(summaries, key=lambda r: order.get((r.task, r.method), (len(tasks), 0)))
    s.add(Paragraph.of(
        "Each method's hyperparameters were searched per task with Optuna on a validation split "
        "carved from the training subset (the evaluation split the runs report was never "
        "used); the final runs train on the whole training subset with the best trial's "
        "values."))
    for task in dict.fromkeys(r.task for r in summaries):
        mine = [r for r in summaries if r.task == task]
        ids = {r.search_id for r in mine}
        task_trials = [t for t in trials if t.search_id in ids]
        sub = s.sub(task)
        sub.add(Paragraph.of(" ".join(r.budget_sentence or f.MISSING for r in mine)))
        sub.add(Table(
            ["Method", "Status", "Best trial", "Best parameters", "Validation value",
             "Trials (complete / pruned / failed)"],
            [[r.method, r.status, f.text(r.best["trial"]) if r.best else f.MISSING,
              params_text(r.best["params"]) if r.best else "no complete trial",
              values_text(r.best["values"]) if r.best else f.MISSING,
              f"{r.counts.get('complete', 0)} / {r.counts.get('pruned', 0)} / "
              f"{r.counts.get('failed', 0)}"] for r in mine],
            f"The trial each method's final runs on {task} use.",
            numeric=[False, False, True, False, True, False]))
        sub.add(Table(["Method", "Trial", "State", "Parameters", "Value / outcome", "Steps",
                       "Time (s)"], _trial_rows(task_trials, methods),
                      f"Every trial of the searches on {task}, values on the validation split.",
                      numeric=[False, True, False, False, False, True, True]))
        sub.add(Table(["Method", "Estimator", "Share of the objective's variance"],
                      _importance_rows(mine),
                      f"Parameter importances on {task} (Optuna's fANOVA over the complete "
                      "trials)."))
        sub.add(Figure(history_figure(task, mine, task_trials, methods),
                       f"Optimisation history on {task}",
                       f"Search on {task}: each complete trial's objective on the validation "
                       "split (dots), the best so far (step line) and pruned trials at the last "
                       "value they reported (crosses), per method."))
    return s
