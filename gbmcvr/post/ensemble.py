"""Weighted ensembles of calibrated probabilities, with weights fixed or fitted on valid, and cross-fitting.

Weights fitted on valid live on the simplex (softmax parametrisation, minimising log loss); if the
optimum is worse than the best single input the best input alone is returned, so a fitted ensemble is
never worse on valid than its best member. `cross_fit` reports calibration + weights fitted on K-1 folds
of the valid rows and scored on the held-out fold, so the report does not praise itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize

from gbmcvr.metrics import log_loss
from gbmcvr.post.calibrate import Calibrator, logit, sigmoid


def combine(preds: Sequence[np.ndarray], weights: Sequence[float], space: str = "probability") -> np.ndarray:
    """Weighted average in probability space, or of logits (then the sigmoid)."""
    w = np.asarray(weights, dtype=np.float64)
    stack = np.vstack([np.asarray(p, dtype=np.float64) for p in preds])
    if space == "logit":
        return sigmoid(w @ logit(stack))
    return w @ stack


def fit_weights(preds: Sequence[np.ndarray], y: np.ndarray, space: str = "probability") -> list[float]:
    """Non-negative weights summing to one that minimise log loss on (preds, y)."""
    k = len(preds)
    if k == 1:
        return [1.0]

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        return log_loss(y, combine(preds, w / w.sum(), space))

    res = minimize(loss, np.zeros(k), method="L-BFGS-B")
    w = np.exp(res.x - res.x.max())
    w = w / w.sum()
    singles = [log_loss(y, p) for p in preds]
    best = int(np.argmin(singles))
    if log_loss(y, combine(preds, w, space)) > singles[best]:
        w = np.eye(k)[best]
    return [float(v) for v in w]


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n) % folds


def cross_fit(
    preds: Sequence[np.ndarray],
    y: np.ndarray,
    calibration: str,
    weights: Sequence[float] | None,
    space: str,
    folds: int,
    seed: int,
) -> tuple[list[np.ndarray], np.ndarray]:
    """Out-of-fold calibrated inputs and ensemble over the valid rows (fit on K-1 folds, apply on one)."""
    fold = fold_ids(len(y), folds, seed)
    cal_oof = [np.empty(len(y)) for _ in preds]
    ens_oof = np.empty(len(y))
    for k in range(folds):
        test, train = fold == k, fold != k
        cal_train, cal_test = [], []
        for i, p in enumerate(preds):
            cal = Calibrator(calibration).fit(p[train], y[train])
            cal_train.append(cal.transform(p[train]))
            cal_test.append(cal.transform(p[test]))
            cal_oof[i][test] = cal_test[-1]
        w = weights if weights is not None else fit_weights(cal_train, y[train], space)
        ens_oof[test] = combine(cal_test, w, space)
    return cal_oof, ens_oof
