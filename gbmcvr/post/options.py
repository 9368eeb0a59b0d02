"""Options of the submit stage, shared by `gbmcvr submit`, `gbmcvr run` and the `[submit]` config section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import typed_fields

CALIBRATIONS = ("none", "scaling", "scaling-fit", "isotonic", "platt")
SPACES = ("probability", "logit")


@dataclass(frozen=True)
class SubmitOptions:
    calibration: str = "scaling"
    weights: str = "auto"
    space: str = "probability"
    folds: int = 5
    name: str = "submission"


def parse_weights(text: str, n_runs: int) -> list[float] | None:
    """`auto` -> None (fit on valid); otherwise comma-separated non-negative weights, one per run."""
    if text == "auto":
        return None
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise UserError(f"weights '{text}': expected 'auto' or comma-separated numbers") from None
    if len(weights) != n_runs:
        raise UserError(f"weights '{text}': {len(weights)} weights for {n_runs} runs")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise UserError(f"weights '{text}': weights must be non-negative with a positive sum")
    total = sum(weights)
    return [w / total for w in weights]


def submit_options(raw: dict[str, Any], where: str) -> SubmitOptions:
    opts = SubmitOptions(**typed_fields(SubmitOptions, raw, where))
    check_calibration(opts.calibration)
    if opts.space not in SPACES:
        raise UserError(f"{where}: space must be one of {', '.join(SPACES)}, not '{opts.space}'")
    if int(opts.folds) < 2:
        raise UserError(f"{where}: folds must be at least 2")
    return opts


def check_calibration(name: str) -> str:
    if name not in CALIBRATIONS:
        raise UserError(f"unknown calibration '{name}' (choose from {', '.join(CALIBRATIONS)})")
    return name
