"""Stage runners: each takes a `Context` (work directory, resolved config, progress, device) and keyword-only
options, resolves paths, calls the pure stage functions and returns a typed result. The CLI only parses,
calls and prints; model kinds come from the registry, never by name."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import polars as pl

from gbmcvr import tune as tuning
from gbmcvr.atomic import atomic_dir, write_json, write_text
from gbmcvr.config import BUILTIN_SOURCE, PipelineConfig
from gbmcvr.context import Context, is_main
from gbmcvr.data.ingest import IngestResult, source_files
from gbmcvr.data.ingest import ingest as ingest_raw
from gbmcvr.data.profile import load_profile
from gbmcvr.data.split import TEST_LABELS, backtest_plan, is_backtest, plan_days
from gbmcvr.errors import UserError
from gbmcvr.fe import entity_groups
from gbmcvr.fe import select as selection
from gbmcvr.fe.pipeline import BuildResult, build, current_recipe_hash, raw_fingerprint, read_manifest, stale_reason
from gbmcvr.fe.spec import FeatureSpec, config_feature_spec, default_spec, feature_spec
from gbmcvr.lock import exclusive
from gbmcvr.metrics import log_loss
from gbmcvr.models import registry
from gbmcvr.models.base import TrainedRun, TrainOptions
from gbmcvr.post import backtest as bt
from gbmcvr.post import submission as sub
from gbmcvr.post.options import SubmitOptions
from gbmcvr.post.scoring import check_truth_covers, read_truth
from gbmcvr.post.submit import (
    Aligned,
    SubmitResult,
    align,
    make_submission,
    reliability_bins,
    write_submission,
)
from gbmcvr.progress import LOG
from gbmcvr.runs import (
    UNREFIT,
    backtest_scores,
    check_new_run,
    check_train_plan,
    input_key,
    provenance,
    read_metrics,
    read_preds,
    read_run_meta,
    write_run,
)
from gbmcvr.schema import PRED_P, PRED_SPLIT, TRUTH_INSTALL, TRUTH_P_INSTALL
from gbmcvr.space import model_space
from gbmcvr.tables import load_tables
from gbmcvr.tomlfile import read_toml
from gbmcvr.tracking import log_run
from gbmcvr.tracking import log_trial as log_trial_run
from gbmcvr.workdir import Workdir, check_name


def ingest(ctx: Context, data: Path, *, profile: str | None = None, out: Path | None = None) -> IngestResult:
    """Validate a raw dataset folder and write the typed Parquet raw store (WORKDIR/features/raw by default)."""
    prof = load_profile(profile) if profile is not None else ctx.cfg.load_profile()
    return ingest_raw(data, prof, out or ctx.wd.raw, ctx.progress)


def validate_submission(submission: Path, *, data: Path, profile: str = "sharechat2023") -> int:
    """Check a submission file against the test ids of a raw dataset folder; returns its row count."""
    prof = load_profile(profile)
    _, test_files = source_files(data, prof)
    ids = pl.concat(
        [
            pl.read_csv(
                f,
                separator=prof.separator,
                columns=[prof.id_column],
                schema_overrides={prof.id_column: pl.Int64},
                glob=False,
            )
            for f in test_files
        ]
    )[prof.id_column]
    sub.validate(sub.read(submission), ids, str(submission))
    return len(ids)


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
    ctx: Context, *, plan: str = "validate", feature_set: str | None = None, force: bool = False
) -> BuildResult:
    """Build (or reuse) the feature tables of one plan for the config's feature set."""
    fs = feature_set or ctx.cfg.feature_set
    spec = feature_spec_of(ctx.cfg, ctx.wd, fs)
    with exclusive(ctx.wd.feature_plan(fs, plan), "feature plan"):
        return build(ctx.wd.raw, ctx.cfg.load_profile(), spec, fs, plan, ctx.wd.features, ctx.progress, force)


def check_features_current(ctx: Context, feature_set: str, plan: str) -> dict[str, Any]:
    """The plan's manifest when its tables match the raw store and the feature set's config; else a UserError
    naming the command that rebuilds them (`gbmcvr run` rebuilds them itself)."""
    plan_dir = ctx.wd.feature_plan(feature_set, plan)
    hint = f"gbmcvr features --set {feature_set} --plan {plan}"
    manifest = read_manifest(plan_dir, hint)
    reason = stale_reason(manifest, ctx.wd.raw, ctx.cfg.load_profile(), feature_spec_of(ctx.cfg, ctx.wd, feature_set))
    if reason:
        raise UserError(f"{plan_dir}: feature tables are stale ({reason}); rebuild them with `{hint}`")
    return manifest


def check_run_current(ctx: Context, run_dir: Path, meta: dict[str, Any]) -> None:
    """Refuse a run trained on another raw store or another version of its feature set's config."""
    redo = f"gbmcvr train {meta.get('kind', 'MODEL')} --run-id {run_dir.name} --overwrite"
    if is_backtest(str(meta.get("plan", ""))):
        redo += f" --plan {meta['plan']}"
    if "raw_fingerprint" in meta and meta["raw_fingerprint"] != raw_fingerprint(ctx.wd.raw):
        raise UserError(f"{run_dir}: trained on another raw store (the data was ingested again since); run `{redo}`")
    feature_set = meta.get("feature_set", ctx.cfg.feature_set)
    spec = feature_spec_of(ctx.cfg, ctx.wd, feature_set)
    if "features_hash" in meta and meta["features_hash"] != current_recipe_hash(
        ctx.wd.raw, ctx.cfg.load_profile(), spec
    ):
        raise UserError(
            f"{run_dir}: trained on an older config of feature set '{feature_set}'; rebuild the features "
            f"(`gbmcvr features --set {feature_set}`) and run `{redo}`"
        )


def model_input_key(ctx: Context, kind: str, *, plan: str = "validate", refit: bool | None = None) -> str:
    """The input key a fresh run of `kind` on `plan` would record: equal keys mean the run is current."""
    fs = ctx.cfg.feature_set
    manifest = read_manifest(ctx.wd.feature_plan(fs, plan), f"gbmcvr features --set {fs} --plan {plan}")
    opts = TrainOptions(run_id=kind, plan=plan, feature_set=fs, refit=refit)
    return registry.get(kind).input_key(ctx, manifest, opts)


def train(
    ctx: Context,
    kind: str,
    *,
    run_id: str | None = None,
    plan: str = "validate",
    params: str | None = None,
    refit: bool | None = False,
    feature_set: str | None = None,
    dask: str | None = None,
    ddp: bool = False,
    overwrite: bool = False,
    origin: str = "train",
) -> TrainedRun:
    """Train one model kind and write models/<run-id>/ (models/backtest/<run-id>/ on the backtest plan).

    A backtest run also records its test-day scores against the labels the plan kept aside (with and without
    the refit, when it has one). Under torchrun, rank 0 alone checks, locks and writes the run.
    """
    model = registry.get(kind)
    check_train_plan(plan)
    opts = TrainOptions(run_id or kind, plan, feature_set or ctx.cfg.feature_set, params, refit, dask, ddp)
    run_dir = ctx.wd.run(opts.run_id, plan)
    if not is_main():
        return model.train(ctx, opts)
    refit_setting = model.refit_setting(ctx) if refit is None else refit
    for needed in (plan, "full") if refit_setting is True else (plan,):
        if (ctx.wd.feature_plan(opts.feature_set, needed) / "manifest.json").is_file():  # missing: the kind says so
            check_features_current(ctx, opts.feature_set, needed)
    started = time.time()
    LOG.debug(f"train {kind}: run {run_dir}, plan {plan}, feature set {opts.feature_set}, params {params or 'config'}")
    with exclusive(run_dir, "run"):
        check_new_run(run_dir, overwrite)
        run = model.train(ctx, opts)
        if not run.write:
            return run
        if is_backtest(plan) and run.predicts_installs:
            run.metrics["backtest"] = backtest_metrics(ctx, opts.feature_set, run.preds, run.metrics["base_rate"], plan)
            _report_backtest(ctx, opts.run_id, run.metrics["backtest"])
        manifest = read_manifest(ctx.wd.feature_plan(opts.feature_set, plan), "gbmcvr features")
        meta = {
            "feature_set": opts.feature_set,
            "seed": ctx.cfg.seed,
            "plan": plan,
            "params_source": params,
            "origin": origin,
            "raw_fingerprint": manifest["raw_fingerprint"],
            "features_hash": manifest["config_hash"],
            **provenance(started, ctx.cfg.source),
        }
        write_run(run_dir, run, meta)
        tracked = log_run(ctx.cfg.track, ctx.wd.root, f"{opts.run_id} ({plan})", run_dir)
        if tracked:
            ctx.progress(f"logged to MLflow: run {tracked}")
    return run


def backtest_metrics(
    ctx: Context, feature_set: str, preds: pl.DataFrame, base_rate: float, plan: str = "backtest"
) -> dict[str, Any]:
    """Test-day scores of a rehearsal run against the labels its plan kept aside (scoring only)."""
    profile = ctx.cfg.load_profile()
    labels = pl.read_parquet(ctx.wd.feature_plan(feature_set, plan) / TEST_LABELS, glob=False)
    args = (labels, profile.id_column, profile.install_label, base_rate)
    out = {"test": backtest_scores(preds, *args)}
    if UNREFIT in preds.columns:
        out["test_without_refit"] = backtest_scores(preds, *args, column=UNREFIT)
    return out


def _report_backtest(ctx: Context, run_id: str, scores: dict[str, Any]) -> None:
    t = scores["test"]
    without = scores.get("test_without_refit")
    ctx.progress(
        f"{run_id} (backtest): test-day log loss {t['logloss']:.5f}, calibration ratio {t['calibration_ratio']:.3f}"
        + (f"; without the refit {without['logloss']:.5f}" if without else "")
    )


def train_install_rate(ctx: Context) -> float:
    """The NCE base rate of submissions: the install rate of every labelled train row in the raw store (what
    `gbmcvr score` uses, from the rate `synth` records beside its truth), so both print the same NCE."""
    profile = ctx.cfg.load_profile()
    rate = pl.scan_parquet(ctx.wd.raw / "train.parquet", glob=False).select(pl.col(profile.install_label).mean())
    return float(rate.collect().item())


def day_rates(ctx: Context, plan: str) -> bt.DayRates:
    """Install rate of each labelled day of a plan (its fit and validation days), from the raw store."""
    profile = ctx.cfg.load_profile()
    days = plan_days(profile, plan)
    labelled = [*days["fit"], *days.get("valid", ())]
    rates = (
        pl.scan_parquet(ctx.wd.raw / "train.parquet", glob=False)
        .filter(pl.col(profile.day_column).is_in(labelled))
        .group_by(profile.day_column)
        .agg(pl.col(profile.install_label).mean().alias("rate"))
        .sort(profile.day_column)
        .collect()
    )
    return bt.DayRates(rates[profile.day_column].to_numpy(), rates["rate"].to_numpy().astype(np.float64))


def valid_labels(ctx: Context, ids: np.ndarray) -> np.ndarray:
    """Install labels of the given valid rows from the raw store, in their order."""
    profile = ctx.cfg.load_profile()
    id_col = profile.id_column
    labels = (
        pl.scan_parquet(ctx.wd.raw / "train.parquet", glob=False)
        .select(id_col, profile.install_label)
        .filter(pl.col(id_col).is_in(ids.tolist()))
        .collect()
    )
    valid = pl.DataFrame({id_col: ids}).join(labels, on=id_col, how="left", maintain_order="left")
    if valid[profile.install_label].null_count():
        raise UserError(f"{valid[profile.install_label].null_count():,} valid rows of the runs are not in {ctx.wd.raw}")
    return valid[profile.install_label].to_numpy()


def aligned_runs(wd: Workdir, runs: list[str], plan: str, refit: dict[str, bool] | None = None) -> Aligned:
    """The runs' prediction tables of one plan, aligned on the same rows.

    A backtest run trained with the refit also holds its test-day predictions without it; `refit` says,
    per run, which of the two stands in for the submission's run (the refit's, by default).
    """
    preds = {}
    for run in runs:
        run_dir = wd.run(run, plan)
        if is_backtest(plan) and not run_dir.is_dir():
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
                pl.when(pl.col(PRED_SPLIT) == "test").then(pl.col(UNREFIT)).otherwise(pl.col(PRED_P)).alias(PRED_P)
            )
    return align(preds)


def _rehearsal(
    ctx: Context, runs: list[str], plan: str, opts: SubmitOptions, refit: dict[str, bool] | None
) -> tuple[int, dict[tuple[str, str], np.ndarray], np.ndarray]:
    """One rehearsal day: its target day, every candidate's predictions of it, and its kept-aside labels."""
    profile = ctx.cfg.load_profile()
    for run in runs:
        if ctx.wd.run(run, plan).is_dir():
            check_run_current(ctx, ctx.wd.run(run, plan), read_run_meta(ctx.wd.run(run, plan)))
    aligned = aligned_runs(ctx.wd, runs, plan, refit)
    target_day = plan_days(profile, plan)["test"][0]
    inputs = bt.PostInputs(
        aligned.valid, valid_labels(ctx, aligned.valid_ids), aligned.test, day_rates(ctx, plan), target_day
    )
    pairs = bt.candidates(opts.calibration, opts.weights, len(runs))
    preds = bt.candidate_predictions(inputs, pairs, opts.space, opts.folds, ctx.cfg.seed, opts.trend_days)
    fs = read_run_meta(ctx.wd.run(runs[0], plan)).get("feature_set", ctx.cfg.feature_set)
    labels_path = ctx.wd.feature_plan(fs, plan) / TEST_LABELS
    if not labels_path.is_file():
        raise UserError(
            f"{labels_path}: no kept-aside labels (rebuild with `gbmcvr features --plan {plan} --overwrite`)"
        )
    labels = pl.read_parquet(labels_path, columns=[profile.id_column, profile.install_label], glob=False)
    y = (
        pl.DataFrame({profile.id_column: aligned.test_ids})
        .join(labels, on=profile.id_column, how="left", maintain_order="left")[profile.install_label]
        .to_numpy()
    )
    return target_day, preds, y


def rehearsal_plans(ctx: Context, runs: list[str], days: int) -> list[str]:
    """The rehearsal plans to choose on: `backtest`, then `backtest-2`, ... up to `days`, as far as every run
    has been trained on them (`gbmcvr run` trains them all)."""
    plans = [backtest_plan(1)]
    for depth in range(2, days + 1):
        plan = backtest_plan(depth)
        if not all(ctx.wd.run(r, plan).is_dir() for r in runs):
            break
        plans.append(plan)
    return plans


def backtest_choice(
    ctx: Context, runs: list[str], *, opts: SubmitOptions, refit: dict[str, bool] | None = None
) -> dict[str, Any]:
    """Try every candidate method on the rehearsal days; choose on their pooled rows (mean paired difference
    and its standard error), keeping the simplest candidate unless another wins by more than two SE."""
    plans = rehearsal_plans(ctx, runs, opts.rehearsal_days)
    days, day_preds, day_labels = [], [], []
    for plan in plans:
        day, preds, y = _rehearsal(ctx, runs, plan, opts, refit)
        days.append(day)
        day_preds.append(preds)
        day_labels.append(y)
    pairs = list(day_preds[0])
    ctx.progress(
        f"backtest: {len(pairs)} post-processing candidates on {sum(map(len, day_labels)):,} rows of "
        f"{len(days)} rehearsal day(s) {', '.join(map(str, days))}"
    )
    pooled = {pair: np.concatenate([p[pair] for p in day_preds]) for pair in pairs}
    y = np.concatenate(day_labels)
    base_rate = float(read_metrics(ctx.wd.run(runs[0], plans[0]))["base_rate"])
    row_days = np.concatenate([np.full(len(labels), day) for day, labels in zip(days, day_labels, strict=True)])
    rows = bt.score_candidates(pooled, y, base_rate, row_days)
    for r in rows:
        pair = (r["calibration"], r["weights"])
        r["per_day"] = {
            str(day): float(log_loss(labels, p[pair]))
            for day, p, labels in zip(days, day_preds, day_labels, strict=True)
        }
    choice = bt.decide(rows)
    chosen = next(r for r in rows if (r["calibration"], r["weights"]) == choice)
    simplest = rows[0]
    evidence = (
        f"wins over '{simplest['calibration']}', '{simplest['weights']}' by {simplest['gap']:.5f} "
        f"(paired SE {simplest['gap_se']:.5f}, clustered by day)"
        if choice != (simplest["calibration"], simplest["weights"])
        else f"the simplest candidate: nothing beat it by more than {bt.SIGNIFICANCE:g} standard errors"
    )
    ctx.progress(
        f"backtest: chose calibration '{choice[0]}', weights '{choice[1]}' "
        f"(log loss {chosen['logloss']:.5f} over {len(days)} day(s), calibration ratio "
        f"{chosen['calibration_ratio']:.3f}; {evidence})"
    )
    return {
        "rows": rows,
        "calibration": choice[0],
        "weights": choice[1],
        "reliability": reliability_bins(pooled[choice], y),
        "target_day": days[0],
        "days": days,
        "simplest": [simplest["calibration"], simplest["weights"]],
        "significance": bt.SIGNIFICANCE,
        "test_rate": float(np.mean(y)),
        "asked": {"calibration": opts.calibration, "weights": opts.weights},
    }


@dataclass(frozen=True)
class Submission:
    """A written submission: its TSV (the .json, .md and plots lie beside it) and what made it."""

    tsv: Path
    result: SubmitResult


def submit(
    ctx: Context,
    runs: list[str],
    *,
    opts: SubmitOptions | None = None,
    overwrite: bool = False,
    truth: Path | None = None,
    refit_evidence: dict[str, Any] | None = None,
) -> Submission:
    """Calibrate and ensemble the runs' predictions; write submissions/<name>.* (validated first).

    `auto` calibration or weights are chosen on the backtest runs (models/backtest/<run>) first;
    `refit_evidence` (per model: backtest test-day log loss with and without the refit) goes into the report.
    """
    if not runs:
        raise UserError("no runs given (pass --runs RUN [RUN ...])")
    twice = sorted({r for r in runs if runs.count(r) > 1})
    if twice:
        raise UserError(f"run '{twice[0]}' given twice in --runs (an ensemble takes each run once)")
    opts = opts or ctx.cfg.submit
    profile = ctx.cfg.load_profile()
    for run in runs:
        check_run_current(ctx, ctx.wd.run(run), read_run_meta(ctx.wd.run(run)))
    aligned = aligned_runs(ctx.wd, runs, "validate")
    backtest = None
    if "auto" in (opts.calibration, opts.weights):
        refit = {r: read_run_meta(ctx.wd.run(r)).get("refit", False) for r in runs}
        backtest = backtest_choice(ctx, runs, opts=opts, refit=refit)
        opts = replace(opts, calibration=backtest["calibration"], weights=backtest["weights"])
    y_valid = valid_labels(ctx, aligned.valid_ids)
    base_rate = train_install_rate(ctx)
    truth_table = read_truth(truth) if truth is not None else None
    test_ids = pl.read_parquet(ctx.wd.raw / "test.parquet", columns=[profile.id_column], glob=False)[profile.id_column]
    if truth_table is not None:
        check_truth_covers(truth_table, test_ids, truth)
    history = day_rates(ctx, "validate")
    result = make_submission(
        aligned, y_valid, base_rate, opts, ctx.cfg.seed, truth_table, history, profile.test_day, backtest
    )
    result.refit = refit_evidence
    truth_ll = None
    if truth_table is not None and TRUTH_P_INSTALL in truth_table.columns:
        truth_ll = log_loss(truth_table[TRUTH_INSTALL].to_numpy(), truth_table[TRUTH_P_INSTALL].to_numpy())
    tsv = write_submission(ctx.wd.submissions, opts.name, result, opts, test_ids, {"runs": runs}, truth_ll, overwrite)
    ctx.progress(f"wrote {tsv}")
    return Submission(tsv, result)


@dataclass(frozen=True)
class Tuning:
    """A tuning call's study, and whether every asked trial ran (False when interrupted)."""

    study: optuna.Study
    completed: bool
    storage_url: str = ""


def tune(
    ctx: Context,
    target: str,
    *,
    trials: int,
    timeout: float | None = None,
    storage: str | None = None,
    study: str | None = None,
    workers: int = 1,
    seed: int | None = None,
    pruner: str | None = None,
    worker: bool = False,
) -> Tuning:
    """Tune one target (a kind, or one stage of a kind) against its validation log loss; with several
    workers, start them on a shared journal storage and wait."""
    kind = registry.target_kind(target)
    cfg = ctx.cfg
    if trials < 1 or workers < 1:
        raise UserError("--trials and --workers must be at least 1")
    pruner = pruner or cfg.tune.pruner
    tuning.make_pruner(pruner)
    space = model_space(target, cfg.tune.spaces.get(target), cfg.source)
    seed = cfg.seed if seed is None else seed
    if storage is None:
        models = ctx.wd.models
        storage = f"journal:{models / 'optuna-journal.log'}" if workers > 1 else f"sqlite:///{models / 'optuna.db'}"
    study_name = study or f"{target}-{cfg.feature_set}"
    track = cfg.track

    def log_trial(trial: optuna.trial.FrozenTrial) -> None:
        log_trial_run(track, ctx.wd.root, study_name, trial.number, trial.params, trial.value)

    setup = tuning.TuneSetup(
        target,
        study_name,
        storage,
        trials,
        timeout,
        seed,
        pruner,
        space,
        ctx.wd.models / "tuned",
        log_trial if track.mlflow else None,
    )
    the_study = tuning.load_study(setup, cfg.feature_set)
    if not worker:
        n = tuning.fail_running(the_study)
        if n:
            ctx.progress(f"marked {n} trial(s) left running by a dead process as failed")
    if workers > 1:
        args = [target, "--trials", str(trials), "--study", study_name, "--pruner", pruner]
        args += ["--workdir", str(ctx.wd.root), "--device", ctx.device]
        if cfg.source != BUILTIN_SOURCE:
            args += ["--config", str(Path(cfg.source).resolve())]
        if timeout:
            args += ["--timeout", str(timeout)]
        ctx.progress(f"starting {workers} workers on {tuning.redact(storage)}, study '{study_name}'")
        completed = tuning.spawn_workers(args, workers, seed, storage, cfg.tune.threads_per_worker)
        if not completed:  # every worker has ended: no trial of theirs is still running
            tuning.fail_running_settled(the_study)
            ctx.progress(tuning.INTERRUPTED)
        return Tuning(the_study, completed, storage)
    threads = tuning.worker_threads(cfg.tune.threads_per_worker) if worker else None
    objective = kind.objective(ctx, target, space, seed, threads)
    ctx.progress(
        f"tuning {target}: study '{study_name}' on {tuning.redact(storage)}, "
        f"{tuning.finished(the_study)} of {trials} trials done"
    )
    return Tuning(the_study, tuning.run_trials(the_study, setup, tuning.timed(objective), ctx.progress), storage)


def select(ctx: Context, *, name: str = "selected", opts: selection.SelectOptions | None = None) -> selection.Selection:
    """Build the candidate families on the backtest plan, search, write features/<name>.toml and its report."""
    wd, profile = ctx.wd, ctx.cfg.load_profile()
    check_name(name, "feature set name")
    opts = opts or ctx.cfg.selection
    source = config_feature_spec(ctx.cfg.features, profile, ctx.cfg.source)[0].entities
    keyed = entity_groups.resolve(wd.raw, profile, source, raw_fingerprint(wd.raw))  # build reports them
    candidates, spec = selection.candidate_spec(wd.raw, profile, keyed, source, ctx.progress)
    # the candidate fit table holds only the rows the proxies read: a fifth of the challenge's fit window
    rows = selection.raw_proxy_rows(wd.raw, profile, opts)
    build(wd.raw, profile, spec, selection.CANDIDATE_SET, selection.PLAN, wd.features, ctx.progress, fit_ids=rows.kept)
    tables = load_tables(wd.features, selection.CANDIDATE_SET, selection.PLAN)
    chosen = selection.run_selection(tables, opts, selection.requirements(candidates), ctx.progress, rows)
    raw = selection.chosen_raw(candidates, chosen.choice)
    days = ", ".join(chosen.rehearsal.get("days", {}))
    header = f"Chosen by `gbmcvr select` on the backtest plan's rehearsal days {days}: {chosen.choice.label()}"
    feature_spec(raw, profile, "selected families")
    write_text(wd.features / f"{name}.toml", selection.toml_text(raw, header))
    with atomic_dir(wd.features / f"{name}-selection") as tmp:
        write_text(tmp / "report.md", selection.report_markdown(chosen, name))
        write_json(
            tmp / "report.json",
            {
                "name": name,
                "raw_fingerprint": tables.manifest["raw_fingerprint"],
                "input_key": input_key(
                    tables.manifest["config_hash"], tables.manifest["raw_fingerprint"], asdict(opts)
                ),
                "choice": asdict(chosen.choice),
                "entities": {name: list(group) for name, group in keyed.entities.items()},
                "options": asdict(opts),
                "steps": chosen.steps,
                "holdout": chosen.holdout,
                "rehearsal": chosen.rehearsal,
                "seconds": round(chosen.seconds, 1),
            },
        )
        selection.plot_gains(chosen, tmp / "gain.png")
    ctx.progress(f"select: wrote {wd.features / f'{name}.toml'} and {wd.features / f'{name}-selection'}/report.md")
    return chosen
