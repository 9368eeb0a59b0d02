"""Day splits of a plan: which days are fit, valid and test rows."""

from __future__ import annotations

import re

from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError

TEST_LABELS = "test_labels.parquet"

BACKTEST = "backtest"
PLANS = ("validate", "full", BACKTEST, "backtest-N")
_DEEPER = re.compile(r"backtest-([2-9]|[1-9][0-9]+)")


def backtest_plan(depth: int) -> str:
    """The rehearsal `depth` days before the submission: `backtest` (one day earlier), `backtest-2`, ..."""
    return BACKTEST if depth == 1 else f"{BACKTEST}-{depth}"


def backtest_depth(plan: str) -> int | None:
    """How many days before the submission a rehearsal plan predicts (None: not a rehearsal plan)."""
    if plan == BACKTEST:
        return 1
    match = _DEEPER.fullmatch(plan)
    return int(match[1]) if match else None


def is_backtest(plan: str) -> bool:
    return backtest_depth(plan) is not None


def plan_days(profile: Profile, plan: str) -> dict[str, tuple[int, ...]]:
    """`validate`: fit on fit_days, validate on valid_day, predict test_day; `full`: fit on both, no valid;
    `backtest`: the rehearsal one day earlier (fit on fit_days but the last, validate on the last fit day,
    predict valid_day with its labels kept aside)."""
    if plan == "validate":
        return {"fit": profile.fit_days, "valid": (profile.valid_day,), "test": (profile.test_day,)}
    if plan == "full":
        return {"fit": (*profile.fit_days, profile.valid_day), "test": (profile.test_day,)}
    depth = backtest_depth(plan)
    if depth is not None:  # `backtest-j`: fit before day valid-j, validate on it, predict the day after it
        if len(profile.fit_days) < depth + 1:
            raise UserError(f"plan '{plan}' needs at least {depth + 1} fit days in the profile")
        days = (*profile.fit_days, profile.valid_day)
        return {"fit": days[: -depth - 1], "valid": (days[-depth - 1],), "test": (days[-depth],)}
    raise UserError(f"unknown plan '{plan}' (choose from {', '.join(PLANS)})")
