"""LightGBM defaults, the `[gbm]` config section, and parameter files (data, not training code)."""

from __future__ import annotations

import difflib
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
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
    max_dataset_gb: float = 6.0  # a stage's binned fit Dataset above this trains on a negative sample (gbm/sampling.py)

    def params(self, stage: str, seed: int, override: dict[str, Any] | None = None) -> dict[str, Any]:
        """Defaults, then the config's stage section, then an override (tuned or file), then the seed."""
        chosen = {**self.stage_params.get(stage, {}), **(override or {})}
        params = {**DEFAULT_PARAMS, **chosen}
        if chosen.get("force_row_wise") and "force_col_wise" not in chosen:
            params["force_col_wise"] = False  # row-wise asked for (or in an older tuned export) replaces the default
        params["seed"] = seed
        return params


# parameters gbmcvr sets itself: a table naming one is told where it belongs
MANAGED = {
    "num_iterations": "set num_boost_round in [gbm]",
    "early_stopping_round": "set early_stopping_rounds in [gbm]",
    "categorical_feature": "the dataset profile and feature manifest say which columns are categorical",
    "task": "gbmcvr trains and predicts itself",
    "data": "gbmcvr supplies the data",
    "valid": "gbmcvr supplies the validation data",
    "input_model": "gbmcvr loads its own models",
    "output_model": "gbmcvr saves its own models",
}
FRACTIONS = (
    "bagging_fraction",
    "feature_fraction",
    "feature_fraction_bynode",
    "pos_bagging_fraction",
    "neg_bagging_fraction",
)
NON_NEGATIVE = ("lambda_l1", "lambda_l2", "min_gain_to_split", "min_sum_hessian_in_leaf", "cat_smooth", "cat_l2")
# the ranges users most often get wrong, checked with a plain message; LightGBM checks the rest (`probe`)
RANGES: dict[str, tuple[type, Callable[[float], bool], str]] = {
    "learning_rate": (float, lambda v: v > 0, "positive"),
    "num_leaves": (int, lambda v: v >= 2, "at least 2"),
    "min_data_in_leaf": (int, lambda v: v >= 0, ">= 0"),
    "bagging_freq": (int, lambda v: v >= 0, ">= 0 (0: no bagging)"),
    "max_bin": (int, lambda v: v >= 2, "at least 2"),
    "max_cat_to_onehot": (int, lambda v: v >= 1, "at least 1"),
    "min_data_per_group": (int, lambda v: v >= 1, "at least 1"),
    "max_depth": (int, lambda v: True, "an integer (<= 0: no limit)"),
    "num_threads": (int, lambda v: True, "an integer (<= 0: LightGBM's default)"),
    **{k: (float, lambda v: 0 < v <= 1, "in (0, 1]") for k in FRACTIONS},
    **{k: (float, lambda v: v >= 0, ">= 0") for k in NON_NEGATIVE},
}
GPU_DEVICES = ("gpu", "cuda")
# one value per feature: the probe gets as many features as they describe
PER_FEATURE = (
    "monotone_constraints",
    "max_bin_by_feature",
    "feature_contri",
    "cegb_penalty_feature_lazy",
    "cegb_penalty_feature_coupled",
)


@cache
def lightgbm_names() -> dict[str, str]:
    """Every LightGBM parameter name and alias -> its canonical name, from LightGBM's own alias table."""
    from lightgbm.basic import _ConfigAliases

    table = _ConfigAliases._get_all_param_aliases()  # {canonical: [canonical, *aliases]}, dumped by the C library
    return {alias: name for name, aliases in table.items() for alias in aliases}


def canonical_params(params: dict[str, Any], where: str) -> dict[str, Any]:
    """The parameters under LightGBM's canonical names; unknown names, gbmcvr's own settings and one
    parameter given twice (under two of its names) are errors."""
    names = lightgbm_names()
    out: dict[str, Any] = {}
    given: dict[str, str] = {}
    for key, value in params.items():
        if key not in names:
            canon = sorted(set(names.values()))
            close = difflib.get_close_matches(key, canon, n=1) or difflib.get_close_matches(key, list(names), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{where}: unknown LightGBM parameter '{key}'{hint}")
        name = names[key]
        if name in MANAGED:
            raise UserError(f"{where}: '{key}' is not set here: {MANAGED[name]}")
        if name in given:
            raise UserError(
                f"{where}: '{given[name]}' and '{key}' are the same LightGBM parameter ({name}); give it once"
            )
        given[name] = key
        out[name] = _checked_value(name, key, value, where)
    return out


def _checked_value(name: str, key: str, value: Any, where: str) -> Any:
    """A value of a plain type, in range for the parameters in RANGES (integral floats become ints)."""
    if value is None or isinstance(value, dict):
        raise UserError(f"{where}: '{key}' must be a number, string, boolean or list, got {value!r}")
    if name not in RANGES:
        return value
    kind, ok, allowed = RANGES[name]
    numeric = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int and numeric and float(value).is_integer():
        value = int(value)
    if not numeric or (kind is int and not isinstance(value, int)):
        what = "an integer" if kind is int else "a number"
        raise UserError(f"{where}: '{key}' must be {what}, got {value!r}")
    if not ok(value):
        raise UserError(f"{where}: '{key}' must be {allowed}, got {value!r}")
    return value


@contextmanager
def c_stderr_off() -> Iterator[None]:
    """A C library's lines to stderr off (LightGBM's and CatBoost's fatal errors come back as exceptions)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def lightgbm_message(exc: BaseException) -> str:
    """A LightGBM error's first line without the path of the C++ source file it came from."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return re.sub(r" at \S+, line \d+\s*\.?$", "", lines[0].strip())


def _length(value: Any) -> int:
    """How many features a per-feature parameter describes (a list, or LightGBM's comma-separated string)."""
    return len(value) if isinstance(value, list | tuple) else len(str(value).split(","))


def probe(params: dict[str, Any]) -> str | None:
    """Why LightGBM refuses these parameters (a Booster on 20 rows, as many features as a per-feature
    parameter describes), or None when it takes them; what depends on the real data is checked in training."""
    import lightgbm as lgb
    import numpy as np

    quiet = {**params, "verbosity": -1}
    width = max([2, *(_length(params[k]) for k in PER_FEATURE if k in params)])
    x = np.random.default_rng(0).normal(size=(20, width))
    try:
        with c_stderr_off():
            lgb.Booster(quiet, lgb.Dataset(x, label=np.arange(20) % 2, params=quiet))
    except lgb.basic.LightGBMError as exc:
        return lightgbm_message(exc)
    return None


def check_params(params: dict[str, Any], where: str) -> dict[str, Any]:
    """Canonical, range-checked parameters that LightGBM accepts over the defaults (GPU included)."""
    canonical = canonical_params(params, where)
    if not canonical:
        return canonical
    refusal = probe(GbmConfig().params("check", 0, canonical))
    if refusal is None:
        return canonical
    device = canonical.get("device_type")
    if device in GPU_DEVICES:
        raise UserError(f'{where}: device_type = "{device}" needs a GPU LightGBM can use; none here ({refusal})')
    raise UserError(f"{where}: LightGBM refused the parameters: {refusal}")


def check_space(dims: list[Any], where: str) -> None:
    """A LightGBM search space: LightGBM's names (aliases allowed), each parameter once, bounds and choices in
    range, and none of gbmcvr's own settings."""
    seen: dict[str, str] = {}
    for d in dims:
        values = list(d.choices) if d.type == "categorical" else [d.low, d.high]
        for value in values:
            (name,) = canonical_params({d.name: value}, f"{where}.{d.name}")
        if name in seen:
            raise UserError(
                f"{where}: '{seen[name]}' and '{d.name}' are the same LightGBM parameter; "
                f"give one dimension, named '{name}' to replace the built-in one"
            )
        seen[name] = d.name


def canonical_names(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters under LightGBM's canonical names (names already checked)."""
    names = lightgbm_names()
    return {names.get(k, k): v for k, v in params.items()}


@contextmanager
def lightgbm_errors() -> Iterator[None]:
    """LightGBM's errors during training as one-line UserErrors."""
    import lightgbm as lgb

    try:
        yield
    except lgb.basic.LightGBMError as exc:
        raise UserError(f"LightGBM refused the parameters: {lightgbm_message(exc)}") from None


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
    if not cfg.max_dataset_gb > 0:
        raise UserError(f"{where}: max_dataset_gb must be above 0, got {cfg.max_dataset_gb!r}")
    for key in ("num_boost_round", "early_stopping_rounds"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(cfg, key)}")
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
