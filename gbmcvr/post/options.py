"""Options of the submit stage, shared by `gbmcvr submit`, `gbmcvr run` and the `[submit]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import typed_fields
from gbmcvr.workdir import check_name

BASE_CALIBRATIONS = ("none", "scaling", "scaling-fit", "isotonic", "platt")
SHIFTS = ("shift-em", "trend")
CALIBRATIONS = (
    *BASE_CALIBRATIONS,
    *SHIFTS,
    *(f"{base}+{shift}" for shift in SHIFTS for base in BASE_CALIBRATIONS if base != "none"),
)
ENSEMBLES = ("equal", "simplex", "logit", "stacker")
SPACES = ("probability", "logit")


@dataclass(frozen=True)
class SubmitOptions:
    calibration: str = "scaling"
    weights: str = "simplex"
    space: str = "probability"
    folds: int = 5
    name: str = "submission"
    trend_days: int = 7
    rehearsal_days: int = 3  # `auto` chooses on this many rehearsal days (backtest, backtest-2, ...) together


def parse_weights(text: str, n_runs: int) -> list[float] | None:
    """A named ensemble (auto, equal, simplex, logit, stacker) -> None; else comma-separated weights, one per run."""
    if text == "auto" or text in ENSEMBLES:
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"weights '{text}': expected auto, {', '.join(ENSEMBLES)} or comma-separated numbers") from None
    if len(weights) != n_runs:
        raise UserError(f"weights '{text}': {len(weights)} weights for {n_runs} runs")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"weights '{text}': weights must be non-negative with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def submit_options(raw: dict[str, Any], where: str) -> SubmitOptions:
    opts = SubmitOptions(**typed_fields(SubmitOptions, raw, where))
    check_name(opts.name, f"{where}: submission name")
    if opts.calibration != "auto":
        check_calibration(opts.calibration)
    if opts.trend_days < 2:
        raise UserError(f"{where}: trend_days must be at least 2")
    if opts.space not in SPACES:
        raise UserError(f"{where}: space must be one of {', '.join(SPACES)}, not '{opts.space}'")
    if opts.rehearsal_days < 1:
        raise UserError(f"{where}: rehearsal_days must be at least 1")
    if int(opts.folds) < 2:
        raise UserError(f"{where}: folds must be at least 2")
    return opts


def check_calibration(name: str) -> str:
    """A calibration method name, or a UserError listing the valid ones."""
    if name not in CALIBRATIONS:
        raise UserError(f"unknown calibration '{name}' (choose from auto, {', '.join(CALIBRATIONS)})")
    return name


def split_calibration(name: str) -> tuple[str, str | None]:
    """`isotonic+shift-em` -> ("isotonic", "shift-em"); `trend` -> ("none", "trend"); `platt` -> ("platt", None)."""
    check_calibration(name)
    if name in SHIFTS:
        return "none", name
    base, _, shift = name.partition("+")
    return base, shift or None
