"""Lagged rates: a key's label rates over the previous labelled days, leak-free by construction.

For a row of day d, the window is the last `w` labelled (fit-window) days strictly before d; rows after the
fit window (valid, test) use the last `w` fit days, the most recent labels the toolkit may see. The rate is
the Beta posterior mean of `fe/target.py` with the window's own rate as prior mean and strength
max(n_min - N, 0); a key absent from the window gets the prior mean. The fit window's first day has no
earlier labelled day: its rates are null (unknown), so no later label reaches it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe import entities
from gbmcvr.fe.family import TARGET_SHORT, Context
from gbmcvr.fe.lookup import Lookup, Value
from gbmcvr.fe.spec import LaggedSpec
from gbmcvr.fe.target import posterior

SOURCE = "_source_day"
KEY_ID = "_key_id"


def window_map(label_days: tuple[int, ...], days: tuple[int, ...], window: int, day: str) -> pl.DataFrame:
    """(day, source day) pairs: for each day, the last `window` labelled days strictly before it."""
    labelled = sorted(label_days)
    pairs = [(d, s) for d in sorted(days) for s in [x for x in labelled if x < d][-window:]]
    return pl.DataFrame(pairs, schema={day: pl.Int64, SOURCE: pl.Int64}, orient="row")


def lagged_table(
    labelled: pl.LazyFrame,
    key: list[str],
    day: str,
    targets: dict[str, str],
    pairs: pl.DataFrame,
    days: tuple[int, ...],
    n_min: float,
    prefix: str,
    wanted: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per (key, day) rates and row counts, and per-day prior values (every one of `days`) for absent keys.

    `labelled` holds the fit-window rows (key, day, label columns); `targets` maps output names to label columns;
    `wanted` holds the (key, day) pairs rows will look up (default: every pair whose window has the key).
    """
    per_day = per_day_sums(labelled, key, day, targets)
    if wanted is None:
        wanted = per_day.join(pairs.with_columns(pl.col(SOURCE).cast(per_day[SOURCE].dtype)), on=SOURCE)
        wanted = wanted.select(*key, day).unique()
    return windowed_table(RunningSums(per_day, key, day, wanted), pairs, days, n_min, prefix)


def per_day_sums(labelled: pl.LazyFrame, key: list[str], day: str, targets: dict[str, str]) -> pl.DataFrame:
    """Rows (`N`) and label sums per (key, labelled day); the day is named `SOURCE`."""
    sums = [pl.col(c).cast(pl.Float64).sum().alias(name) for name, c in targets.items()]
    return (
        labelled.group_by([*key, day]).agg(pl.len().cast(pl.Float64).alias("N"), *sums).collect().rename({day: SOURCE})
    )


class RunningSums:
    """A key's running sums of rows and labels over the labelled days, and the (key, day) pairs rows look up:
    a window's sums are differences of two running sums (as-of joins), so every window's table holds only
    the wanted pairs, never per-day x window rows. Built once per key, shared by its windows.

    Only pairs whose day comes after the key's first labelled day can have a labelled row in their window;
    the others (every pair of a key seen on one day only, the common case of a nearly unique key) are left
    out before any sort, so the work follows the keys that repeat across days, not the rows."""

    def __init__(self, per_day: pl.DataFrame, key: list[str], day: str, wanted: pl.DataFrame) -> None:
        self.key, self.day, self.per_day = key, day, per_day
        self.values = [c for c in per_day.columns if c not in (*key, SOURCE)]
        dtype = per_day[SOURCE].dtype
        first = per_day.group_by(key).agg(pl.col(SOURCE).min().alias("_first"))
        wanted = (
            wanted.select(*key, pl.col(day).cast(dtype))
            .join(first, on=key, nulls_equal=True)
            .filter(pl.col(day) > pl.col("_first"))
            .drop("_first")
        )
        # keys as one non-null integer (as-of joins match no null `by` value; keys may be null)
        ids = wanted.select(key).unique().with_row_index(KEY_ID)
        self.running = (
            per_day.join(ids, on=key, nulls_equal=True)
            .sort(KEY_ID, SOURCE)
            .select(KEY_ID, SOURCE, pl.col(self.values).cum_sum().over(KEY_ID))
            .sort(SOURCE)
        )
        self.wanted = wanted.join(ids, on=key, nulls_equal=True)


def windowed_table(
    sums: RunningSums, pairs: pl.DataFrame, days: tuple[int, ...], n_min: float, prefix: str
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """`lagged_table` of one window (its (day, source day) `pairs`) from a key's running sums."""
    key, day, values, per_day = sums.key, sums.day, sums.values, sums.per_day
    targets = values[1:]
    pairs = pairs.with_columns(pl.col(day, SOURCE).cast(per_day[SOURCE].dtype))
    totals = per_day.group_by(SOURCE).agg(pl.col(values).sum())
    prior = (
        totals.join(pairs, on=SOURCE)
        .group_by(day)
        .agg(pl.col(values).sum())
        .select(day, *[(pl.col(t) / pl.col("N")).alias(t) for t in targets])
    )
    all_days = pl.DataFrame({day: pl.Series(sorted(days), dtype=pairs[day].dtype)})
    prior = all_days.join(prior, on=day, how="left")
    bounds = pairs.group_by(day).agg((pl.col(SOURCE).min() - 1).alias("_lo"), pl.col(SOURCE).max().alias("_hi"))
    rows = sums.wanted.join(bounds, on=day)
    for end in ("_hi", "_lo"):  # running sums up to the window's last day and up to the day before its first
        right = sums.running.rename({SOURCE: end, **{c: f"{c}{end}" for c in values}})
        rows = rows.sort(end).join_asof(right, on=end, by=KEY_ID, strategy="backward", check_sortedness=False)
    windowed = rows.select(
        *key, day, *[(pl.col(f"{c}_hi") - pl.col(f"{c}_lo").fill_null(0)).alias(c) for c in values]
    ).filter(pl.col("N") > 0)
    windowed = windowed.join(prior.rename({t: f"_mu_{t}" for t in targets}), on=day)
    N = windowed["N"].to_numpy()
    out = windowed.select(*key, day, pl.col("N").cast(pl.Int32).alias(f"{prefix}_n"))
    for t in targets:
        alpha, beta = posterior(N, windowed[t].to_numpy(), windowed[f"_mu_{t}"].to_numpy(), n_min)
        out = out.with_columns(pl.Series(f"{prefix}_{t}", alpha / np.maximum(alpha + beta, 1e-300), dtype=pl.Float32))
    prior_values = prior.select(
        day,
        pl.lit(0, dtype=pl.Int32).alias(f"{prefix}_n"),
        *[pl.col(t).cast(pl.Float32).alias(f"{prefix}_{t}") for t in targets],
    )
    return out, prior_values


def apply_lagged(
    frame: pl.LazyFrame, table: pl.DataFrame, prior: pl.DataFrame, key: list[str], day: str
) -> pl.LazyFrame:
    """Join the rates onto rows; a key absent from its window gets that window's prior values."""
    values = [c for c in table.columns if c not in (*key, day)]
    dtype = frame.collect_schema()[day]
    prior = prior.rename({c: f"_prior_{c}" for c in values}).with_columns(pl.col(day).cast(dtype))
    table = table.with_columns(pl.col(day).cast(dtype))
    return (
        frame.join(table.lazy(), on=[*key, day], how="left", nulls_equal=True, maintain_order="left")
        .join(prior.lazy(), on=day, how="left", maintain_order="left")
        .with_columns([pl.col(c).fill_null(pl.col(f"_prior_{c}")) for c in values])
        .drop([f"_prior_{c}" for c in values])
    )


class LaggedFamily:
    """`[lagged]`: a key's label rates over the previous labelled days, Beta-shrunk to that window's rate."""

    name = "lagged"

    def __init__(self, spec: LaggedSpec, profile: Profile) -> None:
        self.spec = spec
        self.profile = profile

    def _windows(self) -> list[tuple[list[str], int, str]]:
        return [
            (cols, window, f"lr_{'_'.join(cols)}_{window}d")
            for cols in (entities.key_columns(key, self.profile) for key in self.spec.keys)
            for window in self.spec.windows
        ]

    def recipes(self) -> dict[str, str]:
        """Labelled rows and one rate per target, per (key, window)."""
        out = {}
        for cols, window, prefix in self._windows():
            out[f"{prefix}_n"] = f"lagged: labelled rows of ({', '.join(cols)}) in the last {window} fit days"
            for target in self.spec.targets:
                short = TARGET_SHORT[target]
                out[f"{prefix}_{short}"] = (
                    f"lagged: beta posterior mean of {short} by ({', '.join(cols)}) over the last {window} fit days "
                    f"before the row's day (n_min={self.spec.n_min})"
                )
        return out

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Per (key, day) rates from fit-window labels; a key absent from its window gets the window's prior."""
        day = self.profile.day_column
        labels = {TARGET_SHORT[t]: ctx.label(t) for t in self.spec.targets}
        all_days = tuple(d for split_days in ctx.days.values() for d in split_days)
        out = []
        sums: dict[tuple[str, ...], RunningSums] = {}
        for cols, window, prefix in self._windows():
            if tuple(cols) not in sums:  # shared by the key's windows
                labelled = ctx.fit.select(*cols, day, *dict.fromkeys(labels.values()))
                wanted = ctx.all.select(*cols, day).unique().collect()  # the pairs the plan's rows look up
                sums[tuple(cols)] = RunningSums(per_day_sums(labelled, cols, day, labels), cols, day, wanted)
            pairs = window_map(ctx.days["fit"], all_days, window, day)
            table, prior = windowed_table(sums[tuple(cols)], pairs, all_days, self.spec.n_min, prefix)
            dtype = ctx.rows.collect_schema()[day]
            table = table.with_columns(pl.col(day).cast(dtype))
            prior = prior.with_columns(pl.col(day).cast(dtype))
            out.append(Lookup((*cols, day), table, _with_prior(prior, day)))
        return out


def _with_prior(prior: pl.DataFrame, day: str) -> Callable[[Value], dict[str, pl.Expr]]:
    """Outputs of a lagged table: the key's values, or the prior values of the row's day (a gather from the
    priors laid out by day, which the plan's few days keep small; a day without a prior gets null)."""
    lo, hi = int(prior[day].min()), int(prior[day].max())
    by_day = pl.DataFrame({day: pl.int_range(lo, hi + 1, eager=True).cast(prior[day].dtype)}).join(
        prior, on=day, how="left", maintain_order="left"
    )
    slot = pl.when(pl.col(day).is_between(lo, hi)).then(pl.col(day) - lo)

    def outputs(v: Value) -> dict[str, pl.Expr]:
        return {c: v(c).fill_null(pl.lit(by_day[c]).gather(slot)) for c in prior.columns if c != day}

    return outputs
