"""Ingest: read a raw dataset folder into the typed Parquet raw store, refusing bad input with one line."""

from __future__ import annotations

import fnmatch
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gbmcvr.atomic import atomic_dir, write_json
from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError

RAW_FILES = ("train.parquet", "test.parquet")


@dataclass(frozen=True)
class IngestResult:
    out: Path
    train_rows: int
    test_rows: int
    seconds: float


def schema(profile: Profile, with_labels: bool) -> dict[str, pl.DataType]:
    """Polars dtypes of a raw file's columns: integers for ids, days, categoricals; floats for numericals."""
    cols: dict[str, pl.DataType] = {}
    if profile.row_id:
        cols[profile.row_id] = pl.Int64()
    if profile.day:
        cols[profile.day] = pl.Int64()
    cols.update({c: pl.Int64() for c in profile.categorical})
    cols.update({c: pl.Int8() for c in profile.binary})
    cols.update({c: pl.Float64() for c in profile.numerical})
    if with_labels:
        cols.update({c: pl.Int8() for c in profile.label_columns})
    return cols


def source_files(data_dir: Path, profile: Profile) -> tuple[list[Path], list[Path]]:
    """The train and test files the profile's globs match under `data_dir` (sorted), or a UserError."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"{data_dir}: data folder not found (generate one with `gbmcvr synth {data_dir}`)")

    def match(globs: tuple[str, ...], what: str) -> list[Path]:
        files = sorted({p for g in globs for p in data_dir.glob(g) if p.is_file()})
        if not files:
            raise UserError(f"{data_dir}: no {what} files matching {', '.join(globs)}")
        return files

    return match(profile.train_files, "train"), match(profile.test_files, "test")


def source_listing(files: list[Path]) -> list[dict[str, object]]:
    """Name, size and modification time of each source file: what makes a raw store current."""
    return [{"file": str(f), "bytes": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files]


def _header(path: Path, sep: str) -> list[str]:
    with path.open("rb") as fh:
        line = fh.readline().decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            raise UserError(f"{path}: empty file")
        if not fh.readline().strip():
            raise UserError(f"{path}: empty file (header only, no rows)")
    return line.split(sep)


def _check_columns(path: Path, header: list[str], profile: Profile, is_test: bool) -> bool:
    """Check the header against the profile; return whether the file carries the labels."""
    expected = list(schema(profile, with_labels=False))
    labels = [c for c in profile.label_columns if c in header]
    if is_test and labels and profile.test_labels == "refuse":
        raise UserError(f"{path}: label column '{labels[0]}' in the test file (test rows must be unlabelled)")
    with_labels = bool(labels) if is_test else True
    if with_labels:
        expected += list(profile.label_columns)
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise UserError(f"{path}: column '{col}' appears twice in the header")
        seen.add(col)
        if col not in expected:
            raise UserError(f"{path}: unexpected column '{col}' (not in profile '{profile.name}')")
    for col in expected:
        if col not in seen:
            raise UserError(f"{path}: missing column '{col}' (profile '{profile.name}')")
    return with_labels


def _locate_bad_value(path: Path, sep: str, dtypes: dict[str, pl.DataType]) -> str:
    """Find the first value that does not parse as its column's type; a one-line description."""
    text = pl.read_csv(path, separator=sep, infer_schema=False)
    for col, dtype in dtypes.items():
        raw = text[col]
        parsed = raw.cast(dtype, strict=False)
        bad = (raw.is_not_null() & parsed.is_null()).arg_true()
        if len(bad):
            row = int(bad[0])
            kind = "an integer" if dtype.is_integer() else "a number"
            return f"{path}: line {row + 2}, column '{col}': '{raw[row]}' is not {kind}"
    return f"{path}: could not be parsed as the profile's types"


def _read_file(path: Path, profile: Profile, is_test: bool) -> pl.DataFrame:
    header = _header(path, profile.separator)
    with_labels = _check_columns(path, header, profile, is_test)
    dtypes = schema(profile, with_labels)
    try:
        frame = pl.read_csv(
            path, separator=profile.separator, schema={c: dtypes[c] for c in header}, raise_if_empty=True
        )
    except (pl.exceptions.ComputeError, pl.exceptions.InvalidOperationError, pl.exceptions.NoDataError):
        raise UserError(_locate_bad_value(path, profile.separator, dtypes)) from None
    if profile.day is None:
        day = next((d for g, d in profile.file_days.items() if fnmatch.fnmatch(path.name, g)), None)
        if day is None:
            raise UserError(f"{path}: no file_days entry of profile '{profile.name}' matches this file name")
        frame = frame.with_columns(pl.lit(day, dtype=pl.Int64).alias(profile.day_column))
    if profile.binary:
        bad = frame.select(pl.any_horizontal(~pl.col(profile.binary).is_in([0, 1]))).to_series().arg_true()
        if len(bad):
            row = int(bad[0])
            col = next(c for c in profile.binary if frame[c][row] not in (0, 1))
            raise UserError(f"{path}: line {row + 2}, column '{col}': binary value {frame[col][row]} is not 0 or 1")
    return frame


def _read_split(files: list[Path], profile: Profile, is_test: bool, progress: Callable[[str], None]) -> pl.DataFrame:
    frames = []
    for i, path in enumerate(files):
        frames.append(_read_file(path, profile, is_test))
        progress(f"read {path.name} ({i + 1}/{len(files)}, {frames[-1].height:,} rows)")
    return pl.concat(frames, how="diagonal_relaxed")


def _fingerprint(paths: list[Path]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for path in paths:
        with path.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


def ingest(
    data_dir: Path, profile: Profile, out: Path, progress: Callable[[str], None] = lambda _: None
) -> IngestResult:
    """Validate and convert `data_dir` into `out/{train,test}.parquet` plus `manifest.json`, atomically."""
    start = time.perf_counter()
    train_files, test_files = source_files(data_dir, profile)
    train = _read_split(train_files, profile, False, progress)
    test = _read_split(test_files, profile, True, progress)
    id_col, day_col = profile.id_column, profile.day_column
    if profile.row_id is None:
        train = train.with_row_index(id_col).with_columns(pl.col(id_col).cast(pl.Int64))
        test = test.with_row_index(id_col, offset=train.height).with_columns(pl.col(id_col).cast(pl.Int64))
    ids = pl.concat([train[id_col], test[id_col]])
    if ids.null_count():
        raise UserError(f"{data_dir}: row id column '{id_col}' has empty values")
    if ids.n_unique() != len(ids):
        dup = ids.filter(ids.is_duplicated())[0]
        raise UserError(f"{data_dir}: duplicate row id {dup} in column '{id_col}' (row ids must be unique)")
    overlap = set(test[day_col].unique().to_list()) & set(train[day_col].unique().to_list())
    if overlap:
        raise UserError(f"{data_dir}: test day {min(overlap)} also appears in the train files")
    truth = None
    if profile.install_label in test.columns:
        truth = test.select(id_col, *profile.label_columns)
        test = test.drop(profile.label_columns)
    train = train.select(id_col, day_col, *profile.feature_columns, *profile.label_columns)
    test = test.select(id_col, day_col, *profile.feature_columns)
    with atomic_dir(Path(out)) as tmp:
        train.write_parquet(tmp / "train.parquet")
        test.write_parquet(tmp / "test.parquet")
        written = [tmp / "train.parquet", tmp / "test.parquet"]
        if truth is not None:
            truth.write_parquet(tmp / "test_truth.parquet")
        write_json(
            tmp / "manifest.json",
            {
                "profile": profile.name,
                "data_dir": str(Path(data_dir).resolve()),
                "sources": source_listing(train_files + test_files),
                "rows": {"train": train.height, "test": test.height},
                "fingerprint": _fingerprint(written),
            },
        )
        progress(f"wrote raw store ({train.height:,} train rows, {test.height:,} test rows)")
    return IngestResult(Path(out), train.height, test.height, time.perf_counter() - start)
