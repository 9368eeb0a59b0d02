"""Benchmark: every calibration and ensemble method on the backtest (day 66) and on the test day (67) (JSON).

Usage: python bench/bench_shift.py --data SYNTH_DIR --workdir W [--models e2e ts] [--rounds 400]
(SYNTH_DIR from `gbmcvr synth --scale 0.2`: its truth file scores the test day). Ingests, builds the
validate and backtest plans, trains each model on both, lets `auto` choose on the backtest, and scores
every candidate on the test day's truth. The choice sees backtest scores only; the test-day columns are
what the choice would have earned.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr import stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.post import backtest as bt
from gbmcvr.post.options import SubmitOptions
from gbmcvr.post.scoring import read_truth
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=["e2e", "ts"])
    parser.add_argument("--rounds", type=int, default=400)
    args = parser.parse_args()
    start = time.perf_counter()
    wd = Workdir(args.workdir)
    cfg = config_from_dict(
        {
            "data": str(args.data),
            "models": list(args.models),
            "gbm": {"num_boost_round": args.rounds, "early_stopping_rounds": 30, "log_every": 0},
            "mtdm": {"epochs": 2},
        },
        "bench",
    )
    ctx = Context(wd, cfg, print, "cpu")
    profile = cfg.load_profile()
    if not (wd.raw / "train.parquet").is_file():
        ingest(args.data, profile, wd.raw, print)
    for plan in ("validate", "backtest"):
        stages.build_features(ctx, plan=plan)
    for kind in args.models:
        for plan in ("backtest", "validate"):
            if (wd.run(kind, plan) / "run.json").is_file():
                continue
            stages.train(ctx, kind, plan=plan, overwrite=True)
    opts = SubmitOptions(calibration="auto", weights="auto")
    choice = stages.backtest_choice(ctx, list(args.models), opts=opts)

    aligned = stages.aligned_runs(wd, list(args.models), "validate")
    y_valid = stages.valid_labels(ctx, aligned.valid_ids)
    inputs = bt.PostInputs(aligned.valid, y_valid, aligned.test, stages.day_rates(ctx, "validate"), profile.test_day)
    pairs = [(r["calibration"], r["weights"]) for r in choice["rows"]]
    preds = bt.candidate_predictions(inputs, pairs, opts.space, opts.folds, cfg.seed, opts.trend_days)
    truth = read_truth(args.data)
    y_test = (
        pl.DataFrame({"row_id": aligned.test_ids})
        .join(truth, on="row_id", how="left", maintain_order="left")["is_installed"]
        .to_numpy()
    )
    base_rate = float(y_valid.mean())
    test_rows = {(r["calibration"], r["weights"]): r for r in bt.score_candidates(preds, y_test, base_rate)}
    chosen = (choice["calibration"], choice["weights"])

    columns = ["backtest_logloss", "backtest_ratio", "test_logloss", "test_ratio"]

    def row(pair):
        b, t = next(r for r in choice["rows"] if (r["calibration"], r["weights"]) == pair), test_rows[pair]
        values = [round(b["logloss"], 5), round(b["calibration_ratio"], 4)]
        values += [round(t["logloss"], 5), round(t["calibration_ratio"], 4)]
        return values + (["chosen"] if pair == chosen else [])

    rates = stages.day_rates(ctx, "validate")
    print(
        json.dumps(
            {
                "bench": "shift",
                "models": args.models,
                "install_rate": {
                    "backtest_valid_day": round(float(rates.rates[-2]), 4),
                    "backtest_test_day": round(choice["test_rate"], 4),
                    "valid_day": round(float(rates.rates[-1]), 4),
                    "test_day_truth": round(float(np.mean(y_test)), 4),
                },
                "chosen": {"calibration": chosen[0], "weights": chosen[1]},
                "columns": columns,
                f"per_calibration (weights {chosen[1]})": {c: row((c, w)) for c, w in pairs if w == chosen[1]},
                f"per_ensemble (calibration {chosen[0]})": {w: row((c, w)) for c, w in pairs if c == chosen[0]},
                "old_default scaling/simplex": row(("scaling", "simplex"))
                if ("scaling", "simplex") in test_rows
                else None,
                "test_best": [
                    *min(test_rows, key=lambda k: test_rows[k]["logloss"]),
                    *row(min(test_rows, key=lambda k: test_rows[k]["logloss"])),
                ],
                "seconds": round(time.perf_counter() - start, 1),
            },
        )
    )


if __name__ == "__main__":
    main()
