"""Count encoding: how often each category value occurs in a window (the plan, the fit window, or its day)."""

from __future__ import annotations

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe.family import Context
from gbmcvr.fe.lookup import Lookup
from gbmcvr.fe.spec import CountSpec


def count_table(frame: pl.LazyFrame, column: str, keys: list[str], name: str) -> pl.DataFrame:
    """Per-key row counts of `frame` (keys = [column] or [column, day])."""
    return frame.group_by(keys).agg(pl.len().cast(pl.Int32).alias(name)).collect()


def apply_counts(frame: pl.LazyFrame, table: pl.DataFrame, keys: list[str], name: str) -> pl.LazyFrame:
    """Join counts back; values absent from the window count 0."""
    return frame.join(table.lazy(), on=keys, how="left", nulls_equal=True, maintain_order="left").with_columns(
        pl.col(name).fill_null(0)
    )


class CountFamily:
    """`[count]`: rows per category value over the plan, the fit window, or the row's day."""

    name = "count"

    def __init__(self, spec: CountSpec, profile: Profile) -> None:
        self.spec = spec
        self.day = profile.day_column

    def _columns(self) -> list[tuple[str, str, list[str]]]:
        by_day = self.spec.window == "day"
        return [
            (c, f"cnt_{c}" + ("_day" if by_day else ""), [c, self.day] if by_day else [c]) for c in self.spec.columns
        ]

    def recipes(self) -> dict[str, str]:
        """One count column per category column."""
        return {name: f"count: rows per {c} over the {self.spec.window} window" for c, name, _ in self._columns()}

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Counts over the fit window or every row; values absent from the window count 0."""
        rows = ctx.fit if self.spec.window == "fit" else ctx.all
        return [
            Lookup(tuple(keys), count_table(rows, c, keys, name), lambda v, n=name: {n: v(n).fill_null(0)})
            for c, name, keys in self._columns()
        ]
