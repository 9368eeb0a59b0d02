"""Statistics of a choice made on several rehearsal days: the pooled paired gain with a day-clustered standard
error, and density-ratio weights that make the rehearsal rows resemble a target day.

The pooled gain is the (weighted) mean per-row log-loss drop over every rehearsal day's rows. Rows of one day
share that day's shocks, so its standard error is not the row-level one: each day's mean gain is an estimate
with its within-day variance v_d, the days may disagree by more than those allow (a between-day variance
tau^2, estimated by DerSimonian-Laird from the per-day gains), and the pooled mean's variance is
sum_d W_d^2 (v_d + tau^2) with W_d the day's share of the weight. With days that agree this is the stratified
row-level SE; days that disagree widen it; with one day it is the plain paired SE.
"""

from __future__ import annotations

from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import polars as pl
from sklearn.metrics import roc_auc_score

WEIGHT_CLIP = (0.1, 10.0)  # density ratios outside this range are clipped: a few rows must not decide alone
ADVERSARIAL_ROUNDS = 60
ADVERSARIAL_PARAMS = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.8,
    "lambda_l2": 10.0,
    "max_bin": 63,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass(frozen=True)
class Gain:
    """A pooled paired gain: mean, day-clustered SE, between-day variance and each day's own mean gain."""

    mean: float
    se: float
    tau2: float
    per_day: dict[int, float]


def pooled_gain(before: np.ndarray, after: np.ndarray, days: np.ndarray, weights: np.ndarray | None = None) -> Gain:
    """Weighted mean per-row log-loss drop from `before` to `after` over the rehearsal days' rows, and its
    day-clustered standard error (within-day variance of each day's mean plus DerSimonian-Laird tau^2)."""
    diff = np.asarray(before, dtype=np.float64) - np.asarray(after, dtype=np.float64)
    w = np.ones(len(diff)) if weights is None else np.asarray(weights, dtype=np.float64)
    labels = np.unique(days)
    means, variances, shares = [], [], []
    for day in labels:
        mask = days == day
        d, wd = diff[mask], w[mask]
        total = wd.sum()
        mean = float((wd * d).sum() / total)
        n = len(d)
        # ratio-estimator variance of a weighted mean (the plain s^2/n when the weights are equal)
        var = float((wd**2 * (d - mean) ** 2).sum() / total**2 * n / (n - 1)) if n > 1 else float("inf")
        means.append(mean)
        variances.append(var)
        shares.append(total)
    m, v, share = np.array(means), np.array(variances), np.array(shares) / np.sum(shares)
    tau2 = _between_day_variance(m, v)
    se = float(np.sqrt(np.sum(share**2 * (v + tau2))))
    return Gain(float(np.sum(share * m)), se, tau2, {int(day): float(x) for day, x in zip(labels, m, strict=True)})


def _between_day_variance(means: np.ndarray, variances: np.ndarray) -> float:
    """DerSimonian-Laird estimate of the variance of the true per-day gains (0 with one day or none)."""
    if len(means) < 2 or not np.all(np.isfinite(variances)) or np.any(variances <= 0):
        return 0.0
    fixed = 1.0 / variances
    centre = np.sum(fixed * means) / fixed.sum()
    q = float(np.sum(fixed * (means - centre) ** 2))
    scale = fixed.sum() - np.sum(fixed**2) / fixed.sum()
    return max(0.0, (q - (len(means) - 1)) / scale)


@dataclass(frozen=True)
class Weights:
    """Density-ratio weights of rehearsal rows toward a target day, with the classifier's out-of-fold AUC."""

    weights: np.ndarray
    auc: float
    clipped: float  # share of rows whose ratio was clipped
    effective_rows: float  # Kish effective sample size, sum(w)^2 / sum(w^2)


def density_weights(
    rows: pl.DataFrame, target: pl.DataFrame, columns: list[str], seed: int, threads: int = 0
) -> Weights:
    """w = p/(1-p) * n_rows/n_target from a label-free LightGBM telling `rows` from `target` rows on `columns`,
    cross-fitted on two halves (each row is scored by the classifier that did not see it), clipped to
    WEIGHT_CLIP and normalised to mean 1. `threads`: LightGBM's (0: every core; small data uses one)."""
    x = pl.concat([rows.select(columns), target.select(columns)], how="vertical_relaxed").to_numpy()
    y = np.r_[np.zeros(rows.height), np.ones(target.height)]
    half = np.random.default_rng(seed).permutation(len(y)) % 2
    p = np.empty(len(y))
    params = {**ADVERSARIAL_PARAMS, "seed": seed, "num_threads": 1 if len(y) < 50_000 else threads}
    for k in (0, 1):
        fit = half != k
        booster = lgb.train(
            params, lgb.Dataset(x[fit], y[fit], feature_name=columns), num_boost_round=ADVERSARIAL_ROUNDS
        )
        p[~fit] = booster.predict(x[~fit])
    p_rows = np.clip(p[: rows.height], 1e-6, 1 - 1e-6)
    ratio = p_rows / (1 - p_rows) * rows.height / max(target.height, 1)
    w = np.clip(ratio, *WEIGHT_CLIP)
    w = w / w.mean()
    auc = float(roc_auc_score(y, p)) if target.height > 0 else float("nan")
    clipped = float(np.mean((ratio < WEIGHT_CLIP[0]) | (ratio > WEIGHT_CLIP[1])))
    return Weights(w, auc, clipped, float(w.sum() ** 2 / np.sum(w**2)))
