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
            source="files" if ctx.study.task_spec(name).files else ctx.study.data_source()[0],
            path=str(path) if path else None,
            checksum=(file_checksum(path) if path
                      else split_checksum(data.split(name, split, subsample=False))),
            content_checksum=split_checksum(data.split(name, split)),
        ))
    write(ctx.store, items)
