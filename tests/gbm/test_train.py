import json

import numpy as np
import polars as pl
import pytest

from gbmcvr import metrics, stages
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.fe.spec import only_families
from gbmcvr.gbm.models import STAGES, stage_label, train_stage
from gbmcvr.gbm.params import gbm_config
from gbmcvr.gbm.train import load_run, train_gbm
from gbmcvr.models import registry
from gbmcvr.schema import LIKE
from gbmcvr.tables import load_tables
from tests.factories import run_cli, with_section


def e2e_params(wd, cfg) -> dict:
    return registry.get("e2e").params(Context(wd, cfg), None)


@pytest.fixture(scope="module")
def trained(small_work, tmp_path_factory):
    wd, _, cfg = small_work
    from gbmcvr.workdir import Workdir

    # a private models folder per module so the session workdir's features stay shared and untouched
    own = Workdir(tmp_path_factory.mktemp("gbm"))
    own.models.mkdir()
    (own.root / "features").symlink_to(wd.features)
    cfg = with_section(cfg, "gbm", {"num_boost_round": 300, "early_stopping_rounds": 20, "log_every": 0})
    runs = {kind: stages.train(Context(own, cfg), kind, refit=True).model for kind in ("e2e", "ts")}
    return own, cfg, runs


def test_stage_one_label_is_like_and_stage_two_sees_like_rows(small_work, trained):
    wd, _, _ = small_work
    tables = load_tables(wd.features, "default", "validate")
    fit = tables.splits["fit"]
    assert (stage_label(fit, STAGES["ts_like"], "is_installed") == fit[LIKE].to_numpy()).all()
    assert not (stage_label(fit, STAGES["ts_like"], "is_installed") == fit["is_installed"].to_numpy()).all()
    _, _, runs = trained
    ts = runs["ts"]
    assert ts.models["ts_install"].fit_rows == int(fit[LIKE].sum())
    assert ts.models["ts_like"].fit_rows == fit.height
    valid = tables.splits["valid"]
    p_like = ts.preds.filter(pl.col("split") == "valid")["p_like"].to_numpy()
    # stage 1 predicts like (~30 %), not install (~17 %)
    assert abs(p_like.mean() - valid[LIKE].mean()) < 0.03


def test_product_and_range(trained):
    _, _, runs = trained
    preds = runs["ts"].preds
    assert np.allclose(preds["p"].to_numpy(), (preds["p_like"] * preds["p_install_given_like"]).to_numpy())
    for run in runs.values():
        p = run.preds["p"].to_numpy()
        assert ((p > 0) & (p < 1)).all()
        assert set(run.preds["split"].unique().to_list()) == {"valid", "test"}


def test_save_load_round_trip(small_work, trained):
    wd, _, _ = small_work
    own, _, _ = trained
    tables = load_tables(wd.features, "default", "validate")
    full = load_tables(wd.features, "default", "full", ("fit", "test"))
    for kind in ("e2e", "ts"):
        saved = pl.read_parquet(own.run(kind) / "preds.parquet")
        loaded = load_run(own.run(kind))
        valid = loaded.predict(tables.splits["valid"])
        assert np.array_equal(valid["p"], saved.filter(pl.col("split") == "valid")["p"].to_numpy())
        test = loaded.predict(full.splits["test"], refit=True)
        assert np.array_equal(test["p"], saved.filter(pl.col("split") == "test")["p"].to_numpy())
        params = json.loads((own.run(kind) / "params.json").read_text())
        assert all("refit_iterations" in v and v["params"]["deterministic"] for v in params.values())
        assert (own.run(kind) / "importance.png").stat().st_size > 0
        m = json.loads((own.run(kind) / "metrics.json").read_text())
        assert {"logloss", "nce", "auc", "calibration_ratio"} <= set(m["valid"]["p"])


def test_same_seed_same_predictions(small_work):
    wd, _, cfg = small_work
    tables = load_tables(wd.features, "default", "validate")
    gcfg = gbm_config({"num_boost_round": 40, "log_every": 0}, "t")
    params = e2e_params(wd, cfg)
    a = train_gbm("e2e", tables, gcfg, params).preds["p"].to_numpy()
    b = train_gbm("e2e", tables, gcfg, params).preds["p"].to_numpy()
    assert np.array_equal(a, b)


def test_beats_prior_and_raw_columns(small_work, trained, tmp_path):
    wd, _, cfg = small_work
    from dataclasses import replace

    from gbmcvr.workdir import Workdir

    raw_wd = Workdir(tmp_path)
    (tmp_path / "features").mkdir()
    (tmp_path / "features" / "raw").symlink_to(wd.raw)
    raw_cfg = replace(cfg, features=only_families({"clean": {}}), feature_set="rawcols")
    stages.build_features(Context(raw_wd, raw_cfg), plan="validate")
    raw_tables = load_tables(raw_wd.features, "rawcols", "validate")
    # the raw columns as the files carry them: hashed categorical codes as plain numbers, no feature pipeline
    gcfg = replace(cfg.section("gbm"), max_cat_cardinality=0)
    raw_run = train_gbm("e2e", raw_tables, gcfg, e2e_params(wd, cfg))
    y = raw_tables.splits["valid"]["is_installed"].to_numpy()
    prior = metrics.log_loss(y, np.full(len(y), raw_tables.base_rate()))
    raw_ll = raw_run.metrics["valid"]["p"]["logloss"]
    _, _, runs = trained
    for kind, run in runs.items():
        ll = run.metrics["valid"]["p"]["logloss"]
        assert ll < prior - 0.02, (kind, ll, prior)
    # measured, see the issue note: on generated data the two-step model clearly beats the raw columns;
    # the end-to-end model with the default feature set only ties them (0.003 before the label-free families
    # joined the default set, 0.0021 after: on this small valid day, within its noise)
    assert runs["ts"].metrics["valid"]["p"]["logloss"] < raw_ll - 0.002


def test_missing_tables_message(tmp_path, capsys):
    code, _, err = run_cli(["train", "e2e", "--workdir", tmp_path], capsys)
    assert code == 2
    assert "no feature tables (build them with `gbmcvr features --set default --plan validate`)" in err


def test_params_file_unknown_key(small_work, trained, tmp_path, capsys):
    own, _, _ = trained
    bad = tmp_path / "p.json"
    bad.write_text('{"learning_rate": 0.1, "leaves": 3}')
    code, _, err = run_cli(["train", "e2e", "--params", bad, "--run-id", "x", "--workdir", own.root], capsys)
    assert code == 2 and "unknown LightGBM parameter 'leaves'" in err


def test_existing_run_refused(trained, capsys):
    own, _, _ = trained
    code, _, err = run_cli(["train", "e2e", "--workdir", own.root], capsys)
    assert code == 2 and "run exists (choose another --run-id or pass --overwrite)" in err


def test_constant_label_refused(small_work):
    wd, _, cfg = small_work
    tables = load_tables(wd.features, "default", "validate")
    tables.splits["fit"] = tables.splits["fit"].with_columns(pl.lit(0, dtype=pl.Int8).alias("is_installed"))
    with pytest.raises(UserError, match="stage e2e: the install label is constant"):
        train_stage(tables, STAGES["e2e"], e2e_params(wd, cfg)["e2e"], gbm_config({}, "t"), print)
