"""Beta target encoding (paper §3.2): per-category posterior Beta statistics, leak-free by construction.

For a category seen N times with n positives in the statistics window, with prior mean mu from the same
window, the posterior is Beta(alpha, beta) with
    alpha = mu * max(n_min - N, 0) + n,    beta = (1 - mu) * max(n_min - N, 0) + N - n,
so rare categories shrink to the prior and categories seen n_min times or more use their own counts.

Statistics are the true Beta ones (`scipy.stats.beta` agrees): mean a/(a+b); variance
ab/((a+b)^2 (a+b+1)); skewness 2(b-a)sqrt(a+b+1)/((a+b+2)sqrt(ab)); *excess* kurtosis
6[(a-b)^2(a+b+1) - ab(a+b+2)] / (ab(a+b+2)(a+b+3)); median by the inverse regularised incomplete beta
function. The skewness and kurtosis formulas printed in the paper are not these Beta moments; we use the
true ones. Documented values where the Beta is undefined or its mode is not interior:
  * mode = (a-1)/(a+b-2) when a > 1 and b > 1; 0 when a <= 1 < b; 1 when b <= 1 < a; the mean when both
    a <= 1 and b <= 1 (U-shaped or uniform: no single mode);
  * a == 0 or b == 0 (N >= n_min and all labels equal) is a point mass at n/N: mean = mode = median = n/N,
    variance = skewness = kurtosis = 0.

Leak-freedom: rows of the statistics window (the fit window) get out-of-fold values — folds come from a
multiplicative hash of the row id, and both the counts and the prior mean exclude the row's own fold — or,
with scheme "past_days", statistics of earlier days only (the first fit day falls back to the whole
window's prior mean, its counts being empty). Other rows (valid, test) use the whole fit window.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from scipy import special

from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError
from gbmcvr.fe import entities
from gbmcvr.fe.family import LIKE, TARGET_SHORT, Context
from gbmcvr.fe.lookup import Lookup
from gbmcvr.fe.spec import TargetSpec

FOLD = "_fold"


def fold_expr(row_id: str, folds: int) -> pl.Expr:
    """Deterministic fold of each row: Knuth's multiplicative hash of the row id, modulo `folds`."""
    low = (pl.col(row_id) % (1 << 32)).cast(pl.UInt64)
    return (((low * 2654435761) % (1 << 32)) // (1 << 16) % folds).cast(pl.Int32).alias(FOLD)


def beta_stats(alpha: np.ndarray, beta: np.ndarray, stats: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Mean, mode, median, variance, skewness and excess kurtosis of Beta(alpha, beta); never NaN or inf."""
    a = np.asarray(alpha, dtype=np.float64)
    b = np.asarray(beta, dtype=np.float64)
    point = (a <= 0) | (b <= 0)
    a_safe, b_safe = np.where(point, 1.0, a), np.where(point, 1.0, b)
    s = a_safe + b_safe
    point_mass = np.where(a + b > 0, a / np.maximum(a + b, 1e-300), 0.0)
    mean = np.where(point, point_mass, a_safe / s)
    out: dict[str, np.ndarray] = {}
    for stat in stats:
        if stat == "mean":
            value = mean
        elif stat == "mode":
            interior = (a_safe > 1) & (b_safe > 1)
            value = np.select(
                [point, interior, (a_safe <= 1) & (b_safe > 1), (b_safe <= 1) & (a_safe > 1)],
                [point_mass, (a_safe - 1) / np.where(interior, s - 2, 1.0), 0.0, 1.0],
                default=mean,
            )
        elif stat == "median":
            value = np.where(point, point_mass, special.betaincinv(a_safe, b_safe, 0.5))
        elif stat == "var":
            value = np.where(point, 0.0, a_safe * b_safe / (s**2 * (s + 1)))
        elif stat == "skew":
            value = np.where(point, 0.0, 2 * (b_safe - a_safe) * np.sqrt(s + 1) / ((s + 2) * np.sqrt(a_safe * b_safe)))
        elif stat == "kurt":
            num = 6 * ((a_safe - b_safe) ** 2 * (s + 1) - a_safe * b_safe * (s + 2))
            value = np.where(point, 0.0, num / (a_safe * b_safe * (s + 2) * (s + 3)))
        else:
            raise UserError(f"unknown beta statistic '{stat}'")
        out[stat] = value
    return out


def posterior(N: np.ndarray, n: np.ndarray, mu: np.ndarray, n_min: float) -> tuple[np.ndarray, np.ndarray]:
    """Posterior Beta parameters for counts (N, n) under prior mean mu with strength max(n_min - N, 0)."""
    strength = np.maximum(n_min - N, 0.0)
    return mu * strength + n, (1 - mu) * strength + N - n


class BetaTargetEncoder:
    """Encode one categorical column by the posterior Beta of one binary target (scikit-learn style).

    `fit` learns per-category counts from the statistics window (`counts_`, plus per-fold counts for the
    out-of-fold values); `transform` adds the statistic columns to any frame; `transform_window` adds the
    leak-free values for rows of the statistics window itself.
    """

    def __init__(
        self,
        column: str,
        prefix: str,
        n_min: float = 100.0,
        stats: tuple[str, ...] = ("mean", "mode", "median", "var", "skew", "kurt"),
        scheme: str = "oof",
        day: str = "day",
    ) -> None:
        self.column = column
        self.prefix = prefix
        self.n_min = n_min
        self.stats = stats
        self.scheme = scheme
        self.day = day

    @property
    def output_columns(self) -> list[str]:
        return [f"{self.prefix}_{s}" for s in self.stats]

    def fit(self, frame: pl.DataFrame, target: str) -> BetaTargetEncoder:
        """Learn counts from `frame` (the statistics window: column, target, `_fold` or the day column)."""
        y = pl.col(target).cast(pl.Float64)
        if frame.height == 0:
            raise UserError(f"target encoding of '{self.column}': the statistics window has no rows")
        self.prior_mean_ = float(frame[target].mean())
        if not 0.0 < self.prior_mean_ < 1.0:
            raise UserError(
                f"target encoding of '{self.column}': target '{target}' is constant ({self.prior_mean_}) in the fit window"
            )
        key = FOLD if self.scheme == "oof" else self.day
        self.window_counts_ = frame.group_by(self.column, key).agg(N=pl.len().cast(pl.Float64), n=y.sum())
        # whole-window counts and totals from the per-(category, key) ones: sums of whole numbers, exact
        self.counts_ = self.window_counts_.group_by(self.column).agg(pl.col("N", "n").sum()).sort(self.column)
        self.window_totals_ = self.window_counts_.group_by(key).agg(pl.col("N", "n").sum()).sort(key)
        return self

    def _table(self, keys: pl.DataFrame, N: np.ndarray, n: np.ndarray, mu: np.ndarray) -> pl.DataFrame:
        alpha, beta = posterior(N, n, mu, self.n_min)
        values = beta_stats(alpha, beta, self.stats)
        return keys.with_columns([pl.Series(f"{self.prefix}_{s}", values[s], dtype=pl.Float32) for s in self.stats])

    def prior_values(self, mu: float | None = None) -> dict[str, float]:
        """Statistics of an unseen category: the prior Beta(mu n_min, (1 - mu) n_min)."""
        mu = self.prior_mean_ if mu is None else mu
        alpha, beta = posterior(np.zeros(1), np.zeros(1), np.full(1, mu), self.n_min)
        return {f"{self.prefix}_{s}": float(v[0]) for s, v in beta_stats(alpha, beta, self.stats).items()}

    def table(self) -> pl.DataFrame:
        """Per-category statistics from the whole window (what valid and test rows get)."""
        c = self.counts_
        return self._table(
            c.select(self.column), c["N"].to_numpy(), c["n"].to_numpy(), np.full(c.height, self.prior_mean_)
        )

    def window_table(self) -> pl.DataFrame:
        """Per-(category, fold) out-of-fold statistics, or per-(category, day) statistics of earlier days."""
        if self.scheme == "oof":
            t = self.window_counts_.join(self.counts_, on=self.column, suffix="_all", nulls_equal=True)
            totals = self.window_totals_
            t = t.join(totals.select(FOLD, mu=(pl.sum("n") - pl.col("n")) / (pl.sum("N") - pl.col("N"))), on=FOLD)
            N = (t["N_all"] - t["N"]).to_numpy()
            n = (t["n_all"] - t["n"]).to_numpy()
            return self._table(t.select(self.column, FOLD), N, n, t["mu"].to_numpy())
        day = self.day
        per = self.window_counts_.sort(self.column, day)
        per = per.with_columns(
            N_before=(pl.col("N").cum_sum() - pl.col("N")).over(self.column),
            n_before=(pl.col("n").cum_sum() - pl.col("n")).over(self.column),
        )
        totals = self.window_totals_.with_columns(
            mu=((pl.col("n").cum_sum() - pl.col("n")) / (pl.col("N").cum_sum() - pl.col("N")))
            .fill_nan(self.prior_mean_)
            .fill_null(self.prior_mean_)
        )
        t = per.join(totals.select(day, "mu"), on=day)
        return self._table(
            t.select(self.column, day), t["N_before"].to_numpy(), t["n_before"].to_numpy(), t["mu"].to_numpy()
        )

    def transform(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add the statistic columns for rows outside the window; unseen categories get the prior's values."""
        return self._join(frame, self.table(), [self.column])

    def transform_window(self, frame: pl.LazyFrame) -> pl.LazyFrame:
        """Add the leak-free statistic columns for rows inside the statistics window."""
        key = FOLD if self.scheme == "oof" else self.day
        return self._join(frame, self.window_table(), [self.column, key])

    def _join(self, frame: pl.LazyFrame, table: pl.DataFrame, on: list[str]) -> pl.LazyFrame:
        prior = self.prior_values()
        return frame.join(table.lazy(), on=on, how="left", nulls_equal=True, maintain_order="left").with_columns(
            [pl.col(c).fill_null(pl.lit(v, dtype=pl.Float32)) for c, v in prior.items()]
        )


class TargetFamily:
    """`[target]`: Beta target encodings of categorical columns or entity keys (an entity name stands for its
    key column `k_<name>`), out-of-fold (or past days) inside the fit window."""

    name = "target"

    def __init__(self, spec: TargetSpec, profile: Profile) -> None:
        self.spec = spec
        self.day = profile.day_column
        self.columns = [entities.key_columns((c,), profile)[0] for c in spec.columns]

    def _prefixes(self) -> list[tuple[str, str, str]]:
        return [
            (target, col, f"te_{col}_{TARGET_SHORT[target]}") for target in self.spec.targets for col in self.columns
        ]

    def recipes(self) -> dict[str, str]:
        """One column per (target, column, statistic)."""
        t = self.spec
        detail = f"n_min={t.n_min}, {t.scheme}" + (f", K={t.folds}" if t.scheme == "oof" else "")
        return {
            f"{prefix}_{stat}": f"target: beta posterior {stat} of {target} by {col} ({detail})"
            for target, col, prefix in self._prefixes()
            for stat in t.stats
        }

    def lookups(self, ctx: Context) -> list[Lookup]:
        """Per-category statistics from the fit window; fit rows get their out-of-fold (or earlier days') table."""
        t, day = self.spec, self.day
        window_key = FOLD if t.scheme == "oof" else day
        others = tuple(s for s in ctx.days if s != "fit")
        pairs: dict[tuple[str, str], list[Lookup]] = {}
        for col in dict.fromkeys(c for _, c, _ in self._prefixes()):
            # one column's fit rows at a time: memory follows one key, not every encoded column
            needed = dict.fromkeys([col, LIKE, ctx.profile.install_label, FOLD, day])
            fit_rows = ctx.fit.select(*needed).collect()
            for target, _, prefix in (x for x in self._prefixes() if x[1] == col):
                window = fit_rows.filter(pl.col(LIKE) == 1) if target == "install_given_like" else fit_rows
                label = ctx.label(target)
                enc = BetaTargetEncoder(col, prefix, t.n_min, t.stats, t.scheme, day)
                enc.fit(window.select(*dict.fromkeys([col, label, FOLD, day])), label)
                prior = {c: pl.lit(v, dtype=pl.Float32) for c, v in enc.prior_values().items()}

                def outputs(v, prior=prior):
                    return {c: v(c).fill_null(p) for c, p in prior.items()}

                pairs[(target, col)] = [
                    Lookup((col, window_key), enc.window_table(), outputs, ("fit",)),
                    Lookup((col,), enc.table(), outputs, others),
                ]
            del fit_rows
        return [lookup for target, col, _ in self._prefixes() for lookup in pairs[(target, col)]]


class EntityTargetFamily(TargetFamily):
    """`[entity_target]`: the same encodings on entity keys, a family of its own so that `gbmcvr select` weighs
    them apart from the categorical encodings of `[target]`."""

    name = "entity_target"
