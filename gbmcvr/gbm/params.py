"""LightGBM defaults, the `[gbm]` config section, and parameter files (data, not training code)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import typed_fields

# the boosted stages of each LightGBM kind; the two-step model has two
KIND_STAGES = {"e2e": ("e2e",), "ts": ("ts_like", "ts_install")}


def tune_name(stage: str) -> str:
    """A stage's name on the command line and in models/tuned/ (`ts_like` -> `ts-like`)."""
    return stage.replace("_", "-")


DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.05,
    "num_leaves": 63,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.7,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l1": 0.0,
    "lambda_l2": 1.0,
    "min_gain_to_split": 0.0,
    "max_bin": 255,
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "max_cat_to_onehot": 4,
    "min_data_per_group": 100,
    "verbosity": -1,
    "deterministic": True,
    # column-wise histograms: the same trees as row-wise (measured: identical predictions), but no row-major
    # copy of the binned data (e2e peak 2.4 vs 3.3 GB at 3.3 M rows) and ~15-20 % faster per round on 2 cores
    "force_col_wise": True,
}

# parameters a params file may set (LightGBM names; aliases are refused so one name means one thing)
KNOWN_PARAMS = {
    *DEFAULT_PARAMS,
    "max_depth",
    "min_sum_hessian_in_leaf",
    "extra_trees",
    "path_smooth",
    "max_cat_threshold",
    "feature_fraction_bynode",
    "scale_pos_weight",
    "is_unbalance",
    "boosting",
    "num_threads",
    "linear_tree",
    "min_data_in_bin",
    "top_k",
    "pos_bagging_fraction",
    "neg_bagging_fraction",
    "max_delta_step",
    "seed",
    "bagging_seed",
    "feature_fraction_seed",
    "data_random_seed",
    "feature_pre_filter",
    "force_row_wise",
}


@dataclass(frozen=True)
class GbmConfig:
    """The `[gbm]` section: boosting budget, early stopping, categorical handling, per-stage overrides."""

    num_boost_round: int = 3000
    early_stopping_rounds: int = 100
    log_every: int = 100
    max_cat_cardinality: int = 20000
    numeric_categoricals: tuple[str, ...] = ()
    stage_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    refit: bool | str = False  # True, False, or "auto" (`gbmcvr run` follows the backtest's evidence)
    dask: str | None = None  # scheduler address: train on a Dask cluster (`gbmcvr train --dask`)
    dataset_cache: bool = True  # keep each stage's LightGBM Dataset binary under features/<set>/<plan>/lgb-cache

    def params(self, stage: str, seed: int, override: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the config's stage section, then an override (tuned or file), then the seed."""
        chosen = {**self.stage_params.get(stage, {}), **(override or {})}
        params = {**DEFAULT_PARAMS, **chosen}
        if chosen.get("force_row_wise") and "force_col_wise" not in chosen:
            params["force_col_wise"] = False  # row-wise asked for (or in an older tuned export) replaces the default
        params["seed"] = seed
        return params


def check_params(params: dict[str, Any], where: str) -> dict[str, Any]:
    for key in params:
        if key not in KNOWN_PARAMS:
            raise UserError(f"{where}: unknown LightGBM parameter '{key}'")
    return params


def gbm_config(raw: dict[str, Any], where: str) -> GbmConfig:
    """Parse and check the `[gbm]` section; each stage's table holds LightGBM parameters."""
    stages = [s for stage_list in KIND_STAGES.values() for s in stage_list]
    stage_params = {}
    for stage in stages:
        if stage in raw:
            if not isinstance(raw[stage], dict):
                raise UserError(f"{where}: [{stage}] must be a table of LightGBM parameters, got {raw[stage]!r}")
            stage_params[stage] = check_params(dict(raw[stage]), f"{where}.{stage}")
    scalars = {k: v for k, v in raw.items() if k not in stages}
    if "stage_params" in scalars:
        raise UserError(f"{where}: unknown key 'stage_params' (give [gbm.<stage>] tables)")
    cfg = GbmConfig(**typed_fields(GbmConfig, scalars, where), stage_params=stage_params)
    if cfg.refit not in (True, False, "auto"):
        raise UserError(f"{where}: 'refit' must be true, false or \"auto\", got {cfg.refit!r}")
    if cfg.num_boost_round < 1 or cfg.early_stopping_rounds < 1:
        raise UserError(f"{where}: num_boost_round and early_stopping_rounds must be positive")
    return cfg


def read_params_file(path: Path, stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Per-stage parameters from a JSON file: {"params": {...}} / a flat dict, or {stage: {...}} per stage."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a JSON object")
    if any(s in raw for s in stages):
        for key in raw:
            if key not in stages:
                raise UserError(f"{path}: unknown key '{key}' (stages: {', '.join(stages)})")
        return {s: check_params(_params_of(raw.get(s, {})), f"{path} [{s}]") for s in stages}
    if len(stages) > 1:
        raise UserError(f"{path}: give parameters per stage ({', '.join(stages)}) for this model")
    return {stages[0]: check_params(_params_of(raw), str(path))}


def _params_of(obj: dict[str, Any]) -> dict[str, Any]:
    """Accept an exported tuned file ({"params": ..., "study": ...}) or a plain parameter dict."""
    return dict(obj["params"]) if "params" in obj and isinstance(obj["params"], dict) else dict(obj)
