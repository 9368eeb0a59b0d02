"""Benchmark: test-day quality of raw columns, the default feature set and the selected set (JSON + table).

Usage: python bench/bench_quality.py --workdir W [--data D] [--scale 0.2]
Generates `gbmcvr synth` data with its truth when D has none, ingests it, runs `gbmcvr select`, trains e2e and
ts on each feature set (validate plan, early stopping on the validation day), fits the ensemble weights of
e2e + ts on the validation day, then the prior-shift scaling of `gbmcvr run`'s default submission (fitted on
the validation day; row "run"), and scores every model on the test day against the truth: log loss, gap
closed = (LL_prior - LL_model) / (LL_prior - LL_truth) with the fit window's install rate as the prior, and
calibration ratio mean(p) / mean(y).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from gbmcvr.fe.spec import only_families
from gbmcvr.gbm.train import train_gbm
from gbmcvr.models import registry
from gbmcvr.post.calibrate import prior_shift
from gbmcvr.post.ensemble import combine, fit_weights
from gbmcvr.stages import build_features, select
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir

SETS = {"raw columns": "raw", "default set": "default", "selected set": "selected"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--learning-rate", type=float, default=0.1, help="same for every set (bench budget)")
    args = parser.parse_args()
    start = time.perf_counter()
    wd = Workdir(args.workdir)
    data = args.data or args.workdir / "data"
    if not (data / "truth" / "test_truth.parquet").is_file():
        write_synth(data, args.scale, 0)
    if not (wd.raw / "manifest.json").is_file():
        ingest(data, SHARECHAT, wd.raw, print)
    gbm = {"num_boost_round": 2000, "early_stopping_rounds": 50, "log_every": 200}
    gbm |= {s: {"learning_rate": args.learning_rate} for s in ("e2e", "ts_like", "ts_install")}
    base = config_from_dict({"data": str(data), "gbm": gbm}, "bench")
    selection = select(Context(wd, base, print), name="selected")
    truth = pl.read_parquet(data / "truth" / "test_truth.parquet")
    results: dict[str, dict] = {}
    test_day: dict[str, float] = {}
    for label, name in SETS.items():
        raw = {"data": str(data), "feature_set": name, "gbm": gbm}
        cfg = config_from_dict(raw | ({"features": only_families({"clean": {}})} if name == "raw" else {}), "bench")
        ctx = Context(wd, cfg, print)
        build_features(ctx, plan="validate")
        tables = load_tables(wd.features, name, "validate")
        gcfg = cfg.section("gbm")
        y_valid = tables.splits["valid"][tables.install_label].to_numpy()
        test_ids = tables.splits["test"][tables.id_column]
        y = pl.DataFrame({"row_id": test_ids}).join(truth, on="row_id", how="left")
        y_test, p_truth = y["is_installed"].to_numpy(), y["p_install"].to_numpy()
        prior = float(tables.splits["fit"][tables.install_label].mean())
        ll_prior = metrics.log_loss(y_test, np.full(len(y_test), prior))
        ll_truth = metrics.log_loss(y_test, p_truth)
        valid_p, test_p = {}, {}
        for kind in ("e2e", "ts"):
            run = train_gbm(kind, tables, gcfg, registry.get(kind).params(ctx, None), print)
            preds = run.preds
            valid_p[kind] = preds.filter(pl.col("split") == "valid")["p"].to_numpy()
            test_p[kind] = preds.filter(pl.col("split") == "test")["p"].to_numpy()
        weights = fit_weights([valid_p["e2e"], valid_p["ts"]], y_valid)
        test_p["ensemble"] = combine([test_p["e2e"], test_p["ts"]], weights)
        valid_ensemble = combine([valid_p["e2e"], valid_p["ts"]], weights)
        test_p["run"] = prior_shift(test_p["ensemble"], float(y_valid.mean() / valid_ensemble.mean()))
        results[label] = {
            "columns": len(tables.features()),
            "ensemble_weights": [round(w, 3) for w in weights],
            **{
                kind: {
                    "logloss": round(metrics.log_loss(y_test, p), 5),
                    "gap_closed": round((ll_prior - metrics.log_loss(y_test, p)) / (ll_prior - ll_truth), 4),
                    "calibration_ratio": round(float(p.mean() / y_test.mean()), 4),
                }
                for kind, p in test_p.items()
            },
        }
        test_day = {"prior_logloss": round(ll_prior, 5), "truth_logloss": round(ll_truth, 5)}
    print(
        json.dumps(
            {
                "bench": "quality",
                "scale": args.scale,
                "learning_rate": args.learning_rate,
                "selected": selection.choice.label(),
                "selection_holdout": selection.holdout,
                "test_day": test_day,
                "results": results,
                "seconds": round(time.perf_counter() - start, 1),
            },
            indent=1,
        )
    )
    print("| set | model | test log loss | gap closed | calibration ratio |")
    print("|---|---|---|---|---|")
    for label in SETS:
        for kind in ("e2e", "ts", "ensemble", "run"):
            r = results[label][kind]
            print(f"| {label} | {kind} | {r['logloss']:.5f} | {r['gap_closed']:.3f} | {r['calibration_ratio']:.3f} |")


if __name__ == "__main__":
    main()
