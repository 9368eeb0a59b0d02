"""Small data factories for the tests: generated workdirs, tiny frames, CLI invocation."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from gbmcvr.cli import main
from gbmcvr.config import PipelineConfig, config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT, Profile
from gbmcvr.data.synth import write_synth
from gbmcvr.models import registry
from gbmcvr.stages import build_features
from gbmcvr.workdir import Workdir

TINY_SCALE = 0.01  # ~35k train rows


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """Run the gbmcvr CLI in-process; return (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["gbmcvr", *[str(a) for a in args]]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def make_workdir(
    root: Path,
    scale: float = TINY_SCALE,
    seed: int = 0,
    plans: tuple[str, ...] = ("validate", "full"),
    features: dict | None = None,
) -> tuple[Workdir, Path, PipelineConfig]:
    """Generate data, ingest it and build feature tables under `root`."""
    data = root / "data"
    write_synth(data, scale, seed)
    wd = Workdir(root / "work")
    ingest(data, SHARECHAT, wd.raw)
    raw = {
        "data": str(data),
        "seed": seed,
        "gbm": {"num_boost_round": 300, "early_stopping_rounds": 20, "log_every": 0},
    }
    cfg = config_from_dict({**raw, **({"features": features} if features is not None else {})}, "test config")
    for plan in plans:
        build_features(Context(wd, cfg), plan=plan)
    return wd, data, cfg


def config(**raw) -> PipelineConfig:
    """A config from TOML-like keyword tables (`gbm={...}`), parsed and checked as a gbmcvr.toml would be."""
    return config_from_dict(raw, "test config")


def with_section(cfg: PipelineConfig, name: str, table: dict) -> PipelineConfig:
    """The config with one kind's table (`gbm`, `mtdm`, ...) replaced, parsed as it would be from TOML."""
    kind = registry.sections()[name]
    return replace(cfg, sections={**cfg.sections, name: kind.parse_section(table, "test config")})


def tiny_profile(**changes) -> Profile:
    """A 4-categorical, 1-binary, 2-numerical profile with days 1-3 fit, 4 valid, 5 test."""
    from dataclasses import replace

    base = Profile(
        name="tiny",
        row_id="id",
        day="day",
        categorical=("a", "b", "c", "d"),
        binary=("e",),
        numerical=("x", "y"),
        click_label="click",
        install_label="install",
        base_values={"x": 0.5},
        fit_days=(1, 2, 3),
        valid_day=4,
        test_day=5,
    )
    return replace(base, **changes)


def tiny_raw(root: Path, rows_per_day: int = 60, seed: int = 1) -> tuple[Path, Profile]:
    """A raw store for the tiny profile written directly as Parquet (train days 1-4, test day 5)."""
    rng = np.random.default_rng(seed)
    profile = tiny_profile()
    days = np.repeat(np.arange(1, 6), rows_per_day)
    n = len(days)
    frame = pl.DataFrame(
        {
            "id": np.arange(100, 100 + n, dtype=np.int64),
            "day": days.astype(np.int64),
            "a": rng.integers(0, 4, n) * 1000 + 7,
            "b": rng.integers(0, 6, n) * 13,
            "c": rng.integers(0, 3, n),
            "d": rng.integers(0, 2, n),
            "e": rng.integers(0, 2, n).astype(np.int8),
            "x": rng.integers(0, 5, n) * 0.5,
            "y": rng.normal(size=n),
            "click": rng.integers(0, 2, n).astype(np.int8),
            "install": rng.integers(0, 2, n).astype(np.int8),
        }
    )
    raw = root / "features" / "raw"
    raw.mkdir(parents=True)
    frame.filter(pl.col("day") < 5).write_parquet(raw / "train.parquet")
    frame.filter(pl.col("day") == 5).drop("click", "install").write_parquet(raw / "test.parquet")
    (raw / "manifest.json").write_text(f'{{"fingerprint": "tiny-{seed}"}}')
    return raw, profile
