"""Stage runners: resolve config and work-directory paths, then call the pure stage functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gbmcvr.config import PipelineConfig
from gbmcvr.fe.pipeline import BuildResult, build
from gbmcvr.fe.spec import default_spec, feature_spec
from gbmcvr.tomlfile import read_toml
from gbmcvr.workdir import Workdir


def feature_spec_of(cfg: PipelineConfig, wd: Workdir | None = None, feature_set: str | None = None):
    """The config's [features] table, else features/<set>.toml (written by `gbmcvr select`), else the default."""
    profile = cfg.load_profile()
    if cfg.features is not None:
        return feature_spec(cfg.features, profile, f"{cfg.source} [features]")
    path = wd.features / f"{feature_set or cfg.feature_set}.toml" if wd is not None else None
    if path is not None and path.is_file():
        return feature_spec(read_toml(path), profile, str(path))
    return default_spec(profile)


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
        feature_spec_of(cfg, wd, feature_set),
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
            raise UserError(f"no tuned parameters ({names}); run `gbmcvr tune {stages[0].replace('_', '-')}` first")
    elif params is not None:
        overrides = read_params_file(Path(params), stages)
    return {s: gcfg.params(s, cfg.seed, overrides.get(s)) for s in stages}


def input_key(*parts: object) -> str:
    """Hash of everything a stage's output depends on (for `gbmcvr run` to skip current steps)."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def gbm_input_key(manifest: dict, kind: str, params: dict, refit: bool, gcfg) -> str:
    return input_key(
        kind,
        manifest["config_hash"],
        manifest["raw_fingerprint"],
        params,
        refit,
        gcfg.num_boost_round,
        gcfg.early_stopping_rounds,
        gcfg.max_cat_cardinality,
        gcfg.numeric_categoricals,
    )


def model_input_key(wd: Workdir, cfg: PipelineConfig, kind: str) -> str:
    """The input key a fresh run of `kind` would record: equal keys mean the run is current."""
    from gbmcvr.fe.pipeline import read_manifest
    from gbmcvr.gbm.params import gbm_config

    plan = wd.feature_plan(cfg.feature_set, "validate")
    manifest = read_manifest(plan, f"gbmcvr features --set {cfg.feature_set}")
    if kind == "mtdm":
        return mtdm_input_key(manifest, cfg)
    gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
    return gbm_input_key(manifest, kind, resolve_gbm_params(wd, cfg, kind, None), gcfg.refit, gcfg)


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
    key = gbm_input_key(tables.manifest, kind, resolved, refit, gcfg)
    write_gbm_run(run_dir, run, {"feature_set": fs, "input_key": key, "seed": cfg.seed})
    return run


def submit_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    runs: list[str],
    opts,
    overwrite: bool = False,
    truth: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[Path, object]:
    """Calibrate and ensemble the runs' predictions; write submissions/<name>.* (validated first)."""
    import json

    import polars as pl

    from gbmcvr.errors import UserError
    from gbmcvr.post.scoring import read_truth
    from gbmcvr.post.submit import align, make_submission, write_submission
    from gbmcvr.runs import read_preds, read_run_meta

    if not runs:
        raise UserError("no runs given (pass --runs RUN [RUN ...])")
    profile = cfg.load_profile()
    preds = {}
    for run in runs:
        read_run_meta(wd.run(run))
        preds[run] = read_preds(wd.run(run))
    aligned = align(preds)
    id_col = profile.id_column
    labels = (
        pl.scan_parquet(wd.raw / "train.parquet")
        .select(id_col, profile.install_label)
        .filter(pl.col(id_col).is_in(aligned.valid_ids.tolist()))
        .collect()
    )
    valid = pl.DataFrame({id_col: aligned.valid_ids}).join(labels, on=id_col, how="left", maintain_order="left")
    if valid[profile.install_label].null_count():
        raise UserError(f"{valid[profile.install_label].null_count():,} valid rows of the runs are not in {wd.raw}")
    y_valid = valid[profile.install_label].to_numpy()
    run_metrics = json.loads((wd.run(runs[0]) / "metrics.json").read_text())
    base_rate = float(run_metrics["base_rate"])
    truth_table = read_truth(truth) if truth is not None else None
    result = make_submission(aligned, y_valid, base_rate, opts, cfg.seed, truth_table)
    truth_ll = None
    if truth_table is not None and "p_install" in truth_table.columns:
        from gbmcvr.metrics import log_loss

        truth_ll = log_loss(truth_table["is_installed"].to_numpy(), truth_table["p_install"].to_numpy())
    test_ids = pl.read_parquet(wd.raw / "test.parquet", columns=[id_col])[id_col]
    tsv = write_submission(wd.submissions, opts.name, result, opts, test_ids, {"runs": runs}, truth_ll, overwrite)
    progress(f"wrote {tsv}")
    return tsv, result


def mtdm_input_key(manifest: dict, cfg: PipelineConfig) -> str:
    from dataclasses import asdict

    from gbmcvr.deep.params import mtdm_config

    mcfg = mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]")
    return input_key("mtdm", manifest["config_hash"], manifest["raw_fingerprint"], asdict(mcfg), cfg.seed)


def train_mtdm_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    run_id: str,
    device: str = "auto",
    overwrite: bool = False,
    feature_set: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    params: str | None = None,
):
    """Load feature tables, train the MTDM and write models/<run-id>/."""
    from gbmcvr.deep.params import mtdm_config
    from gbmcvr.deep.run import train_mtdm_run, write_mtdm_run
    from gbmcvr.deep.train import resolve_device
    from gbmcvr.runs import check_new_run, read_run_meta
    from gbmcvr.tables import load_tables

    run_dir = wd.run(run_id)
    check_new_run(run_dir, overwrite)
    resolve_device(device)
    mcfg = mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]")
    if params is not None:
        mcfg = mtdm_config({**cfg.mtdm, **_mtdm_params(wd, params)}, f"{params} (MTDM parameters)")
    fs = feature_set or cfg.feature_set
    teacher = None
    if mcfg.distill_run:
        teacher = wd.run(mcfg.distill_run)
        read_run_meta(teacher)
    tables = load_tables(wd.features, fs, "validate")
    run = train_mtdm_run(tables, mcfg, cfg.seed, device, teacher, progress)
    write_mtdm_run(
        run_dir, run, mcfg, {"feature_set": fs, "input_key": mtdm_input_key(tables.manifest, cfg), "seed": cfg.seed}
    )
    return run


def _lgbm_objective(tables, stage: str, gcfg, seed: int, space):
    import optuna
    from optuna_integration import LightGBMPruningCallback

    from gbmcvr.gbm.models import STAGES, train_stage

    def fn(trial: optuna.Trial) -> tuple[float, dict]:
        suggested = {d.name: d.suggest(trial) for d in space}
        params = gcfg.params(stage, seed, suggested)
        pruning = LightGBMPruningCallback(trial, "binary_logloss", valid_name="valid", report_interval=5)
        model = train_stage(tables, STAGES[stage], params, gcfg, lambda _: None, extra_callbacks=[pruning])
        value = float(model.booster.best_score["valid"]["binary_logloss"])
        return value, {
            "params": {k: v for k, v in params.items() if k != "seed"},
            "best_iteration": model.best_iteration,
        }

    return fn


def _mtdm_objective(tables, mcfg, seed: int, space, device: str):
    import optuna

    from gbmcvr.deep.params import check_mtdm
    from gbmcvr.deep.run import train_mtdm_run

    def fn(trial: optuna.Trial) -> tuple[float, dict]:
        suggested = {d.name: d.suggest(trial) for d in space}
        trial_cfg = mcfg.with_overrides(**suggested)
        check_mtdm(trial_cfg, "search space")

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        run = train_mtdm_run(tables, trial_cfg, seed, device, None, lambda _: None, report)
        return float(run.metrics["valid"]["p"]["logloss"]), {
            "params": suggested,
            "best_iteration": run.result.best_epoch,
        }

    return fn


def tune_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    model: str,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    seed: int | None = None,
    pruner: str | None = None,
    worker: bool = False,
    device: str = "cpu",
    progress: Callable[[str], None] = lambda _: None,
):
    """Tune one model; returns the study (None in a worker process that only runs trials)."""
    from gbmcvr import tune
    from gbmcvr.errors import UserError
    from gbmcvr.space import check_model, model_space
    from gbmcvr.tables import load_tables

    check_model(model)
    if trials < 1 or workers < 1:
        raise UserError("--trials and --workers must be at least 1")
    tune_cfg = dict(cfg.tune)
    pruner = pruner or tune_cfg.get("pruner", "median")
    tune.make_pruner(pruner)
    space = model_space(model, tune_cfg.get(model), cfg.source)
    seed = cfg.seed if seed is None else seed
    if storage is None:
        storage = (
            f"journal:{wd.models / 'optuna-journal.log'}" if workers > 1 else f"sqlite:///{wd.models / 'optuna.db'}"
        )
    setup = tune.TuneSetup(
        model, study or f"{model}-{cfg.feature_set}", storage, trials, timeout, seed, pruner, space, wd.models / "tuned"
    )
    the_study = tune.load_study(setup, cfg.feature_set)
    if not worker and storage.startswith("journal:"):
        n = tune.fail_running(the_study)
        if n:
            progress(f"marked {n} trial(s) left running by a dead process as failed")
    if workers > 1:
        args = [
            model,
            "--trials",
            str(trials),
            "--storage",
            storage,
            "--study",
            setup.study_name,
            "--pruner",
            pruner,
            "--workdir",
            str(wd.root),
        ]
        if timeout:
            args += ["--timeout", str(timeout)]
        progress(f"starting {workers} workers on {storage}, study '{setup.study_name}'")
        tune.spawn_workers(args, workers, seed)
        return the_study, True
    tables = load_tables(wd.features, cfg.feature_set, "validate")
    if model == "mtdm":
        from gbmcvr.deep.params import mtdm_config

        objective = _mtdm_objective(tables, mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]"), seed, space, device)
    else:
        from gbmcvr.gbm.params import gbm_config

        gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
        objective = _lgbm_objective(tables, tune.STAGE_OF[model], gcfg, seed, space)
    progress(
        f"tuning {model}: study '{setup.study_name}' on {storage}, {tune.finished(the_study)} of {trials} trials done"
    )
    completed = tune.run_trials(the_study, setup, tune.timed(objective), progress)
    return the_study, completed


def _mtdm_params(wd: Workdir, params: str) -> dict:
    """MTDM overrides from `tuned` (models/tuned/mtdm.json) or a JSON file ({"params": {...}} or flat)."""
    import json

    from gbmcvr.errors import UserError

    path = wd.models / "tuned" / "mtdm.json" if params == "tuned" else Path(params)
    if not path.is_file():
        hint = "run `gbmcvr tune mtdm` first" if params == "tuned" else "file not found"
        raise UserError(f"{path}: no MTDM parameters ({hint})")
    raw = json.loads(path.read_text())
    return dict(raw.get("params", raw))


def select_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    name: str = "selected",
    opts=None,
    progress: Callable[[str], None] = lambda _: None,
):
    """Build the candidate families on the backtest plan, search, write features/<name>.toml and its report."""
    from dataclasses import asdict

    from gbmcvr.atomic import atomic_dir, write_json, write_text
    from gbmcvr.fe import select
    from gbmcvr.tables import load_tables

    profile = cfg.load_profile()
    opts = opts or select.SelectOptions(seed=cfg.seed)
    candidates = select.candidate_raw(profile)
    select.check_selectable(profile, candidates)
    build(
        wd.raw,
        profile,
        feature_spec(candidates, profile, "candidate families"),
        select.CANDIDATE_SET,
        select.PLAN,
        wd.features,
        progress,
    )
    tables = load_tables(wd.features, select.CANDIDATE_SET, select.PLAN)
    selection = select.run_selection(tables, opts, select.requirements(candidates), progress)
    raw = select.chosen_raw(candidates, selection.choice)
    header = f"Chosen by `gbmcvr select` on the backtest plan's selection day: {selection.choice.label()}"
    feature_spec(raw, profile, "selected families")
    write_text(wd.features / f"{name}.toml", select.toml_text(raw, header))
    with atomic_dir(wd.features / f"{name}-selection") as tmp:
        write_text(tmp / "report.md", select.report_markdown(selection, name))
        write_json(
            tmp / "report.json",
            {
                "name": name,
                "input_key": input_key(
                    tables.manifest["config_hash"], tables.manifest["raw_fingerprint"], asdict(opts)
                ),
                "choice": asdict(selection.choice),
                "options": asdict(opts),
                "steps": selection.steps,
                "holdout": selection.holdout,
                "seconds": round(selection.seconds, 1),
            },
        )
        select.plot_gains(selection, tmp / "gain.png")
    progress(f"select: wrote {wd.features / f'{name}.toml'} and {wd.features / f'{name}-selection'}/report.md")
    return selection
