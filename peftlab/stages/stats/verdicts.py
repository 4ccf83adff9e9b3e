"""Did each run learn? Every done run's main metric judged against its task's baselines record
(`peftlab.baseline_scores.judge`), recomputed on every run of the stage: the verdicts the other areas
use to leave degenerate runs out, and one `summary/run/<run id>` record per run (area "runs").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftlab.baseline_scores import judge
from peftlab.records import BaselineRecord, read
from peftlab.results import RunView

if TYPE_CHECKING:
    from peftlab.context import Context


@dataclass
class Verdicts:
    """Every planned run's learned verdict (see `run_verdicts`)."""

    by_run: dict[tuple[str, str, int], dict[str, Any]]  # (task, method, seed) -> verdict

    def degenerate(self, task: str, method: str, seed: int) -> str | None:
        """Why the run is degenerate ("degenerate run (...)"), or None when it learned or
        could not be judged."""
        v = self.by_run.get((task, method, seed))
        if v is None or v.get("learned") is not False:
            return None
        return f"{method}: degenerate run ({v['reason']})"

    def excluded(self, task: str, method: str, seeds: list[int]) -> dict[int, str]:
        return {s: r for s in seeds if (r := self.degenerate(task, method, s)) is not None}

    def all_degenerate(self, task: str) -> bool:
        judged = [v for (t, _, _), v in self.by_run.items() if t == task]
        return bool(judged) and all(v.get("learned") is False for v in judged)


def run_verdicts(ctx: Context, view: RunView) -> tuple[Verdicts, list[tuple[str, dict]]]:
    """Judge every done run against its task's baselines record: (verdicts, summary records)."""
    baselines = {r.task: r for r in read(ctx.store, BaselineRecord)}
    by_run: dict[tuple[str, str, int], dict[str, Any]] = {}
    records = []
    for task in view.tasks:
        base = baselines.get(task)
        for method in view.methods:
            for seed in view.seeds:
                rec = view.done(task, method, seed)
                if rec is None:
                    continue
                if base is not None:
                    probed = ((rec.get("config") or {}).get("training") or {}).get(
                        "head_init") == "probe"  # the run started from the probe-fitted head
                    v = judge(rec.get("metrics") or {}, rec.get("main_metric") or "",
                              base.baselines(), (base.untrained_head or {}).get("metrics"),
                              (base.probe_head or {}).get("metrics") if probed else None,
                              fallback=ctx.data.task(task).task_kind.learned_fallback)
                    source = "baselines table"
                elif (rec.get("baselines") or {}).get("learned") is not None:
                    v, source = dict(rec["baselines"]), "the run's own record"
                else:
                    v = {"learned": None, "reason": "no baselines record for the task (run "
                                                    "`peftlab run SPEC --stages baselines`)"}
                    source = "none"
                by_run[(task, method, seed)] = v
                run_id = view.run_ids[(task, method, seed)]
                records.append((f"summary/run/{run_id}", {
                    "kind": "summary", "area": "runs", "task": task, "method": method,
                    "method_type": view.methods[method], "seed": seed, "run_id": run_id,
                    "source": source, **v}))
    return Verdicts(by_run), records
