"""The registry of model kinds: one line per kind. Kinds load on first use, so a command that needs no
model (synth, ingest, features) never imports torch or CatBoost."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gbmcvr.errors import UserError

if TYPE_CHECKING:
    from gbmcvr.models.base import ModelKind

KINDS: dict[str, Any] = {
    "e2e": "gbmcvr.models.lgbm:E2E",
    "ts": "gbmcvr.models.lgbm:TWO_STEP",
    "mtdm": "gbmcvr.models.mtdm:MTDM",
    "cb": "gbmcvr.models.cb:CB",
    "xgb": "gbmcvr.models.xgb:XGB",
    "tfm": "gbmcvr.models.tfm:TFM",
}


def names() -> tuple[str, ...]:
    """The registered kinds, in registry order."""
    return tuple(KINDS)


def get(name: str) -> ModelKind:
    """The kind called `name` (its module imported on first use); an unknown name is a UserError."""
    entry = KINDS.get(name)
    if entry is None:
        raise UserError(f"unknown model '{name}' (choose from {', '.join(KINDS)})")
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        KINDS[name] = entry
    return entry


def kinds() -> list[ModelKind]:
    return [get(name) for name in KINDS]


def tune_targets() -> dict[str, ModelKind]:
    """Every tuning target (`gbmcvr tune TARGET`) and the kind it belongs to."""
    return {target: kind for kind in kinds() for target in kind.tune_targets}


def target_kind(target: str) -> ModelKind:
    targets = tune_targets()
    if target not in targets:
        raise UserError(f"unknown model '{target}' to tune (choose from {', '.join(targets)})")
    return targets[target]


def sections() -> dict[str, ModelKind]:
    """Config tables the kinds read ([gbm], [mtdm], ...), each with the first kind that parses it."""
    out: dict[str, ModelKind] = {}
    for kind in kinds():
        out.setdefault(kind.section, kind)
    return out
