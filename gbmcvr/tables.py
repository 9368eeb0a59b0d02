"""Feature tables as the model stages see them: frames per split plus column roles from the manifest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow.parquet as pq

from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import read_manifest
from gbmcvr.schema import LIKE
from gbmcvr.stored import check_parquet

BATCH_ROWS = 100_000  # rows per batch of an in-memory split (a Parquet file's batches are its row groups)


@dataclass(frozen=True)
class RowBatch:
    """Consecutive rows of a split, read on demand: `rows` of them pass the batch's row mask."""

    rows: int
    load: Callable[[], pl.DataFrame]


@dataclass
class FeatureTables:
    """One plan's tables: `splits` maps fit/valid/test to frames; columns by role from the manifest.

    A split's frame may hold only its id, day and label columns (`load_tables(..., lean=...)`): its model
    inputs stay in `<plan_dir>/<split>.parquet`, which `maxima` and `batches` read.
    """

    plan_dir: Path
    manifest: dict
    splits: dict[str, pl.DataFrame]

    @property
    def id_column(self) -> str:
        return next(c["name"] for c in self.manifest["columns"] if c["role"] == "id")

    @property
    def install_label(self) -> str:
        labels = [c["name"] for c in self.manifest["columns"] if c["role"] == "label" and c["name"] != LIKE]
        return labels[-1]

    def columns(self, role: str) -> list[str]:
        return [c["name"] for c in self.manifest["columns"] if c["role"] == role]

    def native_categoricals(self) -> list[str]:
        """Categorical columns the feature set hands to LightGBM as native categoricals (all, in old manifests)."""
        return [c["name"] for c in self.manifest["columns"] if c["role"] == "categorical" and c.get("native", True)]

    def features(self) -> list[str]:
        """Model inputs: the categorical and numeric columns."""
        return [c["name"] for c in self.manifest["columns"] if c["role"] in ("categorical", "numeric")]

    def in_memory(self, split: str, columns: list[str]) -> bool:
        """Whether the split's frame holds all `columns` (else they are read from its Parquet file)."""
        have = set(self.splits[split].columns)
        return all(c in have for c in columns)

    def path(self, split: str) -> Path:
        return self.plan_dir / f"{split}.parquet"

    def frame(self, split: str, columns: list[str] | None = None) -> pl.DataFrame:
        """The split's frame with `columns` too (default: every model input); those a lean split lacks are read
        from its Parquet file (only they, and not kept)."""
        frame = self.splits[split]
        missing = [c for c in (self.features() if columns is None else columns) if c not in frame.columns]
        if not missing:
            return frame
        return frame.hstack(pl.read_parquet(self.path(split), columns=missing, glob=False).get_columns())

    def maxima(self, split: str, columns: list[str]) -> list[Any]:
        """Each column's maximum over the split (None for an empty or all-null column)."""
        if not columns:
            return []
        if self.in_memory(split, columns):
            return list(self.splits[split].select(pl.col(columns).max()).row(0))
        return list(pl.scan_parquet(self.path(split), glob=False).select(pl.col(columns).max()).collect().row(0))

    def batches(self, split: str, columns: list[str], keep: np.ndarray | None = None) -> list[RowBatch]:
        """The split's `columns` as consecutive row batches, in row order, each read when loaded: the rows of a
        frame that holds them, else the Parquet file's row groups. `keep` (a boolean mask over the split's
        rows) drops rows; batches left without rows are skipped."""
        if self.in_memory(split, columns):
            frame = self.splits[split]
            bounds = [(s, min(BATCH_ROWS, frame.height - s)) for s in range(0, frame.height, BATCH_ROWS)]

            def reader(start: int, length: int) -> Callable[[], pl.DataFrame]:
                return lambda: frame.slice(start, length).select(columns)

        else:
            path = self.path(split)
            meta = pq.ParquetFile(path).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            starts = np.cumsum([0, *sizes])
            bounds = list(zip(starts[:-1].tolist(), sizes, strict=True))
            group = dict(zip(starts[:-1].tolist(), range(len(sizes)), strict=True))

            def reader(start: int, length: int) -> Callable[[], pl.DataFrame]:
                def load() -> pl.DataFrame:
                    table = pq.ParquetFile(path).read_row_group(group[start], columns=columns)
                    return pl.from_arrow(table)

                return load

        out = []
        for start, length in bounds:
            load = reader(start, length)
            if keep is None:
                out.append(RowBatch(length, load))
                continue
            mask = keep[start : start + length]
            if mask.any():
                out.append(RowBatch(int(mask.sum()), _masked(load, mask)))
        return out

    def base_rate(self) -> float:
        """Install rate of the fit window: the default NCE base rate."""
        return float(self.splits["fit"][self.install_label].mean())


def _masked(load: Callable[[], pl.DataFrame], mask: np.ndarray) -> Callable[[], pl.DataFrame]:
    return lambda: load().filter(pl.Series(mask))


def load_tables(
    features_root: Path,
    feature_set: str,
    plan: str,
    splits: tuple[str, ...] = ("fit", "valid", "test"),
    lean: tuple[str, ...] = (),
) -> FeatureTables:
    """Read a plan's tables; a missing plan is a UserError that names the command which builds it.

    The `lean` splits keep only their id, day and label columns in memory (LightGBM streams their features)."""
    plan_dir = Path(features_root) / feature_set / plan
    hint = f"gbmcvr features --set {feature_set} --plan {plan}"
    manifest = read_manifest(plan_dir, hint)
    frames = {}
    for split in splits:
        if split not in manifest["splits"]:
            continue
        path = plan_dir / f"{split}.parquet"
        if not path.is_file():
            raise UserError(f"{path}: missing feature table (rebuild with `{hint} --overwrite`)")
        check_parquet(path, f"{hint} --overwrite")
        if split in lean:
            have = pl.read_parquet_schema(path)
            keep = [c["name"] for c in manifest["columns"] if c["role"] in ("id", "day", "label")]
            frames[split] = pl.read_parquet(path, columns=[c for c in keep if c in have], glob=False)
        else:
            frames[split] = pl.read_parquet(path, glob=False)
    return FeatureTables(plan_dir, manifest, frames)
