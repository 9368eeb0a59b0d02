"""The CatBoost kind: trains on the feature tables, early-stops, reloads to the same predictions, is
deterministic with the seed, tunes, and enters ensembles through the same paths as the other kinds."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from gbmcvr import metrics, stages
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir
from tests.factories import run_cli, with_section

CB = {"iterations": 200, "learning_rate": 0.15, "depth": 4, "early_stopping_rounds": 20, "log_every": 0, "threads": 2}


@pytest.fixture(scope="module")
def cb_work(small_work, tmp_path_factory):
    wd, _, cfg = small_work
    own = Workdir(tmp_path_factory.mktemp("cb"))
    (own.root / "features").symlink_to(wd.features)
    cfg = with_section(with_section(cfg, "cb", CB), "gbm", {"num_boost_round": 60, "log_every": 0})
    ctx = Context(own, cfg)
    return ctx, stages.train(ctx, "cb")


def test_trains_early_stops_and_beats_the_prior(cb_work):
    ctx, run = cb_work
    tables = load_tables(ctx.wd.features, "default", "validate")
    y = tables.splits["valid"][tables.install_label].to_numpy()
    prior = metrics.log_loss(y, np.full(len(y), tables.base_rate()))
    assert run.metrics["valid"]["p"]["logloss"] < prior - 0.01
    # early stopping from CatBoost's own valid history: the best is its minimum, training ended patience later
    history = run.model.model.get_evals_result()["validation"]["Logloss"]
    assert run.params["best_iteration"] == int(np.argmin(history)) + 1
    # the run's valid predictions are the best iteration's: their log loss is that minimum of CatBoost's history
    assert run.metrics["valid"]["p"]["logloss"] == pytest.approx(min(history), rel=1e-6)
    assert min(history) < history[-1]
    assert len(history) == run.params["best_iteration"] + CB["early_stopping_rounds"] < CB["iterations"]
    # the saved model keeps exactly the best iterations (use_best_model shrinks it)
    assert registry.get("cb").load(ctx.wd.run("cb")).model.tree_count_ == run.params["best_iteration"]
    meta = json.loads((ctx.wd.run("cb") / "run.json").read_text())
    assert meta["kind"] == "cb" and meta["input_key"] == stages.model_input_key(ctx, "cb")
    assert (ctx.wd.run("cb") / "model.cbm").is_file() and (ctx.wd.run("cb") / "importance.csv").is_file()
    assert (ctx.wd.run("cb") / "importance.png").stat().st_size > 0


def test_reloaded_model_reproduces_the_prediction_table(cb_work):
    ctx, _ = cb_work
    saved = pl.read_parquet(ctx.wd.run("cb") / "preds.parquet")
    tables = load_tables(ctx.wd.features, "default", "validate")
    for split in ("valid", "test"):
        again = registry.get("cb").load(ctx.wd.run("cb")).predict(tables.splits[split])["p"]
        assert np.array_equal(again, saved.filter(pl.col("split") == split)["p"].to_numpy())


def test_same_seed_same_predictions_other_seed_others(cb_work):
    ctx, run = cb_work
    again = stages.train(ctx, "cb", run_id="cb-again")
    assert np.array_equal(again.preds["p"].to_numpy(), run.preds["p"].to_numpy())
    from dataclasses import replace

    other = stages.train(replace(ctx, cfg=replace(ctx.cfg, seed=ctx.cfg.seed + 1)), "cb", run_id="cb-other")
    assert not np.array_equal(other.preds["p"].to_numpy(), run.preds["p"].to_numpy())


def test_enters_an_ensemble_beside_lightgbm(cb_work):
    ctx, _ = cb_work
    stages.train(ctx, "e2e")
    done = stages.submit(ctx, ["e2e", "cb"], overwrite=True)
    report = json.loads(done.tsv.with_suffix(".json").read_text())
    assert done.tsv.is_file() and len(done.result.weights) == 2 and "cb" in json.dumps(report)


def test_tunes_and_trains_with_the_tuned_parameters(cb_work, capsys):
    ctx, _ = cb_work
    ctx.wd.config_file.write_text(
        '[cb]\niterations = 60\nlog_every = 0\nthreads = 2\n[tune.cb]\ndepth = {type = "int", low = 2, high = 4}\n'
    )
    code, _, err = run_cli(["tune", "cb", "--trials", "2", "--workdir", ctx.wd.root], capsys)
    assert code == 0, err
    tuned = json.loads((ctx.wd.models / "tuned" / "cb.json").read_text())
    assert 2 <= tuned["params"]["depth"] <= 4
    code, out, err = run_cli(
        ["train", "cb", "--params", "tuned", "--run-id", "cb-tuned", "--workdir", ctx.wd.root], capsys
    )
    assert code == 0, err
    params = json.loads((ctx.wd.run("cb-tuned") / "params.json").read_text())
    assert params["cb"]["depth"] == tuned["params"]["depth"]
    assert (
        abs(json.loads((ctx.wd.run("cb-tuned") / "metrics.json").read_text())["valid"]["p"]["logloss"] - tuned["value"])
        < 1e-6
    )


def test_bad_config_and_options_are_user_errors(cb_work):
    ctx, _ = cb_work
    from gbmcvr.config import config_from_dict

    with pytest.raises(UserError, match=r"\[cb\]: depth must be at least 1"):
        config_from_dict({"cb": {"depth": 0}}, "t")
    with pytest.raises(UserError, match=r"\[cb\]: unknown CatBoost parameter 'depht' \(did you mean 'depth'\?\)"):
        config_from_dict({"cb": {"depht": 3}}, "t")
    with pytest.raises(UserError, match="--refit, --dask and --ddp"):
        stages.train(ctx, "cb", run_id="cb-refit", refit=True)
