"""Statistics of rehearsal-day choices: the pooled gain's day-clustered SE against hand-computed values, and
density-ratio weights that favour rows resembling the target day."""

from __future__ import annotations

import numpy as np
import polars as pl

from gbmcvr.rehearsal import WEIGHT_CLIP, density_weights, pooled_gain


def test_one_day_is_the_plain_paired_standard_error():
    rng = np.random.default_rng(0)
    before, after = rng.uniform(0.3, 0.7, 400), rng.uniform(0.3, 0.7, 400)
    g = pooled_gain(before, after, np.zeros(400, dtype=int))
    diff = before - after
    assert np.isclose(g.mean, diff.mean()) and np.isclose(g.se, diff.std(ddof=1) / np.sqrt(400)) and g.tau2 == 0


def test_days_that_agree_give_the_stratified_se_and_days_that_disagree_widen_it():
    rng = np.random.default_rng(1)
    days = np.repeat([1, 2, 3], [300, 300, 400])
    noise = rng.normal(0, 0.05, 1000)
    noise -= np.select(
        [days == 1, days == 2], [noise[days == 1].mean(), noise[days == 2].mean()], noise[days == 3].mean()
    )
    agree = pooled_gain(noise + 0.01, np.zeros(1000), days)
    by_day = [noise[days == d] for d in (1, 2, 3)]
    shares = np.array([0.3, 0.3, 0.4])
    stratified = np.sqrt(sum(s**2 * x.var(ddof=1) / len(x) for s, x in zip(shares, by_day, strict=True)))
    assert agree.tau2 == 0 and np.isclose(agree.se, stratified)  # every day's mean gain is 0.01
    assert np.allclose(list(agree.per_day.values()), [x.mean() + 0.01 for x in by_day]) and list(agree.per_day) == [
        1,
        2,
        3,
    ]
    # the same rows with day-level shocks: +0.03, -0.02, +0.01 -> the row-level SE says "significant", the days do not
    shocked = noise + np.select([days == 1, days == 2], [0.03, -0.02], 0.01)
    g = pooled_gain(shocked, np.zeros(1000), days)
    row_se = shocked.std(ddof=1) / np.sqrt(1000)
    assert g.mean > 2 * row_se and g.mean < 2 * g.se and g.tau2 > 0
    assert np.isclose(g.mean, shocked.mean())


def test_weighted_gain_is_the_weighted_mean():
    rng = np.random.default_rng(2)
    diff, w = rng.normal(0.01, 0.05, 600), rng.uniform(0.1, 3, 600)
    days = np.repeat([5, 6], 300)
    g = pooled_gain(diff, np.zeros(600), days, w)
    assert np.isclose(g.mean, np.average(diff, weights=w))
    assert np.isclose(g.per_day[5], np.average(diff[:300], weights=w[:300]))


def test_density_weights_favour_rows_that_look_like_the_target_day():
    rng = np.random.default_rng(3)
    n = 4000
    old = rng.random(n) < 0.5  # half the rehearsal rows come from an older regime the target does not have
    rows = pl.DataFrame({"a": np.where(old, rng.normal(-2, 1, n), rng.normal(1, 1, n)), "b": rng.normal(size=n)})
    target = pl.DataFrame({"a": rng.normal(1, 1, 2000), "b": rng.normal(size=2000)})
    found = density_weights(rows, target, ["a", "b"], seed=0)
    w = found.weights
    assert np.isclose(w.mean(), 1.0) and w[~old].mean() > 3 * w[old].mean()
    assert w.max() / w.min() <= WEIGHT_CLIP[1] / WEIGHT_CLIP[0] + 1e-9
    assert 0.6 < found.auc < 1 and found.effective_rows < n
    again = density_weights(rows, target, ["a", "b"], seed=0)
    assert np.array_equal(again.weights, w)
