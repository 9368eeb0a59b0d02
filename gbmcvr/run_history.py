"""The run history: every run directory under models/ (current runs, backtest runs and the earlier attempts
kept in models/history/) as rows with their scores, side-by-side comparison, and pruning on request."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbmcvr.data.split import is_backtest
from gbmcvr.errors import UserError
from gbmcvr.runs import HISTORY, METRICS, PARAMS, RUN
from gbmcvr.tracking import flatten

COLUMNS = (
    "run",
    "kind",
    "plan",
    "started",
    "seconds",
    "features",
    "params",
    "refit",
    "valid_logloss",
    "valid_auc",
    "backtest",
)
SORTABLE = ("run", "started", "valid_logloss", "valid_auc", "backtest", "seconds")


@dataclass(frozen=True)
class RunEntry:
    """One run directory: its address (`e2e`, `backtest/e2e`, `e2e@20261201T101500`) and folder."""

    address: str
    path: Path
    current: bool


def _read(path: Path) -> dict[str, Any]:
    try:
        obj = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return obj if isinstance(obj, dict) else {}


def entries(models: Path) -> list[RunEntry]:
    """Every run directory (one with a run.json) under `models`, current ones first."""
    models = Path(models)
    found: list[RunEntry] = []
    rehearsals = sorted(p for p in models.iterdir() if p.is_dir() and is_backtest(p.name)) if models.is_dir() else []
    for prefix, folder in (("", models), *((f"{p.name}/", p) for p in rehearsals)):
        if not folder.is_dir():
            continue
        for run in sorted(p for p in folder.iterdir() if (p / RUN).is_file()):
            found.append(RunEntry(prefix + run.name, run, True))
        for run_id in sorted((folder / HISTORY).iterdir()) if (folder / HISTORY).is_dir() else ():
            for attempt in sorted(p for p in run_id.iterdir() if (p / RUN).is_file()):
                found.append(RunEntry(f"{prefix}{run_id.name}@{attempt.name}", attempt, False))
    return found


def find(models: Path, address: str) -> RunEntry:
    """The run directory at `address`, or a UserError listing what exists."""
    runs = {e.address: e for e in entries(models)}
    if address not in runs:
        known = ", ".join(list(runs)[:12]) or "none"
        raise UserError(f"no run '{address}' under {models} (runs: {known}; `gbmcvr runs` lists them)")
    return runs[address]


def row(entry: RunEntry) -> dict[str, Any]:
    """A run's summary: kind, plan, start, duration, feature set, parameters source and its scores."""
    meta, metrics = _read(entry.path / RUN), _read(entry.path / METRICS)
    valid = metrics.get("valid", {}).get("p", {}) if isinstance(metrics.get("valid"), dict) else {}
    backtest = metrics.get("backtest", {}).get("test", {}) if isinstance(metrics.get("backtest"), dict) else {}
    return {
        "run": entry.address,
        "kind": meta.get("kind"),
        "plan": meta.get("plan", "validate"),
        "started": meta.get("started_at"),
        "seconds": meta.get("seconds"),
        "features": meta.get("feature_set"),
        "params": meta.get("params_source") or "defaults",
        "refit": meta.get("refit", False),
        "origin": meta.get("origin"),
        "valid_logloss": valid.get("logloss"),
        "valid_auc": valid.get("auc"),
        "valid_calibration": valid.get("calibration_ratio"),
        "backtest": backtest.get("logloss"),
        "current": entry.current,
        "path": str(entry.path),
    }


def table(models: Path, sort: str = "started", history: bool = True) -> list[dict[str, Any]]:
    """The rows of every run (without earlier attempts unless `history`), sorted by `sort` (missing values last)."""
    if sort not in SORTABLE:
        raise UserError(f"--sort must be one of {', '.join(SORTABLE)}, not '{sort}'")
    rows = [row(e) for e in entries(models) if history or e.current]
    descending = sort in ("started", "valid_auc")
    present = sorted((r for r in rows if r[sort] is not None), key=lambda r: r[sort], reverse=descending)
    return present + [r for r in rows if r[sort] is None]


def compare(models: Path, a: str, b: str) -> list[tuple[str, Any, Any]]:
    """(name, value in A, value in B) for every parameter, score and setting where the two runs differ or
    that both have; scores first."""
    ra, rb = find(models, a), find(models, b)
    out = []
    for key in ("valid_logloss", "valid_auc", "valid_calibration", "backtest", "seconds", "features", "params"):
        out.append((key, row(ra)[key], row(rb)[key]))
    pa, pb = flatten(_read(ra.path / PARAMS)), flatten(_read(rb.path / PARAMS))
    for key in sorted(set(pa) | set(pb)):
        out.append((f"params.{key}", pa.get(key), pb.get(key)))
    return out


def prune(models: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest earlier attempts of each run id (current runs are never touched)."""
    if keep < 0:
        raise UserError(f"--keep must be at least 0, got {keep}")
    removed = []
    models = Path(models)
    rehearsals = [p for p in models.iterdir() if p.is_dir() and is_backtest(p.name)] if models.is_dir() else []
    for folder in (models / HISTORY, *(p / HISTORY for p in rehearsals)):
        if not folder.is_dir():
            continue
        for run_id in sorted(folder.iterdir()):
            attempts = sorted((p for p in run_id.iterdir() if p.is_dir()), key=lambda p: p.name, reverse=True)
            for old in attempts[keep:]:
                shutil.rmtree(old)
                removed.append(old)
    return removed
