"""Options of `gbmcvr select` (the `[select]` config table and the command's flags), checked once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gbmcvr.errors import UserError
from gbmcvr.tomlfile import typed_fields

WEIGHTINGS = ("none", "density")


@dataclass(frozen=True)
class SelectOptions:
    """The proxy model, the rehearsal days and the search budget."""

    rounds: int = 150
    proxy_rows: int = 400_000  # fit rows sampled from the whole fit window (all of them when fewer)
    significance: float = 2.0  # a change is kept only when it wins by this many day-clustered standard errors
    max_fits: int = 30  # candidates scored (each is fitted once per rehearsal day)
    rehearsal_days: int = (
        3  # the selection day and the last fit days before it, each scored by a proxy fitted before it
    )
    weighting: str = "none"  # none | density (rehearsal rows weighted by their resemblance to the holdout day's rows)
    threads: int = 0  # the proxy's LightGBM threads; 0: OpenMP's default (every core), set the free ones when shared
    seed: int = 42


def check_select_options(opts: SelectOptions, where: str) -> SelectOptions:
    """The options, or a UserError naming the bad one."""
    for name in ("rounds", "proxy_rows", "max_fits", "rehearsal_days"):
        if getattr(opts, name) < 1:
            raise UserError(f"{where}: {name} must be at least 1, got {getattr(opts, name)}")
    if opts.threads < 0:
        raise UserError(f"{where}: threads must be 0 (every core) or a positive count, got {opts.threads}")
    if not opts.significance > 0:
        raise UserError(f"{where}: significance must be positive, got {opts.significance}")
    if opts.weighting not in WEIGHTINGS:
        raise UserError(f"{where}: weighting must be one of {', '.join(WEIGHTINGS)}, not '{opts.weighting}'")
    return opts


def select_options(raw: dict[str, Any], where: str, seed: int = 42) -> SelectOptions:
    """`[select]` options (every key but `enabled`, which the pipeline config reads) over the defaults."""
    if "seed" in raw:
        raise UserError(f"{where}: 'seed' is not a [select] key (the top-level seed reaches the selection)")
    values = typed_fields(SelectOptions, raw, where)
    return check_select_options(SelectOptions(**values, seed=seed), where)
