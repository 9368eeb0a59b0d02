"""MTDM losses: per-task BCE with the CVR loss masked to like rows, plus the optional extra losses."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from gbmcvr.deep.distill import student_loss
from gbmcvr.deep.kaml import pair_loss
from gbmcvr.deep.params import MtdmConfig


def masked_bce(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCE averaged over rows where mask == 1; rows with mask == 0 contribute exactly zero gradient."""
    per_row = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_row * mask).sum() / mask.sum().clamp(min=1.0)


def pairwise_ranking(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Logistic pairwise loss over every (positive, negative) pair of the batch: KAML's RLU with all labels seen."""
    return pair_loss(logits[target > 0.5], logits[target <= 0.5])


def distill_loss(install_logit: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Pull the install prediction toward a teacher's probabilities (soft-label BCE, KL or MSE)."""
    return student_loss(kind, install_logit, teacher)


def task_losses(
    logits: dict[str, torch.Tensor],
    like: torch.Tensor,
    install: torch.Tensor,
    cfg: MtdmConfig,
    teacher: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """ctr (all rows, is_like), cvr (like rows, is_installed), ctcvr (all rows, is_installed), total.

    `generator` is accepted for the caller's signature; the ranking loss uses every pair, no sampling.
    With a teacher and `distill_label` off, the total is the distillation loss alone (student of the teacher).
    """
    losses = {
        "ctr": F.binary_cross_entropy_with_logits(logits["ctr"], like),
        "cvr": masked_bce(logits["cvr"], install, like),
        "ctcvr": F.binary_cross_entropy_with_logits(logits["ctcvr"], install),
    }
    if cfg.ranking_gamma > 0:
        rank = pairwise_ranking(logits["ctcvr"], install)
        losses["rank"] = rank
        losses["ctcvr"] = (1 - cfg.ranking_gamma) * losses["ctcvr"] + cfg.ranking_gamma * rank
    w = cfg.loss_weights
    total = w["ctr"] * losses["ctr"] + w["cvr"] * losses["cvr"] + w["ctcvr"] * losses["ctcvr"]
    if teacher is not None and cfg.distill_weight > 0:
        losses["distill"] = distill_loss(logits["install"], teacher, cfg.distill_loss)
        distilled = cfg.distill_weight * losses["distill"]
        total = total + distilled if cfg.distill_label else distilled
    losses["total"] = total
    return losses
