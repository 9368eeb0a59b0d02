"""MLflow tracking against a real local store (SQLite): skipped where the `mlflow` extra is not installed."""

from __future__ import annotations

import json

import pytest

from gbmcvr.tracking import resolve_uri, track_config
from tests.factories import make_workdir, run_cli


def test_track_table_is_checked_and_relative_sqlite_is_the_workdirs(tmp_path) -> None:
    from gbmcvr.errors import UserError

    assert track_config({}, "x").mlflow == ""
    with pytest.raises(UserError, match="tracking URI"):
        track_config({"mlflow": "mlruns"}, "[track]")
    with pytest.raises(UserError, match="unknown key 'uri'"):
        track_config({"uri": "x"}, "[track]")
    assert resolve_uri("sqlite:///m.db", tmp_path) == f"sqlite:///{tmp_path.resolve() / 'm.db'}"
    assert resolve_uri("http://h:5000", tmp_path) == "http://h:5000"


def test_a_training_is_logged_to_a_real_mlflow_store(tmp_path, capsys) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    wd, _, _ = make_workdir(tmp_path, scale=0.003, plans=("validate",))
    wd.config_file.write_text(
        '[gbm]\nnum_boost_round = 8\nearly_stopping_rounds = 3\nlog_every = 0\n[track]\nmlflow = "sqlite:///ml.db"\n'
    )
    code, _, err = run_cli(["train", "e2e", "--workdir", wd.root], capsys)
    assert code == 0, err
    assert "logged to MLflow" in err
    client = MlflowClient(f"sqlite:///{(wd.root / 'ml.db').resolve()}")
    experiment = client.get_experiment_by_name("gbmcvr")
    (found,) = client.search_runs([experiment.experiment_id])
    metrics = json.loads((wd.run("e2e") / "metrics.json").read_text())
    assert found.data.metrics["valid.p.logloss"] == pytest.approx(metrics["valid"]["p"]["logloss"])
    assert found.data.params["e2e.params.num_leaves"] == "63"
    assert found.data.tags["kind"] == "e2e"
    curve = client.get_metric_history(found.info.run_id, "curve.e2e")
    assert [m.value for m in curve] == pytest.approx(metrics["learning_curve"]["e2e"])
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"preds.parquet", "run.json", "model_e2e.txt"} <= artifacts


def test_tuning_trials_are_nested_runs(tmp_path, capsys) -> None:
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    wd, _, _ = make_workdir(tmp_path, scale=0.003, plans=("validate",))
    wd.config_file.write_text(
        '[gbm]\nnum_boost_round = 6\nearly_stopping_rounds = 3\nlog_every = 0\n[track]\nmlflow = "sqlite:///ml.db"\n'
    )
    code, _, err = run_cli(["tune", "e2e", "--trials", "2", "--pruner", "none", "--workdir", wd.root], capsys)
    assert code == 0, err
    assert "(2 of 2 finished)" in err
    client = MlflowClient(f"sqlite:///{(wd.root / 'ml.db').resolve()}")
    runs = client.search_runs([client.get_experiment_by_name("gbmcvr").experiment_id])
    parent = [r for r in runs if r.data.tags.get("role") == "study"]
    trials = [r for r in runs if "trial" in r.data.tags]
    assert len(parent) == 1 and len(trials) == 2
    assert {r.data.tags["mlflow.parentRunId"] for r in trials} == {parent[0].info.run_id}
    assert all("valid_logloss" in r.data.metrics for r in trials)
