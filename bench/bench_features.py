"""Benchmark: the default feature set (or `--set candidates`: the families `gbmcvr select` builds) for one plan —
seconds per step, rows/s, CPU seconds, peak RSS (JSON).

Usage: python bench/bench_features.py --workdir W [--plan validate] [--repeat 2] [--set candidates] (after
`gbmcvr synth DATA --scale S` and `gbmcvr ingest DATA --workdir W`). Each repeat rebuilds the tables
(`force`); the first repeat also builds the plan-independent vocabularies when they are not cached yet.
Wall-clock numbers depend on what else runs on the machine: CPU seconds say how much work was done.

With `--data DATA --dialects int intfloat hashed noisy crlf gzip` (DATA from `gbmcvr synth`), each dialect of
DATA is ingested into WORKDIR/<dialect> and featured, each step in its own process; the summary lists every
dialect (ingest seconds, rows/s, peak RSS; feature seconds) and the worst one.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from gbmcvr.data.profile import load_profile
from gbmcvr.fe import entity_groups
from gbmcvr.fe.pipeline import build, raw_fingerprint
from gbmcvr.fe.select import PLAN, candidate_spec
from gbmcvr.fe.spec import default_spec
from gbmcvr.workdir import Workdir


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


INGEST = r"""
import json, resource, sys
from pathlib import Path
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import load_profile
from gbmcvr.workdir import Workdir
result = ingest(Path(sys.argv[1]), load_profile(sys.argv[3]), Workdir(Path(sys.argv[2])).raw)
rows = result.train_rows + result.test_rows
print(json.dumps({"ingest_seconds": round(result.seconds, 2), "rows": rows, "rows_per_s": round(rows / result.seconds),
                  "ingest_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""

DIALECT = "import sys; from gbmcvr.data.dialects import write_dialect; write_dialect(*sys.argv[1:4])"


def _last_json(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_dialects(args: argparse.Namespace) -> None:
    """Ingest and feature each dialect of `args.data` in fresh processes; print one line each and a summary."""
    per = {}
    for dialect in args.dialects:
        data = args.data
        if dialect != "int":
            data = args.workdir / f"data-{dialect}"
            subprocess.run([sys.executable, "-c", DIALECT, str(args.data), str(data), dialect], check=True)
        work = args.workdir / dialect
        row = _last_json(["-c", INGEST, str(data), str(work), args.profile])
        features = _last_json(
            [__file__, "--workdir", str(work), "--plan", args.plan, "--profile", args.profile, "--repeat", "1"]
        )
        row |= {"features_seconds": features["runs"][0]["seconds"], "features_peak_rss_mb": features["peak_rss_mb"]}
        per[dialect] = row
        print(json.dumps({"bench": "features-dialect", "dialect": dialect, **row}), flush=True)
    worst = max(per, key=lambda d: per[d]["ingest_seconds"])
    summary = {"bench": "features-dialects", "dialects": per, "worst": {"dialect": worst, **per[worst]}}
    if "int" in per:
        summary["worst"]["ingest_vs_int"] = round(per[worst]["ingest_seconds"] / per["int"]["ingest_seconds"], 2)
    print(json.dumps(summary))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--plan", default="validate")
    parser.add_argument("--profile", default="sharechat2023")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--set",
        choices=["default", "candidates"],
        default="default",
        help="the default feature set, or the candidate families `gbmcvr select` builds (backtest plan)",
    )
    parser.add_argument("--data", type=Path, help="a `gbmcvr synth` folder to write in each dialect (with --dialects)")
    parser.add_argument("--dialects", nargs="+", help="data dialects (gbmcvr.data.dialects) to ingest and feature")
    args = parser.parse_args()
    if args.dialects:
        if args.data is None:
            parser.error("--dialects needs --data")
        bench_dialects(args)
        return
    wd = Workdir(args.workdir)
    profile = load_profile(args.profile)
    spec, plan = default_spec(profile), args.plan
    if args.set == "candidates":
        say = lambda line: print(line, file=sys.stderr)  # noqa: E731
        keyed = entity_groups.resolve(wd.raw, profile, "discovered", raw_fingerprint(wd.raw), say)
        spec, plan = candidate_spec(wd.raw, profile, keyed, "discovered", say)[1], PLAN
    runs = []
    for _ in range(args.repeat):
        cpu = _cpu_seconds()
        wall = time.perf_counter()
        result = build(wd.raw, profile, spec, f"bench-{args.set}", plan, wd.features, force=True)
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
    out = wd.features / f"bench-{args.set}" / plan
    print(
        json.dumps(
            {
                "bench": "features",
                "set": args.set,
                "plan": plan,
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
