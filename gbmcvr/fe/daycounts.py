"""Same-day counts (transductive): rows and distinct values of other columns per key and day, test day included."""

from __future__ import annotations

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe import entities
from gbmcvr.fe.family import Context
from gbmcvr.fe.lookup import Lookup
from gbmcvr.fe.novelty import plain
from gbmcvr.fe.spec import DayCountSpec


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


class DayCountFamily:
    """`[daycount]`: rows and distinct values of other columns per key and day, the test day included."""

    name = "daycount"

    def __init__(self, spec: DayCountSpec, profile: Profile) -> None:
        self.spec = spec
        self.profile = profile

    def _keys(self) -> list[tuple[list[str], str, list[str]]]:
        distinct = entities.key_columns(self.spec.distinct, self.profile)
        out = []
        for key in self.spec.keys:
            cols = entities.key_columns(key, self.profile)
            prefix = "dc_" + "_".join(cols)
            names = [f"{prefix}_rows", *[f"{prefix}_nd_{c}" for c in distinct if c not in cols]]
            out.append((cols, prefix, names))
        return out

    def recipes(self) -> dict[str, str]:
        """Rows and distinct counts per (key, day)."""
        return {
            name: f"daycount: {name.removeprefix(prefix + '_')} per ({', '.join(cols)}) and day"
            for cols, prefix, names in self._keys()
            for name in names
        }

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Per (key, day) tables over every row of the plan."""
        day = self.profile.day_column
        distinct = entities.key_columns(self.spec.distinct, self.profile)
        out = []
        for cols, prefix, names in self._keys():
            table = daycount_table(ctx.all, cols, day, distinct, prefix)
            out.append(Lookup((*cols, day), table, plain(names)))
        return out
