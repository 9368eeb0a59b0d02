"""TFM (feature-interaction Transformer) defaults, search space and the `[tfm]` config section (data, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from gbmcvr.deep.params import task_loss_weights
from gbmcvr.errors import UserError
from gbmcvr.tomlfile import typed_fields


@dataclass(frozen=True)
class TfmConfig:
    """Tokens, Transformer, task heads, optimisation and the contrastive self-supervision (SCARF-like)."""

    epochs: int = 6
    batch_size: int = 2048
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    d_token: int = 16
    layers: int = 2
    heads: int = 2
    ffn_factor: float = 2.0  # feed-forward width = d_token * ffn_factor
    dropout: float = 0.1  # feed-forward, residual and tower dropout
    attention_dropout: float = 0.0  # > 0 leaves torch's fused CPU attention kernel: several times slower there
    tower_hidden: tuple[int, ...] = (32,)
    ctcvr_head: str = "product"  # product (ESMM: CTR x CVR in log space) | tower
    install_from: str = "ctcvr"  # ctcvr | product
    loss_weights: dict[str, float] = field(default_factory=lambda: {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0})
    numeric_transform: str = "log1p_standard"  # log1p_standard | quantile
    use_target_encoding: bool = False
    qr_threshold: int = 0  # > 0: quotient-remainder embeddings for columns with more rows than this
    qr_combine: str = "mult"  # mult | sum
    # weight of the InfoNCE loss beside the supervised losses; off by default: at 0.2 it cost ~3x per CPU epoch and
    # did not lower valid log loss on synth data (bench numbers in the tfm commit message)
    ssl_weight: float = 0.0
    corruption: float = 0.3  # probability that a feature of a view takes another batch row's value
    tau: float = 0.1  # InfoNCE temperature
    projection_dim: int = 16  # width of the projection head the InfoNCE loss compares
    pretrain_epochs: int = 0  # SSL-only epochs over the features of every split (test day included) first
    patience: int = 2
    threads: int = 0  # torch intra-op threads (0 = torch's default)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16

    def with_overrides(self, **kwargs: Any) -> TfmConfig:
        return replace(self, **kwargs)


SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 3e-4, "high": 3e-3, "log": True},
    "weight_decay": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
    "d_token": {"type": "categorical", "choices": [8, 16, 32]},
    "layers": {"type": "int", "low": 1, "high": 3},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "ssl_weight": {"type": "float", "low": 0.0, "high": 0.5},
    "corruption": {"type": "float", "low": 0.1, "high": 0.6},
    "batch_size": {"type": "categorical", "choices": [1024, 2048, 4096]},
}

_CHOICES = {
    "ctcvr_head": ("product", "tower"),
    "install_from": ("ctcvr", "product"),
    "numeric_transform": ("log1p_standard", "quantile"),
    "qr_combine": ("mult", "sum"),
    "precision": ("auto", "fp32", "bf16"),
}


def tfm_config(raw: dict[str, Any], where: str) -> TfmConfig:
    """Parse and check the `[tfm]` section: unknown keys, wrong types and values out of range are errors."""
    kwargs = typed_fields(TfmConfig, raw, where)
    if "loss_weights" in kwargs:
        kwargs["loss_weights"] = task_loss_weights(kwargs["loss_weights"], f"{where}.loss_weights")
    cfg = TfmConfig(**kwargs)
    check_tfm(cfg, where)
    return cfg


def check_tfm(cfg: TfmConfig, where: str) -> None:
    """Refuse choices outside their lists and values outside their ranges, naming the key."""
    for key, allowed in _CHOICES.items():
        if getattr(cfg, key) not in allowed:
            choices = ", ".join(repr(a) for a in allowed)
            raise UserError(f"{where}: {key} must be one of {choices}, not '{getattr(cfg, key)}'")
    at_least = {
        "epochs": 1,
        "batch_size": 2,
        "d_token": 1,
        "layers": 1,
        "heads": 1,
        "projection_dim": 1,
        "patience": 1,
        "pretrain_epochs": 0,
        "threads": 0,
        "qr_threshold": 0,
    }
    for key, low in at_least.items():
        if getattr(cfg, key) < low:
            raise UserError(f"{where}: {key} must be at least {low}, got {getattr(cfg, key)}")
    positive = {"learning_rate": cfg.learning_rate, "ffn_factor": cfg.ffn_factor, "tau": cfg.tau}
    for key, value in positive.items():
        if not value > 0:
            raise UserError(f"{where}: {key} must be > 0, got {value}")
    for key in ("weight_decay", "ssl_weight"):
        if not getattr(cfg, key) >= 0:
            raise UserError(f"{where}: {key} must be >= 0, got {getattr(cfg, key)}")
    for key in ("dropout", "attention_dropout", "corruption"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            raise UserError(f"{where}: {key} must be in [0, 1), got {getattr(cfg, key)}")
    if cfg.d_token % cfg.heads:
        raise UserError(f"{where}: d_token ({cfg.d_token}) must be a multiple of heads ({cfg.heads})")
    if any(size < 1 for size in cfg.tower_hidden):
        raise UserError(f"{where}: tower_hidden sizes must be at least 1, got {list(cfg.tower_hidden)}")
    if cfg.pretrain_epochs > 0 and cfg.corruption == 0.0:
        raise UserError(f"{where}: pretrain_epochs > 0 needs corruption > 0 (identical views teach nothing)")
