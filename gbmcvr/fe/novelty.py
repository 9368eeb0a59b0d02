"""Novelty of key values: first day seen, days since, new on this day, active days so far (no labels)."""

from __future__ import annotations

import polars as pl


def novelty_table(frame: pl.LazyFrame, key: list[str], day: str, prefix: str, stats: tuple[str, ...]) -> pl.DataFrame:
    """Per (key, day) statistics over every row of `frame`, the unlabeled test day included.

    Active days count the key's distinct days up to and including the row's day, so a training row sees no
    later day (it is what the test day can see of itself).
    """
    per = frame.group_by([*key, day]).agg().collect()
    first = pl.col(day).min().over(key)
    exprs = {
        "first_day": first.cast(pl.Int32),
        "days_since_first": (pl.col(day) - first).cast(pl.Int32),
        "new_on_day": (pl.col(day) == first).cast(pl.Int8),
        "active_days": pl.col(day).rank("dense").over(key).cast(pl.Int32),
    }
    return per.select(*key, day, *[exprs[s].alias(f"{prefix}_{s}") for s in stats])


def apply_table(frame: pl.LazyFrame, table: pl.DataFrame, key: list[str], day: str) -> pl.LazyFrame:
    """Join a per (key, day) table back onto rows (null keys match null keys)."""
    return frame.join(table.lazy(), on=[*key, day], how="left", nulls_equal=True, maintain_order="left")
