"""A study's data: each task's definition and splits, subsampled as the spec says, with checksums.

    data = StudyData(study)
    data.task("mrpc")                       # TaskDef (registered task or the user's files)
    train = data.split("mrpc", "train")     # DataFrame: text_a, [text_b], label, row
    data.summaries()                        # rows and label counts per task and split
    data.normalisation()                    # {strip_whitespace, rule}: data.strip_whitespace

Every stage reads task data through this one object (it is `ctx.data`), so a split is loaded and
parsed once per process, and subsampling is the same everywhere. Loading itself (hub, GLUE folder,
user files; parsing traps, normalisation) lives in `peftlab.tasks`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.plan import Study
    from peftlab.store import Store
    from peftlab.tasks import TaskDef


class StudyData:
    """Task definitions and splits of one study (cached per process)."""

    def __init__(self, study: Study, store: Store | None = None):
        self.study = study
        self.store = store  # where the data stage recorded checksums (optional)
        self._frames: dict[tuple[str, str, bool], Any] = {}

    def task(self, name: str) -> TaskDef:
        from peftlab.tasks import task_from_spec

        return task_from_spec(self.study.task_spec(name))

    def split(self, name: str, split: str, *, subsample: bool = True) -> pd.DataFrame:
        """A task split as a DataFrame (text_a, [text_b], label, row), subsampled as the spec says."""
        from peftlab.tasks import load_split
        from peftlab.tasks import subsample as take

        key = (name, split, subsample)
        if key in self._frames:
            return self._frames[key]
        full_key = (name, split, False)
        if full_key not in self._frames:
            t = self.study.task_spec(name)
            task = self.task(name)
            strip = self.study.spec.data.strip_whitespace  # data.strip_whitespace
            if t.files is not None:
                df = load_split(task, split, source="files", files=dict(t.files),
                                columns=dict(t.columns or {}), strip=strip)
            elif task.builtin is not None:  # a layout of its own (E2E): its folder
                df = load_split(task, split, source="builtin", glue_dir=self.builtin_dir(),
                                strip=strip)
            else:
                source, folder = self.study.data_source()
                df = load_split(task, split, source=source, glue_dir=folder,
                                revision=self.study.spec.data.hub_revision, strip=strip)
            self._frames[full_key] = df
        df = self._frames[full_key]
        if subsample:
            t = self.study.task_spec(name)
            d = self.study.spec.data
            n = (t.train_samples or d.train_samples) if split == "train" else (
                t.eval_samples or d.eval_samples)
            if self.task(name).kind == "generation":
                # by input, never by row (the references of one input stay together); the
                # sample sizes count inputs
                from peftlab.tasks.sources import subsample_inputs

                refs = self.study.spec.generation.train_references if split == "train" else None
                df = subsample_inputs(df, n, d.seed, references=refs)
            else:
                df = take(df, n, d.seed)
            self._frames[key] = df
        return df

    def normalisation(self) -> dict[str, Any]:
        """How texts were normalised before tokenising, for provenance and the report:
        {strip_whitespace, rule}."""
        from peftlab.tasks import KEPT_WHITESPACE_RULE, NORMALISATION_RULE

        strip = self.study.spec.data.strip_whitespace
        return {"strip_whitespace": strip,
                "rule": NORMALISATION_RULE if strip else KEPT_WHITESPACE_RULE}

    def builtin_dir(self) -> Path | None:
        """The folder given for tasks with a layout of their own (E2E): data.e2e_dir, else
        --data-dir / PEFTLAB_DATA_DIR (`sources.find_e2e_dir` looks inside too)."""
        return self.study.spec.data.e2e_dir or self.study.data_dir

    def checksum(self, name: str, split: str) -> str:
        """sha256 of the split's source file (local files) or of its canonical content (hub)."""
        rec = self.store.get("data", f"{name}/{split}") if self.store is not None else None
        if rec is not None:
            return rec["checksum"]
        from peftlab.tasks import split_checksum

        return split_checksum(self.split(name, split, subsample=False))

    def source_file(self, name: str, split: str) -> Path | None:
        """The local file a split is read from (None for the hub)."""
        t = self.study.task_spec(name)
        if t.files is not None:
            return Path(t.files[split])
        task = self.task(name)
        if task.builtin == "e2e":
            from peftlab.tasks.sources import e2e_layout, find_e2e_dir

            return Path(e2e_layout(find_e2e_dir(self.builtin_dir()))[split])
        source, folder = self.study.data_source()
        if source != "glue_dir" or folder is None:
            return None
        from peftlab.tasks.sources import glue_root

        task = self.task(name)
        return (glue_root(Path(folder), task.glue.folder) / task.glue.folder
                / task.glue.file_for(split))

    def summaries(self) -> list[dict[str, Any]]:
        """Per task and split: rows in the source and after subsampling, label counts of both."""
        from peftlab.tasks import describe

        out = []
        for t in self.study.spec.tasks:
            task = self.task(t.name)
            for split in ("train", "eval"):
                full = self.split(t.name, split, subsample=False)
                used = self.split(t.name, split)
                out.append({"task": t.name, "split": split, "rows": len(full),
                            "rows_used": len(used), "describe": describe(full, task),
                            "describe_used": describe(used, task)})
        return out

    def task_info(self, name: str) -> dict[str, Any]:
        """What a bench worker needs of a task: label set and the evaluation rows as records."""
        task = self.task(name)
        return task_info(task, self.split(name, "eval"))


def task_info(task: TaskDef, df: pd.DataFrame) -> dict[str, Any]:
    """{num_labels, label_names, label_dtype, rows}: a task's evaluation examples as JSON
    (label_names: the head's output names, None for a lone score; label_dtype: what the model
    reads, the kind's)."""
    cols = [c for c in ("text_a", "text_b", "label", "row") if c in df.columns]
    return {
        "num_labels": task.num_labels,
        "label_names": task.head_label_names,
        "label_dtype": task.task_kind.label_dtype,
        "rows": df[cols].to_dict("records"),
    }
