"""Benchmark: test-day quality on several generated worlds (JSON per world, the worst world, then a table).

Usage: python bench/bench_quality.py --root DIR [--worlds base users-elsewhere shift-down ...] [--scale 0.05]
       [--no-run] [--extra]
For each world (a `gbmcvr synth` world, where the user identity lives and a seed; see WORLDS below) it generates
the data with its truth, ingests it, then
- runs `gbmcvr run` with `select = true` and `calibration = weights = "auto"` (the rehearsal days choose), and
  submits the same runs once more with the fixed `scaling` + `simplex` post-processing (rows "run auto",
  "run fixed");
- trains e2e and ts on the raw columns, the default set and the selected set (validate plan, early stopping on
  the validation day) and scores each alone (`--no-run`: these rows only, without the selected set; `--extra`:
  also the experimental sets of EXTRA_SETS).
Every model is scored on the test day against the truth: log loss, gap closed = (LL_prior - LL_model) /
(LL_prior - LL_truth) with the fit window's install rate as the prior, and calibration ratio mean(p) / mean(y).
The summary names each row's worst world: the lowest gap closed and the calibration ratio farthest from 1.
"""

from __future__ import annotations

import argparse
import json
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
from gbmcvr.data.synth import WORLDS, World, write_synth
from gbmcvr.fe.spec import only_families
from gbmcvr.gbm.train import train_gbm
from gbmcvr.models import registry
from gbmcvr.pipeline import SELECTED, run_pipeline
from gbmcvr.post import submission as sub
from gbmcvr.post.options import submit_options
from gbmcvr.stages import build_features, submit
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir

# name -> (process knobs, columns that carry the user identity (empty: the profile's f_43-f_54), seed)
BENCH_WORLDS: dict[str, tuple[World, tuple[str, ...], int]] = {
    "base": (WORLDS["base"], (), 0),
    "users-elsewhere": (WORLDS["base"], ("f_5", "f_8", "f_42", "f_55"), 1),
    "new-ads-better": (WORLDS["new-ads-better"], ("f_11", "f_16", "f_60", "f_61"), 2),
    "shift-down": (WORLDS["shift-down"], (), 3),
    "weak-users": (WORLDS["weak-users"], ("f_13", "f_71", "f_72"), 4),
}
SETS = {"raw columns": "raw", "default set": "default", "selected set": SELECTED}
# with --extra: the default set plus the label-free key families, with target encodings of earlier days only, or
# with two Beta statistics per encoding
EXTRA_SETS = {"label-free set": "labelfree", "past-days target": "pastdays", "lean target": "leantarget"}
LABEL_FREE_KEYS = [["f_2"], ["f_4"], ["f_6"]]


def set_features(set_name: str) -> dict[str, Any] | None:
    """The `[features]` table of a bench set (None: the set's own, the default or the selected one): raw
    columns, the default set plus novelty and same-day counts over f_2, f_4, f_6 and every entity group, or the
    default set with its target encodings from earlier days only (no same-day labels), or with two Beta
    statistics (mean, var) per encoding."""
    if set_name == "raw":
        return only_families({"clean": {}})
    if set_name == "pastdays":
        return {"target": {"scheme": "past_days"}}
    if set_name == "leantarget":  # two Beta statistics instead of six: a third of the encoding columns to write
        return {"target": {"stats": ["mean", "var"]}}
    if set_name == "labelfree":
        return {
            "novelty": {"keys": LABEL_FREE_KEYS, "over_entities": True},
            "daycount": {"keys": LABEL_FREE_KEYS, "distinct": ["f_2", "f_4"], "over_entities": True},
        }
    return None


def scores(y: np.ndarray, p: np.ndarray, ll_prior: float, ll_truth: float) -> dict[str, float]:
    """Test-day log loss, share of the prior-to-truth gap closed, and calibration ratio."""
    ll = metrics.log_loss(y, p)
    return {
        "logloss": round(ll, 5),
        "gap_closed": round((ll_prior - ll) / (ll_prior - ll_truth), 4),
        "calibration_ratio": round(float(p.mean() / y.mean()), 4),
    }


def run_rows(
    wd: Workdir,
    data: Path,
    name: str,
    seed: int,
    gbm: dict[str, Any],
    truth: pl.DataFrame,
    lls: tuple[float, float],
    out: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Rows "run auto" and "run fixed": `gbmcvr run` with select, and its runs submitted with fixed post-processing."""
    start = time.perf_counter()
    ll_prior, ll_truth = lls
    rows: dict[str, dict[str, Any]] = {}
    submit_raw = {"calibration": "auto", "weights": "auto", "name": "auto"}
    cfg = config_from_dict({"data": str(data), "seed": seed, "select": True, "gbm": gbm, "submit": submit_raw}, name)
    ctx = Context(wd, cfg, print)
    result = run_pipeline(ctx, data=data)
    backtest = result.submission.result.backtest or {}
    run_cfg = config_from_dict({"data": str(data), "seed": seed, "gbm": gbm, "feature_set": SELECTED}, name)
    fixed = submit_options({"calibration": "scaling", "weights": "simplex", "name": "fixed"}, "bench")
    fixed_tsv = submit(Context(wd, run_cfg, print), list(cfg.models), opts=fixed, overwrite=True).tsv
    for label, tsv in (("run auto", result.submission.tsv), ("run fixed", fixed_tsv)):
        frame = sub.read(tsv).join(truth, left_on="RowId", right_on="row_id", how="inner")
        rows[label] = scores(
            frame["is_installed_right"].to_numpy(), frame["is_installed"].to_numpy(), ll_prior, ll_truth
        )
    rows["run auto"]["chose"] = f"{backtest.get('calibration')} + {backtest.get('weights')}"
    out["run_seconds"] = round(time.perf_counter() - start, 1)
    report = json.loads((wd.features / f"{SELECTED}-selection" / "report.json").read_text())
    out["selected"] = report.get("choice", report.get("chosen"))
    return rows


def world_quality(
    root: Path, name: str, scale: float, gbm: dict[str, Any], with_run: bool = True, extra: bool = False
) -> dict[str, Any]:
    """Every row of the table for one world (without `gbmcvr run` and the selected set unless `with_run`; with
    the experimental sets of EXTRA_SETS when `extra`)."""
    knobs, user_columns, seed = BENCH_WORLDS[name]
    data, wd = root / name / "data", Workdir(root / name / "work")
    if not (data / "truth" / "test_truth.parquet").is_file():
        write_synth(data, scale, seed, force=True, user_columns=user_columns, world=knobs)
    if not (wd.raw / "manifest.json").is_file():
        ingest(data, SHARECHAT, wd.raw, print)
    truth = pl.read_parquet(data / "truth" / "test_truth.parquet")
    train = pl.read_parquet(wd.raw / "train.parquet", columns=["f_1", "is_installed"])
    prior = float(train.filter(pl.col("f_1") < SHARECHAT.valid_day)["is_installed"].mean())
    y_all, p_truth = truth["is_installed"].to_numpy(), truth["p_install"].to_numpy()
    ll_prior = metrics.log_loss(y_all, np.full(len(y_all), prior))
    ll_truth = metrics.log_loss(y_all, p_truth)
    out: dict[str, Any] = {"world": name, "seed": seed, "user_columns": list(user_columns), "knobs": vars(knobs)}
    out["test_day"] = {"rows": len(y_all), "prior_logloss": round(ll_prior, 5), "truth_logloss": round(ll_truth, 5)}

    rows: dict[str, dict[str, Any]] = {}
    if with_run:
        rows |= run_rows(wd, data, name, seed, gbm, truth, (ll_prior, ll_truth), out)
    for label, set_name in (SETS | (EXTRA_SETS if extra else {})).items():
        if set_name == SELECTED and not with_run:
            continue
        raw = {"data": str(data), "seed": seed, "feature_set": set_name, "gbm": gbm}
        if (features := set_features(set_name)) is not None:
            raw["features"] = features
        set_cfg = config_from_dict(raw, name)
        set_ctx = Context(wd, set_cfg, print)
        build_features(set_ctx, plan="validate")
        tables = load_tables(wd.features, set_name, "validate")
        ids = pl.DataFrame({"row_id": tables.splits["test"][tables.id_column]})
        y = ids.join(truth, on="row_id", how="left")["is_installed"].to_numpy()
        for kind in ("e2e", "ts"):
            run = train_gbm(kind, tables, set_cfg.section("gbm"), registry.get(kind).params(set_ctx, None), print)
            p = run.preds.filter(pl.col("split") == "test")["p"].to_numpy()
            rows[f"{label} / {kind}"] = {**scores(y, p, ll_prior, ll_truth), "columns": len(tables.features())}
    out["rows"] = rows
    entities = wd.raw / "entities.json"
    out["entities"] = json.loads(entities.read_text()).get("groups") if entities.is_file() else None
    return out


def worst(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row label: the lowest gap closed and the calibration ratio farthest from 1, with their worlds."""
    out = {}
    for label in results[0]["rows"]:
        gaps = [(r["rows"][label]["gap_closed"], r["world"]) for r in results]
        calib = [
            (abs(r["rows"][label]["calibration_ratio"] - 1), r["rows"][label]["calibration_ratio"], r["world"])
            for r in results
        ]
        g, c = min(gaps), max(calib)
        out[label] = {"gap_closed": g[0], "gap_world": g[1], "calibration_ratio": c[1], "calibration_world": c[2]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--worlds", nargs="+", default=list(BENCH_WORLDS), choices=list(BENCH_WORLDS))
    parser.add_argument("--scale", type=float, default=0.05)
    parser.add_argument("--no-run", action="store_true", help="only the sets' e2e and ts (no `gbmcvr run`)")
    parser.add_argument("--extra", action="store_true", help=f"also the sets {', '.join(EXTRA_SETS)}")
    parser.add_argument("--learning-rate", type=float, default=0.1, help="same for every model (bench budget)")
    args = parser.parse_args()
    start = time.perf_counter()
    gbm: dict[str, Any] = {"num_boost_round": 2000, "early_stopping_rounds": 50, "log_every": 0}
    gbm |= {s: {"learning_rate": args.learning_rate} for s in ("e2e", "ts_like", "ts_install")}
    results = []
    for name in args.worlds:
        results.append(world_quality(args.root, name, args.scale, gbm, not args.no_run, args.extra))
        print(json.dumps({"bench": "quality", "scale": args.scale, **results[-1]}), flush=True)
    summary = {"bench": "quality-worst", "scale": args.scale, "worlds": args.worlds, "worst": worst(results)}
    summary["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(summary), flush=True)
    print("| row | " + " | ".join(args.worlds) + " | worst |")
    print("|---|" + "---|" * (len(args.worlds) + 1))
    for label, w in summary["worst"].items():
        cells = [f"{r['rows'][label]['gap_closed']:.3f} / {r['rows'][label]['calibration_ratio']:.3f}" for r in results]
        print(f"| {label} | " + " | ".join(cells) + f" | {w['gap_closed']:.3f} / {w['calibration_ratio']:.3f} |")
    print("(each cell: test-day gap closed / calibration ratio)")
    for r in results:
        chose = (
            f"selected {r['selected']}; run auto chose {r['rows']['run auto']['chose']}; " if "selected" in r else ""
        )
        print(f"{r['world']}: {chose}entities {r['entities']}")


if __name__ == "__main__":
    main()
