"""The plan: every training run a study implies, resolved once, with the searched values applied.

    study = load_study("quickstart")          # peftlab.pipeline: the spec read, checked, planned
    study.runs()                              # [RunConfig, ...]: task x method x seed, stable order
    study.run("sst2-lora-s42-1a2b3c4d")       # one planned run, or None

Every (task, method, seed) resolves to a `RunConfig` (`peftlab.runs`) whose deterministic id keys
its results. With a `search:` block, each (task, method) also resolves to a `SearchConfig`
(`peftlab.search_space`); once that search has finished, its best trial's values are applied on
top of the spec's layers and become part of the run's identity; until then the run is `waiting`
(`RunConfig.waiting`). Which searches have finished is given to the `Study` by its caller (read
from the study directory's `search` table): the plan itself never opens the study directory.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from peftlab.errors import SpecError
from peftlab.runs import RunConfig, resolve_run, with_id, with_values
from peftlab.search_space import SearchConfig, resolve_searches
from peftlab.spec import StudySpec, TaskSpec


@dataclass
class Study:
    """A loaded spec plus where it came from; the object every stage receives."""

    spec: StudySpec
    path: Path | None  # the spec file
    data_dir: Path | None = None  # a local GLUE folder given on the command line or environment
    # The finished searches of the study directory: search id -> its summary record (the
    # `search` table's, `records.finished_searches`); the caller reads them, see `refresh`.
    search_outcomes: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False,
                                                       compare=False)
    _plan: tuple[RunConfig, ...] | None = field(default=None, repr=False, compare=False)
    _searches: dict[tuple[str, str], SearchConfig] | None = field(default=None, repr=False,
                                                                 compare=False)

    @property
    def output_dir(self) -> Path:
        return self.spec.output_dir

    def data_source(self) -> tuple[str, Path | None]:
        """('glue_dir', folder) or ('hub', None) for registered tasks."""
        d = self.spec.data
        folder = self.data_dir or d.glue_dir
        if d.source == "hub":
            return "hub", None
        if d.source == "glue_dir" and folder is None:
            raise SpecError(
                f"{self.where('data.source')}: 'glue_dir' needs a folder: set data.glue_dir, "
                "pass --data-dir or set PEFTLAB_DATA_DIR"
            )
        if folder is not None:
            return "glue_dir", folder
        return "hub", None

    def where(self, key: str) -> str:
        return f"{self.path}: {key}" if self.path else key

    def task_spec(self, name: str) -> TaskSpec:
        for t in self.spec.tasks:
            if t.name == name:
                return t
        raise SpecError(f"{self.where('tasks')}: no task named {name!r}")

    def resolve(self, task: str, method: str, seed: int) -> RunConfig:
        """The run (task, method, seed) as the spec defines it; when the spec has a `search`,
        with the values its best trial chose, or marked waiting while that search is unfinished
        (the chosen values are part of the run's identity, so its id is only known then)."""
        rc = resolve_run(self.spec, self.task_spec(task), method, seed, self.where)
        sc = self.search_config(task, method)
        if sc is None:
            return rc
        outcome = self.search_outcomes.get(sc.search_id)
        best = (outcome or {}).get("best")
        if best is None:
            return replace(rc, search={"id": sc.search_id, "study": sc.study_name,
                                       "status": "waiting"},
                           run_id=f"{task}-{method}-s{seed}-waiting")
        chosen = self.with_values(rc, best["params"],
                                  where=self.where(f"search (best trial of {sc.study_name})"))
        return with_id(replace(chosen, search={
            "id": sc.search_id, "study": sc.study_name, "trial": best["trial"],
            "params": best["params"], "values": best["values"]}))

    def runs(self) -> list[RunConfig]:
        """Every training run the study implies: task x method x seed, in a stable order.

        Resolved once per Study (the plan): every stage and command reads this same list.
        """
        if self._plan is None:
            self._plan = tuple(
                self.resolve(t.name, m, s)
                for t in self.spec.tasks
                for m in self.spec.methods
                for s in self.spec.seeds
            )
        return list(self._plan)

    def run(self, run_id: str) -> RunConfig | None:
        """The planned run with this id, or None when the spec no longer implies it."""
        return next((rc for rc in self.runs() if rc.run_id == run_id), None)

    # -- search ------------------------------------------------------------------------------
    def search_config(self, task: str, method: str) -> SearchConfig | None:
        """The resolved search of (task, method), or None when the spec has no `search`."""
        if self.spec.search is None:
            return None
        if self._searches is None:
            self._searches = resolve_searches(self.spec, self.where)
        return self._searches[(task, method)]

    def search_configs(self) -> list[SearchConfig]:
        """Every search of the study (task x method, plan order); empty without `search`."""
        if self.spec.search is None:
            return []
        return [self.search_config(t.name, m) for t in self.spec.tasks  # type: ignore[misc]
                for m in self.spec.methods]

    def with_values(self, rc: RunConfig, values: dict[str, Any], *, where: str) -> RunConfig:
        """`rc` with searched values applied (training keys and method parameters), validated
        and with its new id."""
        return with_values(rc, values, where=where)

    def refresh(self, search_outcomes: dict[str, dict[str, Any]]) -> None:
        """Take the finished searches as they are now (a search has finished) and forget the
        resolved plan, so the runs resolve again with the values the searches chose."""
        self.search_outcomes = search_outcomes
        self._plan = None
