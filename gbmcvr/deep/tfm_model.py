"""The TFM network and its training: an FT-Transformer (Gorishniy et al. 2021) over feature tokens with the MTDM's
CTR/CVR/CTCVR heads on [CLS], and SCARF-like contrastive self-supervision (InfoNCE between two corrupted views).

The few lines of the FT-Transformer are written here on `nn.TransformerEncoder` rather than taken from the rtdl
package: they are short, and the SSL views need the token and [CLS] steps separately. Categorical tokens come from
the MTDM's one offset table (unseen and null values on each field's reserved row; QR pairs for large fields).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn
from torch.nn import functional as F

from gbmcvr import metrics
from gbmcvr.atomic import write_json
from gbmcvr.deep.batches import InputSpec, Tensors, batches, fit_inputs, to_tensors
from gbmcvr.deep.losses import task_losses
from gbmcvr.deep.model import Dropout, OffsetEmbedding, ParallelMLP, product_logit
from gbmcvr.deep.params import MtdmConfig
from gbmcvr.deep.qr import FieldEmbedding
from gbmcvr.deep.run import input_columns, multitask_outputs
from gbmcvr.deep.tfm_params import TfmConfig, tfm_config
from gbmcvr.deep.train import _autocast, predict, resolve_device, seed_everything, task_metrics
from gbmcvr.errors import UserError
from gbmcvr.progress import Reporter, counted
from gbmcvr.runs import read_run_meta
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables


class FTTransformer(nn.Module):
    """Feature tokens + [CLS] -> pre-norm Transformer -> task towers over [CLS]; `forward` returns MTDM-style logits."""

    def __init__(self, spec: InputSpec, cfg: TfmConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d, fields_, numerical = cfg.d_token, len(spec.categorical), len(spec.numerical)
        bound = 1 / math.sqrt(d)
        if cfg.qr_threshold > 0:
            self.categorical = FieldEmbedding(spec.sizes, d, cfg.qr_threshold, cfg.qr_combine)
        else:
            self.categorical = OffsetEmbedding(spec.embedding_rows, d)
            nn.init.uniform_(self.categorical.weight, -bound, bound)
        self.cat_bias = nn.Parameter(torch.zeros(fields_, d))
        self.num_weight = nn.Parameter(torch.empty(numerical, d).uniform_(-bound, bound))
        self.num_bias = nn.Parameter(torch.empty(numerical, d).uniform_(-bound, bound))
        self.cls = nn.Parameter(torch.empty(1, 1, d).uniform_(-bound, bound))
        layer = nn.TransformerEncoderLayer(
            d, cfg.heads, round(d * cfg.ffn_factor), cfg.dropout, "gelu", batch_first=True, norm_first=True
        )
        layer.self_attn.dropout = cfg.attention_dropout
        for name in ("dropout", "dropout1", "dropout2"):  # the MTDM's cheaper CPU dropout mask
            setattr(layer, name, Dropout(cfg.dropout))
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.tasks = ["ctr", "cvr"] + (["ctcvr"] if cfg.ctcvr_head == "tower" else [])
        self.towers = ParallelMLP(d, (*cfg.tower_hidden, 1), len(self.tasks), cfg.dropout, activate_last=False)
        self.projection = nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, cfg.projection_dim))

    def encode(self, cat: torch.Tensor, num: torch.Tensor) -> torch.Tensor:
        """The normalised [CLS] output (batch, d_token) for offset codes and transformed numericals."""
        tokens = [self.categorical(cat) + self.cat_bias, num.unsqueeze(-1) * self.num_weight + self.num_bias]
        x = torch.cat([self.cls.expand(cat.shape[0], -1, -1), *tokens], dim=1)
        return self.norm(self.encoder(x)[:, 0])

    def heads(self, cls: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per task from [CLS]: ctr, cvr, ctcvr (a tower, or CTR x CVR), product and install."""
        towers = self.towers(torch.relu(cls)).squeeze(-1).float()
        logits = dict(zip(self.tasks, towers, strict=True))
        logits["product"] = product_logit(logits["ctr"], logits["cvr"])
        logits.setdefault("ctcvr", logits["product"])
        logits["install"] = logits["ctcvr"] if self.cfg.install_from == "ctcvr" else logits["product"]
        return logits

    def forward(self, cat: torch.Tensor, num: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.encode(cat, num))


def corrupt(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Each entry replaced, with probability `rate`, by the same column's value in a random row of the batch."""
    if x.numel() == 0 or rate == 0.0:
        return x
    donors = torch.randint(0, x.shape[0], x.shape, device=x.device)
    return torch.where(torch.rand(x.shape, device=x.device) < rate, x.gather(0, donors), x)


def info_nce(a: torch.Tensor, b: torch.Tensor, tau: float) -> torch.Tensor:
    """Symmetric InfoNCE: row i of `a` and row i of `b` are the positive pair, the batch's other rows negatives."""
    a, b = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    logits = a @ b.T / tau
    target = torch.arange(a.shape[0], device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def two_views(cat: torch.Tensor, num: torch.Tensor, rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two corrupted views of n rows stacked to 2n: row i's positive pair is rows i and n + i."""
    return torch.cat([corrupt(cat, rate), corrupt(cat, rate)]), torch.cat([corrupt(num, rate), corrupt(num, rate)])


def contrast(model: FTTransformer, views_cls: torch.Tensor, tau: float) -> torch.Tensor:
    """InfoNCE between the projected [CLS] outputs of the two stacked views."""
    projected = model.projection(views_cls)
    n = projected.shape[0] // 2
    return info_nce(projected[:n], projected[n:], tau)


def batch_losses(model: FTTransformer, batch: Tensors, cfg: TfmConfig, loss_cfg: MtdmConfig) -> dict[str, torch.Tensor]:
    """Supervised losses of the clean rows plus, with ssl_weight > 0, InfoNCE of two views (one encoder pass)."""
    if cfg.ssl_weight == 0.0:
        return task_losses(model(batch.cat, batch.num), batch.like, batch.install, loss_cfg)
    n = len(batch)
    views_cat, views_num = two_views(batch.cat, batch.num, cfg.corruption)
    cls = model.encode(torch.cat([batch.cat, views_cat]), torch.cat([batch.num, views_num]))
    losses = task_losses(model.heads(cls[:n]), batch.like, batch.install, loss_cfg)
    losses["ssl"] = contrast(model, cls[n:], cfg.tau)
    losses["total"] = losses["total"] + cfg.ssl_weight * losses["ssl"]
    return losses


def ssl_loss(model: FTTransformer, cat: torch.Tensor, num: torch.Tensor, cfg: TfmConfig) -> torch.Tensor:
    """InfoNCE of two corrupted views of the rows (features only: pre-training sees no label)."""
    return contrast(model, model.encode(*two_views(cat, num, cfg.corruption)), cfg.tau)


@dataclass
class TfmResult:
    model: FTTransformer
    best_epoch: int
    history: list[dict] = field(default_factory=list)
    pretrain_history: list[dict] = field(default_factory=list)
    pretrained: dict[str, torch.Tensor] | None = None  # the weights after pre-training (None without it)
    seconds: float = 0.0
    samples_per_s: float = 0.0


def _optimizer(model: nn.Module, cfg: TfmConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay, fused=True)


def pretrain(
    model: FTTransformer,
    rows: Tensors,
    cfg: TfmConfig,
    gen: torch.Generator,
    device: torch.device,
    progress: Callable[[str], None],
) -> list[dict]:
    """`cfg.pretrain_epochs` of InfoNCE alone over `rows` (features of every split; labels are never passed)."""
    opt, history = _optimizer(model, cfg), []
    cat, num = rows.cat.to(device), rows.num.to(device)
    model.train()
    for epoch in range(1, cfg.pretrain_epochs + 1):
        t0, total, count = time.perf_counter(), torch.zeros((), device=device), 0
        shown = contextlib.ExitStack()
        n_batches = -(-cat.shape[0] // cfg.batch_size)
        label = f"tfm pretrain epoch {epoch}/{cfg.pretrain_epochs}"
        bar = shown.enter_context(counted(progress, label, n_batches, "batches"))
        for done, idx in enumerate(batches(cat.shape[0], cfg.batch_size, gen, shuffle=True), start=1):
            if isinstance(progress, Reporter):
                bar.update(done)
            idx = idx.to(device)
            with _autocast(device, cfg.precision):
                loss = ssl_loss(model, cat.index_select(0, idx), num.index_select(0, idx), cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + loss.detach() * len(idx), count + len(idx)
        shown.close()
        seconds = time.perf_counter() - t0
        history.append({"epoch": epoch, "ssl": float(total) / count, "seconds": seconds, "rows": count})
        progress(
            f"tfm pretrain epoch {epoch}/{cfg.pretrain_epochs}: ssl {float(total) / count:.4f} "
            f"over {count:,} rows | {count / seconds:,.0f} samples/s"
        )
    return history


def train_tfm(
    fit: Tensors,
    valid: Tensors | None,
    spec: InputSpec,
    cfg: TfmConfig,
    seed: int,
    device: torch.device,
    progress: Callable[[str], None] = lambda _: None,
    epoch_callback: Callable[[int, float], None] | None = None,
    unlabeled: Tensors | None = None,
) -> TfmResult:
    """Optional SSL pre-training on `unlabeled` (features only), then supervised training (+ ssl_weight x InfoNCE)
    with early stopping on valid install log loss; the best epoch's weights are kept."""
    if fit.like is None or fit.install is None:
        raise UserError("TFM training needs like and install labels in the fit rows")
    for name, y in (("like", fit.like), ("install", fit.install)):
        if float(y.min()) == float(y.max()):
            raise UserError(f"TFM: the {name} label is constant in the fit rows")
    if cfg.pretrain_epochs > 0 and unlabeled is None:
        raise UserError("TFM: pretrain_epochs > 0 needs the rows to pre-train on")
    gen = seed_everything(seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model = FTTransformer(spec, cfg).to(device)
    start = time.perf_counter()
    pretrain_history, pretrained = [], None
    if cfg.pretrain_epochs > 0:
        pretrain_history = pretrain(model, unlabeled, cfg, gen, device, progress)
        pretrained = copy.deepcopy(model.state_dict())
    loss_cfg = MtdmConfig(loss_weights=cfg.loss_weights)
    opt = _optimizer(model, cfg)
    best, best_epoch, best_state, stale = float("inf"), 0, copy.deepcopy(model.state_dict()), 0
    history: list[dict] = []
    resident = fit.to(device)  # a GPU holds the whole fit split: batches are gathered on the device
    valid_rows = valid.to(device) if valid is not None else None
    seen = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0, sums, count = time.perf_counter(), {}, 0
        shown = contextlib.ExitStack()
        n_batches = -(-len(fit) // cfg.batch_size)
        bar = shown.enter_context(counted(progress, f"tfm epoch {epoch}/{cfg.epochs}", n_batches, "batches"))
        for done, idx in enumerate(batches(len(fit), cfg.batch_size, gen, shuffle=True), start=1):
            if isinstance(progress, Reporter):  # a bar inside the epoch; plain lines come once per epoch below
                bar.update(done)
            batch = resident.rows(idx.to(device))
            with _autocast(device, cfg.precision):
                losses = batch_losses(model, batch, cfg, loss_cfg)
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            opt.step()
            for k, v in losses.items():  # summed on the device: no host sync per batch
                sums[k] = sums.get(k, 0.0) + v.detach() * len(idx)
            count += len(idx)
        shown.close()
        seconds = time.perf_counter() - t0
        seen += count
        record = {"epoch": epoch, "seconds": seconds, "samples_per_s": count / seconds}
        record.update({f"train_{k}": float(v) / count for k, v in sums.items()})
        line = f"tfm epoch {epoch}/{cfg.epochs}: " + ", ".join(f"{k} {float(v) / count:.4f}" for k, v in sums.items())
        if valid_rows is not None and valid.install is not None:
            pred = predict(model, valid_rows, device)
            tm = task_metrics(pred, valid.like.numpy(), valid.install.numpy())
            score = metrics.log_loss(valid.install.numpy(), pred["p"])
            record.update({"valid_logloss": score, "valid_tasks": tm})
            line += f" | valid install log loss {score:.5f}"
            if epoch_callback is not None:
                epoch_callback(epoch, score)
            if score < best - 1e-6:
                best, best_epoch, stale = score, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
        else:
            best_epoch, best_state = epoch, copy.deepcopy(model.state_dict())
        history.append(record)
        progress(line + f" | {count / seconds:,.0f} samples/s")
        if valid_rows is not None and stale >= cfg.patience:
            progress(f"tfm: early stop after epoch {epoch}, best epoch {best_epoch}")
            break
    model.load_state_dict(best_state)
    elapsed = time.perf_counter() - start
    return TfmResult(model, best_epoch, history, pretrain_history, pretrained, elapsed, seen / max(elapsed, 1e-9))


@dataclass
class TfmRun:
    result: TfmResult
    spec: InputSpec
    preds: pl.DataFrame
    metrics: dict[str, Any]


def features_only(data: dict[str, Tensors]) -> Tensors:
    """Every split's input tensors stacked, without labels: what pre-training reads."""
    parts = list(data.values())
    return Tensors(torch.cat([t.cat for t in parts]), torch.cat([t.num for t in parts]), None, None)


def train_tfm_run(
    tables: FeatureTables,
    cfg: TfmConfig,
    seed: int,
    device_name: str,
    progress: Callable[[str], None] = lambda _: None,
    epoch_callback: Callable[[int, float], None] | None = None,
) -> TfmRun:
    """Tensors from the plan's tables (the MTDM's inputs), training, valid and test predictions and metrics."""
    device = resolve_device(device_name)
    progress(f"tfm: device {device}")
    cats, nums = input_columns(tables, cfg)
    fit = tables.frame("fit", cats + nums)
    spec = fit_inputs(fit, cats, nums, cfg.numeric_transform)
    progress(f"tfm: {len(cats)} categorical and {len(nums)} numerical tokens")
    install = tables.install_label
    data = {"fit": to_tensors(fit, spec, LIKE, install)}
    del fit
    for split in [s for s in tables.splits if s != "fit"]:
        data[split] = to_tensors(tables.frame(split, cats + nums), spec, LIKE, install)
    unlabeled = features_only(data) if cfg.pretrain_epochs > 0 else None
    result = train_tfm(data["fit"], data.get("valid"), spec, cfg, seed, device, progress, epoch_callback, unlabeled)
    del unlabeled
    preds, scores = multitask_outputs(tables, data, lambda t: predict(result.model, t, device), result)
    out_metrics = scores | {
        "device": str(device),
        "history": result.history,
        "pretrain_history": result.pretrain_history,
    }
    return TfmRun(result, spec, preds, out_metrics)


def save_models(folder: Path, run: TfmRun, cfg: TfmConfig) -> None:
    """The state_dict (model.pt) and its JSON config (the `[tfm]` values and the input spec)."""
    torch.save(run.result.model.state_dict(), folder / "model.pt")
    write_json(folder / "config.json", {"tfm": asdict(cfg), "inputs": run.spec.to_json()})


@dataclass
class LoadedTfm:
    model: FTTransformer
    spec: InputSpec
    cfg: TfmConfig

    def predict(self, frame: pl.DataFrame, device: str = "cpu") -> dict[str, np.ndarray]:
        return predict(self.model, to_tensors(frame, self.spec, None, None), resolve_device(device))


def load_tfm_run(run_dir: Path) -> LoadedTfm:
    """The state_dict (torch.load with weights_only=True) and the JSON config; no pickle."""
    run_dir = Path(run_dir)
    read_run_meta(run_dir)
    conf = json.loads((run_dir / "config.json").read_text())
    cfg = tfm_config(conf["tfm"], f"{run_dir}/config.json")
    spec = InputSpec.from_json(conf["inputs"])
    model = FTTransformer(spec, cfg)
    try:
        model.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True, map_location="cpu"))
    except RuntimeError as err:
        raise UserError(f"{run_dir}: its weights do not fit this version's TFM layout; train the run again") from err
    return LoadedTfm(model, spec, cfg)
