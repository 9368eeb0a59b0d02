"""KAML for incomplete multi-label conversions: masks, per-task losses and the per-action evaluation.

Reading of "No One Left Behind" (KAML) used here, with N conversion actions and o_i the target of sample i:
- no mask (the default): every sample trains every action's tower, unreported actions read as 0;
- base mask (eq. 6): M_ij = 1 iff o_i = j;
- ADM (eqs. 7-8): M_ij = 1 also when sample i's advertising task reported at least alpha_j conversions of
  action j on the T days before the sample's day (never its own or a later day: leak-free);
- dynamic average (eq. 12): task j's BCE is averaged over its own non-masked samples of the batch (off:
  over the whole batch);
- RLU (eqs. 11, 13): per task, a logistic pairwise loss over (positive, unlabeled) pairs of the batch, the
  positive a non-masked sample labelled 1, the unlabeled one a masked sample labelled 0 (a reported
  positive outside the mask is never ranked below anything); tasks weighted beta_k, mixed with BCE as
  gamma * BCE + (1 - gamma) * ranking;
- evaluation (eq. 1): log loss and AUC of action j on the samples whose target is j, and their
  sample-weighted mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import torch
from torch.nn import functional as F

from gbmcvr import metrics
from gbmcvr.deep.params import KAML_KEYS, KamlConfig, kaml_options, mtdm_config
from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys


def kaml_config(raw: dict[str, Any], where: str) -> KamlConfig:
    """Parse and check a `[kaml]` section: the KAML options plus an `mtdm` sub-table (an `[mtdm]` section)."""
    check_keys(raw, ["mtdm", *KAML_KEYS], where)
    options = kaml_options({k: v for k, v in raw.items() if k != "mtdm"}, where)
    return KamlConfig(mtdm_config(raw.get("mtdm", {}), f"{where}.mtdm"), **options)


def training_mask(
    frame: pl.DataFrame, cfg: KamlConfig, day: str, task: str, target: str, labels: list[str]
) -> np.ndarray | None:
    """The training mask of `cfg.mask`: all ones (none), None (the base mask, eq. 6) or ADM (eqs. 7-8)."""
    if cfg.mask == "none":
        return np.ones((frame.height, len(labels)), dtype=np.float32)
    if cfg.mask == "base":
        return None
    alpha = cfg.per_action(cfg.alpha, len(labels), 1.0, "alpha")
    return adm_mask(frame, day, task, target, labels, alpha, cfg.window_days)


def base_mask(target: np.ndarray, actions: int) -> np.ndarray:
    """Eq. 6: an (n, N) 0/1 matrix with a 1 at each sample's target action (targets numbered 1..N)."""
    target = np.asarray(target, dtype=np.int64)
    if len(target) and (target.min() < 1 or target.max() > actions):
        raise UserError(f"target action outside 1..{actions}: {int(target.min())}..{int(target.max())}")
    return (target[:, None] == np.arange(1, actions + 1)[None, :]).astype(np.float32)


def adm_counts(frame: pl.DataFrame, day: str, task: str, labels: list[str], window_days: int) -> np.ndarray:
    """Per row: conversions of each action its task reported on days [day - T, day - 1] (an (n, N) matrix)."""
    daily = frame.group_by(task, day).agg(pl.col(labels).sum())
    days = pl.DataFrame({day: np.arange(frame[day].min(), frame[day].max() + 1, dtype=np.int64)})
    grid = (
        frame.select(task)
        .unique()
        .join(days, how="cross")
        .with_columns(pl.col(day).cast(frame[day].dtype))
        .join(daily, on=[task, day], how="left")
        .with_columns(pl.col(labels).fill_null(0))
        .sort(task, day)
    )
    cum = grid.with_columns(pl.col(labels).cum_sum().over(task))
    # sum over [d - T, d - 1] = cum(d - 1) - cum(d - T - 1): shifts inside each task, 0 before its first day
    window = cum.select(
        task,
        day,
        *[
            (
                pl.col(c).shift(1).over(task).fill_null(0) - pl.col(c).shift(window_days + 1).over(task).fill_null(0)
            ).alias(c)
            for c in labels
        ],
    )
    rows = frame.select(task, day).join(window, on=[task, day], how="left", maintain_order="left")
    return rows.select(labels).to_numpy().astype(np.float64)


def adm_mask(
    frame: pl.DataFrame,
    day: str,
    task: str,
    target: str,
    labels: list[str],
    alpha: list[float],
    window_days: int,
) -> np.ndarray:
    """Eqs. 7-8: the base mask, plus action j wherever the task reported >= alpha_j of j in the window."""
    counts = adm_counts(frame, day, task, labels, window_days)
    extended = counts >= np.asarray(alpha, dtype=np.float64)[None, :]
    return np.maximum(base_mask(frame[target].to_numpy(), len(labels)), extended.astype(np.float32))


def task_bce(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, dynamic: bool) -> torch.Tensor:
    """Per-task masked BCE, shape (N,): over each task's non-masked samples (eq. 12) or the whole batch."""
    per_row = F.binary_cross_entropy_with_logits(logits, labels, reduction="none") * mask
    denom = mask.sum(dim=0).clamp(min=1.0) if dynamic else torch.full_like(mask[0], float(mask.shape[0]))
    return per_row.sum(dim=0) / denom


def pair_loss(positive: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
    """Mean logistic pairwise loss -log sigmoid(s_pos - s_low) over all (positive, lower) score pairs."""
    if positive.numel() == 0 or lower.numel() == 0:
        return positive.sum() * 0.0 + lower.sum() * 0.0
    return F.softplus(-(positive[:, None] - lower[None, :])).mean()


def rlu_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Eq. 11 per task, shape (N,): positives (mask 1, label 1) above unlabeled samples (mask 0, label 0)."""
    positive = (mask > 0.5) & (labels > 0.5)
    unlabeled = (mask <= 0.5) & (labels <= 0.5)
    return torch.stack(
        [pair_loss(logits[positive[:, j], j], logits[unlabeled[:, j], j]) for j in range(logits.shape[1])]
    )


def kaml_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    cfg: KamlConfig,
    weights: torch.Tensor,
    beta: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Eq. 13: gamma * sum_k w_k BCE_k + (1 - gamma) * sum_k beta_k rank_k, with the parts for logging."""
    bce = task_bce(logits, labels, mask, cfg.dynamic_average)
    out = {"bce": (weights * bce).sum()}
    total = out["bce"]
    if cfg.rlu_gamma < 1.0:
        out["rank"] = (beta * rlu_loss(logits, labels, mask)).sum()
        total = cfg.rlu_gamma * total + (1.0 - cfg.rlu_gamma) * out["rank"]
    out["total"] = total
    return out


def action_metrics(target: np.ndarray, labels: np.ndarray, probs: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Eq. 1: per action j, rows n, log loss and AUC on the samples targeting j; their sample-weighted mean."""
    per: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        rows = np.asarray(target) == j + 1
        if not rows.any():
            continue
        y, p = labels[rows, j], probs[rows, j]
        per[name] = {"rows": int(rows.sum()), "auc": metrics.auc(y, p), "logloss": metrics.log_loss(y, p)}
    mean: dict[str, float] = {}
    for key in ("auc", "logloss"):
        ok = [v for v in per.values() if np.isfinite(v[key])]
        n = sum(v["rows"] for v in ok)
        mean[key] = float(sum(v[key] * v["rows"] for v in ok) / n) if n else float("nan")
    return {"actions": per, "weighted": mean}


def metrics_table(rows: dict[str, dict[str, Any]], names: list[str]) -> str:
    """A Markdown table like the paper's ablation: per-action AUC / log loss, weighted mean, s/epoch.

    Each row is an `action_metrics` result with an optional `seconds_per_epoch`.
    """
    head = ["", *[f"{c} AUC / LL" for c in names], "mean AUC / LL", "s/epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, ev in rows.items():
        cells = [label]
        for c in names:
            a = ev["actions"].get(c)
            cells.append(f"{a['auc']:.4f} / {a['logloss']:.4f}" if a else "-")
        w = ev["weighted"]
        cells += [f"{w['auc']:.4f} / {w['logloss']:.4f}", f"{ev.get('seconds_per_epoch', float('nan')):.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
