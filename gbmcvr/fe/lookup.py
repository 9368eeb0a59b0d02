"""Per-key tables joined onto rows by position: each row's key becomes an index into the table's values.

A family's table (count per category, Beta statistics per category and fold, ...) is small; the rows are
many. Where every key column is a small-range integer (dense categorical codes, crosses, folds, days), the
row's index is arithmetic on its key columns and the table is laid out densely once, so attaching its
values is a gather: no hashing, no join, and it streams. Other keys (entity keys with many values) find
their position by one join per table. Null keys match null keys, as `join(..., nulls_equal=True)` does;
a key absent from the table gets null values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl

Value = Callable[[str], pl.Expr]
INDEX = "_ix"
DENSE_MIN = 1 << 22  # a dense layout up to this many slots is always fine (a few MB per value column)


@dataclass(frozen=True)
class Lookup:
    """A table keyed by `keys` and the output columns it gives a row (from `value(column)`, the row's value)."""

    keys: tuple[str, ...]
    table: pl.DataFrame
    outputs: Callable[[Value], dict[str, pl.Expr]]
    splits: tuple[str, ...] | None = None  # the splits it serves (None: every split)

    def serves(self, split: str) -> bool:
        """Whether rows of `split` get this table's values."""
        return self.splits is None or split in self.splits

    def on_days(self, day: str, days: Sequence[int]) -> Lookup:
        """The lookup for rows of `days` only: a table keyed by the day keeps just those days' entries (a
        split's rows match no other), so a small split pays for its own share of a per-(key, day) table."""
        if day not in self.keys:
            return self
        return replace(self, table=self.table.filter(pl.col(day).is_in(list(days))))


def key_ranges(frame: pl.DataFrame | pl.LazyFrame, columns: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(min, max) of each integer column of `frame` among `columns` (columns with no value are left out); a
    LazyFrame is read for those columns only."""
    schema = frame.collect_schema()
    ints = [c for c in dict.fromkeys(columns) if c in schema and schema[c].is_integer()]
    if not ints:
        return {}
    row = (
        frame.lazy()
        .select(*[pl.col(c).min().alias(f"{c}:lo") for c in ints], *[pl.col(c).max().alias(f"{c}:hi") for c in ints])
        .collect()
    )
    out = {}
    for c in ints:
        lo, hi = row[f"{c}:lo"][0], row[f"{c}:hi"][0]
        if lo is not None:
            out[c] = (int(lo), int(hi))
    return out


def _layout(keys: tuple[str, ...], tables: list[pl.DataFrame], ranges: dict[str, tuple[int, int]]):
    """Per key column (offset, size) of a dense mixed-radix index, or None where a dense layout does not pay."""
    layout = []
    for k in keys:
        if k not in ranges or not all(t.schema[k].is_integer() for t in tables):
            return None
        lo, hi = ranges[k]
        for t in tables:
            t_lo, t_hi = t[k].min(), t[k].max()
            if t_lo is not None:
                lo, hi = min(lo, int(t_lo)), max(hi, int(t_hi))
        layout.append((k, lo, hi - lo + 2))  # the last slot of each column is its null
    slots = math.prod(size for _, _, size in layout)
    if slots > max(DENSE_MIN, 8 * max(t.height for t in tables)) or slots >= 1 << 31:
        return None
    return layout


def _index_expr(layout) -> pl.Expr:
    """The dense slot of a row's key: sum over key columns of (value - offset, null -> last slot) x stride."""
    expr, stride = None, 1
    for k, lo, size in reversed(layout):
        part = (pl.col(k).cast(pl.Int64) - lo).fill_null(size - 1) * stride
        expr = part if expr is None else expr + part
        stride *= size
    return expr.cast(pl.UInt32)


def _dense_values(table: pl.DataFrame, keys: tuple[str, ...], layout) -> Callable[[str], pl.Series]:
    """The table's value columns laid out by slot (null for slots no row of the table has)."""
    slots = math.prod(size for _, _, size in layout)
    where = table.select(_index_expr(layout)).to_series().to_numpy()
    pos = np.full(slots, -1, dtype=np.int64)
    pos[where] = np.arange(table.height)
    if np.count_nonzero(pos >= 0) != table.height:  # two rows in one slot: the later overwrote the earlier
        raise ValueError(f"lookup table keyed by {list(keys)} has duplicate keys")
    gather = pl.Series(pos).cast(pl.UInt32, strict=False)  # -1 -> null: slots without a table row
    return lambda c: table[c].gather(gather)


def _union_positions(
    keys: tuple[str, ...], tables: list[pl.DataFrame], col: str
) -> tuple[pl.DataFrame, list[pl.Series]]:
    """Tables that share non-dense keys, joined onto rows once: the union of their keys numbered 0..u-1 (`col`),
    and for each table the row holding each union key (null where it has none). A row then joins the union
    once and gathers every table's values by its number, instead of joining every table."""
    union = pl.concat([t.select(keys) for t in tables]).unique(maintain_order=True).with_row_index(col)
    rows_of = []
    for table in tables:
        found = union.join(
            table.select(keys).with_row_index("_row"),
            on=list(keys),
            how="left",
            nulls_equal=True,
            maintain_order="left",
        )
        if found.height != union.height:
            raise ValueError(f"lookup table keyed by {list(keys)} has duplicate keys")
        rows_of.append(found["_row"])
    return union, rows_of


class Attached:
    """Lookups made ready for one set of rows: dense tables laid out once, index columns named.

    `prepare(frame)` adds the index columns (a join per table only where a key is not dense), `outputs` are the
    output column expressions over a prepared frame. Lookups that share keys share one index column.
    """

    def __init__(self, lookups: Sequence[Lookup], ranges: dict[str, tuple[int, int]]) -> None:
        groups: dict[tuple[str, ...], list[Lookup]] = {}
        for lookup in lookups:
            groups.setdefault(lookup.keys, []).append(lookup)
        self.dense: dict[str, pl.Expr] = {}
        self.joins: list[tuple[tuple[str, ...], pl.DataFrame]] = []
        self.outputs: dict[str, pl.Expr] = {}
        for g, (keys, group) in enumerate(groups.items()):
            layout = _layout(keys, [lk.table for lk in group], ranges)
            if layout is not None:
                col = f"{INDEX}{g}"
                self.dense[col] = _index_expr(layout)
                for lk in group:
                    values = _dense_values(lk.table, keys, layout)
                    self.outputs |= lk.outputs(lambda c, v=values, ix=col: pl.lit(v(c)).gather(pl.col(ix)))
                continue
            col = f"{INDEX}{g}"
            union, rows_of = _union_positions(keys, [lk.table for lk in group], col)
            self.joins.append((keys, union))
            for lk, rows in zip(group, rows_of, strict=True):
                self.outputs |= lk.outputs(
                    lambda c, t=lk.table, r=rows, ix=col: pl.lit(t[c].gather(r)).gather(pl.col(ix))
                )
        self.index_columns = [*self.dense, *(positions.columns[0] for _, positions in self.joins)]

    def prepare(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """`frame` with every lookup's index column."""
        for keys, positions in self.joins:
            frame = frame.join(positions.lazy(), on=list(keys), how="left", nulls_equal=True, maintain_order="left")
        return frame.with_columns(**self.dense) if self.dense else frame

    def select(self, frame: pl.LazyFrame, columns: Sequence[str]) -> pl.LazyFrame:
        """`columns` of `frame` (prepared here), each either a lookup output or a column of the frame."""
        return self.prepare(frame).select(
            [self.outputs[c].alias(c) if c in self.outputs else pl.col(c) for c in columns]
        )
