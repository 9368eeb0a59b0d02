"""`gbmcvr run` and `gbmcvr demo`: the whole pipeline from one config, skipping steps that are current."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr import metrics, stages
from gbmcvr.config import PipelineConfig, config_from_dict
from gbmcvr.context import Context
from gbmcvr.data.analyze_report import analyze_store
from gbmcvr.data.ingest import source_files, source_listing
from gbmcvr.data.split import TEST_LABELS, backtest_plan, plan_days
from gbmcvr.data.synth import write_synth
from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.post.backtest import SIGNIFICANCE
from gbmcvr.post.scoring import score_submission
from gbmcvr.rehearsal import pooled_gain
from gbmcvr.report_html import write_report
from gbmcvr.runs import UNREFIT, is_current, keep_aside, read_preds, read_run_meta
from gbmcvr.schema import PRED_ID, PRED_P, PRED_SPLIT

SELECTED = "selected"
RUN_ORIGIN = "run"  # run.json's `origin` of runs `gbmcvr run` made (and may replace)


@dataclass
class PipelineResult:
    """What `gbmcvr run` did: each step's state (done, current, yes/no for refits) and the submission."""

    steps: dict[str, str]
    submission: stages.Submission
    analyze: dict[str, Any] | None = None
    score: dict[str, Any] | None = None
    report: Path | None = None


def _raw_is_current(ctx: Context, data: Path) -> bool:
    manifest = ctx.wd.raw / "manifest.json"
    if not manifest.is_file():
        return False
    old = json.loads(manifest.read_text())
    profile = ctx.cfg.load_profile()
    train, test = source_files(data, profile)

    def resolved(listing: list[dict]) -> list[dict]:  # `ingest data` records paths as given, `run` absolute ones
        return [{**s, "file": str(Path(s.get("file", "")).resolve())} for s in listing if isinstance(s, dict)]

    sources = old.get("sources")
    current = isinstance(sources, list) and resolved(sources) == resolved(source_listing(train + test))
    return old.get("profile") == profile.name and current


def _train(ctx: Context, kind: str, plan: str, refit: bool, steps: dict[str, str]) -> None:
    """Train one model on one plan unless its run is current."""
    step = f"train {kind}" + (f" ({plan})" if plan != "validate" else "")
    key = stages.model_input_key(ctx, kind, plan=plan, refit=refit)
    if is_current(ctx.wd.run(kind, plan), key):
        steps[step] = "current"
        ctx.progress(f"{step}: current, skipped")
        return
    kept = keep_aside(ctx.wd.run(kind, plan), RUN_ORIGIN)
    if kept is not None:
        ctx.progress(f"{step}: the run in {kept.parent / kind} was not made by `gbmcvr run`; kept it as {kept.name}")
    stages.train(ctx, kind, plan=plan, refit=refit, overwrite=True, origin=RUN_ORIGIN)
    steps[step] = "done" if kept is None else f"done (earlier run kept as {kept.name})"


def refit_evidence(ctx: Context, kind: str, plans: list[str]) -> dict[str, Any] | None:
    """The rehearsal days' pooled test-day log loss of `kind` with and without the refit, the refit's pooled
    gain and its day-clustered SE, and whether it wins by more than two SE; None unless every rehearsal run
    holds its predictions without the refit."""
    profile = ctx.cfg.load_profile()
    losses: dict[str, list[np.ndarray]] = {PRED_P: [], UNREFIT: []}
    days = []
    for plan in plans:
        run = ctx.wd.run(kind, plan)
        if not (run / "preds.parquet").is_file():
            return None
        preds = read_preds(run).filter(pl.col(PRED_SPLIT) == "test")
        if UNREFIT not in preds.columns:
            return None
        fs = read_run_meta(run).get("feature_set", ctx.cfg.feature_set)
        labels = pl.read_parquet(
            ctx.wd.feature_plan(fs, plan) / TEST_LABELS, columns=[profile.id_column, profile.install_label], glob=False
        )
        joined = preds.join(labels, left_on=PRED_ID, right_on=profile.id_column, how="inner")
        y = joined[profile.install_label].to_numpy().astype(np.float64)
        for column in losses:
            p = np.clip(joined[column].to_numpy().astype(np.float64), metrics.EPS, 1 - metrics.EPS)
            losses[column].append(-(y * np.log(p) + (1 - y) * np.log1p(-p)))
        days.append(np.full(len(y), plan_days(profile, plan)["test"][0]))
    with_refit, without = np.concatenate(losses[PRED_P]), np.concatenate(losses[UNREFIT])
    gain = pooled_gain(without, with_refit, np.concatenate(days))
    return {
        "with_refit": float(with_refit.mean()),
        "without_refit": float(without.mean()),
        "gain": gain.mean,
        "se": gain.se,
        "per_day": {str(d): g for d, g in gain.per_day.items()},
        "refit": bool(gain.mean > SIGNIFICANCE * gain.se),
    }


def run_pipeline(ctx: Context, *, data: Path | None = None, truth: Path | None = None) -> PipelineResult:
    """ingest (if needed) -> features -> train each configured model (if stale) -> submit.

    With `auto` calibration or weights, or a kind whose refit is "auto", every model is also trained on the
    rehearsal plans first; an "auto" refit happens only where the refit wins on the rehearsal days' pooled
    test-day rows by more than two day-clustered standard errors.
    """
    cfg = ctx.cfg
    where = "--data" if data is not None else f"data in {cfg.source}"
    data = Path(data).absolute() if data is not None else Path(cfg.data)
    ctx.progress(f"data: {data} ({where})")
    steps: dict[str, str] = {}
    if _raw_is_current(ctx, data):
        steps["ingest"] = "current"
    else:
        stages.ingest(ctx, data)
        steps["ingest"] = "done"
    if cfg.select:
        ctx = replace(ctx, cfg=_selected(ctx, steps))
    opts = ctx.cfg.submit
    refits = {kind: registry.get(kind).refit_setting(ctx) for kind in ctx.cfg.models}
    auto_post = "auto" in (opts.calibration, opts.weights)
    backtest = auto_post or "auto" in refits.values()
    depth = min(opts.rehearsal_days, len(ctx.cfg.load_profile().fit_days) - 1) if backtest else 0
    rehearsals = [backtest_plan(d) for d in range(1, depth + 1)]
    plans = ["validate"] + (["full"] if any(refits.values()) else []) + rehearsals
    for plan in plans:
        result = stages.build_features(ctx, plan=plan)
        steps[f"features/{plan}"] = "done" if result.rebuilt else "current"
    evidence = {}
    for kind, refit in refits.items():
        for plan in rehearsals:
            _train(ctx, kind, plan, refit == "auto", steps)
        kind_refit = bool(refit)
        if refit == "auto":
            e = evidence[kind] = refit_evidence(ctx, kind, rehearsals)
            kind_refit = e is not None and e["refit"]
            steps[f"refit {kind}"] = "yes" if kind_refit else "no"
            ctx.progress(
                f"refit {kind}: {'yes' if kind_refit else 'no'} ("
                + (
                    "no rehearsal predictions without the refit"
                    if e is None
                    else f"rehearsal test-day log loss {e['with_refit']:.5f} with, {e['without_refit']:.5f} without; "
                    f"gain {e['gain']:+.5f} ± {e['se']:.5f} SE over days {', '.join(e['per_day'])}, "
                    f"refit only above {SIGNIFICANCE:g} SE"
                )
                + ")"
            )
        _train(ctx, kind, "validate", kind_refit, steps)
    submission = stages.submit(
        ctx, list(ctx.cfg.models), opts=opts, overwrite=True, truth=truth, refit_evidence=evidence or None
    )
    steps["submit"] = "done"
    return PipelineResult(steps, submission, report=write_report(ctx.wd))


def _selected(ctx: Context, steps: dict[str, str]) -> PipelineConfig:
    """Run `gbmcvr select` unless its report is current; the pipeline then uses the `selected` set."""
    wd, cfg = ctx.wd, ctx.cfg
    report = wd.features / f"{SELECTED}-selection" / "report.json"
    current = report.is_file() and (wd.features / f"{SELECTED}.toml").is_file()
    if current:
        old = json.loads(report.read_text())
        fingerprint = json.loads((wd.raw / "manifest.json").read_text())["fingerprint"]
        current = old.get("raw_fingerprint") == fingerprint and old.get("options") == asdict(cfg.selection)
    if current:
        steps["select"] = "current"
    else:
        stages.select(ctx, name=SELECTED, opts=cfg.selection)
        steps["select"] = "done"
    return replace(cfg, feature_set=SELECTED, features=None)


def demo(ctx: Context, *, scale: float, seed: int) -> PipelineResult:
    """Generate ~100k rows, run the pipeline on them, analyze the data, and score the submission against the truth."""
    if scale <= 0:
        raise UserError(f"--scale must be positive, got {scale}")
    wd = ctx.wd
    data = wd.root / "demo-data"
    ctx.progress(f"demo: generating data at scale {scale} into {data}")
    write_synth(data, scale, seed)
    cfg = config_from_dict(
        {
            "data": str(data),
            "seed": seed,
            "models": ["e2e", "ts", "mtdm"],
            "mtdm": {"epochs": 4},
            "submit": {"name": "demo", "weights": "simplex", "calibration": "scaling"},
        },
        "demo",
    )
    result = run_pipeline(replace(ctx, cfg=cfg), data=data, truth=data)
    reports = wd.root / "reports" / "analyze"
    result.analyze = analyze_store(wd.raw, cfg.profile, reports, None, seed, ctx.progress)
    result.score = score_submission(result.submission.tsv, data, None)
    return result
