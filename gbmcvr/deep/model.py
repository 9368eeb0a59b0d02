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


def mlp(inp: int, hidden: tuple[int, ...], dropout: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(inp, h), nn.ReLU(), nn.Dropout(dropout)]
        inp = h
    return nn.Sequential(*layers), inp


class _Gate(nn.Module):
    def __init__(self, inp: int, experts: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.body, out = mlp(inp, hidden, 0.0)
        self.head = nn.Linear(out, experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(self.body(x)), dim=-1)


class MMoE(nn.Module):
    """Multi-gate mixture of experts: shared experts, one softmax gate per task."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        built = [mlp(inp, cfg.expert_hidden, cfg.dropout) for _ in range(cfg.experts)]
        self.experts = nn.ModuleList(b[0] for b in built)
        self.out_dim = built[0][1]
        self.gates = nn.ModuleList(_Gate(inp, cfg.experts, cfg.gate_hidden) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        experts = torch.stack([e(x) for e in self.experts], dim=1)
        return [(g(x).unsqueeze(-1) * experts).sum(dim=1) for g in self.gates]


class PLE(nn.Module):
    """Customised gate control (one PLE extraction layer): shared experts plus task-specific experts."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        shared = [mlp(inp, cfg.expert_hidden, cfg.dropout) for _ in range(cfg.experts)]
        self.shared = nn.ModuleList(b[0] for b in shared)
        self.out_dim = shared[0][1]
        self.specific = nn.ModuleList(
            nn.ModuleList(mlp(inp, cfg.expert_hidden, cfg.dropout)[0] for _ in range(cfg.task_experts))
            for _ in range(tasks)
        )
        self.gates = nn.ModuleList(_Gate(inp, cfg.experts + cfg.task_experts, cfg.gate_hidden) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shared = [e(x) for e in self.shared]
        outs = []
        for own, gate in zip(self.specific, self.gates, strict=True):
            experts = torch.stack([e(x) for e in own] + shared, dim=1)
            outs.append((gate(x).unsqueeze(-1) * experts).sum(dim=1))
        return outs


class StackedMMoE(nn.Module):
    """Two MMoE layers ("mmoe2"): layer 1 mixes for each task and for a shared path; layer 2's experts read
    the shared mixture and each task's gate reads that task's layer-1 mixture."""

    def __init__(self, inp: int, tasks: int, cfg: MtdmConfig) -> None:
        super().__init__()
        self.first = MMoE(inp, tasks + 1, cfg)
        mid = self.first.out_dim
        built = [mlp(mid, cfg.expert_hidden[-1:], cfg.dropout) for _ in range(cfg.experts)]
        self.experts = nn.ModuleList(b[0] for b in built)
        self.out_dim = built[0][1]
        self.gates = nn.ModuleList(_Gate(mid, cfg.experts, cfg.gate_hidden) for _ in range(tasks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        *own, shared = self.first(x)
        experts = torch.stack([e(shared) for e in self.experts], dim=1)
        return [(g(h).unsqueeze(-1) * experts).sum(dim=1) for g, h in zip(self.gates, own, strict=True)]


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
    table = nn.Embedding(embedding_rows, cfg.embedding_dim)
    nn.init.normal_(table.weight, std=0.01)
    return table


class MTDM(nn.Module):
    """Embedding + bottom + towers; `forward` returns a dict of logits (ctr, cvr, ctcvr, product)."""

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
        self.towers = nn.ModuleDict()
        for t in self.tasks:
            body, out = mlp(self.bottom.out_dim, cfg.tower_hidden, cfg.dropout)
            self.towers[t] = nn.Sequential(body, nn.Linear(out, 1))

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.embedding(cat).flatten(1)
        x = torch.cat([emb, num], dim=1)
        outs = self.bottom(x)
        logits = {t: self.towers[t](h).squeeze(-1) for t, h in zip(self.tasks, outs, strict=True)}
        logits["product"] = product_logit(logits["ctr"], logits["cvr"])
        if "ctcvr" not in logits:
            logits["ctcvr"] = logits["product"]
        logits["install"] = logits["ctcvr"] if self.cfg.install_from == "ctcvr" else logits["product"]
        return logits
