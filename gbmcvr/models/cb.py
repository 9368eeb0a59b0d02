"""The CatBoost kind `cb`: install on every row, the feature tables' categorical columns as CatBoost
categoricals (ordered target statistics, which resist overfitting on high-cardinality codes), early
stopping on the validation day. Model files are CatBoost's own binary format (`model.cbm`), never pickle."""

from __future__ import annotations

import difflib
import inspect
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from functools import cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
from optuna_integration import CatBoostPruningCallback

from gbmcvr import compat
from gbmcvr.context import Context, quiet
from gbmcvr.errors import UserError
from gbmcvr.gbm.params import c_stderr_off
from gbmcvr.gbm.train import plot_importance
from gbmcvr.models.base import Objective, TrainedRun, TrainOptions
from gbmcvr.models.one_model import OneModelKind, refuse_lightgbm_options, scored_predictions
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
    extra: dict[str, Any] = field(default_factory=dict)  # any other CatBoost parameter, under the name given


SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 0.02, "high": 0.2, "log": True},
    "depth": {"type": "int", "low": 4, "high": 10},
    "l2_leaf_reg": {"type": "float", "low": 0.5, "high": 30.0, "log": True},
    "random_strength": {"type": "float", "low": 0.1, "high": 10.0, "log": True},
    "bagging_temperature": {"type": "float", "low": 0.0, "high": 2.0},
    "border_count": {"type": "categorical", "choices": [64, 128, 254]},
}


# CatBoost parameters gbmcvr sets itself: a table naming one is told where it belongs
MANAGED = {
    "loss_function": "the cb kind models installs with Logloss",
    "eval_metric": "early stopping and tuning read the validation Logloss",
    "random_seed": "set the top-level seed",
    "cat_features": "the dataset profile and feature manifest say which columns are categorical",
    "allow_writing_files": "gbmcvr writes the model files",
    "train_dir": "gbmcvr writes the model files",
    "use_best_model": "early stopping on the validation day keeps the best iteration",
    "verbose": "set log_every",
    "silent": "set log_every",
    "logging_level": "set log_every",
    "metric_period": "set log_every",
    "callback": "gbmcvr passes its own callbacks",
}
# CatBoost's names for CbConfig fields that gbmcvr names otherwise
FIELD_OF = {"thread_count": "threads", "od_wait": "early_stopping_rounds"}
OWN = {f.name for f in fields(CbConfig)} - {"extra"}


@cache
def catboost_names() -> dict[str, str]:
    """Every CatBoostClassifier argument -> the name CatBoost's own synonym processing gives it."""
    cb = compat.catboost()
    names = {}
    for name in inspect.signature(cb.CatBoostClassifier.__init__).parameters:
        if name == "self":
            continue
        params: dict[str, Any] = {name: 1}
        try:
            cb.core._process_synonyms(params)
        except Exception:  # a synonym needing other arguments (scale_pos_weight): it keeps its own name
            params = {name: 1}
        names[name] = next(iter(params)) if len(params) == 1 else name
    return names


def _split(raw: dict[str, Any], where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """CbConfig fields and the other CatBoost parameters of a `[cb]` table, aliases normalised."""
    own, extra, given = {}, {}, {}
    for key, value in raw.items():
        names = {} if key in OWN else catboost_names()  # importing catboost only for a parameter of its own
        if key in OWN:
            name = key
        elif key in names:
            name = FIELD_OF.get(names[key], names[key])
        else:
            known = sorted(OWN | set(names))
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{where}: unknown CatBoost parameter '{key}'{hint}")
        if name in MANAGED:
            raise UserError(f"{where}: '{key}' is not set here: {MANAGED[name]}")
        if name in given:
            raise UserError(
                f"{where}: '{given[name]}' and '{key}' are the same CatBoost parameter ({name}); give it once"
            )
        given[name] = key
        if name in OWN:
            own[name] = value
        elif value is None or isinstance(value, dict):
            raise UserError(f"{where}: '{key}' must be a number, string, boolean or list, got {value!r}")
        else:
            extra[key] = value
    return own, extra


def catboost_message(exc: BaseException) -> str:
    """A CatBoost error's first line without the C++ source location it starts with."""
    lines = str(exc).strip().splitlines() or [type(exc).__name__]
    return re.sub(r"^\S+:\d+: ", "", lines[0].strip())


def _probe(cfg: CbConfig, where: str) -> None:
    """Fit two trees on 20 rows with the table's parameters; CatBoost's refusal (a GPU asked for where there
    is none included) becomes a one-line UserError."""
    cb = compat.catboost()
    if str(cfg.extra.get("task_type", "CPU")).upper() == "GPU":
        from catboost.utils import get_gpu_device_count

        with c_stderr_off():
            gpus = get_gpu_device_count()
        if gpus == 0:
            raise UserError(f'{where}: task_type = "GPU" needs a GPU CatBoost can use; none here')
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    params = {**_params(cfg, 0, threads=1), "iterations": 2}
    try:
        with c_stderr_off():
            cb.CatBoostClassifier(**params).fit(x, np.arange(20) % 2, verbose=False)
    except cb.CatBoostError as exc:
        raise UserError(f"{where}: CatBoost refused the parameters: {catboost_message(exc)}") from None


def cb_config(raw: dict[str, Any], where: str) -> CbConfig:
    """Parse and check the `[cb]` table: CbConfig's fields and any other CatBoost parameter (its own names)."""
    own, extra = _split({k: v for k, v in raw.items() if k != "extra"}, where)
    own_extra, _ = _split(dict(raw.get("extra", {})), where) if "extra" in raw else ({}, {})
    if own_extra:
        raise UserError(f"{where}: extra holds CatBoost parameters without fields of their own: {', '.join(own_extra)}")
    cfg = CbConfig(**typed_fields(CbConfig, own, where), extra={**dict(raw.get("extra", {})), **extra})
    for key in ("iterations", "early_stopping_rounds", "depth", "border_count"):
        if getattr(cfg, key) < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {getattr(cfg, key)}")
    if cfg.depth > 16:
        raise UserError(f"{where}: depth must be at most 16, got {cfg.depth}")
    if cfg.learning_rate <= 0:
        raise UserError(f"{where}: learning_rate must be positive, got {cfg.learning_rate}")
    for key in ("threads", "l2_leaf_reg", "random_strength", "bagging_temperature", "one_hot_max_size", "log_every"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{where}: {key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.extra:
        _probe(cfg, where)
    return cfg


def flat(cfg: CbConfig) -> dict[str, Any]:
    """The config as one `[cb]` table (the extra CatBoost parameters beside the fields)."""
    table = asdict(cfg)
    return {**{k: v for k, v in table.items() if k != "extra"}, **table["extra"]}


@contextmanager
def catboost_errors() -> Iterator[None]:
    """CatBoost's errors during training as one-line UserErrors."""
    cb = compat.catboost()
    try:
        yield
    except cb.CatBoostError as exc:
        raise UserError(f"CatBoost refused the parameters: {catboost_message(exc)}") from None


def _params(cfg: CbConfig, seed: int, threads: int | None = None) -> dict[str, Any]:
    """CatBoostClassifier arguments: binary log loss, the seed, a fixed thread count (same bytes per machine)."""
    return {
        **cfg.extra,
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
    plot_importance(
        importance.select("feature", pl.col("importance").alias("gain"))
        .with_columns(pl.lit("cb").alias("stage"))
        .sort("gain", descending=True),
        folder / "importance.png",
    )


class CatBoostKind(OneModelKind):
    name = "cb"
    section = "cb"
    label = "CatBoost"
    tune_targets = ("cb",)
    SPACE = SPACE
    parse = staticmethod(cb_config)
    as_table = staticmethod(flat)

    def check_space(self, dims: list[Dimension], where: str) -> None:
        """CatBoost's names (aliases allowed), each parameter once, none of gbmcvr's own settings."""
        own, _ = _split({d.name: d.choices[0] if d.choices else d.low for d in dims}, where)
        if "log_every" in own or "threads" in own:
            raise UserError(f"{where}: log_every and threads are not tuned")

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        refuse_lightgbm_options(self.name, opts)
        cfg = self.config(ctx, opts.params)
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan)
        ctx.progress(f"cb: {tables.splits['fit'].height:,} fit rows, {len(tables.columns('categorical'))} categoricals")
        start = time.perf_counter()
        with catboost_errors():
            booster = Booster(_fit(tables, _params(cfg, ctx.cfg.seed), cfg, ctx.progress))
        seconds = time.perf_counter() - start
        preds, scores = scored_predictions(tables, lambda split: booster.predict(tables.splits[split]))
        best = int(booster.model.get_best_iteration() or 0) + 1
        ctx.progress(f"cb: best iteration {best}, valid log loss {scores['valid']['p']['logloss']:.5f}")
        return TrainedRun(
            kind=self.name,
            preds=preds,
            metrics={**scores, "train_seconds": round(seconds, 2)},
            params={"cb": flat(cfg), "best_iteration": best, "fit_rows": tables.splits["fit"].height},
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
            own, extra = _split(suggested, "search space")  # CatBoost's aliases replace the config's values
            cfg = replace(cb_config({**flat(base), **own, **extra}, "search space"), log_every=0)
            pruning = CatBoostPruningCallback(trial, "Logloss")
            with catboost_errors():
                model = _fit(tables, _params(cfg, seed, threads), cfg, callbacks=[pruning])
            pruning.check_pruned()
            value = float(model.get_best_score()["validation"]["Logloss"])
            return value, {"params": suggested, "best_iteration": int(model.get_best_iteration() or 0) + 1}

        return fn


CB = CatBoostKind()
