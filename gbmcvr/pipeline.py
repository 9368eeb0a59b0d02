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
        submit={"name": "demo", "weights": "auto", "calibration": "scaling"},
    )
    result = run_pipeline(wd, cfg, data, truth=data, progress=progress)
    result["analyze"] = analyze_store(wd.raw, cfg.profile, wd.root / "reports" / "analyze", None, seed, progress)
    result["score"] = score_submission(result["submission"], data, None)
    return result
