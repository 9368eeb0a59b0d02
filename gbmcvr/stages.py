"""Stage runners: resolve config and work-directory paths, then call the pure stage functions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gbmcvr.config import BUILTIN_SOURCE, PipelineConfig
from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import BuildResult, build
from gbmcvr.fe.spec import FeatureSpec, config_feature_spec, default_spec, feature_spec
from gbmcvr.lock import exclusive
from gbmcvr.schema import TRUTH_INSTALL, TRUTH_P_INSTALL
from gbmcvr.tomlfile import read_toml
from gbmcvr.workdir import Workdir


def feature_spec_of(cfg: PipelineConfig, wd: Workdir | None = None, feature_set: str | None = None) -> FeatureSpec:
    """The config's `[features]` over the default set; without one, features/<set>.toml (a whole set, as
    `gbmcvr select` writes it), else the default set."""
    profile = cfg.load_profile()
    if cfg.features is not None:
        return config_feature_spec(cfg.features, profile, f"{cfg.source} [features]")[0]
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
    fs = feature_set or cfg.feature_set
    with exclusive(wd.feature_plan(fs, plan), "feature plan"):
        return build(wd.raw, cfg.load_profile(), feature_spec_of(cfg, wd, fs), fs, plan, wd.features, progress, force)


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


def model_input_key(
    wd: Workdir, cfg: PipelineConfig, kind: str, plan: str = "validate", refit: bool | None = None
) -> str:
    """The input key a fresh run of `kind` on `plan` would record: equal keys mean the run is current."""
    from gbmcvr.fe.pipeline import read_manifest
    from gbmcvr.gbm.params import gbm_config

    plan_dir = wd.feature_plan(cfg.feature_set, plan)
    manifest = read_manifest(plan_dir, f"gbmcvr features --set {cfg.feature_set} --plan {plan}")
    if kind == "mtdm":
        from gbmcvr.deep.params import mtdm_config

        return mtdm_input_key(manifest, mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]"), cfg.seed, _kaml_of(cfg))
    gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
    refit = gcfg.refit if refit is None else refit
    return gbm_input_key(manifest, kind, resolve_gbm_params(wd, cfg, kind, None), refit, gcfg)


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
    plan: str = "validate",
    dask: str | None = None,
):
    """Load feature tables, train a LightGBM run (on a Dask cluster with a scheduler address) and write
    models/<run-id>/ (models/backtest/<run-id>/).

    On the backtest plan the refit trains on the validate plan's fit days and predicts its valid day (the
    backtest's test day), and the run records its test-day scores with and without the refit.
    """
    from gbmcvr.runs import check_new_run, check_train_plan

    check_train_plan(plan)
    run_dir = wd.run(run_id, plan)
    with exclusive(run_dir, "run"):
        check_new_run(run_dir, overwrite)
        return _train_gbm(wd, cfg, kind, run_id, run_dir, params, refit, feature_set, progress, plan, dask)


def _train_gbm(wd, cfg, kind, run_id, run_dir, params, refit, feature_set, progress, plan, dask):
    from gbmcvr.gbm.models import predict_kind
    from gbmcvr.gbm.params import gbm_config
    from gbmcvr.gbm.train import train_gbm, write_gbm_run
    from gbmcvr.runs import prediction_table
    from gbmcvr.tables import FeatureTables, load_tables

    fs = feature_set or cfg.feature_set
    resolved = resolve_gbm_params(wd, cfg, kind, params)
    gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
    address = dask or gcfg.dask
    if address and plan != "validate":
        raise UserError("--dask trains on the validate plan only")
    if address:
        from functools import partial

        from gbmcvr.gbm import dask_train

        tables = dask_train.load_label_tables(wd.features, fs, "validate", ("fit", "valid", "test"))
        full = dask_train.load_label_tables(wd.features, fs, "full", ("fit", "test")) if refit else None
        with dask_train.connect(address) as client:
            progress(f"training on the Dask cluster at {address}")
            trainer = partial(dask_train.train_stage_dask, client=client)
            run = train_gbm(kind, tables, gcfg, resolved, progress, full, stage_trainer=trainer)
    else:
        tables = load_tables(wd.features, fs, plan, lean=("fit", "valid", "test"))
        full = None
        if refit and plan == "validate":
            full = load_tables(wd.features, fs, "full", ("fit", "test"), lean=("fit", "test"))
        elif refit:
            later = load_tables(wd.features, fs, "validate", ("fit", "valid"), lean=("fit",))
            full = FeatureTables(
                later.plan_dir, later.manifest, {"fit": later.splits["fit"], "test": later.splits["valid"]}
            )
        run = train_gbm(kind, tables, gcfg, resolved, progress, full)
    if plan == "backtest":
        first = None
        if refit:
            ids = {"test": tables.splits["test"][tables.id_column].to_numpy()}
            first = prediction_table(ids, {"test": predict_kind(kind, run.models, tables.frame("test"))})
        run.metrics["backtest"] = _backtest_metrics(tables, run.preds, first)
        if first is not None:
            run.preds = _with_unrefit_column(run.preds, first)
        _report_backtest(run_id, run.metrics["backtest"], progress)
    key = gbm_input_key(tables.manifest, kind, resolved, refit, gcfg)
    meta = {"feature_set": fs, "input_key": key, "seed": cfg.seed, "plan": plan}
    write_gbm_run(run_dir, run, {**meta, **({"dask": address} if address else {})})
    return run


UNREFIT = "p_without_refit"


def _with_unrefit_column(preds, first):
    """Keep the backtest's test-day predictions before the refit beside the refit's (`p_without_refit`)."""
    import polars as pl

    unrefit = first.select("row_id", "split", pl.col("p").alias(UNREFIT))
    return preds.join(unrefit, on=["row_id", "split"], how="left", maintain_order="left")


def _backtest_metrics(tables, preds, without_refit=None) -> dict:
    """Test-day scores of a backtest run against the labels its plan kept aside (scoring only)."""
    import polars as pl

    from gbmcvr.data.split import TEST_LABELS
    from gbmcvr.runs import backtest_scores

    labels = pl.read_parquet(tables.plan_dir / TEST_LABELS)
    args = (labels, tables.id_column, tables.install_label, tables.base_rate())
    out = {"test": backtest_scores(preds, *args)}
    if without_refit is not None:
        out["test_without_refit"] = backtest_scores(without_refit, *args)
    return out


def _report_backtest(run_id: str, scores: dict, progress: Callable[[str], None]) -> None:
    t = scores["test"]
    progress(
        f"{run_id} (backtest): test-day log loss {t['logloss']:.5f}, calibration ratio {t['calibration_ratio']:.3f}"
        + (
            f"; without the refit {scores['test_without_refit']['logloss']:.5f}"
            if "test_without_refit" in scores
            else ""
        )
    )


def day_rates(wd: Workdir, cfg: PipelineConfig, plan: str):
    """Install rate of each labelled day of a plan (its fit and validation days), from the raw store."""
    import numpy as np
    import polars as pl

    from gbmcvr.data.split import plan_days
    from gbmcvr.post.backtest import DayRates

    profile = cfg.load_profile()
    days = plan_days(profile, plan)
    labelled = [*days["fit"], *days.get("valid", ())]
    rates = (
        pl.scan_parquet(wd.raw / "train.parquet")
        .filter(pl.col(profile.day_column).is_in(labelled))
        .group_by(profile.day_column)
        .agg(pl.col(profile.install_label).mean().alias("rate"))
        .sort(profile.day_column)
        .collect()
    )
    return DayRates(rates[profile.day_column].to_numpy(), rates["rate"].to_numpy().astype(np.float64))


def valid_labels(wd: Workdir, cfg: PipelineConfig, ids):
    """Install labels of the given valid rows from the raw store, in their order."""
    import polars as pl

    from gbmcvr.errors import UserError

    profile = cfg.load_profile()
    id_col = profile.id_column
    labels = (
        pl.scan_parquet(wd.raw / "train.parquet")
        .select(id_col, profile.install_label)
        .filter(pl.col(id_col).is_in(ids.tolist()))
        .collect()
    )
    valid = pl.DataFrame({id_col: ids}).join(labels, on=id_col, how="left", maintain_order="left")
    if valid[profile.install_label].null_count():
        raise UserError(f"{valid[profile.install_label].null_count():,} valid rows of the runs are not in {wd.raw}")
    return valid[profile.install_label].to_numpy()


def aligned_runs(wd: Workdir, runs: list[str], plan: str, refit: dict[str, bool] | None = None):
    """The runs' prediction tables of one plan, aligned on the same rows.

    A backtest run trained with the refit also holds its test-day predictions without it; `refit` says,
    per run, which of the two stands in for the submission's run (the refit's, by default).
    """
    import polars as pl

    from gbmcvr.errors import UserError
    from gbmcvr.post.submit import align
    from gbmcvr.runs import read_preds, read_run_meta

    preds = {}
    for run in runs:
        run_dir = wd.run(run, plan)
        if plan == "backtest" and not run_dir.is_dir():
            raise UserError(
                f"{run_dir}: no backtest run for '{run}' ('auto' chooses on the backtest: "
                f"`gbmcvr features --plan backtest` then `gbmcvr train MODEL --plan backtest --run-id {run}`)"
            )
        if read_run_meta(run_dir).get("kaml"):
            raise UserError(
                f"{run_dir}: a KAML run predicts each clicked row's target action, not installs per impression; "
                "it cannot enter a submission"
            )
        preds[run] = read_preds(run_dir)
        if refit is not None and not refit.get(run, True) and UNREFIT in preds[run].columns:
            frame = preds[run]
            preds[run] = frame.with_columns(
                pl.when(pl.col("split") == "test").then(pl.col(UNREFIT)).otherwise(pl.col("p")).alias("p")
            )
    return align(preds)


def backtest_choice(
    wd: Workdir,
    cfg: PipelineConfig,
    runs: list[str],
    opts,
    progress: Callable[[str], None] = lambda _: None,
    refit: dict[str, bool] | None = None,
) -> dict:
    """Try every candidate method on the backtest runs; choose by their test-day scores only."""
    import json

    import numpy as np
    import polars as pl

    from gbmcvr.data.split import TEST_LABELS
    from gbmcvr.errors import UserError
    from gbmcvr.post import backtest as bt
    from gbmcvr.runs import read_run_meta

    profile = cfg.load_profile()
    aligned = aligned_runs(wd, runs, "backtest", refit)
    target_day = profile.valid_day
    inputs = bt.PostInputs(
        aligned.valid,
        valid_labels(wd, cfg, aligned.valid_ids),
        aligned.test,
        day_rates(wd, cfg, "backtest"),
        target_day,
    )
    pairs = bt.candidates(opts.calibration, opts.weights, len(runs))
    progress(f"backtest: {len(pairs)} post-processing candidates on {len(aligned.test_ids):,} day-{target_day} rows")
    preds = bt.candidate_predictions(inputs, pairs, opts.space, opts.folds, cfg.seed, opts.trend_days)
    fs = read_run_meta(wd.run(runs[0], "backtest")).get("feature_set", cfg.feature_set)
    labels_path = wd.feature_plan(fs, "backtest") / TEST_LABELS
    if not labels_path.is_file():
        raise UserError(f"{labels_path}: no kept-aside labels (rebuild with `gbmcvr features --plan backtest --force`)")
    labels = pl.read_parquet(labels_path, columns=[profile.id_column, profile.install_label])
    y = (
        pl.DataFrame({profile.id_column: aligned.test_ids})
        .join(labels, on=profile.id_column, how="left", maintain_order="left")[profile.install_label]
        .to_numpy()
    )
    base_rate = float(json.loads((wd.run(runs[0], "backtest") / "metrics.json").read_text())["base_rate"])
    rows = bt.score_candidates(preds, y, base_rate)
    choice = bt.choose(rows)
    chosen = next(r for r in rows if (r["calibration"], r["weights"]) == choice)
    progress(
        f"backtest: chose calibration '{choice[0]}', weights '{choice[1]}' "
        f"(day-{target_day} log loss {chosen['logloss']:.5f}, calibration ratio {chosen['calibration_ratio']:.3f})"
    )
    return {
        "rows": rows,
        "calibration": choice[0],
        "weights": choice[1],
        "target_day": target_day,
        "test_rate": float(np.mean(y)),
        "asked": {"calibration": opts.calibration, "weights": opts.weights},
    }


def submit_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    runs: list[str],
    opts,
    overwrite: bool = False,
    truth: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
    refit_evidence: dict | None = None,
) -> tuple[Path, object]:
    """Calibrate and ensemble the runs' predictions; write submissions/<name>.* (validated first).

    `auto` calibration or weights are chosen on the backtest runs (models/backtest/<run>) first;
    `refit_evidence` (per model: backtest test-day log loss with and without the refit) goes into the report.
    """
    import json
    from dataclasses import replace

    import polars as pl

    from gbmcvr.errors import UserError
    from gbmcvr.post.scoring import read_truth
    from gbmcvr.post.submit import make_submission, write_submission
    from gbmcvr.runs import read_run_meta

    if not runs:
        raise UserError("no runs given (pass --runs RUN [RUN ...])")
    profile = cfg.load_profile()
    aligned = aligned_runs(wd, runs, "validate")
    backtest = None
    if "auto" in (opts.calibration, opts.weights):
        refit = {r: read_run_meta(wd.run(r)).get("refit", False) for r in runs}
        backtest = backtest_choice(wd, cfg, runs, opts, progress, refit)
        opts = replace(opts, calibration=backtest["calibration"], weights=backtest["weights"])
    y_valid = valid_labels(wd, cfg, aligned.valid_ids)
    run_metrics = json.loads((wd.run(runs[0]) / "metrics.json").read_text())
    base_rate = float(run_metrics["base_rate"])
    truth_table = read_truth(truth) if truth is not None else None
    history = day_rates(wd, cfg, "validate")
    result = make_submission(
        aligned, y_valid, base_rate, opts, cfg.seed, truth_table, history, profile.test_day, backtest
    )
    result.refit = refit_evidence
    truth_ll = None
    if truth_table is not None and TRUTH_P_INSTALL in truth_table.columns:
        from gbmcvr.metrics import log_loss

        truth_ll = log_loss(truth_table[TRUTH_INSTALL].to_numpy(), truth_table[TRUTH_P_INSTALL].to_numpy())
    test_ids = pl.read_parquet(wd.raw / "test.parquet", columns=[profile.id_column])[profile.id_column]
    tsv = write_submission(wd.submissions, opts.name, result, opts, test_ids, {"runs": runs}, truth_ll, overwrite)
    progress(f"wrote {tsv}")
    return tsv, result


def mtdm_input_key(manifest: dict, mcfg, seed: int, kaml=None) -> str:
    """The MTDM's input key from its resolved config (tuned or file parameters included; KAML options too)."""
    from dataclasses import asdict

    parts = ["mtdm", manifest["config_hash"], manifest["raw_fingerprint"], asdict(mcfg), seed]
    return input_key(*parts, *([asdict(kaml)] if kaml is not None else []))


def _kaml_of(cfg: PipelineConfig):
    """The KAML config when the profile has several conversion actions, else None (`[mtdm.kaml]` refused)."""
    from gbmcvr.deep.params import mtdm_kaml_config

    if len(cfg.load_profile().conversion_labels) > 1:
        return mtdm_kaml_config(cfg.mtdm, f"{cfg.source} [mtdm]")
    if "kaml" in cfg.mtdm:
        raise UserError(f"{cfg.source} [mtdm.kaml]: KAML needs a profile with several conversions")
    return None


def train_mtdm_stage(
    wd: Workdir,
    cfg: PipelineConfig,
    run_id: str,
    device: str = "auto",
    overwrite: bool = False,
    feature_set: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
    params: str | None = None,
    plan: str = "validate",
    ddp: bool = False,
):
    """Load feature tables, train the MTDM and write models/<run-id>/ (models/backtest/<run-id>/); data
    parallel under torchrun, where rank 0 alone checks, locks and writes the run."""
    from gbmcvr.deep.distributed import is_main
    from gbmcvr.runs import check_new_run, check_train_plan

    check_train_plan(plan)
    run_dir = wd.run(run_id, plan)
    if not is_main():
        return _train_mtdm(wd, cfg, run_id, run_dir, device, feature_set, progress, params, plan, ddp)
    with exclusive(run_dir, "run"):
        check_new_run(run_dir, overwrite)
        return _train_mtdm(wd, cfg, run_id, run_dir, device, feature_set, progress, params, plan, ddp)


def _train_mtdm(wd, cfg, run_id, run_dir, device, feature_set, progress, params, plan, ddp):
    from gbmcvr.deep.distributed import launched_by_torchrun, process_group
    from gbmcvr.deep.params import mtdm_config
    from gbmcvr.deep.run import train_mtdm_run, write_mtdm_run
    from gbmcvr.deep.train import resolve_device
    from gbmcvr.runs import read_run_meta
    from gbmcvr.tables import load_tables

    resolve_device(device)
    mcfg = mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]")
    if params is not None:
        mcfg = mtdm_config({**cfg.mtdm, **_mtdm_params(wd, params)}, f"{params} (MTDM parameters)")
    fs = feature_set or cfg.feature_set
    kaml = _kaml_of(cfg)
    if kaml is not None:
        return _train_kaml(wd, cfg, kaml, mcfg, run_dir, device, fs, progress, plan, ddp)
    teacher = None
    if mcfg.distill_run:
        teacher = wd.run(mcfg.distill_run, plan)
        read_run_meta(teacher)
    tables = load_tables(wd.features, fs, plan)
    meta = {"feature_set": fs, "input_key": mtdm_input_key(tables.manifest, mcfg, cfg.seed), "seed": cfg.seed}
    meta["plan"] = plan
    if ddp or launched_by_torchrun():
        with process_group(resolve_device(device), cfg.seed) as parallel:
            main = parallel.rank == 0
            run = train_mtdm_run(tables, mcfg, cfg.seed, device, teacher, progress if main else _quiet, None, parallel)
            if main:
                if plan == "backtest":
                    run.metrics["backtest"] = _backtest_metrics(tables, run.preds)
                write_mtdm_run(run_dir, run, mcfg, {**meta, "world_size": parallel.world_size})
        return run
    run = train_mtdm_run(tables, mcfg, cfg.seed, device, teacher, progress)
    if plan == "backtest":
        run.metrics["backtest"] = _backtest_metrics(tables, run.preds)
        _report_backtest(run_id, run.metrics["backtest"], progress)
    write_mtdm_run(run_dir, run, mcfg, meta)
    return run


def _train_kaml(wd, cfg, kaml, mcfg, run_dir, device, fs, progress, plan, ddp):
    """The KAML network for a profile with several conversion actions (`[mtdm.kaml]` options)."""
    from dataclasses import replace

    from gbmcvr.deep.kaml_run import train_kaml_run, write_kaml_run
    from gbmcvr.tables import load_tables

    if ddp:
        raise UserError("--ddp: data-parallel training is for the MTDM of one conversion, not KAML")
    if mcfg.distill_run or mcfg.mutual_weight > 0:
        raise UserError(f"{cfg.source} [mtdm]: distill_run and mutual_weight are not used by KAML; remove them")
    kaml = replace(kaml, mtdm=mcfg)
    actions = len(cfg.load_profile().conversions)
    for key in ("alpha", "rlu_beta", "action_weights"):
        kaml.per_action(getattr(kaml, key), actions, 1.0, key)
    tables = load_tables(wd.features, fs, plan)
    key = mtdm_input_key(tables.manifest, mcfg, cfg.seed, kaml)
    run = train_kaml_run(tables, wd.raw, cfg.load_profile(), kaml, cfg.seed, device, progress)
    write_kaml_run(run_dir, run, kaml, {"feature_set": fs, "input_key": key, "seed": cfg.seed, "plan": plan})
    weighted = run.metrics.get("valid", {}).get("weighted", {})
    if weighted:
        progress(f"kaml: valid weighted AUC {weighted['auc']:.4f}, log loss {weighted['logloss']:.5f}")
    return run


def _quiet(_: str) -> None:
    """Progress of ranks other than 0 under torchrun: silent."""


def _lgbm_objective(tables, stage: str, gcfg, seed: int, space, threads: int | None):
    import json

    import optuna
    from optuna_integration import LightGBMPruningCallback

    from gbmcvr.gbm.models import STAGES, binning_of, stage_data, train_stage

    shared: dict = {}  # Datasets by binning parameters: built once per binning, shared by the trials

    def fn(trial: optuna.Trial) -> tuple[float, dict]:
        suggested = {d.name: d.suggest(trial) for d in space}
        # no feature pre-filter: one Dataset serves trials with any min_data_in_leaf (kept in the export)
        params = {**gcfg.params(stage, seed, suggested), "feature_pre_filter": False}
        if threads:
            params["num_threads"] = threads
        key = json.dumps(binning_of(params), sort_keys=True)
        if key not in shared:
            shared[key] = stage_data(tables, STAGES[stage], params, gcfg, reusable=True)
        data = shared[key]
        pruning = LightGBMPruningCallback(trial, "binary_logloss", valid_name="valid", report_interval=5)
        model = train_stage(tables, STAGES[stage], params, gcfg, lambda _: None, extra_callbacks=[pruning], data=data)
        value = float(model.booster.best_score["valid"]["binary_logloss"])
        return value, {
            "params": {k: v for k, v in params.items() if k not in ("seed", "num_threads")},
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
        args = [model, "--trials", str(trials), "--study", setup.study_name, "--pruner", pruner]
        args += ["--workdir", str(wd.root), "--device", device]
        if cfg.source != BUILTIN_SOURCE:
            args += ["--config", str(Path(cfg.source).resolve())]
        if timeout:
            args += ["--timeout", str(timeout)]
        progress(f"starting {workers} workers on {tune.redact(storage)}, study '{setup.study_name}'")
        tune.spawn_workers(args, workers, seed, storage, tune_cfg.get("threads_per_worker", 0))
        return the_study, True
    threads = tune.worker_threads(tune_cfg.get("threads_per_worker", 0)) if worker else None
    tables = load_tables(wd.features, cfg.feature_set, "validate", lean=() if model == "mtdm" else ("fit",))
    if model == "mtdm":
        from gbmcvr.deep.params import mtdm_config

        if threads:
            import torch

            torch.set_num_threads(threads)
        objective = _mtdm_objective(tables, mtdm_config(cfg.mtdm, f"{cfg.source} [mtdm]"), seed, space, device)
    else:
        from gbmcvr.gbm.params import gbm_config

        gcfg = gbm_config(cfg.gbm, f"{cfg.source} [gbm]")
        objective = _lgbm_objective(tables, tune.STAGE_OF[model], gcfg, seed, space, threads)
    progress(
        f"tuning {model}: study '{setup.study_name}' on {tune.redact(storage)}, {tune.finished(the_study)} of {trials} trials done"
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
