"""Benchmark: training seconds and peak RSS of one model, and LightGBM's own boosting time vs the rest (JSON).

Usage: python bench/bench_train.py --workdir W --kind e2e|ts|mtdm|cb [--rounds 300] [--run-id ID] [--config T.toml]
(feature tables of W's validate plan; the config's tables, e.g. [cb] iterations, replace the bench's).
Run one kind per process so the peak RSS belongs to that model.
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

from gbmcvr import stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.tomlfile import read_toml
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
    parser.add_argument("--kind", required=True, help="a registered model kind (e2e, ts, mtdm, cb)")
    parser.add_argument("--epochs", type=int, default=2, help="MTDM epochs")
    parser.add_argument("--rounds", type=int, default=0, help="exactly this many boosting rounds per stage")
    parser.add_argument("--run-id", default=None)
    parser.add_argument("--config", type=Path, help="a gbmcvr.toml whose tables replace the bench's (e.g. [cb])")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    gbm = {"log_every": 100}
    if args.rounds:
        gbm |= {"num_boost_round": args.rounds, "early_stopping_rounds": args.rounds}
    raw = {"gbm": gbm, "mtdm": {"epochs": args.epochs}}
    cfg = config_from_dict(raw | (read_toml(args.config) if args.config else {}), str(args.config or "bench"))
    lgb.Booster.update = timed(lgb.Booster.update, "boosting")
    lgb.Booster.eval_valid = timed(lgb.Booster.eval_valid, "boosting")
    lgb.Dataset.construct = timed(lgb.Dataset.construct, "dataset", [False])
    run_id = args.run_id or f"bench-{args.kind}"
    start = time.perf_counter()
    run = stages.train(Context(wd, cfg, print), args.kind, run_id=run_id, overwrite=True)
    seconds = time.perf_counter() - start
    extra = {k: run.metrics[k] for k in ("samples_per_s", "best_epoch", "train_seconds") if k in run.metrics}
    best = {k: v["best_iteration"] for k, v in run.params.items() if isinstance(v, dict) and "best_iteration" in v}
    extra |= {"best_iterations": best or {args.kind: run.params.get("best_iteration")}}
    timing = {}
    if TIMES["boosting"]:
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
