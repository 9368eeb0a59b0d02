"""Generated ShareChat-layout data from an explicit generative model, with a truth file for the test day.

The model: users and ads carry latent click ("like") and install propensities built from their observed
attributes plus unobserved noise; a row is a (user, ad, day) impression. Stage 1 draws `like` from
sigmoid(like logit); stage 2 draws `install | like` from sigmoid(install logit); a like without an install
is a click, and an install is clicked with probability `CLICK_GIVEN_INSTALL` (installs without clicks
exist, as in the real data). Ads live for a span of days (day drift), a share of the test day's ads is new,
and some train rows are logged twice, a few with conflicting labels. Rates and quirks follow DATA.md.

The structure the top teams exploited (DATA.md) is carried too: f_43-f_54 are per-user counts that jointly
identify the user (whose unobserved propensity only the user's own history reveals) and f_64-f_70 are
per-ad statistics that identify the ad; an ad on its first days behaves differently (more curiosity likes,
fewer installs); the install rate drifts from day to day; and users have a latent affinity to ad categories.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr.atomic import atomic_dir
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.errors import UserError
from gbmcvr.metrics import log_loss
from gbmcvr.progress import counted

TRAIN_ROWS = 3_485_852
TEST_ROWS = 160_973
TRAIN_FILES = 30
TRAIN_DAYS = tuple(range(45, 67))
TEST_DAY = 67
INSTALL_RATE = 0.1740
CLICK_RATE = 0.2198
CLICK_GIVEN_INSTALL = 0.55
LIKE_RATE = CLICK_RATE + INSTALL_RATE * (1 - CLICK_GIVEN_INSTALL)
DUPLICATES = 20_000
CONFLICTING = 1_100
NEW_AD_SHARE = 0.30
MISSING_F30_F31 = (0.478, 0.273)
MISSING_AD_BLOCK = (0.052, 0.061)
F23_TRAIN_ONLY_SHARE = 0.068
# label shift on the test day: this share of its installed rows is logged, so p(x | install) is kept and the
# install rate drops (~0.170 -> ~0.155), as the organisers' base rate sat below the training rate (DATA.md)
TEST_DAY_INSTALL_KEEP = 0.9

MISSING_BLOCK = (43, 51, 58, 59, 64, 65, 66, 67, 68, 69, 70)
USER_NUMERICAL = tuple(range(43, 55))
AD_NUMERICAL = (58, 59, 64, 65, 66, 67, 68, 69, 70)
NEW_AD_LIKE, NEW_AD_INSTALL = 0.4, -0.5
DAY_DRIFT = 0.08
INTERACTION_NUMERICAL = (
    42,
    55,
    56,
    57,
    60,
    61,
    62,
    63,
    *range(71, 80),
)
USER_CATEGORICAL = {
    5: 40,
    8: 300,
    10: 12,
    11: 60,
    12: 25,
    13: 220,
    14: 8,
    15: 5800,
    16: 150,
    17: 30,
    18: 900,
    32: 6,
}
AD_CATEGORICAL = {2: 120, 3: 40, 19: 15, 20: 6, 21: 30, 22: 10}
ADS, ADVERTISERS = 5200, 630
FEATURE_COLUMNS = [f"f_{i}" for i in range(80)]
TRAIN_COLUMNS = [*FEATURE_COLUMNS, "is_clicked", "is_installed"]
HEAD_ROWS = 200_000  # the first train rows whose logits set the label shifts
# above this many train rows the streamed writer spills its per-file buckets to disk instead of keeping them
SPILL_ROWS = 1_000_000


@dataclass(frozen=True)
class World:
    """The knobs of the generating process that held-out data may set differently (defaults: the base world).

    `new_ad_share`: share of the test day's distinct ads launched that day; `new_ad_install`: install-logit
    effect of an ad's first two days (negative: new ads convert worse); `test_shift`: install-logit shift on
    the test day only (a level shift no labelled day shows); `user_signal`: scale of each user's unobserved
    propensities (how much only the user's own history can tell).
    """

    new_ad_share: float = NEW_AD_SHARE
    new_ad_install: float = NEW_AD_INSTALL
    test_shift: float = 0.0
    user_signal: float = 1.0


# named worlds for `gbmcvr synth --world` and the quality benchmark; each departs from `base` on a few knobs
WORLDS = {
    "base": World(),
    "new-ads-better": World(new_ad_share=0.5, new_ad_install=0.5, test_shift=0.25),
    "shift-down": World(test_shift=-0.35, user_signal=1.6),
    "weak-users": World(new_ad_share=0.1, user_signal=0.3, test_shift=0.15),
}


@dataclass(frozen=True)
class SynthResult:
    """What `write_synth` produced: row counts and the best achievable test log loss."""

    train_rows: int
    test_rows: int
    truth_logloss: float


def _card(full: int, scale: float) -> int:
    """Cardinality at a given scale: shrinks with sqrt(scale) so small data still repeats categories."""
    return int(max(min(full, 6), round(full * min(1.0, scale) ** 0.5)))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function."""
    return 1.0 / (1.0 + np.exp(-x))


def intercept(logit: np.ndarray, target: float) -> float:
    """Shift that makes mean(sigmoid(logit + shift)) equal `target` (bisection)."""
    lo, hi = -15.0, 15.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if sigmoid(logit + mid).mean() < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def _hashed_codes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Distinct integer codes that look hashed (the real categoricals are not 0..n-1)."""
    return rng.choice(2**31 - 1, size=n, replace=False).astype(np.int64)


def _zipf_weights(rng: np.random.Generator, n: int, sigma: float = 1.0) -> np.ndarray:
    w = rng.lognormal(0.0, sigma, size=n)
    return w / w.sum()


class _World:
    """Latent users and ads; draws impressions for a day as vectorised numpy arrays."""

    def __init__(self, rng: np.random.Generator, scale: float, spec: World) -> None:
        self.rng = rng
        self.scale = scale
        self.spec = spec
        n_users = max(2_000, int(400_000 * scale))
        self.user_weight = _zipf_weights(rng, n_users, 1.2)
        self.user_cat = {
            c: rng.choice(_card(k, scale), size=n_users, p=_zipf_weights(rng, _card(k, scale)))
            for c, k in USER_CATEGORICAL.items()
        }
        self.user_cat_codes = {c: _hashed_codes(rng, _card(k, scale)) for c, k in USER_CATEGORICAL.items()}
        # attribute effects: a few user attributes carry the click / install propensity
        eff = {
            c: rng.normal(0, s, _card(USER_CATEGORICAL[c], scale))
            for c, s in ((15, 0.5), (13, 0.4), (11, 0.3), (18, 0.4), (8, 0.3))
        }
        eff_i = {
            c: rng.normal(0, s, _card(USER_CATEGORICAL[c], scale))
            for c, s in ((15, 0.5), (13, 0.3), (5, 0.3), (18, 0.3), (16, 0.3))
        }
        own = spec.user_signal
        self.user_click = sum(e[self.user_cat[c]] for c, e in eff.items()) + own * rng.normal(0, 0.5, n_users)
        self.user_install = sum(e[self.user_cat[c]] for c, e in eff_i.items()) + own * rng.normal(0, 0.5, n_users)
        self.user_activity = rng.normal(0, 1, n_users)
        # per-user counts (f_43-f_54): together they identify the user, as in the real data
        self.user_numerical = {}
        for j, c in enumerate(USER_NUMERICAL):
            signal = 0.6 * self.user_activity + 0.35 * (self.user_click if j % 2 == 0 else self.user_install)
            mean = np.exp(np.clip(signal + 0.5 * rng.normal(size=n_users), -6, 4)) * (4 + 3 * (j % 4))
            self.user_numerical[c] = rng.poisson(mean).astype(np.float64)
        self.user_flags = (
            rng.random((n_users, 9)) < sigmoid(self.user_activity[:, None] * 0.5 + rng.normal(0, 1, 9))
        ).astype(np.int8)

        n_ads, n_adv = _card(ADS, scale), _card(ADVERTISERS, scale)
        self.ad_adv = rng.integers(0, n_adv, size=n_ads)
        self.adv_codes = _hashed_codes(rng, n_adv)
        self.ad_cat = {
            c: rng.choice(_card(k, scale), size=n_adv, p=_zipf_weights(rng, _card(k, scale)))[self.ad_adv]
            for c, k in AD_CATEGORICAL.items()
        }
        self.ad_cat_codes = {c: _hashed_codes(rng, _card(k, scale)) for c, k in AD_CATEGORICAL.items()}
        adv_click, adv_install = rng.normal(0, 0.4, n_adv), rng.normal(0, 0.6, n_adv)
        self.ad_click = adv_click[self.ad_adv] + rng.normal(0, 0.4, n_ads)
        self.ad_install = adv_install[self.ad_adv] + rng.normal(0, 0.5, n_ads)
        self.ad_weight = rng.lognormal(0, 1.0, n_ads)
        self.ad_start = rng.integers(TRAIN_DAYS[0] - 10, TEST_DAY, size=n_ads)
        self.ad_end = self.ad_start + rng.geometric(1 / 10, size=n_ads)
        # ads launched on the test day so that ~NEW_AD_SHARE of its distinct ads are unseen in train
        active_test = int(((self.ad_start <= TEST_DAY) & (self.ad_end >= TEST_DAY)).sum())
        share = spec.new_ad_share
        n_new = max(1, int(active_test * share / (1 - share)))
        self.ad_start = np.concatenate([self.ad_start, np.full(n_new, TEST_DAY)])
        self.ad_end = np.concatenate([self.ad_end, np.full(n_new, TEST_DAY + 5)])
        self.ad_adv = np.concatenate([self.ad_adv, rng.integers(0, n_adv, size=n_new)])
        for c in AD_CATEGORICAL:
            self.ad_cat[c] = np.concatenate([self.ad_cat[c], self.ad_cat[c][rng.integers(0, n_ads, n_new)]])
        self.ad_click = np.concatenate([self.ad_click, adv_click[self.ad_adv[n_ads:]] + rng.normal(0, 0.4, n_new)])
        self.ad_install = np.concatenate(
            [self.ad_install, adv_install[self.ad_adv[n_ads:]] + rng.normal(0, 0.5, n_new)]
        )
        self.ad_weight = np.concatenate([self.ad_weight, rng.lognormal(0, 1.0, n_new)])
        self.ad_codes = _hashed_codes(rng, n_ads + n_new)
        # per-ad statistics (f_58, f_59, f_64-f_70): noisy views of ad quality fixed at launch; f_64 follows
        # the launch day, so the population drifts as ads come and go
        self.ad_numerical = {}
        for j, c in enumerate(AD_NUMERICAL):
            quality = self.ad_install if j % 2 == 0 else self.ad_click
            v = quality + rng.normal(0, 0.8, len(quality))
            if c == 64:
                v = 0.08 * (self.ad_start - TRAIN_DAYS[0]) + 0.3 * rng.normal(size=len(quality))
            self.ad_numerical[c] = np.round(np.exp(v / 2) * 10, 4)
        # a latent user x ad-category affinity (2-d factors), beside the segment x category one below
        self.user_factor = own * rng.normal(0, 1, (n_users, 2))
        self.cat_factor = rng.normal(0, 0.35, (_card(AD_CATEGORICAL[2], scale), 2))
        self.day_drift = np.cumsum(rng.normal(0, DAY_DRIFT, TEST_DAY - TRAIN_DAYS[0] + 1))
        # a user-segment x ad-category affinity: what categorical crosses can find
        self.affinity = rng.normal(0, 0.35, (_card(USER_CATEGORICAL[13], scale), _card(AD_CATEGORICAL[2], scale)))
        self.dow_effect = rng.normal(0, 0.1, 7)
        self.hour_effect = rng.normal(0, 0.15, 24)
        self.f9_codes = _hashed_codes(rng, 2)
        self.f7_code = _hashed_codes(rng, 1)[0]
        self.f23_codes = _hashed_codes(rng, 1)
        self.small_codes = {c: _hashed_codes(rng, 2) for c in (26, 27, 28, 29)}
        self.misc_codes = {c: _hashed_codes(rng, k) for c, k in ((24, 24), (25, 50))}

    def day(self, day: int, n: int, is_test: bool) -> dict[str, np.ndarray]:
        """Columns (f_1..f_79) and latent probabilities for `n` impressions on `day`."""
        rng = self.rng
        active = np.flatnonzero((self.ad_start <= day) & (self.ad_end >= day))
        w = self.ad_weight[active]
        ad = active[rng.choice(len(active), size=n, p=w / w.sum())]
        user = rng.choice(len(self.user_weight), size=n, p=self.user_weight)
        cols: dict[str, np.ndarray] = {"f_1": np.full(n, day, dtype=np.int64)}
        cols["f_2"] = self.ad_cat_codes[2][self.ad_cat[2][ad]]
        cols["f_3"] = self.ad_cat_codes[3][self.ad_cat[3][ad]]
        cols["f_4"] = self.adv_codes[self.ad_adv[ad]]
        cols["f_6"] = self.ad_codes[ad]
        for c in (19, 20, 21, 22):
            cols[f"f_{c}"] = self.ad_cat_codes[c][self.ad_cat[c][ad]]
        for c in USER_CATEGORICAL:
            cols[f"f_{c}"] = self.user_cat_codes[c][self.user_cat[c][user]]
        cols["f_7"] = np.full(n, self.f7_code, dtype=np.int64)
        cols["f_9"] = np.full(n, self.f9_codes[day % 2], dtype=np.int64)
        f23 = np.zeros(n, dtype=np.int64)
        if not is_test:
            f23[rng.random(n) < F23_TRAIN_ONLY_SHARE] = self.f23_codes[0]
        cols["f_23"] = f23
        hour = rng.integers(0, 24, size=n)
        cols["f_24"] = self.misc_codes[24][hour]
        cols["f_25"] = self.misc_codes[25][rng.integers(0, 50, size=n)]
        for c in (26, 27, 28, 29):
            cols[f"f_{c}"] = self.small_codes[c][(rng.random(n) < 0.3).astype(np.int64)]
        missing_f30 = MISSING_F30_F31[1 if is_test else 0]
        for c in (30, 31):
            v = (rng.random(n) < sigmoid(self.user_activity[user])).astype(np.float64)
            v[rng.random(n) < missing_f30] = np.nan
            cols[f"f_{c}"] = v
        flags = self.user_flags[user]
        for j, c in enumerate(range(33, 42)):
            cols[f"f_{c}"] = flags[:, j].astype(np.int64)

        u_click, u_inst, act = self.user_click[user], self.user_install[user], self.user_activity[user]
        a_click, a_inst = self.ad_click[ad], self.ad_install[ad]
        age = day - self.ad_start[ad]
        # interaction counts: noisy views of the user's propensities and activity (base-value multiples)
        base = SHARECHAT.base_values
        for j, c in enumerate(INTERACTION_NUMERICAL):
            signal = 0.6 * act + 0.35 * (u_click if j % 3 == 0 else u_inst if j % 3 == 1 else a_click) + 0.2 * np.sin(j)
            k = rng.poisson(np.exp(np.clip(signal + 0.3 * rng.normal(size=n), -6, 4)) * (1 + j % 4))
            col = f"f_{c}"
            cols[col] = np.round(k * base.get(col, 1.0), 8)
        for c in USER_NUMERICAL:
            cols[f"f_{c}"] = np.round(self.user_numerical[c][user] * base.get(f"f_{c}", 1.0), 8)
        for c in AD_NUMERICAL:
            cols[f"f_{c}"] = self.ad_numerical[c][ad]
        missing_ad = rng.random(n) < MISSING_AD_BLOCK[1 if is_test else 0]
        for c in MISSING_BLOCK:
            cols[f"f_{c}"][missing_ad] = np.nan

        seg, cat2 = self.user_cat[13][user], self.ad_cat[2][ad]
        affinity = self.affinity[seg, cat2] + (self.user_factor[user] * self.cat_factor[cat2]).sum(axis=1)
        fresh = (age <= 1).astype(np.float64)
        like_logit = (
            u_click
            + a_click
            + affinity
            + NEW_AD_LIKE * fresh
            + self.dow_effect[day % 7]
            + self.hour_effect[hour]
            + 0.25 * act
            + rng.normal(0, 0.3, n)
        )
        install_logit = (
            u_inst
            + a_inst
            + 0.7 * affinity
            + self.spec.new_ad_install * fresh
            + self.day_drift[day - TRAIN_DAYS[0]]
            + (self.spec.test_shift if is_test else 0.0)
            - 0.15 * np.log1p(age)
            + 0.2 * flags[:, 0]
            + rng.normal(0, 0.3, n)
        )
        cols["_like_logit"], cols["_install_logit"] = like_logit, install_logit
        cols["_user"] = user
        return cols


def _labels(uniforms: list[np.ndarray], p_like: np.ndarray, p_igl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Click and install labels from three uniform draws per row (like, install given like, click given install)."""
    like = uniforms[0] < p_like
    installed = like & (uniforms[1] < p_igl)
    clicked = like & (~installed | (uniforms[2] < CLICK_GIVEN_INSTALL))
    return clicked.astype(np.int64), installed.astype(np.int64)


def _draw_labels(rng: np.random.Generator, p_like: np.ndarray, p_igl: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Click and install labels, each of the three uniform draws one block over all rows."""
    return _labels([rng.random(len(p_like)) for _ in range(3)], p_like, p_igl)


def _generator_at(state: dict, draws: int) -> np.random.Generator:
    """A generator in PCG64 `state` moved on by `draws` 64-bit draws (a jump, not the draws), keeping the buffered
    32-bit half of `state` as the draws of doubles would: so one block of a long draw can be made on its own."""
    bits = np.random.PCG64()
    bits.state = state
    bits.advance(draws)
    moved = bits.state
    moved["has_uint32"], moved["uinteger"] = state["has_uint32"], state["uinteger"]
    bits.state = moved
    return np.random.Generator(bits)


def _labels_at(
    state: dict, total: int, offset: int, p_like: np.ndarray, p_igl: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_draw_labels` from `state` over `total` rows, for the rows from `offset` on only (each block jumped to)."""
    n = len(p_like)
    return _labels([_generator_at(state, k * total + offset).random(n) for k in range(3)], p_like, p_igl)


def _set_probabilities(cols: dict[str, np.ndarray], shifts: tuple[float, float]) -> None:
    """Replace the rows' like and install logits by their probabilities under the label shifts, in place."""
    cols["_p_like"] = sigmoid(cols.pop("_like_logit") + shifts[0])
    cols["_p_igl"] = sigmoid(cols.pop("_install_logit") + shifts[1])


def _frame(cols: dict[str, np.ndarray], columns: list[str]) -> pl.DataFrame:
    """The written frame of `columns` from numpy columns (see `_typed`)."""
    return _typed(pl.DataFrame({c: cols[c] for c in columns}), columns)


def _typed(frame: pl.DataFrame, columns: list[str]) -> pl.DataFrame:
    """`columns` of `frame` as written: NaN becomes a missing value, and integer-role columns are Int64."""
    integer = {SHARECHAT.row_id, SHARECHAT.day, *SHARECHAT.categorical, *SHARECHAT.binary, *SHARECHAT.labels}
    exprs = []
    for c in columns:
        expr = pl.col(c).fill_nan(None) if frame.schema[c].is_float() else pl.col(c)
        exprs.append(expr.cast(pl.Int64) if c in integer else expr)
    return frame.select(exprs)


def _plant_users(splits: tuple[dict[str, np.ndarray], ...], user_columns: tuple[str, ...], seed: int) -> None:
    """Move the user identity into `user_columns`, in place: every user-level column is shuffled across rows
    (it keeps its marginal and identifies no one), then each planted column carries a per-user value
    (numerical ones drift slowly: a per-user count that grows by one every few days)."""
    rng = np.random.default_rng([seed, 23])
    user_level = [f"f_{c}" for c in (*USER_CATEGORICAL, *USER_NUMERICAL, *range(33, 42))]
    n_users = int(max(cols["_user"].max() for cols in splits)) + 1
    card = int(np.clip(np.ceil((20 * n_users) ** (1 / len(user_columns))), 4, 5000))
    base = SHARECHAT.base_values
    for col in user_columns:
        level = rng.integers(0, card, size=n_users)
        if col in SHARECHAT.numerical:
            rate = rng.uniform(0.0, 0.3, size=n_users)
            for cols in splits:
                user, day = cols["_user"], cols["f_1"]
                count = level[user] + np.floor(rate[user] * (day - TRAIN_DAYS[0]))
                cols[col] = np.round(count * base.get(col, 1.0), 8)
        else:
            codes = _hashed_codes(rng, card)
            for cols in splits:
                cols[col] = codes[level[cols["_user"]]]
    for cols in splits:
        for col in user_level:
            if col in user_columns:
                continue
            values = cols[col]
            kept = ~np.isnan(values) if values.dtype.kind == "f" else np.ones(len(values), dtype=bool)
            values[kept] = rng.permutation(values[kept])


def generate(
    scale: float = 1.0, seed: int = 0, user_columns: tuple[str, ...] = (), world: World = WORLDS["base"]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Train, test and truth frames in the challenge layout (test without labels; truth per test row).

    `user_columns` plants the user identity in those columns instead (see `_plant_users`); `world` sets the
    process's knobs (see `World`).
    """
    check_world(world)
    rng = np.random.default_rng(seed)
    latent = _World(rng, scale, world)
    n_train, n_test = max(int(round(TRAIN_ROWS * scale)), 220), max(int(round(TEST_ROWS * scale)), 10)
    n_dup = int(round(DUPLICATES * scale))
    per_day = rng.multinomial(n_train - n_dup, np.full(len(TRAIN_DAYS), 1 / len(TRAIN_DAYS)))
    parts = [latent.day(d, int(k), False) for d, k in zip(TRAIN_DAYS, per_day, strict=True)]
    train = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    del parts
    test = latent.day(TEST_DAY, n_test, True)

    shifts = _label_shifts(train["_like_logit"][:HEAD_ROWS], train["_install_logit"][:HEAD_ROWS])
    for cols in (train, test):
        _set_probabilities(cols, shifts)
        cols["is_clicked"], cols["is_installed"] = _draw_labels(rng, cols["_p_like"], cols["_p_igl"])

    # duplicates: the same impression logged twice; a few copies carry a conflicting install label
    src = rng.choice(len(train["f_1"]), size=n_dup, replace=False)
    dup = {c: v[src].copy() for c, v in train.items()}
    conflict = rng.choice(n_dup, size=min(n_dup, int(round(CONFLICTING * scale))), replace=False)
    dup["is_installed"][conflict] = 1 - dup["is_installed"][conflict]
    train = {c: np.concatenate([train[c], dup[c]]) for c in train}
    order = rng.permutation(len(train["f_1"]))
    train = {c: v[order] for c, v in train.items()}

    ids = rng.permutation(len(train["f_1"]) + n_test).astype(np.int64) + 10_000
    train["f_0"], test["f_0"] = ids[: len(train["f_1"])], ids[len(train["f_1"]) :]
    test = _keep_test_rows(test, seed)
    if user_columns:
        _plant_users((train, test), tuple(user_columns), seed)
    return _frame(train, TRAIN_COLUMNS), _frame(test, FEATURE_COLUMNS), _truth(test)


def _label_shifts(like_head: np.ndarray, install_head: np.ndarray) -> tuple[float, float]:
    """Logit shifts that give the target like and install-given-like rates, from the first train rows' logits."""
    return intercept(like_head, LIKE_RATE), intercept(install_head, INSTALL_RATE / LIKE_RATE)


def _keep_test_rows(test: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The test rows that are logged: every uninstalled one, `TEST_DAY_INSTALL_KEEP` of the installed ones."""
    shift_rng = np.random.default_rng([seed, TEST_DAY])
    keep = (test["is_installed"] == 0) | (shift_rng.random(len(test["f_1"])) < TEST_DAY_INSTALL_KEEP)
    return {c: v[keep] for c, v in test.items()}


def _truth(test: dict[str, np.ndarray]) -> pl.DataFrame:
    """Per logged test row: its labels and its true install and like probabilities (after the label shift)."""
    p_install = test["_p_like"] * test["_p_igl"]
    p_install = p_install * TEST_DAY_INSTALL_KEEP / (p_install * TEST_DAY_INSTALL_KEEP + 1 - p_install)
    return pl.DataFrame(
        {
            "row_id": test["f_0"],
            "is_clicked": test["is_clicked"],
            "is_installed": test["is_installed"],
            "p_install": p_install,
            "p_like": test["_p_like"],
        }
    )


SYNTH_MARKER = ".gbmcvr-synth"


def check_synth_target(out: Path, force: bool) -> None:
    """Refuse to replace a folder that is not an earlier synth output (unless forced), or the working folder."""
    out = Path(out)
    if out.resolve() == Path.cwd().resolve() or out.resolve() in Path.cwd().resolve().parents:
        raise UserError(f"{out}: cannot replace the current folder or one above it; name a new folder, e.g. data")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / SYNTH_MARKER).is_file() and not force:
        raise UserError(
            f"{out}: folder is not empty and was not written by `gbmcvr synth` (pass --force to replace it)"
        )


def check_user_columns(user_columns: tuple[str, ...]) -> None:
    """Refuse planted user columns that are not categorical or numerical feature columns of the layout."""
    allowed = (*SHARECHAT.categorical, *SHARECHAT.numerical)
    for col in user_columns:
        if col not in allowed:
            raise UserError(f"--user-columns: '{col}' is not a categorical or numerical column (f_2..f_32, f_42..f_79)")
    if len(set(user_columns)) != len(user_columns):
        raise UserError("--user-columns: a column is named twice")


def check_world(world: World) -> None:
    """Refuse knobs outside the range the generator is built for."""
    if not 0.0 < world.new_ad_share < 0.95:
        raise UserError(f"--new-ad-share must be in (0, 0.95), got {world.new_ad_share}")
    if not 0.0 <= world.user_signal <= 5.0:
        raise UserError(f"--user-signal must be in [0, 5], got {world.user_signal}")
    for name, value in (("--new-ad-install", world.new_ad_install), ("--test-shift", world.test_shift)):
        if not -3.0 <= value <= 3.0:
            raise UserError(f"{name} must be an install-logit change in [-3, 3], got {value}")


def named_world(name: str) -> World:
    """The world called `name` in `WORLDS`."""
    if name not in WORLDS:
        raise UserError(f"unknown world '{name}' (choose from {', '.join(WORLDS)})")
    return WORLDS[name]


class _Buckets:
    """Rows bound for each train file, gathered day by day: held in memory, or spilled to Parquet fragments under
    `spill` (large data) so that only one day's rows are in memory at once."""

    def __init__(self, spill: Path | None) -> None:
        self.spill = spill
        self.parts: dict[int, list[pl.DataFrame | Path]] = {}
        if spill is not None:
            spill.mkdir()

    def put(self, file: int, rows: pl.DataFrame) -> None:
        """Add rows to file `file`'s bucket."""
        parts = self.parts.setdefault(file, [])
        if self.spill is None:
            parts.append(rows)
            return
        path = self.spill / f"{file:02d}-{len(parts):04d}.parquet"
        rows.write_parquet(path, compression="lz4", statistics=False)
        parts.append(path)

    def take(self, file: int) -> pl.DataFrame:
        """Every row put in file `file`'s bucket, which is emptied (its fragments deleted)."""
        parts = self.parts.pop(file, [])
        frames = [pl.read_parquet(p) if isinstance(p, Path) else p for p in parts]
        for p in parts:
            if isinstance(p, Path):
                p.unlink()
        return pl.concat(frames)


def _put_rows(buckets: _Buckets, rows: pl.DataFrame, slots: np.ndarray, bounds: np.ndarray) -> None:
    """Send rows to the buckets of the train files their output slots fall in (file i holds bounds[i]..)."""
    files = np.searchsorted(bounds, slots, side="right") - 1
    rows = rows.with_columns(pl.Series(SLOT, slots), pl.Series("_file", files))
    for (file,), part in rows.partition_by("_file", as_dict=True, include_key=False).items():
        buckets.put(int(file), part)


SLOT = "_slot"


def _write_streamed(
    tmp: Path, scale: float, seed: int, world: World, progress: Callable[[str], None], spill_rows: int
) -> tuple[int, float, dict[str, np.ndarray]]:
    """Write the 30 train files of `generate(scale, seed, (), world)` to `tmp/train` with the same bytes, one day's
    rows in memory at a time; return the train row count, its install rate and the logged test rows.

    `generate` draws everything from one generator in one order: the days, the test day, three label blocks over
    all train rows, the duplicates and a shuffle of all rows. Here a first pass draws the days only to record the
    generator's state at each day's start (and the first rows' logits, which set the label shifts); a second pass
    draws each day again from its state, jumps to its rows' label draws, and sends every row to the bucket of the
    file the shuffle puts it in; each file is then its bucket in shuffled order."""
    check_world(world)
    rng = np.random.default_rng(seed)
    latent = _World(rng, scale, world)
    n_train, n_test = max(int(round(TRAIN_ROWS * scale)), 220), max(int(round(TEST_ROWS * scale)), 10)
    n_dup = int(round(DUPLICATES * scale))
    per_day = [int(k) for k in rng.multinomial(n_train - n_dup, np.full(len(TRAIN_DAYS), 1 / len(TRAIN_DAYS)))]
    n_rows = sum(per_day)
    states, heads = [], []
    with counted(progress, "synth: days drawn", len(TRAIN_DAYS), "days") as task:
        for i, (day, n) in enumerate(zip(TRAIN_DAYS, per_day, strict=True)):
            states.append(rng.bit_generator.state)
            cols = latent.day(day, n, False)
            heads.append((cols["_like_logit"][:HEAD_ROWS], cols["_install_logit"][:HEAD_ROWS]))
            task.update(i + 1)
    test = latent.day(TEST_DAY, n_test, True)
    shifts = _label_shifts(*(np.concatenate(h)[:HEAD_ROWS] for h in zip(*heads, strict=True)))
    del heads
    label_state = rng.bit_generator.state
    # the test rows' labels follow the three train blocks; the generator then goes on from after them
    test_rng = _generator_at(label_state, 3 * n_rows)
    _set_probabilities(test, shifts)
    test["is_clicked"], test["is_installed"] = _draw_labels(test_rng, test["_p_like"], test["_p_igl"])
    rng.bit_generator.state = test_rng.bit_generator.state
    src = rng.choice(n_rows, size=n_dup, replace=False)
    conflict = rng.choice(n_dup, size=min(n_dup, int(round(CONFLICTING * scale))), replace=False)
    total = n_rows + n_dup
    slots = np.empty(total, dtype=np.int64)
    slots[rng.permutation(total)] = np.arange(total)
    ids = rng.permutation(total + n_test).astype(np.int64) + 10_000
    bounds = np.linspace(0, total, TRAIN_FILES + 1).astype(int)

    buckets = _Buckets(tmp / ".spill" if total > spill_rows else None)
    duplicated, offset = [], 0
    row_columns = [c for c in TRAIN_COLUMNS if c != SHARECHAT.row_id]
    with counted(progress, "synth: days written", len(TRAIN_DAYS), "days") as task:
        for i, (day, n) in enumerate(zip(TRAIN_DAYS, per_day, strict=True)):
            rng.bit_generator.state = states[i]
            cols = latent.day(day, n, False)
            _set_probabilities(cols, shifts)
            cols["is_clicked"], cols["is_installed"] = _labels_at(
                label_state, n_rows, offset, cols["_p_like"], cols["_p_igl"]
            )
            rows = pl.DataFrame({c: cols[c] for c in row_columns})
            del cols
            copied = np.flatnonzero((src >= offset) & (src < offset + n))
            duplicated.append(rows[src[copied] - offset].with_columns(pl.Series("_copy", copied)))
            _put_rows(buckets, rows, slots[offset : offset + n], bounds)
            offset += n
            task.update(i + 1)
    # duplicates: the same impression logged twice; a few copies carry a conflicting install label
    dup = pl.concat(duplicated).sort("_copy").drop("_copy")
    installed = dup["is_installed"].to_numpy().copy()
    installed[conflict] = 1 - installed[conflict]
    _put_rows(buckets, dup.with_columns(pl.Series("is_installed", installed)), slots[n_rows:], bounds)
    del dup, duplicated

    installs = 0
    with counted(progress, "synth: train files", TRAIN_FILES, "files") as task:
        for file in range(TRAIN_FILES):
            part = buckets.take(file).sort(SLOT)
            part = part.with_columns(pl.Series(SHARECHAT.row_id, ids[part[SLOT].to_numpy()]))
            frame = _typed(part, TRAIN_COLUMNS)
            frame.write_csv(tmp / "train" / f"{file:012d}.csv", separator="\t", null_value="")
            installs += int(frame["is_installed"].sum())
            task.update(file + 1)
    if buckets.spill is not None:
        shutil.rmtree(buckets.spill)
    test["f_0"] = ids[total:]
    return total, installs / total, _keep_test_rows(test, seed)


def write_synth(
    out: Path,
    scale: float = 1.0,
    seed: int = 0,
    force: bool = False,
    user_columns: tuple[str, ...] = (),
    world: World = WORLDS["base"],
    progress: Callable[[str], None] = lambda _: None,
    spill_rows: int = SPILL_ROWS,
) -> SynthResult:
    """Write train/ (30 TSV files), test/ (one file) and truth/ (test_truth.parquet, the world's knobs) under
    `out`, atomically.

    The train files are written day by day (`_write_streamed`), so memory follows one day's rows, not the data;
    planted user columns shuffle every user-level column across all rows, so those data are made in memory."""
    check_synth_target(out, force)
    check_user_columns(tuple(user_columns))
    check_world(world)
    planted = f", user columns {','.join(user_columns)}" if user_columns else ""
    knobs = {"scale": scale, "seed": seed, "user_columns": list(user_columns), **asdict(world)}
    with atomic_dir(Path(out)) as tmp:
        (tmp / SYNTH_MARKER).write_text(f"written by gbmcvr synth (scale {scale}, seed {seed}{planted})\n")
        (tmp / "train").mkdir()
        (tmp / "test").mkdir()
        (tmp / "truth").mkdir()
        if user_columns:
            train, test, truth = generate(scale, seed, tuple(user_columns), world)
            train_rows, rate = train.height, float(train["is_installed"].mean())
            bounds = np.linspace(0, train.height, TRAIN_FILES + 1).astype(int)
            for i in range(TRAIN_FILES):
                part = train.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
                part.write_csv(tmp / "train" / f"{i:012d}.csv", separator="\t", null_value="")
            del train
        else:
            train_rows, rate, test_rows = _write_streamed(tmp, scale, seed, world, progress, spill_rows)
            test, truth = _frame(test_rows, FEATURE_COLUMNS), _truth(test_rows)
        test.write_csv(tmp / "test" / f"{0:012d}.csv", separator="\t", null_value="")
        truth.write_parquet(tmp / "truth" / "test_truth.parquet")
        (tmp / "truth" / "train_rate.json").write_text(json.dumps({"install_rate": rate}) + "\n")
        (tmp / "truth" / "world.json").write_text(json.dumps(knobs, indent=1) + "\n")
    return SynthResult(
        train_rows, test.height, log_loss(truth["is_installed"].to_numpy(), truth["p_install"].to_numpy())
    )
