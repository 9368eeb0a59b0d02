"""Group statistics of a numerical column B within a categorical column A, and their derived contrasts."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe.family import Context
from gbmcvr.fe.lookup import Lookup, Value
from gbmcvr.fe.spec import GroupSpec

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


def derived_exprs(value: str, stat: Callable[[str], pl.Expr]) -> dict[str, pl.Expr]:
    """The contrasts of a row's value with its group's statistics (`stat(name)`: the row's group statistic)."""
    b = pl.col(value).cast(pl.Float64)
    mean, median, std = stat("mean"), stat("median"), stat("std")
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
    derived = derived_exprs(value, lambda s: pl.col(f"{prefix}_{s}"))
    joined = frame.join(table.lazy(), on=key, how="left", nulls_equal=True, maintain_order="left")
    wanted = [derived[s].cast(pl.Float32).alias(f"{prefix}_{s}") for s in stats if s in derived]
    keep_base = [pl.col(f"{prefix}_{s}").cast(pl.Float32) for s in BASE if s in stats]
    drop = [f"{prefix}_{s}" for s in BASE if s not in stats]
    return joined.with_columns(*wanted, *keep_base).drop(drop)


class GroupFamily:
    """`[group]`: statistics of a numerical column within a categorical one, and the row's contrasts with them."""

    name = "group"

    def __init__(self, spec: GroupSpec, profile: Profile) -> None:
        self.spec = spec

    def recipes(self) -> dict[str, str]:
        """One column per (pair, statistic)."""
        return {
            f"g_{key}_{value}_{stat}": f"group: {stat} of {value} within {key} ({self.spec.scope} scope)"
            for key, value in self.spec.pairs
            for stat in self.spec.stats
        }

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Per-key statistics (Float64), turned into Float32 columns per row."""
        rows = ctx.fit if self.spec.scope == "fit" else ctx.all
        out = []
        for key, value in self.spec.pairs:
            prefix = f"g_{key}_{value}"
            out.append(Lookup((key,), group_table(rows, key, value, prefix), self._outputs(value, prefix)))
        return out

    def _outputs(self, value: str, prefix: str) -> Callable[[Value], dict[str, pl.Expr]]:
        def outputs(v: Value) -> dict[str, pl.Expr]:
            derived = derived_exprs(value, lambda s: v(f"{prefix}_{s}"))
            return {
                f"{prefix}_{s}": (derived[s] if s in derived else v(f"{prefix}_{s}")).cast(pl.Float32)
                for s in self.spec.stats
            }

        return outputs
