"""Benchmark: `gbmcvr synth` at a given scale — seconds and peak RSS, printed as JSON."""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from gbmcvr.data.synth import write_synth


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="keep the data here (default: a temp folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "data"
        start = time.perf_counter()
        result = write_synth(out, args.scale, args.seed)
        seconds = time.perf_counter() - start
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(
        json.dumps(
            {
                "bench": "synth",
                "scale": args.scale,
                "train_rows": result.train_rows,
                "test_rows": result.test_rows,
                "seconds": round(seconds, 2),
                "rows_per_s": round((result.train_rows + result.test_rows) / seconds),
                "bytes_written": size,
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                "truth_logloss": round(result.truth_logloss, 5),
            }
        )
    )


if __name__ == "__main__":
    main()
