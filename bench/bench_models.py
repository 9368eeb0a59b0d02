"""Benchmark: model quality on generated data (issue tables), printed as JSON lines and a markdown table.

For `--scale` (default 0.2) and one generated world (`--seed`, `--user-columns`): generates data (or reuses
--root's), ingests, builds features, then trains, each in its own subprocess (its peak RSS is that child's
ru_maxrss, from os.wait4): the raw-column baseline, the `--models` kinds (e2e, ts; add cb, xgb, tfm), the
`--tfm-variants` (tfm-ssl: ssl_weight 0.2; tfm-pretrain: 1 pre-training epoch on every split's features,
test day included), the `--refit-models` with --refit and the MTDM. Every run is scored on the valid day and
on the test day against the truth: log loss, gap closed (LL_prior - LL_model) / (LL_prior - LL_truth) with the
fit-window install rate as the prior, calibration ratio mean(p) / mean(y). With `--ensemble`, the backtest
runs of those kinds are trained on `--rehearsal-days` rehearsal plans and `submit` with calibration and weights
"auto" (what `gbmcvr run` does) chooses the post-processing; its submission is scored on the test day.
Then the Table-5-style grid of calibrations and fixed ensembles over the refit runs (when there are two).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics, stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.split import backtest_plan
from gbmcvr.data.synth import write_synth
from gbmcvr.fe.spec import only_families
from gbmcvr.post.options import submit_options
from gbmcvr.post.scoring import read_truth
from gbmcvr.stages import build_features
from gbmcvr.workdir import Workdir

TFM_VARIANTS = {"tfm-pretrain": {"pretrain_epochs": 1}, "tfm-ssl": {"ssl_weight": 0.2}}  # cheaper first
RAWCOLS = {"features": only_families({"clean": {}}), "feature_set": "rawcols", "gbm": {"max_cat_cardinality": 0}}
DEEP = ("tfm", "mtdm")


def emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def merged(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` merged into `base`, table by table (one level deep, as the config sections are)."""
    out = dict(base)
    for key, value in over.items():
        out[key] = {**out[key], **value} if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def score(name: str, preds: pl.DataFrame, y_valid: pl.DataFrame, truth: pl.DataFrame, rate: float) -> dict:
    row = {"model": name}
    for split, labels in (("valid", y_valid), ("test", truth)):
        joined = labels.join(preds.filter(pl.col("split") == split), on="row_id", how="inner")
        r = metrics.report(joined["is_installed"].to_numpy(), joined["p"].to_numpy(), rate)
        row.update({f"{split}_{k}": round(r[k], 5) for k in ("logloss", "nce", "auc", "calibration_ratio")})
    return row


def gap_closed(ll_model: float, ll_prior: float, ll_truth: float) -> float:
    """The share of the prior-to-truth log-loss gap a model closes (1 = as good as the true probabilities)."""
    return round((ll_prior - ll_model) / (ll_prior - ll_truth), 4)


def epoch_seconds(run_metrics: dict[str, Any]) -> dict[str, float]:
    """Mean seconds per training (and pre-training) epoch from a deep run's recorded history (else its
    train seconds over its epochs, validation included)."""
    out = {}
    for key, name in (("history", "s_per_epoch"), ("pretrain_history", "s_per_pretrain_epoch")):
        seconds = [h["seconds"] for h in run_metrics.get(key) or [] if "seconds" in h]
        if seconds:
            out[name] = round(float(np.mean(seconds)), 1)
    if "s_per_epoch" not in out and run_metrics.get("history") and "train_seconds" in run_metrics:
        out["s_per_epoch"] = round(run_metrics["train_seconds"] / len(run_metrics["history"]), 1)  # mtdm: no per-epoch
    if "best_epoch" in run_metrics:
        out["epochs_run"] = len(run_metrics.get("history") or [])
        out["best_epoch"] = run_metrics["best_epoch"]
    return out


def train_in_child(root: Path, raw: dict[str, Any], job: dict[str, Any]) -> dict[str, float]:
    """Train one run in a subprocess: its wall seconds (startup and table loading included) and peak RSS."""
    cmd = [sys.executable, __file__, "--root", str(root), "--job", json.dumps({"raw": raw, **job})]
    start = time.perf_counter()
    child = subprocess.Popen(cmd, stdout=sys.stderr)
    _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training {job['run_id']} ({job['plan']}) failed with exit code {status}")
    return {"wall_seconds": round(seconds, 1), "peak_rss_mb": round(usage.ru_maxrss / 1024)}


def run_job(root: Path, spec: str) -> None:
    """The child's side of `train_in_child`: one `stages.train` call."""
    job = json.loads(spec)
    cfg = config_from_dict(job["raw"], f"bench ({job['run_id']})")
    ctx = Context(Workdir(root / "work"), cfg, stderr_progress, device="cpu")
    stages.train(ctx, job["kind"], run_id=job["run_id"], plan=job["plan"], refit=job["refit"], overwrite=True)


def markdown(rows: list[dict[str, Any]]) -> str:
    cols = [
        ("model", "run"),
        ("test_logloss", "test LL"),
        ("gap_closed", "gap closed"),
        ("test_calibration_ratio", "calib. ratio"),
        ("test_auc", "test AUC"),
        ("valid_logloss", "valid LL"),
        ("wall_seconds", "train s (wall)"),
        ("s_per_epoch", "s/epoch"),
        ("s_per_pretrain_epoch", "s/pretrain epoch"),
        ("peak_rss_mb", "peak RSS MB"),
        ("weights", "ensemble weights"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k, "")) for k, _ in cols) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--user-columns", default="", help="synth --user-columns: a world with the user elsewhere")
    parser.add_argument("--skip-mtdm", action="store_true")
    parser.add_argument("--models", nargs="+", default=["e2e", "ts"], help="validate-plan kinds (e2e ts cb xgb tfm)")
    parser.add_argument("--tfm-variants", action="store_true", help="also tfm-ssl and tfm-pretrain")
    parser.add_argument("--refit-models", nargs="*", default=["e2e", "ts"], help="kinds also trained with --refit")
    parser.add_argument("--epochs", type=int, default=0, help="epochs of tfm and mtdm (0: their defaults)")
    parser.add_argument("--ensemble", nargs="*", default=[], help="kinds of the backtest-chosen ensemble (e2e ts tfm)")
    parser.add_argument("--rehearsal-days", type=int, default=3)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        run_job(args.root, args.job)
        return
    data, wd = args.root / "data", Workdir(args.root / "work")
    user_columns = tuple(c for c in args.user_columns.split(",") if c)
    if not (data / "truth").exists():
        write_synth(data, args.scale, args.seed, user_columns=user_columns)
    if not (wd.raw / "manifest.json").exists():
        ingest(data, SHARECHAT, wd.raw)
    epochs = {"epochs": args.epochs} if args.epochs else {}
    raw = {"data": str(data), "seed": args.seed, "gbm": {"log_every": 0}, "mtdm": epochs, "tfm": epochs}
    cfg = config_from_dict(raw, "bench")
    ctx = Context(wd, cfg, device="cpu")
    rehearsals = [backtest_plan(d) for d in range(1, args.rehearsal_days + 1)] if args.ensemble else []
    for plan in ["validate"] + (["full"] if args.refit_models else []) + rehearsals:
        build_features(ctx, plan=plan)
    raw_cfg = config_from_dict(merged(raw, RAWCOLS), "bench (raw columns)")
    build_features(replace(ctx, cfg=raw_cfg), plan="validate")
    truth = read_truth(data).select("row_id", "is_installed", "p_install")
    train = pl.read_parquet(wd.raw / "train.parquet", columns=["f_0", "f_1", "is_installed"])
    rate = float(train.filter(pl.col("f_1") <= 65)["is_installed"].mean())
    y_valid = train.filter(pl.col("f_1") == 66).select(row_id="f_0", is_installed="is_installed")
    y_test = truth["is_installed"].to_numpy()
    ll_prior = metrics.log_loss(y_test, np.full(len(y_test), rate))
    ll_truth = metrics.log_loss(y_test, truth["p_install"].to_numpy())
    world = {"scale": args.scale, "seed": args.seed, "user_columns": ",".join(user_columns) or "default"}
    emit({"bench": "models", **world, "nce_base_rate": rate, "base_rate_source": "fit-window install rate"})
    emit({"model": "truth", "test_logloss": round(ll_truth, 5), "gap_closed": 1.0})
    table: list[dict[str, Any]] = [
        {"model": "prior", "test_logloss": round(ll_prior, 5), "gap_closed": 0.0},
        {"model": "truth", "test_logloss": round(ll_truth, 5), "gap_closed": 1.0},
    ]

    def trained(run_id: str, job_raw: dict[str, Any], kind: str, plan: str, refit: bool) -> None:
        """Train one run in its child; a validate run is scored (and printed) at once."""
        cost = train_in_child(args.root, job_raw, {"run_id": run_id, "kind": kind, "plan": plan, "refit": refit})
        emit({"trained": run_id, "plan": plan, **cost})
        if plan != "validate":
            return
        preds = pl.read_parquet(wd.run(run_id) / "preds.parquet")
        run_metrics = json.loads((wd.run(run_id) / "metrics.json").read_text())
        row = score(run_id, preds, y_valid, truth, rate)
        row.update(gap_closed=gap_closed(row["test_logloss"], ll_prior, ll_truth), **cost, **epoch_seconds(run_metrics))
        emit(row)
        table.append(row)

    # the plain runs and the ensemble's backtest runs first, the slower tfm variants last
    jobs = [("rawcols", merged(raw, RAWCOLS), "e2e", "validate", False)]
    jobs += [(kind, raw, kind, "validate", False) for kind in args.models]
    jobs += [(f"{kind}-refit", raw, kind, "validate", True) for kind in args.refit_models]
    if not args.skip_mtdm:
        jobs.append(("mtdm", raw, "mtdm", "validate", False))
    jobs += [(kind, raw, kind, plan, False) for plan in rehearsals for kind in args.ensemble]
    for job in jobs:
        trained(*job)
    if args.ensemble:
        table.append(backtest_ensemble(ctx, args, data, truth, ll_prior, ll_truth))
    for run_id, over in TFM_VARIANTS.items() if args.tfm_variants else ():
        trained(run_id, merged(raw, {"tfm": over}), "tfm", "validate", False)
    refits = [f"{kind}-refit" for kind in args.refit_models][:2]
    for runs_set in (refits, refits + ["mtdm"]) if len(refits) == 2 and not args.skip_mtdm else ():
        post_grid(ctx, runs_set, data)
    print(f"\n## {world}, prior = fit-window install rate {rate:.5f}\n\n{markdown(table)}", flush=True)


def backtest_ensemble(
    ctx: Context, args: argparse.Namespace, data: Path, truth: pl.DataFrame, ll_prior: float, ll_truth: float
) -> dict[str, Any]:
    """`submit` with calibration and weights "auto" over the ensemble's runs, scored on the test day."""
    opts = submit_options(
        {"calibration": "auto", "weights": "auto", "name": "bench-auto", "rehearsal_days": args.rehearsal_days},
        "bench",
    )
    result = stages.submit(replace(ctx, progress=stderr_progress), args.ensemble, opts=opts, overwrite=True).result
    frame = result.frame.select(row_id="RowId", p="is_installed").join(truth, on="row_id", how="inner")
    y, p = frame["is_installed"].to_numpy(), frame["p"].to_numpy()
    ll = metrics.log_loss(y, p)
    chosen = result.backtest or {}
    row = {
        "model": f"auto({'+'.join(args.ensemble)}): {chosen.get('calibration')}, {chosen.get('weights')}",
        "test_logloss": round(ll, 5),
        "gap_closed": gap_closed(ll, ll_prior, ll_truth),
        "test_calibration_ratio": round(metrics.calibration_ratio(y, p), 5),
        "test_auc": round(metrics.auc(y, p), 5),
        "weights": dict(zip(args.ensemble, [round(w, 4) for w in result.weights], strict=True)),
        "rehearsal_days": chosen.get("days"),
    }
    emit(row)
    return row


def post_grid(ctx: Context, runs_set: list[str], data: Path) -> None:
    """The Table-5-style grid: each calibration with fixed equal weights and with `simplex`, on the test day."""
    for calibration in ("none", "scaling", "scaling-fit", "isotonic", "platt"):
        for weights in (",".join([f"{1 / len(runs_set):.4f}"] * len(runs_set)), "simplex"):
            opts = submit_options({"calibration": calibration, "weights": weights, "name": "bench"}, "bench")
            result = stages.submit(ctx, runs_set, opts=opts, overwrite=True, truth=data).result
            for row in result.table:
                emit(
                    {
                        "runs": "+".join(runs_set),
                        "calibration": calibration,
                        "weights": weights,
                        **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()},
                    }
                )


if __name__ == "__main__":
    main()
