"""Cleaning (paper Table 2, §2.1.2): numerical / base value, rounded; missing numericals filled."""

from __future__ import annotations

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe.spec import CleanSpec


def clean_exprs(profile: Profile, spec: CleanSpec) -> list[pl.Expr]:
    """Expressions for the kept numerical columns as Float32, after base division and filling."""
    exprs = []
    for col in profile.kept(profile.numerical):
        expr = pl.col(col)
        base = profile.base_values.get(col)
        if spec.divide_by_base and base:
            expr = (expr / base).round(0)
        if spec.fill_missing != "keep":
            expr = expr.fill_null(float(spec.fill_missing)).fill_nan(float(spec.fill_missing))
        exprs.append(expr.cast(pl.Float32).alias(col))
    return exprs


def recipe(profile: Profile, spec: CleanSpec, col: str) -> str:
    base = profile.base_values.get(col)
    parts = [f"{col}"]
    if spec.divide_by_base and base:
        parts = [f"round({col} / {base})"]
    if spec.fill_missing != "keep":
        parts.append(f"missing -> {spec.fill_missing}")
    return "clean: " + ", ".join(parts)
