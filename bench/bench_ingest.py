"""Benchmark: `gbmcvr ingest` of a generated dataset — seconds and peak RSS, printed as JSON.

Usage: python bench/bench_ingest.py DATA_DIR (e.g. after `gbmcvr synth DATA_DIR --scale 1.0`).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
from pathlib import Path

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import load_profile


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--profile", default="sharechat2023")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = ingest(args.data, load_profile(args.profile), Path(tmp) / "raw")
    rows = result.train_rows + result.test_rows
    print(
        json.dumps(
            {
                "bench": "ingest",
                "rows": rows,
                "seconds": round(result.seconds, 2),
                "rows_per_s": round(rows / result.seconds),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            }
        )
    )


if __name__ == "__main__":
    main()
