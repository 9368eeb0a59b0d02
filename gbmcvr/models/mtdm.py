"""The deep multi-task kind `mtdm` (MMoE over CTR, CVR, CTCVR); on a profile with several conversion actions
it trains the KAML network (`[mtdm.kaml]`). Torch loads through `compat.deep()` when a model trains."""

from __future__ import annotations

from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import optuna

from gbmcvr import compat
from gbmcvr.context import Context, quiet
from gbmcvr.deep.params import KamlConfig, MtdmConfig, check_mtdm, mtdm_config, mtdm_kaml_config, torch_errors
from gbmcvr.errors import UserError
from gbmcvr.models.base import Objective, Predictor, TrainedRun, TrainOptions
from gbmcvr.models.torch_kind import TorchKind, epoch_pruner, trial_result
from gbmcvr.runs import input_key, read_run_meta
from gbmcvr.space import Dimension
from gbmcvr.tables import load_tables

SPACE: dict[str, dict[str, Any]] = {
    "learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
    "embedding_dim": {"type": "int", "low": 4, "high": 32, "log": True},
    "experts": {"type": "int", "low": 2, "high": 8},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "batch_size": {"type": "categorical", "choices": [1024, 2048, 4096, 8192]},
}


LEAN = ("fit", "valid", "test")  # splits loaded without features: the MTDM reads only its input columns


class MtdmKind(TorchKind):
    name = "mtdm"
    section = "mtdm"
    label = "MTDM"
    tune_targets = ("mtdm",)
    parse = staticmethod(mtdm_config)
    SPACE = SPACE

    def kaml(self, ctx: Context) -> KamlConfig | None:
        """The KAML config when the profile has several conversion actions, else None (`[mtdm.kaml]` refused)."""
        section = ctx.cfg.section(self.section)
        if len(ctx.cfg.load_profile().conversion_labels) > 1:
            return mtdm_kaml_config(section.raw, f"{ctx.cfg.source} [mtdm]")
        if "kaml" in section.raw:
            raise UserError(f"{ctx.cfg.source} [mtdm.kaml]: KAML needs a profile with several conversions")
        return None

    def input_key(self, ctx: Context, manifest: dict[str, Any], opts: TrainOptions) -> str:
        kaml = self.kaml(ctx)
        mcfg = self.config(ctx, opts.params)
        return _key(manifest, mcfg, ctx.cfg.seed, replace(kaml, mtdm=mcfg) if kaml is not None else None)

    def train(self, ctx: Context, opts: TrainOptions) -> TrainedRun:
        """Train on the plan's tables; data parallel under torchrun, where rank 0 alone writes the run."""
        deep = compat.deep()
        deep.train.resolve_device(ctx.device)
        mcfg = self.config(ctx, opts.params)
        kaml = self.kaml(ctx)
        if kaml is not None:
            return self._train_kaml(ctx, opts, replace(kaml, mtdm=mcfg))
        teacher = None
        if mcfg.distill_run:
            teacher = ctx.wd.run(mcfg.distill_run, opts.plan)
            read_run_meta(teacher)
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan, lean=LEAN)  # the run reads its columns
        key = _key(tables.manifest, mcfg, ctx.cfg.seed)
        seed = ctx.cfg.seed
        if opts.ddp or deep.distributed.launched_by_torchrun():
            with deep.distributed.process_group(deep.train.resolve_device(ctx.device), seed) as parallel:
                main = parallel.rank == 0
                progress = ctx.progress if main else quiet
                with torch_errors():
                    run = deep.run.train_mtdm_run(tables, mcfg, seed, ctx.device, teacher, progress, None, parallel)
            return self._trained(run, mcfg, key, main, {"world_size": parallel.world_size})
        with torch_errors():
            run = deep.run.train_mtdm_run(tables, mcfg, seed, ctx.device, teacher, ctx.progress)
        return self._trained(run, mcfg, key, True, {})

    def _trained(self, run: Any, mcfg: MtdmConfig, key: str, write: bool, meta: dict[str, Any]) -> TrainedRun:
        return TrainedRun(
            kind=self.name,
            preds=run.preds,
            metrics=run.metrics,
            params={"mtdm": asdict(mcfg), "best_epoch": run.result.best_epoch},
            stages=["mtdm"],
            input_key=key,
            save=partial(compat.deep().run.save_models, run=run, cfg=mcfg),
            meta=meta,
            write=write,
            model=run,
        )

    def _train_kaml(self, ctx: Context, opts: TrainOptions, kaml: KamlConfig) -> TrainedRun:
        """The KAML network for a profile with several conversion actions (`[mtdm.kaml]` options)."""
        if opts.ddp:
            raise UserError("--ddp: data-parallel training is for the MTDM of one conversion, not KAML")
        if kaml.mtdm.distill_run or kaml.mtdm.mutual_weight > 0:
            raise UserError(f"{ctx.cfg.source} [mtdm]: distill_run and mutual_weight are not used by KAML; remove them")
        actions = len(ctx.cfg.load_profile().conversions)
        for name in ("alpha", "rlu_beta", "action_weights"):
            kaml.per_action(getattr(kaml, name), actions, 1.0, name)
        kaml_run = compat.deep().kaml_run
        tables = load_tables(ctx.wd.features, opts.feature_set, opts.plan)
        key = _key(tables.manifest, kaml.mtdm, ctx.cfg.seed, kaml)
        profile = ctx.cfg.load_profile()
        run = kaml_run.train_kaml_run(tables, ctx.wd.raw, profile, kaml, ctx.cfg.seed, ctx.device, ctx.progress)
        weighted = run.metrics.get("valid", {}).get("weighted", {})
        if weighted:
            ctx.progress(f"kaml: valid weighted AUC {weighted['auc']:.4f}, log loss {weighted['logloss']:.5f}")
        return TrainedRun(
            kind=self.name,
            preds=run.preds,
            metrics=run.metrics,
            params={"kaml": asdict(kaml), "best_epoch": run.result.best_epoch},
            stages=["mtdm"],
            input_key=key,
            save=partial(kaml_run.save_models, run=run, cfg=kaml),
            meta={"kaml": True},
            predicts_installs=False,
            summary=kaml_run.kaml_summary(run.metrics),
            model=run,
        )

    def load(self, run_dir: Path) -> Predictor:
        return compat.deep().run.load_mtdm_run(run_dir)

    def objective(
        self,
        ctx: Context,
        target: str,
        space: list[Dimension],
        seed: int,
        threads: int | None,
    ) -> Objective:
        deep = compat.deep()
        if threads:
            deep.torch.set_num_threads(threads)
        mcfg = ctx.cfg.section(self.section).config
        tables = load_tables(ctx.wd.features, ctx.cfg.feature_set, "validate", lean=LEAN)

        def fn(trial: optuna.Trial) -> tuple[float, dict]:
            suggested = {d.name: d.suggest(trial) for d in space}
            trial_cfg = mcfg.with_overrides(**suggested)
            check_mtdm(trial_cfg, "search space")
            with torch_errors():
                run = deep.run.train_mtdm_run(tables, trial_cfg, seed, ctx.device, None, quiet, epoch_pruner(trial))
            return trial_result(run, suggested)

        return fn


def _key(manifest: dict[str, Any], mcfg: MtdmConfig, seed: int, kaml: KamlConfig | None = None) -> str:
    """The input key from the resolved config (tuned or file parameters included; KAML options too)."""
    parts = ["mtdm", manifest["config_hash"], manifest["raw_fingerprint"], asdict(mcfg), seed]
    return input_key(*parts, *([asdict(kaml)] if kaml is not None else []))


MTDM = MtdmKind()
