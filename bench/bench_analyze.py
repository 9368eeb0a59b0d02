"""Benchmark: `gbmcvr analyze` on a raw store, seconds per section and peak RSS (JSON).

Usage: python bench/bench_analyze.py --workdir W (W/features/raw written by `gbmcvr ingest`).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from gbmcvr.data.analyze_report import analyze_store
from gbmcvr.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--profile", default="sharechat2023")
    args = parser.parse_args()
    wd = Workdir(args.workdir)
    start = time.perf_counter()
    result = analyze_store(wd.raw, args.profile, wd.root / "reports" / "analyze", progress=print)
    print(
        json.dumps(
            {
                "bench": "analyze",
                "rows": result["summary"]["train_rows"] + result["summary"]["test_rows"],
                "seconds": round(time.perf_counter() - start, 1),
                "sections": result["seconds"],
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
