"""The `gbmcvr` command line: one thin command per stage (parse, call, report)."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from gbmcvr import __version__
from gbmcvr.atomic import fault_error, write_text
from gbmcvr.context import Context, is_main
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.progress import LOG, Reporter, configure
from gbmcvr.workdir import Workdir

if TYPE_CHECKING:
    pass

# Heavy modules (Polars, LightGBM, Optuna, torch) are imported inside the commands that use them, so that
# `gbmcvr --help` and a mistyped command answer at once.
CONTEXT = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=CONTEXT,
    help="Conversion-rate toolkit: synth, ingest, analyze, features, train, tune, submit, run, demo, runs.\n\n"
    "Example: gbmcvr demo   (generated data, the whole pipeline, scored against the truth)",
)
runs_app = typer.Typer(
    no_args_is_help=False, rich_markup_mode=None, context_settings=CONTEXT, help="List, compare and prune runs."
)
app.add_typer(runs_app, name="runs")


class Plan(StrEnum):
    validate = "validate"
    full = "full"
    backtest = "backtest"
    both = "both"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _version(value: bool) -> None:
    if value:
        print(f"gbmcvr {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    quiet: Annotated[bool, typer.Option("-q", "--quiet", help="Only warnings and errors on stderr.")] = False,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug messages too.")] = False,
) -> None:
    """Conversion-rate toolkit: synth, ingest, analyze, features, train, tune, submit, run, demo, runs."""
    global progress
    progress = configure(-1 if quiet else 1 if verbose else 0)


progress: Reporter = Reporter()  # set per command by the options above: bars on a terminal, else lines
out = Console(highlight=False, soft_wrap=True)

WorkdirOpt = Annotated[Path, typer.Option("--workdir", help="Work directory (features/, models/, submissions/).")]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", help="Pipeline config TOML (default: WORKDIR/gbmcvr.toml).")
]


def _context(workdir: Path, config: Path | None, device: str = "auto") -> Context:
    """The work directory and its config (--config, else WORKDIR/gbmcvr.toml, else the defaults), parsed once."""
    from gbmcvr.config import load_config

    wd = Workdir(workdir)
    cfg = load_config(config, wd.config_file)
    LOG.debug(f"work directory {wd.root.resolve()}; config {cfg.source}; data {cfg.data}; seed {cfg.seed}")
    return Context(wd, cfg, progress, device)


@app.command()
def init(workdir: WorkdirOpt = Path("."), overwrite: bool = False) -> None:
    """Write a commented default gbmcvr.toml into the work directory."""
    from gbmcvr.config import DEFAULT_TOML

    path = Workdir(workdir).config_file
    if path.exists() and not overwrite:
        raise UserError(f"{path} exists (use --overwrite to replace it)")
    write_text(path, DEFAULT_TOML)
    out.print(f"wrote {path}")


@app.command()
def synth(
    out_dir: Annotated[
        Path, typer.Argument(metavar="OUT", help="Folder to write (an earlier synth output is replaced).")
    ],
    scale: Annotated[float, typer.Option(help="1.0 = real size (~3.5 M train rows; multi-action: 1 M).")] = 1.0,
    seed: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="Random seed (>= 0).")] = 0,
    kind: Annotated[str, typer.Option(help="sharechat, or multi-action (N conversion actions).")] = "sharechat",
    actions: Annotated[int, typer.Option(help="multi-action only: number of conversion actions N.")] = 4,
    force: Annotated[bool, typer.Option("--force", help="Replace OUT even if it holds other files.")] = False,
    user_columns: Annotated[
        str, typer.Option(help="sharechat only: plant the user identity in these columns, e.g. f_24,f_25,f_71.")
    ] = "",
    world: Annotated[
        str, typer.Option(help="sharechat only: base, new-ads-better, shift-down or weak-users (the process).")
    ] = "base",
    test_shift: Annotated[
        float | None, typer.Option(help="sharechat only: install-logit shift of the test day (overrides --world).")
    ] = None,
    new_ad_share: Annotated[
        float | None, typer.Option(help="sharechat only: share of the test day's ads new that day.")
    ] = None,
    new_ad_install: Annotated[
        float | None, typer.Option(help="sharechat only: install-logit effect of an ad's first days.")
    ] = None,
    user_signal: Annotated[
        float | None, typer.Option(help="sharechat only: scale of users' unobserved propensities.")
    ] = None,
) -> None:
    """Generate a dataset in the ShareChat challenge layout, with the test day's true probabilities."""
    from dataclasses import replace

    from gbmcvr.data.synth import check_synth_target, check_world, named_world, write_synth
    from gbmcvr.data.synth_multi import write_synth_multi

    if scale <= 0:
        raise UserError(f"--scale must be positive, got {scale}")
    if kind not in ("sharechat", "multi-action"):
        raise UserError(f"--kind must be sharechat or multi-action, not '{kind}'")
    check_synth_target(out_dir, force)
    if kind == "multi-action":
        progress(f"generating multi-action scale {scale} (seed {seed}, {actions} actions) into {out_dir}")
        multi = write_synth_multi(out_dir, scale, seed, actions)
        out.print(
            f"wrote {multi.train_rows:,} train rows and {multi.test_rows:,} test rows to {out_dir}; "
            f"target share per action {multi.target_share}; profile {out_dir / 'profile.toml'}"
        )
        return
    knobs = {"test_shift": test_shift, "new_ad_share": new_ad_share, "new_ad_install": new_ad_install}
    knobs["user_signal"] = user_signal
    spec = replace(named_world(world), **{k: v for k, v in knobs.items() if v is not None})
    check_world(spec)
    progress(f"generating scale {scale} (seed {seed}, world {world}) into {out_dir}")
    planted = tuple(c.strip() for c in user_columns.split(",") if c.strip())
    result = write_synth(out_dir, scale, seed, force, planted, spec, progress=progress)
    out.print(
        f"wrote {result.train_rows:,} train rows (30 files) and {result.test_rows:,} test rows to {out_dir}; "
        f"truth log loss on the test day = {result.truth_logloss:.5f}"
    )


@app.command()
def ingest(
    data_dir: Annotated[Path, typer.Argument(metavar="DATA_DIR")],
    profile: Annotated[
        str | None, typer.Option(help="Built-in profile name or a profile TOML file (default from config).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Raw store folder (default WORKDIR/features/raw).")
    ] = None,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Validate a raw dataset folder and write the typed Parquet raw store."""
    from gbmcvr import stages

    result = stages.ingest(_context(workdir, config), data_dir, profile=profile, out=out_dir)
    for entry in result.skipped:
        out.print(f"skipped {entry}")
    out.print(
        f"ingested {result.train_rows:,} train and {result.test_rows:,} test rows into {result.out} in {result.seconds:.1f}s"
    )


@app.command()
def analyze(
    data: Annotated[
        Path | None, typer.Option("--data", help="Raw dataset folder (ingested to a temporary store first).")
    ] = None,
    out_dir: Annotated[
        Path | None, typer.Option("--out", help="Report folder (default WORKDIR/reports/analyze).")
    ] = None,
    profile: Annotated[str | None, typer.Option(help="Profile name or TOML file (default from config).")] = None,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Data analysis of the raw store (or --data): analyze.md, analyze.json and plots."""
    from gbmcvr.data.analyze_report import analyze_store

    ctx = _context(workdir, config)
    target = out_dir or ctx.wd.root / "reports" / "analyze"
    result = analyze_store(ctx.wd.raw, profile or ctx.cfg.profile, target, data, ctx.cfg.seed, progress)
    out.print(f"wrote {target / 'analyze.md'} ({result['summary']['seconds']:.1f}s)")


@app.command()
def validate(
    submission: Annotated[Path, typer.Argument(metavar="SUBMISSION")],
    data: Annotated[Path, typer.Option("--data", help="Raw dataset folder whose test ids the file must cover.")],
    profile: str = "sharechat2023",
) -> None:
    """Check a submission file against the test ids of a dataset."""
    from gbmcvr import stages

    rows = stages.validate_submission(submission, data=data, profile=profile)
    out.print(f"{submission}: valid ({rows:,} rows)")


@app.command()
def score(
    submission: Annotated[Path, typer.Argument(metavar="SUBMISSION")],
    truth: Annotated[Path, typer.Option("--truth", help="Dataset folder with truth/test_truth.parquet, or the file.")],
    base_rate: Annotated[
        float | None, typer.Option(help="Base rate for NCE (default: the train install rate).")
    ] = None,
) -> None:
    """Score a submission against a truth file: log loss, NCE, AUC, calibration; the truth's own log loss."""
    from gbmcvr.post.scoring import format_score, score_submission

    result = score_submission(submission, truth, base_rate)
    out.print(format_score(result))


@app.command()
def features(
    config: ConfigOpt = None,
    feature_set: Annotated[str | None, typer.Option("--set", help="Feature set name (default from config).")] = None,
    plan: Annotated[Plan, typer.Option(help="Which plan's tables; both = validate and full.")] = Plan.validate,
    show_default: Annotated[bool, typer.Option("--show-default", help="Print the default feature set TOML.")] = False,
    force: Annotated[
        bool, typer.Option("--overwrite", "--force", help="Rebuild even when current (--force: old name).")
    ] = False,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Build feature tables from the raw store into features/<set>/<plan>/."""
    from gbmcvr import stages
    from gbmcvr.fe.spec import config_feature_spec, default_toml_text

    if show_default:
        out.print(default_toml_text(), markup=False)
        return
    ctx = _context(workdir, config)
    ctx.wd.feature_plan(feature_set or ctx.cfg.feature_set, "validate")  # a plain name, checked before any output
    _, sources = config_feature_spec(ctx.cfg.features, ctx.cfg.load_profile(), ctx.cfg.source)
    out.print("feature families: " + ", ".join(f"{family} ({where})" for family, where in sources.items()))
    plans = ["validate", "full"] if plan == Plan.both else [plan.value]
    for p in plans:
        result = stages.build_features(ctx, plan=p, feature_set=feature_set, force=force)
        verb = "built" if result.rebuilt else "up to date:"
        rows = ", ".join(f"{split} {n:,}" for split, n in result.rows.items())
        out.print(f"{verb} {result.out} ({result.columns} columns; rows: {rows}; {result.seconds:.1f}s)")


@app.command("select")
def select_cmd(
    config: ConfigOpt = None,
    name: Annotated[
        str, typer.Option("--name", help="Name of the chosen feature set (features/NAME.toml).")
    ] = "selected",
    rounds: Annotated[
        int | None, typer.Option(help="Boosting rounds of the proxy model (default: [select] rounds, 150).")
    ] = None,
    max_fits: Annotated[
        int | None,
        typer.Option(
            "--max-fits", help="Budget: at most this many candidates, each fitted once per rehearsal day (default 30)."
        ),
    ] = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Choose feature families and categorical handling on the backtest plan's rehearsal days ([select] table)."""
    from gbmcvr import stages

    ctx = _context(workdir, config)
    if (rounds is not None and rounds < 1) or (max_fits is not None and max_fits < 1):
        raise UserError("--rounds and --max-fits must be at least 1")
    given = {k: v for k, v in {"rounds": rounds, "max_fits": max_fits}.items() if v is not None}
    opts = replace(ctx.cfg.selection, **given)
    selection = stages.select(ctx, name=name, opts=opts)
    out.print(f'selected {selection.choice.label()}; use it with feature_set = "{name}" in gbmcvr.toml')


@app.command()
def train(
    kind: Annotated[str, typer.Argument(metavar="MODEL", help=" | ".join(registry.names()))],
    config: ConfigOpt = None,
    feature_set: Annotated[
        str | None, typer.Option("--set", "--features", help="Feature set (default from config; --features: old name).")
    ] = None,
    params: Annotated[str | None, typer.Option("--params", help="JSON params file, or 'tuned'.")] = None,
    refit: Annotated[bool, typer.Option("--refit", help="Also retrain on the full plan for test predictions.")] = False,
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Run directory name (default: the model name).")
    ] = None,
    device: Annotated[Device, typer.Option(help="Deep models: CUDA when present (auto), or cpu / cuda.")] = Device.auto,
    plan: Annotated[
        str, typer.Option(help="validate, or backtest (the rehearsal one day earlier: models/backtest/<run-id>/).")
    ] = "validate",
    dask: Annotated[
        str | None, typer.Option("--dask", help="LightGBM: Dask scheduler address to train on (or [gbm] dask).")
    ] = None,
    ddp: Annotated[bool, typer.Option("--ddp", help="MTDM: data parallel over the processes torchrun starts.")] = False,
    overwrite: bool = False,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Train a model on the feature tables and write models/<run-id>/ (models/backtest/<run-id>/)."""
    from gbmcvr import stages

    ctx = _context(workdir, config, Device(device).value)
    run_id = kind if run_id is None else run_id
    run = stages.train(
        ctx,
        kind,
        run_id=run_id,
        plan=plan,
        params=params,
        refit=refit,
        feature_set=feature_set,
        dask=dask,
        ddp=ddp,
        overwrite=overwrite,
    )
    if not is_main():
        return
    where = ctx.wd.run(run_id, plan)
    if not run.predicts_installs:
        out.print(f"{run_id} -> {where}\n{run.summary}")
        return
    m = run.metrics["valid"]["p"]
    out.print(
        f"{run_id}: valid log loss {m['logloss']:.5f}, NCE {m['nce']:.5f} (base rate {m['nce_base_rate']:.4f}, "
        f"fit-window install rate), AUC {m['auc']:.5f}, calibration {m['calibration_ratio']:.3f} -> {where}"
    )
    if "backtest" in run.metrics:
        t = run.metrics["backtest"]["test"]
        out.print(f"  backtest test day: log loss {t['logloss']:.5f}, calibration {t['calibration_ratio']:.3f}")


@app.command()
def submit(
    runs: Annotated[list[str], typer.Option("--runs", help="Run ids to ensemble (repeat or space-separate).")],
    calibration: Annotated[
        str | None,
        typer.Option(
            help="auto (chosen on the backtest) | none | scaling | scaling-fit | isotonic | platt | shift-em | trend "
            "| BASE+shift-em | BASE+trend"
        ),
    ] = None,
    weights: Annotated[
        str | None,
        typer.Option(
            help="auto (chosen on the backtest) | equal | simplex | logit | stacker | comma-separated weights"
        ),
    ] = None,
    space: Annotated[str | None, typer.Option(help="probability | logit averaging")] = None,
    name: Annotated[str | None, typer.Option(help="Submission name (submissions/<name>.tsv)")] = None,
    truth: Annotated[Path | None, typer.Option(help="Dataset folder with a truth file: adds test-day columns.")] = None,
    config: ConfigOpt = None,
    overwrite: bool = False,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Calibrate and ensemble runs, write submissions/<name>.tsv with a Table-5-like report."""
    from gbmcvr import stages
    from gbmcvr.post.options import submit_options

    ctx = _context(workdir, config)
    changes = {
        k: v for k, v in {"calibration": calibration, "weights": weights, "space": space, "name": name}.items() if v
    }
    opts = submit_options({**vars(replace(ctx.cfg.submit, **changes))}, "command line")
    run_ids = [r for item in runs for r in item.split()]
    tsv = stages.submit(ctx, run_ids, opts=opts, overwrite=overwrite, truth=truth).tsv
    out.print((tsv.with_suffix(".md")).read_text(), markup=False)
    out.print(f"wrote {tsv}")


@app.command("run")
def run_cmd(
    config: ConfigOpt = None,
    data: Annotated[Path | None, typer.Option("--data", help="Raw dataset folder (default from config).")] = None,
    truth: Annotated[Path | None, typer.Option(help="Dataset folder with a truth file: adds test-day columns.")] = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Whole pipeline from one config: ingest -> features -> train -> submit (current steps are skipped)."""
    from gbmcvr.pipeline import run_pipeline

    result = run_pipeline(_context(workdir, config), data=data, truth=truth)
    for step, state in result.steps.items():
        out.print(f"  {step:<22} {state}")
    out.print(result.submission.tsv.with_suffix(".md").read_text(), markup=False)
    out.print(f"report: {result.report}")


@app.command()
def demo(
    scale: Annotated[float, typer.Option(help="Data scale (0.03 ~ 100k train rows).")] = 0.03,
    seed: Annotated[int, typer.Option(min=0, max=2**31 - 1, help="Random seed (>= 0).")] = 0,
    workdir: WorkdirOpt = Path("gbmcvr-demo"),
) -> None:
    """Generate ~100k rows, run the whole pipeline (e2e, ts, MTDM), analyze the data, score against the truth."""
    from gbmcvr.config import PipelineConfig
    from gbmcvr.pipeline import demo as run_demo
    from gbmcvr.post.scoring import format_score

    start = time.perf_counter()
    wd = Workdir(workdir)
    wd.root.mkdir(parents=True, exist_ok=True)
    result = run_demo(Context(wd, PipelineConfig(), progress), scale=scale, seed=seed)
    out.print(result.submission.tsv.with_suffix(".md").read_text(), markup=False)
    out.print("Submission scored against the generated truth (gbmcvr score):")
    out.print(format_score(result.score), markup=False)
    out.print(f"data analysis: {wd.root / 'reports' / 'analyze' / 'analyze.md'}")
    out.print(f"demo finished in {time.perf_counter() - start:.0f}s; outputs under {wd.root}")


@app.command()
def tune(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="A model kind, or one stage of a kind (ts-like).")],
    trials: Annotated[int, typer.Option(help="Total finished trials wanted in the study.")] = 30,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")] = None,
    storage: Annotated[
        str | None,
        typer.Option(help="RDB URL or journal:PATH (default models/optuna.db).", envvar="GBMCVR_TUNE_STORAGE"),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name (default MODEL-FEATURESET).")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes sharing a JournalStorage file.")] = 1,
    seed: Annotated[
        int | None, typer.Option(min=0, max=2**31 - 1, help="Sampler seed (default: the config seed).")
    ] = None,
    pruner: Annotated[str | None, typer.Option(help="median | hyperband | none")] = None,
    show_space: Annotated[bool, typer.Option("--show-space", help="Print the search space and exit.")] = False,
    device: Annotated[Device, typer.Option(help="Deep models: CUDA when present (auto), or cpu / cuda.")] = Device.auto,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Tune a model's parameters with Optuna against its validation log loss (resumable, prunable)."""
    from rich.table import Table

    from gbmcvr import stages
    from gbmcvr import tune as tuning
    from gbmcvr.space import model_space, space_toml

    ctx = _context(workdir, config, Device(device).value)
    registry.target_kind(model)
    if show_space:
        out.print(space_toml(model, model_space(model, ctx.cfg.tune.spaces.get(model), ctx.cfg.source)), markup=False)
        return
    try:
        tuned = stages.tune(
            ctx,
            model,
            trials=trials,
            timeout=timeout,
            storage=storage,
            study=study,
            workers=workers,
            seed=seed,
            pruner=pruner,
            worker=worker,
        )
    except KeyboardInterrupt:  # before the first trial (reading the tables): the same one line, from the parent
        if not worker:
            print(tuning.INTERRUPTED, file=sys.stderr)
        raise typer.Exit(130) from None
    if worker:
        return
    the_study, completed = tuned.study, tuned.completed
    rows = tuning.summary_rows(the_study)
    if not rows:
        out.print("no completed trials yet")
        return
    table = Table(title=f"top trials of study '{the_study.study_name}'")
    for col in ("trial", "valid log loss", "best iteration", "seconds", "parameters"):
        table.add_column(col, overflow="fold")
    for row in rows:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(row.items())[4:])
        table.add_row(
            str(row["trial"]), f"{row['value']:.5f}", str(row["best_iteration"]), f"{row['seconds']:.1f}", params
        )
    out.print(table)
    imp = tuning.importances(the_study)
    if imp:
        out.print("parameter importances: " + ", ".join(f"{k} {v:.3f}" for k, v in imp.items()))
    best = the_study.best_trial
    out.print(
        f"best: trial {best.number}, valid log loss {best.value:.5f} -> models/tuned/{model}.json "
        f"(train with --params tuned); browse with `optuna-dashboard {tuning.redact(tuned.storage_url)}`"
    )
    if not completed:
        raise typer.Exit(130)


@app.command()
def aliexpress(
    train_csv: Annotated[Path, typer.Argument(metavar="TRAIN_CSV")],
    test_csv: Annotated[Path, typer.Argument(metavar="TEST_CSV")],
    epochs: Annotated[int | None, typer.Option(help="Epochs (default from [mtdm]).")] = None,
    device: Annotated[Device, typer.Option(help="CUDA when present (auto), or cpu / cuda.")] = Device.auto,
    config: ConfigOpt = None,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Train the MTDM on AliExpress-format files; print test AUCs beside the published MMoE results."""
    from gbmcvr.deep import aliexpress as ax  # imports torch: only for this command
    from gbmcvr.deep.params import check_mtdm

    ctx = _context(workdir, config, Device(device).value)
    mcfg = ctx.cfg.section("mtdm").config
    if epochs:
        mcfg = replace(mcfg, epochs=epochs)
        check_mtdm(mcfg, "--epochs")
    result = ax.evaluate(train_csv, test_csv, mcfg, ctx.cfg.seed, device, progress)
    out.print(f"AliExpress test rows: {result['test_rows']:,}")
    out.print(f"{'task':<8}{'ours (AUC)':>12}{'MMoE, published (NL)':>24}")
    for task in ("ctr", "cvr", "ctcvr"):
        out.print(f"{task:<8}{result[task + '_auc']:>12.4f}{ax.PUBLISHED_MMOE_NL[task + '_auc']:>24.4f}")


@runs_app.callback(invoke_without_command=True)
def runs_list(
    ctx: typer.Context,
    sort: Annotated[
        str, typer.Option(help="run | started | valid_logloss | valid_auc | backtest | seconds")
    ] = "started",
    as_json: Annotated[bool, typer.Option("--json", help="Print the rows as JSON.")] = False,
    latest: Annotated[bool, typer.Option("--latest", help="Only the current run of each id (no history).")] = False,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """List every run with its valid and backtest scores (earlier attempts as RUN@START).

    Example: gbmcvr runs --sort valid_logloss"""
    if ctx.invoked_subcommand is not None:
        return
    import json

    from rich.table import Table

    from gbmcvr.run_history import COLUMNS, table

    rows = table(Workdir(workdir).models, sort, history=not latest)
    if as_json:
        out.print(json.dumps(rows, indent=2), markup=False)
        return
    if not rows:
        out.print(f"no runs under {Workdir(workdir).models}")
        return
    grid = Table(title=f"runs under {Workdir(workdir).models} (sorted by {sort})")
    for col in COLUMNS:
        grid.add_column(col, overflow="fold")
    for r in rows:
        grid.add_row(*(_cell(r[c]) for c in COLUMNS), style=None if r["current"] else "dim")
    _wide().print(grid)


def _wide() -> Console:
    """Tables too wide for 80 columns: the terminal's width, or 200 when stdout is a file or a pipe."""
    return out if out.is_terminal else Console(highlight=False, width=200)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.5f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


@runs_app.command("compare")
def runs_compare(
    a: Annotated[str, typer.Argument(metavar="A", help="A run (e2e, backtest/e2e, e2e@20261201T101500).")],
    b: Annotated[str, typer.Argument(metavar="B")],
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Show two runs' scores and parameters side by side (differences marked).

    Example: gbmcvr runs compare e2e e2e@20261201T101500"""
    from rich.table import Table

    from gbmcvr.run_history import compare

    grid = Table(title=f"{a} vs {b} (≠ marks a difference)")
    for col in ("", a, b, "≠"):
        grid.add_column(col, overflow="fold")
    for key, va, vb in compare(Workdir(workdir).models, a, b):
        grid.add_row(key, _cell(va), _cell(vb), "≠" if va != vb else "", style="bold" if va != vb else None)
    _wide().print(grid)


@runs_app.command("prune")
def runs_prune(
    keep: Annotated[int, typer.Option(help="Earlier attempts to keep per run id (the current run always stays).")] = 3,
    workdir: WorkdirOpt = Path("."),
) -> None:
    """Delete earlier attempts beyond the newest KEEP of each run id (only when asked; never by surprise)."""
    from gbmcvr.run_history import prune

    removed = prune(Workdir(workdir).models, keep)
    out.print(f"removed {len(removed)} earlier attempt(s)" + "".join(f"\n  {p}" for p in removed))


@app.command()
def report(workdir: WorkdirOpt = Path(".")) -> None:
    """Write reports/index.html: analysis, feature selection, every run and every submission on one page."""
    from gbmcvr.report_html import write_report

    out.print(f"wrote {write_report(Workdir(workdir))}")


@app.command("config")
def config_cmd(config: ConfigOpt = None, workdir: WorkdirOpt = Path(".")) -> None:
    """Print the effective config (the file's values over every default, each kind's table included) as TOML.

    Example: gbmcvr config > gbmcvr.toml"""
    from gbmcvr.config import effective_toml

    ctx = _context(workdir, config)
    out.print(effective_toml(ctx.cfg), markup=False)


def main() -> None:
    """Entry point: usage errors print usage on stderr and exit 2; user errors become one line on stderr, exit 2."""
    if len(sys.argv) <= 1:
        command = typer.main.get_command(app)
        with contextlib.redirect_stdout(sys.stderr):
            help_text = command.get_help(typer.Context(command, info_name="gbmcvr"))
        print(help_text, file=sys.stderr)
        sys.exit(2)
    try:
        app()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except Exception as exc:
        fault = fault_error(exc)
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        sys.exit(fault.exit_code)
