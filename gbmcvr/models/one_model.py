"""What the kinds of one model with no refit (cb, xgb) share: config and input key from their parameter table,
the options they refuse, and the valid-day scoring of their prediction table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.models.base import NoRefitKind, TrainOptions
from gbmcvr.runs import input_key, params_file, prediction_table
from gbmcvr.tables import FeatureTables


class OneModelKind(NoRefitKind):
    """Part of a kind whose config is its library's parameters: `parse(table, where)` types a table and
    `as_table(config)` turns the config back into one (parameter files merge over it; the input key hashes it)."""

    name: str
    section: str
    label: str
    parse: Callable[[dict[str, Any], str], Any]
    as_table: Callable[[Any], dict[str, Any]]

    def parse_section(self, raw: dict[str, Any], where: str) -> Any:
        return self.parse(raw, where)

    def config(self, ctx: Context, params: str | None) -> Any:
        """The kind's config with a parameters file or the tuned export (`tuned`) over it."""
        cfg = ctx.cfg.section(self.section)
        if params is None:
            return cfg
        override, where = params_file(ctx.wd.models, self.name, params, self.label)
        return self.parse({**self.as_table(cfg), **override}, where)

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        cfg = self.as_table(self.config(ctx, opts.params))
        return input_key(self.name, manifest["config_hash"], manifest["raw_fingerprint"], cfg, ctx.cfg.seed)


def refuse_lightgbm_options(kind: str, opts: TrainOptions) -> None:
    """--refit, --dask and --ddp belong to the LightGBM and deep kinds: a one-model kind says so."""
    if opts.refit or opts.dask or opts.ddp:
        raise UserError(f"{kind}: --refit, --dask and --ddp are for the LightGBM and deep models")


def scored_predictions(
    tables: FeatureTables, predict: Callable[[str], dict[str, np.ndarray]]
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """The prediction table of the valid and test rows (`predict(split)` gives a split's columns), and the
    run's metrics: the valid day's scores against the fit window's install rate."""
    ids = {s: tables.splits[s][tables.id_column].to_numpy() for s in ("valid", "test")}
    preds = prediction_table(ids, {s: predict(s) for s in ids})
    rate = tables.base_rate()
    y = tables.splits["valid"][tables.install_label].to_numpy()
    p_valid = preds.filter(pl.col("split") == "valid")["p"].to_numpy()
    scores = {
        "base_rate": rate,
        "base_rate_source": "install rate of the fit window",
        "valid": {"p": metrics.report(y, p_valid, rate)},
    }
    return preds, scores
