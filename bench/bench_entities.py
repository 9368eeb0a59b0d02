"""Benchmark: entity discovery on a raw store (time, groups) and the e2e test-day quality it buys (JSON + table).

Usage:
  python bench/bench_entities.py --raw RAW_STORE                 # discovery only (time, groups), nothing written
  python bench/bench_entities.py --workdir W [--scale 0.05] [--seed 0] [--user-columns f_5,f_8,f_42,f_55]

With --workdir: generates `gbmcvr synth` data with its truth (the user planted in --user-columns, if given),
ingests it, times discovery, then trains e2e (validate plan, early stopping on the validation day) on the
default set, and on the default set plus the key families of `gbmcvr select`'s candidates (novelty, lagged,
daycount, entity_target) keyed on the discovered groups and, as a control, on the profile's declared groups.
Scores on the test day against the truth as bench/bench_quality.py does: log loss, gap closed =
(LL_prior - LL_model) / (LL_prior - LL_truth) with the fit window's install rate as the prior, calibration
ratio mean(p) / mean(y).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from gbmcvr.fe import entity_groups
from gbmcvr.fe.pipeline import raw_fingerprint
from gbmcvr.fe.select import candidate_raw
from gbmcvr.gbm.train import train_gbm
from gbmcvr.models import registry
from gbmcvr.stages import build_features
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir

KEY_FAMILIES = ("novelty", "lagged", "daycount", "entity_target")


def discovery(raw: Path) -> dict[str, Any]:
    """Discovery on the raw store's sample, timed (read and search), without storing it."""
    start = time.perf_counter()
    record = entity_groups.discover(raw, SHARECHAT, raw_fingerprint(raw))
    rows = sum(pl.scan_parquet(raw / f"{s}.parquet").select(pl.len()).collect().item() for s in ("train", "test"))
    return {
        "raw_rows": rows,
        "sample_rows": record["rows"],
        "seconds": round(time.perf_counter() - start, 2),
        "search_seconds": record["seconds"],
        "groups": record["groups"],
        "overruled": record["overruled"],
        "line": entity_groups.describe(record, SHARECHAT),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def key_sets(raw: Path) -> dict[str, dict[str, Any]]:
    """The `[features]` tables of the compared sets: the key families as select's candidates build them."""
    out: dict[str, dict[str, Any]] = {"default set": {}}
    for label, source in (("default + keys (discovered)", "discovered"), ("default + keys (declared)", "profile")):
        keyed = entity_groups.resolve(raw, SHARECHAT, source, raw_fingerprint(raw))
        candidates = candidate_raw(keyed, source)
        out[label] = {"entities": source, **{f: candidates[f] for f in KEY_FAMILIES}}
    return out


def quality(wd: Workdir, data: Path, learning_rate: float) -> dict[str, Any]:
    """e2e test-day scores of each set against the truth."""
    gbm = {
        "num_boost_round": 2000,
        "early_stopping_rounds": 50,
        "log_every": 0,
        "e2e": {"learning_rate": learning_rate},
    }
    truth = pl.read_parquet(data / "truth" / "test_truth.parquet")
    results: dict[str, Any] = {}
    for k, (label, features) in enumerate(key_sets(wd.raw).items()):
        name = f"bench{k}"
        cfg = config_from_dict({"data": str(data), "feature_set": name, "gbm": gbm, "features": features}, "bench")
        ctx = Context(wd, cfg, print)
        built = build_features(ctx, plan="validate")
        tables = load_tables(wd.features, name, "validate")
        y = pl.DataFrame({"row_id": tables.splits["test"][tables.id_column]}).join(truth, on="row_id", how="left")
        y_test, p_truth = y["is_installed"].to_numpy(), y["p_install"].to_numpy()
        prior = float(tables.splits["fit"][tables.install_label].mean())
        ll_prior = metrics.log_loss(y_test, np.full(len(y_test), prior))
        ll_truth = metrics.log_loss(y_test, p_truth)
        t0 = time.perf_counter()
        run = train_gbm("e2e", tables, cfg.section("gbm"), registry.get("e2e").params(ctx, None), print)
        p = run.preds.filter(pl.col("split") == "test")["p"].to_numpy()
        ll = metrics.log_loss(y_test, p)
        results[label] = {
            "columns": len(tables.features()),
            "entities": json.loads((built.out / "manifest.json").read_text()).get("entities", {}),
            "logloss": round(ll, 5),
            "gap_closed": round((ll_prior - ll) / (ll_prior - ll_truth), 4),
            "calibration_ratio": round(float(p.mean() / y_test.mean()), 4),
            "features_seconds": built.seconds,
            "train_seconds": round(time.perf_counter() - t0, 1),
        }
        results["test_day"] = {"prior_logloss": round(ll_prior, 5), "truth_logloss": round(ll_truth, 5)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", type=Path, default=None, help="time discovery on this raw store only")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--user-columns", default="", help="plant the user in these columns (comma-separated)")
    parser.add_argument("--learning-rate", type=float, default=0.1)
    args = parser.parse_args()
    if args.raw is not None:
        print(json.dumps({"bench": "entities", "discovery": discovery(args.raw)}, indent=1))
        return
    if args.workdir is None:
        parser.error("give --raw or --workdir")
    planted = tuple(c for c in args.user_columns.split(",") if c)
    wd = Workdir(args.workdir)
    data = args.workdir / "data"
    if not (data / "truth" / "test_truth.parquet").is_file():
        write_synth(data, args.scale, args.seed, user_columns=planted)
    if not (wd.raw / "manifest.json").is_file():
        ingest(data, SHARECHAT, wd.raw, print)
    found = discovery(wd.raw)
    results = quality(wd, data, args.learning_rate)
    world = {"scale": args.scale, "seed": args.seed, "user_columns": list(planted)}
    print(json.dumps({"bench": "entities", "world": world, "discovery": found, "e2e": results}, indent=1))
    print("| set | test log loss | gap closed | calibration ratio | columns |")
    print("|---|---|---|---|---|")
    for label, r in results.items():
        if label != "test_day":
            print(
                f"| {label} | {r['logloss']:.5f} | {r['gap_closed']:.3f} | {r['calibration_ratio']:.3f} | {r['columns']} |"
            )


if __name__ == "__main__":
    main()
