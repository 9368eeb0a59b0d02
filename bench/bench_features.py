"""Benchmark: the default feature set for one plan at full scale — seconds per family, rows/s, peak RSS (JSON).

Usage: python bench/bench_features.py --workdir W (after `gbmcvr synth DATA --scale 1.0` and
`gbmcvr ingest DATA --workdir W`).
"""

from __future__ import annotations

import argparse
import json
import resource
from pathlib import Path

from gbmcvr.data.profile import load_profile
from gbmcvr.fe.pipeline import build
from gbmcvr.fe.spec import default_spec
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--plan", default="validate")
    parser.add_argument("--profile", default="sharechat2023")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    profile = load_profile(args.profile)
    result = build(wd.raw, profile, default_spec(profile), "bench", args.plan, wd.features, force=True)
    rows = sum(result.rows.values())
    print(
        json.dumps(
            {
                "bench": "features",
                "plan": args.plan,
                "rows": rows,
                "columns": result.columns,
                "seconds": result.seconds,
                "rows_per_s": round(rows / result.seconds),
                "family_seconds": result.family_seconds,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
