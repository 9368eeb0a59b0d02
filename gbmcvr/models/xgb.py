"""The XGBoost kind `xgb`: install on every row, `hist` trees, early stopping on the validation day.

The feature tables reach XGBoost as a `QuantileDMatrix` built from float32 blocks of the splits' row batches
(never a float64 copy of a whole split). Categorical codes are treated as the LightGBM kinds treat them: the
manifest's native categoricals (below a cardinality cap) as XGBoost categoricals, every other code as a plain
number. Model files are XGBoost's UBJSON format (`model.ubj`), never pickle."""

from __future__ import annotations

import ctypes
import difflib
import functools
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl

from gbmcvr import compat
from gbmcvr.context import Context, quiet
from gbmcvr.errors import UserError
from gbmcvr.gbm.models import _release_freed_memory
from gbmcvr.gbm.train import plot_importance
from gbmcvr.models.base import Objective, TrainedRun, TrainOptions
from gbmcvr.models.one_model import OneModelKind, refuse_lightgbm_options, scored_predictions
from gbmcvr.space import Dimension
from gbmcvr.tables import FeatureTables, RowBatch, load_tables
from gbmcvr.tomlfile import typed_fields

MODEL = "model.ubj"
BLOCK_ROWS = 32_768  # rows converted to float32 at a time while a QuantileDMatrix is built (~35 MB at 270 features)
PREDICT_ROWS = 100_000  # rows per prediction call
DEVICES = ("cpu", "cuda", "auto")
GROW_POLICIES = ("depthwise", "lossguide")

# gbmcvr's own keys of the [xgb] table; every other key is an XGBoost parameter under XGBoost's own name
OWN_KEYS = ("num_boost_round", "early_stopping_rounds", "max_cat_cardinality", "threads", "log_every")
# XGBoost spellings (aliases, other APIs) and the key or setting that stands for them here
ALIASES = {
    "eta": "learning_rate",
    "lambda": "reg_lambda",
    "alpha": "reg_alpha",
    "gamma": "min_split_loss",
    "nthread": "threads",
    "n_jobs": "threads",
    "n_estimators": "num_boost_round",
    "num_round": "num_boost_round",
    "seed": "the top-level seed",
    "random_state": "the top-level seed",
    "tree_method": "nothing (always hist)",
}


@dataclass(frozen=True)
class XgbConfig:
    """The `[xgb]` table: XGBoost's parameters (its own names), the boosting budget, the device and threads."""

    num_boost_round: int = 3000  # upper bound; early stopping on the validation day picks the count
    early_stopping_rounds: int = 100
    learning_rate: float = 0.05
    max_depth: int = 7
    max_leaves: int = 0  # 0: no limit (depthwise growth bounds the tree by max_depth)
    grow_policy: str = "depthwise"
    min_child_weight: float = 5.0  # hessian units: at a ~5 % rate about 100 rows per leaf
    subsample: float = 0.8
    colsample_bytree: float = 0.7
    reg_lambda: float = 1.0
    reg_alpha: float = 0.0
    min_split_loss: float = 0.0
    max_bin: int = 256  # fixed when the QuantileDMatrix is built
    max_cat_to_onehot: int = 4
    max_cat_threshold: int = 64
    max_cat_cardinality: int = 20000  # native categoricals with more codes are plain numbers (as [gbm]'s)
    device: str = "cpu"  # cpu | cuda | auto (cuda when a GPU is visible)
    threads: int = 0  # 0: every core of this machine
    log_every: int = 100


SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
    "max_depth": {"type": "int", "low": 3, "high": 10},
    "min_child_weight": {"type": "float", "low": 0.5, "high": 100.0, "log": True},
    "subsample": {"type": "float", "low": 0.5, "high": 1.0},
    "colsample_bytree": {"type": "float", "low": 0.3, "high": 1.0},
    "reg_lambda": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    "reg_alpha": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    "min_split_loss": {"type": "float", "low": 0.0, "high": 1.0},
    "max_bin": {"type": "categorical", "choices": [64, 128, 256]},  # a binning parameter: rebuilds the matrices
}


def _unknown_key(key: str, allowed: list[str], where: str) -> UserError:
    """The one-line error for a key the table does not have, with the key the user probably meant."""
    if key in ALIASES:
        return UserError(f"{where}: unknown key '{key}' (XGBoost's '{key}' is set by {ALIASES[key]} here)")
    close = difflib.get_close_matches(key, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    return UserError(f"{where}: unknown key '{key}' ({hint})")


def xgb_config(raw: dict[str, Any], where: str) -> XgbConfig:
    """Parse and check the `[xgb]` table: unknown keys are refused with the closest XGBoost name."""
    allowed = [f.name for f in fields(XgbConfig)]
    for key in raw:
        if key not in allowed:
            raise _unknown_key(key, allowed, where)
    cfg = XgbConfig(**typed_fields(XgbConfig, raw, where))
    for key in ("num_boost_round", "early_stopping_rounds", "max_cat_cardinality"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.max_bin < 2 or cfg.max_depth < 0 or cfg.max_leaves < 0:
        raise UserError(f"{where}: max_bin must be at least 2, max_depth and max_leaves non-negative")
    for key in ("subsample", "colsample_bytree"):
        if not 0 < getattr(cfg, key) <= 1:
            raise UserError(f"{where}: {key} must be in (0, 1], got {getattr(cfg, key)}")
    if cfg.learning_rate <= 0 or min(cfg.reg_lambda, cfg.reg_alpha, cfg.min_split_loss, cfg.min_child_weight) < 0:
        raise UserError(f"{where}: learning_rate must be positive; reg_*, min_split_loss, min_child_weight >= 0")
    if cfg.threads < 0:
        raise UserError(f"{where}: threads must be >= 0 (0: every core), got {cfg.threads}")
    if cfg.device not in DEVICES:
        raise UserError(f"{where}: device must be one of {', '.join(DEVICES)}, got '{cfg.device}'")
    if cfg.grow_policy not in GROW_POLICIES:
        raise UserError(f"{where}: grow_policy must be one of {', '.join(GROW_POLICIES)}, got '{cfg.grow_policy}'")
    return cfg


@functools.cache
def cuda_devices() -> int:
    """CUDA devices XGBoost could use: none without a CUDA build, else the driver's count (a cheap probe)."""
    if not compat.xgboost().build_info().get("USE_CUDA"):
        return 0
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if driver.cuInit(0) != 0 or driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def resolve_device(requested: str) -> str:
    """`cpu` or `cuda` for the configured device; `cuda` without a visible GPU is a UserError."""
    if requested == "cpu":
        return "cpu"
    if cuda_devices():
        return "cuda"
    if requested == "cuda":
        raise UserError('[xgb] device = "cuda" but no CUDA GPU is visible to XGBoost (use "cpu" or "auto")')
    return "cpu"


def booster_params(cfg: XgbConfig, seed: int, device: str, threads: int | None = None) -> dict[str, Any]:
    """xgboost.train parameters: binary log loss, hist trees, the seed, a fixed thread count (same bytes)."""
    xgb_names = {f.name for f in fields(XgbConfig)} - {*OWN_KEYS, "device"}
    return {
        "objective": "binary:logistic",
        "eval_metric": "logloss",
        "tree_method": "hist",
        **{k: v for k, v in asdict(cfg).items() if k in xgb_names},
        "device": device,
        "seed": seed,
        "nthread": threads or cfg.threads or os.cpu_count() or 1,
        "verbosity": 1,
    }


@functools.cache
def _block_iter() -> type:
    """The DataIter class (defined on first use, so the registry loads this module without XGBoost)."""
    xgb = compat.xgboost()

    class BlockIter(xgb.DataIter):
        """A split's rows as float32 blocks of its row batches: one batch's columns and one block in memory."""

        def __init__(
            self, batches: list[RowBatch], label: np.ndarray, names: list[str], types: list[str], block_rows: int
        ) -> None:
            super().__init__(release_data=True)
            self.batches, self.label, self.names, self.types = batches, label, names, types
            self.blocks = [
                (i, start, min(block_rows, b.rows - start))
                for i, b in enumerate(batches)
                for start in range(0, b.rows, block_rows)
            ]
            self.reset()

        def reset(self) -> None:
            self.position, self.offset, self.key, self.frame = 0, 0, None, None

        def next(self, input_data: Callable) -> bool:
            if self.position == len(self.blocks):
                self.key, self.frame = None, None
                return False
            key, start, length = self.blocks[self.position]
            if self.key != key:
                self.key, self.frame = None, None
                self.frame = self.batches[key].load()
                self.key = key
            block = self.frame.slice(start, length).select(pl.all().cast(pl.Float32)).to_numpy(order="c")
            label = self.label[self.offset : self.offset + length]
            input_data(data=block, label=label, feature_names=self.names, feature_types=self.types)
            self.position, self.offset = self.position + 1, self.offset + length
            return True

    return BlockIter


@functools.cache
def _progress_callback() -> type:
    """The progress TrainingCallback class (defined on first use, as `_block_iter`)."""
    xgb = compat.xgboost()

    class Progress(xgb.callback.TrainingCallback):
        """A progress line every `every` rounds with the valid log loss."""

        def __init__(self, every: int, progress: Callable[[str], None]) -> None:
            super().__init__()
            self.every, self.progress = every, progress

        def after_iteration(self, model: Any, epoch: int, evals_log: dict) -> bool:
            if self.every and (epoch + 1) % self.every == 0:
                self.progress(f"xgb: round {epoch + 1}, valid log loss {evals_log['valid']['logloss'][-1]:.5f}")
            return False

    return Progress


def categorical_features(tables: FeatureTables, features: list[str], cfg: XgbConfig) -> list[str]:
    """The manifest's native categoricals with fewer than `max_cat_cardinality` codes (XGBoost categoricals)."""
    cols = [c for c in tables.native_categoricals() if c in features]
    tops = tables.maxima("fit", cols)
    return [c for c, top in zip(cols, tops, strict=True) if top is not None and top < cfg.max_cat_cardinality]


@dataclass
class XgbData:
    """The fit and valid QuantileDMatrix (valid binned with the fit one's cuts) and their columns."""

    train: Any
    valid: Any
    features: list[str]
    categorical: list[str]
    fit_rows: int
    max_bin: int


def _label(tables: FeatureTables, split: str) -> np.ndarray:
    y = tables.splits[split][tables.install_label].to_numpy().astype(np.float32)
    if len(y) == 0 or y.min() == y.max():
        raise UserError(f"xgb: the {split} rows need both install labels (got {len(y):,} rows, none or one value)")
    return y


def quantile_matrices(
    tables: FeatureTables,
    cfg: XgbConfig,
    threads: int,
    progress: Callable[[str], None] = quiet,
    block_rows: int = BLOCK_ROWS,
) -> XgbData:
    """QuantileDMatrix of the fit split from its row batches in float32 blocks; the valid one references it."""
    xgb = compat.xgboost()
    features = tables.features()
    refused = [f for f in features if any(ch in f for ch in "[]<")]
    if refused:
        raise UserError(f"xgb: XGBoost refuses feature names with [, ] or <: rename column '{refused[0]}' in the data")
    cats = set(categorical_features(tables, features, cfg))
    types = ["c" if f in cats else "q" for f in features]
    y_fit = _label(tables, "fit")
    progress(f"xgb: building the QuantileDMatrix ({len(y_fit):,} rows, {len(features)} features, {len(cats)} native)")
    made = {}
    for split, ref in (("fit", None), ("valid", "fit")):
        y = y_fit if split == "fit" else _label(tables, split)
        it = _block_iter()(tables.batches(split, features), y, features, types, block_rows)
        made[split] = xgb.QuantileDMatrix(
            it, max_bin=cfg.max_bin, ref=made.get(ref), nthread=threads, enable_categorical=bool(cats)
        )
        _release_freed_memory()  # the row groups' Arrow buffers, held by the pool, are not needed to train
    return XgbData(made["fit"], made["valid"], features, sorted(cats), len(y_fit), cfg.max_bin)


def _fit(
    data: XgbData,
    params: dict[str, Any],
    cfg: XgbConfig,
    progress: Callable[[str], None] = quiet,
    callbacks: list | None = None,
) -> tuple[Any, list[float]]:
    """Fit on the fit matrix; early-stop on the valid one and keep exactly the best rounds. Returns the booster
    and XGBoost's valid log-loss history."""
    xgb = compat.xgboost()
    history: dict[str, dict[str, list[float]]] = {}
    stop = xgb.callback.EarlyStopping(
        rounds=cfg.early_stopping_rounds, metric_name="logloss", data_name="valid", maximize=False, save_best=True
    )
    booster = xgb.train(
        params,
        data.train,
        num_boost_round=cfg.num_boost_round,
        evals=[(data.valid, "valid")],
        evals_result=history,
        verbose_eval=False,
        callbacks=[_progress_callback()(cfg.log_every, progress), *(callbacks or []), stop],
    )
    booster.set_param({"device": "cpu"})  # predictions on the host, as a loaded run makes them
    return booster, history["valid"]["logloss"]


def _predict_frame(booster: Any, frame: pl.DataFrame) -> np.ndarray:
    """Probabilities for a frame holding the booster's features, PREDICT_ROWS rows converted at a time."""
    names = booster.feature_names
    parts = [
        booster.inplace_predict(frame.slice(s, PREDICT_ROWS).select(pl.col(names).cast(pl.Float32)).to_numpy())
        for s in range(0, frame.height, PREDICT_ROWS)
    ]
    return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


class Booster:
    """A trained or loaded XGBoost model: install probabilities for feature frames (and, trained, XGBoost's
    valid log-loss history)."""

    def __init__(self, booster: Any, history: list[float] | None = None) -> None:
        self.booster, self.history = booster, history

    def predict(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        return {"p": _predict_frame(self.booster, frame)}

    def predict_batches(self, batches: list[RowBatch]) -> dict[str, np.ndarray]:
        """Probabilities for a split's row batches, one batch read at a time."""
        parts = [_predict_frame(self.booster, b.load()) for b in batches]
        return {"p": np.concatenate(parts) if parts else np.zeros(0)}


def importance_table(booster: Any) -> pl.DataFrame:
    """Total gain and split count per feature (0 for features no tree uses), as the LightGBM runs write it."""
    gain = booster.get_score(importance_type="total_gain")
    split = booster.get_score(importance_type="weight")
    names = booster.feature_names
    return pl.DataFrame(
        {
            "stage": ["xgb"] * len(names),
            "feature": names,
            "gain": [float(gain.get(n, 0.0)) for n in names],
            "split": [int(split.get(n, 0)) for n in names],
        }
    ).sort("gain", descending=True)


def _save(folder: Path, booster: Booster) -> None:
    booster.booster.save_model(str(folder / MODEL))
    imp = importance_table(booster.booster)
    imp.write_csv(folder / "importance.csv")
    plot_importance(imp, folder / "importance.png")


class XGBoostKind(OneModelKind):
    name = "xgb"
    section = "xgb"
    label = "XGBoost"
    tune_targets = ("xgb",)
    SPACE = SPACE
    parse = staticmethod(xgb_config)
    as_table = staticmethod(asdict)

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        refuse_lightgbm_options(self.name, opts)
        cfg = self.config(ctx, opts.params)
        device = resolve_device(cfg.device)
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan, lean=("fit", "valid", "test"))
        params = booster_params(cfg, ctx.cfg.seed, device)
        start = time.perf_counter()
        data = quantile_matrices(tables, cfg, params["nthread"], ctx.progress)
        model, history = _fit(data, params, cfg, ctx.progress)
        seconds = time.perf_counter() - start
        booster, features, fit_rows, cats = Booster(model, history), data.features, data.fit_rows, data.categorical
        del data  # the binned matrices are not needed to predict
        preds, scores = scored_predictions(
            tables, lambda split: booster.predict_batches(tables.batches(split, features))
        )
        best = model.num_boosted_rounds()
        ctx.progress(f"xgb: best iteration {best} on {device}, valid log loss {scores['valid']['p']['logloss']:.5f}")
        return TrainedRun(
            kind=self.name,
            preds=preds,
            metrics={**scores, "train_seconds": round(seconds, 2)},
            params={
                "xgb": asdict(cfg),
                "device": device,
                "best_iteration": best,
                "rounds_trained": len(history),
                "fit_rows": fit_rows,
                "categorical": cats,
            },
            stages=[self.name],
            input_key=self.input_key(ctx, tables.manifest, opts),
            save=partial(_save, booster=booster),
            model=booster,
        )

    def load(self, run_dir: Path) -> Booster:
        path = Path(run_dir) / MODEL
        if not path.is_file():
            raise UserError(f"{run_dir}: no {MODEL} (train the run again)")
        return Booster(compat.xgboost().Booster(model_file=str(path)))

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        from optuna_integration import XGBoostPruningCallback

        base = replace(ctx.cfg.section(self.section), log_every=0)
        device = resolve_device(base.device)
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate", ("fit", "valid"), lean=("fit", "valid"))
        shared: dict[int, XgbData] = {}  # matrices by max_bin: built once per binning, shared by the trials

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            suggested = {d.name: d.suggest(trial) for d in space}
            cfg = xgb_config({**asdict(base), **suggested}, "search space")
            params = booster_params(cfg, seed, device, threads)
            if cfg.max_bin not in shared:
                shared[cfg.max_bin] = quantile_matrices(tables, cfg, params["nthread"])
            pruning = XGBoostPruningCallback(trial, "valid-logloss")
            model, history = _fit(shared[cfg.max_bin], params, cfg, callbacks=[pruning])
            best = model.num_boosted_rounds()
            return float(history[best - 1]), {"params": suggested, "best_iteration": best}

        return fn


XGB = XGBoostKind()
