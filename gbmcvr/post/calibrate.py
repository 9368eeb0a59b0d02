"""Probability calibration fitted on a run's valid predictions and applied to its test predictions.

`scaling` is the prior-shift correction of He et al. (2014) used by the paper: p' = p / (p + (1 - p) / w)
with w = mean(y) / mean(p); `scaling-fit` chooses w by minimising the validation log loss instead.
`isotonic` and `platt` come from scikit-learn. Every calibrator saves to and loads from JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from gbmcvr.errors import UserError
from gbmcvr.metrics import EPS, log_loss
from gbmcvr.post.options import BASE_CALIBRATIONS


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def prior_shift(p: np.ndarray, w: float) -> np.ndarray:
    """p / (p + (1 - p) / w): rescales the odds by w."""
    p = np.asarray(p, dtype=np.float64)
    return p / (p + (1 - p) / w)


class Calibrator:
    """A fitted calibration map; `method` is one of none, scaling, scaling-fit, isotonic, platt."""

    def __init__(self, method: str) -> None:
        if method not in BASE_CALIBRATIONS:
            raise UserError(f"unknown calibration '{method}' (a valid-fitted map: {', '.join(BASE_CALIBRATIONS)})")
        self.method = method
        self.state: dict[str, Any] = {}

    def fit(self, p: np.ndarray, y: np.ndarray) -> Calibrator:
        p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
        y = np.asarray(y, dtype=np.float64)
        if len(p) == 0 or y.min() == y.max():
            raise UserError(f"calibration '{self.method}' needs valid rows with both labels")
        if self.method == "scaling":
            self.state = {"w": float(y.mean() / p.mean())}
        elif self.method == "scaling-fit":
            res = minimize_scalar(lambda lw: log_loss(y, prior_shift(p, np.exp(lw))), bounds=(-5, 5), method="bounded")
            self.state = {"w": float(np.exp(res.x))}
        elif self.method == "isotonic":
            iso = IsotonicRegression(y_min=EPS, y_max=1 - EPS, out_of_bounds="clip").fit(p, y)
            self.state = {"x": iso.X_thresholds_.tolist(), "y": iso.y_thresholds_.tolist()}
        elif self.method == "platt":
            lr = LogisticRegression(C=1e6, max_iter=1000).fit(logit(p)[:, None], y)
            self.state = {"a": float(lr.coef_[0, 0]), "b": float(lr.intercept_[0])}
        return self

    def transform(self, p: np.ndarray) -> np.ndarray:
        p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1 - EPS)
        if self.method == "none":
            out = p
        elif self.method in ("scaling", "scaling-fit"):
            out = prior_shift(p, self.state["w"])
        elif self.method == "isotonic":
            out = np.interp(p, self.state["x"], self.state["y"])
        else:
            out = sigmoid(self.state["a"] * logit(p) + self.state["b"])
        return np.clip(out, EPS, 1 - EPS)

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, **self.state}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Calibrator:
        cal = cls(obj["method"])
        cal.state = {k: v for k, v in obj.items() if k != "method"}
        return cal
