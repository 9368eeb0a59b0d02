"""Weighted ensembles of calibrated probabilities, with weights fixed or fitted on valid, and cross-fitting.

Weights fitted on valid live on the simplex (softmax parametrisation, minimising log loss); if the
optimum is worse than the best single input the best input alone is returned, so a fitted ensemble is
never worse on valid than its best member. `cross_fit` reports calibration + weights fitted on K-1 folds
of the valid rows and scored on the held-out fold, so the report does not praise itself.

`Ensemble` names the four ways to combine: `equal` (fixed equal weights, or the user's own), `simplex`
(weights fitted in probability space), `logit` (weights fitted on the logits) and `stacker` (a logistic
regression on the members' logits, cross-fitted so its valid predictions are out of fold).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize
from sklearn.linear_model import LogisticRegression

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
    method: str = "simplex",
) -> tuple[list[np.ndarray], np.ndarray]:
    """Out-of-fold calibrated inputs and ensemble over the valid rows (fit on K-1 folds, apply on one).

    `calibration` is a valid-fitted map (none, scaling, scaling-fit, isotonic, platt); `weights` fixes the
    ensemble, else `method` (equal, simplex, logit, stacker) fits it on each K-1 folds.
    """
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
        if weights is not None:
            ens = Ensemble("fixed", weights, space)
        else:
            ens = Ensemble(method if len(preds) > 1 else "equal", space=space).fit(cal_train, y[train], folds, seed)
        ens_oof[test] = ens.apply(cal_test)
    return cal_oof, ens_oof


class Ensemble:
    """A combination of member predictions fitted on valid: `method` is equal, simplex, logit, stacker or fixed."""

    def __init__(self, method: str, weights: Sequence[float] | None = None, space: str = "probability") -> None:
        self.method = method
        self.space = "logit" if method == "logit" else space
        self.weights = list(weights) if weights is not None else []
        self.coef: list[float] = []
        self.valid_oof: np.ndarray | None = None

    def fit(self, preds: Sequence[np.ndarray], y: np.ndarray, folds: int = 5, seed: int = 0) -> Ensemble:
        """Learn weights (or the stacker) on the valid rows; the stacker also keeps out-of-fold valid output."""
        k = len(preds)
        if self.method == "equal":
            self.weights = self.weights or [1.0 / k] * k
        elif self.method in ("simplex", "logit"):
            self.weights = fit_weights(preds, y, self.space)
        elif self.method == "stacker":
            x = _stack_logits(preds)
            fold = fold_ids(len(y), folds, seed)
            oof = np.empty(len(y))
            for f in range(folds):
                held = fold == f
                oof[held] = _stacker(x[~held], y[~held]).predict_proba(x[held])[:, 1]
            lr = _stacker(x, y)
            self.coef = [float(lr.intercept_[0]), *map(float, lr.coef_[0])]
            self.valid_oof = oof
        elif self.method != "fixed":
            raise ValueError(f"unknown ensemble method '{self.method}'")
        return self

    def apply(self, preds: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's probabilities for aligned member predictions."""
        if self.method == "stacker":
            z = self.coef[0] + _stack_logits(preds) @ np.asarray(self.coef[1:])
            return sigmoid(z)
        return np.clip(combine(preds, self.weights, self.space), 0.0, 1.0)

    def label(self) -> str:
        if self.method == "stacker":
            return "stacker " + ", ".join(f"{c:.3f}" for c in self.coef) + " (intercept, logit coefficients)"
        return f"{self.method} " + ", ".join(f"{w:.3f}" for w in self.weights) + f" ({self.space})"


def _stack_logits(preds: Sequence[np.ndarray]) -> np.ndarray:
    return np.column_stack([logit(p) for p in preds])


def _stacker(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(C=1.0, max_iter=1000).fit(x, y)
