"""Benchmark: training seconds and peak RSS of one model with default parameters (JSON).

Usage: python bench/bench_train.py --workdir W --kind e2e|ts|mtdm|cb [--config T.toml] (feature tables of
W's validate plan; the config's tables, e.g. [cb] iterations, replace the bench's).
Run one kind per process so the peak RSS belongs to that model.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from gbmcvr import stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.tomlfile import read_toml
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", required=True, help="a registered model kind (e2e, ts, mtdm, ...)")
    parser.add_argument("--epochs", type=int, default=2, help="MTDM epochs")
    parser.add_argument("--config", type=Path, help="a gbmcvr.toml whose tables replace the bench's (e.g. [cb])")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    raw = {"gbm": {"log_every": 100}, "mtdm": {"epochs": args.epochs}}
    cfg = config_from_dict(raw | (read_toml(args.config) if args.config else {}), str(args.config or "bench"))
    start = time.perf_counter()
    run = stages.train(Context(wd, cfg, print), args.kind, run_id=f"bench-{args.kind}", overwrite=True)
    extra = {k: run.metrics[k] for k in ("samples_per_s", "best_epoch") if k in run.metrics}
    stages_best = {
        k: v["best_iteration"] for k, v in run.params.items() if isinstance(v, dict) and "best_iteration" in v
    }
    extra |= {"best_iterations": stages_best or {args.kind: run.params.get("best_iteration")}}
    extra |= {"train_seconds": run.metrics.get("train_seconds")}
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
