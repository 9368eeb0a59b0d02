"""Reliability, the second table: stale tables and runs, names that would escape the work directory, damaged
internal files, real storage faults, settings out of range and misleading scores. Each case: the exit code,
the key words of one `error:` line, no traceback, and every earlier output byte-identical."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gbmcvr.data.synth import write_synth
from tests.factories import run_cli

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """data = "../data"
seed = 3
[gbm]
num_boost_round = 15
early_stopping_rounds = 5
log_every = 0
[submit]
name = "first"
"""


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list]  # edits the copied world (root/work, root/data), returns the CLI arguments
    words: tuple[str, ...]
    code: int = 2


def _w(root: Path) -> Path:
    return root / "work"


def _args(*args: str, workdir: bool = True) -> Callable[[Path], list]:
    return lambda root: [*args, *(["--workdir", _w(root)] if workdir else [])]


def _then(edit: Callable[[Path], None], *args: str) -> Callable[[Path], list]:
    def setup(root: Path) -> list:
        edit(_w(root))
        return [*args, "--workdir", _w(root)]

    return setup


def _reingested(work: Path) -> None:
    """What a second `gbmcvr ingest` of changed data leaves: the raw store's fingerprint differs."""
    path = work / "features" / "raw" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["fingerprint"] = "0123456789abcdef"
    path.write_text(json.dumps(manifest))


def _features_config_changed(work: Path) -> None:
    (work / "gbmcvr.toml").write_text(CONFIG + "[features]\ncount = false\n")


def _write(rel: str, content: bytes) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_bytes(content)

    return edit


def _truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def edit(work: Path) -> None:
        data = (work / rel).read_bytes()
        (work / rel).write_bytes(data[: int(len(data) * keep)])

    return edit


def _config(text: str, *args: str) -> Callable[[Path], list]:
    return _then(lambda work: (work / "gbmcvr.toml").write_text(CONFIG + text), *args)


def _config_top(text: str, *args: str) -> Callable[[Path], list]:
    """CONFIG with a top-level `key = value` line set (replacing the key's line where CONFIG has one)."""
    key = text.split("=", 1)[0].strip()
    lines = [line for line in CONFIG.splitlines() if line.split("=", 1)[0].strip() != key]
    return _then(lambda work: (work / "gbmcvr.toml").write_text("\n".join([text, *lines]) + "\n"), *args)


def _cwd_has_other_data(root: Path) -> list:
    """The work directory's config names `data` (absent there) while the current folder has its own data/."""
    (_w(root) / "gbmcvr.toml").write_text(CONFIG.replace('"../data"', '"data"'))
    return ["run", "--workdir", _w(root)]


def _workdir_is_a_file(root: Path) -> list:
    (root / "afile").write_text("x")
    return ["features", "--workdir", root / "afile"]


def _other_truth(root: Path) -> list:
    return ["submit", "--runs", "e2e", "--name", "t", "--truth", root / "other", "--workdir", _w(root)]


CASES = [
    # 1. the data folder is resolved against the config file's folder, never the current folder
    Case("relative data, current folder has its own", _cwd_has_other_data, ("work/data", "data folder not found")),
    Case("absolute data that does not exist", _config_top('data = "/nonexistent/gbmcvr"', "run"), ("not found",)),
    # 2. stale tables and runs
    Case("train after re-ingest", _then(_reingested, "train", "e2e", "--overwrite"), ("stale", "re-ingested")),
    Case(
        "train after [features] changed",
        _then(_features_config_changed, "train", "e2e", "--overwrite"),
        ("stale", "config changed", "gbmcvr features"),
    ),
    Case("submit after re-ingest", _then(_reingested, "submit", "--runs", "e2e"), ("another raw store", "train e2e")),
    Case(
        "submit after [features] changed",
        _then(_features_config_changed, "submit", "--runs", "e2e"),
        ("older config", "gbmcvr features"),
    ),
    Case(
        "refit after re-ingest",
        _then(_reingested, "train", "e2e", "--refit", "--run-id", "r2"),
        ("stale", "gbmcvr features"),
    ),
    # 3. names are names
    Case("run id '.'", _args("train", "e2e", "--run-id", ".", "--overwrite"), ("run id '.'", "plain name")),
    Case("run id '..'", _args("train", "e2e", "--run-id", ".."), ("run id '..'", "plain name")),
    Case("run id escaping", _args("train", "e2e", "--run-id", "../../x"), ("'../../x'", "plain name")),
    Case("run id absolute", _args("train", "e2e", "--run-id", "/tmp/x"), ("'/tmp/x'", "plain name")),
    Case("run id with a separator", _args("train", "e2e", "--run-id", "a/b"), ("'a/b'", "plain name")),
    Case("run id hidden", _args("train", "e2e", "--run-id", ".hidden"), ("plain name",)),
    Case("submission name escaping", _args("submit", "--runs", "e2e", "--name", "../../x"), ("submission name",)),
    Case("submission name '.'", _args("submit", "--runs", "e2e", "--name", "."), ("submission name", "plain name")),
    Case("submit a run outside models/", _args("submit", "--runs", "../e2e"), ("run id", "plain name")),
    Case("feature set escaping", _args("features", "--set", "../x"), ("feature set", "plain name")),
    Case("select name escaping", _args("select", "--name", "../x"), ("feature set name", "plain name")),
    Case("feature_set in the config", _config_top('feature_set = "../x"', "features"), ("feature_set", "plain name")),
    Case(
        "[submit] name in the config",
        _then(
            lambda work: (work / "gbmcvr.toml").write_text(CONFIG.replace('"first"', '"a/b"')),
            "submit",
            "--runs",
            "e2e",
        ),
        ("[submit]", "'a/b'", "plain name"),
    ),
    Case("tune into a reserved run id", _args("train", "e2e", "--run-id", "tuned"), ("reserved",)),
    Case("a rehearsal plan's name as run id", _args("train", "e2e", "--run-id", "backtest-2"), ("reserved",)),
    Case("the same run twice", _args("submit", "--runs", "e2e", "--runs", "e2e"), ("'e2e' given twice",)),
    # 4. damaged internal files
    Case("empty run.json", _then(_write("models/e2e/run.json", b""), "submit", "--runs", "e2e"), ("damaged", "empty")),
    Case(
        "run.json a list",
        _then(_write("models/e2e/run.json", b"[1, 2]"), "submit", "--runs", "e2e"),
        ("damaged", "JSON object", "gbmcvr train"),
    ),
    Case(
        "truncated preds.parquet",
        _then(_truncate("models/e2e/preds.parquet"), "submit", "--runs", "e2e"),
        ("preds.parquet", "damaged", "gbmcvr train"),
    ),
    Case(
        "truncated raw test.parquet",
        _then(_truncate("features/raw/test.parquet"), "submit", "--runs", "e2e", "--name", "new"),
        ("test.parquet", "damaged", "gbmcvr ingest"),
    ),
    Case(
        "truncated raw manifest",
        _then(_truncate("features/raw/manifest.json"), "train", "e2e", "--run-id", "x"),
        ("manifest.json", "damaged", "gbmcvr ingest"),
    ),
    Case(
        "truncated raw train.parquet",
        _then(_truncate("features/raw/train.parquet"), "train", "e2e", "--run-id", "x"),
        ("train.parquet", "damaged", "gbmcvr ingest"),
    ),
    Case(
        "truncated feature manifest",
        _then(_truncate("features/default/validate/manifest.json"), "train", "e2e", "--run-id", "x"),
        ("manifest.json", "damaged", "gbmcvr features"),
    ),
    Case(
        "truncated feature table",
        _then(_truncate("features/default/validate/valid.parquet"), "train", "e2e", "--run-id", "x"),
        ("valid.parquet", "damaged", "--overwrite"),
    ),
    Case(
        "empty tuned parameters",
        _then(_write("models/tuned/e2e.json", b""), "train", "e2e", "--params", "tuned", "--run-id", "x"),
        ("e2e.json", "JSON"),
    ),
    Case(
        "tuned parameters not an object",
        _then(_write("models/tuned/e2e.json", b"[0.1]"), "train", "e2e", "--params", "tuned", "--run-id", "x"),
        ("e2e.json", "JSON object"),
    ),
    # 7. settings out of range, checked before any work
    Case("negative seed", _config_top("seed = -1", "features"), ("seed", "[0, 2^31)")),
    Case("seed too large", _config_top("seed = 2147483648", "features"), ("seed",)),
    Case(
        "a cross of a column with itself",
        _config('[features.cross]\npairs = [["f_2", "f_2"]]\n', "features"),
        ("[cross]", "itself"),
    ),
    Case(
        "the same cross twice",
        _config('[features.cross]\npairs = [["f_2", "f_3"], ["f_2", "f_3"]]\n', "features"),
        ("[cross]", "named twice"),
    ),
    Case("work directory is a file", _workdir_is_a_file, ("work directory is a file",)),
    Case("config is a folder", _args("features", "--config", "/tmp"), ("/tmp", "a folder, not a TOML file")),
    Case(
        "config not UTF-8",
        _then(lambda work: (work / "gbmcvr.toml").write_bytes(b"seed = \xff\n"), "features"),
        ("gbmcvr.toml", "not UTF-8"),
    ),
    # 8. scores that would mislead
    Case(
        "base rate above 1",
        _args("score", "x.tsv", "--truth", "data", "--base-rate", "1.5", workdir=False),
        ("base-rate",),
    ),
    Case("base rate 0", _args("score", "x.tsv", "--truth", "data", "--base-rate", "0", workdir=False), ("base-rate",)),
    Case("another data set's truth", _other_truth, ("not the truth of the ingested test day",)),
]


def _snapshot(root: Path) -> dict[str, str]:
    work = _w(root)
    return {
        str(p.relative_to(work)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(work.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Data, a config, a raw store, validate-plan tables, an e2e run and a submission: a finished pipeline."""
    root = tmp_path_factory.mktemp("rel")
    write_synth(root / "data", 0.003, 5)
    write_synth(root / "other", 0.002, 9)
    work = _w(root)
    work.mkdir()
    (work / "gbmcvr.toml").write_text(CONFIG)
    for args in (
        ["ingest", root / "data", "--workdir", work],
        ["features", "--plan", "both", "--workdir", work],
        ["train", "e2e", "--workdir", work],
        ["submit", "--runs", "e2e", "--workdir", work],
    ):
        code = _cli(args)
        assert code == 0, args
    return root


def _cli(args: list) -> int:
    """The CLI in a subprocess-free way for fixtures (no capsys at module scope)."""
    from gbmcvr.cli import main

    old = sys.argv
    sys.argv = ["gbmcvr", *map(str, args)]
    try:
        with contextlib.redirect_stdout(open(os.devnull, "w")), contextlib.redirect_stderr(open(os.devnull, "w")):
            main()
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = old
    return 0


@pytest.fixture
def copy(world: Path, tmp_path: Path, monkeypatch) -> Path:
    root = tmp_path / "w"
    shutil.copytree(world, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reliability_case(case: Case, copy: Path, capsys) -> None:
    args = case.setup(copy)
    before = _snapshot(copy)
    code, out, err = run_cli(args, capsys)
    assert code == case.code, (out, err)
    assert "Traceback" not in err
    for word in case.words:
        assert word in err, (word, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert _snapshot(copy) == before
    assert not (copy / "x").exists() and not (copy.parent / "x").exists()


def test_data_is_resolved_against_the_config_file_and_recorded(copy: Path, capsys) -> None:
    """A relative `data` names the folder beside the config file wherever the command starts from."""
    from gbmcvr.config import load_config

    other = copy / "elsewhere"
    other.mkdir()
    os.chdir(other)
    cfg = load_config(None, _w(copy) / "gbmcvr.toml")
    assert Path(cfg.data) == (copy / "data").absolute()
    (copy / "conf").mkdir()
    (copy / "conf" / "c.toml").write_text('data = "d"\n')
    assert Path(load_config(copy / "conf" / "c.toml", _w(copy) / "gbmcvr.toml").data) == copy / "conf" / "d"


def test_names_with_glob_characters_work(copy: Path, capsys) -> None:
    """A work directory whose path holds `[1]` is a path, not a pattern."""
    odd = copy / "w[1]"
    shutil.copytree(_w(copy), odd)
    code, out, err = run_cli(["submit", "--runs", "e2e", "--name", "again", "--workdir", odd], capsys)
    assert code == 0, err
    assert (odd / "submissions" / "again.tsv").read_bytes() == (odd / "submissions" / "first.tsv").read_bytes()


def test_an_empty_lock_left_by_a_failed_write_is_taken_over(copy: Path, capsys) -> None:
    lock = _w(copy) / "models" / ".e2e.lock"
    lock.write_text("")
    old = time.time() - 60
    os.utime(lock, (old, old))
    code, _, err = run_cli(["train", "e2e", "--overwrite", "--workdir", _w(copy)], capsys)
    assert code == 0, err
    assert not lock.exists()


def test_a_fresh_empty_lock_still_blocks(copy: Path, capsys) -> None:
    (_w(copy) / "models" / ".e2e.lock").write_text("")
    code, _, err = run_cli(["train", "e2e", "--overwrite", "--workdir", _w(copy)], capsys)
    assert code == 2 and "being written" in err


def test_stale_tables_are_rebuilt_by_run_and_old_runs_kept(copy: Path, capsys) -> None:
    """`gbmcvr run` rebuilds stale tables itself, and keeps a run it did not make under a new name."""
    work = _w(copy)
    (work / "gbmcvr.toml").write_text('models = ["e2e"]\n' + CONFIG + "[features]\ncount = false\n")
    before = (work / "models" / "e2e" / "preds.parquet").read_bytes()
    code, out, err = run_cli(["run", "--workdir", work], capsys)
    assert code == 0, err
    kept = [p for p in (work / "models").iterdir() if p.name.startswith("e2e-")]
    assert len(kept) == 1 and (kept[0] / "preds.parquet").read_bytes() == before
    assert "kept it as" in err
    meta = json.loads((work / "models" / "e2e" / "run.json").read_text())
    assert (
        meta["origin"] == "run"
        and meta["features_hash"] != json.loads((kept[0] / "run.json").read_text())["features_hash"]
    )
    for key in ("started_at", "finished_at", "seconds", "gbmcvr_version", "command", "config_hash"):
        assert key in meta
    code, out, err = run_cli(["run", "--workdir", work], capsys)  # its own run is current: nothing kept again
    assert code == 0, err
    assert len([p for p in (work / "models").iterdir() if p.name.startswith("e2e-")]) == 1


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


@pytest.mark.parametrize("command", ["ingest", "features", "train"])
def test_a_real_full_disk_is_one_line_and_leaves_no_lock(world: Path, tmp_path: Path, command: str) -> None:
    """A real 3 MB tmpfs as the work directory: the library's own error types become one line, exit 2."""
    work = tmp_path / "full"
    if not _mount_tmpfs(work, "16m"):
        pytest.skip("mounting a tmpfs needs root here")
    try:
        (work / "gbmcvr.toml").write_text(CONFIG.replace('"../data"', f'"{world / "data"}"'))
        if command != "ingest":
            shutil.copytree(_w(world) / "features" / "raw", work / "features" / "raw")
        if command == "train":
            plan = _w(world) / "features" / "default" / "validate"
            shutil.copytree(
                plan, work / "features" / "default" / "validate", ignore=shutil.ignore_patterns("lgb-cache")
            )
        with contextlib.suppress(OSError), open(work / "filler", "wb") as fh:  # fill the disk ...
            while True:
                fh.write(b"\0" * (64 << 10))
                fh.flush()
        os.truncate(work / "filler", max(0, (work / "filler").stat().st_size - (24 << 10)))  # ... but 24 KiB
        args = {
            "ingest": ["ingest", world / "data"],
            "features": ["features"],
            "train": ["train", "e2e"],
        }[command]
        done = subprocess.run(
            [sys.executable, "-m", "gbmcvr", *map(str, args), "--workdir", str(work)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=300,
        )
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error:") and ("No space left" in last or "cannot write" in last), last
        assert not list(work.rglob(".*.lock"))
        assert not list(work.rglob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(work)], capture_output=True)


def test_a_file_size_limit_is_one_line(world: Path, tmp_path: Path) -> None:
    """A real EFBIG from the kernel (RLIMIT_FSIZE), where no tmpfs can be mounted."""
    work = tmp_path / "limited"
    shutil.copytree(_w(world) / "features" / "raw", work / "features" / "raw")
    (work / "gbmcvr.toml").write_text(CONFIG)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, 64 << 10))

    done = subprocess.run(
        [sys.executable, "-m", "gbmcvr", "features", "--workdir", str(work)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        preexec_fn=limit,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "cannot write" in last and "File too large" in last, last


def test_a_byte_order_mark_in_the_config_is_harmless(copy: Path) -> None:
    from gbmcvr.config import load_config

    path = _w(copy) / "gbmcvr.toml"
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_config(None, path).seed == 3


def test_submit_and_score_print_the_same_nce(copy: Path, capsys) -> None:
    """One NCE base rate: the install rate of every labelled train row, in `submit` and in `score`."""
    work = _w(copy)
    code, _, err = run_cli(
        ["submit", "--runs", "e2e", "--name", "n", "--truth", copy / "data", "--workdir", work], capsys
    )
    assert code == 0, err
    report = json.loads((work / "submissions" / "n.json").read_text())
    code, out, err = run_cli(["score", work / "submissions" / "n.tsv", "--truth", copy / "data"], capsys)
    assert code == 0, err
    nce = float(next(line for line in out.splitlines() if line.startswith("NCE")).split()[1])
    assert report["table"][-1]["test_nce"] == pytest.approx(nce, abs=1e-5)
