import numpy as np
import pytest

from gbmcvr.post.calibrate import prior_shift, sigmoid
from gbmcvr.post.shift import em_prior, match_mean, odds_ratio, trend_rate


def test_em_on_separable_posteriors_returns_the_share_of_positives():
    # posteriors 0 or 1: the adjusted posteriors stay 0 or 1, so the prior is the share of ones at once
    p = np.r_[np.ones(200), np.zeros(800)]
    prior, w = em_prior(p, source_prior=0.5)
    assert prior == pytest.approx(0.2, abs=1e-9)
    assert w == pytest.approx(0.25 / 1.0, rel=1e-6)  # odds 0.2/0.8 over odds 0.5/0.5


def test_em_without_shift_keeps_the_prior():
    p = np.random.default_rng(0).beta(2, 8, 5000)
    prior, w = em_prior(p, source_prior=float(p.mean()))
    assert prior == pytest.approx(p.mean(), abs=1e-12) and w == pytest.approx(1.0, abs=1e-9)


def test_em_recovers_a_known_label_shift():
    # x | y ~ N(+1, 1) or N(-1, 1): the posterior calibrated for prior 0.3 is sigmoid(2x + logit(0.3))
    rng = np.random.default_rng(1)
    source, target = 0.3, 0.1
    y = rng.random(200_000) < target
    x = np.where(y, rng.normal(1, 1, y.size), rng.normal(-1, 1, y.size))
    p = sigmoid(2 * x + np.log(source / (1 - source)))
    prior, w = em_prior(p, source)
    assert prior == pytest.approx(target, abs=0.004)
    assert w == pytest.approx(odds_ratio(target, source), rel=0.05)
    adjusted = prior_shift(p, w)
    truth = sigmoid(2 * x + np.log(target / (1 - target)))
    assert np.max(np.abs(adjusted - truth)) < 0.01


def test_odds_ratio_by_hand():
    assert odds_ratio(0.2, 0.5) == pytest.approx(0.25)
    assert odds_ratio(0.5, 0.5) == 1.0


def test_trend_extrapolates_a_linear_series_exactly_despite_an_outlier():
    days = np.arange(45, 66)
    rates = 0.2 - 0.002 * (days - 45)
    rates[-3] = 0.5  # one wild day among the last seven: Theil–Sen ignores it
    assert trend_rate(days, rates, 66, 7) == pytest.approx(0.2 - 0.002 * 21, abs=1e-12)


def test_trend_uses_only_the_last_k_days():
    days = np.arange(45, 66)
    rates = np.where(days < 59, 0.30, 0.15 + 0.001 * (days - 59))  # a level break before the last 7 days
    assert trend_rate(days, rates, 66, 7) == pytest.approx(0.15 + 0.001 * 7, abs=1e-12)
    assert trend_rate(days[::-1], rates[::-1], 66, 7) == pytest.approx(0.157, abs=1e-12)


def test_match_mean_meets_the_target():
    p = np.random.default_rng(2).beta(2, 8, 1000)
    w = match_mean(p, 0.15)
    assert prior_shift(p, w).mean() == pytest.approx(0.15, abs=1e-9)
    assert match_mean(p, float(p.mean())) == pytest.approx(1.0, abs=1e-6)
