"""Group statistics of a numerical column B within a categorical column A, and their derived contrasts."""

from __future__ import annotations

import polars as pl

BASE = ("mean", "median", "std", "min", "max")


def _div(num: pl.Expr, den: pl.Expr) -> pl.Expr:
    """num / den with null where den is zero or null (never inf)."""
    return pl.when(den != 0).then(num / den).otherwise(None)


def group_table(frame: pl.LazyFrame, key: str, value: str, prefix: str) -> pl.DataFrame:
    """mean, median, std (ddof 1), min, max of `value` per `key`."""
    v = pl.col(value).cast(pl.Float64)
    return (
        frame.group_by(key)
        .agg(
            v.mean().alias(f"{prefix}_mean"),
            v.median().alias(f"{prefix}_median"),
            v.std().alias(f"{prefix}_std"),
            v.min().alias(f"{prefix}_min"),
            v.max().alias(f"{prefix}_max"),
        )
        .collect()
    )


def derived_exprs(value: str, prefix: str) -> dict[str, pl.Expr]:
    """The contrasts of a row's value with its group's statistics (statistic name -> expression)."""
    b = pl.col(value).cast(pl.Float64)
    mean, median, std = pl.col(f"{prefix}_mean"), pl.col(f"{prefix}_median"), pl.col(f"{prefix}_std")
    return {
        "ratio_mean": _div(b, mean),
        "ratio_median": _div(b, median),
        "diff_mean": b - mean,
        "zscore": _div(b - mean, std),
        "median_minus_mean": median - mean,
        "abs_median_minus_mean": (median - mean).abs(),
        "median_over_mean": _div(median, mean),
        "std_over_mean": _div(std, mean),
    }


def apply_group(
    frame: pl.LazyFrame, table: pl.DataFrame, key: str, value: str, prefix: str, stats: tuple[str, ...]
) -> pl.LazyFrame:
    """Join the group table and keep the requested statistics as Float32 columns named prefix_stat."""
    derived = derived_exprs(value, prefix)
    joined = frame.join(table.lazy(), on=key, how="left", nulls_equal=True, maintain_order="left")
    wanted = [derived[s].cast(pl.Float32).alias(f"{prefix}_{s}") for s in stats if s in derived]
    keep_base = [pl.col(f"{prefix}_{s}").cast(pl.Float32) for s in BASE if s in stats]
    drop = [f"{prefix}_{s}" for s in BASE if s not in stats]
    return joined.with_columns(*wanted, *keep_base).drop(drop)
