"""LightGBM stages trained on a Dask cluster (`lightgbm.dask`) from the plan's Parquet feature tables.

The fit table is read by the workers as a Dask dataframe (its path must be visible to them: a shared file
system); the valid and test days are small and stay on the client, which predicts them. `lightgbm.dask` has
no early stopping, so boosting runs in chunks of `early_stopping_rounds` trees (each continues from the
previous booster) and the client scores every new tree on the valid day: the best iteration is the one a
local run with early stopping would pick, up to the bagging seeds of the chunks.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.compat import dask_modules
from gbmcvr.errors import UserError
from gbmcvr.gbm.models import Stage, StageModel, _check_label, stage_features, stage_label, stage_rows
from gbmcvr.gbm.params import GbmConfig
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables, load_tables


def connect(address: str, timeout: str = "20s"):
    """A `distributed.Client` for a scheduler address (`tcp://host:8786`), or a UserError."""
    _, distributed = dask_modules()
    try:
        return distributed.Client(address, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise UserError(f"cannot reach the Dask scheduler at {address} ({exc})") from None


def load_label_tables(features_root: Path, feature_set: str, plan: str, splits: tuple[str, ...]) -> FeatureTables:
    """A plan's tables with the fit split reduced to its label columns (the workers read its features)."""
    tables = load_tables(features_root, feature_set, plan, tuple(s for s in splits if s != "fit"))
    labels = [c["name"] for c in tables.manifest["columns"] if c["role"] in ("id", "label")]
    tables.splits["fit"] = pl.read_parquet(tables.plan_dir / "fit.parquet", columns=labels, glob=False)
    return tables


def _categoricals(fit_path: Path, tables: FeatureTables, features: list[str], cfg: GbmConfig) -> list[str]:
    """The categorical columns `gbm.models.categorical_features` would pick, from the Parquet file's maxima."""
    cols = [c for c in tables.columns("categorical") if c in features and c not in cfg.numeric_categoricals]
    if not cols:
        return []
    top = pl.scan_parquet(fit_path, glob=False).select(pl.col(cols).max()).collect().row(0)
    return [c for c, v in zip(cols, top, strict=True) if v is not None and v < cfg.max_cat_cardinality]


def _fit_frame(client, fit_path: Path, stage: Stage, features: list[str], label: str):
    dd, _ = dask_modules()
    ddf = dd.read_parquet(str(fit_path), columns=list(dict.fromkeys([*features, label, LIKE])))
    if stage.rows == "like":
        ddf = ddf[ddf[LIKE] == 1]
    workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
    ddf = ddf.repartition(npartitions=max(workers, ddf.npartitions)).persist()
    return ddf[features].astype("float64"), ddf[label].astype("int64")


def train_stage_dask(
    tables: FeatureTables,
    stage: Stage,
    params: dict[str, Any],
    cfg: GbmConfig,
    progress: Callable[[str], None],
    rounds: int | None = None,
    *,
    client,
) -> StageModel:
    """`gbm.models.train_stage` on the cluster: same features, categoricals, rows, labels and best iteration."""
    features = stage_features(tables, stage)
    fit_path = tables.plan_dir / "fit.parquet"
    cats = _categoricals(fit_path, tables, features, cfg)
    install = tables.install_label
    label = LIKE if stage.target == "like" else install
    fit_labels = stage_label(stage_rows(tables.splits["fit"], stage), stage, install)
    _check_label(fit_labels, stage, "fit")
    x, y = _fit_frame(client, fit_path, stage, features, label)
    early = "valid" in tables.splits and rounds is None
    if early:
        valid = stage_rows(tables.splits["valid"], stage)
        y_valid = stage_label(valid, stage, install)
        _check_label(y_valid, stage, "valid")
        x_valid = valid.select(features).to_numpy().astype(np.float64)
        raw = np.zeros(len(y_valid))
    total = rounds or cfg.num_boost_round
    chunk = cfg.early_stopping_rounds if early else total
    lgb_params = {k: v for k, v in params.items() if k not in ("num_threads", "n_jobs")}
    booster, done, best, best_loss = None, 0, 0, math.inf
    while done < total:
        n = min(chunk, total - done)
        model = lgb.DaskLGBMClassifier(client=client, n_estimators=n, **lgb_params)
        with warnings.catch_warnings():
            # the wrapper's own n_jobs default; each worker uses its Dask thread count
            warnings.filterwarnings("ignore", message="Parameter n_jobs will be ignored")
            model.fit(x, y, categorical_feature=cats or "auto", init_model=booster)
        booster = model.booster_
        if not early:
            done += n
            progress(f"{stage.name}: {done}/{total} rounds on Dask")
            continue
        if booster.current_iteration() <= done:  # no tree could be added: boosting has converged
            break
        for it in range(done, booster.current_iteration()):
            raw += booster.predict(x_valid, start_iteration=it, num_iteration=1, raw_score=True)
            loss = metrics.log_loss(y_valid, 1.0 / (1.0 + np.exp(-raw)))
            if loss < best_loss:
                best, best_loss = it + 1, loss
        done = booster.current_iteration()
        progress(
            f"{stage.name}: round {done}/{total} on Dask, valid log loss {loss:.5f} (best {best_loss:.5f} at {best})"
        )
        if done - best >= cfg.early_stopping_rounds:
            break
    if booster is None:
        raise UserError(f"stage {stage.name}: no boosting rounds to run")
    return StageModel(stage, booster, features, best if early else booster.current_iteration(), len(fit_labels))
