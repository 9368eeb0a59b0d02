"""Parquet files written one row group at a time, each group encoded on a thread while the next is prepared.

Ingest parses file i+1 while file i is encoded; the feature build attaches batch i+1 while batch i is encoded.
Both callers are CPU-bound on two cores, so the overlap is most of what the writer is for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

DICTIONARY_PAGE_BYTES = 1 << 18  # a column chunk with more distinct values than this holds falls back to plain


def write_row_groups(
    tables: Iterable[pa.Table],
    path: Path,
    open_writer: Callable[[Path, pa.Table], pq.ParquetWriter],
    group_rows: int | None = None,
    after_each: Callable[[], None] | None = None,
) -> int:
    """Write each table of `tables` to `path` (row groups of `group_rows`, default one per table) on a writer
    thread, `after_each` run there after each table; the number of rows written.

    `open_writer` opens the file from the first table (its schema, codecs probed on its rows). Only one table
    waits for the thread at a time, so memory holds two. The first error is the one raised: when a write fails
    (a full disk), the file's close error that follows is dropped.
    """

    def write(writer: pq.ParquetWriter, table: pa.Table) -> None:
        writer.write_table(table, row_group_size=group_rows or max(1, table.num_rows))
        if after_each is not None:
            after_each()

    writer, pending, rows = None, None, 0
    with ThreadPoolExecutor(max_workers=1) as pool:
        try:
            for table in tables:
                rows += table.num_rows
                if writer is None:
                    writer = open_writer(path, table)
                if pending is not None:
                    pending.result()
                pending = pool.submit(write, writer, table)
                del table  # freed once written, not when the next table is ready
            if pending is not None:
                pending.result()
        except BaseException:
            if pending is not None:
                pending.exception()  # the write in flight ends before the file closes
            if writer is not None:
                with contextlib.suppress(Exception):
                    writer.close()
            raise
    if writer is not None:
        writer.close()
    return rows
