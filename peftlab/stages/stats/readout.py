"""The drift areas (drift, seed noise, across tasks) once per readout of the drift table: the
primary pooling's records as they are, every exploratory pooling's in family exploratory/readout.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from peftlab.families import FAMILY
from peftlab.results import RunView
from peftlab.stages.stats.common import Inputs, Pending, Record
from peftlab.stages.stats.drift import drift_records
from peftlab.stages.stats.verdicts import Verdicts

if TYPE_CHECKING:
    from peftlab.spec import StatsSpec


def readout_drift_records(store_records: list[dict[str, Any]], view: RunView, cfg: StatsSpec,
                          verdicts: Verdicts
                          ) -> tuple[list[Pending], list[tuple[str, dict[str, Any]]]]:
    """`drift_records` once per readout (pooling) of the drift table, each record tagged with
    its `pooling` and `readout`. The primary readout's (the pooling the classification head
    reads) keep their keys, roles and families; every exploratory pooling's are keyed
    "readout/<pooling>/<key>" (`primary_key` names the primary counterpart) and are exploratory,
    corrected together in family exploratory/readout, never primary."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in store_records:
        groups[(r.get("readout") or "primary", r.get("pooling") or "")].append(r)
    pending: list[Pending] = []
    summaries: list[tuple[str, dict[str, Any]]] = []
    # primary first; a study whose primary pooling changed keeps one primary group per pooling
    # only until the drift stage reruns, so every primary group is treated alike
    for (readout, pooling), recs in sorted(groups.items(), key=lambda kv: kv[0][0] != "primary"):
        ps, ss = drift_records(recs, view, cfg, verdicts)
        tag = {"pooling": pooling or None, "readout": readout}
        if readout == "primary":
            pending += [replace(p, context={**p.context, **tag}) for p in ps]
            summaries += [(k, {**rec, **tag}) for k, rec in ss]
            continue
        explore = {"role": "exploratory", "family": FAMILY["readout"], "question": None}
        pending += [Pending(f"readout/{pooling}/{p.key}",
                            {**p.context, **tag, **explore, "primary_key": p.key},
                            p.comparison) for p in ps]
        summaries += [(f"readout/{pooling}/{k}", {**rec, **tag, "primary_key": k})
                      for k, rec in ss]
    return pending, summaries


def build(inp: Inputs) -> tuple[list[Pending], list[Record]]:
    """The drift table's comparisons and summaries, once per readout pooling."""
    return readout_drift_records(inp.ctx.store.records("drift"), inp.view, inp.cfg, inp.verdicts)
