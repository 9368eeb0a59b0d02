"""The LightGBM kinds: `e2e` (install on every row) and `ts` (two steps: like, then install given like)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import optuna
from optuna_integration import LightGBMPruningCallback

from gbmcvr.context import Context
from gbmcvr.data.split import backtest_depth, backtest_plan, is_backtest
from gbmcvr.errors import UserError
from gbmcvr.gbm import dask_train
from gbmcvr.gbm.models import STAGES, binning_of, predict_split, stage_data, train_stage
from gbmcvr.gbm.params import (
    KIND_STAGES,
    GbmConfig,
    canonical_names,
    check_space,
    gbm_config,
    lightgbm_errors,
    read_params_file,
    tune_name,
)
from gbmcvr.gbm.train import GbmRun, load_run, save_models, train_gbm
from gbmcvr.models.base import Objective, Predictor, TrainedRun, TrainOptions
from gbmcvr.runs import UNREFIT, input_key, prediction_table
from gbmcvr.space import Dimension
from gbmcvr.tables import FeatureTables, load_tables

SPACE: dict[str, dict[str, Any]] = {
    "num_leaves": {"type": "int", "low": 15, "high": 255, "log": True},
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
    "min_data_in_leaf": {"type": "int", "low": 20, "high": 2000, "log": True},
    "feature_fraction": {"type": "float", "low": 0.3, "high": 1.0},
    "bagging_fraction": {"type": "float", "low": 0.5, "high": 1.0},
    "bagging_freq": {"type": "int", "low": 0, "high": 5},
    "lambda_l1": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    "lambda_l2": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    "min_gain_to_split": {"type": "float", "low": 0.0, "high": 1.0},
    "max_bin": {"type": "categorical", "choices": [63, 127, 255]},  # a binning parameter: rebuilds the Dataset
    "cat_smooth": {"type": "float", "low": 1.0, "high": 100.0, "log": True},
    "cat_l2": {"type": "float", "low": 1.0, "high": 100.0, "log": True},
}


class GbmKind:
    """A LightGBM kind: its boosted stages (one for e2e, two for ts) read the `[gbm]` table."""

    section = "gbm"

    def __init__(self, name: str) -> None:
        self.name = name
        self.stages = KIND_STAGES[name]
        self.tune_targets = tuple(tune_name(s) for s in self.stages)

    def parse_section(self, raw: dict[str, Any], where: str) -> GbmConfig:
        return gbm_config(raw, where)

    def refit_setting(self, ctx: Context) -> bool | str:
        return ctx.cfg.section(self.section).refit

    def default_space(self, target: str) -> dict[str, dict[str, Any]]:
        return dict(SPACE)

    def check_space(self, dims: list[Dimension], where: str) -> None:
        check_space(dims, where)

    def params(self, ctx: Context, source: str | None) -> dict[str, dict[str, Any]]:
        """Per-stage parameters: config defaults, overridden by a params file or the tuned export."""
        gcfg = ctx.cfg.section(self.section)
        overrides: dict[str, dict] = {}
        if source == "tuned":
            for stage in self.stages:
                path = ctx.wd.models / "tuned" / f"{tune_name(stage)}.json"
                if path.is_file():
                    overrides[stage] = read_params_file(path, (stage,))[stage]
            if not overrides:
                names = ", ".join(f"models/tuned/{t}.json" for t in self.tune_targets)
                raise UserError(f"no tuned parameters ({names}); run `gbmcvr tune {self.tune_targets[0]}` first")
        elif source is not None:
            overrides = read_params_file(Path(source), self.stages)
        return {s: gcfg.params(s, ctx.cfg.seed, overrides.get(s)) for s in self.stages}

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        gcfg = ctx.cfg.section(self.section)
        refit = gcfg.refit if opts.refit is None else opts.refit
        return self._key(manifest, self.params(ctx, opts.params), refit, gcfg)

    def _key(self, manifest: dict[str, Any], params: dict, refit: bool | str, gcfg: GbmConfig) -> str:
        return input_key(
            self.name,
            manifest["config_hash"],
            manifest["raw_fingerprint"],
            params,
            refit,
            gcfg.num_boost_round,
            gcfg.early_stopping_rounds,
            gcfg.max_cat_cardinality,
            gcfg.numeric_categoricals,
        )

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        """Train on the plan; with refit, retrain on the next plan's fit days for the test predictions.

        On a rehearsal plan (`backtest-N`) the refit trains on the next later plan's fit days (its own fit and
        valid days) and predicts that plan's valid day (the rehearsal's test day); the run keeps the test-day
        predictions without the refit in `p_without_refit`.
        """
        gcfg = ctx.cfg.section(self.section)
        resolved = self.params(ctx, opts.params)
        refit = bool(opts.refit)
        if refit and opts.plan != "validate" and not is_backtest(opts.plan):
            raise UserError(f"--refit on plan '{opts.plan}': refit the validate plan or rehearse it on a backtest plan")
        address = opts.dask or gcfg.dask
        if address and opts.plan != "validate":
            raise UserError("--dask trains on the validate plan only")
        with lightgbm_errors():
            if address:
                run, tables = self._train_dask(ctx, opts, gcfg, resolved, address, refit)
            else:
                tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan, lean=("fit", "valid", "test"))
                refit_tables = self._refit_tables(ctx, opts, refit)
                run = train_gbm(self.name, tables, gcfg, resolved, ctx.progress, refit_tables)
        preds = run.preds
        if is_backtest(opts.plan) and refit:
            ids = {"test": tables.splits["test"][tables.id_column].to_numpy()}
            first = prediction_table(ids, {"test": predict_split(self.name, run.models, tables, "test")})
            unrefit = first.select("row_id", "split", first["p"].alias(UNREFIT))
            preds = preds.join(unrefit, on=["row_id", "split"], how="left", maintain_order="left")
        return TrainedRun(
            kind=self.name,
            preds=preds,
            metrics={**run.metrics, "train_seconds": round(run.seconds, 2)},
            params=run.params,
            stages=list(run.models),
            input_key=self._key(tables.manifest, resolved, refit, gcfg),
            save=partial(save_models, run=run),
            meta={"refit": bool(run.refit_models), **({"dask": address} if address else {})},
            model=run,
        )

    def _refit_tables(self, ctx: Context, opts: TrainOptions, refit: bool) -> FeatureTables | None:
        if not refit:
            return None
        if opts.plan == "validate":
            return load_tables(ctx.wd.features, opts.feature_set, "full", ("fit", "test"), lean=("fit", "test"))
        depth = backtest_depth(opts.plan) or 1
        later_plan = "validate" if depth == 1 else backtest_plan(depth - 1)
        later = load_tables(ctx.wd.features, opts.feature_set, later_plan, ("fit", "valid"), lean=("fit",))
        return FeatureTables(
            later.plan_dir, later.manifest, {"fit": later.splits["fit"], "test": later.splits["valid"]}
        )

    def _train_dask(self, ctx, opts, gcfg, resolved, address, refit) -> tuple[GbmRun, FeatureTables]:
        fs = opts.feature_set
        tables = dask_train.load_label_tables(ctx.wd.features, fs, "validate", ("fit", "valid", "test"))
        full = dask_train.load_label_tables(ctx.wd.features, fs, "full", ("fit", "test")) if refit else None
        with dask_train.connect(address) as client:
            ctx.progress(f"training on the Dask cluster at {address}")
            trainer = partial(dask_train.train_stage_dask, client=client)
            return train_gbm(self.name, tables, gcfg, resolved, ctx.progress, full, stage_trainer=trainer), tables

    def load(self, run_dir: Path) -> Predictor:
        return load_run(run_dir)

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        stage = STAGES[target.replace("-", "_")]
        gcfg = ctx.cfg.section(self.section)
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate", lean=("fit",))
        shared: dict = {}  # Datasets by binning parameters: built once per binning, shared by the trials

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            suggested = {d.name: d.suggest(trial) for d in space}
            # no feature pre-filter: one Dataset serves trials with any min_data_in_leaf (kept in the export)
            params = {**gcfg.params(stage.name, seed, canonical_names(suggested)), "feature_pre_filter": False}
            if threads:
                params["num_threads"] = threads
            key = json.dumps(binning_of(params), sort_keys=True)
            pruning = LightGBMPruningCallback(trial, "binary_logloss", valid_name="valid", report_interval=5)
            with lightgbm_errors():
                if key not in shared:
                    shared[key] = stage_data(tables, stage, params, gcfg, reusable=True)
                model = train_stage(
                    tables, stage, params, gcfg, lambda _: None, extra_callbacks=[pruning], data=shared[key]
                )
            value = float(model.booster.best_score["valid"]["binary_logloss"])
            return value, {
                "params": {k: v for k, v in params.items() if k not in ("seed", "num_threads")},
                "best_iteration": model.best_iteration,
            }

        return fn


E2E = GbmKind("e2e")
TWO_STEP = GbmKind("ts")
