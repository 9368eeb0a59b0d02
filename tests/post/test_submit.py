import json

import numpy as np
import polars as pl
import pytest

from gbmcvr.workdir import Workdir
from tests.factories import run_cli


def fake_runs(root, n_valid=300, n_test=200, seed=0):
    """A work directory with a raw store and two prediction-only runs (no training needed)."""
    rng = np.random.default_rng(seed)
    wd = Workdir(root)
    wd.raw.mkdir(parents=True)
    valid_ids = np.arange(1000, 1000 + n_valid)
    test_ids = np.arange(5000, 5000 + n_test)
    true = rng.beta(2, 8, n_valid)
    y = (rng.random(n_valid) < true).astype(np.int8)
    pl.DataFrame({"f_0": valid_ids, "f_1": 66, "is_clicked": y, "is_installed": y}).write_parquet(
        wd.raw / "train.parquet"
    )
    pl.DataFrame({"f_0": test_ids, "f_1": 67}).write_parquet(wd.raw / "test.parquet")
    for name, noise in (("a", 0.05), ("b", 0.1)):
        run = wd.run(name)
        run.mkdir(parents=True)
        pv = np.clip(true + rng.normal(0, noise, n_valid), 0.01, 0.99)
        pt = rng.uniform(0.01, 0.6, n_test)
        preds = pl.concat(
            [
                pl.DataFrame({"row_id": valid_ids, "split": "valid", "p": pv}),
                pl.DataFrame({"row_id": test_ids, "split": "test", "p": pt}),
            ]
        )
        preds.write_parquet(run / "preds.parquet")
        (run / "run.json").write_text(json.dumps({"kind": "e2e"}))
        (run / "metrics.json").write_text(json.dumps({"base_rate": 0.2}))
    return wd


def test_submit_writes_validated_files(tmp_path, capsys):
    wd = fake_runs(tmp_path)
    code, out, err = run_cli(
        [
            "submit",
            "--runs",
            "a b",
            "--calibration",
            "isotonic",
            "--weights",
            "simplex",
            "--name",
            "s1",
            "--workdir",
            tmp_path,
        ],
        capsys,
    )
    assert code == 0, err
    for suffix in (".tsv", ".json", ".md", "_reliability.png", "_calibration.json"):
        assert (wd.submissions / f"s1{suffix}").is_file()
    frame = pl.read_csv(wd.submissions / "s1.tsv", separator="\t")
    assert frame.height == 200 and frame["RowId"].to_list() == list(range(5000, 5200))
    report = json.loads((wd.submissions / "s1.json").read_text())
    assert np.isclose(sum(report["weights"]), 1.0)
    assert [r["kind"] for r in report["table"]][:2] == ["raw", "isotonic"]
    assert "crossfit_logloss" in report["table"][-1]
    assert "| ensemble |" in out


def _fails(args, tmp_path, capsys, message):
    code, _, err = run_cli([*args, "--workdir", tmp_path], capsys)
    assert code == 2, err
    assert message in err, err
    return err


def test_bad_inputs(tmp_path, capsys):
    wd = fake_runs(tmp_path)
    _fails(["submit", "--runs", "a b", "--weights", "0.5,0.2,0.3"], tmp_path, capsys, "3 weights for 2 runs")
    _fails(["submit", "--runs", "a b", "--weights", "1,-1"], tmp_path, capsys, "non-negative")
    _fails(["submit", "--runs", "a", "--calibration", "magic"], tmp_path, capsys, "unknown calibration 'magic'")
    _fails(["submit", "--runs", "nope"], tmp_path, capsys, "not a run directory")
    assert not wd.submissions.exists() or not list(wd.submissions.iterdir())
    # a run predicting different test rows
    b = pl.read_parquet(wd.run("b") / "preds.parquet")
    b.filter(pl.col("row_id") != 5003).write_parquet(wd.run("b") / "preds.parquet")
    _fails(["submit", "--runs", "a b"], tmp_path, capsys, "runs 'a' and 'b' predict different test rows")
    # a run without valid predictions
    b.filter(pl.col("split") == "test").write_parquet(wd.run("b") / "preds.parquet")
    _fails(["submit", "--runs", "a b"], tmp_path, capsys, "run 'b' has no valid predictions")
    assert not wd.submissions.exists() or not list(wd.submissions.iterdir())


def test_existing_name_refused(tmp_path, capsys):
    fake_runs(tmp_path)
    assert run_cli(["submit", "--runs", "a", "--name", "x", "--workdir", tmp_path], capsys)[0] == 0
    before = (tmp_path / "submissions" / "x.tsv").read_bytes()
    _fails(["submit", "--runs", "a b", "--name", "x"], tmp_path, capsys, "submission exists")
    assert (tmp_path / "submissions" / "x.tsv").read_bytes() == before
    assert run_cli(["submit", "--runs", "a b", "--name", "x", "--overwrite", "--workdir", tmp_path], capsys)[0] == 0


@pytest.mark.parametrize("weights", ["0.5,0.5", "simplex"])
def test_fixed_and_fitted_weights(tmp_path, capsys, weights):
    fake_runs(tmp_path)
    assert run_cli(["submit", "--runs", "a b", "--weights", weights, "--workdir", tmp_path], capsys)[0] == 0
    report = json.loads((tmp_path / "submissions" / "submission.json").read_text())
    if weights != "simplex":
        assert report["weights"] == [0.5, 0.5]


def test_auto_needs_backtest_runs(tmp_path, capsys):
    fake_runs(tmp_path)
    _fails(["submit", "--runs", "a b", "--calibration", "auto"], tmp_path, capsys, "no backtest run for 'a'")
    _fails(["submit", "--runs", "a b", "--calibration", "trend+isotonic"], tmp_path, capsys, "unknown calibration")


def test_train_refuses_the_full_plan(tmp_path, capsys):
    _fails(["train", "e2e", "--plan", "full"], tmp_path, capsys, "cannot train on plan 'full'")
