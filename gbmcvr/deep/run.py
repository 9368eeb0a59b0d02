"""MTDM run directories: inputs from feature tables, training, state_dict + JSON config, prediction table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from gbmcvr import metrics
from gbmcvr.atomic import write_json
from gbmcvr.deep.batches import InputSpec, Tensors, fit_inputs, to_tensors
from gbmcvr.deep.distributed import DataParallel, shard_rows
from gbmcvr.deep.model import MTDM
from gbmcvr.deep.params import MtdmConfig, mtdm_config
from gbmcvr.deep.qr import table_rows
from gbmcvr.deep.train import MtdmResult, ensemble_predict, resolve_device, task_metrics, train_mtdm
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.runs import prediction_table, read_run_meta
from gbmcvr.schema import LIKE
from gbmcvr.tables import FeatureTables


def input_columns(tables: FeatureTables, cfg: MtdmConfig) -> tuple[list[str], list[str]]:
    """Categorical fields (codes, crosses, day cycle) and numericals (cleaned; optionally target encodings)."""
    families = {"clean", "target"} if cfg.use_target_encoding else {"clean"}
    cats = tables.columns("categorical")
    nums = [c["name"] for c in tables.manifest["columns"] if c["role"] == "numeric" and c["family"] in families]
    return cats, nums


@dataclass
class MtdmRun:
    result: MtdmResult
    spec: InputSpec
    preds: pl.DataFrame
    metrics: dict[str, Any]


def teacher_predictions(run_dir: Path, frame: pl.DataFrame) -> np.ndarray:
    """A teacher run's install probabilities for the given rows: LightGBM, or an MTDM (e.g. CTR + CTCVR)."""
    return registry.get(read_run_meta(run_dir)["kind"]).load(run_dir).predict(frame)["p"]


def train_mtdm_run(
    tables: FeatureTables,
    cfg: MtdmConfig,
    seed: int,
    device_name: str,
    teacher_dir: Path | None,
    progress: Callable[[str], None] = lambda _: None,
    epoch_callback: Callable[[int, float], None] | None = None,
    parallel: DataParallel | None = None,
) -> MtdmRun:
    device = parallel.device if parallel is not None else resolve_device(device_name)
    progress(f"mtdm: device {device}")
    cats, nums = input_columns(tables, cfg)
    fit = tables.frame("fit", cats + nums)
    spec = fit_inputs(fit, cats, nums, cfg.numeric_transform)
    if cfg.qr_threshold > 0:
        for t in table_rows(spec.categorical, spec.sizes, cfg.embedding_dim, cfg.qr_threshold):
            kind = "QR" if t["qr"] else "shared table"
            progress(f"mtdm: embedding {t['column']}: {t['rows']:,} rows ({t['bytes'] / 2**20:.2f} MiB, {kind})")
    install = tables.install_label
    data = {"fit": to_tensors(fit, spec, LIKE, install)}
    del fit  # one split's input frame at a time: only its tensors stay
    for split in [s for s in tables.splits if s != "fit"]:
        data[split] = to_tensors(tables.frame(split, cats + nums), spec, LIKE, install)
    if teacher_dir is not None:
        teacher_frame = tables.frame("fit")
        data["fit"].teacher = torch.from_numpy(teacher_predictions(teacher_dir, teacher_frame).astype(np.float32))
        del teacher_frame
    valid = data.get("valid")
    if parallel is not None and valid is not None:
        valid = shard_rows(valid, parallel)
    result = train_mtdm(data["fit"], valid, spec, cfg, seed, device, progress, epoch_callback, parallel)
    preds, out_metrics = multitask_outputs(tables, data, lambda t: ensemble_predict(result.models, t, device), result)
    return MtdmRun(result, spec, preds, out_metrics | {"device": str(device), "history": result.history})


def multitask_outputs(
    tables: FeatureTables,
    data: dict[str, Tensors],
    predict: Callable[[Tensors], dict[str, np.ndarray]],
    result: Any,
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A multi-task network's prediction table of the valid and test rows (`predict` gives a split's columns
    from its tensors), and its metrics: valid-day scores (install, the CTR x CVR product, each task), best
    epoch and speed of its training `result`."""
    ids, cols = {}, {}
    for split in ("valid", "test"):
        if split in tables.splits:
            ids[split] = tables.splits[split][tables.id_column].to_numpy()
            cols[split] = predict(data[split])
    valid = tables.splits["valid"]
    y, like = valid[tables.install_label].to_numpy(), valid[LIKE].to_numpy()
    rate = tables.base_rate()
    scores = {
        "base_rate": rate,
        "base_rate_source": "install rate of the fit window",
        "valid": {
            "p": metrics.report(y, cols["valid"]["p"], rate),
            "p_product": metrics.report(y, cols["valid"]["p_product"], rate),
            "tasks": task_metrics(cols["valid"], like, y),
        },
        "best_epoch": result.best_epoch,
        "samples_per_s": result.samples_per_s,
        "train_seconds": result.seconds,
    }
    return prediction_table(ids, cols), scores


def save_models(folder: Path, run: MtdmRun, cfg: MtdmConfig) -> None:
    """The state_dicts (model.pt, and model_peer.pt for mutual learning) with their JSON config."""
    for i, m in enumerate(run.result.models):
        torch.save(m.state_dict(), folder / ("model.pt" if i == 0 else "model_peer.pt"))
    write_json(
        folder / "config.json", {"mtdm": asdict(cfg), "inputs": run.spec.to_json(), "models": len(run.result.models)}
    )


@dataclass
class LoadedMtdm:
    models: list[MTDM]
    spec: InputSpec
    cfg: MtdmConfig

    def predict(self, frame: pl.DataFrame, device: str = "cpu") -> dict[str, np.ndarray]:
        data = to_tensors(frame, self.spec, None, None)
        return ensemble_predict(self.models, data, resolve_device(device))


def load_mtdm_run(run_dir: Path) -> LoadedMtdm:
    """Load state_dicts with weights_only=True and the JSON config; no pickle."""
    run_dir = Path(run_dir)
    read_run_meta(run_dir)
    conf = json.loads((run_dir / "config.json").read_text())
    if "kaml" in conf:
        raise UserError(f"{run_dir}: a KAML run (several conversion actions) cannot be loaded as an MTDM")
    raw_cfg = {k: v for k, v in conf["mtdm"].items()}
    cfg = mtdm_config(raw_cfg, f"{run_dir}/config.json")
    spec = InputSpec.from_json(conf["inputs"])
    models = []
    for i in range(conf["models"]):
        bottom = (cfg.mutual_bottom or cfg.bottom) if i == 1 else None
        m = MTDM(spec.embedding_rows, len(spec.categorical), len(spec.numerical), cfg, bottom=bottom, sizes=spec.sizes)
        state = torch.load(run_dir / ("model.pt" if i == 0 else "model_peer.pt"), weights_only=True, map_location="cpu")
        try:
            m.load_state_dict(state)
        except RuntimeError as err:
            raise UserError(
                f"{run_dir}: its weights do not fit this version's MTDM layout (runs written before the fused "
                "experts must be retrained)"
            ) from err
        models.append(m)
    return LoadedMtdm(models, spec, cfg)
