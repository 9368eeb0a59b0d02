"""Optional MLflow tracking (`[track] mlflow = "sqlite:///mlflow.db"` or a server URI): each training logs its
parameters, scores, learning curves and run directory; each tuning trial a nested run. Off by default."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys, typed_fields


@dataclass(frozen=True)
class TrackConfig:
    """The `[track]` table: the MLflow tracking URI ("" = off) and the experiment name."""

    mlflow: str = ""
    experiment: str = "gbmcvr"


def track_config(raw: dict[str, Any], where: str) -> TrackConfig:
    check_keys(raw, ("mlflow", "experiment"), where)
    cfg = TrackConfig(**typed_fields(TrackConfig, raw, where))
    if cfg.mlflow and ":" not in cfg.mlflow:
        raise UserError(
            f"{where}: mlflow must be a tracking URI (sqlite:///mlflow.db, http://host:5000), not {cfg.mlflow!r}"
        )
    return cfg


def resolve_uri(uri: str, root: Path) -> str:
    """A relative `sqlite:///name.db` is the work directory's file (not the current folder's)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str((Path(root) / uri[len(prefix) :]).resolve())
    return uri


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys (`e2e.params.num_leaves`), for comparing and logging."""
    if not isinstance(obj, dict):
        return {prefix.rstrip("."): obj}
    out: dict[str, Any] = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def _client(cfg: TrackConfig, root: Path) -> tuple[Any, str]:
    """The mlflow module pointed at the tracking URI, and the experiment id (artifacts beside a SQLite file)."""
    from gbmcvr.compat import mlflow

    ml = mlflow()
    uri = resolve_uri(cfg.mlflow, root)
    ml.set_tracking_uri(uri)
    found = ml.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return ml, found.experiment_id
    artifacts = None
    if uri.startswith("sqlite:///"):
        artifacts = (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").as_uri()
    return ml, ml.create_experiment(cfg.experiment, artifact_location=artifacts)


def log_run(cfg: TrackConfig, root: Path, run_name: str, run_dir: Path) -> str | None:
    """Log one written run directory as an MLflow run; returns its MLflow run id (None when tracking is off)."""
    if not cfg.mlflow:
        return None
    ml, experiment = _client(cfg, root)
    meta = json.loads((run_dir / "run.json").read_text())
    params = flatten(json.loads((run_dir / "params.json").read_text()))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    curves = metrics.pop("learning_curve", {}) or {}
    numbers = {k: v for k, v in flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    with ml.start_run(experiment_id=experiment, run_name=run_name) as active:
        ml.log_params({k[:250]: str(v)[:6000] for k, v in params.items()})
        ml.log_metrics({k.replace("/", "_"): float(v) for k, v in numbers.items()})
        for stage, values in curves.items():
            for step, value in enumerate(values, start=1):
                ml.log_metric(f"curve.{stage}", float(value), step=step)
        tags = {k: str(meta[k]) for k in ("kind", "plan", "feature_set", "seed", "git_commit", "origin") if k in meta}
        ml.set_tags({**tags, "run_dir": str(run_dir)})
        ml.log_artifacts(str(run_dir))
        return active.info.run_id


def log_trial(cfg: TrackConfig, root: Path, study: str, number: int, params: dict[str, Any], value: float) -> None:
    """Log one finished tuning trial as a nested run under its study's parent run."""
    if not cfg.mlflow:
        return
    ml, experiment = _client(cfg, root)
    parents = ml.search_runs([experiment], filter_string=f"tags.study = '{study}' and tags.role = 'study'")
    if len(parents):
        parent = parents.iloc[0]["run_id"]
    else:
        with ml.start_run(experiment_id=experiment, run_name=f"tune {study}") as created:
            ml.set_tags({"study": study, "role": "study"})
            parent = created.info.run_id
    with ml.start_run(run_id=parent), ml.start_run(experiment_id=experiment, run_name=f"trial {number}", nested=True):
        ml.log_params({k: str(v) for k, v in params.items()})
        ml.log_metric("valid_logloss", float(value))
        ml.set_tags({"study": study, "trial": str(number)})
