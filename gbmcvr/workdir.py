"""The work directory: where every command reads and writes its artifact folders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gbmcvr.errors import UserError

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+=-]{0,127}")


def check_name(name: str, what: str) -> str:
    """A run id, feature set or submission name is a plain name: no separators, `.`, `..` or absolute paths
    (so nothing is written outside the work directory's folders)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith("."):
        raise UserError(
            f"{what} {name!r} is not a plain name (letters, digits, _ . @ + = -, at most 128 characters, "
            "not starting with '.', no '/')"
        )
    return name


@dataclass(frozen=True)
class Workdir:
    """Paths of the artifact folders under one root (the current directory by default)."""

    root: Path

    def __post_init__(self) -> None:
        if Path(self.root).exists() and not Path(self.root).is_dir():
            raise UserError(f"{self.root}: the work directory is a file; choose a folder with --workdir")

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
        return self.features / check_name(feature_set, "feature set") / plan

    def run(self, run_id: str, plan: str = "validate") -> Path:
        """models/<run-id>/, or models/<plan>/<run-id>/ for a run trained on a rehearsal plan (backtest, backtest-2)."""
        check_name(run_id, "run id")
        return self.models / plan / run_id if plan.startswith("backtest") else self.models / run_id

    def submission(self, name: str) -> Path:
        """submissions/<name>.tsv (its .json, .md and plots lie beside it)."""
        return self.submissions / f"{check_name(name, 'submission name')}.tsv"
