from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from gbmcvr import stages
from gbmcvr.context import Context
from gbmcvr.deep.batches import InputSpec, Tensors, fit_inputs, to_tensors
from gbmcvr.deep.losses import masked_bce, task_losses
from gbmcvr.deep.model import MTDM, product_logit
from gbmcvr.deep.params import MtdmConfig, mtdm_config
from gbmcvr.deep.run import load_mtdm_run, train_mtdm_run
from gbmcvr.deep.train import predict, resolve_device, train_mtdm
from gbmcvr.errors import UserError
from gbmcvr.tables import load_tables
from gbmcvr.workdir import Workdir
from tests.factories import run_cli, with_section

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SMALL = MtdmConfig(epochs=3, batch_size=256, embedding_dim=4, experts=2, expert_hidden=(16,), tower_hidden=(8,))


def learnable(n=3000, seed=0):
    """Like depends on field 0, install-given-like on field 1: a problem the model can learn."""
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame({"a": rng.integers(0, 5, n), "b": rng.integers(0, 4, n), "x": rng.normal(size=n)})
    p_like = 1 / (1 + np.exp(-(frame["a"].to_numpy() - 2.0)))
    like = rng.random(n) < p_like
    install = like & (rng.random(n) < np.where(frame["b"].to_numpy() >= 2, 0.8, 0.1))
    frame = frame.with_columns(like=pl.Series(like.astype(np.int8)), install=pl.Series(install.astype(np.int8)))
    spec = fit_inputs(frame, ["a", "b"], ["x"], "log1p_standard")
    return frame, spec, to_tensors(frame, spec, "like", "install")


def test_shapes_and_one_embedding_table():
    _, spec, data = learnable(100)
    model = MTDM(spec.embedding_rows, 2, 1, SMALL)
    out = model(data.cat[:7], data.num[:7])
    assert set(out) >= {"ctr", "cvr", "ctcvr", "product", "install"}
    assert all(v.shape == (7,) for v in out.values())
    assert sum(isinstance(m, torch.nn.Embedding) for m in model.modules()) == 1
    assert spec.offsets == [0, spec.sizes[0] + 1]


def test_unseen_and_oversized_values_use_the_reserved_row():
    frame, spec, _ = learnable(100)
    new = frame.head(3).with_columns(pl.Series("a", [999, -5, None]))
    t = to_tensors(new, spec, None, None)
    assert t.cat[:, 0].tolist() == [spec.sizes[0]] * 3
    model = MTDM(spec.embedding_rows, 2, 1, SMALL)
    assert predict(model, t, torch.device("cpu"))["p"].shape == (3,)


def test_cvr_loss_ignores_non_like_rows():
    logits = torch.randn(6, requires_grad=True)
    like = torch.tensor([1.0, 0, 1, 0, 0, 1])
    install = torch.tensor([1.0, 0, 0, 1, 0, 1])
    masked_bce(logits, install, like).backward()
    assert (logits.grad[like == 0] == 0).all() and (logits.grad[like == 1] != 0).all()
    full = torch.nn.functional.binary_cross_entropy_with_logits(logits[like == 1], install[like == 1])
    assert torch.isclose(masked_bce(logits, install, like), full)


def test_product_head_is_ctr_times_cvr():
    a, b = torch.randn(50) * 4, torch.randn(50) * 4
    assert torch.allclose(torch.sigmoid(product_logit(a, b)), torch.sigmoid(a) * torch.sigmoid(b), atol=1e-6)


def test_loss_decreases_and_same_seed_same_predictions():
    _, spec, data = learnable()
    cfg = replace(SMALL, epochs=6, learning_rate=1e-2)
    first = train_mtdm(data, None, spec, cfg, 3, torch.device("cpu"))
    losses = [h["train_total"] for h in first.history]
    assert losses[-1] < losses[0] * 0.9
    from gbmcvr.metrics import entropy

    assert first.history[-1]["train_ctr"] < entropy(float(data.like.mean())) - 0.05
    second = train_mtdm(data, None, spec, cfg, 3, torch.device("cpu"))
    p1 = predict(first.models[0], data, torch.device("cpu"))["p"]
    p2 = predict(second.models[0], data, torch.device("cpu"))["p"]
    assert np.array_equal(p1, p2)


@pytest.mark.parametrize(
    "variant",
    [
        {"bottom": "ple"},
        {"ctcvr_head": "tower"},
        {"ranking_gamma": 0.5},
        {"mutual_weight": 0.5, "mutual_bottom": "ple"},
    ],
)
def test_options_change_training_and_stay_probabilities(variant):
    _, spec, data = learnable()
    base = predict(train_mtdm(data, None, spec, SMALL, 1, torch.device("cpu")).models[0], data, torch.device("cpu"))[
        "p"
    ]
    res = train_mtdm(data, None, spec, replace(SMALL, **variant), 1, torch.device("cpu"))
    from gbmcvr.deep.train import ensemble_predict

    p = ensemble_predict(res.models, data, torch.device("cpu"))["p"]
    assert ((p > 0) & (p < 1)).all() and not np.allclose(p, base)
    assert len(res.models) == (2 if "mutual_weight" in variant else 1)


def test_distillation_loss_pulls_toward_teacher():
    _, spec, data = learnable()
    teacher = torch.full((len(data),), 0.5)
    logits = {k: torch.zeros(len(data)) for k in ("ctr", "cvr", "ctcvr", "install")}
    cfg = replace(SMALL, distill_weight=1.0, distill_run="t", distill_loss="mse")
    losses = task_losses(logits, data.like, data.install, cfg, teacher)
    assert float(losses["distill"]) == 0.0  # sigmoid(0) == 0.5 == teacher
    data.teacher = torch.full((len(data),), 0.9)
    res = train_mtdm(data, None, spec, replace(cfg, distill_weight=5.0), 1, torch.device("cpu"))
    base = train_mtdm(Tensors(data.cat, data.num, data.like, data.install), None, spec, SMALL, 1, torch.device("cpu"))
    p = predict(res.models[0], data, torch.device("cpu"))["p"]
    q = predict(base.models[0], data, torch.device("cpu"))["p"]
    assert p.mean() > q.mean() + 0.05


def test_run_round_trip_and_distillation_from_lightgbm(small_work, tmp_path):
    wd, _, cfg = small_work
    own = Workdir(tmp_path)
    (tmp_path / "features").symlink_to(wd.features)
    mtdm = {"epochs": 1, "batch_size": 2048, "expert_hidden": [32], "experts": 2}
    cfg = with_section(with_section(cfg, "mtdm", mtdm), "gbm", {"num_boost_round": 30, "log_every": 0})
    run = stages.train(Context(own, cfg, device="cpu"), "mtdm")
    saved = pl.read_parquet(own.run("mtdm") / "preds.parquet")
    assert {"p", "p_ctr", "p_cvr", "p_ctcvr"} <= set(saved.columns)
    loaded = load_mtdm_run(own.run("mtdm"))
    valid = load_tables(wd.features, "default", "validate").splits["valid"]
    again = loaded.predict(valid)["p"]
    assert np.allclose(again, saved.filter(pl.col("split") == "valid")["p"].to_numpy(), atol=1e-7)
    assert set(run.metrics["valid"]["tasks"]) == {"ctr", "cvr", "ctcvr", "product"}
    mcfg = cfg.section("mtdm").config
    full = train_mtdm_run(load_tables(wd.features, "default", "validate"), mcfg, cfg.seed, "cpu", None)
    assert full.preds.equals(run.preds)  # the stage's lean tables: inputs read from Parquet, same result
    state = torch.load(own.run("mtdm") / "model.pt", weights_only=True)
    state["bottom.experts.0.0.weight"] = state.pop("bottom.experts.weights.0")  # the layout before fusion
    torch.save(state, own.run("mtdm") / "model.pt")
    with pytest.raises(UserError, match="must be retrained"):
        load_mtdm_run(own.run("mtdm"))
    stages.train(Context(own, cfg), "e2e", run_id="teacher")
    student_cfg = with_section(cfg, "mtdm", {**mtdm, "distill_run": "teacher", "distill_weight": 1.0})
    student = stages.train(Context(own, student_cfg, device="cpu"), "mtdm", run_id="student")
    p = student.preds["p"].to_numpy()
    assert ((p > 0) & (p < 1)).all() and not np.allclose(p, saved["p"].to_numpy())


def test_aliexpress_fixture_trains_one_epoch(capsys):
    code, out, err = run_cli(
        [
            "aliexpress",
            FIXTURES / "aliexpress_train_sample.csv",
            FIXTURES / "aliexpress_test_sample.csv",
            "--epochs",
            "1",
            "--device",
            "cpu",
        ],
        capsys,
    )
    assert code == 0, err
    assert "ctcvr" in out and "0.8574" in out


def test_bad_inputs(capsys, tmp_path):
    with pytest.raises(UserError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="use --device cpu"):
            resolve_device("cuda")
    with pytest.raises(UserError, match="expert_hidden has a layer of size 0"):
        mtdm_config({"expert_hidden": [0]}, "cfg")
    frame, _, _ = learnable(50)
    with pytest.raises(UserError, match="column 'x' has NaN"):
        fit_inputs(frame.with_columns(pl.lit(float("nan")).alias("x")), ["a"], ["x"], "log1p_standard")
    (tmp_path / "gbmcvr.toml").write_text("[mtdm]\nexperts = 0\n")
    code, _, err = run_cli(["train", "mtdm", "--workdir", tmp_path], capsys)
    assert code == 2 and "experts must be at least 1" in err
    code, _, err = run_cli(["train", "mtdm", "--device", "tpu", "--workdir", tmp_path], capsys)
    assert code == 2


def test_quantile_transform_maps_to_normal_scores():
    frame, _, _ = learnable(2000)
    spec = fit_inputs(frame, ["a"], ["x"], "quantile")
    z = to_tensors(frame, spec, None, None).num[:, 0].numpy()
    assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.1
    assert np.corrcoef(z, frame["x"].to_numpy())[0, 1] > 0.99


def test_input_spec_json_round_trip():
    _, spec, _ = learnable(50)
    assert InputSpec.from_json(spec.to_json()) == spec
