"""Post-processing as one function of what the target day can give, and its choice by backtest.

`post_process` turns members' valid predictions (with labels), their unlabeled target-day predictions and
the install rate of each labelled day into target-day probabilities: a valid-fitted calibrator per
member, an ensemble, then an optional label-shift step (`shift-em` or `trend`) on the ensemble.

`auto` is decided in three separate steps so that no chooser can peek: `candidate_predictions` never sees
target labels (its inputs have none), `score_candidates` turns predictions and the backtest day's labels
into scores, and `choose` sees only those scores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gbmcvr import metrics
from gbmcvr.post.calibrate import Calibrator, prior_shift
from gbmcvr.post.ensemble import Ensemble
from gbmcvr.post.options import CALIBRATIONS, ENSEMBLES, parse_weights, split_calibration
from gbmcvr.post.shift import em_prior, match_mean, trend_rate
from gbmcvr.rehearsal import pooled_gain


@dataclass(frozen=True)
class DayRates:
    """Install rate of each labelled day (fit and validation days of a plan)."""

    days: np.ndarray
    rates: np.ndarray


@dataclass
class PostInputs:
    """Everything post-processing may look at; there is deliberately no field for target-day labels."""

    valid: list[np.ndarray]
    y_valid: np.ndarray
    target: list[np.ndarray]
    history: DayRates
    target_day: int


@dataclass
class Processed:
    """The output of one post-processing method: calibrated members, ensemble, shift, on valid and target."""

    members_valid: list[np.ndarray]
    members_target: list[np.ndarray]
    valid: np.ndarray
    target: np.ndarray
    calibrators: list[Calibrator]
    ensemble: Ensemble
    shift: dict[str, Any] = field(default_factory=dict)


def make_ensemble(weights: str, n_members: int, space: str) -> Ensemble:
    """An unfitted ensemble from the `weights` option (a method name or fixed comma-separated weights)."""
    if n_members == 1:
        return Ensemble("equal")
    if weights in ENSEMBLES:
        return Ensemble(weights, space=space)
    return Ensemble("fixed", parse_weights(weights, n_members), space)


def base_calibrate(inputs: PostInputs, base: str) -> tuple[list[Calibrator], list[np.ndarray], list[np.ndarray]]:
    """Fit one calibrator per member on valid; return them with the calibrated valid and target predictions."""
    cals = [Calibrator(base).fit(p, inputs.y_valid) for p in inputs.valid]
    return (
        cals,
        [c.transform(p) for c, p in zip(cals, inputs.valid, strict=True)],
        [c.transform(p) for c, p in zip(cals, inputs.target, strict=True)],
    )


def apply_shift(
    shift: str | None, valid: np.ndarray, target: np.ndarray, history: DayRates, target_day: int, trend_days: int
) -> tuple[np.ndarray, dict[str, Any]]:
    """Rescale the target predictions' odds for a label shift; returns them and what was estimated."""
    if shift is None:
        return target, {}
    if shift == "shift-em":
        source = float(np.mean(valid))
        prior, w = em_prior(target, source)
        return prior_shift(target, w), {"method": shift, "w": w, "source_prior": source, "target_prior": prior}
    rate = trend_rate(history.days, history.rates, target_day, trend_days)
    w = match_mean(target, rate)
    return prior_shift(target, w), {"method": shift, "w": w, "target_rate": rate, "trend_days": trend_days}


def post_process(
    inputs: PostInputs,
    calibration: str,
    weights: str,
    space: str = "probability",
    folds: int = 5,
    seed: int = 0,
    trend_days: int = 7,
) -> Processed:
    """Calibrate each member on valid, ensemble them, then correct the ensemble for the target day's shift."""
    base, shift = split_calibration(calibration)
    cals, cal_valid, cal_target = base_calibrate(inputs, base)
    ens = make_ensemble(weights, len(inputs.valid), space).fit(cal_valid, inputs.y_valid, folds, seed)
    return _finish(inputs, cals, cal_valid, cal_target, ens, shift, trend_days)


def _finish(inputs, cals, cal_valid, cal_target, ens, shift, trend_days) -> Processed:
    ens_valid_fit = ens.apply(cal_valid)
    ens_valid = ens.valid_oof if ens.valid_oof is not None else ens_valid_fit
    target, state = apply_shift(
        shift, ens_valid_fit, ens.apply(cal_target), inputs.history, inputs.target_day, trend_days
    )
    return Processed(cal_valid, cal_target, ens_valid, np.clip(target, 0.0, 1.0), cals, ens, state)


def candidates(calibration: str, weights: str, n_members: int) -> list[tuple[str, str]]:
    """(calibration, weights) pairs to try: every method where the option is `auto`, else the given one."""
    cals = CALIBRATIONS if calibration == "auto" else (calibration,)
    named = ENSEMBLES if n_members > 1 else ("equal",)
    ens = named if weights == "auto" else (weights,)
    return [(c, e) for c in cals for e in ens]


def candidate_predictions(
    inputs: PostInputs,
    pairs: list[tuple[str, str]],
    space: str = "probability",
    folds: int = 5,
    seed: int = 0,
    trend_days: int = 7,
) -> dict[tuple[str, str], np.ndarray]:
    """Target-day predictions of every candidate; base calibrations and ensembles are fitted once each."""
    bases: dict[str, tuple] = {}
    ensembles: dict[tuple[str, str], Ensemble] = {}
    out = {}
    for calibration, weights in pairs:
        base, shift = split_calibration(calibration)
        if base not in bases:
            bases[base] = base_calibrate(inputs, base)
        cals, cal_valid, cal_target = bases[base]
        if (base, weights) not in ensembles:
            ens = make_ensemble(weights, len(inputs.valid), space)
            ensembles[base, weights] = ens.fit(cal_valid, inputs.y_valid, folds, seed)
        done = _finish(inputs, cals, cal_valid, cal_target, ensembles[base, weights], shift, trend_days)
        out[calibration, weights] = done.target
    return out


def score_candidates(
    preds: dict[tuple[str, str], np.ndarray], y_target: np.ndarray, base_rate: float, days: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Backtest table: each candidate's target-day log loss, NCE, calibration ratio and mean prediction, and
    its log-loss gap to the best candidate with the gap's paired standard error, clustered by rehearsal day
    (`days`, one label per row; a calibration that helps on one day and hurts on another is not evidence)."""
    y = np.asarray(y_target, dtype=np.float64)
    days = np.zeros(len(y), dtype=np.int64) if days is None else np.asarray(days)
    losses = {}
    rows = []
    for (calibration, weights), p in preds.items():
        q = np.clip(np.asarray(p, dtype=np.float64), metrics.EPS, 1 - metrics.EPS)
        losses[calibration, weights] = -(y * np.log(q) + (1 - y) * np.log1p(-q))
        r = metrics.report(y, p, base_rate)
        rows.append(
            {
                "calibration": calibration,
                "weights": weights,
                "logloss": r["logloss"],
                "nce": r["nce"],
                "calibration_ratio": r["calibration_ratio"],
                "mean_p": float(np.mean(p)),
            }
        )
    best = losses[choose(rows)]
    for row in rows:
        gap = pooled_gain(losses[row["calibration"], row["weights"]], best, days)
        row["gap"] = gap.mean
        row["gap_se"] = gap.se if len(y) > 1 else float("nan")
    return rows


def choose(rows: list[dict[str, Any]]) -> tuple[str, str]:
    """The candidate with the lowest backtest log loss (the earlier, simpler one on ties)."""
    best = min(range(len(rows)), key=lambda i: (rows[i]["logloss"], i))
    return rows[best]["calibration"], rows[best]["weights"]


SIGNIFICANCE = 2.0  # a change is taken only when it wins by more than this many paired standard errors


def decide(rows: list[dict[str, Any]], z: float = SIGNIFICANCE) -> tuple[str, str]:
    """The best candidate if it beats the simplest (the first) by more than `z` paired standard errors of the
    row-level log-loss difference; otherwise the simplest stays (one small day's noise is not evidence)."""
    best = choose(rows)
    baseline = rows[0]
    gap, se = baseline.get("gap", 0.0), baseline.get("gap_se", 0.0)
    if gap > 0 and (not np.isfinite(se) or gap > z * se):
        return best
    return baseline["calibration"], baseline["weights"]
