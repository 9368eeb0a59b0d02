"""Generated multi-action conversion data: impressions -> clicks -> N post-click actions, incompletely reported.

The model: advertising tasks (campaigns) each target one action o in 1..N and report a random subset of the
other actions; a reported non-target action is reported from a start day on and only for a share of its
true conversions (the incompleteness), so a task that reports rarely gives mostly false zeros. Targets are
skewed like the KAML paper's Table 1: the rarest action is the target of under 1 % of the samples. True
post-click probabilities share a user and a task component across actions (knowledge can transfer) plus
an action-specific part. Reported labels are 0 wherever an action is not reported; `is_converted` is the
target action's label (always reported), so the standard single-conversion pipeline runs on it unchanged.
Scale 1.0 = 1 M impressions over 14 days (fit 1-12, valid 13, test 14); the test day's true probabilities
and unreported draws go to truth/test_truth.parquet.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr.atomic import atomic_dir
from gbmcvr.data.synth import SYNTH_MARKER, intercept, sigmoid
from gbmcvr.errors import UserError

ROWS = 1_000_000
DAYS = tuple(range(1, 15))
FIT_DAYS, VALID_DAY, TEST_DAY = tuple(range(1, 13)), 13, 14
CLICK_RATE = 0.25
# post-click conversion rate of each action; share of samples targeting it (the skew); chance that a
# task not targeting it reports it
ACTION_RATE = (0.20, 0.10, 0.05, 0.03)
TARGET_SHARE = (0.62, 0.25, 0.125, 0.005)
REPORT_PROB = (0.7, 0.5, 0.3, 0.2)
USER_CATEGORICAL = {"u_1": 12, "u_2": 60, "u_3": 400}
NUMERICAL = ("n_activity", "n_ad_quality", "n_noise")


@dataclass(frozen=True)
class MultiSynthResult:
    """What `write_synth_multi` produced: row counts and the share of samples targeting each action."""

    train_rows: int
    test_rows: int
    target_share: list[float]


def action_names(n: int) -> list[str]:
    """Conversion label columns act_1 .. act_n."""
    return [f"act_{j}" for j in range(1, n + 1)]


def _profile_shares(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-action conversion rates, target shares and report probabilities for N actions."""
    if n == len(ACTION_RATE):
        return np.array(ACTION_RATE), np.array(TARGET_SHARE), np.array(REPORT_PROB)
    rate = 0.2 * 0.6 ** np.arange(n)
    share = np.r_[0.6 ** np.arange(n - 1), 0.0]
    share = np.r_[share[:-1] / share[:-1].sum() * 0.995, 0.005] if n > 1 else np.array([1.0])
    return rate, share, np.linspace(0.7, 0.2, n)


def generate(scale: float = 1.0, seed: int = 0, actions: int = 4) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Train (days 1-13, reported labels), test (day 14, unlabelled) and truth frames."""
    if actions < 1:
        raise UserError(f"--actions must be at least 1, got {actions}")
    rng = np.random.default_rng(seed)
    n = max(int(round(ROWS * scale)), 2_000)
    rate, share, report_prob = _profile_shares(actions)
    n_tasks = max(60, n // 500)
    n_users = max(500, n // 25)

    # advertising tasks: impression weight, target action chosen so impression shares follow TARGET_SHARE
    task_w = rng.lognormal(0, 1.0, n_tasks)
    task_w /= task_w.sum()
    order = rng.permutation(n_tasks)
    cum = np.cumsum(task_w[order]) - task_w[order] / 2
    target = np.empty(n_tasks, dtype=np.int64)
    target[order] = np.searchsorted(np.cumsum(share)[:-1], cum, side="right")
    reports = rng.random((n_tasks, actions)) < report_prob
    reports[np.arange(n_tasks), target] = True
    completeness = np.where(reports, rng.uniform(0.05, 1.0, (n_tasks, actions)), 0.0)
    start = np.where(reports, rng.integers(DAYS[0], DAYS[-1] + 1, (n_tasks, actions)), DAYS[-1] + 1)
    completeness[np.arange(n_tasks), target] = 1.0
    start[np.arange(n_tasks), target] = DAYS[0]
    task_shared, task_own = rng.normal(0, 0.6, n_tasks), rng.normal(0, 0.4, (n_tasks, actions))
    task_click = rng.normal(0, 0.4, n_tasks)
    n_ads = n_tasks * 3
    ad_task = rng.integers(0, n_tasks, n_ads)
    ad_cat = rng.integers(0, 30, n_ads)

    # users: categorical attributes, a latent conversion propensity shared by all actions
    user_w = rng.lognormal(0, 1.0, n_users)
    user_w /= user_w.sum()
    user_cat = {c: rng.integers(0, k, n_users) for c, k in USER_CATEGORICAL.items()}
    u2_eff, u3_eff = rng.normal(0, 0.7, USER_CATEGORICAL["u_2"]), rng.normal(0, 0.5, USER_CATEGORICAL["u_3"])
    user_latent = rng.normal(0, 0.3, n_users) + u2_eff[user_cat["u_2"]] + u3_eff[user_cat["u_3"]]
    # the action-specific part is visible through u_1: what one action learns transfers only partly
    user_own = rng.normal(0, 0.6, (USER_CATEGORICAL["u_1"], actions))[user_cat["u_1"]]
    u1_click = rng.normal(0, 0.4, USER_CATEGORICAL["u_1"])

    # impressions: ads drawn by their task's weight
    ad_w = task_w[ad_task] * rng.lognormal(0, 0.5, n_ads)
    ad = rng.choice(n_ads, size=n, p=ad_w / ad_w.sum())
    user = rng.choice(n_users, size=n, p=user_w)
    day = rng.choice(np.asarray(DAYS), size=n)
    task = ad_task[ad]
    activity = rng.lognormal(0, 0.7, n_users)
    n_activity = activity[user] * rng.lognormal(0, 0.2, n)
    n_ad_quality = task_shared[task] + rng.normal(0, 0.3, n)

    click_logit = u1_click[user_cat["u_1"][user]] + task_click[task] + 0.3 * np.log(n_activity)
    p_click = sigmoid(click_logit + intercept(click_logit, CLICK_RATE))
    clicked = rng.random(n) < p_click
    cvr_logit = (user_latent[user] + task_shared[task])[:, None] + user_own[user] + task_own[task]
    p_act = np.column_stack([sigmoid(cvr_logit[:, j] + intercept(cvr_logit[:, j], rate[j])) for j in range(actions)])
    converted = clicked[:, None] & (rng.random((n, actions)) < p_act)
    reported = (
        converted & (day[:, None] >= start[task]) & (rng.random((n, actions)) < completeness[task]) & reports[task]
    )

    names = action_names(actions)
    frame = pl.DataFrame(
        {
            "row_id": rng.permutation(n).astype(np.int64) + 1,
            "day": day.astype(np.int64),
            **{c: user_cat[c][user].astype(np.int64) for c in USER_CATEGORICAL},
            "ad": ad.astype(np.int64),
            "ad_cat": ad_cat[ad].astype(np.int64),
            "ad_task": task.astype(np.int64),
            "target_action": target[task].astype(np.int64) + 1,
            "n_activity": n_activity,
            "n_ad_quality": n_ad_quality,
            "n_noise": rng.normal(0, 1, n),
            "is_clicked": clicked.astype(np.int64),
            "is_converted": reported[np.arange(n), target[task]].astype(np.int64),
            **{c: reported[:, j].astype(np.int64) for j, c in enumerate(names)},
        }
    )
    test_rows = day == TEST_DAY
    truth = pl.DataFrame(
        {
            "row_id": frame["row_id"].to_numpy()[test_rows],
            "target_action": frame["target_action"].to_numpy()[test_rows],
            "is_clicked": clicked[test_rows].astype(np.int64),
            "p_click": p_click[test_rows],
            **{f"p_{c}": p_act[test_rows, j] for j, c in enumerate(names)},
            **{f"true_{c}": converted[test_rows, j].astype(np.int64) for j, c in enumerate(names)},
        }
    )
    labels = ["is_clicked", "is_converted", *names]
    train = frame.filter(pl.Series(~test_rows)).sort("day", "row_id")
    test = frame.filter(pl.Series(test_rows)).drop(labels).sort("row_id")
    return train, test, truth


def profile_toml(actions: int) -> str:
    """The dataset profile of the generated layout (for `gbmcvr ingest --profile OUT/profile.toml`)."""
    lines = {
        "name": "multi_action",
        "row_id": "row_id",
        "day": "day",
        "categorical": [*USER_CATEGORICAL, "ad", "ad_cat", "ad_task", "target_action"],
        "numerical": list(NUMERICAL),
        "click_label": "is_clicked",
        "install_label": "is_converted",
        "conversions": action_names(actions),
        "target_action": "target_action",
        "ad_task": "ad_task",
    }
    body = "".join(f"{k} = {json.dumps(v)}\n" for k, v in lines.items())
    split = f"\n[split]\nfit_days = {list(FIT_DAYS)}\nvalid_day = {VALID_DAY}\ntest_day = {TEST_DAY}\n"
    return body + split


def write_synth_multi(out: Path, scale: float = 1.0, seed: int = 0, actions: int = 4) -> MultiSynthResult:
    """Write train/ (one TSV per day), test/, truth/test_truth.parquet and profile.toml under `out`."""
    train, test, truth = generate(scale, seed, actions)
    with atomic_dir(Path(out)) as tmp:
        for sub in ("train", "test", "truth"):
            (tmp / sub).mkdir()
        (tmp / SYNTH_MARKER).write_text(f"written by gbmcvr synth --kind multi-action (scale {scale}, seed {seed})\n")
        for (d,), part in train.group_by(["day"], maintain_order=True):
            part.write_csv(tmp / "train" / f"day_{d:02d}.csv", separator="\t")
        test.write_csv(tmp / "test" / "000000000000.csv", separator="\t")
        truth.write_parquet(tmp / "truth" / "test_truth.parquet")
        (tmp / "profile.toml").write_text(profile_toml(actions))
    counts = train["target_action"].value_counts().sort("target_action")["count"].to_numpy()
    full = np.zeros(actions)
    full[train["target_action"].unique().sort().to_numpy() - 1] = counts
    return MultiSynthResult(train.height, test.height, (full / full.sum()).round(4).tolist())
