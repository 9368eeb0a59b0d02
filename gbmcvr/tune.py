"""Optuna tuning of every model against its validation log loss: resumable, prunable, parallel.

Storage: an RDB URL (default SQLite `models/optuna.db`; PostgreSQL for many machines; heartbeats mark the
trials of dead workers as failed) or `journal:PATH` (JournalStorage file, the default with --workers > 1;
it has no heartbeats, so a new tune run marks trials left RUNNING by a dead run as failed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import optuna
from optuna.trial import TrialState

from gbmcvr.atomic import write_json
from gbmcvr.errors import UserError
from gbmcvr.space import Dimension

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # gbmcvr prints its own line per trial
STORAGE_ENV = "GBMCVR_TUNE_STORAGE"
WORKERS_ENV = "GBMCVR_TUNE_WORKERS"


@dataclass(frozen=True)
class TuneSetup:
    model: str
    study_name: str
    storage_url: str
    trials: int
    timeout: float | None
    seed: int
    pruner: str
    space: list[Dimension]
    tuned_dir: Path


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """RDBStorage with heartbeats, or JournalStorage for `journal:PATH`; unreachable storage is a UserError."""
    try:
        if url.startswith("journal:"):
            path = Path(url.removeprefix("journal:"))
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = optuna.storages.journal.JournalFileBackend(str(path))
            return optuna.storages.JournalStorage(backend)
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=10, grace_period=30)
    except Exception as exc:  # sqlalchemy / driver errors: the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage {redact(url)}: cannot open it ({scrub(first, url)})") from None


def space_json(space: list[Dimension]) -> str:
    return json.dumps({d.name: d.to_dict() for d in space}, sort_keys=True)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=20)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserError(f"unknown pruner '{name}' (choose median, hyperband or none)")


def load_study(setup: TuneSetup, feature_set: str) -> optuna.Study:
    """Create or resume the study; refuse one whose stored space or model differs from the current one."""
    storage = open_storage(setup.storage_url)
    sampler = optuna.samplers.TPESampler(seed=setup.seed)
    try:
        study = optuna.create_study(
            study_name=setup.study_name,
            storage=storage,
            sampler=sampler,
            pruner=make_pruner(setup.pruner),
            direction="minimize",
            load_if_exists=True,
        )
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0]
        raise UserError(
            f"storage {redact(setup.storage_url)}: cannot open study ({scrub(first, setup.storage_url)})"
        ) from None
    attrs = study.user_attrs
    current = {"model": setup.model, "feature_set": feature_set, "space": space_json(setup.space)}
    if not attrs:
        for k, v in current.items():
            study.set_user_attr(k, v)
    else:
        for key, value in current.items():
            if attrs.get(key) != value:
                raise UserError(
                    f"study '{setup.study_name}' was created with a different {key.replace('_', ' ')}; "
                    f"resume it with the same settings or start a new one with --study {setup.study_name}-2"
                )
    return study


def fail_running(study: optuna.Study) -> int:
    """Mark trials left RUNNING by a dead process as failed (journal storage has no heartbeats)."""
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        n += 1
    return n


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def export_best(study: optuna.Study, setup: TuneSetup) -> None:
    """Write models/tuned/<model>.json atomically with the best trial's parameters."""
    best = study.best_trial
    write_json(
        setup.tuned_dir / f"{setup.model}.json",
        {
            "model": setup.model,
            "study": setup.study_name,
            "trial": best.number,
            "value": best.value,
            "params": best.user_attrs.get("params", best.params),
            "best_iteration": best.user_attrs.get("best_iteration"),
        },
    )


def _trial_callback(setup: TuneSetup, report: Callable[[str], None]):
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        try:
            best = study.best_trial
        except ValueError:
            best = None
        secs = trial.user_attrs.get("seconds")
        where = f"{secs:.1f}s" if secs is not None else ""
        if trial.state == TrialState.COMPLETE:
            report(
                f"trial {trial.number}: valid log loss {trial.value:.5f} {where}"
                + (f" | best {best.value:.5f} (trial {best.number})" if best else "")
            )
            if best is not None and best.number == trial.number:
                export_best(study, setup)
        elif trial.state == TrialState.PRUNED:
            report(
                f"trial {trial.number}: pruned at step {trial.last_step} {where}"
                + (f" | best {best.value:.5f} (trial {best.number})" if best else "")
            )
        else:
            report(f"trial {trial.number}: {trial.state.name.lower()}")

    return callback


def run_trials(
    study: optuna.Study,
    setup: TuneSetup,
    objective: Callable[[optuna.Trial], float],
    report: Callable[[str], None],
) -> bool:
    """Run trials until `setup.trials` have finished in the study (all workers together). False if interrupted."""
    remaining = setup.trials - finished(study)
    if remaining <= 0:
        report(f"study '{setup.study_name}' already has {finished(study)} finished trials (asked for {setup.trials})")
        return True
    cap = optuna.study.MaxTrialsCallback(setup.trials, states=FINISHED)
    try:
        study.optimize(
            objective,
            n_trials=remaining,
            timeout=setup.timeout,
            callbacks=[cap, _trial_callback(setup, report)],
            catch=(),
        )
    except KeyboardInterrupt:
        report("interrupted: completed trials are kept; rerun the same command to resume")
        return False
    return True


def redact(url: str) -> str:
    """The storage URL with its password replaced by `***` (for every message and log line)."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def scrub(text: str, url: str) -> str:
    """A message with the URL's password (if any) replaced by `***`."""
    password = urlsplit(url).password
    return text.replace(password, "***") if password else text


def worker_threads(configured: int) -> int:
    """Threads for one worker: the configured count, else this machine's cores shared among the workers."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get(WORKERS_ENV, "1"))))


def spawn_workers(args: list[str], workers: int, seed: int, storage: str, threads_per_worker: int = 0) -> None:
    """Run K worker processes of the same tune command sharing one storage; wait for all. The storage URL
    (which may hold a password) reaches them through the environment, never their command line; each
    worker takes cores / K threads unless `threads_per_worker` says otherwise."""
    env = {**os.environ, STORAGE_ENV: storage, WORKERS_ENV: str(workers)}
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "gbmcvr", "tune", *args, "--seed", str(seed + i), "--worker"]
        procs.append(subprocess.Popen(cmd, env=env))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()
        raise
    bad = [c for c in codes if c != 0]
    if bad:
        raise UserError(f"{len(bad)} of {workers} tune workers failed (exit codes {bad})")


def summary_rows(study: optuna.Study, top: int = 10) -> list[dict[str, Any]]:
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    done.sort(key=lambda t: t.value)
    return [
        {
            "trial": t.number,
            "value": t.value,
            "best_iteration": t.user_attrs.get("best_iteration"),
            "seconds": t.user_attrs.get("seconds"),
            **t.params,
        }
        for t in done[:top]
    ]


def importances(study: optuna.Study) -> dict[str, float]:
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        return optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError):
        return {}


def timed(fn: Callable[[optuna.Trial], tuple[float, dict]]) -> Callable[[optuna.Trial], float]:
    """Wrap an objective to record seconds and its attributes on the trial, also when pruned."""

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        try:
            value, attrs = fn(trial)
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - start, 3))
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("valid_logloss", value)
        return value

    return objective
