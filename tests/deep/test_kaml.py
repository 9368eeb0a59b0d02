import numpy as np
import polars as pl
import pytest
import torch

from gbmcvr import metrics
from gbmcvr.deep.batches import fit_inputs
from gbmcvr.deep.kaml import (
    KamlConfig,
    action_metrics,
    adm_counts,
    adm_mask,
    base_mask,
    kaml_config,
    kaml_loss,
    rlu_loss,
    task_bce,
)
from gbmcvr.deep.kaml_model import HkeTower, hke_merge, kaml_tensors, predict_kaml, train_kaml
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.errors import UserError

LABELS = ["a1", "a2"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waits on a shared, busy machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_base_mask_marks_only_the_target_action():
    assert base_mask(np.array([1, 2, 2, 1]), 2).tolist() == [[1, 0], [0, 1], [0, 1], [1, 0]]
    with pytest.raises(UserError):
        base_mask(np.array([3]), 2)


def _reports() -> pl.DataFrame:
    # task 7 targets a1 and reports a2: a2 conversions 0 on day 1, 2 on day 2, 0 on day 3, 5 on day 4
    # task 9 targets a2 and never reports a1
    rows = [
        (7, 1, 1, 1, 0),
        (7, 1, 1, 0, 0),
        (7, 2, 1, 1, 1),
        (7, 2, 1, 1, 1),
        (7, 3, 1, 0, 0),
        (7, 4, 1, 1, 1),
        (7, 4, 1, 1, 1),
        (7, 4, 1, 1, 1),
        (7, 4, 1, 1, 1),
        (7, 4, 1, 1, 1),
        (9, 2, 2, 0, 1),
        (9, 3, 2, 0, 1),
        (9, 4, 2, 0, 0),
    ]
    return pl.DataFrame(rows, schema=["task", "day", "target", "a1", "a2"], orient="row")


def test_adm_counts_and_mask_against_hand_computed_cases():
    frame = _reports()
    counts = adm_counts(frame, "day", "task", LABELS, window_days=2)
    # a2 counts on days [d-2, d-1]: task 7: day 1 -> 0, day 2 -> 0, day 3 -> 0 + 2, day 4 -> 2 + 0;
    # task 9 (1 on day 2, 1 on day 3): day 2 -> 0, day 3 -> 1, day 4 -> 2
    assert counts[:, 1].tolist() == [0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 0, 1, 2]
    # task 7, a1 (its target; 1, 2, 0, 5 reported on days 1-4): day 1 -> 0, 2 -> 1, 3 -> 1 + 2, 4 -> 2 + 0
    assert counts[:10, 0].tolist() == [0, 0, 1, 1, 3, 2, 2, 2, 2, 2]
    base = adm_mask(frame, "day", "task", "target", LABELS, [99.0, 99.0], 2)
    assert np.array_equal(base, base_mask(frame["target"].to_numpy(), 2))
    mask = adm_mask(frame, "day", "task", "target", LABELS, [1.0, 2.0], 2)
    # a2 extends task 7's samples where its window count >= 2: days 3 and 4, not days 1-2
    assert mask[:10, 1].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    # task 9's samples: a2 is their target; a1 never reported, so never extended
    assert mask[10:].tolist() == [[0, 1], [0, 1], [0, 1]]


def test_adm_counts_never_look_at_the_own_or_later_days():
    rng = np.random.default_rng(3)
    n = 60
    frame = pl.DataFrame(
        {
            "task": rng.integers(0, 3, n),
            "day": rng.integers(1, 7, n),
            "target": rng.integers(1, 3, n),
            "a1": rng.integers(0, 2, n),
            "a2": rng.integers(0, 2, n),
        }
    )
    window = 3
    counts = adm_counts(frame, "day", "task", LABELS, window)
    task, day, y = frame["task"].to_numpy(), frame["day"].to_numpy(), frame.select(LABELS).to_numpy()
    for i in range(n):
        rows = (task == task[i]) & (day >= day[i] - window) & (day < day[i])
        assert counts[i].tolist() == y[rows].sum(axis=0).tolist()
    # flipping every label of day >= 4 leaves the counts of day-4 rows unchanged
    later = pl.col("day") >= 4
    flipped = frame.with_columns([pl.when(later).then(1 - pl.col(c)).otherwise(pl.col(c)).alias(c) for c in LABELS])
    again = adm_counts(flipped, "day", "task", LABELS, window)
    on_day4 = day == 4
    assert np.array_equal(again[on_day4], counts[on_day4])


def test_hke_merge_equals_the_formula_and_routes_gradients():
    h_orig, h_ext = torch.randn(4, 3), torch.randn(4, 3)
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    expected = torch.stack([h_orig[0], h_ext[1], h_orig[2], h_ext[3]])
    assert torch.allclose(hke_merge(h_orig, h_ext, m), expected)
    torch.manual_seed(0)
    tower = HkeTower(5, (3,), 0.0)
    x = torch.randn(4, 5)
    out = tower(x, m)
    m2 = m.unsqueeze(-1)
    assert torch.allclose(out, tower.head(m2 * tower.original(x) + (1 - m2) * tower.extended(x)).squeeze(-1))
    tower(x[:1], m[:1]).sum().backward()  # an original sample trains only the original sub-tower
    assert all(p.grad is None or not p.grad.any() for p in tower.extended.parameters())
    assert any(p.grad is not None and p.grad.any() for p in tower.original.parameters())


def test_rlu_loss_against_a_naive_double_loop():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(12, 2, generator=g)
    labels = (torch.rand(12, 2, generator=g) < 0.4).float()
    mask = (torch.rand(12, 2, generator=g) < 0.6).float()
    got = rlu_loss(logits, labels, mask)
    for j in range(2):
        terms = [
            -np.log(1 / (1 + np.exp(-(float(logits[i, j]) - float(logits[k, j])))))
            for i in range(12)
            for k in range(12)
            if mask[i, j] == 1 and labels[i, j] == 1 and mask[k, j] == 0 and labels[k, j] == 0
        ]
        assert terms and float(got[j]) == pytest.approx(np.mean(terms), rel=1e-5)
    assert float(rlu_loss(logits, torch.zeros(12, 2), mask).sum()) == 0.0


def test_dynamic_average_against_a_manual_mean():
    logits = torch.tensor([[0.5, -1.0], [2.0, 0.3], [-0.7, 1.1]])
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])

    def bce(z, y):
        p = 1 / (1 + np.exp(-z))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))

    manual = [
        np.mean([bce(0.5, 1), bce(2.0, 0)]),
        np.mean([bce(0.3, 1), bce(1.1, 1)]),
    ]
    assert task_bce(logits, labels, mask, dynamic=True).tolist() == pytest.approx(manual, rel=1e-6)
    static = [(bce(0.5, 1) + bce(2.0, 0)) / 3, (bce(0.3, 1) + bce(1.1, 1)) / 3]
    assert task_bce(logits, labels, mask, dynamic=False).tolist() == pytest.approx(static, rel=1e-6)


def test_kaml_loss_mixes_bce_and_ranking_with_gamma_and_weights():
    logits, labels = torch.randn(8, 2), (torch.arange(16).reshape(8, 2) % 3 == 0).float()
    mask = torch.ones(8, 2)
    mask[4:, 1] = 0
    w, beta = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    cfg = KamlConfig(rlu_gamma=0.7, dynamic_average=True)
    out = kaml_loss(logits, labels, mask, cfg, w, beta)
    bce = (w * task_bce(logits, labels, mask, True)).sum()
    rank = (beta * rlu_loss(logits, labels, mask)).sum()
    assert float(out["total"]) == pytest.approx(float(0.7 * bce + 0.3 * rank), rel=1e-6)


def test_action_metrics_on_target_samples_and_weighted_mean():
    target = np.array([1, 1, 1, 1, 2, 2, 2])
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [0, 1], [1, 0], [0, 0]])
    probs = np.array([[0.8, 0.1], [0.3, 0.9], [0.6, 0.5], [0.2, 0.5], [0.1, 0.7], [0.9, 0.2], [0.5, 0.4]])
    out = action_metrics(target, labels, probs, LABELS)
    a1 = metrics.auc(labels[:4, 0], probs[:4, 0])
    a2 = metrics.auc(labels[4:, 1], probs[4:, 1])
    assert out["actions"]["a1"]["auc"] == pytest.approx(a1)
    assert out["actions"]["a2"]["logloss"] == pytest.approx(metrics.log_loss(labels[4:, 1], probs[4:, 1]))
    assert out["weighted"]["auc"] == pytest.approx((4 * a1 + 3 * a2) / 7)


def test_config_parsing_and_errors():
    cfg = kaml_config({"mask": "adm", "alpha": [1, 2], "mtdm": {"epochs": 2}}, "[kaml]")
    assert cfg.alpha == (1, 2) and cfg.mtdm.epochs == 2
    with pytest.raises(UserError, match="mask"):
        kaml_config({"mask": "all"}, "[kaml]")
    with pytest.raises(UserError, match="alpha"):
        kaml_config({"nope": 1}, "[kaml]")
    with pytest.raises(UserError, match="3 values for 2"):
        cfg.per_action((1.0, 2.0, 3.0), 2, 1.0, "rlu_beta")


def test_training_with_adm_hke_and_rlu_learns_a_toy_problem():
    rng = np.random.default_rng(0)
    n = 2000
    frame = pl.DataFrame(
        {
            "x": rng.integers(0, 4, n),
            "task": rng.integers(0, 6, n),
            "day": rng.integers(1, 6, n),
            "target": rng.integers(1, 3, n),
            "num": rng.normal(size=n),
        }
    )
    p = 1 / (1 + np.exp(-(frame["x"].to_numpy() - 1.5) * 1.5))
    frame = frame.with_columns(
        a1=pl.Series((rng.random(n) < p).astype(np.int64)), a2=pl.Series((rng.random(n) < p * 0.5).astype(np.int64))
    )
    spec = fit_inputs(frame, ["x", "target"], ["num"], "log1p_standard")
    mask = adm_mask(frame, "day", "task", "target", LABELS, [1.0, 1.0], 2)
    assert mask.sum() > base_mask(frame["target"].to_numpy(), 2).sum()
    mt = MtdmConfig(epochs=4, batch_size=500, learning_rate=3e-2, embedding_dim=4, experts=2, expert_hidden=(16,))
    cfg = KamlConfig(mt, mask="adm", hke=True, rlu_gamma=0.8, dynamic_average=True, action_weights=(1.0, 2.0))
    data = kaml_tensors(frame, spec, LABELS, "target", mask)
    res = train_kaml(data, data, spec, cfg, LABELS, seed=0, device_name="cpu")
    probs = predict_kaml(res.model, data, torch.device("cpu"))
    assert probs.shape == (n, 2) and np.isfinite(probs).all()
    assert action_metrics(data.target, data.labels.numpy(), probs, LABELS)["weighted"]["auc"] > 0.7
    assert res.history[0]["train_rank"] > 0


def test_kaml_loss_gradient_is_zero_for_masked_entries():
    logits = torch.randn(4, 2, requires_grad=True)
    mask = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    task_bce(logits, torch.ones(4, 2), mask, dynamic=True).sum().backward()
    assert (logits.grad[mask == 0] == 0).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_cuda_matches_cpu_shapes():
    frame = _reports()
    spec = fit_inputs(frame, ["task", "target"], [], "log1p_standard")
    mask = adm_mask(frame, "day", "task", "target", LABELS, [1.0, 1.0], 2)
    data = kaml_tensors(frame, spec, LABELS, "target", mask)
    mt = MtdmConfig(epochs=1, batch_size=4, embedding_dim=4, experts=2, expert_hidden=(8,), qr_threshold=3)
    cfg = KamlConfig(mt, mask="adm", hke=True, rlu_gamma=0.5, dynamic_average=True)
    res = train_kaml(data, data, spec, cfg, LABELS, seed=0, device_name="cuda")
    probs = predict_kaml(res.model, data, torch.device("cuda"))
    assert probs.shape == (frame.height, 2) and np.isfinite(probs).all()
