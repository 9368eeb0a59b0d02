"""The model-kind protocol: what `train`, `tune`, `run` and `submit` need from every kind of model.

A kind declares its name, its config table (typed, defaults in its dataclass), its tuning targets and their
default search spaces, its input key, how it trains and how a saved run is loaded to predict. The stages
never branch on a kind's name; they ask the registry (`gbmcvr.models.registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import polars as pl

if TYPE_CHECKING:
    import optuna

    from gbmcvr.context import Context
    from gbmcvr.space import Dimension

# an Optuna objective that also returns the trial's attributes (exported parameters, best iteration)
Objective = Callable[["optuna.Trial"], tuple[float, dict[str, Any]]]


@dataclass(frozen=True)
class TrainOptions:
    """One `gbmcvr train` call: which run, on which plan, with which parameters."""

    run_id: str
    plan: str = "validate"
    feature_set: str = "default"
    params: str | None = None  # a JSON parameters file, or "tuned"
    refit: bool | None = None  # None: the kind's config decides
    dask: str | None = None
    ddp: bool = False


@dataclass
class TrainedRun:
    """What a kind's training hands to the run-directory writer (`runs.write_run`)."""

    kind: str
    preds: pl.DataFrame  # row_id, split, p[, components]
    metrics: dict[str, Any]
    params: dict[str, Any]
    stages: list[str]
    input_key: str
    save: Callable[[Path], None]  # writes the model files into the (temporary) run folder
    meta: dict[str, Any] = field(default_factory=dict)  # extra run.json entries (refit, dask, world_size, ...)
    predicts_installs: bool = True  # False: its `p` is not an install probability per impression (KAML)
    summary: str = ""  # what `gbmcvr train` prints for a run that does not predict installs
    write: bool = True  # False on torchrun ranks other than 0
    model: Any = None  # the trained object, for callers that want more than the table


class Predictor(Protocol):
    """A saved run loaded back: prediction columns (`p` and components) for a feature frame."""

    def predict(self, frame: pl.DataFrame) -> dict[str, np.ndarray]: ...


class ModelKind(Protocol):
    """One kind of model. `section` is its config table; kinds may share one (e2e and ts read [gbm])."""

    name: str
    section: str
    tune_targets: tuple[str, ...]

    def parse_section(self, raw: dict[str, Any], where: str) -> Any:
        """The typed config of the section (defaults for missing keys; unknown keys are errors)."""
        ...

    def refit_setting(self, ctx: Context) -> bool | str:
        """True, False or "auto" (refit on the full plan where the backtest says it pays)."""
        ...

    def default_space(self, target: str) -> dict[str, dict[str, Any]]:
        """The built-in search space of one tuning target, as `[tune.<target>]` TOML would give it."""
        ...

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        """Hash of everything a run depends on; a run whose run.json holds the same key is current."""
        ...

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        """Load the plan's feature tables, train, predict the valid and test rows."""
        ...

    def load(self, run_dir: Path) -> Predictor:
        """A saved run of this kind, ready to predict (no pickle)."""
        ...

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        """The Optuna objective of one tuning target on the validate plan's tables (which the kind loads, as
        lean as it likes): valid-day log loss, with pruning."""
        ...


class NoRefitKind:
    """Part of a kind that never refits on the full plan and tunes its class's `SPACE` by default."""

    SPACE: dict[str, dict[str, Any]] = {}

    def refit_setting(self, ctx: Context) -> bool | str:
        return False

    def default_space(self, target: str) -> dict[str, dict[str, Any]]:
        return dict(self.SPACE)
