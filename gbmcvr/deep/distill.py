"""Student losses of the distillation recipe: pull a student's probability toward a teacher's.

`kl` is the KL divergence KL(teacher || student) between the two Bernoulli distributions (the teacher's
entropy subtracted from the soft-label BCE, so a perfect student scores 0); `mse` the squared gap of the
probabilities; `bce` the soft-label cross entropy (same gradient as `kl`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

KINDS = ("bce", "kl", "mse")


def bernoulli_kl(student_logit: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(Bernoulli(teacher) || Bernoulli(sigmoid(student_logit)))."""
    cross = teacher * F.logsigmoid(student_logit) + (1 - teacher) * F.logsigmoid(-student_logit)
    own = torch.xlogy(teacher, teacher) + torch.xlogy(1 - teacher, 1 - teacher)
    return (own - cross).mean()


def student_loss(kind: str, student_logit: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The distillation loss by name (bce, kl or mse) between a student logit and teacher probabilities."""
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(student_logit), teacher)
    if kind == "kl":
        return bernoulli_kl(student_logit, teacher)
    return F.binary_cross_entropy_with_logits(student_logit, teacher)
