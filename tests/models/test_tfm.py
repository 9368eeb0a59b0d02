"""The TFM kind: writes the common run directory, reloads to the same predictions, is deterministic with the
seed, pre-trains on test-day features without reading a valid or test label, early-stops, tunes and ensembles."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import polars as pl
import pytest
import torch

from gbmcvr import stages
from gbmcvr.context import Context
from gbmcvr.deep.batches import fit_inputs, to_tensors
from gbmcvr.deep.tfm_model import corrupt, info_nce, train_tfm, train_tfm_run
from gbmcvr.deep.tfm_params import TfmConfig, tfm_config
from gbmcvr.deep.train import predict
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.space import parse_space
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir
from tests.factories import run_cli, with_section

TINY = {
    "epochs": 1,
    "batch_size": 4096,
    "d_token": 8,
    "layers": 1,
    "heads": 2,
    "tower_hidden": [8],
    "projection_dim": 8,
    "ssl_weight": 0.2,
    "pretrain_epochs": 1,
}
SMALL = tfm_config(TINY, "test")
CPU = torch.device("cpu")


def learnable(n: int = 1500, seed: int = 0):
    """Like depends on field a, install-given-like on field b: tensors of a problem the model can learn."""
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame({"a": rng.integers(0, 5, n), "b": rng.integers(0, 4, n), "x": rng.normal(size=n)})
    like = rng.random(n) < 1 / (1 + np.exp(-(frame["a"].to_numpy() - 2.0)))
    install = like & (rng.random(n) < np.where(frame["b"].to_numpy() >= 2, 0.8, 0.1))
    frame = frame.with_columns(like=pl.Series(like.astype(np.int8)), install=pl.Series(install.astype(np.int8)))
    spec = fit_inputs(frame, ["a", "b"], ["x"], "log1p_standard")
    return spec, to_tensors(frame, spec, "like", "install")


@pytest.fixture(scope="module")
def tfm_work(small_work, tmp_path_factory):
    wd, _, cfg = small_work
    own = Workdir(tmp_path_factory.mktemp("tfm"))
    (own.root / "features").symlink_to(wd.features)
    cfg = with_section(with_section(cfg, "tfm", TINY), "gbm", {"num_boost_round": 30, "log_every": 0})
    ctx = Context(own, cfg, device="cpu")
    return ctx, stages.train(ctx, "tfm")


def test_protocol_and_defaults():
    kind = registry.get("tfm")
    assert kind.section == "tfm" and registry.target_kind("tfm") is kind
    assert kind.parse_section({}, "[tfm]").config == TfmConfig()
    assert {d.name for d in parse_space(kind.default_space("tfm"), "[tune.tfm]")} >= {"learning_rate", "ssl_weight"}
    for dim in parse_space(kind.default_space("tfm"), "[tune.tfm]"):  # every choice of the space is a valid config
        for value in dim.choices or (dim.low, dim.high):
            tfm_config({dim.name: value}, "space")


def test_run_directory_and_reload_reproduce_the_predictions(tfm_work):
    ctx, run = tfm_work
    folder = ctx.wd.run("tfm")
    meta = json.loads((folder / "run.json").read_text())
    assert meta["kind"] == "tfm" and meta["input_key"] == stages.model_input_key(ctx, "tfm")
    saved = pl.read_parquet(folder / "preds.parquet")
    assert {"row_id", "split", "p", "p_ctr", "p_cvr", "p_ctcvr"} <= set(saved.columns)
    assert set(saved["split"]) == {"valid", "test"}
    assert torch.load(folder / "model.pt", weights_only=True)  # a plain state_dict, no pickle
    tables = load_tables(ctx.wd.features, "default", "validate")
    loaded = registry.get("tfm").load(folder)
    for split in ("valid", "test"):
        again = loaded.predict(tables.splits[split])["p"]
        assert np.array_equal(again, saved.filter(pl.col("split") == split)["p"].to_numpy())
    assert run.metrics["pretrain_history"][0]["rows"] == sum(f.height for f in tables.splits.values())
    assert run.metrics["history"][0]["train_ssl"] > 0 and run.metrics["best_epoch"] == 1


def test_enters_an_ensemble_beside_lightgbm(tfm_work):
    ctx, _ = tfm_work
    stages.train(ctx, "e2e")
    done = stages.submit(ctx, ["e2e", "tfm"], overwrite=True)
    assert done.tsv.is_file() and len(done.result.weights) == 2


def test_pretraining_reads_test_features_but_no_valid_or_test_label(tfm_work):
    ctx, run = tfm_work
    tables = load_tables(ctx.wd.features, "default", "validate", lean=("fit", "valid", "test"))
    rng = np.random.default_rng(5)
    for split, frame in tables.splits.items():
        labels = [c for c in (tables.install_label, "is_like", "is_clicked") if c in frame.columns]
        if split == "fit" or not labels:
            continue
        order = rng.permutation(frame.height)
        tables.splits[split] = frame.with_columns(frame.select(labels)[order])
    assert not tables.splits["valid"].equals(load_tables(ctx.wd.features, "default", "validate").splits["valid"])
    again = train_tfm_run(tables, replace(SMALL, ssl_weight=0.0), ctx.cfg.seed, "cpu")  # fine-tuning is after
    first = run.model.result.pretrained
    assert first.keys() == again.result.pretrained.keys()
    assert all(torch.equal(first[k], again.result.pretrained[k]) for k in first)


def test_same_seed_same_predictions_other_seed_others():
    spec, data = learnable()
    p = [predict(train_tfm(data, None, spec, SMALL, s, CPU, unlabeled=data).model, data, CPU)["p"] for s in (1, 1, 2)]
    assert np.array_equal(p[0], p[1]) and not np.array_equal(p[0], p[2])


def test_learns_and_early_stops_after_patience_epochs():
    spec, data = learnable()
    learned = train_tfm(data, data, spec, replace(SMALL, epochs=4, learning_rate=1e-2, pretrain_epochs=0), 0, CPU)
    assert learned.history[-1]["valid_logloss"] < learned.history[0]["valid_logloss"]
    frozen = replace(SMALL, epochs=10, patience=2, learning_rate=1e-12, pretrain_epochs=0)
    stuck = train_tfm(data, data, spec, frozen, 0, CPU)
    assert stuck.best_epoch == 1 and len(stuck.history) == 3


def test_views_swap_values_within_columns_and_infonce_prefers_aligned_pairs():
    torch.manual_seed(0)
    x = torch.arange(40).view(10, 4) * 10 + torch.arange(4)
    view = corrupt(x, 0.5)
    assert (view % 10 == torch.arange(4)).all() and not torch.equal(view, x)  # values stay in their column
    assert torch.equal(corrupt(x, 0.0), x)
    z = torch.randn(64, 8)
    assert info_nce(z, z + 0.01 * torch.randn(64, 8), 0.1) < info_nce(z, torch.randn(64, 8), 0.1)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"learning_rate": 0.0}, "learning_rate must be > 0"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"epochs": 0}, "epochs must be at least 1"),
        ({"d_token": 10, "heads": 4}, "must be a multiple of heads"),
        ({"corruption": 0.0, "pretrain_epochs": 1}, "needs corruption > 0"),
        ({"ctcvr_head": "mlp"}, "ctcvr_head must be one of"),
        ({"loss_weights": {"cvr": -1}}, "must be a number >= 0"),
    ],
)
def test_bad_values_are_refused(raw, message):
    with pytest.raises(UserError, match=message):
        tfm_config(raw, "[tfm]")


def test_unknown_key_is_refused_by_the_cli(tmp_path, capsys):
    (tmp_path / "gbmcvr.toml").write_text("[tfm]\nlayer = 2\n")
    code, _, err = run_cli(["train", "tfm", "--workdir", tmp_path], capsys)
    assert code == 2 and "[tfm]: unknown key 'layer'" in err


def test_tunes_and_trains_with_the_tuned_parameters(tfm_work, capsys):
    ctx, _ = tfm_work
    table = "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**TINY, "pretrain_epochs": 0, "ssl_weight": 0.0}.items())
    ctx.wd.config_file.write_text(f"[tfm]\n{table}" + '[tune.tfm]\ndropout = {type = "float", low = 0.0, high = 0.2}\n')
    code, _, err = run_cli(["tune", "tfm", "--trials", "1", "--device", "cpu", "--workdir", ctx.wd.root], capsys)
    assert code == 0, err
    tuned = json.loads((ctx.wd.models / "tuned" / "tfm.json").read_text())
    code, _, err = run_cli(
        ["train", "tfm", "--params", "tuned", "--run-id", "tfm-tuned", "--device", "cpu", "--workdir", ctx.wd.root],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((ctx.wd.run("tfm-tuned") / "metrics.json").read_text())
    assert metrics["valid"]["p"]["logloss"] == pytest.approx(tuned["value"], abs=1e-9)
