"""Bad inputs, table-driven: each case gets exit code 2 (or 0 where the input is merely written differently),
one line naming what is wrong, no traceback, and leaves every earlier output byte-identical."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from tests.factories import run_cli

TRAIN = "train/000000000003.csv"
TEST = "test/000000000000.csv"


@dataclass(frozen=True)
class Case:
    name: str
    setup: Callable[[Path], list[str]]  # edits the copied world, returns the CLI arguments
    code: int
    words: tuple[str, ...]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")


def _set_field(root: Path, rel: str, line: int, column: str, value: str) -> None:
    path = root / "data" / rel
    lines = _lines(path)
    header = lines[0].split("\t")
    fields = lines[line - 1].split("\t")
    fields[header.index(column)] = value
    lines[line - 1] = "\t".join(fields)
    _write_lines(path, lines)


def _ingest(root: Path) -> list[str]:
    return ["ingest", root / "data", "--workdir", root / "work"]


def _field_case(rel: str, line: int, column: str, value: str) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        _set_field(root, rel, line, column, value)
        return _ingest(root)

    return setup


def _edit_case(rel: str, edit: Callable[[list[str]], list[str]]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        path = root / "data" / rel
        _write_lines(path, edit(_lines(path)))
        return _ingest(root)

    return setup


def _bytes_case(rel: str, make: Callable[[bytes], bytes]) -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        path = root / "data" / rel
        path.write_bytes(make(path.read_bytes()))
        return _ingest(root)

    return setup


def _config_case(toml: str, command: str = "features") -> Callable[[Path], list[str]]:
    def setup(root: Path) -> list[str]:
        (root / "other.toml").write_text(toml)
        return [command, "--config", root / "other.toml", "--workdir", root / "work"]

    return setup


def _args(*args: str) -> Callable[[Path], list[str]]:
    return lambda root: list(args)


def _run_with_preds(root: Path, p: list[float]) -> list[str]:
    run = root / "work" / "models" / "bad"
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"kind": "e2e", "run_id": "bad"}))
    (run / "metrics.json").write_text(json.dumps({"base_rate": 0.2}))
    pl.DataFrame({"row_id": list(range(len(p))), "split": ["valid", "test"] * (len(p) // 2), "p": p}).write_parquet(
        run / "preds.parquet"
    )
    return ["submit", "--runs", "bad", "--workdir", root / "work"]


def _other_live_process_holds(root: Path) -> list[str]:
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    (root / "work" / "features" / ".raw.lock").write_text(f"{sleeper.pid} {socket.gethostname()}")
    _SLEEPERS.append(sleeper)
    return _ingest(root)


def _synth_into_foreign_folder(root: Path) -> list[str]:
    (root / "mine").mkdir()
    (root / "mine" / "notes.txt").write_text("my notes")
    return ["synth", root / "mine", "--scale", "0.001"]


_SLEEPERS: list[subprocess.Popen] = []

CASES = [
    # the command line
    Case("no arguments", _args(), 2, ("Usage: gbmcvr",)),
    Case("unknown command", _args("frobnicate"), 2, ("No such command",)),
    Case("unknown option", _args("train", "e2e", "--bogus"), 2, ("No such option",)),
    Case("missing argument", _args("train"), 2, ("Missing argument",)),
    # ingest: values
    Case(
        "non-integral float, categorical",
        _field_case(TRAIN, 5, "f_2", "1.5"),
        2,
        ("line 5", "'f_2'", "'1.5'", "integer"),
    ),
    Case(
        "non-integral float, binary", _field_case(TRAIN, 7, "f_33", "0.5"), 2, ("line 7", "'f_33'", "'0.5'", "integer")
    ),
    Case("binary value 2", _field_case(TRAIN, 4, "f_34", "2"), 2, ("line 4", "'f_34'", "not 0 or 1")),
    Case(
        "text in a numerical column", _field_case(TRAIN, 6, "f_44", "abc"), 2, ("line 6", "'f_44'", "'abc'", "number")
    ),
    Case("label value 2", _field_case(TRAIN, 3, "is_installed", "2"), 2, ("line 3", "'is_installed'", "not 0 or 1")),
    Case(
        "missing label in train",
        _field_case(TRAIN, 8, "is_clicked", ""),
        2,
        ("line 8", "'is_clicked'", "missing label"),
    ),
    Case(
        "day outside the profile (train)",
        _field_case(TRAIN, 2, "f_1", "99"),
        2,
        ("line 2", "day 99", "fit or validation"),
    ),
    Case("day outside the profile (test)", _field_case(TEST, 3, "f_1", "70"), 2, ("line 3", "day 70", "test day")),
    Case("test day in train", _field_case(TRAIN, 2, "f_1", "67"), 2, ("line 2", "day 67")),
    # ingest: shape and encoding
    Case(
        "row with fewer fields",
        _edit_case(TRAIN, lambda ls: [*ls[:4], ls[4].rsplit("\t", 1)[0], *ls[5:]]),
        2,
        ("line 5", "fewer than the header"),
    ),
    Case(
        "row with more fields",
        _edit_case(TRAIN, lambda ls: [*ls[:2], ls[2] + "\t1", *ls[3:]]),
        2,
        ("line 3", "more than the header"),
    ),
    Case(
        "bytes that are not UTF-8",
        _bytes_case(TRAIN, lambda b: b.replace(b"\n", b"\n\xff\xfe", 3).replace(b"\n\xff\xfe", b"\n", 2)),
        2,
        ("line 4", "not UTF-8"),
    ),
    Case("corrupt gzip", _bytes_case(TRAIN, lambda b: gzip.compress(b)[:200]), 2, ("compressed file",)),
    Case("empty file", _bytes_case(TRAIN, lambda b: b""), 2, ("000000000003.csv", "empty file")),
    Case("header only", _edit_case(TRAIN, lambda ls: ls[:1]), 2, ("header only",)),
    Case(
        "missing column",
        _edit_case(TRAIN, lambda ls: [x.rsplit("\t", 1)[0] for x in ls]),
        2,
        ("missing column 'is_installed'",),
    ),
    Case(
        "unexpected column",
        _edit_case(TRAIN, lambda ls: [ls[0] + "\tbonus"] + [x + "\t1" for x in ls[1:]]),
        2,
        ("unexpected column 'bonus'",),
    ),
    Case(
        "column twice",
        _edit_case(TRAIN, lambda ls: [ls[0].replace("f_3\t", "f_2\t", 1), *ls[1:]]),
        2,
        ("'f_2' appears twice",),
    ),
    Case("duplicate row id", _edit_case(TRAIN, lambda ls: [*ls, ls[1]]), 2, ("duplicate row id",)),
    Case(
        "labels in the test file",
        _edit_case(TEST, lambda ls: [ls[0] + "\tis_installed"] + [x + "\t0" for x in ls[1:]]),
        2,
        ("label column 'is_installed' in the test file",),
    ),
    Case("no data folder", _args("ingest", "/nonexistent/data"), 2, ("data folder not found",)),
    Case("held by another live process", _other_live_process_holds, 2, ("being written by process", ".raw.lock")),
    # config values of the wrong type
    Case(
        "n_min as a string",
        _config_case('[features.target]\nn_min = "100"\n'),
        2,
        ("'n_min'", "must be a number", "'100'"),
    ),
    Case(
        "cycle as a string", _config_case('[features.date]\ncycle = "7"\n'), 2, ("'cycle'", "must be an integer", "'7'")
    ),
    Case(
        "folds as a float",
        _config_case("[features.target]\nfolds = 2.5\n"),
        2,
        ("'folds'", "must be an integer", "2.5"),
    ),
    Case(
        "a string where a list is expected",
        _config_case('[features.count]\ncolumns = "f_2"\n'),
        2,
        ("'columns'", "list of strings", "'f_2'"),
    ),
    Case("a family as a number", _config_case("[features]\ndate = 5\n"), 2, ("[date]", "table or true/false")),
    Case("seed as a string", _config_case('seed = "1"\n'), 2, ("'seed'", "must be an integer")),
    Case("models as a string", _config_case('models = "e2e"\n'), 2, ("'models'", "list of strings")),
    Case(
        "boosting rounds as a string",
        _config_case('[gbm]\nnum_boost_round = "10"\n'),
        2,
        ("'num_boost_round'", "integer"),
    ),
    Case("MTDM epochs as a float", _config_case("[mtdm]\nepochs = 1.5\n"), 2, ("'epochs'", "integer", "1.5")),
    Case("submit folds as a string", _config_case('[submit]\nfolds = "5"\n'), 2, ("'folds'", "integer")),
    Case("unknown [tune] key", _config_case("[tune]\ntrails = 3\n"), 2, ("[tune]", "unknown key 'trails'")),
    Case(
        "[select] rehearsal days below 1",
        _config_case("[select]\nrehearsal_days = 0\n"),
        2,
        ("[select]", "rehearsal_days must be at least 1"),
    ),
    Case(
        "[select] unknown weighting",
        _config_case('[select]\nweighting = "adversarial"\n'),
        2,
        ("[select]", "weighting must be one of none, density", "'adversarial'"),
    ),
    Case(
        "[select] negative threads",
        _config_case("[select]\nthreads = -1\n"),
        2,
        ("[select]", "threads must be 0 (every core) or a positive count, got -1"),
    ),
    Case("unknown pruner", _config_case('[tune]\npruner = "fast"\n'), 2, ("pruner", "'fast'")),
    Case("invalid TOML", _config_case("seed = = 1\n"), 2, ("other.toml", "invalid TOML")),
    # files
    Case("synth into a folder of the user's", _synth_into_foreign_folder, 2, ("not empty", "--force")),
    Case("synth into the current folder", _args("synth", ".", "--scale", "0.001"), 2, ("current folder",)),
    Case(
        "a run with NaN predictions",
        lambda r: _run_with_preds(r, [0.1, float("nan"), 0.2, 0.3]),
        2,
        ("models/bad", "missing or NaN", "'p'"),
    ),
    Case(
        "a run with p above 1", lambda r: _run_with_preds(r, [0.1, 0.2, 1.5, 0.3]), 2, ("models/bad", "outside [0, 1]")
    ),
    Case(
        "storage password",
        _args("tune", "e2e", "--storage", "postgresql://ann:s3cret@127.0.0.1:1/db"),
        2,
        ("ann:***@127.0.0.1",),
    ),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "data" not in p.relative_to(root).parts[:1]
    }


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """Generated data plus a work directory holding an earlier raw store (the output nothing may touch)."""
    root = tmp_path_factory.mktemp("bad")
    write_synth(root / "data", 0.002, 3)
    ingest(root / "data", SHARECHAT, root / "work" / "features" / "raw")
    return root


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, pristine: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    monkeypatch.chdir(root)
    args = case.setup(root)
    before = _snapshot(root)
    try:
        code, out, err = run_cli(args, capsys)
    finally:
        for sleeper in _SLEEPERS:
            sleeper.kill()
            sleeper.wait()
        _SLEEPERS.clear()
    assert code == case.code, (out, err)
    assert "Traceback" not in err
    for word in case.words:
        assert word in err, (word, err)
    assert "s3cret" not in out + err
    if case.code == 2 and args and args[0] != "synth" and "Usage" not in err:
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], err
    assert _snapshot(root) == before
    assert not list((root / "work" / "features").glob(".raw.*.tmp"))


def test_integral_floats_are_integers(pristine: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    path = root / "data" / TRAIN
    lines = _lines(path)
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"), strict=True)) for line in lines[1:]]
    floats = [
        "\t".join(f"{v}.0" if c in ("f_2", "f_30", "f_33", "is_clicked") and v else v for c, v in r.items())
        for r in rows
    ]
    _write_lines(path, [lines[0], *floats])
    code, out, err = run_cli(_ingest(root), capsys)
    assert code == 0, err
    train = pl.read_parquet(root / "work" / "features" / "raw" / "train.parquet")
    assert train["f_30"].dtype == pl.Int64 and train["f_33"].dtype == pl.Int8
    ids = [int(r["f_0"]) for r in rows]
    got = train.filter(pl.col("f_0").is_in(ids)).sort("f_0")
    expected = sorted(rows, key=lambda r: int(r["f_0"]))
    for col in ("f_2", "f_30", "f_33", "is_clicked"):
        assert got[col].to_list() == [int(r[col]) if r[col] else None for r in expected], col


def test_gzip_file_named_csv_is_read(pristine: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    before = pl.read_parquet(root / "work" / "features" / "raw" / "train.parquet")
    path = root / "data" / TRAIN
    path.write_bytes(gzip.compress(path.read_bytes()))
    code, _, err = run_cli(_ingest(root), capsys)
    assert code == 0, err
    assert pl.read_parquet(root / "work" / "features" / "raw" / "train.parquet").equals(before)


def test_stale_lock_and_leftovers_of_dead_processes_are_removed(pristine: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    features = root / "work" / "features"
    (features / ".raw.lock").write_text(f"{dead.pid} {socket.gethostname()}")
    leftover = features / f".raw.{dead.pid}.abcd1234.tmp"
    leftover.mkdir()
    (leftover / "train.parquet").write_bytes(b"x" * 1000)
    live = features / f".raw.{os.getpid()}.live.tmp"
    live.mkdir()
    code, _, err = run_cli(_ingest(root), capsys)
    assert code == 0, err
    assert not leftover.exists() and not (features / ".raw.lock").exists()
    assert live.exists()  # a live process's temporary folder is not touched


def test_outputs_follow_the_umask(pristine: Path, tmp_path: Path, capsys) -> None:
    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    old = os.umask(0o027)
    try:
        code, _, err = run_cli(_ingest(root), capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    raw = root / "work" / "features" / "raw"
    assert {oct(p.stat().st_mode & 0o777) for p in raw.iterdir()} == {oct(0o640)}
    assert oct(raw.stat().st_mode & 0o777) == oct(0o750)


def test_a_full_disk_is_one_line(pristine: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import errno

    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    before = _snapshot(root)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(root / "work" / "features" / "x"))

    monkeypatch.setattr(pl.DataFrame, "write_parquet", full)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)  # ingest streams its splits through pyarrow
    code, _, err = run_cli(_ingest(root), capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    assert _snapshot(root) == before
    assert [p.name for p in (root / "work" / "features").iterdir()] == ["raw"]


def test_a_disk_that_fills_while_a_feature_table_is_written_is_one_line(
    pristine: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    # the feature tables are encoded on a writer thread: its error reaches the command, once, and no table is left
    import errno

    root = tmp_path / "w"
    shutil.copytree(pristine, root)
    monkeypatch.chdir(root)
    calls = []

    def full(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the first row group is written, the second finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device", str(root / "work" / "features" / "x"))
        return original(self, *args, **kwargs)

    original = pq.ParquetWriter.write_table
    monkeypatch.setattr("gbmcvr.fe.pipeline.ROW_GROUP_ROWS", 500)
    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    code, _, err = run_cli(["features", "--workdir", str(root / "work")], capsys)
    assert code == 2 and "No space left on device" in err and "Traceback" not in err, err
    assert err.count("No space left on device") == 1
    built = root / "work" / "features" / "default"
    assert sorted(p.name for p in built.iterdir()) == ["vocab"]  # the vocabularies were complete; no plan is


def test_tune_workers_get_the_same_config_and_device_and_no_password(
    pristine: Path, tmp_path: Path, monkeypatch
) -> None:
    from gbmcvr import stages, tune
    from gbmcvr.config import load_config
    from gbmcvr.context import Context
    from gbmcvr.workdir import Workdir

    other = tmp_path / "other.toml"
    other.write_text("seed = 7\n")
    seen = {}

    def fake_spawn(args, workers, seed, storage, threads_per_worker=0):
        seen.update(args=args, workers=workers, seed=seed, storage=storage)

    monkeypatch.setattr(tune, "spawn_workers", fake_spawn)
    monkeypatch.setattr(tune, "load_study", lambda setup, fs: None)
    monkeypatch.setattr(tune, "fail_running", lambda study: 0)
    cfg = load_config(other, tmp_path / "gbmcvr.toml")
    url = "journal:" + str(tmp_path / "j.log")
    stages.tune(Context(Workdir(tmp_path / "work"), cfg, device="cpu"), "e2e", trials=2, storage=url, workers=2)
    args = seen["args"]
    assert args[args.index("--config") + 1] == str(other.resolve())
    assert args[args.index("--device") + 1] == "cpu"
    assert "--storage" not in args and url not in args
    assert seen["storage"] == url and seen["seed"] == 7


def test_redact_hides_only_the_password() -> None:
    from gbmcvr.tune import redact, scrub

    assert redact("postgresql://ann:pw@db.example:5432/optuna") == "postgresql://ann:***@db.example:5432/optuna"
    assert redact("sqlite:///models/optuna.db") == "sqlite:///models/optuna.db"
    assert scrub("could not connect as ann:pw", "postgresql://ann:pw@h/d") == "could not connect as ann:***"
