"""Benchmark: one LightGBM model trained locally and on a local Dask cluster, seconds and valid log loss (JSON).

Usage: python bench/bench_dask.py --workdir W [--kind e2e] [--workers 2] [--threads 1] [--scheduler ADDRESS]
(feature tables of W's validate plan; without --scheduler a `distributed.LocalCluster` is started).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from gbmcvr import stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--kind", choices=["e2e", "ts"], default="e2e")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per Dask worker")
    parser.add_argument("--scheduler", help="an existing scheduler address instead of a LocalCluster")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    ctx = Context(wd, config_from_dict({"gbm": {"log_every": 100}}, "bench"), print)
    results = {}
    start = time.perf_counter()
    run = stages.train(ctx, args.kind, run_id=f"bench-{args.kind}-local", overwrite=True)
    results["local"] = (time.perf_counter() - start, run)
    cluster = None
    address = args.scheduler
    if address is None:
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=args.workers, threads_per_worker=args.threads, processes=True, dashboard_address=None
        )
        address = cluster.scheduler_address
    start = time.perf_counter()
    run = stages.train(ctx, args.kind, run_id=f"bench-{args.kind}-dask", overwrite=True, dask=address)
    results["dask"] = (time.perf_counter() - start, run)
    if cluster is not None:
        cluster.close()
    print(
        json.dumps(
            {
                "bench": "dask",
                "kind": args.kind,
                "workers": args.workers,
                "threads_per_worker": args.threads,
                **{
                    name: {
                        "seconds": round(seconds, 1),
                        "valid_logloss": round(r.metrics["valid"]["p"]["logloss"], 5),
                        "best_iterations": {k: v["best_iteration"] for k, v in r.params.items()},
                    }
                    for name, (seconds, r) in results.items()
                },
            }
        )
    )


if __name__ == "__main__":
    main()
