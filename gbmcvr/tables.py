"""Feature tables as the model stages see them: frames per split plus column roles from the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import read_manifest
from gbmcvr.schema import LIKE


@dataclass
class FeatureTables:
    """One plan's tables: `splits` maps fit/valid/test to frames; columns by role from the manifest."""

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

    def base_rate(self) -> float:
        """Install rate of the fit window: the default NCE base rate."""
        return float(self.splits["fit"][self.install_label].mean())


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
            raise UserError(f"{path}: missing feature table (rebuild with `{hint} --force`)")
        if split in lean:
            have = pl.read_parquet_schema(path)
            keep = [c["name"] for c in manifest["columns"] if c["role"] in ("id", "day", "label")]
            frames[split] = pl.read_parquet(path, columns=[c for c in keep if c in have])
        else:
            frames[split] = pl.read_parquet(path)
    return FeatureTables(plan_dir, manifest, frames)
