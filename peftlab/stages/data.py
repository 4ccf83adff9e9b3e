"""The data stage: load every split of every task, check it, record its size, labels, checksum.

    peftlab run SPEC --stages data
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from peftlab.context import Context


def run(ctx: Context) -> None:
    """Fill the `data` table: one record per task and split."""
    from peftlab.records import DataRecord, write
    from peftlab.tasks import file_checksum, split_checksum

    data = ctx.data
    items = []
    for summary in data.summaries():
        name, split = summary["task"], summary["split"]
        path = data.source_file(name, split)
        items.append(DataRecord(
            **summary,
            source=_source(ctx, name),
            path=str(path) if path else None,
            checksum=(file_checksum(path) if path
                      else split_checksum(data.split(name, split, subsample=False))),
            content_checksum=split_checksum(data.split(name, split)),
        ))
    write(ctx.store, items)


def _source(ctx: Context, name: str) -> str:
    """Where a task's data came from: "files", "hub", "glue_dir", or a built-in layout with
    the files it used ("e2e:development": devset.csv trains, "e2e:official": trainset.csv)."""
    if ctx.study.task_spec(name).files:
        return "files"
    task = ctx.data.task(name)
    if task.builtin == "e2e":
        from peftlab.tasks.sources import e2e_layout, find_e2e_dir

        return f"e2e:{e2e_layout(find_e2e_dir(ctx.data.builtin_dir()))['layout']}"
    return ctx.study.data_source()[0]
