"""AliExpress multi-task format adapter: train and evaluate the MTDM on it (CTR, CVR on clicks, CTCVR).

Layout (Tianchi AliExpress after the usual multi-task preprocessing): `search_id`, `categorical_1..16`,
`numerical_1..63`, `click`, `conversion` where conversion = click AND purchase. So like = click, and the
CVR task (install | like) is purchase among clicked rows.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.deep.batches import fit_inputs, to_tensors
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.deep.train import ensemble_predict, resolve_device, train_mtdm
from gbmcvr.errors import UserError

CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERICAL = [f"numerical_{i}" for i in range(1, 64)]
LABELS = ["click", "conversion"]
# MMoE on AliExpress (NL), as published
PUBLISHED_MMOE_NL = {"ctr_auc": 0.7195, "cvr_auc": 0.787, "ctcvr_auc": 0.8574}


def read(path: Path) -> pl.DataFrame:
    """Read one AliExpress CSV with the expected columns and types; anything else is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    header = path.open().readline().strip().split(",")
    expected = ["search_id", *CATEGORICAL, *NUMERICAL, *LABELS]
    missing = [c for c in expected if c not in header]
    if missing:
        raise UserError(f"{path}: missing column '{missing[0]}' (AliExpress layout)")
    schema = {c: pl.Int64 for c in ["search_id", *CATEGORICAL, *LABELS]} | {c: pl.Float64 for c in NUMERICAL}
    try:
        return pl.read_csv(path, schema_overrides=schema, columns=expected, glob=False)
    except pl.exceptions.ComputeError as exc:
        raise UserError(f"{path}: {str(exc).splitlines()[0]}") from None


def encode(train: pl.DataFrame, others: list[pl.DataFrame]) -> list[pl.DataFrame]:
    """Dense categorical codes from the train file's sorted values (unseen values -> -1, the reserved row)."""
    out = []
    for frame in [train, *others]:
        cols = []
        for c in CATEGORICAL:
            vocab = train[c].unique().sort()
            idx = vocab.search_sorted(frame[c]).cast(pl.Int64)
            found = idx < len(vocab)
            hit = found & (vocab.gather(idx.clip(0, len(vocab) - 1)) == frame[c])
            cols.append(pl.when(hit).then(idx).otherwise(-1).alias(c))
        out.append(frame.with_columns(cols).with_columns(pl.col(NUMERICAL).fill_null(0.0)))
    return out


def evaluate(
    train_path: Path,
    test_path: Path,
    cfg: MtdmConfig,
    seed: int,
    device_name: str,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """Train on the train file (10 % of it held out for early stopping), report AUCs on the test file."""
    device = resolve_device(device_name)
    raw_train, test = read(train_path), read(test_path)
    holdout = (raw_train["search_id"].hash(seed=0) % 10 == 0).to_numpy()
    if holdout.all() or not holdout.any():
        holdout = np.arange(raw_train.height) % 10 == 0
    fit, valid = raw_train.filter(pl.Series(~holdout)), raw_train.filter(pl.Series(holdout))
    fit, valid, test = encode(fit, [valid, test])
    spec = fit_inputs(fit, CATEGORICAL, NUMERICAL, cfg.numeric_transform)
    tensors = {
        n: to_tensors(f, spec, "click", "conversion") for n, f in (("fit", fit), ("valid", valid), ("test", test))
    }
    result = train_mtdm(tensors["fit"], tensors["valid"], spec, cfg, seed, device, progress)
    pred = ensemble_predict(result.models, tensors["test"], device)
    click, conv = test["click"].to_numpy(), test["conversion"].to_numpy()
    clicked = click == 1
    return {
        "ctr_auc": metrics.auc(click, pred["p_ctr"]),
        "cvr_auc": metrics.auc(conv[clicked], pred["p_cvr"][clicked]) if clicked.any() else float("nan"),
        "ctcvr_auc": metrics.auc(conv, pred["p_ctcvr"]),
        "test_rows": test.height,
        "best_epoch": result.best_epoch,
    }
