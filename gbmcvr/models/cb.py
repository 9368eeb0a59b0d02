"""The CatBoost kind `cb`: install on every row, the feature tables' categorical columns as CatBoost
categoricals (ordered target statistics, which resist overfitting on high-cardinality codes), early
stopping on the validation day. Model files are CatBoost's own binary format (`model.cbm`), never pickle."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from optuna_integration import CatBoostPruningCallback

from gbmcvr import compat, metrics
from gbmcvr.context import Context, quiet
from gbmcvr.errors import UserError
from gbmcvr.models.base import Objective, TrainedRun, TrainOptions
from gbmcvr.runs import input_key, params_file, prediction_table
from gbmcvr.space import Dimension
from gbmcvr.tables import FeatureTables, load_tables
from gbmcvr.tomlfile import typed_fields

MODEL = "model.cbm"
MISSING_CODE = -1  # CatBoost refuses missing categorical values: a code of its own


@dataclass(frozen=True)
class CbConfig:
    """The `[cb]` table: CatBoost's parameters (its own names) and the boosting budget."""

    iterations: int = 3000  # upper bound; early stopping on the validation day picks the count
    early_stopping_rounds: int = 100
    learning_rate: float = 0.08
    depth: int = 6
    l2_leaf_reg: float = 3.0
    border_count: int = 254
    random_strength: float = 1.0
    bagging_temperature: float = 1.0
    one_hot_max_size: int = 4
    max_ctr_complexity: int = 1  # 1: no categorical combinations (the feature set's crosses stand in; 2 cores)
    threads: int = 0  # 0: every core of this machine
    log_every: int = 100


SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "depth": {"type": "int", "low": 4, "high": 10},
    "l2_leaf_reg": {"type": "float", "low": 0.5, "high": 30.0, "log": True},
    "random_strength": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    "bagging_temperature": {"type": "float", "low": 0.0, "high": 2.0},
    "border_count": {"type": "categorical", "choices": [64, 128, 254]},
}


def cb_config(raw: dict[str, Any], where: str) -> CbConfig:
    """Parse and check the `[cb]` table."""
    cfg = CbConfig(**typed_fields(CbConfig, raw, where))
    for key in ("iterations", "early_stopping_rounds", "depth", "border_count"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.threads < 0 or cfg.learning_rate <= 0:
        raise UserError(f"{where}: threads must be >= 0 (0: every core) and learning_rate positive")
    return cfg


def _params(cfg: CbConfig, seed: int, threads: int | None = None) -> dict[str, Any]:
    """CatBoostClassifier arguments: binary log loss, the seed, a fixed thread count (same bytes per machine)."""
    return {
        "loss_function": "Logloss",
        "iterations": cfg.iterations,
        "learning_rate": cfg.learning_rate,
        "depth": cfg.depth,
        "l2_leaf_reg": cfg.l2_leaf_reg,
        "border_count": cfg.border_count,
        "random_strength": cfg.random_strength,
        "bagging_temperature": cfg.bagging_temperature,
        "one_hot_max_size": cfg.one_hot_max_size,
        "max_ctr_complexity": cfg.max_ctr_complexity,
        "random_seed": seed,
        "thread_count": threads or cfg.threads or os.cpu_count() or 1,
        "allow_writing_files": False,
    }


def _frame(tables: FeatureTables, split: str) -> pl.DataFrame:
    """The split's model inputs, categorical codes with missing values as a code of their own."""
    cats = tables.columns("categorical")
    return tables.splits[split].select(tables.features()).with_columns(pl.col(cats).fill_null(MISSING_CODE))


def _pool(tables: FeatureTables, split: str) -> Any:
    y = tables.splits[split][tables.install_label].to_numpy()
    return compat.catboost().Pool(_frame(tables, split), label=y, cat_features=tables.columns("categorical"))


class Booster:
    """A trained or loaded CatBoost model: install probabilities for feature frames."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def predict(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        names = self.model.feature_names_
        cats = [names[i] for i in self.model.get_cat_feature_indices()]
        data = frame.select(names).with_columns(pl.col(cats).fill_null(MISSING_CODE))
        return {"p": self.model.predict_proba(data)[:, 1]}


class _Lines:
    """A text stream that hands CatBoost's log to gbmcvr's progress, one line at a time."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress, self.buffer = progress, ""

    def write(self, text: str) -> None:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                self.progress(f"cb: {line.strip()}")

    def flush(self) -> None:
        """Nothing is held back beyond an unfinished line."""


def _fit(
    tables: FeatureTables,
    params: dict[str, Any],
    cfg: CbConfig,
    progress: Callable[[str], None] = quiet,
    callbacks: list | None = None,
) -> Any:
    """Fit on the fit split; early-stop on the valid split and keep the best iteration."""
    model = compat.catboost().CatBoostClassifier(**params)
    model.fit(
        _pool(tables, "fit"),
        eval_set=_pool(tables, "valid"),
        early_stopping_rounds=cfg.early_stopping_rounds,
        use_best_model=True,
        verbose=cfg.log_every or False,
        callbacks=callbacks,
        log_cout=_Lines(progress),
        log_cerr=_Lines(progress),
    )
    return model


def _save(folder: Path, booster: Booster) -> None:
    booster.model.save_model(str(folder / MODEL), format="cbm")
    importance = pl.DataFrame(
        {"feature": booster.model.feature_names_, "importance": booster.model.get_feature_importance()}
    )
    importance.sort("importance", descending=True).write_csv(folder / "importance.csv")


class CatBoostKind:
    name = "cb"
    section = "cb"
    tune_targets = ("cb",)

    def parse_section(self, raw: dict[str, Any], where: str) -> CbConfig:
        return cb_config(raw, where)

    def refit_setting(self, ctx: Context) -> bool | str:
        return False

    def default_space(self, target: str) -> dict[str, dict[str, Any]]:
        return dict(SPACE)

    def config(self, ctx: Context, params: str | None) -> CbConfig:
        """The `[cb]` config with a parameters file or the tuned export (`tuned`) over it."""
        cfg = ctx.cfg.section(self.section)
        if params is None:
            return cfg
        override, where = params_file(ctx.wd.models, self.name, params, "CatBoost")
        return cb_config({**asdict(cfg), **override}, where)

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        cfg = asdict(self.config(ctx, opts.params))
        return input_key(self.name, manifest["config_hash"], manifest["raw_fingerprint"], cfg, ctx.cfg.seed)

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        if opts.refit or opts.dask or opts.ddp:
            raise UserError("cb: --refit, --dask and --ddp are for the LightGBM and deep models")
        cfg = self.config(ctx, opts.params)
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan)
        ctx.progress(f"cb: {tables.splits['fit'].height:,} fit rows, {len(tables.columns('categorical'))} categoricals")
        start = time.perf_counter()
        booster = Booster(_fit(tables, _params(cfg, ctx.cfg.seed), cfg, ctx.progress))
        seconds = time.perf_counter() - start
        ids = {s: tables.splits[s][tables.id_column].to_numpy() for s in ("valid", "test")}
        preds = prediction_table(ids, {s: booster.predict(tables.splits[s]) for s in ids})
        rate = tables.base_rate()
        y = tables.splits["valid"][tables.install_label].to_numpy()
        p_valid = preds.filter(pl.col("split") == "valid")["p"].to_numpy()
        best = int(booster.model.get_best_iteration() or 0) + 1
        ctx.progress(f"cb: best iteration {best}, valid log loss {metrics.log_loss(y, p_valid):.5f}")
        return TrainedRun(
            kind=self.name,
            preds=preds,
            metrics={
                "base_rate": rate,
                "base_rate_source": "install rate of the fit window",
                "valid": {"p": metrics.report(y, p_valid, rate)},
                "train_seconds": round(seconds, 2),
            },
            params={"cb": asdict(cfg), "best_iteration": best, "fit_rows": tables.splits["fit"].height},
            stages=[self.name],
            input_key=self.input_key(ctx, tables.manifest, opts),
            save=partial(_save, booster=booster),
            model=booster,
        )

    def load(self, run_dir: Path) -> Booster:
        model = compat.catboost().CatBoostClassifier()
        model.load_model(str(Path(run_dir) / MODEL), format="cbm")
        return Booster(model)

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        base = ctx.cfg.section(self.section)
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate")

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            suggested = {d.name: d.suggest(trial) for d in space}
            cfg = cb_config({**asdict(replace(base, log_every=0)), **suggested}, "search space")
            pruning = CatBoostPruningCallback(trial, "Logloss")
            model = _fit(tables, _params(cfg, seed, threads), cfg, callbacks=[pruning])
            pruning.check_pruned()
            value = float(model.get_best_score()["validation"]["Logloss"])
            return value, {"params": suggested, "best_iteration": int(model.get_best_iteration() or 0) + 1}

        return fn


CB = CatBoostKind()
