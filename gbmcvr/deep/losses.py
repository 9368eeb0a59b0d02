"""MTDM losses: per-task BCE with the CVR loss masked to like rows, plus the optional extra losses."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from gbmcvr.deep.params import MtdmConfig

RANK_NEGATIVES = 16


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE averaged over rows where mask == 1; rows with mask == 0 contribute exactly zero gradient."""
    per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp(min=1.0)


def pairwise_ranking(
    logits: torch.Tensor, target: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Logistic pairwise loss: each positive against sampled negatives of the batch (positives above)."""
    pos = logits[target > 0.5]
    neg = logits[target <= 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return logits.sum() * 0.0
    idx = torch.randint(len(neg), (len(pos), RANK_NEGATIVES), generator=generator, device="cpu").to(logits.device)
    return F.softplus(-(pos.unsqueeze(1) - neg[idx])).mean()


def distill_loss(install_logit: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Pull the install prediction toward a teacher's probabilities (BCE on soft labels, or MSE)."""
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(install_logit), teacher)
    return F.binary_cross_entropy_with_logits(install_logit, teacher)


def task_losses(
    logits: dict[str, torch.Tensor],
    like: torch.Tensor,
    install: torch.Tensor,
    cfg: MtdmConfig,
    teacher: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """ctr (all rows, is_like), cvr (like rows, is_installed), ctcvr (all rows, is_installed), total."""
    losses = {
        "ctr": F.binary_cross_entropy_with_logits(logits["ctr"], like),
        "cvr": masked_bce(logits["cvr"], install, like),
        "ctcvr": F.binary_cross_entropy_with_logits(logits["ctcvr"], install),
    }
    if cfg.ranking_gamma > 0:
        rank = pairwise_ranking(logits["ctcvr"], install, generator)
        losses["rank"] = rank
        losses["ctcvr"] = (1 - cfg.ranking_gamma) * losses["ctcvr"] + cfg.ranking_gamma * rank
    w = cfg.loss_weights
    total = w["ctr"] * losses["ctr"] + w["cvr"] * losses["cvr"] + w["ctcvr"] * losses["ctcvr"]
    if teacher is not None and cfg.distill_weight > 0:
        losses["distill"] = distill_loss(logits["install"], teacher, cfg.distill_loss)
        total = total + cfg.distill_weight * losses["distill"]
    losses["total"] = total
    return losses
