"""A memory budget for a stage's fit Dataset: above it, every positive row and a seeded share of the negatives.

LightGBM's binned Dataset holds about one byte per input and row (`max_bin` up to 255), whatever the columns'
types, so rows x inputs bounds it. Negative down-sampling with weights 1/share (He et al., 2014, "Practical
lessons from predicting clicks on ads at Facebook") keeps every positive and leaves the expected gradient of
the log loss unchanged, so the model stays calibrated; where the positives alone exceed the budget, a uniform
share of every row is kept (unweighted, which changes no rate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BYTES_PER_INPUT = 1  # LightGBM bins up to 256 values to one byte per input and row


@dataclass(frozen=True)
class FitSample:
    """The rows a stage's Dataset keeps: `keep` (a mask over the stage's rows) and their weights, or None for
    every row, unweighted; `share` is the kept share of the negatives (of every row when `uniform`)."""

    keep: np.ndarray | None
    weight: np.ndarray | None
    share: float
    uniform: bool = False

    @property
    def sampled(self) -> bool:
        """Whether the Dataset keeps fewer rows than the stage has."""
        return self.keep is not None


EVERY_ROW = FitSample(None, None, 1.0)


def dataset_bytes(rows: int, inputs: int) -> int:
    """About what LightGBM's binned Dataset of `rows` x `inputs` holds in memory."""
    return rows * inputs * BYTES_PER_INPUT


def budget_sample(y: np.ndarray, inputs: int, max_gb: float, seed: int) -> FitSample:
    """Every row when the Dataset fits `max_gb`; else every positive and a seeded share of the negatives,
    weighted 1/share, chosen so that the kept rows fit; else (too many positives) a uniform share of all rows."""
    rows = len(y)
    allowed = int(max_gb * 1e9 // max(inputs * BYTES_PER_INPUT, 1))
    if rows <= allowed:
        return EVERY_ROW
    u = np.random.default_rng(seed).random(rows)
    positive = y > 0
    n_pos = int(positive.sum())
    if n_pos >= allowed:
        share = allowed / rows
        return FitSample(u < share, None, share, uniform=True)
    share = (allowed - n_pos) / (rows - n_pos)
    keep = positive | (u < share)
    weight = np.where(positive[keep], 1.0, 1.0 / share)
    return FitSample(keep, weight, share)


def describe(stage: str, rows: int, inputs: int, max_gb: float, sample: FitSample) -> str:
    """The progress line that says a stage trains on a sample, and why."""
    size = dataset_bytes(rows, inputs) / 1e9
    head = f"{stage}: {rows:,} rows x {inputs} inputs is about {size:.1f} GB binned, over [gbm] max_dataset_gb = {max_gb:g}"
    if sample.uniform:
        return f"{head}: training on a seeded {sample.share:.1%} of the rows (the positives alone exceed it)"
    return (
        f"{head}: training on every positive and a seeded {sample.share:.1%} of the negatives, "
        f"weighted 1/{sample.share:.3f} (calibration kept)"
    )
