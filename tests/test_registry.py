"""A fourth model kind registered from outside the package trains, predicts, tunes and ensembles through the
same paths as the built-in kinds: the stages, the CLI and `gbmcvr run` ask the registry, never a kind's name."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl
import pytest

from gbmcvr import metrics, stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.models.base import TrainedRun, TrainOptions
from gbmcvr.runs import input_key, prediction_table, read_run_meta
from gbmcvr.tables import load_tables
from gbmcvr.tomlfile import typed_fields
from gbmcvr.workdir import Workdir
from tests.factories import run_cli


@dataclass(frozen=True)
class FakeConfig:
    shift: float = 0.0  # added to the fit window's install rate


class Constant:
    """Predicts one probability for every row."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        return {"p": np.full(frame.height, self.p)}


class FakeKind:
    """The install rate of the fit window plus a tunable shift: the smallest model a kind can be."""

    name = "fake"
    section = "fake"
    tune_targets = ("fake",)

    def parse_section(self, raw: dict[str, Any], where: str) -> FakeConfig:
        return FakeConfig(**typed_fields(FakeConfig, raw, where))

    def refit_setting(self, ctx: Context) -> bool | str:
        return False

    def default_space(self, target: str) -> dict[str, dict[str, Any]]:
        return {"shift": {"type": "float", "low": -0.05, "high": 0.05}}

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        return input_key(self.name, manifest["config_hash"], ctx.cfg.section(self.section).shift)

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan)
        rate = tables.base_rate()
        p = rate + ctx.cfg.section(self.section).shift
        ids = {s: tables.splits[s][tables.id_column].to_numpy() for s in ("valid", "test")}
        preds = prediction_table(ids, {s: Constant(p).predict(tables.splits[s]) for s in ids})
        y = tables.splits["valid"][tables.install_label].to_numpy()
        return TrainedRun(
            kind=self.name,
            preds=preds,
            metrics={"base_rate": rate, "valid": {"p": metrics.report(y, np.full(len(y), p), rate)}},
            params={"p": p},
            stages=[self.name],
            input_key=self.input_key(ctx, tables.manifest, opts),
            save=partial(_save, p=p),
        )

    def load(self, run_dir: Path) -> Constant:
        return Constant(json.loads((Path(run_dir) / "model.json").read_text())["p"])

    def objective(self, ctx, target, space, seed, threads):
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate")
        y = tables.splits["valid"][tables.install_label].to_numpy()

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            shift = space[0].suggest(trial)
            p = np.full(len(y), tables.base_rate() + shift)
            return metrics.log_loss(y, p), {"params": {"shift": shift}, "best_iteration": 0}

        return fn


def _save(folder: Path, p: float) -> None:
    (folder / "model.json").write_text(json.dumps({"p": p}))


@pytest.fixture
def fake(monkeypatch):
    monkeypatch.setitem(registry.KINDS, "fake", FakeKind())


@pytest.fixture
def work(small_work, tmp_path):
    wd, _, _ = small_work
    own = Workdir(tmp_path / "w")
    own.root.mkdir()
    (own.root / "features").symlink_to(wd.features)
    return own


def test_fake_kind_trains_predicts_and_ensembles(fake, work, small_work):
    cfg = config_from_dict(
        {"gbm": {"num_boost_round": 30, "log_every": 0}, "fake": {"shift": 0.01}, "submit": {"name": "both"}}, "t"
    )
    ctx = Context(work, cfg)
    run = stages.train(ctx, "fake")
    assert read_run_meta(work.run("fake"))["kind"] == "fake"
    saved = pl.read_parquet(work.run("fake") / "preds.parquet")
    valid = load_tables(small_work[0].features, "default", "validate").splits["valid"]
    loaded = registry.get("fake").load(work.run("fake")).predict(valid)["p"]
    assert np.array_equal(loaded, saved.filter(pl.col("split") == "valid")["p"].to_numpy())
    assert run.params["p"] == pytest.approx(run.metrics["base_rate"] + 0.01)
    stages.train(ctx, "e2e")
    done = stages.submit(ctx, ["e2e", "fake"], overwrite=True)
    assert done.tsv.is_file() and len(done.result.weights) == 2
    key = stages.model_input_key(ctx, "fake")
    assert json.loads((work.run("fake") / "run.json").read_text())["input_key"] == key


def test_fake_kind_through_the_cli_tune_and_config(fake, work, capsys):
    work.config_file.write_text(
        'models = ["fake"]\n[fake]\nshift = 0.02\n[tune.fake]\nshift = {type = "float", low = -0.01, high = 0.01}\n'
    )
    code, out, err = run_cli(["train", "fake", "--workdir", work.root], capsys)
    assert code == 0, err
    assert "fake: valid log loss" in out
    code, out, err = run_cli(["tune", "fake", "--trials", "3", "--workdir", work.root], capsys)
    assert code == 0, err
    tuned = json.loads((work.models / "tuned" / "fake.json").read_text())
    assert -0.01 <= tuned["params"]["shift"] <= 0.01
    work.config_file.write_text("[fake]\nshift = 'a lot'\n")
    code, _, err = run_cli(["train", "fake", "--run-id", "x", "--workdir", work.root], capsys)
    assert code == 2 and "'shift' must be a number" in err


def test_unknown_kind_and_tune_keys_are_errors():
    with pytest.raises(UserError, match="unknown model 'nope' in models"):
        config_from_dict({"models": ["e2e", "nope"]}, "t")
    with pytest.raises(UserError, match=r"\[tune\]: unknown key 'e2e_typo'"):
        config_from_dict({"tune": {"e2e_typo": {}}}, "t")
    with pytest.raises(UserError, match="unknown model 'nope'"):
        registry.get("nope")
