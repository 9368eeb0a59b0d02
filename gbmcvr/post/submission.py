"""Submission files: `RowId\tis_clicked\tis_installed`, one row per test row; a writer and a validator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr.atomic import atomic_path
from gbmcvr.errors import UserError

COLUMNS = ("RowId", "is_clicked", "is_installed")


def build(row_id: np.ndarray, p_click: np.ndarray, p_install: np.ndarray) -> pl.DataFrame:
    """A submission frame from arrays (ids as integers, probabilities as floats)."""
    return pl.DataFrame(
        {
            "RowId": pl.Series(row_id, dtype=pl.Int64),
            "is_clicked": pl.Series(p_click, dtype=pl.Float64),
            "is_installed": pl.Series(p_install, dtype=pl.Float64),
        }
    )


def validate(frame: pl.DataFrame, test_ids: pl.Series, where: str = "submission") -> None:
    """Refuse a submission whose columns, ids or probabilities are wrong; the message names the defect."""
    if tuple(frame.columns) != COLUMNS:
        raise UserError(f"{where}: columns are {', '.join(frame.columns)}; expected {', '.join(COLUMNS)}")
    if frame.height != len(test_ids):
        raise UserError(f"{where}: {frame.height:,} rows, but the test set has {len(test_ids):,}")
    if frame["RowId"].null_count() or frame["RowId"].n_unique() != frame.height:
        dup = frame.filter(pl.col("RowId").is_duplicated())["RowId"]
        raise UserError(f"{where}: RowId {dup[0] if len(dup) else 'null'} appears more than once or is empty")
    missing = test_ids.filter(~test_ids.is_in(frame["RowId"].implode()))
    if len(missing):
        raise UserError(f"{where}: test RowId {missing[0]} is missing ({len(missing):,} test ids absent)")
    for col in ("is_clicked", "is_installed"):
        values = frame[col].cast(pl.Float64, strict=False)
        bad = (values.is_null() | ~values.is_finite() | (values < 0) | (values > 1)).arg_true()
        if len(bad):
            row = int(bad[0])
            raise UserError(
                f"{where}: {col} at RowId {frame['RowId'][row]} is {frame[col][row]}; probabilities must be finite in [0, 1]"
            )


def read(path: Path) -> pl.DataFrame:
    """Read a submission TSV as written (RowId integer, probabilities float); malformed files are UserErrors."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: submission file not found")
    try:
        return pl.read_csv(
            path, separator="\t", schema_overrides={"RowId": pl.Int64}, infer_schema_length=10_000, glob=False
        )
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError) as exc:
        raise UserError(f"{path}: not a readable submission TSV ({str(exc).splitlines()[0]})") from None


def write(path: Path, frame: pl.DataFrame, test_ids: pl.Series) -> None:
    """Validate, then write the TSV atomically (a failed validation writes nothing)."""
    validate(frame, test_ids, str(path))
    with atomic_path(Path(path)) as tmp:
        frame.write_csv(tmp, separator="\t", float_precision=8)
