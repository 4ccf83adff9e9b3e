"""Did each run learn, and did it improve on its start? Every done run's main metric judged against
its task's baselines record (`peftlab.baseline_scores.judge`) and, where the run started from more
than nothing (a head fitted on the frozen base, `training.head_init: probe`), against that start,
example by example (`baseline_scores.judge_start`); recomputed on every run of the stage: the
verdicts the other areas use to leave degenerate runs out, and one `summary/run/<run id>` record
per run (area "runs").

A task with done runs and no baselines record (a study run without the `baselines` stage), or
whose runs start from the probe-fitted head and whose record has not kept that head's logits, gets
its record computed here first (`baseline_records.compute`). A run that still cannot be judged
(`learned` None, with the reason) is never counted as learned: it is left out of the comparisons
that leave degenerate runs out, as "not judged".

Every verdict has `learned`, `criterion`, `reason` (the learned rule) and `improved`, `change`,
`start`, `start_value`, `improvement` {estimate, ci_low, ci_high}, `improvement_reason` (the start
rule; `improved` None where there is no non-trivial start or it cannot be judged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from peftlab.baseline_scores import judge, judge_start, no_start
from peftlab.records import BaselineRecord, read
from peftlab.results import RunView

if TYPE_CHECKING:
    from peftlab.context import Context

PROBE_START = "the probe-fitted head"


@dataclass
class Verdicts:
    """Every planned run's learned verdict (see `run_verdicts`)."""

    by_run: dict[tuple[str, str, int], dict[str, Any]]  # (task, method, seed) -> verdict

    def degenerate(self, task: str, method: str, seed: int) -> str | None:
        """Why the run is left out of comparisons that need learned runs ("degenerate run
        (...)", or "not judged (...)" when it could not be judged), or None when it learned
        (or is not a done run)."""
        v = self.by_run.get((task, method, seed))
        if v is None or v.get("learned") is True:
            return None
        if v.get("learned") is None:
            return f"{method}: not judged ({v.get('reason')})"
        return f"{method}: degenerate run ({v['reason']})"

    def excluded(self, task: str, method: str, seeds: list[int]) -> dict[int, str]:
        return {s: r for s in seeds if (r := self.degenerate(task, method, s)) is not None}

    def all_degenerate(self, task: str) -> bool:
        judged = [v for (t, _, _), v in self.by_run.items() if t == task]
        return bool(judged) and all(v.get("learned") is False for v in judged)


def _probed(rec: dict[str, Any]) -> bool:
    """Whether the run started from the probe-fitted head (training.head_init: probe)."""
    return ((rec.get("config") or {}).get("training") or {}).get("head_init") == "probe"


def ensure_baselines(ctx: Context, view: RunView) -> dict[str, str]:
    """Compute the baselines records the verdicts need and the store lacks (tasks with done
    runs and no record, or probed runs and no start logits); returns task -> why it could not
    be computed."""
    from peftlab.baseline_records import compute
    from peftlab.errors import PeftlabError

    have = {r.task: r for r in read(ctx.store, BaselineRecord)}
    need = []
    for task in view.tasks:
        done = [r for (t, m, s), r in view.records.items() if t == task
                and view.done(t, m, s) is not None]
        if not done:
            continue
        rec = have.get(task)
        if rec is None or (any(_probed(r) for r in done) and rec.probe_head is not None
                           and not _logits_present(ctx, rec)):
            need.append(task)
    failed: dict[str, str] = {}
    for task in need:
        ctx.console.print(f"stats: computing the baselines of {task} (the study directory has "
                          "none with what the verdicts need)")
        try:
            compute(ctx, [task])
        except PeftlabError as err:  # e.g. the data cannot be read here
            failed[task] = str(err)
    return failed


def _logits_present(ctx: Context, rec: BaselineRecord) -> bool:
    return rec.start_logits is not None and ctx.store.path(*rec.start_logits.split("/")).is_file()


def run_verdicts(ctx: Context, view: RunView) -> tuple[Verdicts, list[tuple[str, dict]]]:
    """Judge every done run against its task's baselines record and its start: (verdicts,
    summary records)."""
    failed = ensure_baselines(ctx, view)
    baselines = {r.task: r for r in read(ctx.store, BaselineRecord)}
    spec = ctx.study.spec
    starts: dict[str, dict[str, np.ndarray] | str] = {}
    by_run: dict[tuple[str, str, int], dict[str, Any]] = {}
    records = []
    for task in view.tasks:
        base = baselines.get(task)
        for method in view.methods:
            for seed in view.seeds:
                rec = view.done(task, method, seed)
                if rec is None:
                    continue
                probed = _probed(rec)
                if base is not None:
                    v = judge(rec.get("metrics") or {}, rec.get("main_metric") or "",
                              base.baselines(), (base.untrained_head or {}).get("metrics"),
                              (base.probe_head or {}).get("metrics") if probed else None,
                              fallback=ctx.data.task(task).task_kind.learned_fallback)
                    source = "baselines table"
                elif (rec.get("baselines") or {}).get("learned") is not None:
                    v, source = dict(rec["baselines"]), "the run's own record"
                else:
                    why = (f"the baselines of {task} could not be computed: {failed[task]}"
                           if task in failed else f"no baselines record for {task}")
                    v = {"learned": None, "criterion": None, "reason": why}
                    source = "none"
                if not probed:
                    v.update(no_start("the run started from an untrained head "
                                      "(training.head_init: random): no fitted start to "
                                      "compare it with"))
                else:
                    v.update(_start_verdict(ctx, task, rec, base, starts,
                                            spec.training.bootstrap_samples,
                                            1 - spec.stats.alpha))
                by_run[(task, method, seed)] = v
                run_id = view.run_ids[(task, method, seed)]
                records.append((f"summary/run/{run_id}", {
                    "kind": "summary", "area": "runs", "task": task, "method": method,
                    "method_type": view.methods[method], "seed": seed, "run_id": run_id,
                    "source": source, **v}))
    return Verdicts(by_run), records


def _start_verdict(ctx: Context, task: str, rec: dict[str, Any], base: BaselineRecord | None,
                   starts: dict[str, Any], n_bootstrap: int, confidence: float
                   ) -> dict[str, Any]:
    """The run against the probe-fitted head it started from: its stored evaluation logits and
    the start's (the baselines record's `start_logits`), scored on the same examples."""
    from safetensors.numpy import load_file

    from peftlab.baseline_records import read_start_logits

    if base is None or base.start_logits is None:
        why = ("no baselines record for the task" if base is None else base.probe_error
               or "the baselines record keeps no logits of the probe-fitted head")
        return no_start(f"not judged against its start: {why}")
    if task not in starts:
        try:
            starts[task] = read_start_logits(ctx.store.root, base.start_logits)
        except OSError as err:
            starts[task] = f"{base.start_logits} cannot be read ({err})"
    start = starts[task]
    if isinstance(start, str):
        return no_start(f"not judged against its start: {start}")
    try:
        logits = load_file(str(ctx.store.path(*rec["eval_logits"].split("/"))))["logits"]
    except (OSError, KeyError, AttributeError, TypeError) as err:
        return no_start(f"not judged against its start: the run's evaluation logits "
                        f"({rec.get('eval_logits')}) cannot be read ({err})")
    labels = start["labels"]
    if logits.shape[0] != labels.shape[0]:
        return no_start(f"not judged against its start: the run was evaluated on "
                        f"{logits.shape[0]} examples, its start on {labels.shape[0]}")
    task_def = ctx.data.task(task)
    kind = task_def.task_kind
    return judge_start(rec.get("main_metric") or task_def.metrics[0], labels,
                       kind.predictions(task_def, logits),
                       kind.predictions(task_def, start["logits"]), start=PROBE_START,
                       n_bootstrap=n_bootstrap, confidence=confidence,
                       seed=int(rec.get("seed") or 0))
