"""Benchmark: how synth, ingest, features and one e2e training grow with the data (JSON lines, then a summary).

Each step of each scale runs in its own process, so every peak RSS belongs to that step alone. The summary
fits log(seconds) = a + b log(rows) per step: b near 1 is linear growth.

Usage: python bench/bench_scale.py --root DIR [--scales 0.3 1.0 3.0] [--rounds 300]
    [--dialects int intfloat hashed noisy crlf gzip] [--steps synth ingest features candidates e2e]
    [--entities profile|discovered] [--keep] [--repeat 3] [--cold]
(the issue's scales; 3.0 needs ~7 GB of disk under DIR and most of an hour on 2 cores). Without the `synth` step a
scale's data folder (and its dialects' folders) is reused when an earlier `--keep` run left it (else generated,
unmeasured); without `ingest` too, the work folder's raw store is reused and the data folder is not needed. Every dialect
(gbmcvr.data.dialects) of each scale runs every step (`--repeat` times, going round the dialects); the summary
takes each step's fastest run, names each dialect's ingest at the largest scale and the worst one.
"""

from __future__ import annotations

import argparse
import json
import os
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
scale, stream_rows, entities = float(sys.argv[5]), sys.argv[6], sys.argv[7]
if stream_rows != "-":  # --stream-rows: where the feature build starts streaming its rows
    import gbmcvr.fe.pipeline
    gbmcvr.fe.pipeline.STREAM_ROWS = int(stream_rows)
cfg = config_from_dict({"gbm": {"num_boost_round": rounds, "early_stopping_rounds": 50, "log_every": 0}}, "bench")
ctx = Context(work, cfg)
start = time.perf_counter()
kept = {}  # e2e: the fit rows its Dataset held, where the memory budget kept a sample
if step == "synth":
    from gbmcvr.data.synth import write_synth
    made = write_synth(data, scale, force=True)
    rows = made.train_rows + made.test_rows
elif step == "ingest":
    rows = ingest(data, SHARECHAT, work.raw)
    rows = rows.train_rows + rows.test_rows
elif step == "features":
    rows = sum(build_features(ctx, plan="validate", force=True).rows.values())
elif step == "candidates":  # what `gbmcvr select` builds before its search: groups, key bounds, candidate tables
    from gbmcvr.data.profile import load_profile
    from gbmcvr.fe import entity_groups, select as selection
    from gbmcvr.fe.pipeline import build, raw_fingerprint
    profile = load_profile("sharechat2023")
    keyed = entity_groups.resolve(work.raw, profile, entities, raw_fingerprint(work.raw))
    _, spec = selection.candidate_spec(work.raw, profile, keyed, entities, lambda line: print(line, file=sys.stderr))
    proxy_ids = selection.raw_proxy_rows(work.raw, profile, selection.SelectOptions()).kept  # the rows select writes
    built = build(work.raw, profile, spec, selection.CANDIDATE_SET, selection.PLAN, work.features, force=True,
                  fit_ids=proxy_ids)
    rows = sum(json.loads((built.out / "manifest.json").read_text())["plan_rows"].values())  # the plan's, as features
    kept = {"written_rows": sum(built.rows.values())}
else:
    run = train(ctx, "e2e", run_id="scale-e2e", overwrite=True)
    rows = run.params["e2e"]["fit_rows"]
    kept = {"dataset_rows": run.params["e2e"]["dataset_rows"]} if "dataset_rows" in run.params["e2e"] else {}
print(json.dumps({"step": step, "rows": rows, **kept, "seconds": round(time.perf_counter() - start, 2),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


STEPS = ("synth", "ingest", "features", "candidates", "e2e")


def run_step(
    step: str,
    data: Path,
    work: Path,
    rounds: int,
    scale: float = 1.0,
    limit: float | None = None,
    stream_rows: int | None = None,
    entities: str = "profile",
    cold: bool = False,
) -> dict:
    """One step in a fresh interpreter; its last stdout line is the JSON result (`timed_out` when it ran past
    `limit` seconds and was stopped: on a shared machine a step may not hold it for long). `cold` empties the
    page cache first, so the step reads its input from disk and finds memory free."""
    os.sync()  # the last step's writes reach the disk first: its writeback would slow this step's own writes
    if cold:
        Path("/proc/sys/vm/drop_caches").write_text("1")
    try:
        out = subprocess.run(
            [sys.executable, "-c", STEP, step, str(data), str(work), str(rounds), str(scale)]
            + ["-" if stream_rows is None else str(stream_rows), entities],
            check=True,
            capture_output=True,
            text=True,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return {"step": step, "timed_out": True, "seconds": limit}
    return json.loads(out.stdout.strip().splitlines()[-1])


def dialect_data(data: Path, dialect: str) -> Path:
    """The generated folder written in `dialect` beside it (the folder itself for `int`); one an earlier `--keep`
    run left (written whole or not at all) is reused."""
    out = data.with_name(f"{data.name}-{dialect}")
    if dialect == "int" or out.is_dir():
        return data if dialect == "int" else out
    subprocess.run(
        [sys.executable, "-c", DIALECT, str(data), str(out), dialect], check=True, capture_output=True, text=True
    )
    return out


DIALECT = "import sys; from gbmcvr.data.dialects import write_dialect; write_dialect(*sys.argv[1:4])"


def dialect_summary(rows: list[dict]) -> dict:
    """Each dialect's ingest at the largest scale, the worst dialect, and its time relative to `int`."""
    top = max(r["scale"] for r in rows)
    per = {
        r["dialect"]: {
            "ingest_seconds": r["seconds"],
            "rows_per_s": round(r["rows"] / r["seconds"]),
            "peak_rss_mb": r["peak_rss_mb"],
        }
        for r in rows
        if r["scale"] == top
    }
    worst = max(per, key=lambda d: per[d]["ingest_seconds"])
    summary = {"scale": top, "dialects": per, "worst": {"dialect": worst, **per[worst]}}
    if "int" in per:
        summary["worst"]["vs_int"] = round(per[worst]["ingest_seconds"] / per["int"]["ingest_seconds"], 2)
    return summary


def ingest_and_features(ingest: list[dict], features: list[dict]) -> dict:
    """Per dialect at the largest scale: its fastest ingest plus its fastest feature build, and the worst dialect."""
    top = max(r["scale"] for r in ingest)
    feats = {r["dialect"]: r["seconds"] for r in features if r["scale"] == top}
    per = {
        r["dialect"]: round(r["seconds"] + feats[r["dialect"]], 2)
        for r in ingest
        if r["scale"] == top and r["dialect"] in feats
    }
    if not per:
        return {}
    worst = max(per, key=per.get)
    return {"scale": top, "seconds": per, "worst": {"dialect": worst, "seconds": per[worst]}}


def candidate_ratios(candidates: list[dict], features: list[dict]) -> dict:
    """Per (scale, dialect): the candidate build's seconds over the default feature build's, and its peak."""
    default = {(r["scale"], r["dialect"]): r["seconds"] for r in features}
    return {
        f"{r['scale']}-{r['dialect']}": {
            "candidates_s": r["seconds"],
            "features_s": default[(r["scale"], r["dialect"])],
            "ratio": round(r["seconds"] / default[(r["scale"], r["dialect"])], 2),
            "candidates_peak_rss_mb": r["peak_rss_mb"],
        }
        for r in candidates
        if (r["scale"], r["dialect"]) in default
    }


def report(row: dict, log: Path | None) -> None:
    """Print one step's JSON line (and append it to `log`)."""
    line = json.dumps({"bench": "scale", **row})
    print(line, flush=True)
    if log is not None:
        with log.open("a") as f:
            f.write(line + "\n")


def fastest(rows: list[dict]) -> dict[str, list[dict]]:
    """Per step, one row per (scale, dialect): the fastest of its runs (as timeit reports the best), with the
    highest peak any of them reached."""
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["step"], row["scale"], row["dialect"])
        peak = max(row["peak_rss_mb"], best[key]["peak_rss_mb"]) if key in best else row["peak_rss_mb"]
        if key not in best or row["seconds"] < best[key]["seconds"]:
            best[key] = dict(row)
        best[key]["peak_rss_mb"] = peak
    results: dict[str, list[dict]] = {}
    for row in best.values():
        results.setdefault(row["step"], []).append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--scales", type=float, nargs="+", default=[0.3, 1.0, 3.0])
    parser.add_argument("--rounds", type=int, default=300, help="e2e boosting rounds (early stopping may end sooner)")
    parser.add_argument("--keep", action="store_true", help="keep each scale's data and work folders")
    parser.add_argument("--dialects", nargs="+", default=["int"], help="data dialects (gbmcvr.data.dialects)")
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument(
        "--step-timeout", type=float, help="stop a step after this many seconds (reported as timed out)"
    )
    parser.add_argument(
        "--stream-rows", type=int, help="raw rows above which features stream (default: the toolkit's STREAM_ROWS)"
    )
    parser.add_argument(
        "--entities",
        default="profile",
        help='candidates step: entity groups "profile" (declared; nearly unique per row on noisy data) or "discovered"',
    )
    parser.add_argument(
        "--repeat", type=int, default=1, help="run each step this many times, round the dialects; report the fastest"
    )
    parser.add_argument(
        "--cold",
        action="store_true",
        help="empty the page cache before each step (root only): on a VM whose memory is full of cached files, "
        "reclaiming it made one feature build take 24-46 s against 15 s",
    )
    parser.add_argument(
        "--log", type=Path, help="JSON-lines file: each row is appended, and the summary covers every row in it"
    )
    args = parser.parse_args()
    if args.cold and os.geteuid() != 0:
        parser.error("--cold empties the page cache, which needs root")
    results: dict[str, list[dict]] = {step: [] for step in args.steps}
    for scale in args.scales:
        data = args.root / f"data-{scale}"
        if "synth" in results:
            row = {
                "scale": scale,
                "dialect": "int",
                **run_step("synth", data, args.root, args.rounds, scale, args.step_timeout),
            }
            results["synth"].append(row)
            report(row, args.log)
            for dialect in args.dialects:  # written from the data just replaced
                shutil.rmtree(data.with_name(f"{data.name}-{dialect}"), ignore_errors=True)
        elif "ingest" in results and not (data / ".gbmcvr-synth").is_file():
            run_step("synth", data, args.root, args.rounds, scale)
        sources = {dialect: dialect_data(data, dialect) for dialect in args.dialects}
        # repeats go round every dialect in turn, so a slow spell of a shared machine does not land on one dialect
        for _ in range(args.repeat):
            for dialect, source in sources.items():
                work = args.root / f"work-{scale}-{dialect}"
                for step in (s for s in results if s != "synth"):
                    row = {
                        "scale": scale,
                        "dialect": dialect,
                        **({} if args.stream_rows is None else {"stream_rows": args.stream_rows}),
                        **run_step(
                            step,
                            source,
                            work,
                            args.rounds,
                            scale,
                            args.step_timeout,
                            args.stream_rows,
                            args.entities,
                            args.cold,
                        ),
                        **({"cold": True} if args.cold else {}),
                    }
                    results[step].append(row)
                    report(row, args.log)
        if not args.keep:
            for dialect, source in sources.items():
                shutil.rmtree(args.root / f"work-{scale}-{dialect}", ignore_errors=True)
                if source != data:
                    shutil.rmtree(source, ignore_errors=True)
            shutil.rmtree(data, ignore_errors=True)
    rows = [r for step_rows in results.values() for r in step_rows]
    if args.log is not None:
        rows = [json.loads(line) for line in args.log.read_text().splitlines()]
        rows = [r for r in rows if r.get("cold", False) == args.cold]  # cold and warm runs are not compared
    results = fastest([r for r in rows if not r.get("timed_out")])
    summary = {}
    for step, rows in results.items():
        if len({r["scale"] for r in rows}) > 1:
            summary[step] = {
                "max_peak_rss_mb": max(r["peak_rss_mb"] for r in rows),
                "scales": sorted({r["scale"] for r in rows}),
            }
            for dialect in args.dialects if step != "synth" else ["int"]:
                mine = [r for r in rows if r["dialect"] == dialect]
                x, y = np.log([r["rows"] for r in mine]), np.log([r["seconds"] for r in mine])
                summary[step][f"time_exponent_{dialect}"] = round(float(np.polyfit(x, y, 1)[0]), 2)
    if results.get("ingest"):
        summary["ingest_dialects"] = dialect_summary(results["ingest"])
    if results.get("ingest") and results.get("features"):
        summary["ingest_plus_features"] = ingest_and_features(results["ingest"], results["features"])
    if results.get("candidates") and results.get("features"):
        summary["candidates_vs_features"] = candidate_ratios(results["candidates"], results["features"])
    scales = sorted({r["scale"] for rows in results.values() for r in rows})
    print(json.dumps({"bench": "scale-summary", "scales": scales, **summary}))


if __name__ == "__main__":
    main()
