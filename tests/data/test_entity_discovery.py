"""Entity discovery on small frames with planted users and ads, independent distractors, and one synth world."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from gbmcvr.data.entity_discovery import discover_entities
from gbmcvr.data.profile import Profile
from gbmcvr.data.synth import SHARECHAT, check_user_columns, generate
from gbmcvr.errors import UserError

DAYS = 6


def _world(rows: int = 4000, seed: int = 0, users: str = "categorical") -> tuple[pl.DataFrame, Profile]:
    """Impressions of 300 users on 40 ads over six days, with independent distractor columns.

    `users`: "categorical" plants the user in u1..u4 (12 values each: far more joint values than rows),
    "numerical" in z1..z4 (counts that grow slowly per user), "none" leaves no user identity anywhere.
    """
    rng = np.random.default_rng(seed)
    n_users, n_ads = 300, 40
    weight = rng.lognormal(0, 1, n_users)
    user = rng.choice(n_users, size=rows, p=weight / weight.sum())
    ad = rng.integers(0, n_ads, size=rows)
    day = rng.integers(1, DAYS + 1, size=rows)
    cols: dict[str, np.ndarray] = {"day": day}
    ad_codes = rng.choice(10**6, size=n_ads, replace=False)
    cols["ad"] = ad_codes[ad]
    cols["advertiser"] = (ad_codes // 7 % 10)[ad]
    cols["ad_price"] = np.round(rng.lognormal(0, 1, n_ads), 3)[ad]
    for c in ("u1", "u2", "u3", "u4"):
        cols[c] = rng.integers(0, 12, n_users)[user] if users == "categorical" else rng.integers(0, 12, rows)
    for c in ("z1", "z2", "z3", "z4"):
        if users == "numerical":
            level, rate = rng.integers(0, 15, n_users), rng.uniform(0, 0.3, n_users)
            cols[c] = (level[user] + np.floor(rate[user] * day)) * 0.25
        else:
            cols[c] = rng.poisson(8, rows) * 0.25
    for c in ("n1", "n2", "n3"):
        cols[c] = rng.integers(0, 12, rows)
    cols["x1"] = rng.poisson(5, rows).astype(np.float64)
    cols["e"] = rng.integers(0, 2, rows)
    profile = Profile(
        name="tiny",
        row_id="id",
        day="day",
        categorical=("ad", "advertiser", "u1", "u2", "u3", "u4", "n1", "n2", "n3"),
        binary=("e",),
        numerical=("ad_price", "z1", "z2", "z3", "z4", "x1"),
        click_label="click",
        install_label="install",
        fit_days=(1, 2, 3, 4),
        valid_day=5,
        test_day=6,
        entities={"user": ("n1", "n2", "n3"), "item": ("ad_price",)},
    )
    return pl.DataFrame(cols), profile


def _evidence(report, source: str, name: str):
    return next(e for e in report.evidence if e.source == source and e.name == name)


def test_finds_a_planted_categorical_user_and_the_ad():
    frame, profile = _world(users="categorical")
    report = discover_entities(frame, profile)
    assert report.groups["user"] == ("u1", "u2", "u3", "u4")
    assert report.groups["item"] == ("ad", "advertiser", "ad_price")
    user = _evidence(report, "discovered", "user")
    assert user.is_key and user.repeat_share > user.independent_repeat_share + 0.3
    assert user.multi_day_share > 0.5 and user.score > 0.3
    assert _evidence(report, "discovered", "item").determinant == "ad"


def test_finds_a_planted_numerical_user_that_drifts():
    frame, profile = _world(users="numerical")
    report = discover_entities(frame, profile)
    assert report.groups["user"] == ("z1", "z2", "z3", "z4")
    assert _evidence(report, "discovered", "user").is_key


def test_no_user_in_independent_columns():
    frame, profile = _world(users="none")
    report = discover_entities(frame, profile)
    assert not any(e.is_key for e in report.evidence if e.method == "repetition")
    # nothing found, and the declared group identifies no one: it is dropped (no key family keys on noise)
    assert not _evidence(report, "declared", "user").is_key
    assert "user" not in report.groups and "user" in report.overruled
    assert "ad" in report.groups["item"]  # the ad, found by its functional dependency


def test_the_declared_check_flags_a_group_that_identifies_no_one():
    frame, profile = _world(users="categorical")
    report = discover_entities(frame, profile)
    declared = _evidence(report, "declared", "user")
    assert not declared.is_key
    assert declared.reason.startswith("identifies no one")
    assert _evidence(report, "declared", "item").is_key
    assert set(report.overruled) == {"user", "item"}
    table = report.frame()
    assert table.filter(pl.col("used"))["name"].sort().to_list() == ["item", "user"]


def test_deterministic():
    frame, profile = _world(users="numerical", seed=3)
    assert discover_entities(frame, profile, seed=1) == discover_entities(frame, profile, seed=1)


def test_a_synth_world_with_the_user_planted_elsewhere():
    planted = ("f_24", "f_25", "f_71", "f_72")
    train, test, _ = generate(0.003, 2, planted)
    frame = pl.concat([train.drop(*SHARECHAT.labels), test])
    report = discover_entities(frame, SHARECHAT)
    assert report.groups["user"] == planted
    assert not _evidence(report, "declared", "user").is_key
    assert "f_6" in report.groups["item"] and "f_4" in report.groups["item"]


def test_synth_refuses_unknown_user_columns():
    with pytest.raises(UserError, match="f_1"):
        check_user_columns(("f_1",))
