import json

import numpy as np
import polars as pl
import pytest
import torch

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import load_profile
from gbmcvr.data.synth_multi import write_synth_multi
from gbmcvr.deep.params import KamlConfig, mtdm_config, mtdm_kaml_config
from gbmcvr.errors import UserError
from tests.factories import run_cli

NAMES = ["act_1", "act_2", "act_3"]
KAML_TOML = """
[mtdm]
epochs = 2
batch_size = 512
embedding_dim = 4
expert_hidden = [16]
tower_hidden = [8]

[mtdm.kaml]
mask = "adm"
alpha = [1, 1, 1]
window_days = 3
hke = true
rlu_gamma = 0.8
rlu_beta = [1.0, 0.5, 0.5]
dynamic_average = true
action_weights = [1.0, 2.0, 2.0]
"""


@pytest.fixture(scope="module")
def multi_workdir(tmp_path_factory):
    """Tiny multi-action data (3 actions) ingested with its written profile, and a config with `[mtdm.kaml]`."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("kaml_run")
    write_synth_multi(root / "data", scale=0.004, seed=2, actions=3)
    wd = root / "wd"
    wd.mkdir()
    profile = root / "data" / "profile.toml"
    (wd / "gbmcvr.toml").write_text(f'profile = "{profile}"\ndata = "{root / "data"}"\n{KAML_TOML}')
    ingest(root / "data", load_profile(profile), wd / "features" / "raw")
    return wd


def test_train_mtdm_on_several_actions_writes_a_kaml_run(multi_workdir, capsys):
    wd = multi_workdir
    code, _, err = run_cli(["features", "--workdir", wd], capsys)
    assert code == 0, err
    code, out, err = run_cli(["train", "mtdm", "--device", "cpu", "--workdir", wd], capsys)
    assert code == 0, err
    assert "act_1 AUC / LL" in out
    run = wd / "models" / "mtdm"
    preds = pl.read_parquet(run / "preds.parquet")
    assert preds.columns == ["row_id", "split", "p", *[f"p_{c}" for c in NAMES]]
    assert set(preds["split"]) == {"valid", "test"}
    # p is the probability of each row's own target action
    raw = pl.concat(
        [
            pl.read_parquet(wd / "features" / "raw" / f, columns=["row_id", "target_action"])
            for f in ("train.parquet", "test.parquet")
        ]
    )
    joined = preds.join(raw, on="row_id")
    own = joined.select(
        pl.coalesce([pl.when(pl.col("target_action") == j + 1).then(f"p_{c}") for j, c in enumerate(NAMES)])
    )
    assert np.allclose(joined["p"].to_numpy(), own.to_series().to_numpy())
    assert ((preds["p"] > 0) & (preds["p"] < 1)).all()
    metrics = json.loads((run / "metrics.json").read_text())
    actions = metrics["valid"]["actions"]
    assert set(actions) <= set(NAMES) and "act_1" in actions
    for a in actions.values():
        assert 0.0 <= a["auc"] <= 1.0 and a["logloss"] > 0 and a["rows"] > 0
    n = sum(a["rows"] for a in actions.values())
    mean_ll = sum(a["logloss"] * a["rows"] for a in actions.values()) / n
    assert metrics["valid"]["weighted"]["logloss"] == pytest.approx(mean_ll)
    run_meta = json.loads((run / "run.json").read_text())
    assert run_meta["kind"] == "mtdm" and run_meta["kaml"] is True
    conf = json.loads((run / "config.json").read_text())
    assert conf["kaml"]["mask"] == "adm" and conf["kaml"]["hke"] and conf["kaml"]["mtdm"]["epochs"] == 2
    assert metrics["mask_coverage"]["act_3"] >= 0  # ADM coverage recorded per action
    code, _, err = run_cli(["submit", "--runs", "mtdm", "--workdir", wd], capsys)
    assert code == 2 and "KAML run" in err and "cannot enter a submission" in err


def test_unknown_or_mistyped_kaml_key_is_exit_2(multi_workdir, tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    text = (multi_workdir / "gbmcvr.toml").read_text()
    bad.write_text(text.replace("hke = true", "hke = true\nmaks = 'adm'"))
    code, _, err = run_cli(["train", "mtdm", "--config", bad, "--workdir", multi_workdir], capsys)
    assert code == 2 and "unknown key 'maks'" in err
    bad.write_text(text.replace("window_days = 3", "window_days = 'three'"))
    code, _, err = run_cli(["train", "mtdm", "--config", bad, "--workdir", multi_workdir], capsys)
    assert code == 2 and "'window_days' must be an integer" in err
    bad.write_text(text.replace("alpha = [1, 1, 1]", "alpha = [1, 1]"))
    code, _, err = run_cli(["train", "mtdm", "--config", bad, "--workdir", multi_workdir, "--run-id", "x"], capsys)
    assert code == 2 and "alpha has 2 values for 3" in err


def test_kaml_table_parses_defaults_off_and_is_refused_on_one_conversion(tmp_path, capsys):
    cfg = mtdm_kaml_config({"epochs": 3}, "[mtdm]")
    assert cfg == KamlConfig(mtdm_config({"epochs": 3}, "[mtdm]"))
    assert (cfg.mask, cfg.hke, cfg.rlu_gamma, cfg.dynamic_average) == ("none", False, 1.0, False)
    # the MTDM config of one conversion is the same with or without the table
    assert mtdm_config({"epochs": 3, "kaml": {"hke": True}}, "[mtdm]") == mtdm_config({"epochs": 3}, "[mtdm]")
    with pytest.raises(UserError, match="mask = 'base' or 'adm'"):
        mtdm_kaml_config({"kaml": {"rlu_gamma": 0.5}}, "[mtdm]")
    with pytest.raises(UserError, match="must be a table"):
        mtdm_config({"kaml": 3}, "[mtdm]")
    (tmp_path / "gbmcvr.toml").write_text("[mtdm.kaml]\nhke = true\n")
    code, _, err = run_cli(["train", "mtdm", "--workdir", tmp_path], capsys)
    assert code == 2 and "several conversions" in err
