"""LightGBM on a local Dask cluster: same run directory and prediction table, log loss close to a local run."""

from __future__ import annotations

from dataclasses import replace

import polars as pl
import pytest

from gbmcvr.errors import UserError
from gbmcvr.stages import train_gbm_stage
from gbmcvr.workdir import Workdir

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
    cfg = replace(cfg, gbm={"num_boost_round": 150, "early_stopping_rounds": 15, "log_every": 0})
    refit = kind == "e2e"
    local = train_gbm_stage(own, cfg, kind, "local")
    lines: list[str] = []
    address = cluster.scheduler_address
    on_dask = train_gbm_stage(own, cfg, kind, "dask", refit=refit, progress=lines.append, dask=address)
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
    first = on_dask.params[next(iter(on_dask.params))]
    assert 1 < first["best_iteration"] <= 150
    if refit:
        assert first["refit_rows"] > first["fit_rows"]


def test_unreachable_scheduler_is_a_user_error():
    from gbmcvr.gbm.dask_train import connect

    with pytest.raises(UserError, match="Dask scheduler"):
        connect("tcp://127.0.0.1:1", timeout="1s")
