"""The pipeline config (`gbmcvr.toml`): TOML to a frozen dataclass of typed sections, parsed and checked once
when the file is read; unknown keys are errors. Each model kind parses its own table (`models.registry`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gbmcvr.data.profile import Profile, load_profile
from gbmcvr.errors import UserError
from gbmcvr.fe.spec import config_feature_spec
from gbmcvr.models import registry
from gbmcvr.post.options import SubmitOptions, submit_options
from gbmcvr.space import TuneConfig, tune_config
from gbmcvr.tomlfile import check_keys, read_toml, typed_fields

BUILTIN_SOURCE = "built-in defaults"


def default_sections() -> dict[str, Any]:
    """Every kind's config table at its defaults."""
    return {name: kind.parse_section({}, f"[{name}]") for name, kind in registry.sections().items()}


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline: dataset profile, data folder, seed, feature set, and the typed sections of the stages."""

    profile: str = "sharechat2023"
    data: str = "data"
    seed: int = 42
    feature_set: str = "default"
    select: bool = False
    models: tuple[str, ...] = ("e2e", "ts")
    features: dict[str, Any] | None = None  # [features]: merged over the default set by `fe.spec`
    sections: dict[str, Any] = field(default_factory=default_sections)  # each kind's table, typed
    tune: TuneConfig = field(default_factory=TuneConfig)
    submit: SubmitOptions = field(default_factory=SubmitOptions)
    source: str = BUILTIN_SOURCE

    def section(self, name: str) -> Any:
        """A kind's typed config table (`gbm`, `mtdm`, ...)."""
        return self.sections[name]

    @cached_property
    def _profile(self) -> Profile:
        return load_profile(self.profile)

    def load_profile(self) -> Profile:
        """The dataset profile, read once per config."""
        return self._profile


_SCALARS = ("profile", "data", "seed", "feature_set", "select", "models")


def config_from_dict(raw: dict[str, Any], where: str) -> PipelineConfig:
    """Validate and type the whole config: the top level, [features], every kind's table, [tune], [submit]."""
    kind_sections = registry.sections()
    tables = ("features", *kind_sections, "tune", "submit")
    check_keys(raw, (*_SCALARS, *tables), where)
    for section in tables:
        if section in raw and not isinstance(raw[section], dict):
            raise UserError(f"{where}: [{section}] must be a table, got {raw[section]!r}")
    values = typed_fields(PipelineConfig, {k: v for k, v in raw.items() if k in _SCALARS}, where)
    if not 0 <= values.get("seed", 0) < 2**31:
        raise UserError(
            f"{where}: seed must be in [0, 2^31) (numpy, LightGBM, Optuna and torch take it), got {values['seed']}"
        )
    for m in values.get("models", ()):
        if m not in registry.names():
            raise UserError(f"{where}: unknown model '{m}' in models (choose from {', '.join(registry.names())})")
    cfg = PipelineConfig(
        **values,
        features=dict(raw["features"]) if "features" in raw else None,
        sections={
            name: kind.parse_section(dict(raw.get(name, {})), f"{where} [{name}]")
            for name, kind in kind_sections.items()
        },
        tune=tune_config(dict(raw.get("tune", {})), f"{where} [tune]"),
        submit=submit_options(dict(raw.get("submit", {})), f"{where} [submit]"),
        source=where,
    )
    config_feature_spec(cfg.features, cfg.load_profile(), f"{where} [features]")
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
# dataset_cache = true        # keep each stage's LightGBM Dataset binary in features/<set>/<plan>/lgb-cache/
# [gbm.e2e]                   # LightGBM parameters per model (override the built-in defaults)
# learning_rate = 0.05
# [gbm.ts_like]
# [gbm.ts_install]

# [mtdm]                      # deep model; `gbmcvr train mtdm --help`
# epochs = 10
# precision = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
# threads = 0                 # torch threads (0: torch's default)

# [cb]                        # CatBoost, with models = [..., "cb"]
# iterations = 3000           # upper bound; early stopping on the validation day picks the count
# threads = 0                 # 0: every core

# [tune]                      # `gbmcvr tune MODEL --show-space` prints a model's search space
# pruner = "median"           # median | hyperband | none
# threads_per_worker = 0      # 0: cores / workers

[submit]
calibration = "scaling"       # auto (chosen on the backtest) | none | scaling | scaling-fit | isotonic | platt
                              # | shift-em | trend | BASE+shift-em | BASE+trend
weights = "simplex"           # auto (chosen on the backtest) | equal | simplex | logit | stacker | "0.5,0.5"
space = "probability"         # probability | logit
"""
