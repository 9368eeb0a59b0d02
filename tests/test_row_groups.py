import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gbmcvr.row_groups import write_row_groups


def _tables(n: int = 3, rows: int = 5) -> list[pa.Table]:
    return [pa.table({"x": list(range(i * rows, (i + 1) * rows)), "y": [float(i)] * rows}) for i in range(n)]


def _open(path, first):
    return pq.ParquetWriter(path, first.schema)


def test_each_table_is_written_in_order_with_its_callback(tmp_path):
    calls = []
    path = tmp_path / "t.parquet"
    rows = write_row_groups(iter(_tables()), path, _open, after_each=lambda: calls.append(path.stat().st_size))
    assert rows == 15 and len(calls) == 3
    assert 4 < calls[0] < calls[1] < calls[2]  # after each write: more than the 4-byte header, growing
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [5, 5, 5]
    assert pq.read_table(path).equals(pa.concat_tables(_tables()))


def test_group_rows_splits_each_table(tmp_path):
    path = tmp_path / "t.parquet"
    assert write_row_groups(_tables(), path, _open, group_rows=2) == 15
    meta = pq.ParquetFile(path).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [2, 2, 1] * 3


class _FullDisk:
    """A writer whose second write finds the disk full, and whose close then fails too."""

    def __init__(self) -> None:
        self.writes = 0

    def write_table(self, table, row_group_size):
        self.writes += 1
        if self.writes == 2:
            raise OSError(28, "No space left on device")

    def close(self):
        raise ValueError("closing a broken file")


def test_the_first_error_is_raised_not_the_close_error(tmp_path):
    writer = _FullDisk()
    with pytest.raises(OSError, match="No space left on device"):
        write_row_groups(_tables(), tmp_path / "t.parquet", lambda path, first: writer)
    assert writer.writes == 2


class _SlowWriter:
    """A writer whose write takes a while, recording the order of writes and the close."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def write_table(self, table: pa.Table, row_group_size: int) -> None:
        time.sleep(0.3)
        self.events.append("written")

    def close(self) -> None:
        self.events.append("closed")


def test_an_error_while_preparing_a_table_waits_for_the_write_in_flight(tmp_path):
    writer = _SlowWriter()

    def tables():
        yield _tables(1)[0]
        raise RuntimeError("a bad file")

    with pytest.raises(RuntimeError, match="a bad file"):
        write_row_groups(tables(), tmp_path / "t.parquet", lambda path, first: writer)
    assert writer.events == ["written", "closed"]


def test_an_empty_table_is_one_empty_row_group(tmp_path):
    path = tmp_path / "t.parquet"
    assert write_row_groups([_tables(1, rows=0)[0]], path, _open) == 0
    assert pq.read_table(path).num_rows == 0 and pq.read_table(path).schema.names == ["x", "y"]
