"""`gbmcvr run` and `gbmcvr demo`: the whole pipeline from one config, skipping steps that are current."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from gbmcvr import stages
from gbmcvr.config import PipelineConfig
from gbmcvr.data.ingest import ingest, source_files, source_listing
from gbmcvr.errors import UserError
from gbmcvr.post.options import submit_options
from gbmcvr.workdir import Workdir


def _raw_is_current(wd: Workdir, cfg: PipelineConfig, data: Path) -> bool:
    manifest = wd.raw / "manifest.json"
    if not manifest.is_file():
        return False
    old = json.loads(manifest.read_text())
    train, test = source_files(data, cfg.load_profile())
    return old.get("profile") == cfg.load_profile().name and old.get("sources") == source_listing(train + test)


def _run_is_current(wd: Workdir, run_id: str, key: str, plan: str = "validate") -> bool:
    path = wd.run(run_id, plan) / "run.json"
    return path.is_file() and json.loads(path.read_text()).get("input_key") == key


def _train(wd: Workdir, cfg: PipelineConfig, kind: str, plan: str, refit: bool, steps: dict, progress) -> None:
    """Train one model on one plan unless its run is current."""
    step = f"train {kind}" + (" (backtest)" if plan == "backtest" else "")
    key = stages.model_input_key(wd, cfg, kind, plan, refit)
    if _run_is_current(wd, kind, key, plan):
        steps[step] = "current"
        progress(f"{step}: current, skipped")
    elif kind == "mtdm":
        stages.train_mtdm_stage(wd, cfg, kind, "auto", True, None, progress, plan=plan)
        steps[step] = "done"
    else:
        stages.train_gbm_stage(wd, cfg, kind, kind, None, refit, True, None, progress, plan)
        steps[step] = "done"


def refit_evidence(wd: Workdir, kind: str) -> dict | None:
    """The backtest's test-day log loss of `kind` with and without the refit, if its backtest run has both."""
    path = wd.run(kind, "backtest") / "metrics.json"
    scores = json.loads(path.read_text()).get("backtest", {}) if path.is_file() else {}
    if "test_without_refit" not in scores:
        return None
    return {"with_refit": scores["test"]["logloss"], "without_refit": scores["test_without_refit"]["logloss"]}


def run_pipeline(
    wd: Workdir,
    cfg: PipelineConfig,
    data: Path | None = None,
    truth: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """ingest (if needed) -> features -> train each configured model (if stale) -> submit.

    With `auto` calibration or weights, or `refit = "auto"`, every model is also trained on the backtest
    plan first; `refit = "auto"` refits a LightGBM model only where the refit won on the backtest's test day.
    """
    data = Path(data or cfg.data)
    if not data.is_absolute() and not data.exists():
        data = wd.root / data
    profile = cfg.load_profile()
    opts = submit_options(cfg.submit, f"{cfg.source} [submit]")
    steps: dict[str, str] = {}
    if _raw_is_current(wd, cfg, data):
        steps["ingest"] = "current"
    else:
        ingest(data, profile, wd.raw, progress)
        steps["ingest"] = "done"
    if cfg.select:
        cfg = _selected(wd, cfg, steps, progress)
    refit = cfg.gbm.get("refit", False)
    refit = "auto" if refit == "auto" else bool(refit)
    backtest = refit == "auto" or "auto" in (opts.calibration, opts.weights)
    plans = ["validate"] + (["full"] if refit else []) + (["backtest"] if backtest else [])
    for plan in plans:
        result = stages.build_features(wd, cfg, plan, progress=progress)
        steps[f"features/{plan}"] = "done" if result.rebuilt else "current"
    evidence = {}
    for kind in cfg.models:
        kind_refit = bool(refit) and kind != "mtdm"
        if backtest:
            _train(wd, cfg, kind, "backtest", refit == "auto" and kind != "mtdm", steps, progress)
        if refit == "auto" and kind != "mtdm":
            evidence[kind] = refit_evidence(wd, kind)
            kind_refit = evidence[kind] is not None and evidence[kind]["with_refit"] < evidence[kind]["without_refit"]
            steps[f"refit {kind}"] = "yes" if kind_refit else "no"
            progress(f"refit {kind}: {'yes' if kind_refit else 'no'} (backtest test-day log loss {evidence[kind]})")
        _train(wd, cfg, kind, "validate", kind_refit, steps, progress)
    runs = list(cfg.models)
    tsv, result = stages.submit_stage(wd, cfg, runs, opts, True, truth, progress, evidence or None)
    steps["submit"] = "done"
    return {"steps": steps, "submission": tsv, "result": result}


def _selected(
    wd: Workdir, cfg: PipelineConfig, steps: dict[str, str], progress: Callable[[str], None]
) -> PipelineConfig:
    """Run `gbmcvr select` unless its report is current; the pipeline then uses the `selected` set."""
    from dataclasses import replace

    from gbmcvr.fe.select import SelectOptions

    name = "selected"
    report = wd.features / f"{name}-selection" / "report.json"
    current = report.is_file() and (wd.features / f"{name}.toml").is_file()
    if current:
        old = json.loads(report.read_text())
        fingerprint = json.loads((wd.raw / "manifest.json").read_text())["fingerprint"]
        current = old.get("raw_fingerprint") == fingerprint and old.get("options", {}).get("seed") == cfg.seed
    if current:
        steps["select"] = "current"
    else:
        stages.select_stage(wd, cfg, name, SelectOptions(seed=cfg.seed), progress)
        steps["select"] = "done"
    return replace(cfg, feature_set=name, features=None)


def demo(wd: Workdir, scale: float, seed: int, progress: Callable[[str], None]) -> dict:
    """Generate ~100k rows, run the pipeline on them, analyze the data, and score the submission against the truth."""
    from gbmcvr.data.analyze_report import analyze_store
    from gbmcvr.data.synth import write_synth
    from gbmcvr.post.scoring import score_submission

    if scale <= 0:
        raise UserError(f"--scale must be positive, got {scale}")
    data = wd.root / "demo-data"
    progress(f"demo: generating data at scale {scale} into {data}")
    write_synth(data, scale, seed)
    cfg = PipelineConfig(
        data=str(data),
        seed=seed,
        models=("e2e", "ts", "mtdm"),
        source="demo",
        mtdm={"epochs": 4},
        submit={"name": "demo", "weights": "simplex", "calibration": "scaling"},
    )
    result = run_pipeline(wd, cfg, data, truth=data, progress=progress)
    result["analyze"] = analyze_store(wd.raw, cfg.profile, wd.root / "reports" / "analyze", None, seed, progress)
    result["score"] = score_submission(result["submission"], data, None)
    return result
