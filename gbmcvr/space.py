"""Optuna search spaces as data (each kind declares its defaults) and the `[tune]` config section."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

import optuna

from gbmcvr.errors import UserError
from gbmcvr.models import registry
from gbmcvr.tomlfile import check_keys, typed_fields


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
        low, high, log = spec["low"], spec["high"], spec.get("log", False)
        if not isinstance(log, bool):
            raise UserError(f"{at}: log must be true or false (no quotes), got {log!r}")
        for bound in ("low", "high"):
            if isinstance(spec[bound], bool) or not isinstance(spec[bound], int | float):
                raise UserError(f"{at}: {bound} must be a number, got {spec[bound]!r}")
        if low > high:
            raise UserError(f"{at}: low {low} is greater than high {high}")
        if log and low <= 0:
            raise UserError(f"{at}: a log range must be positive, got low {low}")
        dims.append(Dimension(name, kind, low, high, log))
    return dims


PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class TuneConfig:
    """The `[tune]` section: the pruner, threads per worker, and `[tune.<target>]` space overrides."""

    pruner: str = "median"
    threads_per_worker: int = 0  # 0: cores / workers
    spaces: dict[str, dict[str, Any]] = field(default_factory=dict)


def tune_config(raw: dict[str, Any], where: str) -> TuneConfig:
    """Parse the `[tune]` section; unknown keys, a bad pruner or a bad space table are errors."""
    targets = registry.tune_targets()
    check_keys(raw, ["pruner", "threads_per_worker", *targets], where)
    scalars = typed_fields(TuneConfig, {k: v for k, v in raw.items() if k not in targets}, where)
    cfg = TuneConfig(**scalars, spaces={t: raw[t] for t in targets if t in raw})
    if cfg.threads_per_worker < 0:
        raise UserError(f"{where}: 'threads_per_worker' must be an integer >= 0 (0: cores / workers)")
    if cfg.pruner not in PRUNERS:
        raise UserError(f"{where}: pruner must be one of {', '.join(PRUNERS)}, got {cfg.pruner!r}")
    for target, table in cfg.spaces.items():
        if not isinstance(table, dict):
            raise UserError(f"{where}: [tune.{target}] must be a table of dimensions, got {table!r}")
        model_space(target, table, where.removesuffix(" [tune]"))
    return cfg


def model_space(target: str, overrides: dict[str, Any] | None, where: str) -> list[Dimension]:
    """The built-in space of a tuning target with `[tune.<target>]` entries replacing or adding dimensions."""
    kind = registry.target_kind(target)
    dims = parse_space({**kind.default_space(target), **(overrides or {})}, f"{where} [tune.{target}]")
    if overrides and hasattr(kind, "check_space"):  # names and bounds the kind's library accepts
        kind.check_space(dims, f"{where} [tune.{target}]")
    return dims


def toml_value(value: Any) -> str:
    """One TOML value: booleans as true/false, strings quoted, numbers as Python writes them, lists of those."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise UserError(f"cannot write {value!r} as a TOML value")


def toml_key(name: str) -> str:
    """A bare TOML key where TOML allows one, else a quoted one."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def space_toml(model: str, dims: list[Dimension]) -> str:
    """The space as a `[tune.<model>]` table that reads back to the same dimensions."""
    lines = [f"[tune.{toml_key(model)}]"]
    for d in dims:
        body = ", ".join(f"{k} = {toml_value(v)}" for k, v in d.to_dict().items())
        lines.append(f"{toml_key(d.name)} = {{ {body} }}")
    return "\n".join(lines) + "\n"
