"""Day splits of a plan: which days are fit, valid and test rows."""

from __future__ import annotations

from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError

PLANS = ("validate", "full")


def plan_days(profile: Profile, plan: str) -> dict[str, tuple[int, ...]]:
    """`validate`: fit on fit_days, validate on valid_day, predict test_day; `full`: fit on both, no valid."""
    if plan == "validate":
        return {"fit": profile.fit_days, "valid": (profile.valid_day,), "test": (profile.test_day,)}
    if plan == "full":
        return {"fit": (*profile.fit_days, profile.valid_day), "test": (profile.test_day,)}
    raise UserError(f"unknown plan '{plan}' (choose from {', '.join(PLANS)})")
