"""The pipeline config (`gbmcvr.toml`): TOML to a frozen dataclass; unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmcvr.data.profile import Profile, load_profile
from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys, read_toml

MODEL_KINDS = ("e2e", "ts", "mtdm")


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline: dataset profile, data folder, seed, feature set and per-stage sections."""

    profile: str = "sharechat2023"
    data: str = "data"
    seed: int = 42
    feature_set: str = "default"
    select: bool = False
    models: tuple[str, ...] = ("e2e", "ts")
    features: dict[str, Any] | None = None
    gbm: dict[str, Any] = field(default_factory=dict)
    mtdm: dict[str, Any] = field(default_factory=dict)
    tune: dict[str, Any] = field(default_factory=dict)
    submit: dict[str, Any] = field(default_factory=dict)
    source: str = "built-in defaults"

    def load_profile(self) -> Profile:
        return load_profile(self.profile)


_TOP = ("profile", "data", "seed", "feature_set", "select", "models", "features", "gbm", "mtdm", "tune", "submit")


def config_from_dict(raw: dict[str, Any], where: str) -> PipelineConfig:
    """Validate the top level and each stage's section (stages own their own keys)."""
    from gbmcvr.deep.params import mtdm_config
    from gbmcvr.fe.spec import feature_spec
    from gbmcvr.gbm.params import gbm_config
    from gbmcvr.post.options import submit_options

    check_keys(raw, _TOP, where)
    models = tuple(raw.get("models", ("e2e", "ts")))
    for m in models:
        if m not in MODEL_KINDS:
            raise UserError(f"{where}: unknown model '{m}' in models (choose from {', '.join(MODEL_KINDS)})")
    cfg = PipelineConfig(
        profile=str(raw.get("profile", "sharechat2023")),
        data=str(raw.get("data", "data")),
        seed=int(raw.get("seed", 42)),
        feature_set=str(raw.get("feature_set", "default")),
        select=bool(raw.get("select", False)),
        models=models,
        features=raw.get("features"),
        gbm=dict(raw.get("gbm", {})),
        mtdm=dict(raw.get("mtdm", {})),
        tune=dict(raw.get("tune", {})),
        submit=dict(raw.get("submit", {})),
        source=where,
    )
    profile = cfg.load_profile()
    if cfg.features is not None:
        feature_spec(cfg.features, profile, f"{where} [features]")
    gbm_config(cfg.gbm, f"{where} [gbm]")
    mtdm_config(cfg.mtdm, f"{where} [mtdm]")
    submit_options(cfg.submit, f"{where} [submit]")
    return cfg


def load_config(path: Path | None, workdir_config: Path) -> PipelineConfig:
    """The config from `path`, else the work directory's `gbmcvr.toml`, else built-in defaults."""
    if path is not None:
        return config_from_dict(read_toml(Path(path)), str(path))
    if workdir_config.is_file():
        return config_from_dict(read_toml(workdir_config), str(workdir_config))
    return config_from_dict({}, "built-in defaults")


DEFAULT_TOML = """# gbmcvr pipeline config. Every key is optional; unknown keys are errors.
profile = "sharechat2023"     # built-in profile name or a profile TOML file
data = "data"                 # raw dataset folder (train/*.csv, test/*.csv)
seed = 42                     # reaches numpy, LightGBM, Optuna and torch
feature_set = "default"       # name of the feature tables under features/<set>/
select = false                # true: `gbmcvr run` first chooses the feature set (`gbmcvr select`) as "selected"
models = ["e2e", "ts"]        # what `gbmcvr run` trains; add "mtdm" for the deep model

# [features]                  # feature families; `gbmcvr features --show-default` prints the default set

[gbm]
num_boost_round = 3000        # upper bound; early stopping on the validation day picks the count
early_stopping_rounds = 100
log_every = 100
# [gbm.e2e]                   # LightGBM parameters per model (override the built-in defaults)
# learning_rate = 0.05
# [gbm.ts_like]
# [gbm.ts_install]

# [mtdm]                      # deep model; `gbmcvr train mtdm --help`
# epochs = 10

[submit]
calibration = "scaling"       # none | scaling | scaling-fit | isotonic | platt
weights = "auto"              # auto (fitted on valid) or comma-separated fixed weights, e.g. "0.5,0.5"
space = "probability"         # probability | logit
"""
