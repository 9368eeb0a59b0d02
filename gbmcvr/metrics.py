"""Evaluation metrics: log loss, normalised cross entropy, AUC, calibration ratio, expected calibration error."""

from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import log_loss as _sk_log_loss
from sklearn.metrics import roc_auc_score

EPS = 1e-15


def log_loss(y: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross entropy, probabilities clipped to [1e-15, 1 - 1e-15]."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return float(_sk_log_loss(np.asarray(y), p, labels=[0, 1]))


def entropy(base_rate: float) -> float:
    """Entropy (nats) of a Bernoulli with the given rate: the log loss of always predicting it."""
    p = min(max(base_rate, EPS), 1 - EPS)
    return -(p * math.log(p) + (1 - p) * math.log(1 - p))


def nce(y: np.ndarray, p: np.ndarray, base_rate: float) -> float:
    """Normalised cross entropy: log loss divided by the entropy of `base_rate` (below 1 beats the prior)."""
    return log_loss(y, p) / entropy(base_rate)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """ROC AUC; NaN when only one class is present."""
    y = np.asarray(y)
    if y.min() == y.max():
        return float("nan")
    return float(roc_auc_score(y, p))


def calibration_ratio(y: np.ndarray, p: np.ndarray) -> float:
    """Mean predicted over mean observed: 1 is calibrated on average, above 1 over-predicts."""
    observed = float(np.mean(y))
    return float(np.mean(p)) / observed if observed > 0 else float("inf")


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Row-weighted mean |observed − predicted| over equal-width probability bins."""
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    idx = np.minimum((p * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, weights=y, minlength=bins) - np.bincount(idx, weights=p, minlength=bins))
    return float(gap.sum() / max(count.sum(), 1))


def report(y: np.ndarray, p: np.ndarray, base_rate: float) -> dict[str, float]:
    """All metrics at once, with the base rate used for NCE recorded beside them."""
    return {
        "logloss": log_loss(y, p),
        "nce": nce(y, p, base_rate),
        "nce_base_rate": float(base_rate),
        "auc": auc(y, p),
        "calibration_ratio": calibration_ratio(y, p),
        "ece": expected_calibration_error(y, p),
        "rows": int(len(y)),
    }
