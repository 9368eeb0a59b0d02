"""Stage runners: resolve config and work-directory paths, then call the pure stage functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gbmcvr.config import PipelineConfig
from gbmcvr.fe.pipeline import BuildResult, build
from gbmcvr.fe.spec import default_spec, feature_spec
from gbmcvr.workdir import Workdir


def feature_spec_of(cfg: PipelineConfig):
    profile = cfg.load_profile()
    if cfg.features is None:
        return default_spec(profile)
    return feature_spec(cfg.features, profile, f"{cfg.source} [features]")


def build_features(
    wd: Workdir,
    cfg: PipelineConfig,
    plan: str,
    feature_set: str | None = None,
    force: bool = False,
    progress: Callable[[str], None] = lambda _: None,
) -> BuildResult:
    """Build (or reuse) the feature tables of one plan for the config's feature set."""
    return build(
        wd.raw,
        cfg.load_profile(),
        feature_spec_of(cfg),
        feature_set or cfg.feature_set,
        plan,
        wd.features,
        progress,
        force,
    )


def resolve_gbm_params(wd: Workdir, cfg: PipelineConfig, kind: str, params: str | None) -> dict[str, dict]:
    """Per-stage LightGBM parameters: config defaults, overridden by a params file or the tuned export."""
    from gbmcvr.errors import UserError
    from gbmcvr.gbm.params import STAGES, gbm_config, read_params_file

    gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
    stages = STAGES[kind]
    overrides: dict[str, dict] = {}
    if params == "tuned":
        for stage in stages:
            path = wd.models / "tuned" / f"{stage.replace('_', '-')}.json"
            if path.is_file():
                overrides.update({stage: read_params_file(path, (stage,))[stage]})
        if not overrides:
            names = ", ".join(f"models/tuned/{s.replace('_', '-')}.json" for s in stages)
            raise UserError(
                f"no tuned parameters ({names}); run `gbmcvr tune {stages[0].replace('_', '-')}` first"
            )
    elif params is not None:
        overrides = read_params_file(Path(params), stages)
    return {s: gcfg.params(s, cfg.seed, overrides.get(s)) for s in stages}


def input_key(*parts: object) -> str:
    """Hash of everything a stage's output depends on (for `gbmcvr run` to skip current steps)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def train_gbm_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    kind: str,
    run_id: str,
    params: str | None = None,
    refit: bool = False,
    overwrite: bool = False,
    feature_set: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
):
    """Load feature tables, train a LightGBM run and write models/<run-id>/."""
    from gbmcvr.gbm.params import gbm_config
    from gbmcvr.gbm.train import train_gbm, write_gbm_run
    from gbmcvr.runs import check_new_run
    from gbmcvr.tables import load_tables

    run_dir = wd.run(run_id)
    check_new_run(run_dir, overwrite)
    fs = feature_set or cfg.feature_set
    resolved = resolve_gbm_params(wd, cfg, kind, params)
    tables = load_tables(wd.features, fs, "validate")
    full = load_tables(wd.features, fs, "full", ("fit", "test")) if refit else None
    gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
    run = train_gbm(kind, tables, gcfg, resolved, progress, full)
    key = input_key(
        kind,
        tables.manifest["config_hash"],
        tables.manifest["raw_fingerprint"],
        resolved,
        refit,
        gcfg.num_boost_round,
        gcfg.early_stopping_rounds,
    )
    write_gbm_run(run_dir, run, {"feature_set": fs, "input_key": key, "seed": cfg.seed})
    return run
