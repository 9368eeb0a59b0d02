"""The pipeline config (`gbmcvr.toml`): TOML to a frozen dataclass; unknown keys are errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gbmcvr.data.profile import Profile, load_profile
from gbmcvr.deep.params import mtdm_config
from gbmcvr.errors import UserError
from gbmcvr.fe.spec import config_feature_spec
from gbmcvr.gbm.params import gbm_config
from gbmcvr.post.options import submit_options
from gbmcvr.space import check_tune
from gbmcvr.tomlfile import check_keys, read_toml, typed_fields

MODEL_KINDS = ("e2e", "ts", "mtdm")
BUILTIN_SOURCE = "built-in defaults"


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
    source: str = BUILTIN_SOURCE

    def load_profile(self) -> Profile:
        return load_profile(self.profile)


_SECTIONS = ("features", "gbm", "mtdm", "tune", "submit")
_TOP = ("profile", "data", "seed", "feature_set", "select", "models", *_SECTIONS)


def config_from_dict(raw: dict[str, Any], where: str) -> PipelineConfig:
    """Validate the top level and each stage's section (stages own their own keys)."""
    check_keys(raw, _TOP, where)
    for section in ("features", "gbm", "mtdm", "tune", "submit"):
        if section in raw and not isinstance(raw[section], dict):
            raise UserError(f"{where}: [{section}] must be a table, got {raw[section]!r}")
    values = typed_fields(PipelineConfig, {k: v for k, v in raw.items() if k not in _SECTIONS}, where)
    for m in values.get("models", ()):
        if m not in MODEL_KINDS:
            raise UserError(f"{where}: unknown model '{m}' in models (choose from {', '.join(MODEL_KINDS)})")
    cfg = PipelineConfig(**values, **{k: dict(raw[k]) for k in _SECTIONS if k in raw}, source=where)
    config_feature_spec(cfg.features, cfg.load_profile(), f"{where} [features]")
    gbm_config(cfg.gbm, f"{where} [gbm]")
    mtdm_config(cfg.mtdm, f"{where} [mtdm]")
    check_tune(cfg.tune, f"{where} [tune]")
    submit_options(cfg.submit, f"{where} [submit]")
    return cfg


def load_config(path: Path | None, workdir_config: Path) -> PipelineConfig:
    """The config from `path`, else the work directory's `gbmcvr.toml`, else built-in defaults."""
    if path is not None:
        return config_from_dict(read_toml(Path(path)), str(path))
    if workdir_config.is_file():
        return config_from_dict(read_toml(workdir_config), str(workdir_config))
    return config_from_dict({}, BUILTIN_SOURCE)


DEFAULT_TOML = """# gbmcvr pipeline config. Every key is optional; unknown keys are errors.
profile = "sharechat2023"     # built-in profile name or a profile TOML file
data = "data"                 # raw dataset folder (train/*.csv, test/*.csv)
seed = 42                     # reaches numpy, LightGBM, Optuna and torch
feature_set = "default"       # name of the feature tables under features/<set>/
select = false                # true: `gbmcvr run` first chooses the feature set (`gbmcvr select`) as "selected"
models = ["e2e", "ts"]        # what `gbmcvr run` trains; add "mtdm" for the deep model

# [features]                  # families you name replace the default's keys; `family = false` removes one;
                              # `gbmcvr features --show-default` prints the default set

[gbm]
num_boost_round = 3000        # upper bound; early stopping on the validation day picks the count
early_stopping_rounds = 100
log_every = 100
# refit = false               # true | "auto" (refit on the full plan where the backtest says it pays)
# dask = "tcp://scheduler:8786"   # train on a Dask cluster (pip install "gbmcvr[dask]")
# [gbm.e2e]                   # LightGBM parameters per model (override the built-in defaults)
# learning_rate = 0.05
# [gbm.ts_like]
# [gbm.ts_install]

# [mtdm]                      # deep model; `gbmcvr train mtdm --help`
# epochs = 10

# [tune]                      # `gbmcvr tune MODEL --show-space` prints a model's search space
# pruner = "median"           # median | hyperband | none
# threads_per_worker = 0      # 0: cores / workers

[submit]
calibration = "scaling"       # auto (chosen on the backtest) | none | scaling | scaling-fit | isotonic | platt
                              # | shift-em | trend | BASE+shift-em | BASE+trend
weights = "simplex"           # auto (chosen on the backtest) | equal | simplex | logit | stacker | "0.5,0.5"
space = "probability"         # probability | logit
"""
