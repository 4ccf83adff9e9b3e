"""Tasks as data (registry, GLUE definitions) and the sources that load them as DataFrames.

    from peftlab.tasks import get_task, load_split, subsample
    task = get_task("mrpc")
    train = load_split(task, "train", source="glue_dir", glue_dir="glue_data")
    probe = subsample(train, 500, seed=0)

See `registry.py` for the `TaskDef` fields and `sources.py` for the canonical DataFrame.
"""

from __future__ import annotations

# The GLUE module registers the built-in tasks when imported.
from peftlab.tasks.e2e import E2E
from peftlab.tasks.glue import GLUE_TASKS
from peftlab.tasks.kinds import TASK_KINDS, TaskKind, get_kind
from peftlab.tasks.registry import (
    SPLITS,
    TASKS,
    GlueLayout,
    HubLayout,
    TaskDef,
    get_task,
    make_file_task,
    register_task,
    task_from_spec,
    task_names,
)
from peftlab.tasks.sources import (
    DATA_DIR_ENV,
    FILE_FORMATS,
    KEPT_WHITESPACE_RULE,
    NORMALISATION_RULE,
    SOURCES,
    describe,
    file_checksum,
    load_files,
    load_glue_dir,
    load_hub,
    load_split,
    normalise_text,
    split_checksum,
    subsample,
)

__all__ = [
    "DATA_DIR_ENV",
    "FILE_FORMATS",
    "E2E",
    "GLUE_TASKS",
    "KEPT_WHITESPACE_RULE",
    "NORMALISATION_RULE",
    "SOURCES",
    "SPLITS",
    "TASKS",
    "TASK_KINDS",
    "GlueLayout",
    "HubLayout",
    "TaskDef",
    "TaskKind",
    "describe",
    "file_checksum",
    "get_kind",
    "get_task",
    "load_files",
    "load_glue_dir",
    "load_hub",
    "load_split",
    "make_file_task",
    "normalise_text",
    "register_task",
    "split_checksum",
    "subsample",
    "task_from_spec",
    "task_names",
]
