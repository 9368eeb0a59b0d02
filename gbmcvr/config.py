"""The pipeline config (`gbmcvr.toml`): TOML to a frozen dataclass of typed sections, parsed and checked once
when the file is read; unknown keys are errors. Each model kind parses its own table (`models.registry`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from gbmcvr.data.profile import Profile, load_profile
from gbmcvr.errors import UserError
from gbmcvr.fe.select_options import SelectOptions, select_options
from gbmcvr.fe.spec import config_feature_spec
from gbmcvr.gbm.params import KIND_STAGES
from gbmcvr.models import registry
from gbmcvr.post.options import SubmitOptions, submit_options
from gbmcvr.space import TuneConfig, tune_config
from gbmcvr.tomlfile import check_keys, read_toml, toml_text, typed_fields
from gbmcvr.tracking import TrackConfig, track_config
from gbmcvr.workdir import check_name

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
    select: bool = False  # `select = true`, or a `[select]` table (enabled unless it says `enabled = false`)
    models: tuple[str, ...] = ("e2e", "ts")
    features: dict[str, Any] | None = None  # [features]: merged over the default set by `fe.spec`
    sections: dict[str, Any] = field(default_factory=default_sections)  # each kind's table, typed
    tune: TuneConfig = field(default_factory=TuneConfig)
    submit: SubmitOptions = field(default_factory=SubmitOptions)
    selection: SelectOptions = field(default_factory=SelectOptions)  # the `[select]` table's options
    track: TrackConfig = field(default_factory=TrackConfig)
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
    tables = ("features", *kind_sections, "tune", "submit", "track")
    check_keys(raw, (*_SCALARS, *tables), where)
    for section in tables:
        if section in raw and not isinstance(raw[section], dict):
            raise UserError(f"{where}: [{section}] must be a table, got {raw[section]!r}")
    select_table = raw.get("select") if isinstance(raw.get("select"), dict) else None
    scalars = {k: v for k, v in raw.items() if k in _SCALARS and not (k == "select" and select_table is not None)}
    values = typed_fields(PipelineConfig, scalars, where)
    if not 0 <= values.get("seed", 0) < 2**31:
        raise UserError(
            f"{where}: seed must be in [0, 2^31) (numpy, LightGBM, Optuna and torch take it), got {values['seed']}"
        )
    check_name(values.get("feature_set", "default"), f"{where}: feature_set")
    for m in values.get("models", ()):
        if m not in registry.names():
            raise UserError(f"{where}: unknown model '{m}' in models (choose from {', '.join(registry.names())})")
    if select_table is not None:
        enabled = select_table.get("enabled", True)
        if not isinstance(enabled, bool):
            raise UserError(f"{where} [select]: 'enabled' must be true or false, got {enabled!r}")
        values["select"] = enabled
    selection = select_options(
        {k: v for k, v in (select_table or {}).items() if k != "enabled"}, f"{where} [select]", values.get("seed", 42)
    )
    cfg = PipelineConfig(
        **values,
        selection=selection,
        features=dict(raw["features"]) if "features" in raw else None,
        sections={
            name: kind.parse_section(dict(raw.get(name, {})), f"{where} [{name}]")
            for name, kind in kind_sections.items()
        },
        tune=tune_config(dict(raw.get("tune", {})), f"{where} [tune]"),
        submit=submit_options(dict(raw.get("submit", {})), f"{where} [submit]"),
        track=track_config(dict(raw.get("track", {})), f"{where} [track]"),
        source=where,
    )
    config_feature_spec(cfg.features, cfg.load_profile(), f"{where} [features]")
    return cfg


def load_config(path: Path | None, workdir_config: Path) -> PipelineConfig:
    """The config from `path`, else the work directory's `gbmcvr.toml`, else built-in defaults.

    Relative paths in it (`data`, a profile `.toml`) are resolved against the folder of the config file that
    names them (the work directory for the built-in defaults), never against the current folder."""
    if path is None and workdir_config.is_file():
        path = workdir_config
    raw = read_toml(Path(path)) if path is not None else {}
    base = Path(path).parent if path is not None else workdir_config.parent
    data = Path(raw.get("data", PipelineConfig.data)).expanduser() if isinstance(raw.get("data", ""), str) else None
    if data is not None:
        raw["data"] = str(data if data.is_absolute() else (base / data).resolve())
    profile = raw.get("profile")
    if isinstance(profile, str) and profile.endswith(".toml") and not Path(profile).expanduser().is_absolute():
        raw["profile"] = str((base / profile).resolve())
    return config_from_dict(raw, str(path) if path is not None else BUILTIN_SOURCE)


def _plain(obj: Any) -> Any:
    """A config value as TOML-ready plain data (dataclasses as tables, a section's typed `config` unwrapped)."""
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
        if "config" in names and dataclasses.is_dataclass(obj.config):
            return _plain(obj.config)
        return {n: _plain(getattr(obj, n)) for n in names}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj


def effective_toml(cfg: PipelineConfig) -> str:
    """The effective config as TOML: top-level keys, then every kind's table at its values (LightGBM stages
    with their full parameters), [tune] and [submit]. `[features]` is the default set unless the config names
    one (`gbmcvr features --show-default` prints it)."""
    top: dict[str, Any] = {k: _plain(getattr(cfg, k)) for k in _SCALARS if k != "select"}
    selection = _plain(cfg.selection)
    selection.pop("seed")
    top["select"] = {"enabled": cfg.select, **selection}
    for name, section in cfg.sections.items():
        table = _plain(section)
        if hasattr(section, "stage_params") and hasattr(section, "params"):
            stages = table.pop("stage_params")
            for kind_stages in KIND_STAGES.values():
                for stage in kind_stages:
                    full = section.params(stage, cfg.seed)
                    full.pop("seed", None)
                    table[stage] = {**full, **stages.get(stage, {})}
        top[name] = table
    tune = _plain(cfg.tune)
    tune.update(tune.pop("spaces"))
    top["tune"] = tune
    top["submit"] = _plain(cfg.submit)
    top["track"] = _plain(cfg.track)
    if cfg.features is not None:
        top["features"] = dict(cfg.features)
    header = (
        f"# effective config: {cfg.source}"
        + ("" if cfg.source == BUILTIN_SOURCE else " over the built-in defaults")
        + "\n"
    )
    return header + toml_text(top) + "\n"


DEFAULT_TOML = """# gbmcvr pipeline config. Every key is optional; unknown keys are errors.
profile = "sharechat2023"     # built-in profile name or a profile TOML file
data = "data"                 # raw dataset folder (train/*.csv, test/*.csv), relative to this file's folder
seed = 42                     # reaches numpy, LightGBM, Optuna and torch
feature_set = "default"       # name of the feature tables under features/<set>/
select = false                # true: `gbmcvr run` first chooses the feature set (`gbmcvr select`) as "selected";
                              # or a [select] table (enabled = true, rehearsal_days = 3, weighting = "none", ...)
models = ["e2e", "ts"]        # what `gbmcvr run` trains; add "mtdm" for the deep model

# [features]                  # families you name replace the default's keys; `family = false` removes one;
                              # `gbmcvr features --show-default` prints the default set
# entities = "discovered"     # entity groups of key families: found in the data | "profile" (as declared)

[gbm]
num_boost_round = 3000        # upper bound; early stopping on the validation day picks the count
early_stopping_rounds = 100
log_every = 100
# refit = false               # true | "auto" (refit on the full plan where the backtest says it pays)
# dask = "tcp://scheduler:8786"   # train on a Dask cluster (pip install "gbmcvr[dask]")
# dataset_cache = true        # keep each stage's LightGBM Dataset binary in features/<set>/<plan>/lgb-cache/
# max_dataset_gb = 6.0        # a larger fit Dataset (rows x inputs bytes) keeps every positive and a weighted
                              # share of the negatives: bounds training memory at 10x the challenge
# [gbm.e2e]                   # LightGBM parameters per model (override the built-in defaults)
# learning_rate = 0.05
# [gbm.ts_like]
# [gbm.ts_install]

# [mtdm]                      # deep model; `gbmcvr train mtdm --help`
# epochs = 8
# precision = "auto"          # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
# threads = 0                 # torch threads (0: torch's default)

# [cb]                        # CatBoost, with models = [..., "cb"]
# iterations = 3000           # upper bound; early stopping on the validation day picks the count
# threads = 0                 # 0: every core

# [xgb]                       # XGBoost, with models = [..., "xgb"]; XGBoost's own parameter names
# num_boost_round = 3000
# device = "cpu"              # cpu | cuda | auto

# [tfm]                       # feature-interaction Transformer, with models = [..., "tfm"]
# epochs = 6
# ssl_weight = 0.0            # weight of the contrastive (InfoNCE) loss beside the supervised ones
# pretrain_epochs = 0         # self-supervised epochs over every split's features (test day included) first

# [tune]                      # `gbmcvr tune MODEL --show-space` prints a model's search space
# pruner = "median"           # median | hyperband | none
# threads_per_worker = 0      # 0: cores / workers

[submit]
calibration = "scaling"       # auto (chosen on the backtest) | none | scaling | scaling-fit | isotonic | platt
                              # | shift-em | trend | BASE+shift-em | BASE+trend
weights = "simplex"           # auto (chosen on the backtest) | equal | simplex | logit | stacker | "0.5,0.5"
space = "probability"         # probability | logit

# [track]                     # MLflow (pip install "gbmcvr[mlflow]"): every training and tuning trial logged
# mlflow = "sqlite:///mlflow.db"   # relative to the work directory; or http://host:5000
"""
