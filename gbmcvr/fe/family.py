"""The interface of a table feature family: its config, its recipe lines and the lookups it joins onto rows.

`fe/pipeline.build` makes the plan's rows (cleaned numericals, dense codes, date cycle, crosses, folds) once,
then asks each active family for its recipe lines (manifest.json) and its lookups (`fe/lookup.py`), and
writes every split in one pass. A new family is one module with a class like these and one registry line
in `fe/pipeline.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import polars as pl

from gbmcvr.data.profile import Profile
from gbmcvr.fe.lookup import Lookup
from gbmcvr.schema import LIKE

SPLIT = "_split"

TARGET_SHORT = {"is_installed": "inst", "is_like": "like", "install_given_like": "igl"}


@dataclass(frozen=True)
class Context:
    """What a family sees: the profile and the plan's rows, written once (a scan: a family reads the columns it
    needs, so memory follows those columns, not the whole table)."""

    profile: Profile
    rows: pl.LazyFrame  # every row of the plan: feature columns, labels, `_split`, `_fold`, entity keys
    days: dict[str, tuple[int, ...]]

    @property
    def fit(self) -> pl.LazyFrame:
        """The fit window's rows (the only rows whose labels a family may read)."""
        return self.rows.filter(pl.col(SPLIT) == "fit")

    @property
    def all(self) -> pl.LazyFrame:
        """Every row of the plan, the unlabeled test day included."""
        return self.rows

    def label(self, target: str) -> str:
        """The column holding a target: `is_like` is derived, the others are the profile's labels."""
        return LIKE if target == "is_like" else self.profile.install_label


class TableFamily(Protocol):
    """A family whose columns come from per-key tables (count, group, target, novelty, daycount, lagged)."""

    name: str

    def __init__(self, spec: Any, profile: Profile) -> None: ...

    def recipes(self) -> dict[str, str]:
        """Output column -> the recipe line of manifest.json, in output order."""
        ...

    def lookups(self, ctx: Context) -> list[Lookup]:
        """The tables (learned from `ctx`) whose values give each row its columns."""
        ...
