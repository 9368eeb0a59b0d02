"""Train and predict the LightGBM stages: e2e (install on all rows) and two-step (like; install | like).

The two-step model (paper §4.1.2) factorises P(install) = P(like) * P(install | like) with
like = clicked OR installed. Stage 1 is trained on `is_like` over all rows (the published code trains it
on `is_installed` by mistake); stage 2 on `is_installed` over like rows only, for both the training and the
early-stopping sets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gbmcvr.errors import UserError
from gbmcvr.gbm import callbacks
from gbmcvr.gbm.params import KIND_STAGES, GbmConfig
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables


@dataclass(frozen=True)
class Stage:
    """One boosted model: its target, the rows it learns from, and the feature names it leaves out."""

    name: str
    target: str  # "install" or "like"
    rows: str  # "all" or "like"
    exclude_containing: tuple[str, ...] = ()


STAGES = {
    "e2e": Stage("e2e", "install", "all"),
    "ts_like": Stage("ts_like", "like", "all", exclude_containing=("_igl_",)),
    "ts_install": Stage("ts_install", "install", "like"),
}


@dataclass
class StageModel:
    stage: Stage
    booster: lgb.Booster
    features: list[str]
    best_iteration: int
    fit_rows: int


def stage_features(tables: FeatureTables, stage: Stage) -> list[str]:
    return [f for f in tables.features() if not any(s in f for s in stage.exclude_containing)]


def stage_rows(frame: pl.DataFrame, stage: Stage) -> pl.DataFrame:
    return frame.filter(pl.col(LIKE) == 1) if stage.rows == "like" else frame


def stage_label(frame: pl.DataFrame, stage: Stage, install_label: str) -> np.ndarray:
    return frame[LIKE if stage.target == "like" else install_label].to_numpy()


def categorical_features(tables: FeatureTables, features: list[str], cfg: GbmConfig) -> list[str]:
    """Categorical columns passed as LightGBM categoricals: those the feature set's categorical handling
    makes native, below the config's cardinality cap; the others stay plain integer codes."""
    fit = tables.splits["fit"]
    cats = []
    for col in tables.native_categoricals():
        if col not in features or col in cfg.numeric_categoricals:
            continue
        top = fit[col].max()
        if top is not None and top < cfg.max_cat_cardinality:
            cats.append(col)
    return cats


def _check_label(y: np.ndarray, stage: Stage, split: str) -> None:
    if len(y) == 0:
        raise UserError(f"stage {stage.name}: no {split} rows to train on")
    if y.min() == y.max():
        raise UserError(f"stage {stage.name}: the {stage.target} label is constant ({y[0]}) in the {split} rows")


# parameters fixed when a Dataset is constructed: a trial that changes one needs a new Dataset
BINNING_PARAMS = ("max_bin", "min_data_in_bin", "bin_construct_sample_cnt", "max_cat_to_onehot")


@dataclass
class StageData:
    """A stage's LightGBM Datasets (fit, and valid when there is one), with the binning they were built with."""

    train: lgb.Dataset
    valid: lgb.Dataset | None
    features: list[str]
    fit_rows: int
    binning: dict[str, Any]


def binning_of(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in BINNING_PARAMS if k in params}


def stage_data(
    tables: FeatureTables,
    stage: Stage,
    params: dict[str, Any],
    cfg: GbmConfig,
    with_valid: bool = True,
    reusable: bool = False,
) -> StageData:
    """The stage's Datasets. `reusable` constructs them now, without LightGBM's feature pre-filter, so that
    trials with other tree parameters (min_data_in_leaf included) train on them without rebuilding."""
    features = stage_features(tables, stage)
    cats = categorical_features(tables, features, cfg)
    install = tables.install_label
    fit = stage_rows(tables.splits["fit"], stage)
    y_fit = stage_label(fit, stage, install)
    _check_label(y_fit, stage, "fit")
    dataset_params = {"max_bin": params.get("max_bin", 255), "verbosity": -1}
    if reusable:
        dataset_params = {**params, **dataset_params, "feature_pre_filter": False}
    # a reused Dataset keeps its raw frame: LightGBM re-applies the categorical settings for each new booster
    dtrain = lgb.Dataset(
        fit.select(features), label=y_fit, categorical_feature=cats, free_raw_data=not reusable, params=dataset_params
    )
    dvalid = None
    if "valid" in tables.splits and with_valid:
        valid = stage_rows(tables.splits["valid"], stage)
        y_valid = stage_label(valid, stage, install)
        _check_label(y_valid, stage, "valid")
        dvalid = lgb.Dataset(
            valid.select(features),
            label=y_valid,
            reference=dtrain,
            free_raw_data=not reusable,
            params=dataset_params if reusable else None,
        )
    if reusable:
        dtrain.construct()
        if dvalid is not None:
            dvalid.construct()
    return StageData(dtrain, dvalid, features, fit.height, binning_of(params))


def train_stage(
    tables: FeatureTables,
    stage: Stage,
    params: dict[str, Any],
    cfg: GbmConfig,
    progress: Callable[[str], None],
    rounds: int | None = None,
    extra_callbacks: list | None = None,
    data: StageData | None = None,
) -> StageModel:
    """Fit one stage on the fit split; early-stop on the valid split when there is one, else `rounds`.
    `data` (from `stage_data(..., reusable=True)`) is reused when its binning parameters match."""
    if data is None or data.binning != binning_of(params):
        data = stage_data(tables, stage, params, cfg, with_valid=rounds is None)
    elif "feature_pre_filter" not in params:
        params = {**params, "feature_pre_filter": False}
    cbs = [callbacks.progress(cfg.log_every, stage.name, progress), *(extra_callbacks or [])]
    valid_sets, names = [], []
    if data.valid is not None and rounds is None:
        valid_sets, names = [data.valid], ["valid"]
        cbs.append(lgb.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False))
    booster = lgb.train(
        params,
        data.train,
        num_boost_round=rounds or cfg.num_boost_round,
        valid_sets=valid_sets,
        valid_names=names,
        callbacks=cbs,
    )
    best = booster.best_iteration if valid_sets and booster.best_iteration > 0 else booster.current_iteration()
    return StageModel(stage, booster, data.features, int(best), data.fit_rows)


def predict_stage(model: StageModel, frame: pl.DataFrame) -> np.ndarray:
    return model.booster.predict(frame.select(model.features), num_iteration=model.best_iteration)


def predict_kind(kind: str, models: dict[str, StageModel], frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Prediction columns of a model kind: `p`, and for two-step `p_like`, `p_install_given_like`."""
    if KIND_STAGES[kind] == ("e2e",):
        return {"p": predict_stage(models["e2e"], frame)}
    p_like = predict_stage(models["ts_like"], frame)
    p_igl = predict_stage(models["ts_install"], frame)
    return {"p": p_like * p_igl, "p_like": p_like, "p_install_given_like": p_igl}
