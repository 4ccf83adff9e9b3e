"""The Data section: the text normalisation rule and, per task and split, the source, the rows and
the label counts of the rows used (`data` records).
"""

from __future__ import annotations

from peftlab.stages.report import format as f
from peftlab.stages.report.document import Paragraph, Section, Table
from peftlab.stages.report.stored import Results, not_measured


def normalisation_text(res: Results) -> str:
    """The study's text normalisation rule; why stripping matters (a single-token readout of a
    byte-level BPE tokenizer) only where the study reads a single token."""
    from peftlab.stages.report.readout import SINGLE_TOKEN, poolings
    from peftlab.tasks.sources import NORMALISATION_RULE, NORMALISATION_RULE_TEXT

    rule = res.ctx.data.normalisation()["rule"]
    names = poolings(res).get("poolings") or []
    if rule == NORMALISATION_RULE and names and not any(p in SINGLE_TOKEN for p in names):
        return NORMALISATION_RULE_TEXT
    return rule


def data(res: Results) -> Section:
    s = Section("Data", "data")
    s.add(Paragraph.of("Text normalisation: ", normalisation_text(res)))
    if not res.data:
        return s.add(not_measured("data records", "data"))
    rows = []
    for d in res.data:
        desc = d.get("describe_used") or d.get("describe") or {}
        labels = desc.get("label_counts") or desc.get("label_stats") or {}
        rows.append([d["task"], d["split"], str(d.get("source", f.MISSING)),
                     f.integer(d.get("rows")), f.integer(d.get("rows_used")),
                     ", ".join(f"{k}: {val}" for k, val in labels.items()) or f.MISSING])
    s.add(Table(["Task", "Split", "Source", "Rows", "Rows used", "Labels (rows used)"], rows,
                numeric=[False, False, False, True, True, False]))
    return s
