"""Benchmark: the default feature set for one plan — seconds per step, rows/s, CPU seconds, peak RSS (JSON).

Usage: python bench/bench_features.py --workdir W [--plan validate] [--repeat 2] (after
`gbmcvr synth DATA --scale S` and `gbmcvr ingest DATA --workdir W`). Each repeat rebuilds the tables
(`force`); the first repeat also builds the plan-independent vocabularies when they are not cached yet.
Wall-clock numbers depend on what else runs on the machine: CPU seconds say how much work was done.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from gbmcvr.data.profile import load_profile
from gbmcvr.fe.pipeline import build
from gbmcvr.fe.spec import default_spec
from gbmcvr.workdir import Workdir


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--plan", default="validate")
    parser.add_argument("--profile", default="sharechat2023")
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    profile = load_profile(args.profile)
    runs = []
    for _ in range(args.repeat):
        cpu = _cpu_seconds()
        wall = time.perf_counter()
        result = build(wd.raw, profile, default_spec(profile), "bench", args.plan, wd.features, force=True)
        rows = sum(result.rows.values())
        runs.append(
            {
                "seconds": result.seconds,
                "cpu_seconds": round(_cpu_seconds() - cpu, 1),
                "wall_seconds": round(time.perf_counter() - wall, 3),
                "rows_per_s": round(rows / result.seconds),
                "step_seconds": result.family_seconds,
            }
        )
    out = wd.features / "bench" / args.plan
    print(
        json.dumps(
            {
                "bench": "features",
                "plan": args.plan,
                "rows": rows,
                "columns": result.columns,
                "runs": runs,
                "bytes": {p.name: p.stat().st_size for p in sorted(out.glob("*.parquet"))},
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
