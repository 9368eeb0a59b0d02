"""Benchmark: model quality on generated data (issue tables), printed as JSON lines.

For `--scale` (default 0.2): generates data (or reuses --data), ingests, builds features (validate + full),
trains the raw-column baseline, the `--models` kinds (e2e, ts; add cb, xgb, tfm), the `--refit-models` with --refit
and the MTDM, then scores every
run's valid and test predictions, the base-rate prior and the truth; then the Table-5-style grid of
calibrations and ensembles scored on the test day against the truth.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from dataclasses import replace
from pathlib import Path

import polars as pl

from gbmcvr import metrics, stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from gbmcvr.fe.spec import only_families
from gbmcvr.post.options import submit_options
from gbmcvr.post.scoring import read_truth
from gbmcvr.stages import build_features
from gbmcvr.workdir import Workdir


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def score(name: str, preds: pl.DataFrame, y_valid: pl.DataFrame, truth: pl.DataFrame, rate: float) -> dict:
    row = {"model": name}
    for split, labels in (("valid", y_valid), ("test", truth)):
        joined = labels.join(preds.filter(pl.col("split") == split), on="row_id", how="inner")
        r = metrics.report(joined["is_installed"].to_numpy(), joined["p"].to_numpy(), rate)
        row.update({f"{split}_{k}": round(r[k], 5) for k in ("logloss", "nce", "auc", "calibration_ratio")})
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--skip-mtdm", action="store_true")
    parser.add_argument("--models", nargs="+", default=["e2e", "ts"], help="validate-plan kinds (e2e ts cb tfm)")
    parser.add_argument("--refit-models", nargs="*", default=["e2e", "ts"], help="kinds also trained with --refit")
    args = parser.parse_args()
    data, wd = args.root / "data", Workdir(args.root / "work")
    if not (data / "truth").exists():
        write_synth(data, args.scale, args.seed)
    if not (wd.raw / "manifest.json").exists():
        ingest(data, SHARECHAT, wd.raw)
    raw = {"data": str(data), "seed": args.seed, "gbm": {"log_every": 0}, "mtdm": {"epochs": 6}}
    cfg = config_from_dict(raw, "bench")
    ctx = Context(wd, cfg, device="cpu")
    for plan in ("validate", "full"):
        build_features(ctx, plan=plan)
    raw_cfg = config_from_dict(
        {**raw, "features": only_families({"clean": {}}), "feature_set": "rawcols", "gbm": {"max_cat_cardinality": 0}},
        "bench (raw columns)",
    )
    build_features(replace(ctx, cfg=raw_cfg), plan="validate")
    runs: dict[str, float] = {}
    jobs = [("rawcols", raw_cfg, "e2e", False)]
    jobs += [(kind, cfg, kind, False) for kind in args.models]
    jobs += [(f"{kind}-refit", cfg, kind, True) for kind in args.refit_models]
    for run_id, c, kind, refit in jobs:
        start = time.perf_counter()
        stages.train(replace(ctx, cfg=c), kind, run_id=run_id, refit=refit, overwrite=True)
        runs[run_id] = time.perf_counter() - start
    if not args.skip_mtdm:
        start = time.perf_counter()
        stages.train(ctx, "mtdm", overwrite=True)
        runs["mtdm"] = time.perf_counter() - start
    truth = read_truth(data).select("row_id", "is_installed", "p_install")
    train = pl.read_parquet(wd.raw / "train.parquet", columns=["f_0", "f_1", "is_installed"])
    rate = float(train.filter(pl.col("f_1") <= 65)["is_installed"].mean())
    y_valid = train.filter(pl.col("f_1") == 66).select(row_id="f_0", is_installed="is_installed")
    emit({"bench": "models", "scale": args.scale, "nce_base_rate": rate, "base_rate_source": "fit-window install rate"})
    for name, p_valid, p_test in (("prior", rate, rate), ("truth", None, None)):
        if name == "truth":
            r = metrics.report(truth["is_installed"].to_numpy(), truth["p_install"].to_numpy(), rate)
            emit(
                {
                    "model": "truth",
                    "test_logloss": round(r["logloss"], 5),
                    "test_nce": round(r["nce"], 5),
                    "test_auc": round(r["auc"], 5),
                }
            )
            continue
        preds = pl.concat(
            [
                y_valid.select("row_id", split=pl.lit("valid"), p=pl.lit(p_valid)),
                truth.select("row_id", split=pl.lit("test"), p=pl.lit(p_test)),
            ]
        )
        emit(score(name, preds, y_valid, truth, rate))
    for run_id, seconds in runs.items():
        preds = pl.read_parquet(wd.run(run_id) / "preds.parquet")
        emit({**score(run_id, preds, y_valid, truth, rate), "train_seconds": round(seconds, 1)})
    inputs = [f"{kind}-refit" for kind in args.refit_models][:2] + ([] if args.skip_mtdm else ["mtdm"])
    for runs_set in (inputs[:2], inputs) if len(inputs) >= 2 else ():
        for calibration in ("none", "scaling", "scaling-fit", "isotonic", "platt"):
            for weights in ("0.5,0.5" if len(runs_set) == 2 else ",".join(["0.3333"] * 3), "auto"):
                opts = submit_options({"calibration": calibration, "weights": weights, "name": "bench"}, "bench")
                result = stages.submit(ctx, runs_set, opts=opts, overwrite=True, truth=data).result
                for row in result.table:
                    emit(
                        {
                            "runs": "+".join(runs_set),
                            "calibration": calibration,
                            "weights": weights,
                            **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()},
                        }
                    )
    emit({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})


if __name__ == "__main__":
    main()
