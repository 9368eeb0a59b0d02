"""Novelty of key values: first day seen, days since, new on this day, active days so far (no labels)."""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe import entities
from gbmcvr.fe.family import Context
from gbmcvr.fe.lookup import Lookup, Value
from gbmcvr.fe.spec import NoveltySpec


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


def plain(columns: list[str]) -> Callable[[Value], dict[str, pl.Expr]]:
    """Outputs that are the table's own value columns (null for a key absent from the table)."""
    return lambda v: {c: v(c) for c in columns}


class NoveltyFamily:
    """`[novelty]`: first day seen, days since, new on this day, active days of key values (no labels)."""

    name = "novelty"

    def __init__(self, spec: NoveltySpec, profile: Profile) -> None:
        self.spec = spec
        self.profile = profile

    def _keys(self) -> list[tuple[list[str], str]]:
        cols = [entities.key_columns(key, self.profile) for key in self.spec.keys]
        return [(c, "nov_" + "_".join(c)) for c in cols]

    def recipes(self) -> dict[str, str]:
        """One column per (key, statistic)."""
        return {
            f"{prefix}_{stat}": f"novelty: {stat} of ({', '.join(cols)}) over the plan's rows"
            for cols, prefix in self._keys()
            for stat in self.spec.stats
        }

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Per (key, day) tables over every row of the plan."""
        day = self.profile.day_column
        out = []
        for cols, prefix in self._keys():
            table = novelty_table(ctx.all, cols, day, prefix, self.spec.stats)
            out.append(Lookup((*cols, day), table, plain(table.columns[len(cols) + 1 :])))
        return out
