"""What the torch kinds (mtdm, tfm) share: their config table kept beside its typed config, parameter files
merged over that table, and the per-epoch pruning and result of their tuning trials."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna

from gbmcvr.context import Context
from gbmcvr.models.base import NoRefitKind
from gbmcvr.runs import params_file


@dataclass(frozen=True)
class ConfigTable:
    """A kind's config table: the typed config, and the table itself (parameter files merge over it)."""

    config: Any
    raw: dict[str, Any] = field(default_factory=dict)


class TorchKind(NoRefitKind):
    """Part of a kind whose `parse(raw, where)` types its table and whose messages call it `label`."""

    name: str
    section: str
    label: str
    parse: Callable[[dict[str, Any], str], Any]

    def parse_section(self, raw: dict[str, Any], where: str) -> ConfigTable:
        return ConfigTable(self.parse(raw, where), dict(raw))

    def config(self, ctx: Context, params: str | None) -> Any:
        """The typed config, with a parameters file or the tuned export (`tuned`) merged over its table."""
        section = ctx.cfg.section(self.section)
        if params is None:
            return section.config
        override, where = params_file(ctx.wd.models, self.name, params, self.label)
        return self.parse({**section.raw, **override}, where)


def epoch_pruner(trial: optuna.Trial) -> Callable[[int, float], None]:
    """A per-epoch callback that reports the valid log loss to the trial and prunes it when Optuna says so."""

    def report(epoch: int, value: float) -> None:
        trial.report(value, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()

    return report


def trial_result(run: Any, suggested: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """A tuning trial's value (the valid day's install log loss) and attributes (parameters, best epoch)."""
    return float(run.metrics["valid"]["p"]["logloss"]), {"params": suggested, "best_iteration": run.result.best_epoch}
