"""Categorical crosses: a tuple of categorical columns label-encoded with a saved, plan-independent vocabulary."""

from __future__ import annotations

import polars as pl


def build_vocab(frame: pl.LazyFrame, columns: tuple[str, ...], name: str) -> pl.DataFrame:
    """Every distinct value tuple in `frame`, sorted, numbered 0..k-1 (codes depend only on the data)."""
    return (
        frame.select(columns)
        .unique()
        .sort(columns, nulls_last=True)
        .with_row_index(name)
        .with_columns(pl.col(name).cast(pl.Int64))
        .collect()
    )
