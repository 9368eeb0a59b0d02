"""Benchmark: how ingest, features and one e2e training grow with the data (JSON lines, then a summary).

Each step of each scale runs in its own process, so every peak RSS belongs to that step alone. The summary
fits log(seconds) = a + b log(rows) per step: b near 1 is linear growth.

Usage: python bench/bench_scale.py --root DIR [--scales 0.3 1.0 3.0] [--rounds 300]
(the issue's scales; 3.0 needs ~7 GB of disk under DIR and most of an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

STEP = r"""
import json, resource, sys, time
from pathlib import Path
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.stages import build_features, train
from gbmcvr.workdir import Workdir

step, data, work, rounds = sys.argv[1], Path(sys.argv[2]), Workdir(Path(sys.argv[3])), int(sys.argv[4])
cfg = config_from_dict({"gbm": {"num_boost_round": rounds, "early_stopping_rounds": 50, "log_every": 0}}, "bench")
ctx = Context(work, cfg)
start = time.perf_counter()
if step == "ingest":
    rows = ingest(data, SHARECHAT, work.raw)
    rows = rows.train_rows + rows.test_rows
elif step == "features":
    rows = sum(build_features(ctx, plan="validate", force=True).rows.values())
else:
    run = train(ctx, "e2e", run_id="scale-e2e", overwrite=True)
    rows = run.params["e2e"]["fit_rows"]
print(json.dumps({"step": step, "rows": rows, "seconds": round(time.perf_counter() - start, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def run_step(step: str, data: Path, work: Path, rounds: int) -> dict:
    """One step in a fresh interpreter; its last stdout line is the JSON result."""
    out = subprocess.run(
        [sys.executable, "-c", STEP, step, str(data), str(work), str(rounds)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--rounds", type=int, default=300, help="e2e boosting rounds (early stopping may end sooner)")
    parser.add_argument("--keep", action="store_true", help="keep each scale's data and work folders")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {"ingest": [], "features": [], "e2e": []}
    for scale in args.scales:
        data, work = args.root / f"data-{scale}", args.root / f"work-{scale}"
        subprocess.run(
            [sys.executable, "-m", "gbmcvr", "synth", str(data), "--scale", str(scale), "--force"],
            check=True,
            capture_output=True,
        )
        for step in results:
            row = {"scale": scale, **run_step(step, data, work, args.rounds)}
            results[step].append(row)
            print(json.dumps({"bench": "scale", **row}), flush=True)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for step, rows in results.items():
        if len(rows) > 1:
            slope = np.polyfit(np.log([r["rows"] for r in rows]), np.log([r["seconds"] for r in rows]), 1)[0]
            summary[step] = {
                "time_exponent": round(float(slope), 2),
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
            }
    print(json.dumps({"bench": "scale-summary", "scales": args.scales, **summary}))


if __name__ == "__main__":
    main()
