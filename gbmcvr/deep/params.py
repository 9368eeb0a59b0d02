"""MTDM defaults and the `[mtdm]` config section (data, not training code)."""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
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
    threads: int = 0  # torch intra-op threads (0 = torch's default, one per core)
    precision: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16 (autocast on either)
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
    "precision": ("auto", "fp32", "bf16"),
}


@dataclass(frozen=True)
class KamlConfig:
    """The KAML options (each off by default) on top of the MTDM architecture and optimiser settings."""

    mtdm: MtdmConfig = field(default_factory=MtdmConfig)
    mask: str = "none"  # none (every sample trains every action) | base (eq. 6) | adm (eqs. 7-8)
    alpha: tuple[float, ...] = ()  # ADM threshold per action (empty: 1 for every action)
    window_days: int = 7  # ADM window T
    hke: bool = False
    rlu_gamma: float = 1.0  # share of BCE; 1 = no ranking loss
    rlu_beta: tuple[float, ...] = ()  # ranking weight per action (empty: 1 each)
    dynamic_average: bool = False
    action_weights: tuple[float, ...] = ()  # loss weight w_k per action (empty: 1 each)

    def per_action(self, values: tuple[float, ...], n: int, default: float, name: str) -> list[float]:
        """A per-action setting expanded to N values (empty -> default), or a UserError on a length mismatch."""
        if not values:
            return [default] * n
        if len(values) != n:
            raise UserError(f"[mtdm.kaml] {name} has {len(values)} values for {n} conversion actions")
        return [float(v) for v in values]


KAML_KEYS = tuple(f.name for f in fields(KamlConfig) if f.name != "mtdm")


def kaml_options(raw: Any, where: str) -> dict[str, Any]:
    """Parse and check the KAML options of an `[mtdm.kaml]` table (every KamlConfig field but `mtdm`)."""
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a table, got {raw!r}")
    check_keys(raw, KAML_KEYS, where)
    kwargs = typed_fields(KamlConfig, raw, where)
    if kwargs.get("mask", "none") not in ("none", "base", "adm"):
        raise UserError(f"{where}: mask must be one of 'none', 'base', 'adm', not '{kwargs['mask']}'")
    if kwargs.get("window_days", 1) < 1:
        raise UserError(f"{where}: window_days must be at least 1, got {kwargs['window_days']}")
    gamma = kwargs.get("rlu_gamma", 1.0)
    if not 0.0 <= gamma <= 1.0:
        raise UserError(f"{where}: rlu_gamma must be in [0, 1]")
    if gamma < 1.0 and kwargs.get("mask", "none") == "none":
        raise UserError(f"{where}: rlu_gamma < 1 ranks positives above masked samples; set mask = 'base' or 'adm'")
    for key in ("alpha", "rlu_beta", "action_weights"):
        if any(v < 0 for v in kwargs.get(key, ())):
            raise UserError(f"{where}: {key} values must be >= 0")
    return kwargs


def mtdm_kaml_config(raw: dict[str, Any], where: str) -> KamlConfig:
    """The `[mtdm]` section with its `[mtdm.kaml]` table, for a profile with several conversion actions."""
    return KamlConfig(mtdm_config(raw, where), **kaml_options(raw.get("kaml", {}), f"{where}.kaml"))


def task_loss_weights(raw: dict[str, Any], where: str) -> dict[str, float]:
    """The ctr/cvr/ctcvr loss weights of a multi-task model (those not given are 1), each a number >= 0."""
    check_keys(raw, ["ctr", "cvr", "ctcvr"], where)
    for task, weight in raw.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float) or weight < 0:
            raise UserError(f"{where}: '{task}' must be a number >= 0, got {weight!r}")
    return {"ctr": 1.0, "cvr": 1.0, "ctcvr": 1.0, **raw}


def mtdm_config(raw: dict[str, Any], where: str) -> MtdmConfig:
    """Parse and check the `[mtdm]` section (its `kaml` table checked by `kaml_options`, not part of it)."""
    if "kaml" in raw:
        kaml_options(raw["kaml"], f"{where}.kaml")
    kwargs = typed_fields(MtdmConfig, {k: v for k, v in raw.items() if k != "kaml"}, where)
    if "loss_weights" in kwargs:
        kwargs["loss_weights"] = task_loss_weights(kwargs["loss_weights"], f"{where}.loss_weights")
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
    if cfg.learning_rate <= 0:
        raise UserError(f"{where}: learning_rate must be positive, got {cfg.learning_rate}")
    if not 0.0 <= cfg.dropout < 1.0:
        raise UserError(f"{where}: dropout must be in [0, 1), got {cfg.dropout}")
    for key in ("weight_decay", "distill_weight", "mutual_weight", "patience"):
        if getattr(cfg, key) < 0:
            raise UserError(f"{where}: {key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.threads < 0:
        raise UserError(f"{where}: threads must be >= 0 (0 = torch's default), got {cfg.threads}")
    if cfg.qr_threshold < 0:
        raise UserError(f"{where}: qr_threshold must be >= 0 (0 = off), got {cfg.qr_threshold}")
    if not 0.0 <= cfg.ranking_gamma <= 1.0:
        raise UserError(f"{where}: ranking_gamma must be in [0, 1]")


@contextmanager
def torch_errors() -> Iterator[None]:
    """A ValueError raised inside PyTorch during training (a parameter it refuses) as a one-line UserError;
    a ValueError from anywhere else stays what it is."""
    try:
        yield
    except ValueError as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        if not frames or "/torch/" not in frames[-1].filename.replace("\\", "/"):
            raise
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"PyTorch refused the parameters: {first}") from None
