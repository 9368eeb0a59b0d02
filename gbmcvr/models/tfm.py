"""The `tfm` kind: a feature-interaction Transformer with contrastive self-supervision (RecSys Challenge 2023,
1st place). Network and training in `deep/tfm_model.py`, loaded through `compat.deep()` when a model trains."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import optuna

from gbmcvr import compat
from gbmcvr.context import Context, quiet
from gbmcvr.deep.tfm_params import SPACE, TfmConfig, check_tfm, tfm_config
from gbmcvr.errors import UserError
from gbmcvr.models.base import Objective, Predictor, TrainedRun, TrainOptions
from gbmcvr.models.torch_kind import TorchKind, epoch_pruner, trial_result
from gbmcvr.runs import input_key
from gbmcvr.space import Dimension
from gbmcvr.tables import load_tables

LEAN = ("fit", "valid", "test")  # splits loaded without features: the run reads only its input columns


def _tfm_model() -> Any:
    """`gbmcvr.deep.tfm_model`, imported (with torch) only when a model trains or loads."""
    compat.deep()
    from gbmcvr.deep import tfm_model

    return tfm_model


class TfmKind(TorchKind):
    name = "tfm"
    section = "tfm"
    label = "TFM"
    tune_targets = ("tfm",)
    parse = staticmethod(tfm_config)
    SPACE = SPACE

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        return _key(manifest, self.config(ctx, opts.params), ctx.cfg.seed)

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        if opts.ddp:
            raise UserError("--ddp: data-parallel training is for the MTDM; train tfm without it")
        tfm_model = _tfm_model()
        cfg = self.config(ctx, opts.params)
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan, lean=LEAN)
        run = tfm_model.train_tfm_run(tables, cfg, ctx.cfg.seed, ctx.device, ctx.progress)
        return TrainedRun(
            kind=self.name,
            preds=run.preds,
            metrics=run.metrics,
            params={"tfm": asdict(cfg), "best_epoch": run.result.best_epoch},
            stages=["tfm"],
            input_key=_key(tables.manifest, cfg, ctx.cfg.seed),
            save=partial(tfm_model.save_models, run=run, cfg=cfg),
            model=run,
        )

    def load(self, run_dir: Path) -> Predictor:
        return _tfm_model().load_tfm_run(run_dir)

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        tfm_model = _tfm_model()
        if threads:
            compat.deep().torch.set_num_threads(threads)
        base = ctx.cfg.section(self.section).config
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate", lean=LEAN)

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            suggested = {d.name: d.suggest(trial) for d in space}
            trial_cfg = base.with_overrides(**suggested)
            check_tfm(trial_cfg, "search space")
            run = tfm_model.train_tfm_run(tables, trial_cfg, seed, ctx.device, quiet, epoch_pruner(trial))
            return trial_result(run, suggested)

        return fn


def _key(manifest: dict[str, Any], cfg: TfmConfig, seed: int) -> str:
    """The input key from the resolved config (tuned or file parameters included)."""
    return input_key("tfm", manifest["config_hash"], manifest["raw_fingerprint"], asdict(cfg), seed)


TFM = TfmKind()
