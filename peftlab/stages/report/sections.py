"""The report's sections in order: the one list of what the report says.

Each section is one function `(Results) -> Section` in its own module, built from stored results
only (`stored.Results`): a table with no rows gives a section that says "not measured" (and which
stage fills it) instead of a table of blanks. Numbers are formatted by
`peftlab.stages.report.format`; statistical statements come from the `stats` table
(`peftlab.stages.report.findings`).

The report answers first: `FRONT` (the answers to RQ1 and RQ2, each a few sentences beside one
figure, then the trust panel) comes before the table of contents; `SECTIONS` supports them. A new
section is one module with its function, added to one of these lists.
"""

from __future__ import annotations

from collections.abc import Callable

from peftlab.stages.report.accuracy import accuracy
from peftlab.stages.report.answers import answers
from peftlab.stages.report.data_splits import data
from peftlab.stages.report.decision import decision
from peftlab.stages.report.deployment import deployment
from peftlab.stages.report.document import Section
from peftlab.stages.report.engine_serving import engine_serving
from peftlab.stages.report.environment import environment
from peftlab.stages.report.findings import findings
from peftlab.stages.report.forgetting import forgetting
from peftlab.stages.report.how_to_read import how_to_read
from peftlab.stages.report.methods import methods_section
from peftlab.stages.report.readout import readout_section
from peftlab.stages.report.representational_drift import drift
from peftlab.stages.report.runs import runs_section
from peftlab.stages.report.search import search_section
from peftlab.stages.report.stored import Results
from peftlab.stages.report.trust import trust
from peftlab.stages.report.weight_space import weights

# The report in order: FRONT before the table of contents (the answers, then whether to trust
# them), SECTIONS after it.
FRONT: list[Callable[[Results], Section]] = [answers, trust]
SECTIONS: list[Callable[[Results], Section]] = [
    findings, how_to_read, runs_section, search_section, accuracy, drift, readout_section,
    weights, forgetting, deployment, engine_serving, methods_section, decision, data,
    environment]


def build_front(res: Results) -> list[Section]:
    return [fn(res) for fn in FRONT]


def build_sections(res: Results) -> list[Section]:
    return [fn(res) for fn in SECTIONS]
