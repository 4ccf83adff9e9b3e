"""The search stage: tune each method's hyperparameters per task before the final runs.

    peftlab search SPEC           # or `peftlab run SPEC`: the stage runs before finetune

Runs only when the spec has a `search:` block. For every (task, method) whose search has not
finished, trials are asked from Optuna (storage: <study dir>/search/optuna.journal), trained on
the training subset minus a seeded, stratified validation split and scored on that split
(`peftlab.hpsearch`). Every trial and a summary per search go to the `search` table; a finished
search's best values become part of its final runs' configuration and ids (`Study.resolve`), so
finetune trains them next, on the full training subset. A search killed mid-trial resumes where
it stopped: the trial that was running is retried and does not count against the budget.

Trials are units of the study's executor (`peftlab.execution`): with `execution.parallel_trials`
> 1 and the Ray backend, that many trials of a search train at once on the cluster while this
process asks and tells Optuna and writes the records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.context import Context
    from peftlab.plan import Study
    from peftlab.search_space import SearchConfig

STORAGE_DIR = "search"


def unconfigured(study: Study) -> str | None:
    """Why the spec gives this stage nothing to do (None: it does). `peftlab search SPEC` then
    refuses to run; the pipeline skips the stage."""
    if study.spec.search is None:
        return (f"{study.where('search')}: not configured (the spec has no `search:` block; "
                "add one to tune hyperparameters before the final runs)")
    return None


def run(ctx: Context) -> None:
    """Run every unfinished search of the study (nothing without a `search` block)."""
    from peftlab.logs import track
    from peftlab.records import finished_searches

    study = ctx.study
    if study.spec.search is None:
        ctx.console.print("search: the spec has no `search` block; nothing to search")
        return
    finished = study.search_outcomes
    todo = [sc for sc in study.search_configs() if sc.search_id not in finished]
    if not todo:
        ctx.console.print("search: every search is done")
        return
    for sc in track(ctx.console, "search", todo, label=lambda sc: sc.study_name):
        rec = run_search(ctx, sc)
        best = rec.best
        if best is None:
            ctx.console.print(f"[red]no complete trial[/] {sc.study_name}: its final runs "
                              "cannot be resolved (see the search table)")
        else:
            shown = ", ".join(f"{k}={_fmt(v)}" for k, v in best["params"].items())
            score = ", ".join(f"{k} {_fmt(v)}" for k, v in best["values"].items())
            ctx.console.print(f"done {sc.study_name}: trial {best['trial']} ({score}) {shown}")
    study.refresh(finished_searches(ctx.store))  # the final runs now resolve with the chosen values


def _fmt(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def run_search(ctx: Context, sc: SearchConfig):
    """Drive one search to its budget, storing every trial; returns its summary record."""
    from peftlab.hpsearch import STORAGE_NAME, open_session, optimise
    from peftlab.records import write
    from peftlab.validate import check_batch_fits

    task = ctx.data.task(sc.task)
    train_df = ctx.data.split(sc.task, "train")  # the eval split is never loaded here
    path = ctx.store.path(STORAGE_DIR, STORAGE_NAME)
    session = open_session(sc, task, train_df, path)
    check_batch_fits(ctx.study, sc.base, len(session.fit))
    where = ctx.study.where(f"search (task {sc.task!r}, method {sc.method!r})")

    def make_run(values):
        rc = ctx.study.with_values(sc.base, values, where=where)
        check_batch_fits(ctx.study, rc, len(session.fit))  # batch_size may be searched
        return rc

    return optimise(
        session, device=ctx.study.spec.device, make_run=make_run,
        on_trial=lambda rec: write(ctx.store, [rec]),
        on_summary=lambda rec: write(ctx.store, [rec]),
        storage_rel=str(path.relative_to(ctx.store.root)),
        where=ctx.study.where(f"methods.{sc.method}"), executor=ctx.executor,
        parallel=ctx.study.spec.execution.parallel_trials)
