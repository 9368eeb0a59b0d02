"""Label-shift corrections for a target day whose install rate differs from the validation day's.

Both rescale the odds of every prediction by one factor w (the paper's p / (p + (1 - p) / w)) and differ
in how they pick w: `shift-em` estimates the target day's prior from its own unlabeled predictions by the
EM of Saerens, Latinne and Decaestecker (2002); `trend` extrapolates a robust (Theil–Sen) trend of the
daily install rate over the last k labelled days to the target day and makes the mean prediction meet it.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import brentq
from scipy.stats import theilslopes

from gbmcvr.errors import UserError
from gbmcvr.metrics import EPS
from gbmcvr.post.calibrate import prior_shift


def odds_ratio(target_prior: float, source_prior: float) -> float:
    """The w that moves posteriors calibrated for `source_prior` to `target_prior` (Bayes' rule on the odds)."""
    return (target_prior / (1 - target_prior)) / (source_prior / (1 - source_prior))


def em_prior(p: np.ndarray, source_prior: float, tol: float = 1e-10, max_iter: int = 10_000) -> tuple[float, float]:
    """EM estimate of the target prior from posteriors `p` calibrated for `source_prior`; returns (prior, w).

    Each step adjusts the posteriors by the prior ratio and re-estimates the prior as their mean.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    if not 0 < source_prior < 1:
        raise UserError(f"shift-em: the source prior must lie in (0, 1), got {source_prior}")
    prior = source_prior
    for _ in range(max_iter):
        new = float(prior_shift(p, odds_ratio(prior, source_prior)).mean())
        new = min(max(new, EPS), 1 - EPS)
        if abs(new - prior) < tol:
            prior = new
            break
        prior = new
    return prior, odds_ratio(prior, source_prior)


def trend_rate(days: np.ndarray, rates: np.ndarray, target_day: int, k: int) -> float:
    """Theil–Sen line (intercept = median residual) through the last `k` (day, rate) points, at `target_day`."""
    days = np.asarray(days, dtype=np.float64)
    rates = np.asarray(rates, dtype=np.float64)
    if len(days) == 0:
        raise UserError("trend: no labelled days to fit the install-rate trend on")
    order = np.argsort(days)[-max(int(k), 1) :]
    if len(order) == 1:
        return float(rates[order[0]])
    slope, intercept, _, _ = theilslopes(rates[order], days[order], method="joint")
    return float(np.clip(intercept + slope * target_day, 1e-6, 1 - 1e-6))


def match_mean(p: np.ndarray, target_mean: float) -> float:
    """The odds factor w for which mean(p / (p + (1 - p) / w)) equals `target_mean`."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    target_mean = min(max(float(target_mean), 1e-9), 1 - 1e-9)
    log_w = brentq(lambda lw: prior_shift(p, np.exp(lw)).mean() - target_mean, -40.0, 40.0, xtol=1e-12)
    return float(np.exp(log_w))
