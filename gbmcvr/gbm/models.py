"""Train and predict the LightGBM stages: e2e (install on all rows) and two-step (like; install | like).

The two-step model (paper §4.1.2) factorises P(install) = P(like) * P(install | like) with
like = clicked OR installed. Stage 1 is trained on `is_like` over all rows (the published code trains it
on `is_installed` by mistake); stage 2 on `is_installed` over like rows only, for both the training and the
early-stopping sets.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl
import pyarrow as pa

from gbmcvr.atomic import atomic_path
from gbmcvr.errors import UserError
from gbmcvr.gbm import callbacks
from gbmcvr.gbm.params import KIND_STAGES, GbmConfig, lightgbm_message, probe
from gbmcvr.gbm.sampling import EVERY_ROW, FitSample, budget_sample, describe
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables, RowBatch

CACHE_DIR = "lgb-cache"  # under a plan's feature folder: LightGBM Dataset binaries, one per stage and binning
PREDICT_ROWS = 100_000  # rows per prediction call: one float64 copy of that many rows at a time
DECODE_ROWS = 32_768  # rows decoded to float64 at a time while a Dataset is constructed (~70 MB at 270 features)


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
    curve: list[float] = field(default_factory=list)  # the valid day's metric after each round (learning curve)
    dataset_rows: int | None = None  # the fit rows its Dataset held, where a memory budget kept a sample


def stage_features(tables: FeatureTables, stage: Stage) -> list[str]:
    return [f for f in tables.features() if not any(s in f for s in stage.exclude_containing)]


def stage_rows(frame: pl.DataFrame, stage: Stage) -> pl.DataFrame:
    return frame.filter(pl.col(LIKE) == 1) if stage.rows == "like" else frame


def stage_label(frame: pl.DataFrame, stage: Stage, install_label: str) -> np.ndarray:
    return frame[LIKE if stage.target == "like" else install_label].to_numpy()


def categorical_features(tables: FeatureTables, features: list[str], cfg: GbmConfig) -> list[str]:
    """Categorical columns passed as LightGBM categoricals: those the feature set's categorical handling
    makes native, below the config's cardinality cap; the others stay plain integer codes."""
    cols = [c for c in tables.native_categoricals() if c in features and c not in cfg.numeric_categoricals]
    tops = tables.maxima("fit", cols)
    return [c for c, top in zip(cols, tops, strict=True) if top is not None and top < cfg.max_cat_cardinality]


def _check_label(y: np.ndarray, stage: Stage, split: str) -> None:
    if len(y) == 0:
        raise UserError(f"stage {stage.name}: no {split} rows to train on")
    if y.min() == y.max():
        raise UserError(f"stage {stage.name}: the {stage.target} label is constant ({y[0]}) in the {split} rows")


# parameters fixed when a Dataset is constructed: a trial that changes one needs a new Dataset
BINNING_PARAMS = ("max_bin", "min_data_in_bin", "bin_construct_sample_cnt", "max_cat_to_onehot")
# everything a constructed Dataset depends on (LightGBM's Booster::CheckDatasetResetConfig, the seed that
# defaults data_random_seed, and min_data_in_leaf for the feature pre-filter): the key of its cached binary
DATASET_PARAMS = (
    *BINNING_PARAMS,
    "seed",
    "data_random_seed",
    "max_bin_by_feature",
    "use_missing",
    "zero_as_missing",
    "feature_pre_filter",
    "min_data_in_leaf",
    "is_enable_sparse",
    "enable_bundle",
    "max_conflict_rate",
    "linear_tree",
    "forcedbins_filename",
)


class _Decoded:
    """What a Dataset under construction reads now: one row batch's frame, and one block of it as float64.

    Decoding a block at a time (not the whole batch) keeps one batch's columns plus one small float64 matrix
    in memory while LightGBM samples and pushes rows."""

    def __init__(self) -> None:
        self.batch: int | None = None
        self.frame: pl.DataFrame | None = None
        self.block: tuple[int, int] | None = None
        self.rows: np.ndarray | None = None

    def get(self, key: int, batch: RowBatch, start: int, length: int) -> np.ndarray:
        if self.block != (key, start):
            self.block, self.rows = None, None  # free the previous block before decoding the next
            if self.batch != key:
                self.batch, self.frame = None, None
                self.frame = batch.load()
                self.batch = key
            # float64 as LightGBM's own conversion does: exact for Float32 and Int32 columns alike
            self.rows = self.frame.slice(start, length).select(pl.all().cast(pl.Float64)).to_numpy(order="c")
            self.block = (key, start)
        return self.rows

    def clear(self) -> None:
        self.batch, self.frame, self.block, self.rows = None, None, None, None


class _BatchRows(lgb.Sequence):
    """A block of one row batch as a LightGBM Sequence: sampled row by row, then pushed whole (`batch_size`)."""

    def __init__(self, cache: _Decoded, key: int, batch: RowBatch, start: int, length: int) -> None:
        self.cache, self.key, self.batch, self.start = cache, key, batch, start
        self.batch_size = length

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, idx: int | slice) -> np.ndarray:
        if not isinstance(idx, numbers.Integral | slice):
            raise TypeError(f"row index must be an integer or a slice, got {type(idx).__name__}")
        return self.cache.get(self.key, self.batch, self.start, self.batch_size)[idx]


class _BatchedDataset(lgb.Dataset):
    """A Dataset from Sequences, constructed with all its parameters as LightGBM constructs one from a matrix.

    LightGBM's Sequence path samples and bins with `get_params()`, which leaves out `seed` (it sets the
    sampling seed) and `min_data_in_leaf` (the feature pre-filter): the same rows would give other bins.
    Outside construction `get_params()` is LightGBM's own, so a booster's parameters still win over the Dataset's.
    """

    _constructing = False

    def construct(self) -> lgb.Dataset:
        self._constructing = True
        try:
            return super().construct()
        finally:
            self._constructing = False

    def get_params(self) -> dict[str, Any]:
        return dict(self.params or {}) if self._constructing else super().get_params()

    def _init_from_sample(
        self, sample_data: list[np.ndarray], sample_indices: list[np.ndarray], sample_cnt: int, total_nrow: int
    ) -> lgb.Dataset:
        """LightGBM's binning from the sampled rows, then the sample freed: its caller would hold it (about
        bin_construct_sample_cnt x features x 12 bytes) while every row is pushed."""
        try:
            return super()._init_from_sample(sample_data, sample_indices, sample_cnt, total_nrow)
        finally:
            sample_data.clear()
            sample_indices.clear()


def _release_freed_memory() -> None:
    """Hand memory freed after a construction back to the system: the sampled rows LightGBM copies one by one
    leave holes in the C heap, and Arrow's pool keeps what the row groups used (glibc only; else a no-op)."""
    pa.default_memory_pool().release_unused()
    libc = ctypes.util.find_library("c")
    trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc else None
    if trim is not None:
        trim(0)


def _stage_mask(tables: FeatureTables, split: str, stage: Stage) -> np.ndarray | None:
    """The split's rows a stage learns from, as a mask (None: every row)."""
    return (tables.splits[split][LIKE] == 1).to_numpy() if stage.rows == "like" else None


def _sequences(
    tables: FeatureTables, split: str, stage: Stage, features: list[str], sample: FitSample = EVERY_ROW
) -> tuple[list, _Decoded]:
    """The stage's rows of a split (those `sample` keeps) as Sequences over blocks of its row batches, and the
    cache they share."""
    keep = _stage_mask(tables, split, stage)
    if sample.keep is not None:
        if keep is None:
            keep = sample.keep
        else:
            keep = keep.copy()
            keep[keep] = sample.keep
    cache = _Decoded()
    return [
        _BatchRows(cache, i, b, start, min(DECODE_ROWS, b.rows - start))
        for i, b in enumerate(tables.batches(split, features, keep))
        for start in range(0, b.rows, DECODE_ROWS)
    ], cache


def _cache_path(
    tables: FeatureTables, stage: Stage, features: list[str], cats: list[str], params: dict, sample: FitSample
) -> Path:
    """Where the fit Dataset's binary lives: keyed by the feature tables (manifest), stage, Dataset params and
    the rows a memory budget keeps."""
    manifest = (tables.plan_dir / "manifest.json").read_bytes()
    key = {
        "lightgbm": lgb.__version__,
        "config_hash": tables.manifest.get("config_hash"),
        "raw_fingerprint": tables.manifest.get("raw_fingerprint"),
        "manifest": hashlib.sha256(manifest).hexdigest(),
        "stage": [stage.name, stage.target, stage.rows, tables.install_label],
        "features": features,
        "categorical": cats,
        "params": {k: params[k] for k in DATASET_PARAMS if k in params},
        **({"sample": [sample.share, sample.uniform, params.get("seed", 0)]} if sample.sampled else {}),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:20]
    return tables.plan_dir / CACHE_DIR / f"{stage.name}-{digest}.bin"


@dataclass
class StageData:
    """A stage's LightGBM Datasets (fit, and valid when there is one), with the binning they were built with."""

    train: lgb.Dataset
    valid: lgb.Dataset | None
    features: list[str]
    fit_rows: int
    binning: dict[str, Any]
    dataset_rows: int | None = None  # the rows kept under `[gbm] max_dataset_gb` (None: every fit row)


def binning_of(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in BINNING_PARAMS if k in params}


def stage_data(
    tables: FeatureTables,
    stage: Stage,
    params: dict[str, Any],
    cfg: GbmConfig,
    with_valid: bool = True,
    reusable: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> StageData:
    """The stage's Datasets, constructed now from the splits' row batches (one batch in memory at a time).

    `reusable` builds them without LightGBM's feature pre-filter, so that trials with other tree parameters
    (min_data_in_leaf included) train on them without rebuilding. When the fit split's features are on disk
    (a lean split) and `cfg.dataset_cache` is on, the fit Dataset's binary is cached in the plan's folder and
    a later run with the same tables, stage and Dataset parameters loads it instead of constructing it."""
    features = stage_features(tables, stage)
    cats = categorical_features(tables, features, cfg)
    install = tables.install_label
    y_fit = stage_label(stage_rows(tables.splits["fit"], stage), stage, install)
    _check_label(y_fit, stage, "fit")
    stage_rows_fit = len(y_fit)
    sample = budget_sample(y_fit, len(features), cfg.max_dataset_gb, int(params.get("seed", 0)))
    if sample.keep is not None:
        progress(describe(stage.name, stage_rows_fit, len(features), cfg.max_dataset_gb, sample))
        y_fit = y_fit[sample.keep]
    # the parameters lgb.train would construct the Dataset with (it merges them into the Dataset's own)
    dataset_params = {"max_bin": params.get("max_bin", 255), "verbosity": -1, **params}
    if reusable:
        dataset_params["feature_pre_filter"] = False
    path = None
    if cfg.dataset_cache and not tables.in_memory("fit", features):
        path = _cache_path(tables, stage, features, cats, dataset_params, sample)
    dtrain = _load_binary(path, dataset_params, features, cats, reusable, progress) if path is not None else None
    if dtrain is None:
        progress(f"{stage.name}: constructing its Dataset ({len(y_fit):,} rows, {len(features)} features)")
        seqs, cache = _sequences(tables, "fit", stage, features, sample)
        dtrain = _BatchedDataset(
            seqs,
            label=y_fit,
            weight=sample.weight,
            feature_name=features,
            categorical_feature=cats,
            free_raw_data=not reusable,
            params=dataset_params,
        ).construct()
        cache.clear()
        _release_freed_memory()
        if path is not None:
            _save_binary(dtrain, path, progress)
    dvalid = None
    if "valid" in tables.splits and with_valid:
        y_valid = stage_label(stage_rows(tables.splits["valid"], stage), stage, install)
        _check_label(y_valid, stage, "valid")
        seqs, cache = _sequences(tables, "valid", stage, features)
        dvalid = lgb.Dataset(
            seqs,
            label=y_valid,
            reference=dtrain,
            feature_name=features,
            # as the reference's, so lgb.train's set_reference keeps the constructed handle
            categorical_feature=dtrain.categorical_feature,
            free_raw_data=not reusable,
            params=dataset_params,
        ).construct()
        cache.clear()
    kept = len(y_fit) if sample.sampled else None
    return StageData(dtrain, dvalid, features, stage_rows_fit, binning_of(params), kept)


def _load_binary(
    path: Path,
    params: dict[str, Any],
    features: list[str],
    cats: list[str],
    reusable: bool,
    progress: Callable[[str], None],
) -> lgb.Dataset | None:
    """The cached Dataset, or None when there is none or it cannot be read (then it is rebuilt)."""
    if not path.is_file():
        return None
    progress(f"loading the Dataset from {path}")
    try:
        # names and categoricals as when it was built, so the booster records the same parameters
        return lgb.Dataset(
            str(path), params=params, feature_name=features, categorical_feature=cats, free_raw_data=not reusable
        ).construct()
    except lgb.basic.LightGBMError as exc:
        refusal = probe(params)
        if refusal is not None:  # the parameters are at fault, not the cache: keep it
            raise UserError(f"LightGBM refused the parameters: {refusal}") from None
        progress(f"rebuilding the Dataset: the cached {path} cannot be read ({lightgbm_message(exc)})")
        path.unlink(missing_ok=True)
        return None


def _save_binary(data: lgb.Dataset, path: Path, progress: Callable[[str], None]) -> None:
    """Cache a constructed Dataset (atomic); a folder that cannot be written only costs the cache."""
    try:
        with atomic_path(path) as tmp:
            tmp.unlink()  # LightGBM does not write over an existing file
            data.save_binary(tmp)
            if not tmp.is_file():
                raise OSError(f"LightGBM wrote no {tmp.name}")
    except (OSError, UserError, lgb.basic.LightGBMError) as exc:
        progress(f"not caching the Dataset at {path} ({exc})")


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
        data = stage_data(tables, stage, params, cfg, with_valid=rounds is None, progress=progress)
    elif "feature_pre_filter" not in params:
        params = {**params, "feature_pre_filter": False}
    early = data.valid is not None and rounds is None
    shown = callbacks.progress(cfg.log_every, stage.name, progress, cfg.early_stopping_rounds if early else None)
    curve: dict[str, dict[str, list[float]]] = {}
    cbs = [shown, lgb.record_evaluation(curve), *(extra_callbacks or [])]
    valid_sets, names = [], []
    if early:
        valid_sets, names = [data.valid], ["valid"]
        cbs.append(lgb.early_stopping(cfg.early_stopping_rounds, first_metric_only=True, verbose=False))
    try:
        booster = lgb.train(
            params,
            data.train,
            num_boost_round=rounds or cfg.num_boost_round,
            valid_sets=valid_sets,
            valid_names=names,
            callbacks=cbs,
        )
    finally:
        shown.close()
    best = booster.best_iteration if valid_sets and booster.best_iteration > 0 else booster.current_iteration()
    valid_curve = next(iter(curve.get("valid", {}).values()), [])
    curve_values = [float(v) for v in valid_curve]
    return StageModel(stage, booster, data.features, int(best), data.fit_rows, curve_values, data.dataset_rows)


def predict_stage(model: StageModel, frame: pl.DataFrame) -> np.ndarray:
    """The stage's probabilities for the frame's rows, predicted in slices of PREDICT_ROWS rows."""
    starts = range(0, frame.height, PREDICT_ROWS) if frame.height else [0]
    parts = [
        model.booster.predict(frame.slice(s, PREDICT_ROWS).select(model.features), num_iteration=model.best_iteration)
        for s in starts
    ]
    return np.concatenate(parts)


def predict_split(kind: str, models: dict[str, StageModel], tables: FeatureTables, split: str) -> dict[str, np.ndarray]:
    """`predict_kind` over a split's row batches (a lean split's row groups), so that one batch of its features is
    in memory at a time, not the split."""
    features = list(dict.fromkeys(f for m in models.values() for f in m.features))
    parts = [predict_kind(kind, models, batch.load()) for batch in tables.batches(split, features)]
    if not parts:
        return predict_kind(kind, models, tables.frame(split, features))
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def predict_kind(kind: str, models: dict[str, StageModel], frame: pl.DataFrame) -> dict[str, np.ndarray]:
    """Prediction columns of a model kind: `p`, and for two-step `p_like`, `p_install_given_like`."""
    if KIND_STAGES[kind] == ("e2e",):
        return {"p": predict_stage(models["e2e"], frame)}
    p_like = predict_stage(models["ts_like"], frame)
    p_igl = predict_stage(models["ts_install"], frame)
    return {"p": p_like * p_igl, "p_like": p_like, "p_install_given_like": p_igl}
