"""Run directories (models/<run-id>/): the one writer and the readers of run.json, params.json,
metrics.json and the prediction table every model kind writes, the input key and the "is current" check."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics
from gbmcvr.atomic import atomic_dir, write_json
from gbmcvr.data.split import is_backtest
from gbmcvr.errors import UserError
from gbmcvr.models.base import TrainedRun
from gbmcvr.schema import PRED_ID, PRED_P, PRED_SPLIT
from gbmcvr.stored import load_json, load_json_object, load_parquet

PREDS = "preds.parquet"
RUN = "run.json"
PARAMS = "params.json"
METRICS = "metrics.json"
UNREFIT = "p_without_refit"  # a backtest run's test-day predictions before its refit


def input_key(*parts: object) -> str:
    """Hash of everything a run depends on (for `gbmcvr run` to skip current steps)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _git_commit(folder: Path) -> str | None:
    """The commit checked out where gbmcvr's source lies, if it is a git checkout (read without running git)."""
    for parent in [folder, *folder.parents]:
        head = parent / ".git" / "HEAD"
        if head.is_file():
            ref = head.read_text().strip()
            if not ref.startswith("ref: "):
                return ref or None
            ref_file = parent / ".git" / ref[5:]
            if ref_file.is_file():
                return ref_file.read_text().strip() or None
            packed = parent / ".git" / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref[5:]):
                        return line.split()[0]
            return None
    return None


def provenance(started: float, config_source: str) -> dict[str, Any]:
    """When and how a run was made: start/end time, duration, gbmcvr version, git commit, command line, config."""
    finished = time.time()
    iso = "%Y-%m-%dT%H:%M:%SZ"
    config_path = Path(config_source)
    config_hash = hashlib.sha256(config_path.read_bytes()).hexdigest()[:16] if config_path.is_file() else None
    return {
        "started_at": time.strftime(iso, time.gmtime(started)),
        "finished_at": time.strftime(iso, time.gmtime(finished)),
        "seconds": round(finished - started, 1),
        "gbmcvr_version": _version(),
        "git_commit": _git_commit(Path(__file__).resolve().parent),
        "command": sys.argv[:],
        "config": config_source,
        "config_hash": config_hash,
    }


def _version() -> str:
    try:
        return metadata.version("gbmcvr")
    except metadata.PackageNotFoundError:
        return "unknown"


HISTORY = "history"  # models/history/<run-id>/<attempt>/: earlier attempts of a run id, never lost by surprise


def history_dir(run_dir: Path) -> Path:
    """Where earlier attempts of a run id are kept: models/history/<run-id>/ (backtest runs under theirs)."""
    run_dir = Path(run_dir)
    return run_dir.parent / HISTORY / run_dir.name


def attempt_name(run_dir: Path) -> str:
    """A unique, sortable name for the attempt a run directory holds: its start time (UTC) and a counter."""
    run_dir = Path(run_dir)
    try:
        started = json.loads((run_dir / RUN).read_text()).get("started_at", "")
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        started = ""
    stamp = started.replace("-", "").replace(":", "").rstrip("Z") or time.strftime(
        "%Y%m%dT%H%M%S", time.gmtime(run_dir.stat().st_mtime)
    )
    base, n, name = history_dir(run_dir), 1, stamp
    while (base / name).exists():
        n += 1
        name = f"{stamp}-{n}"
    return name


def write_run(run_dir: Path, run: TrainedRun, meta: dict[str, Any]) -> None:
    """Write a run directory atomically: the kind's model files, then params, metrics, predictions, run.json.
    An earlier attempt under the same id moves to models/history/<run-id>/<its start time>/."""
    keep = history_dir(run_dir) / attempt_name(run_dir) if Path(run_dir).is_dir() else None
    with atomic_dir(run_dir, keep_old=keep) as tmp:
        run.save(tmp)
        write_json(tmp / PARAMS, run.params)
        write_json(tmp / METRICS, run.metrics)
        run.preds.write_parquet(tmp / PREDS)
        record = {**meta, "input_key": run.input_key, **run.meta, "kind": run.kind, "stages": run.stages}
        write_json(tmp / RUN, {"refit": False, **record})


def params_file(models: Path, target: str, source: str, what: str) -> tuple[dict[str, Any], str]:
    """Parameters from `tuned` (models/tuned/<target>.json, as `gbmcvr tune` exports) or a JSON file
    ({"params": {...}} or flat), with where they came from for error messages."""
    path = Path(models) / "tuned" / f"{target}.json" if source == "tuned" else Path(source)
    if not path.is_file():
        hint = f"run `gbmcvr tune {target}` first" if source == "tuned" else "file not found"
        raise UserError(f"{path}: no {what} parameters ({hint})")
    raw = load_json(path, f"gbmcvr tune {target}" if source == "tuned" else "write it again")
    if not isinstance(raw, dict) or not isinstance(raw.get("params", raw), dict):
        raise UserError(f"{path}: expected a JSON object of {what} parameters")
    return dict(raw.get("params", raw)), f"{path} ({what} parameters)"


def is_current(run_dir: Path, key: str) -> bool:
    """Whether the run exists and was trained from inputs with this key."""
    path = Path(run_dir) / RUN
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("input_key") == key
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False  # damaged: not current, so `run` trains it again


def read_metrics(run_dir: Path) -> dict[str, Any]:
    path = Path(run_dir) / METRICS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {METRICS} (train the run again)")
    return load_json_object(path, _retrain(run_dir))


def prediction_table(ids: dict[str, np.ndarray], columns: dict[str, dict[str, np.ndarray]]) -> pl.DataFrame:
    """`row_id, split, p[, components]` for the valid and test splits (the post stage's only input)."""
    parts = []
    for split in ("valid", "test"):
        if split not in ids:
            continue
        cols = {
            PRED_ID: pl.Series(ids[split], dtype=pl.Int64),
            PRED_SPLIT: pl.Series([split] * len(ids[split])),
        }
        cols.update({k: pl.Series(v, dtype=pl.Float64) for k, v in columns[split].items()})
        parts.append(pl.DataFrame(cols))
    return pl.concat(parts, how="diagonal")


RESERVED = ("tuned", "backtest", HISTORY)


def keep_aside(run_dir: Path, origin: str) -> Path | None:
    """Rename a run another command made (other parameters, a refit, a tuned run) to `<id>-<time it finished>`
    before `origin` writes its own under the same id, so no run is replaced by surprise; returns the new path."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return None
    try:
        meta = json.loads((run_dir / RUN).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    if isinstance(meta, dict) and meta.get("origin") == origin:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(run_dir.stat().st_mtime))
    target = run_dir.with_name(f"{run_dir.name}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = run_dir.with_name(f"{run_dir.name}-{stamp}-{n}")
    os.replace(run_dir, target)
    return target


def check_new_run(run_dir: Path, overwrite: bool) -> None:
    if run_dir.name in RESERVED or run_dir.name.startswith("optuna") or is_backtest(run_dir.name):
        raise UserError(
            f"run id '{run_dir.name}' is reserved (tuning outputs, rehearsal plans, run history); choose another --run-id"
        )
    if run_dir.exists() and not overwrite:
        raise UserError(f"{run_dir}: run exists (choose another --run-id or pass --overwrite)")


TRAIN_PLANS = ("validate", "backtest", "backtest-N")


def check_train_plan(plan: str) -> str:
    """Models train on a plan with a validation day: `validate` (the submission) or `backtest` (the rehearsal)."""
    if plan != "validate" and not is_backtest(plan):
        raise UserError(f"cannot train on plan '{plan}' (choose {' or '.join(TRAIN_PLANS)}; --refit uses 'full')")
    return plan


def backtest_scores(
    preds: pl.DataFrame,
    labels: pl.DataFrame,
    id_column: str,
    install_label: str,
    base_rate: float,
    column: str = PRED_P,
) -> dict:
    """Metrics of a backtest run's test-day predictions against the labels the backtest plan kept aside."""
    test = preds.filter(pl.col(PRED_SPLIT) == "test").select(PRED_ID, column)
    joined = test.join(labels.select(pl.col(id_column).alias(PRED_ID), install_label), on=PRED_ID, how="left")
    if joined[install_label].null_count():
        raise UserError(f"{joined[install_label].null_count():,} backtest test rows have no kept-aside label")
    return metrics.report(joined[install_label].to_numpy(), joined[column].to_numpy(), base_rate)


def read_run_meta(run_dir: Path) -> dict:
    """A run's run.json (kind, stages, refit, input key, feature set, plan, seed)."""
    path = Path(run_dir) / RUN
    if not path.is_file():
        raise UserError(f"{run_dir}: not a run directory (no run.json; train one with `gbmcvr train`)")
    return load_json_object(path, _retrain(run_dir))


def _retrain(run_dir: Path) -> str:
    """The command that trains a run again, for messages about its damaged files."""
    run_dir = Path(run_dir)
    plan = f" --plan {run_dir.parent.name}" if is_backtest(run_dir.parent.name) else ""
    return f"gbmcvr train MODEL --run-id {run_dir.name}{plan} --overwrite"


def read_preds(run_dir: Path) -> pl.DataFrame:
    """A run's prediction table; missing, NaN or out-of-[0, 1] probabilities are refused, never clipped."""
    path = Path(run_dir) / PREDS
    if not path.is_file():
        raise UserError(f"{run_dir}: no {PREDS} (train the run again)")
    preds = load_parquet(path, _retrain(run_dir))
    missing = [c for c in (PRED_ID, PRED_SPLIT, PRED_P) if c not in preds.columns]
    if missing:
        raise UserError(f"{path}: damaged (no column {', '.join(missing)}); rebuild it with `{_retrain(run_dir)}`")
    for col in [c for c in preds.columns if c == PRED_P or c.startswith(f"{PRED_P}_")]:
        values = preds[col].cast(pl.Float64)
        for split in ("valid", "test"):
            part = values.filter(preds[PRED_SPLIT] == split)
            if col != PRED_P and part.null_count() == len(part):
                continue  # a component some splits do not carry (e.g. p_without_refit on valid rows)
            n_bad = int(part.is_null().sum() + part.is_nan().sum())
            if n_bad:
                raise UserError(f"{run_dir}: {n_bad:,} {split} predictions in column '{col}' are missing or NaN")
            outside = part.filter((part < 0) | (part > 1))
            if len(outside):
                raise UserError(
                    f"{run_dir}: {len(outside):,} {split} predictions in column '{col}' lie outside [0, 1] "
                    f"(e.g. {outside[0]}); a probability is needed"
                )
    return preds
