"""The fused MTDM blocks against plain per-MLP references, the CPU dropout, the lookup and the precision option."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from gbmcvr.deep.batches import Tensors
from gbmcvr.deep.model import MTDM, PLE, MMoE, OffsetEmbedding, ParallelMLP, StackedMMoE, dropout
from gbmcvr.deep.params import MtdmConfig, mtdm_config
from gbmcvr.deep.train import _autocast, predict, train_mtdm
from gbmcvr.errors import UserError
from tests.deep.test_mtdm import SMALL, learnable

CFG = MtdmConfig(experts=3, task_experts=2, expert_hidden=(6, 5), gate_hidden=(4,), tower_hidden=(3,), dropout=0.0)


def reference_mlp(net: ParallelMLP, k: int, x: torch.Tensor) -> torch.Tensor:
    """MLP k of `net` run on its own: F.linear layer by layer with its slice of every weight."""
    last = len(net.weights) - 1
    for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
        x = F.linear(x, w[k], b[k])
        if i < last or net.activate_last:
            x = torch.relu(x)
    return x


@pytest.mark.parametrize("activate_last", [True, False])
def test_parallel_mlp_is_its_mlps_run_one_by_one(activate_last):
    torch.manual_seed(0)
    net = ParallelMLP(7, (6, 5, 2), 3, 0.0, activate_last).eval()
    x = torch.randn(11, 7)
    out = net(x)
    assert out.shape == (3, 11, 2)
    for k in range(3):
        assert torch.allclose(out[k], reference_mlp(net, k, x), atol=1e-6)
    own = torch.randn(3, 11, 7)  # one input per MLP
    out = net(own)
    for k in range(3):
        assert torch.allclose(out[k], reference_mlp(net, k, own[k]), atol=1e-6)


def test_parallel_mlp_initialises_like_nn_linear():
    torch.manual_seed(0)
    net = ParallelMLP(400, (300,), 2, 0.0)
    bound = 1 / np.sqrt(400)  # nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias
    for p in (net.weights[0], net.biases[0]):
        assert p.abs().max() <= bound and p.abs().max() > 0.95 * bound
        assert abs(float(p.detach().std()) - bound / np.sqrt(3)) < 0.05 * bound
    assert not torch.equal(net.weights[0][0], net.weights[0][1])


def test_mmoe_mixes_experts_with_softmax_gates():
    torch.manual_seed(1)
    block = MMoE(8, 2, CFG).eval()
    x = torch.randn(5, 8)
    out = block(x)
    assert out.shape == (2, 5, 5)
    experts = [reference_mlp(block.experts, e, x) for e in range(3)]
    for t in range(2):
        gate = torch.softmax(reference_mlp(block.gates.net, t, x), dim=-1)
        assert torch.allclose(gate.sum(-1), torch.ones(5))
        want = sum(gate[:, e : e + 1] * experts[e] for e in range(3))
        assert torch.allclose(out[t], want, atol=1e-6)


def test_ple_gate_sees_its_own_experts_then_the_shared_ones():
    torch.manual_seed(2)
    block = PLE(8, 2, CFG).eval()  # experts 0-1 task 0, 2-3 task 1, 4-6 shared
    x = torch.randn(5, 8)
    out = block(x)
    experts = [reference_mlp(block.experts, e, x) for e in range(7)]
    for t, own in enumerate(([0, 1], [2, 3])):
        gate = torch.softmax(reference_mlp(block.gates.net, t, x), dim=-1)
        want = sum(gate[:, j : j + 1] * experts[e] for j, e in enumerate(own + [4, 5, 6]))
        assert torch.allclose(out[t], want, atol=1e-6)


def test_stacked_mmoe_second_gates_read_each_task_mixture():
    torch.manual_seed(3)
    block = StackedMMoE(8, 2, CFG).eval()
    x = torch.randn(5, 8)
    first = block.first(x)  # tasks + the shared path
    assert first.shape == (3, 5, 5)
    experts = [reference_mlp(block.experts, e, first[2]) for e in range(3)]
    out = block(x)
    for t in range(2):
        gate = torch.softmax(reference_mlp(block.gates.net, t, first[t]), dim=-1)
        want = sum(gate[:, e : e + 1] * experts[e] for e in range(3))
        assert torch.allclose(out[t], want, atol=1e-6)


def test_cpu_dropout_rate_scale_gradient_and_seed():
    x = torch.ones(200_000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.25, True)
    kept = y != 0
    assert abs(float(kept.float().mean()) - 0.75) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 4 / 3))
    y.sum().backward()
    assert torch.equal(x.grad != 0, kept) and torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 4 / 3))
    torch.manual_seed(0)
    assert torch.equal(dropout(x.detach(), 0.25, True), y.detach())
    assert dropout(x, 0.25, False) is x and dropout(x, 0.0, True) is x
    odd = dropout(torch.ones(3, 7), 0.5, True)  # not a multiple of four elements
    assert odd.shape == (3, 7) and set(odd.unique().tolist()) <= {0.0, 2.0}


def test_offset_embedding_matches_nn_embedding_values_and_gradients():
    torch.manual_seed(4)
    table = OffsetEmbedding(30, 4)
    plain = torch.nn.Embedding(30, 4)
    plain.weight.data.copy_(table.weight.data)
    codes = torch.randint(0, 30, (9, 3), dtype=torch.int32)
    a, b = table(codes), plain(codes.long())
    assert a.shape == (9, 3, 4) and torch.equal(a, b)
    weights = torch.randn(9, 3, 4)
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    assert torch.allclose(table.weight.grad, plain.weight.grad, atol=1e-6)
    assert list(table.state_dict()) == ["weight"]


def test_codes_are_int32_and_rows_gathers_every_tensor():
    _, _, data = learnable(40)
    assert data.cat.dtype == torch.int32 and data.num.dtype == torch.float32
    data.teacher = torch.arange(40, dtype=torch.float32)
    part = data.rows(torch.tensor([3, 1]))
    assert part.teacher.tolist() == [3.0, 1.0] and torch.equal(part.cat, data.cat[[3, 1]])
    assert data.to(torch.device("cpu")).cat is data.cat
    bare = Tensors(data.cat, data.num, None, None).rows(torch.tensor([0]))
    assert bare.like is None and bare.teacher is None


def test_precision_option_and_threads():
    cpu = torch.device("cpu")
    assert not _autocast(cpu)._enabled and not _autocast(cpu, "fp32")._enabled and _autocast(cpu, "bf16")._enabled
    _, spec, data = learnable()
    before = torch.get_num_threads()
    try:
        fp32 = train_mtdm(data, None, spec, replace(SMALL, threads=1), 3, cpu)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    bf16 = train_mtdm(data, None, spec, replace(SMALL, precision="bf16"), 3, cpu)
    p32, p16 = predict(fp32.models[0], data, cpu)["p"], predict(bf16.models[0], data, cpu)["p"]
    assert p16.dtype == np.float64 and not np.array_equal(p32, p16)
    assert np.abs(p32 - p16).max() < 0.05  # the same training, rounded to bf16 in the matmuls
    with pytest.raises(UserError, match="precision must be one of"):
        mtdm_config({"precision": "fp16"}, "cfg")
    with pytest.raises(UserError, match="threads must be >= 0"):
        mtdm_config({"threads": -1}, "cfg")
    with pytest.raises(UserError, match=r"cfg.loss_weights: 'cvr' must be a number >= 0, got -1"):
        mtdm_config({"loss_weights": {"cvr": -1}}, "cfg")  # a negative weight would reward a worse fit
    assert mtdm_config({"loss_weights": {"cvr": 0}}, "cfg").loss_weights == {"ctr": 1.0, "cvr": 0, "ctcvr": 1.0}


def test_state_dict_round_trips_with_weights_only(tmp_path):
    _, spec, data = learnable(200)
    for bottom in ("mmoe", "mmoe2", "ple"):
        cfg = replace(SMALL, bottom=bottom, ctcvr_head="tower")
        torch.manual_seed(5)
        model = MTDM(spec.embedding_rows, 2, 1, cfg, sizes=spec.sizes)
        torch.save(model.state_dict(), tmp_path / "m.pt")
        again = MTDM(spec.embedding_rows, 2, 1, cfg, sizes=spec.sizes)
        again.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
        cpu = torch.device("cpu")
        assert np.array_equal(predict(model, data, cpu)["p"], predict(again, data, cpu)["p"])
