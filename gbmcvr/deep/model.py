"""The MTDM network: one offset embedding table, an MMoE or PLE bottom, and a tower per task.

Tasks (paper Appendix A.1): CTR = P(like) on all rows; CVR = P(install | like), trained on like rows
only; CTCVR = P(install) on all rows, from its own tower or as CTR x CVR computed in log space (ESMM).
Everything returns logits; losses use BCE-with-logits.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from gbmcvr.deep.params import MtdmConfig
from gbmcvr.deep.qr import FieldEmbedding


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout. On CPU the keep mask comes from 16 random bits per element (p rounded to 1/65536):
    a few times cheaper than torch's per-element Bernoulli draws, which dominated the CPU epoch."""
    if not training or p == 0.0:
        return x
    if x.device.type != "cpu" or p >= 1.0:
        return F.dropout(x, p, True)
    words = torch.randint(-(2**63), 2**63 - 1, ((x.numel() + 3) // 4,), dtype=torch.int64)
    bits = words.view(torch.int16)[: x.numel()].view(x.shape)
    scale = torch.where(bits >= round(p * 65536) - 32768, 1.0 / (1.0 - p), 0.0).to(x.dtype)
    return x * scale


class Dropout(nn.Module):
    """`nn.Dropout` with the cheaper CPU mask of `dropout`."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def mlp(inp: int, hidden: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU(), Dropout(dropout)]
        inp = h
    return nn.Sequential(*layers), inp


class ParallelMLP(nn.Module):
    """`count` MLPs of the same shape evaluated together: (batch, inp) or (count, batch, inp) -> (count, batch, out).

    Layer l holds all MLPs' weights as one (count, out, in) tensor. From a shared input the first layer is
    one matmul with the weights stacked to (count * out, in) (a view), so the input gradient is one matmul
    too; deeper layers are one batched matmul. ReLU and dropout follow every layer but, with
    `activate_last=False`, the last. Initialised like `nn.Linear`, MLP by MLP.
    """

    def __init__(self, inp: int, widths: tuple[int, ...], count: int, p: float, activate_last: bool = True) -> None:
        super().__init__()
        self.count, self.p, self.activate_last = count, p, activate_last
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        sizes = list(zip((inp, *widths[:-1]), widths, strict=True))
        layers = [[nn.Linear(a, b) for a, b in sizes] for _ in range(count)]
        for i in range(len(sizes)):
            self.weights.append(nn.Parameter(torch.stack([m[i].weight.detach() for m in layers])))
            self.biases.append(nn.Parameter(torch.stack([m[i].bias.detach() for m in layers])))
        self.out_dim = widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            if i == 0 and x.dim() == 2:
                h = F.linear(x, w.view(-1, w.shape[-1]), b.view(-1))
                x = h.view(x.shape[0], self.count, -1).transpose(0, 1)
            else:
                x = torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
            if i < last or self.activate_last:
                x = dropout(torch.relu(x), self.p, self.training)
        return x


class Gates(nn.Module):
    """One softmax gate per task over `experts` experts: (batch, inp) or (tasks, batch, inp) -> (tasks, batch, experts)."""

    def __init__(self, inp: int, experts: int, hidden: tuple[int, ...], tasks: int) -> None:
        super().__init__()
        self.net = ParallelMLP(inp, (*hidden, experts), tasks, 0.0, activate_last=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def mix(gates: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Per task, the gate-weighted sum of expert outputs: (tasks, batch, E) x (E, batch, d) -> (tasks, batch, d)."""
    return torch.einsum("tbe,ebd->tbd", gates, experts)


class MMoE(nn.Module):
    """Multi-gate mixture of experts: shared experts, one softmax gate per task."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        self.experts = ParallelMLP(inp, cfg.expert_hidden, cfg.experts, cfg.dropout)
        self.out_dim = self.experts.out_dim
        self.gates = Gates(inp, cfg.experts, cfg.gate_hidden, tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix(self.gates(x), self.experts(x))


class PLE(nn.Module):
    """Customised gate control (one PLE extraction layer): shared experts plus task-specific experts.

    All experts run as one `ParallelMLP`: each task's own experts first, then the shared ones."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        own, shared = cfg.task_experts, cfg.experts
        self.experts = ParallelMLP(inp, cfg.expert_hidden, tasks * own + shared, cfg.dropout)
        self.out_dim = self.experts.out_dim
        self.gates = Gates(inp, own + shared, cfg.gate_hidden, tasks)
        shared_ids = list(range(tasks * own, tasks * own + shared))
        picks = [list(range(t * own, (t + 1) * own)) + shared_ids for t in range(tasks)]
        self.register_buffer("picks", torch.tensor(picks), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        experts, gates = self.experts(x), self.gates(x)
        return torch.einsum("tbe,tebd->tbd", gates, experts[self.picks])


class StackedMMoE(nn.Module):
    """Two MMoE layers ("mmoe2"): layer 1 mixes for each task and for a shared path; layer 2's experts read
    the shared mixture and each task's gate reads that task's layer-1 mixture."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        self.first = MMoE(inp, tasks + 1, cfg)
        mid = self.first.out_dim
        self.experts = ParallelMLP(mid, cfg.expert_hidden[-1:], cfg.experts, cfg.dropout)
        self.out_dim = self.experts.out_dim
        self.gates = Gates(mid, cfg.experts, cfg.gate_hidden, tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.first(x)
        return mix(self.gates(first[:-1]), self.experts(first[-1]))


def bottom_for(name: str, inp: int, tasks: int, cfg: MtdmConfig) -> nn.Module:
    """The multi-expert bottom by name: mmoe, mmoe2 (stacked) or ple; each returns one vector per task."""
    kinds = {"mmoe": MMoE, "mmoe2": StackedMMoE, "ple": PLE}
    return kinds[name](inp, tasks, cfg)


def product_logit(ctr_logit: torch.Tensor, cvr_logit: torch.Tensor) -> torch.Tensor:
    """logit(sigmoid(a) * sigmoid(b)) computed in log space: log p - log(1 - p) with log p = ls(a) + ls(b)."""
    log_p = F.logsigmoid(ctr_logit) + F.logsigmoid(cvr_logit)
    return log_p - torch.log(-torch.expm1(log_p.clamp(max=-1e-7)))


def embedding_for(embedding_rows: int, cfg: MtdmConfig, sizes: list[int] | None) -> nn.Module:
    """One offset table, or (qr_threshold > 0, field sizes known) QR pairs for the large fields."""
    if cfg.qr_threshold > 0 and sizes is not None:
        return FieldEmbedding(sizes, cfg.embedding_dim, cfg.qr_threshold, cfg.qr_combine)
    table = OffsetEmbedding(embedding_rows, cfg.embedding_dim)
    nn.init.normal_(table.weight, std=0.01)
    return table


class OffsetEmbedding(nn.Embedding):
    """The one offset table, looked up with `index_select`: on CPU its backward (an index_add) is several
    times cheaper than `nn.Embedding`'s sort-based dense backward. Same parameter, same state_dict."""

    def forward(self, cat: torch.Tensor) -> torch.Tensor:
        return self.weight.index_select(0, cat.reshape(-1)).view(*cat.shape, self.embedding_dim)


class MTDM(nn.Module):
    """Embedding + bottom + towers (one `ParallelMLP`, a tower per task); `forward` returns a dict of logits."""

    def __init__(
        self,
        embedding_rows: int,
        fields: int,
        numerical: int,
        cfg: MtdmConfig,
        bottom: str | None = None,
        sizes: list[int] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding_for(embedding_rows, cfg, sizes)
        inp = fields * cfg.embedding_dim + numerical
        self.tasks = ["ctr", "cvr"] + (["ctcvr"] if cfg.ctcvr_head == "tower" else [])
        bottom = bottom or cfg.bottom
        self.bottom = bottom_for(bottom, inp, len(self.tasks), cfg)
        self.towers = ParallelMLP(
            self.bottom.out_dim, (*cfg.tower_hidden, 1), len(self.tasks), cfg.dropout, activate_last=False
        )

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.embedding(cat).flatten(1)
        x = torch.cat([emb, num], dim=1)
        towers = self.towers(self.bottom(x)).squeeze(-1).float()  # (tasks, batch); fp32 under autocast
        logits = dict(zip(self.tasks, towers, strict=True))
        logits["product"] = product_logit(logits["ctr"], logits["cvr"])
        if "ctcvr" not in logits:
            logits["ctcvr"] = logits["product"]
        logits["install"] = logits["ctcvr"] if self.cfg.install_from == "ctcvr" else logits["product"]
        return logits
