"""Per-key tables applied by vectorised gathers instead of joins (the write stage's hot path).

A table keyed by one or more integer columns becomes dense arrays indexed by the position of each key in
the table's sorted key values (plus one slot for keys the table lacks, holding the fill value); applying
it to a frame is a binary search per key and one array gather per value column.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import polars as pl

NULL_KEY = -(2**62)


def _keys(frame: pl.DataFrame, col: str) -> np.ndarray:
    return frame[col].cast(pl.Int64).fill_null(NULL_KEY).to_numpy()


class Lookup:
    """Gather the value columns of `table` (keyed by `keys`) onto any frame; misses get `fill`."""

    def __init__(self, table: pl.DataFrame, keys: Sequence[str], fill: dict[str, float | None]) -> None:
        self.keys = list(keys)
        self.values = [c for c in table.columns if c not in self.keys]
        self.dtypes = {c: table.schema[c] for c in self.values}
        self.uniq = [np.unique(_keys(table, k)) for k in self.keys]
        sizes = [len(u) + 1 for u in self.uniq]
        self.strides = np.cumprod([1, *sizes[:0:-1]])[::-1] if len(sizes) > 1 else np.array([1])
        flat = self._index(table)
        total = int(np.prod(sizes))
        self.arrays = {}
        for col in self.values:
            miss = fill.get(col)
            arr = np.full(total, np.nan if miss is None else miss, dtype=np.float64)
            arr[flat] = table[col].cast(pl.Float64).fill_null(np.nan).to_numpy()
            self.arrays[col] = arr

    def _index(self, frame: pl.DataFrame) -> np.ndarray:
        flat = np.zeros(frame.height, dtype=np.int64)
        for key, uniq, stride in zip(self.keys, self.uniq, self.strides, strict=True):
            values = _keys(frame, key)
            pos = np.searchsorted(uniq, values)
            clipped = np.minimum(pos, len(uniq) - 1)
            hit = (pos < len(uniq)) & (uniq[clipped] == values)
            flat += np.where(hit, pos, len(uniq)) * int(stride)
        return flat

    def apply(self, frame: pl.DataFrame) -> list[pl.Series]:
        """The value columns for every row of `frame` (NaN where the table had null or no row: null)."""
        idx = self._index(frame)
        out = []
        for col in self.values:
            series = pl.Series(col, self.arrays[col][idx])
            dtype = self.dtypes[col]
            series = series.fill_nan(None)
            out.append(series.cast(dtype) if dtype.is_integer() else series.cast(pl.Float32))
        return out
