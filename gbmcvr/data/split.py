"""Day splits of a plan: which days are fit, valid and test rows."""

from __future__ import annotations

from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError

TEST_LABELS = "test_labels.parquet"

PLANS = ("validate", "full", "backtest")


def plan_days(profile: Profile, plan: str) -> dict[str, tuple[int, ...]]:
    """`validate`: fit on fit_days, validate on valid_day, predict test_day; `full`: fit on both, no valid;
    `backtest`: the rehearsal one day earlier (fit on fit_days but the last, validate on the last fit day,
    predict valid_day with its labels kept aside)."""
    if plan == "validate":
        return {"fit": profile.fit_days, "valid": (profile.valid_day,), "test": (profile.test_day,)}
    if plan == "full":
        return {"fit": (*profile.fit_days, profile.valid_day), "test": (profile.test_day,)}
    if plan == "backtest":
        if len(profile.fit_days) < 2:
            raise UserError("plan 'backtest' needs at least two fit days in the profile")
        return {"fit": profile.fit_days[:-1], "valid": (profile.fit_days[-1],), "test": (profile.valid_day,)}
    raise UserError(f"unknown plan '{plan}' (choose from {', '.join(PLANS)})")
