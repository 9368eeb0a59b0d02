"""Count encoding: how often each category value occurs in a window (the plan, the fit window, or its day)."""

from __future__ import annotations

import polars as pl


def count_table(frame: pl.LazyFrame, column: str, keys: list[str], name: str) -> pl.DataFrame:
    """Per-key row counts of `frame` (keys = [column] or [column, day])."""
    return frame.group_by(keys).agg(pl.len().cast(pl.Int32).alias(name)).collect()


def apply_counts(frame: pl.LazyFrame, table: pl.DataFrame, keys: list[str], name: str) -> pl.LazyFrame:
    """Join counts back; values absent from the window count 0."""
    return frame.join(table.lazy(), on=keys, how="left", nulls_equal=True, maintain_order="left").with_columns(
        pl.col(name).fill_null(0)
    )
