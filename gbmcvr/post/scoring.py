"""Score a submission against a truth table (the generated data's, or a labelled test split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.errors import UserError
from gbmcvr.post import submission as sub


def read_truth(truth: Path) -> pl.DataFrame:
    """`truth/test_truth.parquet` under a dataset folder, or the file itself; columns row_id, is_installed."""
    truth = Path(truth)
    path = truth / "truth" / "test_truth.parquet" if truth.is_dir() else truth
    if not path.is_file():
        raise UserError(f"{truth}: no truth file (expected {path})")
    return pl.read_parquet(path)


def train_install_rate(truth: Path) -> float | None:
    """The train install rate that `gbmcvr synth` records beside its truth file, if there is one."""
    meta = Path(truth) / "truth" / "train_rate.json"
    if meta.is_file():
        return float(json.loads(meta.read_text())["install_rate"])
    return None


def score_frame(pred: pl.DataFrame, truth: pl.DataFrame, base_rate: float) -> dict[str, float]:
    """Metrics of a RowId/is_installed frame against truth rows (row_id, is_installed[, p_install])."""
    joined = truth.join(pred.rename({"RowId": "row_id", "is_installed": "p"}), on="row_id", how="left")
    if joined["p"].null_count():
        raise UserError(f"{joined['p'].null_count():,} truth rows have no prediction")
    y = joined["is_installed"].to_numpy()
    result = metrics.report(y, joined["p"].to_numpy(), base_rate)
    if "p_install" in joined.columns:
        result["truth_logloss"] = metrics.log_loss(y, joined["p_install"].to_numpy())
        result["truth_nce"] = result["truth_logloss"] / metrics.entropy(base_rate)
    return result


def score_submission(path: Path, truth: Path, base_rate: float | None) -> dict[str, float]:
    """Read, validate against the truth's ids, and score a submission file."""
    table = read_truth(truth)
    frame = sub.read(path)
    sub.validate(frame, table["row_id"], str(path))
    rate = base_rate if base_rate is not None else train_install_rate(truth)
    source = "given" if base_rate is not None else "train install rate"
    if rate is None:
        rate, source = (
            float(np.mean(table["is_installed"].to_numpy())),
            "test install rate (no train rate found)",
        )
    result = score_frame(frame, table, rate)
    result["nce_base_rate_source"] = source
    return result


def format_score(result: dict) -> str:
    lines = [
        f"log loss            {result['logloss']:.5f}",
        f"NCE                 {result['nce']:.5f}   (base rate {result['nce_base_rate']:.4f}, {result['nce_base_rate_source']})",
        f"AUC                 {result['auc']:.5f}",
        f"calibration ratio   {result['calibration_ratio']:.4f}",
        f"ECE                 {result['ece']:.5f}",
    ]
    if "truth_logloss" in result:
        lines.append(f"truth log loss      {result['truth_logloss']:.5f}   (the floor: true probabilities)")
    return "\n".join(lines)
