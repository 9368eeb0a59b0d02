"""LightGBM on a local Dask cluster: same run directory and prediction table, log loss close to a local run."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from gbmcvr import metrics, stages
from gbmcvr.context import Context
from gbmcvr.errors import UserError
from gbmcvr.gbm.models import stage_label, stage_rows
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir
from tests.factories import with_section

distributed = pytest.importorskip("distributed")
pytest.importorskip("dask.dataframe")


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        yield lc


def _own_workdir(small_work, root) -> Workdir:
    wd, _, _ = small_work
    own = Workdir(root)
    own.models.mkdir(parents=True)
    (own.root / "features").symlink_to(wd.features)
    return own


@pytest.mark.parametrize("kind", ["e2e", "ts"])
def test_dask_run_matches_a_local_run(small_work, tmp_path, cluster, kind):
    _, _, cfg = small_work
    own = _own_workdir(small_work, tmp_path)
    cfg = with_section(cfg, "gbm", {"num_boost_round": 150, "early_stopping_rounds": 15, "log_every": 0})
    refit = kind == "e2e"
    local = stages.train(Context(own, cfg), kind, run_id="local").model
    lines: list[str] = []
    address = cluster.scheduler_address
    on_dask = stages.train(Context(own, cfg, lines.append), kind, run_id="dask", refit=refit, dask=address).model
    assert any("on Dask" in line for line in lines)
    for name in ("preds.parquet", "metrics.json", "params.json", "importance.csv", "run.json"):
        assert (own.run("dask") / name).is_file()
    for stage in local.models:
        assert (own.run("dask") / f"model_{stage}.txt").is_file()
        assert (own.run("dask") / f"model_{stage}_refit.txt").is_file() == refit
    a, b = pl.read_parquet(own.run("local") / "preds.parquet"), pl.read_parquet(own.run("dask") / "preds.parquet")
    assert a.columns == b.columns and a.select("row_id", "split").equals(b.select("row_id", "split"))
    loss_local = local.metrics["valid"]["p"]["logloss"]
    loss_dask = on_dask.metrics["valid"]["p"]["logloss"]
    assert abs(loss_dask - loss_local) < 0.02 * loss_local
    stage, first = next(iter(on_dask.params.items()))
    # early stopping against an independent learning curve: the valid log loss of the whole booster after each round
    model = on_dask.models[stage]
    tables = load_tables(own.features, "default", "validate")
    valid = stage_rows(tables.splits["valid"], model.stage)
    y, x = stage_label(valid, model.stage, tables.install_label), valid.select(model.features).to_numpy()
    rounds = model.booster.current_iteration()
    curve = [metrics.log_loss(y, model.booster.predict(x, num_iteration=k)) for k in range(1, rounds + 1)]
    assert first["best_iteration"] == int(np.argmin(curve)) + 1
    assert rounds == 150 or rounds - first["best_iteration"] >= 15  # stopped by the budget or by the patience
    # the saved model holds exactly the best iterations; the refit scales them by the rows it adds
    assert lgb.Booster(model_file=own.run("dask") / f"model_{stage}.txt").num_trees() == first["best_iteration"]
    if refit:
        assert first["refit_rows"] > first["fit_rows"]
        scaled = max(1, round(first["best_iteration"] * first["refit_rows"] / first["fit_rows"]))
        assert first["refit_iterations"] == scaled


def test_unreachable_scheduler_is_a_user_error():
    from gbmcvr.gbm.dask_train import connect

    with pytest.raises(UserError, match="Dask scheduler"):
        connect("tcp://127.0.0.1:1", timeout="1s")
