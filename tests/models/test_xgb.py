"""The XGBoost kind: follows the kind protocol, trains on the feature tables, early-stops, reloads to the same
predictions, is deterministic with the seed, builds the same model from row-batch blocks as from the whole
frame, tunes, refuses unknown keys, and enters ensembles through the same paths as the other kinds."""

from __future__ import annotations

import copy
import json
from dataclasses import fields, replace

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from gbmcvr import metrics, stages
from gbmcvr.config import config_from_dict
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.models import xgb as xgb_kind
from gbmcvr.space import parse_space
from gbmcvr.tables import FeatureTables, load_tables
from gbmcvr.workdir import Workdir
from tests.factories import run_cli, with_section

XGB = {
    "num_boost_round": 200,
    "learning_rate": 0.15,
    "max_depth": 4,
    "early_stopping_rounds": 20,
    "log_every": 0,
    "threads": 2,
}


@pytest.fixture(scope="module")
def xgb_work(small_work, tmp_path_factory):
    wd, _, cfg = small_work
    own = Workdir(tmp_path_factory.mktemp("xgb"))
    (own.root / "features").symlink_to(wd.features)
    cfg = with_section(with_section(cfg, "xgb", XGB), "gbm", {"num_boost_round": 60, "log_every": 0})
    ctx = Context(own, cfg)
    return ctx, stages.train(ctx, "xgb")


def test_follows_the_kind_protocol():
    kind = registry.get("xgb")
    assert "xgb" in registry.names() and registry.sections()["xgb"] is kind
    assert registry.target_kind("xgb") is kind and kind.refit_setting(None) is False
    assert kind.parse_section({}, "t") == xgb_kind.XgbConfig()
    dims = parse_space(kind.default_space("xgb"), "[tune.xgb]")
    assert {d.name for d in dims} <= {f.name for f in fields(xgb_kind.XgbConfig)}
    for method in ("parse_section", "refit_setting", "default_space", "input_key", "train", "load", "objective"):
        assert callable(getattr(kind, method))


def test_xgboost_knows_every_parameter_it_is_given(capfd):
    params = xgb_kind.booster_params(xgb_kind.XgbConfig(), seed=7, device="cpu", threads=1)
    data = xgb.DMatrix(np.arange(20, dtype=np.float32).reshape(10, 2), label=np.arange(10) % 2)
    booster = xgb.train(params, data, num_boost_round=1)
    assert "are not used" not in capfd.readouterr().err
    config = json.loads(booster.save_config())["learner"]
    tree = config["gradient_booster"]["tree_train_param"]
    assert tree["max_depth"] == "7" and float(tree["eta"]) == pytest.approx(0.05)
    assert config["generic_param"]["seed"] == "7" and config["generic_param"]["nthread"] == "1"


def test_trains_early_stops_and_beats_the_prior(xgb_work):
    ctx, run = xgb_work
    tables = load_tables(ctx.wd.features, "default", "validate")
    y = tables.splits["valid"][tables.install_label].to_numpy()
    prior = metrics.log_loss(y, np.full(len(y), tables.base_rate()))
    assert run.metrics["valid"]["p"]["logloss"] < prior - 0.01
    # early stopping from XGBoost's own valid history: the best is its minimum, training ended patience later
    history = run.model.history
    best = run.params["best_iteration"]
    assert best == int(np.argmin(history)) + 1
    assert len(history) == best + XGB["early_stopping_rounds"] < XGB["num_boost_round"]
    # the saved model keeps exactly the best rounds, and its valid log loss is the history's minimum
    loaded = registry.get("xgb").load(ctx.wd.run("xgb"))
    assert loaded.booster.num_boosted_rounds() == best
    assert run.metrics["valid"]["p"]["logloss"] == pytest.approx(min(history), abs=1e-5)
    meta = json.loads((ctx.wd.run("xgb") / "run.json").read_text())
    assert meta["kind"] == "xgb" and meta["input_key"] == stages.model_input_key(ctx, "xgb")
    for name in ("model.ubj", "importance.csv", "importance.png", "params.json", "metrics.json"):
        assert (ctx.wd.run("xgb") / name).is_file()
    importance = pl.read_csv(ctx.wd.run("xgb") / "importance.csv")
    assert importance.height == len(tables.features()) and importance["gain"].max() > 0
    assert run.params["device"] == "cpu" and run.params["xgb"]["max_depth"] == XGB["max_depth"]


def test_reloaded_model_reproduces_the_prediction_table(xgb_work):
    ctx, _ = xgb_work
    saved = pl.read_parquet(ctx.wd.run("xgb") / "preds.parquet")
    assert saved.columns == ["row_id", "split", "p"]
    tables = load_tables(ctx.wd.features, "default", "validate")
    for split in ("valid", "test"):
        again = registry.get("xgb").load(ctx.wd.run("xgb")).predict(tables.splits[split])["p"]
        assert np.array_equal(again, saved.filter(pl.col("split") == split)["p"].to_numpy())


def test_same_seed_same_predictions_other_seed_others(xgb_work):
    ctx, run = xgb_work
    again = stages.train(ctx, "xgb", run_id="xgb-again")
    assert np.array_equal(again.preds["p"].to_numpy(), run.preds["p"].to_numpy())
    other = stages.train(replace(ctx, cfg=replace(ctx.cfg, seed=ctx.cfg.seed + 1)), "xgb", run_id="xgb-other")
    assert not np.array_equal(other.preds["p"].to_numpy(), run.preds["p"].to_numpy())


def test_blocks_build_the_model_the_whole_frame_builds(small_work):
    wd, _, _ = small_work
    lean = load_tables(wd.features, "default", "validate", ("fit", "valid"), lean=("fit", "valid"))
    whole = load_tables(wd.features, "default", "validate", ("fit", "valid"))
    cfg = xgb_kind.xgb_config({**XGB, "num_boost_round": 15, "max_bin": 64}, "t")
    params = xgb_kind.booster_params(cfg, seed=3, device="cpu")
    blocks = xgb_kind.quantile_matrices(lean, cfg, 2, block_rows=4096)  # several row groups' worth of blocks
    assert blocks.train.num_row() == lean.splits["fit"].height and blocks.train.num_col() == len(blocks.features)

    def matrix(split: str, ref: xgb.QuantileDMatrix | None = None) -> xgb.QuantileDMatrix:
        frame = whole.splits[split]
        x = frame.select(pl.col(blocks.features).cast(pl.Float32)).to_numpy()
        y = frame[whole.install_label].to_numpy()
        return xgb.QuantileDMatrix(x, y, feature_names=blocks.features, max_bin=64, ref=ref, nthread=2)

    fit = matrix("fit")
    at_once = xgb_kind.XgbData(fit, matrix("valid", fit), blocks.features, [], 0, 64)
    model_blocks, history_blocks = xgb_kind._fit(blocks, params, cfg)
    model_whole, history_whole = xgb_kind._fit(at_once, params, cfg)
    assert history_blocks == history_whole
    assert model_blocks.get_dump(dump_format="json") == model_whole.get_dump(dump_format="json")


def test_native_categoricals_become_xgboost_categoricals(small_work):
    wd, _, _ = small_work
    tables = load_tables(wd.features, "default", "validate", ("fit", "valid"), lean=("fit", "valid"))
    manifest = copy.deepcopy(tables.manifest)
    native = [c["name"] for c in manifest["columns"] if c["role"] == "categorical"][:2]
    for column in manifest["columns"]:
        column["native"] = column["name"] in native
    tables = FeatureTables(tables.plan_dir, manifest, tables.splits)
    cfg = xgb_kind.xgb_config({**XGB, "num_boost_round": 10}, "t")
    data = xgb_kind.quantile_matrices(tables, cfg, 2)
    assert data.categorical == sorted(native)
    model, _ = xgb_kind._fit(data, xgb_kind.booster_params(cfg, seed=0, device="cpu"), cfg)
    types = dict(zip(model.feature_names, model.feature_types, strict=True))
    assert {n for n, t in types.items() if t == "c"} == set(native)
    frame = tables.frame("valid")
    booster = xgb_kind.Booster(model)
    assert np.array_equal(
        booster.predict(frame)["p"], booster.predict_batches(tables.batches("valid", data.features))["p"]
    )
    capped = xgb_kind.categorical_features(tables, data.features, replace(cfg, max_cat_cardinality=1))
    assert capped == []  # above the cap a native categorical stays a plain integer code


def test_enters_an_ensemble_beside_lightgbm(xgb_work):
    ctx, _ = xgb_work
    stages.train(ctx, "e2e", overwrite=True)
    done = stages.submit(ctx, ["e2e", "xgb"], overwrite=True)
    report = json.loads(done.tsv.with_suffix(".json").read_text())
    assert done.tsv.is_file() and len(done.result.weights) == 2 and "xgb" in json.dumps(report)


def test_tunes_and_trains_with_the_tuned_parameters(xgb_work, capsys):
    ctx, _ = xgb_work
    ctx.wd.config_file.write_text(
        "[xgb]\nnum_boost_round = 60\nlog_every = 0\nthreads = 2\n"
        '[tune.xgb]\nmax_depth = {type = "int", low = 2, high = 4}\nmax_bin = {type = "categorical", choices = [32]}\n'
    )
    code, _, err = run_cli(["tune", "xgb", "--trials", "2", "--workdir", ctx.wd.root], capsys)
    assert code == 0, err
    tuned = json.loads((ctx.wd.models / "tuned" / "xgb.json").read_text())
    assert 2 <= tuned["params"]["max_depth"] <= 4 and tuned["params"]["max_bin"] == 32
    code, _, err = run_cli(
        ["train", "xgb", "--params", "tuned", "--run-id", "xgb-tuned", "--workdir", ctx.wd.root], capsys
    )
    assert code == 0, err
    params = json.loads((ctx.wd.run("xgb-tuned") / "params.json").read_text())
    assert params["xgb"]["max_depth"] == tuned["params"]["max_depth"]
    logloss = json.loads((ctx.wd.run("xgb-tuned") / "metrics.json").read_text())["valid"]["p"]["logloss"]
    assert logloss == pytest.approx(tuned["value"], abs=1e-5)


def test_unknown_key_is_refused_through_the_cli(xgb_work, capsys):
    ctx, _ = xgb_work
    ctx.wd.config_file.write_text("[xgb]\nmax_dpeth = 3\n")
    code, _, err = run_cli(["train", "xgb", "--run-id", "xgb-typo", "--workdir", ctx.wd.root], capsys)
    assert code == 2 and "unknown key 'max_dpeth' (did you mean 'max_depth'?)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_config_device_and_options_are_user_errors(xgb_work, monkeypatch):
    ctx, _ = xgb_work
    with pytest.raises(UserError, match=r"\[xgb\]: unknown key 'colsample_bytre' \(did you mean 'colsample_bytree'"):
        config_from_dict({"xgb": {"colsample_bytre": 0.5}}, "t")
    with pytest.raises(UserError, match=r"XGBoost's 'eta' is set by learning_rate here"):
        config_from_dict({"xgb": {"eta": 0.1}}, "t")
    with pytest.raises(UserError, match=r"\[xgb\]: subsample must be in \(0, 1\]"):
        config_from_dict({"xgb": {"subsample": 0}}, "t")
    with pytest.raises(UserError, match=r"\[xgb\]: device must be one of cpu, cuda, auto"):
        config_from_dict({"xgb": {"device": "gpu"}}, "t")
    with pytest.raises(UserError, match="--refit, --dask and --ddp"):
        stages.train(ctx, "xgb", run_id="xgb-refit", refit=True)
    monkeypatch.setattr(xgb_kind, "cuda_devices", lambda: 0)
    assert xgb_kind.resolve_device("auto") == "cpu" and xgb_kind.resolve_device("cpu") == "cpu"
    with pytest.raises(UserError, match='device = "cuda" but no CUDA GPU is visible'):
        xgb_kind.resolve_device("cuda")
    monkeypatch.setattr(xgb_kind, "cuda_devices", lambda: 1)
    assert xgb_kind.resolve_device("auto") == "cuda"


def test_feature_names_xgboost_refuses_are_user_errors(small_work):
    wd, _, _ = small_work
    tables = load_tables(wd.features, "default", "validate", ("fit", "valid"), lean=("fit", "valid"))
    manifest = copy.deepcopy(tables.manifest)
    numeric = next(c for c in manifest["columns"] if c["role"] == "numeric")
    numeric["name"] = "price[usd]"
    tables = FeatureTables(tables.plan_dir, manifest, tables.splits)
    with pytest.raises(UserError, match=r"rename column 'price\[usd\]' in the data"):
        xgb_kind.quantile_matrices(tables, xgb_kind.XgbConfig(), 1)
