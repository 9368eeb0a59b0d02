"""Score a submission against a truth table (the generated data's, or a labelled test split)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.errors import UserError
from gbmcvr.post import submission as sub
from gbmcvr.schema import TRUTH_FILE, TRUTH_ID, TRUTH_INSTALL, TRUTH_P_INSTALL


def read_truth(truth: Path) -> pl.DataFrame:
    """The truth table (columns row_id, is_installed[, p_install]): the file itself, or `truth/test_truth.parquet`
    under a generated dataset folder, or `test_truth.parquet` in a raw store (a labelled test split)."""
    truth = Path(truth)
    candidates = [truth / "truth" / TRUTH_FILE, truth / TRUTH_FILE] if truth.is_dir() else [truth]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise UserError(f"{truth}: no truth file (expected {' or '.join(map(str, candidates))})")
    table = pl.read_parquet(path, glob=False)
    for col in (TRUTH_ID, TRUTH_INSTALL):
        if col not in table.columns:
            raise UserError(f"{path}: truth table without column '{col}' (has {', '.join(table.columns)})")
    return table


def check_truth_covers(table: pl.DataFrame, test_ids: pl.Series, where: Path) -> None:
    """Refuse a truth table that is not this data set's: its ids must be exactly the test rows' ids."""
    truth_ids = table[TRUTH_ID]
    matched = int(truth_ids.is_in(test_ids.implode()).sum())
    if matched != len(test_ids) or len(truth_ids) != len(test_ids):
        raise UserError(
            f"{where}: not the truth of the ingested test day ({matched:,} of its {len(truth_ids):,} ids are among "
            f"the {len(test_ids):,} test rows); pass the truth of the data that was ingested"
        )


def train_install_rate(truth: Path) -> float | None:
    """The train install rate that `gbmcvr synth` records beside its truth file, if there is one."""
    meta = Path(truth) / "truth" / "train_rate.json"
    if meta.is_file():
        return float(json.loads(meta.read_text())["install_rate"])
    return None


def score_frame(pred: pl.DataFrame, truth: pl.DataFrame, base_rate: float) -> dict[str, float]:
    """Metrics of a RowId/is_installed frame against truth rows (row_id, is_installed[, p_install])."""
    joined = truth.join(pred.rename({"RowId": TRUTH_ID, "is_installed": "p"}), on=TRUTH_ID, how="left")
    if joined["p"].null_count():
        raise UserError(f"{joined['p'].null_count():,} truth rows have no prediction")
    y = joined[TRUTH_INSTALL].to_numpy()
    result = metrics.report(y, joined["p"].to_numpy(), base_rate)
    if TRUTH_P_INSTALL in joined.columns:
        result["truth_logloss"] = metrics.log_loss(y, joined[TRUTH_P_INSTALL].to_numpy())
        result["truth_nce"] = result["truth_logloss"] / metrics.entropy(base_rate)
    return result


def score_submission(path: Path, truth: Path, base_rate: float | None) -> dict[str, float]:
    """Read, validate against the truth's ids, and score a submission file."""
    if base_rate is not None and not 0 < base_rate < 1:
        raise UserError(f"--base-rate must lie strictly between 0 and 1 (an install rate), got {base_rate}")
    table = read_truth(truth)
    frame = sub.read(path)
    sub.validate(frame, table[TRUTH_ID], str(path))
    rate = base_rate if base_rate is not None else train_install_rate(truth)
    source = "given" if base_rate is not None else "train install rate"
    if rate is None:
        rate, source = (
            float(np.mean(table[TRUTH_INSTALL].to_numpy())),
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
