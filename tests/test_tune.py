import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib

import optuna
import pytest
from optuna.trial import TrialState

from gbmcvr import space, stages
from gbmcvr import tune as tuning
from gbmcvr.config import load_config
from gbmcvr.context import Context
from gbmcvr.lock import pid_alive
from gbmcvr.space import tune_config
from gbmcvr.workdir import Workdir
from tests.factories import run_cli

CONFIG = """
[gbm]
num_boost_round = 40
early_stopping_rounds = 10
log_every = 0
[tune]
pruner = "median"
"""


@pytest.fixture
def work(small_work, tmp_path):
    wd, _, _ = small_work
    own = Workdir(tmp_path / "w")
    own.root.mkdir()
    (own.root / "features").symlink_to(wd.features)
    own.config_file.write_text(CONFIG)
    return own, load_config(None, own.config_file)


def tune_stage(wd, cfg, target, **kwargs):
    """Tune with the stage runner; returns (study, completed) for the assertions below."""
    tuned = stages.tune(Context(wd, cfg, device="cpu"), target, **kwargs)
    return tuned.study, tuned.completed


def _setup(tmp_path, trials: int = 3) -> tuning.TuneSetup:
    return tuning.TuneSetup("e2e", "s", "", trials, None, 0, "none", [], tmp_path)


def _study(url, name="e2e-default"):
    if url.startswith("journal:"):
        storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url[8:]))
    else:
        storage = url
    return optuna.load_study(study_name=name, storage=storage)


def test_resume_to_requested_total(work):
    wd, cfg = work
    study, _ = tune_stage(wd, cfg, "e2e", trials=2)
    url = f"sqlite:///{wd.models / 'optuna.db'}"
    assert len(_study(url).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2
    tune_stage(wd, cfg, "e2e", trials=3)
    trials = _study(url).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3
    t = trials[0]
    assert {"params", "best_iteration", "valid_logloss", "seconds"} <= set(t.user_attrs)
    tuned = json.loads((wd.models / "tuned" / "e2e.json").read_text())
    best = _study(url).best_trial
    assert tuned["trial"] == best.number and tuned["value"] == best.value and tuned["study"] == "e2e-default"


def test_exported_params_reproduce_best_score(work, capsys):
    wd, cfg = work
    tune_stage(wd, cfg, "e2e", trials=2)
    best = _study(f"sqlite:///{wd.models / 'optuna.db'}").best_trial
    code, out, err = run_cli(["train", "e2e", "--params", "tuned", "--run-id", "best", "--workdir", wd.root], capsys)
    assert code == 0, err
    metrics = json.loads((wd.run("best") / "metrics.json").read_text())
    assert abs(metrics["valid"]["p"]["logloss"] - best.value) < 1e-9


def test_two_workers_share_a_journal(work):
    wd, cfg = work
    tune_stage(wd, cfg, "e2e", trials=4, workers=2)
    trials = _study(f"journal:{wd.models / 'optuna-journal.log'}").get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 4 <= len(done) <= 5


def test_killed_process_keeps_trials_and_fails_the_running_one(work):
    wd, cfg = work
    url = f"journal:{wd.models / 'kill.log'}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "gbmcvr", "tune", "e2e", "--trials", "50", "--storage", url, "--workdir", str(wd.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    completed = 0
    while time.time() < deadline and completed < 2:
        time.sleep(0.5)
        try:
            completed = len(_study(url).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
        except (KeyError, FileNotFoundError, ValueError):
            completed = 0
    # kill it while a trial is running
    while time.time() < deadline and not _study(url).get_trials(states=(TrialState.RUNNING,)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = _study(url)
    kept = len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    assert kept >= 2
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    tune_stage(wd, cfg, "e2e", trials=kept + 1, storage=url)
    study = _study(url)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == kept + 1
    assert not study.get_trials(states=(TrialState.RUNNING,))
    for number in running:
        assert study.trials[number].state == TrialState.FAIL


@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ("", ["tune", "nope"], "unknown model 'nope' to tune"),
        (
            '[tune.e2e]\nnum_leaves = {type = "int", low = 50, high = 10}\n',
            ["tune", "e2e"],
            "low 50 is greater than high 10",
        ),
        (
            '[tune.e2e]\nlearning_rate = {type = "float", low = 0.0, high = 0.1, log = true}\n',
            ["tune", "e2e"],
            "a log range must be positive",
        ),
        (
            "",
            ["tune", "e2e", "--storage", "mysql://nobody@127.0.0.1:1/none"],
            "storage mysql://nobody@127.0.0.1:1/none",
        ),
    ],
)
def test_bad_input(work, capsys, extra, args, message):
    wd, _ = work
    wd.config_file.write_text(CONFIG + extra)
    code, _, err = run_cli([*args, "--trials", "1", "--workdir", wd.root], capsys)
    assert code == 2, err
    assert message in err


def test_changed_space_refused(work, capsys):
    wd, cfg = work
    tune_stage(wd, cfg, "e2e", trials=1)
    wd.config_file.write_text(CONFIG + '[tune.e2e]\nnum_leaves = {type = "int", low = 4, high = 8}\n')
    code, _, err = run_cli(["tune", "e2e", "--trials", "2", "--workdir", wd.root], capsys)
    assert code == 2 and "different space" in err and "--study e2e-default-2" in err


def test_show_space(capsys):
    code, out, _ = run_cli(["tune", "e2e", "--show-space"], capsys)
    assert code == 0 and "[tune.e2e]" in out and "num_leaves" in out


def test_trials_share_one_dataset_unless_the_binning_changes(work, monkeypatch):
    from gbmcvr.models import lgbm

    wd, cfg = work
    calls = []
    original = lgbm.stage_data

    def counting(*args, **kwargs):
        calls.append(args[2].get("max_bin"))
        return original(*args, **kwargs)

    monkeypatch.setattr(lgbm, "stage_data", counting)
    one_bin = '[tune.e2e]\nmax_bin = {type = "categorical", choices = [255]}\n'
    wd.config_file.write_text(CONFIG + one_bin)
    tune_stage(wd, load_config(None, wd.config_file), "e2e", trials=3)
    assert calls == [255]
    wd.config_file.write_text(CONFIG + one_bin.replace("[255]", "[15, 31]"))
    calls.clear()
    tune_stage(wd, load_config(None, wd.config_file), "e2e", trials=4, study="bins")
    bins = [t.params["max_bin"] for t in _study(f"sqlite:///{wd.models / 'optuna.db'}", "bins").get_trials()]
    assert sorted(calls) == sorted(set(bins))


def test_worker_threads_share_the_cores(monkeypatch):
    from gbmcvr import tune

    monkeypatch.setattr(tune.os, "cpu_count", lambda: 16)
    monkeypatch.setenv(tune.WORKERS_ENV, "4")
    assert tune.worker_threads(0) == 4
    assert tune.worker_threads(3) == 3
    monkeypatch.setenv(tune.WORKERS_ENV, "32")
    assert tune.worker_threads(0) == 1


@pytest.mark.parametrize("target", ["e2e", "ts-like", "cb", "mtdm"])
def test_show_space_reads_back_exactly(target, capsys):
    """The printed space, pasted into gbmcvr.toml, is the same space (log = false stays false)."""
    code, out, _ = run_cli(["tune", target, "--show-space"], capsys)
    assert code == 0 and '"false"' not in out and '"true"' not in out
    raw = tomllib.loads(out)["tune"][target]
    printed = space.model_space(target, raw, "printed")
    assert printed == space.model_space(target, None, "built-in")
    assert [d.log for d in printed] == [d.log for d in space.model_space(target, None, "built-in")]
    assert tune_config({"tune": {target: raw}}["tune"], "pasted [tune]").spaces[target] == raw


def test_quoted_log_refused(capsys, tmp_path):
    (tmp_path / "gbmcvr.toml").write_text(
        '[tune.e2e]\nnum_leaves = { type = "int", low = 4, high = 8, log = "false" }\n'
    )
    code, _, err = run_cli(["tune", "e2e", "--show-space", "--workdir", tmp_path], capsys)
    assert code == 2 and "log must be true or false" in err and "num_leaves" in err


def _tune_process(wd, url: str, *args: str, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gbmcvr", "tune", "e2e", "--trials", "50", "--storage", url, "--workdir", str(wd.root)]
    return subprocess.Popen([*cmd, *args], stdout=subprocess.DEVNULL, stderr=stderr)


def _wait_for(url: str, completed: int, running: int, deadline: float) -> list:
    """Wait until the study has `completed` finished trials and `running` running ones that have recorded their
    process (a trial is RUNNING a moment before it records it); the running trials."""
    while time.time() < deadline:
        try:
            study = _study(url)
        except Exception:  # not created yet (no file, no study, a database not yet written)
            time.sleep(0.2)
            continue
        done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
        now = [t for t in study.get_trials(states=(TrialState.RUNNING,)) if "process" in t.user_attrs]
        if len(done) >= completed and len(now) >= running:
            return now
        time.sleep(0.05)
    raise AssertionError(f"the study did not reach {completed} finished and {running} running trials")


def test_killed_sqlite_study_resumes_without_running_trials_or_repeats(work):
    """kill -9 on the default SQLite storage: the resumed study fails the killed trial at once (not after the
    heartbeat's grace period) and continues the search instead of repeating the first trials' parameters."""
    wd, cfg = work
    url = f"sqlite:///{wd.models / 'kill.db'}"
    proc = _tune_process(wd, url)
    running = _wait_for(url, 2, 1, time.time() + 180)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    study = _study(url)
    first = [t.params for t in study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))]
    assert running[0].user_attrs["process"].endswith(f" {proc.pid}")
    tune_stage(wd, cfg, "e2e", trials=len(first) + 2, storage=url)
    study = _study(url)
    assert not study.get_trials(states=(TrialState.RUNNING,))
    assert all(study.trials[t.number].state == TrialState.FAIL for t in running)
    new = [t.params for t in study.trials if t.number > max(r.number for r in running)]
    assert len(new) >= 2 and not any(p in first for p in new)


def test_simulated_dead_trials_failed_on_resume(work):
    """A RUNNING trial of a dead process of this machine, and one that records no process (killed as it
    started): both failed when the study resumes; a trial of a live process is left alone."""
    wd, cfg = work
    url = f"sqlite:///{wd.models / 'sim.db'}"
    tune_stage(wd, cfg, "e2e", trials=1, storage=url)
    study = _study(url)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    ids = {}
    for name, owner in (("dead", f"{host} {dead.stdout.strip()}"), ("none", None), ("live", f"{host} {os.getpid()}")):
        trial = study.ask()
        if owner:
            trial.set_user_attr("process", owner)
        ids[name] = trial.number
    tune_stage(wd, cfg, "e2e", trials=2, storage=url)
    states = {name: _study(url).trials[n].state for name, n in ids.items()}
    assert states == {"dead": TrialState.FAIL, "none": TrialState.FAIL, "live": TrialState.RUNNING}


def test_sampler_seed_continues_a_resumed_study():
    assert tuning.sampler_seed(42, 0) == 42
    assert tuning.sampler_seed(42, 3) == tuning.sampler_seed(42, 3) != tuning.sampler_seed(42, 4)


def test_a_database_another_process_is_creating_is_opened_on_a_later_try(tmp_path, monkeypatch):
    """Two processes creating one new SQLite storage at once: Optuna fails in the later one with "table
    alembic_version already exists"; gbmcvr tries again."""
    real, calls = optuna.storages.RDBStorage, []

    def racing(*args, **kwargs):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) table alembic_version already exists")
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = tuning.open_storage(f"sqlite:///{tmp_path / 'race.db'}")
    assert isinstance(storage, real) and len(calls) == 3


def test_other_storage_errors_are_not_tried_again(tmp_path, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("disk I/O error")

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(tuning.UserError, match="cannot open it \\(disk I/O error\\)"):
        tuning.open_storage(f"sqlite:///{tmp_path / 'broken.db'}")
    assert calls == [1]


def test_ctrl_c_prints_one_line_and_exits_130(work):
    wd, _ = work
    url = f"sqlite:///{wd.models / 'int.db'}"
    proc = _tune_process(wd, url, stderr=subprocess.PIPE)
    try:
        _wait_for(url, 1, 1, time.time() + 180)
    except AssertionError as exc:
        proc.kill()
        raise AssertionError(
            f"{exc}; the tune process ({proc.poll()}) wrote: {proc.communicate()[1].decode()}"
        ) from None
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "failed with" not in text
    assert "interrupted: completed trials are kept" in text
    assert not _study(url).get_trials(states=(TrialState.RUNNING,))


def test_killing_the_parent_ends_its_workers(work):
    """kill -9 on the parent of --workers 2: its workers end too, and the resumed study has no RUNNING trial."""
    wd, cfg = work
    url = f"journal:{wd.models / 'parent.log'}"
    proc = _tune_process(wd, url, "--workers", "2")
    running = _wait_for(url, 1, 1, time.time() + 180)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    pids = [int(t.user_attrs["process"].rpartition(" ")[2]) for t in running]
    deadline = time.time() + 30
    while time.time() < deadline and any(pid_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(pid_alive(p) for p in pids)
    done = len(_study(url).get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))
    tune_stage(wd, cfg, "e2e", trials=done + 1, storage=url)
    assert not _study(url).get_trials(states=(TrialState.RUNNING,))


def test_ctrl_c_before_the_first_trial_is_the_same_line(work, capsys, monkeypatch):
    wd, _ = work

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "tune", interrupted)
    code, _, err = run_cli(["tune", "e2e", "--trials", "1", "--workdir", wd.root], capsys)
    assert code == 130 and err.strip() == tuning.INTERRUPTED


def test_ctrl_c_while_optuna_records_a_result_is_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C inside Optuna's tell makes Optuna 5 raise UnboundLocalError from its `finally`: still one line."""
    from optuna.study import _optimize

    def ctrl_c(**kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_optimize, "_tell_with_warning", ctrl_c)
    backend = optuna.storages.journal.JournalFileBackend(str(tmp_path / "journal.log"))
    study = optuna.create_study(storage=optuna.storages.JournalStorage(backend))
    lines: list[str] = []
    assert tuning.run_trials(study, _setup(tmp_path), lambda trial: 0.5, lines.append) is False
    assert lines == [tuning.INTERRUPTED]
    assert not study.get_trials(states=(TrialState.RUNNING,))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop is the point
def test_ctrl_c_that_python_drops_still_stops_the_study(tmp_path):
    """A Ctrl-C landing in a garbage-collection callback is dropped by Python ("Exception ignored in"); the study
    still stops after the trial, with the one line."""

    class Collected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs here, inside __del__
                pass

    def objective(trial):
        Collected()
        return 0.5

    study = optuna.create_study()
    lines: list[str] = []
    assert tuning.run_trials(study, _setup(tmp_path, trials=3), objective, lines.append) is False
    assert len(study.trials) == 1 and lines[-1] == tuning.INTERRUPTED


def test_an_error_that_is_not_an_interrupt_is_raised(tmp_path):
    def broken(trial):
        raise UnboundLocalError("a bug")

    with pytest.raises(UnboundLocalError, match="a bug"):
        tuning.run_trials(optuna.create_study(), _setup(tmp_path), broken, print)


def test_ctrl_c_with_workers_prints_one_line(work):
    """Ctrl-C reaches the parent and its workers (one process group): one line, exit 130, no RUNNING trial."""
    wd, _ = work
    url = f"journal:{wd.models / 'ctrl-c.log'}"
    cmd = [sys.executable, "-m", "gbmcvr", "tune", "e2e", "--trials", "50", "--workers", "2"]
    proc = subprocess.Popen(
        [*cmd, "--storage", url, "--workdir", str(wd.root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _wait_for(url, 1, 1, time.time() + 180)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text and "failed with" not in text
    assert text.count("interrupted: completed trials are kept") == 1, text
    assert not _study(url).get_trials(states=(TrialState.RUNNING,))
