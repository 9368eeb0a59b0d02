"""MTDM defaults and the `[mtdm]` config section (data, not training code)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys, typed_fields


@dataclass(frozen=True)
class MtdmConfig:
    """Architecture, optimisation and the off-by-default options from related work."""

    epochs: int = 8
    batch_size: int = 4096
    learning_rate: float = 2e-3
    weight_decay: float = 1e-5
    embedding_dim: int = 12
    bottom: str = "mmoe"  # mmoe | mmoe2 (stacked) | ple
    experts: int = 4  # MMoE experts; PLE shared experts
    task_experts: int = 1  # PLE only: experts per task
    expert_hidden: tuple[int, ...] = (128, 64)
    gate_hidden: tuple[int, ...] = ()
    tower_hidden: tuple[int, ...] = (32,)
    dropout: float = 0.1
    ctcvr_head: str = "product"  # product (ESMM: CTR x CVR in log space) | tower
    install_from: str = "ctcvr"  # ctcvr | product
    loss_weights: dict[str, float] = field(default_factory=lambda: {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0})
    numeric_transform: str = "log1p_standard"  # log1p_standard | quantile
    use_target_encoding: bool = False
    patience: int = 2
    compile: bool = False
    distill_run: str = ""  # teacher run id (e.g. "e2e"); empty = off
    distill_weight: float = 0.0
    distill_loss: str = "bce"  # bce | kl | mse
    distill_label: bool = True  # False: the student learns from the teacher alone, not its own labels
    mutual_weight: float = 0.0  # > 0 trains two models together
    mutual_bottom: str = ""  # bottom of the peer ("" = same as bottom)
    qr_threshold: int = 0  # > 0: quotient-remainder embeddings for columns with more rows than this
    qr_combine: str = "mult"  # mult | sum
    ranking_gamma: float = 0.0  # share of the pairwise ranking loss mixed into the CTCVR loss

    def with_overrides(self, **kwargs: Any) -> MtdmConfig:
        return replace(self, **kwargs)


_CHOICES = {
    "bottom": ("mmoe", "mmoe2", "ple"),
    "ctcvr_head": ("product", "tower"),
    "install_from": ("ctcvr", "product"),
    "numeric_transform": ("log1p_standard", "quantile"),
    "distill_loss": ("bce", "kl", "mse"),
    "mutual_bottom": ("", "mmoe", "mmoe2", "ple"),
    "qr_combine": ("mult", "sum"),
}


def mtdm_config(raw: dict[str, Any], where: str) -> MtdmConfig:
    """Parse and check the `[mtdm]` section."""
    kwargs = typed_fields(MtdmConfig, raw, where)
    if "loss_weights" in kwargs:
        check_keys(kwargs["loss_weights"], ["ctr", "cvr", "ctcvr"], f"{where}.loss_weights")
        for task, weight in kwargs["loss_weights"].items():
            if isinstance(weight, bool) or not isinstance(weight, int | float):
                raise UserError(f"{where}.loss_weights: '{task}' must be a number, got {weight!r}")
        kwargs["loss_weights"] = {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0, **kwargs["loss_weights"]}
    cfg = MtdmConfig(**kwargs)
    check_mtdm(cfg, where)
    return cfg


def check_mtdm(cfg: MtdmConfig, where: str) -> None:
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise UserError(f"{where}: {key} must be one of {choices}, not '{getattr(cfg, key)}'")
    sizes = {
        "experts": cfg.experts,
        "task_experts": cfg.task_experts,
        "embedding_dim": cfg.embedding_dim,
        "batch_size": cfg.batch_size,
        "epochs": cfg.epochs,
    }
    for key, value in sizes.items():
        if value < 1:
            raise UserError(f"{where}: {key} must be at least 1, got {value}")
    for key in ("expert_hidden", "gate_hidden", "tower_hidden"):
        for size in getattr(cfg, key):
            if size < 1:
                raise UserError(f"{where}: {key} has a layer of size {size}; sizes must be at least 1")
    if not cfg.expert_hidden:
        raise UserError(f"{where}: expert_hidden needs at least one layer")
    if cfg.distill_weight > 0 and not cfg.distill_run:
        raise UserError(f"{where}: distill_weight > 0 needs distill_run (a teacher run id)")
    if cfg.qr_threshold < 0:
        raise UserError(f"{where}: qr_threshold must be >= 0 (0 = off), got {cfg.qr_threshold}")
    if not 0.0 <= cfg.ranking_gamma <= 1.0:
        raise UserError(f"{where}: ranking_gamma must be in [0, 1]")
