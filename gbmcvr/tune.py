"""Optuna tuning of every model against its validation log loss: resumable, prunable, parallel.

Storage: an RDB URL (default SQLite `models/optuna.db`; PostgreSQL for many machines; heartbeats mark the
trials of dead workers as failed) or `journal:PATH` (JournalStorage file, the default with --workers > 1).
Every trial records the process that runs it, so a resumed study marks the trials of dead processes on this
machine as failed at once (a killed run leaves none RUNNING), and its sampler is seeded with the seed and the
number of trials already in the study, so it continues the search instead of repeating its first trials.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import optuna
from optuna.trial import TrialState

from gbmcvr.atomic import write_json
from gbmcvr.errors import UserError, exception_chain
from gbmcvr.lock import pid_alive
from gbmcvr.space import Dimension

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
STORAGE_ENV = "GBMCVR_TUNE_STORAGE"
WORKERS_ENV = "GBMCVR_TUNE_WORKERS"
PARENT_ENV = "GBMCVR_TUNE_PARENT"  # a worker's parent pid: the worker ends when its parent is gone
CREATE_TRIES = 5  # opening a new database whose tables another process is creating at the same moment
PROCESS_ATTR = "process"  # "host pid" of the process running a trial
INTERRUPTED = "interrupted: completed trials are kept; rerun the same command to resume"


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
    on_trial: Callable[[optuna.trial.FrozenTrial], None] | None = None  # e.g. MLflow's nested run per trial


@contextlib.contextmanager
def optuna_quiet() -> Iterator[None]:
    """Optuna's INFO lines off while gbmcvr prints its own per trial; the caller's verbosity is restored after
    (importing or using gbmcvr never changes Optuna's logging for the rest of the process)."""
    before = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(before)


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
        return _rdb_storage(url, kwargs)
    except Exception as exc:  # sqlalchemy / driver errors: the message is what the user needs
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"storage {redact(url)}: cannot open it ({scrub(first, url)})") from None


def _rdb_storage(url: str, engine_kwargs: dict[str, Any], tries: int = CREATE_TRIES) -> optuna.storages.RDBStorage:
    """RDBStorage, tried again when another process created the same new database's tables at the same moment
    (Optuna then fails with "table ... already exists")."""

    def create() -> optuna.storages.RDBStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=10, grace_period=30)

    for attempt in range(tries - 1):
        try:
            return create()
        except Exception as exc:
            if "already exists" not in str(exc):
                raise
            time.sleep(0.2 * (attempt + 1))
    return create()


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
    if not 0 <= setup.seed < 2**31:
        raise UserError(f"--seed must be in [0, 2^31), got {setup.seed}")
    storage = open_storage(setup.storage_url)
    try:
        with optuna_quiet():
            study = optuna.create_study(
                study_name=setup.study_name,
                storage=storage,
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
    fail_dead(study, local=False)
    study.sampler = optuna.samplers.TPESampler(seed=sampler_seed(setup.seed, len(study.get_trials(deepcopy=False))))
    return study


def sampler_seed(seed: int, trials: int) -> int:
    """The sampler's seed for a study that already has `trials` trials: the seed itself for a new study, else
    one drawn from (seed, trials), so that a resumed study does not repeat the parameters of its first trials."""
    if trials == 0:
        return seed
    return int(np.random.SeedSequence([seed, trials]).generate_state(1)[0])


def this_process() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _dead(trial: optuna.trial.FrozenTrial, local: bool) -> bool:
    """Whether a RUNNING trial's process is gone: it ran on this machine under a pid that no longer exists, or
    it records no process (a trial killed as it started) and `local` says no other process runs the study."""
    owner = trial.user_attrs.get(PROCESS_ATTR)
    if owner is None:
        return local
    host, _, pid = str(owner).rpartition(" ")
    return host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))


def fail_dead(study: optuna.Study, local: bool) -> int:
    """Mark RUNNING trials of dead processes failed (those of this machine at once; of other machines, past
    the heartbeat's grace period on RDB storage); `local`: also those that record no process."""
    storage = study._storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # nothing without heartbeats
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if _dead(t, local):
            with contextlib.suppress(RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                n += storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
    return n


def fail_running(study: optuna.Study) -> int:
    """Before a run starts its workers (or trials of its own): fail the trials of dead processes and, on a
    storage file (journal, SQLite), those that record none. A file shared by processes of several machines (a
    journal on NFS) can hold another machine's trial that has not recorded its process yet: that one is failed
    too."""
    backend = getattr(study._storage, "_backend", study._storage)
    journal_file = isinstance(backend, optuna.storages.journal.JournalFileBackend)
    local = journal_file or str(getattr(backend, "url", "")).startswith("sqlite")
    return fail_dead(study, local=local)


def fail_running_settled(study: optuna.Study, tries: int = 5, pause: float = 0.3) -> None:
    """After every worker has ended: fail what they left RUNNING, and pass again until a pass finds nothing
    (a trial a worker created as it was interrupted can reach the storage file after the first pass)."""
    fail_running(study)
    for _ in range(tries - 1):
        time.sleep(pause)
        if not fail_running(study):
            return


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
        done = f"{finished(study)} of {setup.trials} finished"
        if setup.on_trial is not None and trial.state == TrialState.COMPLETE:
            setup.on_trial(trial)
        if trial.state == TrialState.COMPLETE:
            report(
                f"trial {trial.number} ({done}): valid log loss {trial.value:.5f} {where}"
                + (f" | best {best.value:.5f} (trial {best.number})" if best else "")
            )
            if best is not None and best.number == trial.number:
                export_best(study, setup)
        elif trial.state == TrialState.PRUNED:
            report(
                f"trial {trial.number} ({done}): pruned at step {trial.last_step} {where}"
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
    parent = os.environ.get(PARENT_ENV)
    if parent:
        watch_parent(int(parent))
    try:
        with quiet_interrupts(), optuna_quiet(), remembered_interrupts() as pressed:
            study.optimize(
                objective,
                n_trials=remaining,
                timeout=setup.timeout,
                callbacks=[cap, _trial_callback(setup, report), _stop_if(pressed)],
                catch=(),
            )
    except BaseException as exc:
        if not interrupted(exc):
            raise
        if not parent:  # a trial interrupted as Optuna created it stays RUNNING; the parent of workers cleans up
            fail_running(study)
            report(INTERRUPTED)
        return False
    return True


@contextlib.contextmanager
def remembered_interrupts() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt as usual, and is also remembered in the event yielded. Python drops an
    exception raised inside a garbage-collection callback (SQLAlchemy registers some), so a Ctrl-C landing there
    would be lost and the study would run on; `_stop_if` raises it again after the trial."""
    pressed = threading.Event()
    own = threading.current_thread() is threading.main_thread()
    if not own or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:  # a caller's own handling
        yield pressed
        return

    def handler(signum: int, frame: Any) -> None:
        pressed.set()
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield pressed
    finally:
        signal.signal(signal.SIGINT, previous)


def _stop_if(pressed: threading.Event) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt

    return callback


def interrupted(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C or was raised while handling it (Optuna 5 raises UnboundLocalError when Ctrl-C
    lands while it records a trial's result)."""
    return any(isinstance(cause, KeyboardInterrupt) for cause in exception_chain(exc))


class _NoInterruptTraceback(logging.Filter):
    """Drops Optuna's two warnings about a trial failed by KeyboardInterrupt (one holds its traceback)."""

    def __init__(self) -> None:
        super().__init__()
        self.interrupted: set[int] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        number = message.split(" ")[1] if message.startswith("Trial ") else ""
        if record.exc_info and isinstance(record.exc_info[1], KeyboardInterrupt):
            self.interrupted.add(number)
            return False
        return not (number in self.interrupted and "failed with value" in message)


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    """Ctrl-C ends tuning with gbmcvr's one line: Optuna's log of the interrupted trial is dropped (its other
    messages and the logging level stay as they are)."""
    logger = logging.getLogger("optuna.study._optimize")
    drop = _NoInterruptTraceback()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def watch_parent(parent: int) -> None:
    """End this worker when its parent is gone (the parent killed with -9 cannot stop its workers)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="gbmcvr-parent-watch", daemon=True).start()


def _die_with_parent(parent: int) -> Callable[[], None]:
    """For a worker before it starts (Linux): SIGTERM when the parent dies, and no start if it already has."""

    def setup() -> None:
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return setup


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


def spawn_workers(args: list[str], workers: int, seed: int, storage: str, threads_per_worker: int = 0) -> bool:
    """Run K worker processes of the same tune command sharing one storage; wait for all (False: interrupted).
    The storage URL (which may hold a password) reaches them through the environment, never their command
    line; each worker takes cores / K threads unless `threads_per_worker` says otherwise, and ends with its
    parent."""
    env = {**os.environ, STORAGE_ENV: storage, WORKERS_ENV: str(workers), PARENT_ENV: str(os.getpid())}
    procs = []
    for i in range(workers):
        cmd = [sys.executable, "-m", "gbmcvr", "tune", *args, "--seed", str(seed + i), "--worker"]
        procs.append(subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent(os.getpid())))
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        stop_workers(procs)
        return False
    bad = [c for c in codes if c != 0]
    if bad:
        raise UserError(f"{len(bad)} of {workers} tune workers failed (exit codes {bad})")
    return True


def stop_workers(procs: list[subprocess.Popen], grace: float = 20.0) -> None:
    """Interrupt the workers (each marks its running trial failed and exits), then terminate any left."""
    for p in procs:
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired, KeyboardInterrupt):
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
    for p in procs:
        if p.poll() is None:
            p.terminate()
            p.wait()


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
        trial.set_user_attr(PROCESS_ATTR, this_process())
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
