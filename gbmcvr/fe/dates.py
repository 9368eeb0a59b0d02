"""Date cycle: day mod the cycle length (day of week for 7), optionally as sin/cos."""

from __future__ import annotations

import math

import polars as pl

from gbmcvr.fe.spec import DAY_CYCLE_COLUMN, DateSpec


def date_exprs(day: str, spec: DateSpec) -> dict[str, pl.Expr]:
    """Output column name -> expression over the day column."""
    cycle = pl.col(day) % spec.cycle
    out = {DAY_CYCLE_COLUMN: cycle.cast(pl.Int64)}
    if spec.sin_cos:
        angle = cycle.cast(pl.Float64) * (2 * math.pi / spec.cycle)
        out[f"{DAY_CYCLE_COLUMN}_sin"] = angle.sin().cast(pl.Float32)
        out[f"{DAY_CYCLE_COLUMN}_cos"] = angle.cos().cast(pl.Float32)
    return out
