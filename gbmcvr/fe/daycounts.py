"""Same-day counts (transductive): rows and distinct values of other columns per key and day, test day included."""

from __future__ import annotations

import polars as pl


def daycount_table(frame: pl.LazyFrame, key: list[str], day: str, distinct: list[str], prefix: str) -> pl.DataFrame:
    """Per (key, day): `<prefix>_rows` and `<prefix>_nd_<col>` (distinct non-null values of each column)."""
    others = [c for c in distinct if c not in key]
    return (
        frame.group_by([*key, day])
        .agg(
            pl.len().cast(pl.Int32).alias(f"{prefix}_rows"),
            *[pl.col(c).drop_nulls().n_unique().cast(pl.Int32).alias(f"{prefix}_nd_{c}") for c in others],
        )
        .collect()
    )
