"""A LightGBM run: validate-plan model (+ optional full-data refit), metrics, importance, prediction table."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.compat import pyplot
from gbmcvr.errors import UserError
from gbmcvr.gbm.models import STAGES, StageModel, predict_kind, predict_split, train_stage
from gbmcvr.gbm.params import KIND_STAGES, GbmConfig
from gbmcvr.runs import prediction_table, read_run_meta
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables


@dataclass
class GbmRun:
    kind: str
    models: dict[str, StageModel]
    params: dict[str, dict[str, Any]]
    preds: pl.DataFrame
    metrics: dict[str, Any]
    refit_models: dict[str, StageModel] = field(default_factory=dict)
    seconds: float = 0.0


def valid_metrics(kind: str, tables: FeatureTables, pred: dict[str, np.ndarray]) -> dict[str, Any]:
    """Valid-day metrics of the product and, for two-step, of each stage on its own rows."""
    valid = tables.splits["valid"]
    rate = tables.base_rate()
    y = valid[tables.install_label].to_numpy()
    out: dict[str, Any] = {
        "base_rate": rate,
        "base_rate_source": "install rate of the fit window",
        "valid": {"p": metrics.report(y, pred["p"], rate)},
    }
    if "p_like" in pred:
        like = valid[LIKE].to_numpy()
        like_rate = float(tables.splits["fit"][LIKE].mean())
        out["valid"]["p_like"] = metrics.report(like, pred["p_like"], like_rate)
        mask = like == 1
        fit = tables.splits["fit"]
        igl_rate = float(fit.filter(pl.col(LIKE) == 1)[tables.install_label].mean())
        out["valid"]["p_install_given_like"] = metrics.report(y[mask], pred["p_install_given_like"][mask], igl_rate)
    return out


def train_gbm(
    kind: str,
    tables: FeatureTables,
    cfg: GbmConfig,
    params: dict[str, dict[str, Any]],
    progress: Callable[[str], None] = lambda _: None,
    full_tables: FeatureTables | None = None,
    stage_trainer: Callable[..., StageModel] = train_stage,
) -> GbmRun:
    """Train every stage of `kind` on the validate plan; with `full_tables`, refit on the full plan.

    `stage_trainer` fits one stage (`gbm.models.train_stage` here, `gbm.dask_train.train_stage_dask` on Dask).
    """
    start = time.perf_counter()
    if kind not in KIND_STAGES:
        raise UserError(f"unknown model '{kind}' (choose e2e or ts)")
    if "valid" not in tables.splits:
        raise UserError(f"{tables.plan_dir}: training needs the validate plan (it has a valid split)")
    models = {s: stage_trainer(tables, STAGES[s], params[s], cfg, progress) for s in KIND_STAGES[kind]}
    ids = {s: tables.splits[s][tables.id_column].to_numpy() for s in ("valid", "test")}
    pred = {s: predict_split(kind, models, tables, s) for s in ("valid", "test")}
    refit: dict[str, StageModel] = {}
    if full_tables is not None:
        for s in KIND_STAGES[kind]:
            m = models[s]
            full_fit = full_tables.splits["fit"]
            n_full = int(full_fit[LIKE].sum()) if STAGES[s].rows == "like" else full_fit.height
            rounds = max(1, round(m.best_iteration * n_full / m.fit_rows))
            progress(
                f"{s}: refit on the full plan for {rounds} rounds ({m.best_iteration} x {n_full:,}/{m.fit_rows:,} rows)"
            )
            refit[s] = stage_trainer(full_tables, STAGES[s], params[s], cfg, progress, rounds=rounds)
        pred["test"] = predict_split(kind, refit, full_tables, "test")
        ids["test"] = full_tables.splits["test"][full_tables.id_column].to_numpy()
    result_metrics = valid_metrics(kind, tables, pred["valid"])
    result_metrics["learning_curve"] = {s: models[s].curve for s in KIND_STAGES[kind]}
    run_params = {
        s: {
            "params": params[s],
            "best_iteration": models[s].best_iteration,
            "fit_rows": models[s].fit_rows,
            **({"dataset_rows": models[s].dataset_rows} if models[s].dataset_rows is not None else {}),
            **({"refit_iterations": refit[s].best_iteration, "refit_rows": refit[s].fit_rows} if refit else {}),
        }
        for s in KIND_STAGES[kind]
    }
    return GbmRun(
        kind,
        models,
        run_params,
        prediction_table(ids, pred),
        result_metrics,
        refit,
        time.perf_counter() - start,
    )


def importance_table(models: dict[str, StageModel]) -> pl.DataFrame:
    rows = []
    for name, m in models.items():
        gain = m.booster.feature_importance("gain", iteration=m.best_iteration)
        split = m.booster.feature_importance("split", iteration=m.best_iteration)
        rows.append(pl.DataFrame({"stage": name, "feature": m.booster.feature_name(), "gain": gain, "split": split}))
    return pl.concat(rows).sort(["stage", "gain"], descending=[False, True])


def plot_importance(table: pl.DataFrame, path: Path, top: int = 25) -> None:
    plt = pyplot()

    stages = table["stage"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, len(stages), figsize=(7 * len(stages), 0.3 * top + 1.5), squeeze=False)
    for ax, stage in zip(axes[0], stages, strict=True):
        t = table.filter(pl.col("stage") == stage).head(top).reverse()
        ax.barh(t["feature"].to_list(), t["gain"].to_list())
        ax.set_title(f"{stage}: top {top} features by gain")
        ax.set_xlabel("total gain")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def save_models(folder: Path, run: GbmRun) -> None:
    """The run's boosters as LightGBM text (refits beside them), with the importance table and plot."""
    for name, m in run.models.items():
        m.booster.save_model(folder / f"model_{name}.txt", num_iteration=m.best_iteration)
    for name, m in run.refit_models.items():
        m.booster.save_model(folder / f"model_{name}_refit.txt", num_iteration=m.best_iteration)
    imp = importance_table(run.models)
    imp.write_csv(folder / "importance.csv")
    plot_importance(imp, folder / "importance.png")


@dataclass
class LoadedRun:
    """A run's boosters loaded back from LightGBM text files."""

    kind: str
    models: dict[str, StageModel]
    refit_models: dict[str, StageModel]

    def predict(self, frame: pl.DataFrame, refit: bool = False) -> dict[str, np.ndarray]:
        return predict_kind(self.kind, self.refit_models if refit else self.models, frame)


def load_run(run_dir: Path) -> LoadedRun:
    """Load a LightGBM run; `predict` on the same feature tables reproduces `preds.parquet` exactly."""
    run_dir = Path(run_dir)
    meta = read_run_meta(run_dir)
    if meta.get("kind") not in KIND_STAGES:
        raise UserError(f"{run_dir}: not a LightGBM run (kind {meta.get('kind')})")

    def load(name: str, suffix: str) -> StageModel:
        booster = lgb.Booster(model_file=str(run_dir / f"model_{name}{suffix}.txt"))
        return StageModel(STAGES[name], booster, booster.feature_name(), booster.current_iteration(), 0)

    models = {s: load(s, "") for s in meta["stages"]}
    refit = {s: load(s, "_refit") for s in meta["stages"]} if meta.get("refit") else {}
    return LoadedRun(meta["kind"], models, refit)
