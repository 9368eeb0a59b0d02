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

DEMO_SCALE = 0.03


def _raw_is_current(wd: Workdir, cfg: PipelineConfig, data: Path) -> bool:
    manifest = wd.raw / "manifest.json"
    if not manifest.is_file():
        return False
    old = json.loads(manifest.read_text())
    train, test = source_files(data, cfg.load_profile())
    return old.get("profile") == cfg.load_profile().name and old.get("sources") == source_listing(train + test)


def _run_is_current(wd: Workdir, run_id: str, key: str) -> bool:
    path = wd.run(run_id) / "run.json"
    return path.is_file() and json.loads(path.read_text()).get("input_key") == key


def run_pipeline(
    wd: Workdir,
    cfg: PipelineConfig,
    data: Path | None = None,
    truth: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> dict:
    """ingest (if needed) -> features -> train each configured model (if stale) -> submit."""
    data = Path(data or cfg.data)
    if not data.is_absolute() and not data.exists():
        data = wd.root / data
    profile = cfg.load_profile()
    steps: dict[str, str] = {}
    if _raw_is_current(wd, cfg, data):
        steps["ingest"] = "current"
    else:
        ingest(data, profile, wd.raw, progress)
        steps["ingest"] = "done"
    if cfg.select:
        cfg = _selected(wd, cfg, steps, progress)
    refit = bool(cfg.gbm.get("refit", False))
    plans = ["validate", "full"] if refit else ["validate"]
    for plan in plans:
        result = stages.build_features(wd, cfg, plan, progress=progress)
        steps[f"features/{plan}"] = "done" if result.rebuilt else "current"
    runs = []
    for kind in cfg.models:
        key = stages.model_input_key(wd, cfg, kind)
        if _run_is_current(wd, kind, key):
            steps[f"train {kind}"] = "current"
            progress(f"train {kind}: current, skipped")
        elif kind == "mtdm":
            stages.train_mtdm_stage(wd, cfg, kind, "auto", True, None, progress)
            steps[f"train {kind}"] = "done"
        else:
            stages.train_gbm_stage(wd, cfg, kind, kind, None, refit, True, None, progress)
            steps[f"train {kind}"] = "done"
        runs.append(kind)
    opts = submit_options(cfg.submit, f"{cfg.source} [submit]")
    tsv, result = stages.submit_stage(wd, cfg, runs, opts, True, truth, progress)
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
    """Generate ~100k rows, run the pipeline on them, and score the submission against the truth."""
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
        submit={"name": "demo", "weights": "auto", "calibration": "scaling"},
    )
    result = run_pipeline(wd, cfg, data, truth=data, progress=progress)
    result["score"] = score_submission(result["submission"], data, None)
    return result
