import json
from pathlib import Path

import polars as pl

from gbmcvr.config import load_config
from gbmcvr.context import Context
from gbmcvr.data.synth import write_synth
from gbmcvr.pipeline import run_pipeline
from gbmcvr.workdir import Workdir
from tests.factories import run_cli

CONFIG = """
data = "{data}"
models = ["e2e", "ts"]
[gbm]
num_boost_round = 60
early_stopping_rounds = 10
log_every = 0
[gbm.e2e]
learning_rate = {lr}
[submit]
weights = "0.5,0.5"
name = "sub"
"""


def test_run_skips_current_steps(tmp_path):
    data = tmp_path / "data"
    write_synth(data, 0.004, 1)
    wd = Workdir(tmp_path / "w")
    wd.root.mkdir()
    wd.config_file.write_text(CONFIG.format(data=data, lr=0.1))
    first = run_pipeline(Context(wd, load_config(None, wd.config_file)))
    assert set(first.steps.values()) == {"done"}
    assert (wd.submissions / "sub.tsv").is_file()
    second = run_pipeline(Context(wd, load_config(None, wd.config_file)))
    assert second.steps["ingest"] == "current" and second.steps["features/validate"] == "current"
    assert second.steps["train e2e"] == "current" and second.steps["train ts"] == "current"
    wd.config_file.write_text(CONFIG.format(data=data, lr=0.2))
    third = run_pipeline(Context(wd, load_config(None, wd.config_file)))
    assert third.steps["train e2e"] == "done" and third.steps["train ts"] == "current"


def test_demo_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(["demo", "--scale", "0.004", "--workdir", tmp_path / "demo"], capsys)
    assert code == 0, err
    assert "| ensemble |" in out and "truth log loss" in out and "| mtdm |" in out
    assert (tmp_path / "demo" / "submissions" / "demo.tsv").is_file()
    assert (tmp_path / "demo" / "reports" / "analyze" / "drift.png").is_file()


def test_init_writes_loadable_config(tmp_path, capsys):
    assert run_cli(["init", "--workdir", tmp_path], capsys)[0] == 0
    cfg = load_config(None, tmp_path / "gbmcvr.toml")
    assert cfg.profile == "sharechat2023" and cfg.models == ("e2e", "ts")
    code, _, err = run_cli(["init", "--workdir", tmp_path], capsys)
    assert code == 2 and "exists" in err


def test_unknown_config_key(tmp_path, capsys):
    (tmp_path / "gbmcvr.toml").write_text("sed = 3\n")
    code, _, err = run_cli(["features", "--workdir", tmp_path], capsys)
    assert code == 2 and "unknown key 'sed'" in err


AUTO_CONFIG = """
data = "{data}"
models = ["e2e"]
[gbm]
num_boost_round = 40
early_stopping_rounds = 10
log_every = 0
refit = "auto"
[submit]
calibration = "auto"
weights = "auto"
name = "auto"
"""


def test_run_chooses_on_the_backtest(tmp_path):
    data = tmp_path / "data"
    write_synth(data, 0.004, 2)
    wd = Workdir(tmp_path / "w")
    wd.root.mkdir()
    wd.config_file.write_text(AUTO_CONFIG.format(data=data))
    result = run_pipeline(Context(wd, load_config(None, wd.config_file)), truth=data)
    steps = result.steps
    assert steps["train e2e (backtest)"] == "done" and steps["refit e2e"] in ("yes", "no")
    assert "p_without_refit" in pl.read_parquet(wd.run("e2e", "backtest") / "preds.parquet").columns
    report = json.loads((wd.submissions / "auto.json").read_text())
    rows = report["backtest"]["rows"]
    assert len(report["backtest"]["days"]) == 3 and steps["train e2e (backtest-3)"] == "done"
    assert all(len(r["per_day"]) == 3 for r in rows)
    simplest = rows[0]
    pick = (report["backtest"]["calibration"], report["backtest"]["weights"])
    chosen = next(r for r in rows if (r["calibration"], r["weights"]) == pick)
    if chosen is simplest:
        assert simplest["gap"] <= 2 * simplest["gap_se"]
    else:
        assert chosen["logloss"] == min(r["logloss"] for r in rows) and simplest["gap"] > 2 * simplest["gap_se"]
    evidence = report["refit_evidence"]["e2e"]
    assert evidence["refit"] == (steps["refit e2e"] == "yes") == (evidence["gain"] > 2 * evidence["se"])
    assert sorted(evidence["per_day"]) == sorted(str(d) for d in report["backtest"]["days"])  # the same rehearsal days
    assert json.loads((wd.run("e2e") / "run.json").read_text())["refit"] == (steps["refit e2e"] == "yes")
    md = (wd.submissions / "auto.md").read_text()
    assert "## Backtest" in md and "## Refit" in md and (wd.submissions / "auto_rates.png").is_file()
    bins = report["backtest"]["reliability"]
    counts = [b["rows"] for b in bins]
    assert len(bins) == 10 and max(counts) - min(counts) <= 1
    assert all(0 <= b["rate"] <= 1 and 0 < b["mean_p"] < 1 for b in bins)
    assert (wd.submissions / "auto_backtest_reliability.png").stat().st_size > 0
    again = run_pipeline(Context(wd, load_config(None, wd.config_file)), truth=data).steps
    assert again["train e2e (backtest)"] == "current" and again["train e2e"] == "current"


def test_a_manual_ingest_with_a_relative_path_is_current_for_run(tmp_path, capsys, monkeypatch):
    """`gbmcvr ingest data` records the paths as given; `run` resolves them before comparing."""
    from gbmcvr.pipeline import _raw_is_current
    from tests.factories import run_cli

    monkeypatch.chdir(tmp_path)
    write_synth(tmp_path / "data", 0.001, 1)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "gbmcvr.toml").write_text('data = "../data"\n')
    code, _, err = run_cli(["ingest", "data", "--workdir", "w"], capsys)
    assert code == 0, err
    cfg = load_config(None, Path("w") / "gbmcvr.toml")
    assert _raw_is_current(Context(Workdir(Path("w")), cfg), Path(cfg.data))
