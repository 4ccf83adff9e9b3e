"""Area "forgetting": per tuning task, PEFT vs full on each forgetting measure (off-task probe
accuracy change per probe task and layer, held-out LM loss change), paired by seed, and per task x
unit x method summaries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from peftlab.families import FAMILY, has_heldout_text
from peftlab.forgetting_measures import probe_floor_reason
from peftlab.records import ForgettingRecord, read
from peftlab.results import RunView
from peftlab.stages.stats.common import (
    Inputs,
    Pending,
    Record,
    defined,
    make_pending,
    mean_interval,
    mean_or_none,
    merge_missing,
)
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def forgetting_units(recs: list[ForgettingRecord]) -> list[ForgettingRecord]:
    """The base's records, one per measured unit (probe task x layer, LM loss), stage order."""
    base = [r for r in recs if not r.is_run and (r.status == "done" or r.measure == "lm_loss")]
    return sorted(base, key=lambda r: (r.measure != "probe", r.probe_task or "", r.layer or 0))


def floor_reason(unit: ForgettingRecord) -> str | None:
    """Why a probe unit shows nothing to forget (its base probe is at the majority-class rate),
    or None; always None for the LM loss."""
    if unit.measure != "probe" or unit.status != "done" or unit.accuracy is None:
        return None
    return probe_floor_reason(unit.accuracy, unit.correct, unit.majority_rate, unit.n_classes,
                              unit.probe_task, unit.layer_name)


def forgetting_context(unit: ForgettingRecord) -> dict[str, Any]:
    """The fields a forgetting comparison or summary carries about its unit."""
    if unit.measure == "lm_loss":
        return {"measure": "lm_loss", "unit": "nats per token", "probe_task": None,
                "layer": None, "layer_name": None, "higher_is_better": False,
                "quantity": "held-out LM loss change (after - before, nats per token)"}
    return {"measure": "probe", "unit": "accuracy", "probe_task": unit.probe_task,
            "layer": unit.layer, "layer_name": unit.layer_name, "higher_is_better": True,
            "quantity": f"{unit.probe_task} probe accuracy change at {unit.layer_name} "
                        "(run - base)"}


def forgetting_records(records: list[ForgettingRecord], view: RunView, cfg: StatsSpec,
                       verdicts: Verdicts, lm_tasks: set[str]
                       ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """PEFT vs full on each forgetting measure, paired by seed, per tuning task (family
    exploratory/forgetting), and per task x unit x method summaries (mean over learned runs with
    its t-interval). A run's value is its record's `difference` (probe: run minus base accuracy;
    LM loss: after minus before); degenerate runs are left out as in drift. lm_tasks: the
    tasks with held-out text (`planned_forgetting`), the only ones with an LM-loss test. A unit
    the base was skipped on (the LM loss of an encoder without an LM head) does not apply to
    the study: no comparison and no summary. A probe unit whose base probe does not beat the
    majority-class rate (`floor_reason`) has its comparisons void, with that reason."""
    by_run = {(r.run_id, r.unit): r for r in records if r.is_run}
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    for task in view.tasks:
        for unit in forgetting_units(records):
            if unit.measure == "probe" and unit.probe_task == task:
                continue  # a run is never probed on its own task
            if unit.measure == "lm_loss" and task not in lm_tasks:
                continue  # no held-out text for this task's runs (a one-task study)
            if unit.status != "done":
                # not applicable to this model (an encoder has no LM head): nothing to test,
                # and not "insufficient runs"; the report says why from the skipped record
                continue
            context = forgetting_context(unit)
            uninformative = floor_reason(unit)  # voids the unit's comparisons
            values: dict[str, dict[int, float]] = {}
            missing: dict[str, dict[int, str]] = {}
            for method in view.methods:
                values[method], missing[method] = {}, {}
                for seed in view.seeds:
                    rid = view.run_ids[(task, method, seed)]
                    rec = by_run.get((rid, unit.unit))
                    if view.done(task, method, seed) is None:
                        missing[method][seed] = view.why_missing(task, method, seed)
                    elif unit.status != "done":
                        missing[method][seed] = f"{method}: {unit.measure} skipped ({unit.reason})"
                    elif rec is None:
                        missing[method][seed] = f"{method}: no forgetting record"
                    elif rec.status != "done" or not defined(rec.difference):
                        missing[method][seed] = (f"{method}: {unit.measure} skipped "
                                                 f"({rec.reason or 'no difference'})")
                    else:
                        values[method][seed] = float(rec.difference)
                excluded = verdicts.excluded(task, method, list(values[method]))
                learned = [s for s in view.seeds if s in values[method] and s not in excluded]
                vals = [values[method][s] for s in learned]
                lo, hi = mean_interval(vals, 1 - cfg.alpha)
                name = "lm_loss" if unit.measure == "lm_loss" else (
                    f"probe/{unit.probe_task}/L{unit.layer:03d}")
                summaries.append((f"summary/forgetting/{task}/{name}/{method}", {
                    "kind": "summary", "area": "forgetting", "task": task, "method": method,
                    "method_type": view.methods[method], **context, "seeds": learned,
                    "values": vals, "run_ids": [view.run_ids[(task, method, s)] for s in learned],
                    "n": len(vals), "mean": mean_or_none(vals), "ci_low": lo, "ci_high": hi,
                    "confidence": 1 - cfg.alpha, "interval": "t-interval of the mean over seeds",
                    "base_majority_rate": unit.majority_rate, "void_reason": uninformative,
                    "excluded": {str(s): r for s, r in excluded.items()},
                    "missing": {str(s): r for s, r in missing[method].items()}}))
            for ref in view.references():
                for method in view.peft():
                    excluded = {**verdicts.excluded(task, method, view.seeds),
                                **verdicts.excluded(task, ref, view.seeds)}
                    ctx_ = {
                        "area": "forgetting", "task": task, **context,
                        "role": "exploratory", "family": FAMILY["forgetting"], "question": None,
                        "a": method, "b": ref, "method_a": method, "method_b": ref,
                        "runs_a": [view.run_ids[(task, method, s)] for s in view.seeds],
                        "runs_b": [view.run_ids[(task, ref, s)] for s in view.seeds],
                        "where_text": f"{task} ({unit.unit})",
                        # the report groups void comparisons by this cause (else: degenerate)
                        "void_because": None if uninformative is None else (
                            "the base model's own probe does not beat its majority-class "
                            f"rate, so nothing can be forgotten there ({task}-tuned runs)")}
                    pending.append(make_pending(
                        f"comparison/forgetting/{task}/{name}/{method} vs {ref}", ctx_,
                        values[method], values[ref], view.seeds, cfg,
                        f"{task}: {method} vs {ref} ({unit.unit})",
                        merge_missing(missing[method], missing[ref]), excluded=excluded,
                        void_all=uninformative))
    return pending, summaries


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """PEFT vs full on each forgetting unit; per task x unit x method summaries."""
    lm_tasks = {t for t in inp.view.tasks if has_heldout_text(inp.ctx.study, t)}
    return forgetting_records(read(inp.ctx.store, ForgettingRecord), inp.view, inp.cfg,
                              inp.verdicts, lm_tasks)
