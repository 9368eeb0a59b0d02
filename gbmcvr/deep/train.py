"""Train and predict the MTDM: AdamW, early stopping on valid install log loss, CUDA when present."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

from gbmcvr import metrics
from gbmcvr.deep.batches import InputSpec, Tensors, batches
from gbmcvr.deep.distributed import DataParallel, mean_tasks
from gbmcvr.deep.losses import task_losses
from gbmcvr.deep.model import MTDM
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.errors import UserError
from gbmcvr.progress import Reporter, counted

PREDICT_BATCH = 65_536


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available else cpu; an explicit cuda without a GPU is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda: no CUDA GPU is available here (use --device cpu)")
        return torch.device("cuda")
    raise UserError(f"unknown device '{name}' (choose auto, cpu or cuda)")


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))
    return torch.Generator().manual_seed(seed)


def _to(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if x.device == device:
        return x
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on CUDA for "auto" and on either device for "bf16"; plain fp32 otherwise."""
    bf16 = precision == "bf16" or (precision == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.no_grad()
def predict(model: MTDM, data: Tensors, device: torch.device) -> dict[str, np.ndarray]:
    """Probabilities p (install), p_ctr, p_cvr, p_ctcvr, p_product for every row of `data`."""
    model.eval()
    outs: dict[str, list[torch.Tensor]] = {k: [] for k in ("install", "ctr", "cvr", "ctcvr", "product")}
    for idx in batches(len(data), PREDICT_BATCH, None, shuffle=False):
        idx = idx.to(data.cat.device)
        with _autocast(device, model.cfg.precision):
            logits = model(_to(data.cat.index_select(0, idx), device), _to(data.num.index_select(0, idx), device))
        for k in outs:
            outs[k].append(torch.sigmoid(logits[k].float()))
    cat = {k: torch.cat(v).cpu().numpy().astype(np.float64) if v else np.zeros(0) for k, v in outs.items()}
    return {
        "p": cat["install"],
        "p_ctr": cat["ctr"],
        "p_cvr": cat["cvr"],
        "p_ctcvr": cat["ctcvr"],
        "p_product": cat["product"],
    }


def task_metrics(pred: dict[str, np.ndarray], like: np.ndarray, install: np.ndarray) -> dict[str, dict]:
    """Log loss and AUC per task: CTR on all rows, CVR on like rows, CTCVR and the install output on all."""
    mask = like > 0.5
    out = {
        "ctr": {"logloss": metrics.log_loss(like, pred["p_ctr"]), "auc": metrics.auc(like, pred["p_ctr"])},
        "cvr": {
            "logloss": metrics.log_loss(install[mask], pred["p_cvr"][mask]),
            "auc": metrics.auc(install[mask], pred["p_cvr"][mask]),
        }
        if mask.any()
        else {},
        "ctcvr": {"logloss": metrics.log_loss(install, pred["p_ctcvr"]), "auc": metrics.auc(install, pred["p_ctcvr"])},
        "product": {
            "logloss": metrics.log_loss(install, pred["p_product"]),
            "auc": metrics.auc(install, pred["p_product"]),
        },
    }
    return out


@dataclass
class MtdmResult:
    models: list[MTDM]
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_s: float = 0.0


def build_models(spec: InputSpec, cfg: MtdmConfig) -> list[MTDM]:
    fields_, numerical = len(spec.categorical), len(spec.numerical)
    models = [MTDM(spec.embedding_rows, fields_, numerical, cfg, sizes=spec.sizes)]
    if cfg.mutual_weight > 0:
        peer = cfg.mutual_bottom or cfg.bottom
        models.append(MTDM(spec.embedding_rows, fields_, numerical, cfg, bottom=peer, sizes=spec.sizes))
    return models


def ensemble_predict(models: list[MTDM], data: Tensors, device: torch.device) -> dict[str, np.ndarray]:
    """Predictions of one model, or the average of the mutual-learning pair."""
    preds = [predict(m, data, device) for m in models]
    return {k: np.mean([p[k] for p in preds], axis=0) for k in preds[0]}


def train_mtdm(
    fit: Tensors,
    valid: Tensors | None,
    spec: InputSpec,
    cfg: MtdmConfig,
    seed: int,
    device: torch.device,
    progress: Callable[[str], None] = lambda _: None,
    epoch_callback: Callable[[int, float], None] | None = None,
    parallel: DataParallel | None = None,
) -> MtdmResult:
    """Train (one model, or two with mutual learning) with early stopping on valid install log loss.

    `epoch_callback(epoch, valid_logloss)` runs after each epoch (Optuna reports and prunes through it).
    With `parallel` (under torchrun) `fit` and `valid` are full and this rank's share of the rows; see
    `deep/distributed.py`.
    """
    if fit.like is None or fit.install is None:
        raise UserError("MTDM training needs like and install labels in the fit rows")
    for name, y in (("like", fit.like), ("install", fit.install)):
        if float(y.min()) == float(y.max()):
            raise UserError(f"MTDM: the {name} label is constant in the fit rows")
    gen = seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    models = [m.to(device) for m in build_models(spec, cfg)]
    runners = parallel.wrap(models) if parallel is not None else models
    runners = [torch.compile(r) if cfg.compile else r for r in runners]
    batch_gen = parallel.batch_generator() if parallel is not None else gen
    params = [p for m in models for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)
    best, best_epoch, best_states, stale = float("inf"), 0, [copy.deepcopy(m.state_dict()) for m in models], 0
    history: list[dict] = []
    resident = fit.to(device)  # a GPU holds the whole fit split: batches are gathered on the device
    valid_rows = valid.to(device) if valid is not None else None
    start, seen = time.perf_counter(), 0
    for epoch in range(1, cfg.epochs + 1):
        for m in models:
            m.train()
        t0, sums, count = time.perf_counter(), {}, 0
        n_batches = -(-len(fit) // cfg.batch_size)
        bars = isinstance(progress, Reporter) and progress.draws_bars
        shown = contextlib.ExitStack()
        bar = shown.enter_context(counted(progress, f"mtdm epoch {epoch}/{cfg.epochs}", n_batches, "batches"))
        for done, idx in enumerate(batches(len(fit), cfg.batch_size, batch_gen, shuffle=True), start=1):
            if bars:  # a bar inside the epoch on a terminal; plain lines come once per epoch below
                bar.update(done)
            if parallel is not None and (idx := parallel.shard(idx)) is None:
                continue
            batch = resident.rows(idx.to(device))
            with _autocast(device, cfg.precision):
                outs = [r(batch.cat, batch.num) for r in runners]
            total = torch.zeros((), device=device)
            for i, o in enumerate(outs):
                losses = task_losses(o, batch.like, batch.install, cfg, batch.teacher, gen)
                loss = losses["total"]
                if len(outs) > 1:
                    peer = torch.sigmoid(outs[1 - i]["install"]).detach()
                    losses["mutual"] = F.mse_loss(torch.sigmoid(o["install"]), peer)
                    loss = loss + cfg.mutual_weight * losses["mutual"]
                total = total + loss
                if i == 0:
                    for k, v in losses.items():  # summed on the device: no host sync per batch
                        sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            count += len(idx)
        shown.close()
        sums = {k: float(v) for k, v in sums.items()}
        seen += count
        rate = count / (time.perf_counter() - t0)
        record = {"epoch": epoch, "samples_per_s": rate, **{f"train_{k}": v / count for k, v in sums.items()}}
        line = f"mtdm epoch {epoch}/{cfg.epochs}: " + ", ".join(f"{k} {v / count:.4f}" for k, v in sums.items())
        if valid is not None and valid.install is not None:
            pred = ensemble_predict(models, valid_rows, device)
            tm = task_metrics(pred, valid.like.numpy(), valid.install.numpy())
            score = metrics.log_loss(valid.install.numpy(), pred["p"])
            if parallel is not None:
                score, tm = parallel.mean(score, len(valid)), mean_tasks(tm, len(valid), parallel)
            record.update({"valid_logloss": score, "valid_tasks": tm})
            line += f" | valid install log loss {score:.5f}, " + ", ".join(
                f"{t} ll {v['logloss']:.4f} auc {v['auc']:.4f}" for t, v in tm.items() if v
            )
            if epoch_callback is not None:
                epoch_callback(epoch, score)
            if score < best - 1e-6:
                best, best_epoch, stale = score, epoch, 0
                best_states = [copy.deepcopy(m.state_dict()) for m in models]
            else:
                stale += 1
        else:
            best_epoch = epoch
            best_states = [copy.deepcopy(m.state_dict()) for m in models]
        history.append(record)
        progress(line + f" | {rate:,.0f} samples/s")
        if valid is not None and stale >= cfg.patience:
            progress(f"mtdm: early stop after epoch {epoch}, best epoch {best_epoch}")
            break
    for m, s in zip(models, best_states, strict=True):
        m.load_state_dict(s)
    elapsed = time.perf_counter() - start
    return MtdmResult(models, best_epoch, history, elapsed, seen / max(elapsed, 1e-9))
