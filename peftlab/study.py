"""The pipeline: which stages a study has, in which order, and what each one reads.

    peftlab run studies/quickstart.yaml

Stages talk to each other only through the study directory (`peftlab.store.Store`): each reads the
results of earlier stages, writes its own, and skips work that is already done, so any stage can be
rerun alone (`peftlab finetune SPEC`, `peftlab drift SPEC`, ...).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from peftlab.errors import SpecError
from peftlab.spec import RunConfig, Study
from peftlab.store import Store, atomic_write_text, provenance

if TYPE_CHECKING:
    import pandas as pd

    from peftlab.tasks import TaskDef

# name -> "module:function". Order is the pipeline order; each function takes a `Context`.
STAGES: dict[str, str] = {
    "data": "peftlab.study:data_stage",
    "finetune": "peftlab.finetune:finetune_stage",
    "represent": "peftlab.represent:represent_stage",
    "drift": "peftlab.drift:drift_stage",
    "bench": "peftlab.bench:bench_stage",
    "stats": "peftlab.analysis:stats_stage",
    "report": "peftlab.report:report_stage",
}


def resolve_device(requested: str) -> str:
    """'auto' -> cuda when available, else mps, else cpu; an impossible request is an error."""
    import torch

    if requested == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("device: 'cuda' was requested but no CUDA device is available "
                        "(use device: auto or cpu)")
    if requested == "mps" and not torch.backends.mps.is_available():
        raise SpecError("device: 'mps' was requested but MPS is not available")
    return requested


@dataclass
class Context:
    """What a stage receives: the study, its store, the device, data access and a console."""

    study: Study
    store: Store
    console: Console = field(default_factory=lambda: Console(stderr=True))
    _frames: dict[tuple[str, str, bool], Any] = field(default_factory=dict)

    @cached_property
    def device(self) -> str:
        return resolve_device(self.study.spec.device)

    def task(self, name: str) -> TaskDef:
        from peftlab.tasks import get_task, make_file_task

        t = self.study.task_spec(name)
        if t.files is None:
            return get_task(name)
        metrics = t.metrics or (["pearson", "spearman"] if t.regression else ["accuracy"])
        text_columns = tuple(c for c in ("text_a", "text_b") if c in (t.columns or {}))
        return make_file_task(name, None if t.regression else tuple(t.label_names or ()),
                              tuple(metrics), text_columns)

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
            if t.files is not None:
                df = load_split(task, split, source="files", files=dict(t.files),
                                columns=dict(t.columns or {}))
            else:
                source, folder = self.study.data_source()
                df = load_split(task, split, source=source, glue_dir=folder,
                                revision=self.study.spec.data.hub_revision)
            self._frames[full_key] = df
        df = self._frames[full_key]
        if subsample:
            t = self.study.task_spec(name)
            d = self.study.spec.data
            n = (t.train_samples or d.train_samples) if split == "train" else (
                t.eval_samples or d.eval_samples)
            df = take(df, n, d.seed)
            self._frames[key] = df
        return df

    def data_checksum(self, name: str, split: str) -> str:
        """sha256 of the split's source file (local files) or of its canonical content (hub)."""
        rec = self.store.get("data", f"{name}/{split}")
        if rec is not None:
            return rec["checksum"]
        from peftlab.tasks import split_checksum

        return split_checksum(self.split(name, split, subsample=False))


def run_status(store: Store, rc: RunConfig) -> dict[str, Any]:
    """status of one planned run: pending, done, failed (with reason) or interrupted."""
    rec = store.get("runs", rc.run_id)
    if rec is None:
        return {"status": "pending"}
    status = rec.get("status", "pending")
    if status == "running" and not _alive(rec.get("pid")):
        status = "interrupted"
    return {"status": status, "reason": rec.get("failure_reason")}


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        return False  # our own earlier record can only be a leftover of a killed attempt
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def plan(study: Study) -> list[dict[str, Any]]:
    """Every unit of training work with its deterministic id and whether it is done."""
    root = study.output_dir
    store = Store(root, create=False) if (root / "results.sqlite").is_file() else None
    out = []
    for rc in study.runs():
        st = run_status(store, rc) if store else {"status": "pending"}
        out.append({"run_id": rc.run_id, "task": rc.task, "method": rc.method,
                    "method_type": rc.method_type, "seed": rc.seed, **st})
    if store:
        store.close()
    return out


def split_summaries(ctx: Context) -> list[dict[str, Any]]:
    """Per task and split: rows in the source and after subsampling, label counts of both."""
    from peftlab.tasks import describe

    out = []
    for t in ctx.study.spec.tasks:
        task = ctx.task(t.name)
        for split in ("train", "eval"):
            full = ctx.split(t.name, split, subsample=False)
            used = ctx.split(t.name, split)
            out.append({"task": t.name, "split": split, "rows": len(full),
                        "rows_used": len(used), "describe": describe(full, task),
                        "describe_used": describe(used, task)})
    return out


def data_stage(ctx: Context) -> None:
    """Load every split of every task, check it, and record its size, labels and checksum."""
    from peftlab.tasks import file_checksum, split_checksum

    items = []
    for summary in split_summaries(ctx):
        name, split = summary["task"], summary["split"]
        path = _source_file(ctx, name, split)
        items.append((f"{name}/{split}", {
            **summary,
            "source": "files" if ctx.study.task_spec(name).files else ctx.study.data_source()[0],
            "path": str(path) if path else None,
            "checksum": (file_checksum(path) if path
                         else split_checksum(ctx.split(name, split, subsample=False))),
            "content_checksum": split_checksum(ctx.split(name, split)),
        }))
    ctx.store.put_many("data", items)


def _source_file(ctx: Context, name: str, split: str) -> Path | None:
    t = ctx.study.task_spec(name)
    if t.files is not None:
        return Path(t.files[split])
    source, folder = ctx.study.data_source()
    if source != "glue_dir" or folder is None:
        return None
    task = ctx.task(name)
    return Path(folder) / task.glue.folder / task.glue.file_for(split)


def stage_function(name: str) -> Callable[[Context], None]:
    if name not in STAGES:
        raise SpecError(f"unknown stage {name!r}; stages are {list(STAGES)}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


def open_study_store(study: Study) -> Store:
    """Open the study directory for writing: lock it, clean leftovers, save the spec beside it."""
    store = Store(study.output_dir).lock()
    store.sweep_partial()
    if study.path is not None:
        atomic_write_text(store.path("spec.yaml"), Path(study.path).read_text(encoding="utf-8"))
    store.put("meta", "study", {"name": study.spec.name, "spec": study.spec.model_dump(mode="json"),
                                "provenance": provenance()})
    return store


def run_stages(study: Study, stages: list[str] | None = None, *,
               console: Console | None = None) -> Context:
    """Run the named stages (default: all, in pipeline order) on one locked study directory."""
    from peftlab.validate import deep_check

    names = list(STAGES) if stages is None else stages
    funcs = [(n, stage_function(n)) for n in names]  # unknown names fail before any work
    deep_check(study)  # bad targets, impossible devices, oversized batches: fail in seconds
    store = open_study_store(study)
    ctx = Context(study=study, store=store, console=console or Console(stderr=True))
    try:
        for name, fn in funcs:
            ctx.console.rule(f"[bold]{name}")
            fn(ctx)
    finally:
        store.close()
    return ctx
