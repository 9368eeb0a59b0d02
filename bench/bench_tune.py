"""Benchmark: Optuna tuning of e2e — default vs tuned log loss, wall time with/without pruning and 2 workers.

Usage: python bench/bench_tune.py --root DIR [--scale 0.2] [--trials 30]; prints JSON lines.
With --compare-workers: trials per hour of 1 and 2 workers on the same budget of identical trials (every
dimension fixed to the default parameter, no pruner), each worker taking cores / workers threads.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import optuna
import polars as pl

from gbmcvr import metrics
from gbmcvr.config import config_from_dict, load_config
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from gbmcvr.gbm.params import DEFAULT_PARAMS
from gbmcvr.post.scoring import read_truth
from gbmcvr.stages import build_features, train, tune
from gbmcvr.workdir import Workdir


def test_logloss(wd: Workdir, run_id: str, truth: pl.DataFrame) -> float:
    preds = pl.read_parquet(wd.run(run_id) / "preds.parquet").filter(pl.col("split") == "test")
    joined = truth.join(preds, on="row_id")
    return metrics.log_loss(joined["is_installed"].to_numpy(), joined["p"].to_numpy())


def fixed_space_toml(trials_rounds: int) -> str:
    """A config whose e2e space has one choice per dimension: every trial is the same work."""
    lines = [
        "[gbm]",
        f"num_boost_round = {trials_rounds}",
        f"early_stopping_rounds = {trials_rounds}",
        "log_every = 0",
        "[tune]",
        'pruner = "none"',
        "[tune.e2e]",
    ]
    for name in ("num_leaves", "learning_rate", "min_data_in_leaf", "feature_fraction", "max_bin"):
        lines.append(f'{name} = {{type = "categorical", choices = [{DEFAULT_PARAMS[name]}]}}')
    return "\n".join(lines) + "\n"


def compare_workers(wd: Workdir, trials: int, rounds: int) -> None:
    """Trials per hour of 1 and 2 workers, each on a fresh study of `trials` identical trials."""
    wd.root.mkdir(parents=True, exist_ok=True)
    (wd.root / "gbmcvr.toml").write_text(fixed_space_toml(rounds))
    cfg = load_config(None, wd.root / "gbmcvr.toml")
    for workers in (1, 2):
        shutil.rmtree(wd.models, ignore_errors=True)
        start = time.perf_counter()
        study = tune(Context(wd, cfg), "e2e", trials=trials, workers=workers, study=f"w{workers}").study
        seconds = time.perf_counter() - start
        # workers may finish a trial or so beyond the budget (each checks it before starting one): count them
        done = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))
        row = {"bench": "tune-workers", "workers": workers, "trials": trials, "finished": done, "rounds": rounds}
        row |= {"seconds": round(seconds, 1), "trials_per_hour": round(done * 3600 / seconds, 1)}
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--scale", type=float, default=0.2)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--compare-workers", action="store_true")
    parser.add_argument("--rounds", type=int, default=200, help="boosting rounds per trial (--compare-workers)")
    args = parser.parse_args()
    data, wd = args.root / "data", Workdir(args.root / "work")
    if not (data / "truth").exists():
        write_synth(data, args.scale, 0)
    if not (wd.raw / "manifest.json").exists():
        ingest(data, SHARECHAT, wd.raw)
    raw = {"data": str(data), "gbm": {"log_every": 0}}
    ctx = Context(wd, config_from_dict(raw, "bench"))
    build_features(ctx, plan="validate")
    if args.compare_workers:
        compare_workers(wd, args.trials, args.rounds)
        return
    truth = read_truth(data).select("row_id", "is_installed")
    for mode, pruner, workers in (("pruned", "median", 1), ("unpruned", "none", 1), ("pruned-2-workers", "median", 2)):
        shutil.rmtree(wd.models, ignore_errors=True)
        start = time.perf_counter()
        tuning_ctx = replace(ctx, cfg=config_from_dict({**raw, "tune": {"pruner": pruner}}, "bench"))
        study = tune(tuning_ctx, "e2e", trials=args.trials, workers=workers).study
        seconds = time.perf_counter() - start
        if workers > 1:
            study = optuna.load_study(study_name=study.study_name, storage=study._storage)
        states = [t.state.name for t in study.trials]
        row = {
            "bench": "tune",
            "mode": mode,
            "trials": args.trials,
            "seconds": round(seconds, 1),
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "best_valid_logloss": round(study.best_value, 5),
        }
        if mode == "pruned":
            train(ctx, "e2e", run_id="default", overwrite=True)
            train(ctx, "e2e", run_id="tuned-best", params="tuned", overwrite=True)
            for run_id in ("default", "tuned-best"):
                m = json.loads((wd.run(run_id) / "metrics.json").read_text())
                row[f"{run_id}_valid_logloss"] = round(m["valid"]["p"]["logloss"], 5)
                row[f"{run_id}_test_logloss"] = round(test_logloss(wd, run_id, truth), 5)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
