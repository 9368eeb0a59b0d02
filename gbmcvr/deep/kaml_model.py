"""The KAML network (shared embedding, MMoE/PLE bottom, one tower per action, optional HKE) and its training.

HKE (eqs. 9-10): each action's tower has two sub-towers, one for original samples (base mask 1) and one
for ADM-extended samples; their outputs merge as M * h_orig + (1 - M) * h_ext before the output layer, M
being the base mask, so at serving time (where M says which action the advertiser targets) a target
tower always speaks through its original-sample sub-tower.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import torch
from torch import nn

from gbmcvr.deep.batches import InputSpec, batches, to_tensors
from gbmcvr.deep.kaml import KamlConfig, action_metrics, base_mask, kaml_loss
from gbmcvr.deep.model import bottom_for, embedding_for, mlp
from gbmcvr.deep.train import resolve_device, seed_everything
from gbmcvr.errors import UserError

PREDICT_BATCH = 65_536


def hke_merge(h_orig: torch.Tensor, h_ext: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """Eq. 10: M * h_orig + (1 - M) * h_ext, M the (batch,) base mask of this action."""
    m = base.unsqueeze(-1)
    return m * h_orig + (1.0 - m) * h_ext


class HkeTower(nn.Module):
    """Two sub-towers (original and extended samples) merged by the base mask, then one output layer."""

    def __init__(self, inp: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        self.original, out = mlp(inp, hidden, dropout)
        self.extended, _ = mlp(inp, hidden, dropout)
        self.head = nn.Linear(out, 1)

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.head(hke_merge(self.original(x), self.extended(x), base)).squeeze(-1)


class PlainTower(nn.Module):
    """One MLP tower (the base model's); ignores the base mask."""

    def __init__(self, inp: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        body, out = mlp(inp, hidden, dropout)
        self.net = nn.Sequential(body, nn.Linear(out, 1))

    def forward(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class KamlNet(nn.Module):
    """Embedding + bottom + N action towers; `forward(cat, num, base)` returns (batch, N) CVR logits."""

    def __init__(self, spec: InputSpec, actions: int, cfg: KamlConfig) -> None:
        super().__init__()
        mt = cfg.mtdm
        self.embedding = embedding_for(spec.embedding_rows, mt, spec.sizes)
        inp = len(spec.categorical) * mt.embedding_dim + len(spec.numerical)
        self.bottom = bottom_for(mt.bottom, inp, actions, mt)
        tower = HkeTower if cfg.hke else PlainTower
        self.towers = nn.ModuleList(tower(self.bottom.out_dim, mt.tower_hidden, mt.dropout) for _ in range(actions))

    def forward(self, cat: torch.Tensor, num: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.embedding(cat).flatten(1), num], dim=1)
        outs = self.bottom(x)
        return torch.stack([t(h, base[:, j]) for j, (t, h) in enumerate(zip(self.towers, outs, strict=True))], 1)


@dataclass
class KamlTensors:
    """Post-click samples as tensors: inputs, reported labels (n, N), targets 1..N, base and training masks."""

    cat: torch.Tensor
    num: torch.Tensor
    labels: torch.Tensor
    target: np.ndarray
    base: torch.Tensor
    mask: torch.Tensor

    def __len__(self) -> int:
        return self.cat.shape[0]


def kaml_tensors(
    frame: pl.DataFrame, spec: InputSpec, labels: list[str], target: str, mask: np.ndarray | None
) -> KamlTensors:
    """Tensors of one split; `mask` is the training mask (None: the base mask)."""
    t = to_tensors(frame, spec, None, None)
    tgt = frame[target].to_numpy().astype(np.int64)
    base = base_mask(tgt, len(labels))
    y = frame.select(labels).to_numpy().astype(np.float32)
    train_mask = base if mask is None else np.asarray(mask, dtype=np.float32)
    return KamlTensors(t.cat, t.num, torch.from_numpy(y), tgt, torch.from_numpy(base), torch.from_numpy(train_mask))


@torch.no_grad()
def predict_kaml(model: KamlNet, data: KamlTensors, device: torch.device) -> np.ndarray:
    """(n, N) conversion probabilities; HKE merges by each row's base mask (its target action)."""
    model.eval()
    out = []
    for idx in batches(len(data), PREDICT_BATCH, None, shuffle=False):
        logits = model(data.cat[idx].to(device), data.num[idx].to(device), data.base[idx].to(device))
        out.append(torch.sigmoid(logits.float()).cpu().numpy().astype(np.float64))
    return np.concatenate(out) if out else np.zeros((0, data.labels.shape[1]))


@dataclass
class KamlResult:
    model: KamlNet
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds_per_epoch: float = 0.0


def train_kaml(
    fit: KamlTensors,
    valid: KamlTensors | None,
    spec: InputSpec,
    cfg: KamlConfig,
    names: list[str],
    seed: int,
    device_name: str = "auto",
    progress: Callable[[str], None] = lambda _: None,
) -> KamlResult:
    """AdamW on the KAML loss; early stopping on the valid weighted mean log loss (eq. 1) when valid is given."""
    n_actions = len(names)
    if fit.labels.shape[1] != n_actions:
        raise UserError(f"KAML: {fit.labels.shape[1]} label columns for {n_actions} actions")
    device = resolve_device(device_name)
    gen = seed_everything(seed)
    mt = cfg.mtdm
    model = KamlNet(spec, n_actions, cfg).to(device)
    weights = torch.tensor(cfg.per_action(cfg.action_weights, n_actions, 1.0, "action_weights"), device=device)
    beta = torch.tensor(cfg.per_action(cfg.rlu_beta, n_actions, 1.0, "rlu_beta"), device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=mt.learning_rate, weight_decay=mt.weight_decay)
    best, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict] = []
    for epoch in range(1, mt.epochs + 1):
        model.train()
        t0, sums, count = time.perf_counter(), {}, 0
        for idx in batches(len(fit), mt.batch_size, gen, shuffle=True):
            cat, num = fit.cat[idx].to(device), fit.num[idx].to(device)
            y, mask, base = fit.labels[idx].to(device), fit.mask[idx].to(device), fit.base[idx].to(device)
            losses = kaml_loss(model(cat, num, base).float(), y, mask, cfg, weights, beta)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            count += len(idx)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        seconds = time.perf_counter() - t0
        record: dict = {"epoch": epoch, "seconds": seconds, **{f"train_{k}": v / count for k, v in sums.items()}}
        line = f"kaml epoch {epoch}/{mt.epochs}: loss {sums['total'] / count:.5f}, {seconds:.1f} s"
        if valid is not None:
            ev = action_metrics(valid.target, valid.labels.numpy(), predict_kaml(model, valid, device), names)
            score = ev["weighted"]["logloss"]
            record["valid"] = ev
            line += f" | valid weighted log loss {score:.5f}, auc {ev['weighted']['auc']:.4f}"
            if score < best - 1e-6:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        else:
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        history.append(record)
        progress(line)
        if valid is not None and stale >= mt.patience:
            progress(f"kaml: early stop after epoch {epoch}, best epoch {best_epoch}")
            break
    model.load_state_dict(best_state)
    return KamlResult(model, best_epoch, history, float(np.median([h["seconds"] for h in history])))
