"""Benchmark: training seconds and peak RSS of one model with default parameters (JSON).

Usage: python bench/bench_train.py --workdir W --kind e2e|ts|mtdm (feature tables of W's validate plan).
Run one kind per process so the peak RSS belongs to that model.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from gbmcvr.config import PipelineConfig
from gbmcvr.stages import train_gbm_stage, train_mtdm_stage
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", choices=["e2e", "ts", "mtdm"], required=True)
    parser.add_argument("--epochs", type=int, default=2, help="MTDM epochs")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    cfg = PipelineConfig(gbm={"log_every": 100}, mtdm={"epochs": args.epochs})
    start = time.perf_counter()
    if args.kind == "mtdm":
        run = train_mtdm_stage(wd, cfg, f"bench-{args.kind}", "auto", True, progress=print)
        extra = {"samples_per_s": round(run.result.samples_per_s), "best_epoch": run.result.best_epoch}
    else:
        run = train_gbm_stage(wd, cfg, args.kind, f"bench-{args.kind}", overwrite=True, progress=print)
        extra = {"best_iterations": {k: v["best_iteration"] for k, v in run.params.items()}}
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "bench": "train",
                "kind": args.kind,
                "seconds": round(seconds, 1),
                "valid_logloss": round(run.metrics["valid"]["p"]["logloss"], 5),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                **extra,
            }
        )
    )


if __name__ == "__main__":
    main()
