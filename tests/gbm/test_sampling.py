"""The fit Dataset's memory budget: every positive and a weighted share of the negatives above it, the same
trees as LightGBM trained on those rows and weights by hand, and the expected log-loss gradient kept."""

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import LIKE
from gbmcvr.gbm import models
from gbmcvr.gbm.models import STAGES, train_stage
from gbmcvr.gbm.params import GbmConfig, gbm_config
from gbmcvr.gbm.sampling import EVERY_ROW, budget_sample
from gbmcvr.tables import load_tables
from tests.gbm.test_models import PARAMS, plan  # noqa: F401 (fixture)


def test_a_dataset_within_the_budget_keeps_every_row():
    y = np.array([0, 1, 0, 0, 1])
    assert budget_sample(y, inputs=10, max_gb=50 / 1e9, seed=0) is EVERY_ROW


def test_over_the_budget_every_positive_and_the_share_of_negatives_that_fits():
    y = np.zeros(10_000, dtype=np.int8)
    y[:1000] = 1
    # 4 inputs, 16,000 bytes: 4,000 rows fit -> 1,000 positives + 3,000 of 9,000 negatives, share 1/3
    s = budget_sample(y, inputs=4, max_gb=16_000 / 1e9, seed=7)
    assert s.share == pytest.approx(1 / 3) and not s.uniform
    assert s.keep[:1000].all()
    kept_negatives = int(s.keep[1000:].sum())
    assert abs(kept_negatives - 3000) < 4 * np.sqrt(9000 * (1 / 3) * (2 / 3))
    assert len(s.weight) == int(s.keep.sum())
    np.testing.assert_allclose(s.weight, np.where(y[s.keep] == 1, 1.0, 3.0))
    again = budget_sample(y, inputs=4, max_gb=16_000 / 1e9, seed=7)
    assert np.array_equal(s.keep, again.keep)
    other = budget_sample(y, inputs=4, max_gb=16_000 / 1e9, seed=8)
    assert not np.array_equal(s.keep, other.keep)


def test_positives_beyond_the_budget_keep_a_uniform_unweighted_share():
    y = np.ones(1000, dtype=np.int8)
    y[::10] = 0
    s = budget_sample(y, inputs=1, max_gb=200 / 1e9, seed=0)
    assert s.uniform and s.weight is None and s.share == pytest.approx(0.2)
    assert abs(int(s.keep.sum()) - 200) < 4 * np.sqrt(1000 * 0.2 * 0.8)


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.02, 0.5), budget=st.floats(0.2, 0.9), seed=st.integers(0, 2**31))
def test_the_weighted_rate_of_the_kept_rows_estimates_the_rate(rate, budget, seed):
    """Weights 1/share keep the log loss's expected gradient: the weighted positive rate of the kept rows is an
    unbiased estimate of the rate (here within 5 standard errors)."""
    rng = np.random.default_rng([seed, 1])  # not the sampler's own stream
    n = 50_000
    y = (rng.random(n) < rate).astype(np.int8)
    s = budget_sample(y, inputs=1, max_gb=budget * n / 1e9, seed=seed)
    assume(s.keep is not None and not s.uniform and s.share > 0.05)  # a handful of kept negatives: not normal
    w, kept = s.weight, y[s.keep]
    estimate = float((w * kept).sum() / w.sum())
    negatives = n - int(y.sum())
    se = np.sqrt(negatives * (1 - s.share) / s.share) * y.mean() / n + 1e-9
    assert abs(estimate - y.mean()) < 5 * se + 1e-12


@pytest.mark.parametrize("stage", ["e2e", "ts_install"])
def test_a_stage_over_its_budget_trains_the_trees_of_its_sample(plan, stage):  # noqa: F811
    root, frames = plan
    st_ = STAGES[stage]
    tables = load_tables(root, "default", "validate", lean=("fit",))
    features = models.stage_features(tables, st_)
    fit = frames["fit"].filter(pl.col(LIKE) == 1) if st_.rows == "like" else frames["fit"]
    y = fit[LIKE if st_.target == "like" else "is_installed"].to_numpy()
    budget = 0.8 * fit.height * len(features) / 1e9  # over the positives (half the like rows install)
    cfg = GbmConfig(dataset_cache=False, max_dataset_gb=budget)
    said: list[str] = []
    model = train_stage(tables, st_, PARAMS, cfg, said.append, rounds=12)
    sample = budget_sample(y, len(features), budget, PARAMS["seed"])
    assert sample.keep is not None and sample.keep[y == 1].all()
    assert any("every positive" in line and f"max_dataset_gb = {budget:g}" in line for line in said), said
    kept = fit.filter(pl.Series(sample.keep))
    ref = lgb.Dataset(kept.select(features), label=y[sample.keep], weight=sample.weight, categorical_feature=["f_cat"])
    reference = lgb.train(PARAMS, ref, 12)
    assert model.booster.model_to_string() == reference.model_to_string()
    assert model.fit_rows == fit.height and model.dataset_rows == int(sample.keep.sum())


def test_the_budget_must_be_positive():
    with pytest.raises(UserError, match="max_dataset_gb must be above 0, got 0"):
        gbm_config({"max_dataset_gb": 0}, "config.toml [gbm]")
