"""KAML run directories: `gbmcvr train mtdm` on a profile with several conversion actions.

The feature tables carry the model inputs; the reported action labels, the raw target action and the
advertising task come from the raw store, joined by row id. The network trains on the fit window's
post-click samples (the paper's CVR setting), stops early on the valid day's clicks by the weighted mean
log loss of eq. 1, and predicts every valid and test row: `p_<action>` is P(action | click, x) and `p`
is that of the row's target action.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from gbmcvr.atomic import write_json
from gbmcvr.data.profile import Profile
from gbmcvr.deep.batches import InputSpec, fit_inputs
from gbmcvr.deep.kaml import action_metrics, metrics_table, training_mask
from gbmcvr.deep.kaml_model import KamlResult, kaml_tensors, predict_kaml, train_kaml
from gbmcvr.deep.params import KamlConfig
from gbmcvr.deep.run import input_columns
from gbmcvr.deep.train import resolve_device
from gbmcvr.errors import UserError
from gbmcvr.runs import prediction_table
from gbmcvr.tables import FeatureTables

TARGET, TASK, LABEL = "__kaml_target", "__kaml_task", "__kaml_"


def raw_action_columns(raw_dir: Path, profile: Profile) -> pl.DataFrame:
    """Row id, raw target action, advertising task and reported action labels (null on test rows)."""
    names = list(profile.conversions)
    keep = [profile.id_column, profile.target_action, profile.ad_task]
    train = pl.scan_parquet(raw_dir / "train.parquet", glob=False).select(*keep, *names)
    test = pl.scan_parquet(raw_dir / "test.parquet", glob=False).select(*keep)
    rename = {profile.target_action: TARGET, profile.ad_task: TASK, **{c: LABEL + c for c in names}}
    frame = pl.concat([train, test], how="diagonal_relaxed").rename(rename)
    return frame.with_columns(pl.col(TARGET).cast(pl.Int64)).collect()


@dataclass
class KamlRun:
    result: KamlResult
    spec: InputSpec
    actions: list[str]
    preds: pl.DataFrame
    metrics: dict[str, Any]


def train_kaml_run(
    tables: FeatureTables,
    raw_dir: Path,
    profile: Profile,
    cfg: KamlConfig,
    seed: int,
    device_name: str,
    progress: Callable[[str], None] = lambda _: None,
) -> KamlRun:
    """Train the KAML network on the plan's fit clicks; per-action predictions and eq. 1 metrics on valid."""
    names = list(profile.conversions)
    labels = [LABEL + c for c in names]
    device = resolve_device(device_name)
    progress(f"kaml: {len(names)} conversion actions, mask {cfg.mask}, device {device}")
    extra = raw_action_columns(Path(raw_dir), profile)
    idc, click, day = tables.id_column, profile.click_label, profile.day_column
    frames = {s: f.join(extra, on=idc, how="left", maintain_order="left") for s, f in tables.splits.items()}
    for split, frame in frames.items():
        if frame[TARGET].null_count():
            raise UserError(f"kaml: {split} rows without a row in the raw store; rebuild the features after ingest")
    clicks = {s: frames[s].filter(pl.col(click) == 1) for s in ("fit", "valid") if s in frames}
    if clicks["fit"].height == 0:
        raise UserError("kaml: the fit window has no clicked rows to train the conversion towers on")
    cats, nums = input_columns(tables, cfg.mtdm)
    spec = fit_inputs(clicks["fit"], cats, nums, cfg.mtdm.numeric_transform)
    mask = training_mask(clicks["fit"], cfg, day, TASK, TARGET, labels)
    fit_t = kaml_tensors(clicks["fit"], spec, labels, TARGET, mask)
    coverage = fit_t.mask.double().mean(dim=0).numpy().round(4).tolist()
    progress(f"kaml: training mask covers {dict(zip(names, coverage, strict=True))} of the fit clicks")
    valid_t = kaml_tensors(clicks["valid"], spec, labels, TARGET, None) if "valid" in clicks else None
    result = train_kaml(fit_t, valid_t, spec, cfg, names, seed, device_name, progress)
    ids, cols = {}, {}
    for split in ("valid", "test"):
        if split not in frames:
            continue
        frame = frames[split].with_columns(pl.col(labels).fill_null(0))
        probs = predict_kaml(result.model, kaml_tensors(frame, spec, labels, TARGET, None), device)
        target = frame[TARGET].to_numpy()
        ids[split] = frame[idc].to_numpy()
        cols[split] = {
            "p": probs[np.arange(len(target)), target - 1],
            **{f"p_{c}": probs[:, j] for j, c in enumerate(names)},
        }
    out_metrics: dict[str, Any] = {
        "p": "post-click probability of the row's target action (p_<action>: of each action)",
        "actions": names,
        "mask_coverage": dict(zip(names, coverage, strict=True)),
        "best_epoch": result.best_epoch,
        "seconds_per_epoch": result.seconds_per_epoch,
        "device": str(device),
        "history": result.history,
    }
    if valid_t is not None:
        probs = predict_kaml(result.model, valid_t, device)
        out_metrics["valid"] = action_metrics(valid_t.target, valid_t.labels.numpy(), probs, names)
    return KamlRun(result, spec, names, prediction_table(ids, cols), out_metrics)


def save_models(folder: Path, run: KamlRun, cfg: KamlConfig) -> None:
    """The state_dict with its JSON config (inputs, actions)."""
    torch.save(run.result.model.state_dict(), folder / "model.pt")
    write_json(folder / "config.json", {"kaml": asdict(cfg), "inputs": run.spec.to_json(), "actions": run.actions})


def kaml_summary(run_metrics: dict[str, Any]) -> str:
    """The valid day's per-action AUC / log loss and their weighted mean (eq. 1) as a Markdown table."""
    if "valid" not in run_metrics:
        return "kaml: no valid day in this plan"
    row = run_metrics["valid"] | {"seconds_per_epoch": run_metrics["seconds_per_epoch"]}
    return metrics_table({"valid (clicks)": row}, run_metrics["actions"])
