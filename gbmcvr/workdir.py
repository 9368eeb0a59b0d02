"""The work directory: where every command reads and writes its artifact folders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workdir:
    """Paths of the artifact folders under one root (the current directory by default)."""

    root: Path

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def raw(self) -> Path:
        return self.root / "features" / "raw"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def config_file(self) -> Path:
        return self.root / "gbmcvr.toml"

    def feature_plan(self, feature_set: str, plan: str) -> Path:
        return self.features / feature_set / plan

    def run(self, run_id: str, plan: str = "validate") -> Path:
        """models/<run-id>/, or models/backtest/<run-id>/ for a run trained on the backtest plan."""
        return self.models / "backtest" / run_id if plan == "backtest" else self.models / run_id
