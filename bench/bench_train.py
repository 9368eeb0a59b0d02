"""Benchmark: training seconds and peak RSS of one model, and LightGBM's own boosting time vs the rest (JSON).

Usage: python bench/bench_train.py --workdir W --kind e2e|ts|mtdm [--rounds 300] [--run-id ID]
(feature tables of W's validate plan). Run one kind per process so the peak RSS belongs to that model.
`--rounds` trains exactly that many rounds per stage (early stopping never triggers), so runs compare.
`boosting_seconds` is the time inside `Booster.update` and the valid-set evaluation; `other_seconds` is the
rest (reading tables, building Datasets, predicting, writing the run).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import lightgbm as lgb

from gbmcvr.config import PipelineConfig
from gbmcvr.stages import train_gbm_stage, train_mtdm_stage
from gbmcvr.workdir import Workdir

TIMES = {"boosting": 0.0, "dataset": 0.0}


def timed(method, key: str, outermost: list[bool] | None = None):
    """Wrap a LightGBM method so its wall time adds to TIMES[key] (only the outermost of nested calls)."""

    def wrapper(self, *args, **kwargs):
        if outermost is not None and outermost[0]:
            return method(self, *args, **kwargs)
        if outermost is not None:
            outermost[0] = True
        start = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            TIMES[key] += time.perf_counter() - start
            if outermost is not None:
                outermost[0] = False

    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", choices=["e2e", "ts", "mtdm"], required=True)
    parser.add_argument("--epochs", type=int, default=2, help="MTDM epochs")
    parser.add_argument("--rounds", type=int, default=0, help="exactly this many boosting rounds per stage")
    parser.add_argument("--run-id", default=None)
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    gbm = {"log_every": 100}
    if args.rounds:
        gbm |= {"num_boost_round": args.rounds, "early_stopping_rounds": args.rounds}
    cfg = PipelineConfig(gbm=gbm, mtdm={"epochs": args.epochs})
    lgb.Booster.update = timed(lgb.Booster.update, "boosting")
    lgb.Booster.eval_valid = timed(lgb.Booster.eval_valid, "boosting")
    lgb.Dataset.construct = timed(lgb.Dataset.construct, "dataset", [False])
    run_id = args.run_id or f"bench-{args.kind}"
    start = time.perf_counter()
    if args.kind == "mtdm":
        run = train_mtdm_stage(wd, cfg, run_id, "auto", True, progress=print)
        extra = {"samples_per_s": round(run.result.samples_per_s), "best_epoch": run.result.best_epoch}
    else:
        run = train_gbm_stage(wd, cfg, args.kind, run_id, overwrite=True, progress=print)
        extra = {"best_iterations": {k: v["best_iteration"] for k, v in run.params.items()}}
    seconds = time.perf_counter() - start
    timing = {}
    if args.kind != "mtdm":
        timing = {
            "boosting_seconds": round(TIMES["boosting"], 1),
            "dataset_seconds": round(TIMES["dataset"], 1),
            "other_seconds": round(seconds - TIMES["boosting"], 1),
            "other_share": round((seconds - TIMES["boosting"]) / seconds, 3),
        }
    print(
        json.dumps(
            {
                "bench": "train",
                "kind": args.kind,
                "rounds": args.rounds or None,
                "seconds": round(seconds, 1),
                **timing,
                "valid_logloss": round(run.metrics["valid"]["p"]["logloss"], 5),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
