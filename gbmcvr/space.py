"""Optuna search spaces as data: built-in defaults per model, overridable from `[tune.<model>]` in TOML."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import check_keys

_LGBM_SPACE: dict[str, dict[str, Any]] = {
    "num_leaves": {"type": "int", "low": 15, "high": 255, "log": True},
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.2, "log": True},
    "min_data_in_leaf": {"type": "int", "low": 20, "high": 2000, "log": True},
    "feature_fraction": {"type": "float", "low": 0.3, "high": 1.0},
    "bagging_fraction": {"type": "float", "low": 0.5, "high": 1.0},
    "bagging_freq": {"type": "int", "low": 0, "high": 5},
    "lambda_l1": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    "lambda_l2": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    "min_gain_to_split": {"type": "float", "low": 0.0, "high": 1.0},
    # binning (max_bin, min_data_in_bin): each value a trial draws builds its own LightGBM Dataset once
    "max_bin": {"type": "categorical", "choices": [63, 127, 255]},
    "cat_smooth": {"type": "float", "low": 1.0, "high": 100.0, "log": True},
    "cat_l2": {"type": "float", "low": 1.0, "high": 100.0, "log": True},
}

DEFAULT_SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "e2e": _LGBM_SPACE,
    "ts-like": _LGBM_SPACE,
    "ts-install": _LGBM_SPACE,
    "mtdm": {
        "learning_rate": {"type": "float", "low": 3e-4, "high": 1e-2, "log": True},
        "weight_decay": {"type": "float", "low": 1e-7, "high": 1e-3, "log": True},
        "embedding_dim": {"type": "int", "low": 4, "high": 32, "log": True},
        "experts": {"type": "int", "low": 2, "high": 8},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "batch_size": {"type": "categorical", "choices": [1024, 2048, 4096, 8192]},
    },
}
MODELS = tuple(DEFAULT_SPACES)


@dataclass(frozen=True)
class Dimension:
    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        if self.type == "float":
            return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)
        return trial.suggest_categorical(self.name, list(self.choices))

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": self.type, "choices": list(self.choices)}
        return {"type": self.type, "low": self.low, "high": self.high, "log": self.log}


def check_model(model: str) -> str:
    if model not in MODELS:
        raise UserError(f"unknown model '{model}' to tune (choose from {', '.join(MODELS)})")
    return model


def parse_space(raw: dict[str, dict[str, Any]], where: str) -> list[Dimension]:
    """Validate a space: known types, low <= high, no log range touching 0, non-empty choices."""
    dims = []
    for name, spec in raw.items():
        at = f"{where}.{name}"
        if not isinstance(spec, dict):
            raise UserError(f'{at}: expected a table like {{type = "float", low = 0.1, high = 1.0}}')
        check_keys(spec, ["type", "low", "high", "log", "choices"], at)
        kind = spec.get("type", "float")
        if kind == "categorical":
            if not spec.get("choices"):
                raise UserError(f"{at}: categorical needs a non-empty 'choices' list")
            dims.append(Dimension(name, kind, choices=tuple(spec["choices"])))
            continue
        if kind not in ("int", "float"):
            raise UserError(f"{at}: type must be int, float or categorical, not '{kind}'")
        if "low" not in spec or "high" not in spec:
            raise UserError(f"{at}: needs low and high")
        low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
        if low > high:
            raise UserError(f"{at}: low {low} is greater than high {high}")
        if log and low <= 0:
            raise UserError(f"{at}: a log range must be positive, got low {low}")
        dims.append(Dimension(name, kind, low, high, log))
    return dims


PRUNERS = ("median", "hyperband", "none")


def check_tune(raw: dict[str, Any], where: str) -> None:
    """The `[tune]` section: `pruner` and one `[tune.<model>]` space table per model; anything else is an error."""
    check_keys(raw, ["pruner", "threads_per_worker", *MODELS], where)
    threads = raw.get("threads_per_worker", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise UserError(f"{where}: 'threads_per_worker' must be an integer >= 0 (0: cores / workers), got {threads!r}")
    if "pruner" in raw and raw["pruner"] not in PRUNERS:
        raise UserError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {raw['pruner']!r}")
    for model in MODELS:
        if model in raw:
            if not isinstance(raw[model], dict):
                raise UserError(f"{where}: [tune.{model}] must be a table of dimensions, got {raw[model]!r}")
            model_space(model, raw[model], where.removesuffix(" [tune]"))


def model_space(model: str, overrides: dict[str, Any] | None, where: str) -> list[Dimension]:
    """The built-in space of a model with `[tune.<model>]` entries replacing or adding dimensions."""
    raw = {**DEFAULT_SPACES[check_model(model)], **(overrides or {})}
    return parse_space(raw, f"{where} [tune.{model}]")


def space_toml(model: str, dims: list[Dimension]) -> str:
    lines = [f"[tune.{model}]"]
    for d in dims:
        spec = d.to_dict()
        body = ", ".join(
            f"{k} = {str(v).lower() if isinstance(v, bool) else v!r}".replace("'", '"') for k, v in spec.items()
        )
        lines.append(f"{d.name} = {{ {body} }}")
    return "\n".join(lines) + "\n"
