import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from gbmcvr.fe.target import FOLD, BetaTargetEncoder, beta_stats, fold_expr, posterior

ALL = ("mean", "mode", "median", "var", "skew", "kurt")


@settings(max_examples=80, deadline=None)
@given(st.floats(0.05, 500), st.floats(0.05, 500))
def test_beta_stats_match_scipy(a, b):
    got = beta_stats(np.array([a]), np.array([b]), ALL)
    mean, var, skew, kurt = sps.beta.stats(a, b, moments="mvsk")
    assert np.isclose(got["mean"][0], mean, rtol=1e-9)
    assert np.isclose(got["var"][0], var, rtol=1e-8)
    assert np.isclose(got["skew"][0], skew, rtol=1e-7, atol=1e-9)
    assert np.isclose(got["kurt"][0], kurt, rtol=1e-7, atol=1e-9)
    assert np.isclose(got["median"][0], sps.beta.median(a, b), rtol=1e-6, atol=1e-12)
    if a > 1 and b > 1:
        assert np.isclose(got["mode"][0], (a - 1) / (a + b - 2))
    assert all(np.isfinite(v[0]) for v in got.values())


def test_documented_values_where_undefined():
    got = beta_stats(np.array([0.5, 3.0, 0.5, 1.0, 0.0, 5.0]), np.array([3.0, 0.5, 0.5, 1.0, 5.0, 0.0]), ALL)
    assert got["mode"].tolist()[:4] == [0.0, 1.0, 0.5, 0.5]  # a<=1<b -> 0; b<=1<a -> 1; both <= 1 -> mean
    # a == 0 or b == 0: point mass at n / N
    assert got["mean"][4] == 0.0 and got["mean"][5] == 1.0
    assert got["var"][4] == got["skew"][4] == got["kurt"][4] == 0.0
    assert got["median"][5] == 1.0 and got["mode"][5] == 1.0
    assert all(np.isfinite(v).all() for v in got.values())


def test_posterior_hand_computed():
    a, b = posterior(np.array([3.0, 50.0]), np.array([1.0, 10.0]), np.array([0.2, 0.2]), 10.0)
    assert np.allclose(a, [0.2 * 7 + 1, 10.0])
    assert np.allclose(b, [0.8 * 7 + 2, 40.0])


def _frame(n=400, seed=0):
    rng = np.random.default_rng(seed)
    f = pl.DataFrame(
        {
            "id": np.arange(n, dtype=np.int64) * 7 + 3,
            "cat": rng.integers(0, 6, n),
            "y": rng.integers(0, 2, n),
            "day": rng.integers(1, 5, n),
        }
    )
    return f.with_columns(fold_expr("id", 5))


def test_out_of_fold_matches_naive_loop():
    f = _frame()
    enc = BetaTargetEncoder("cat", "te", n_min=50, stats=("mean", "var")).fit(f, "y")
    got = enc.transform_window(f.lazy()).collect()
    ys, cats, folds = f["y"].to_numpy(), f["cat"].to_numpy(), f[FOLD].to_numpy()
    for i in range(0, len(f), 37):
        other = folds != folds[i]
        mu = ys[other].mean()
        same = other & (cats == cats[i])
        N, n = same.sum(), ys[same].sum()
        a, b = posterior(np.array([N]), np.array([n]), np.array([mu]), 50)
        assert np.isclose(got["te_mean"][i], a[0] / (a[0] + b[0]), rtol=1e-6)


def test_past_days_uses_earlier_days_only():
    f = _frame()
    enc = BetaTargetEncoder("cat", "te", n_min=20, stats=("mean",), scheme="past_days").fit(f, "y")
    got = enc.transform_window(f.lazy()).collect()
    ys, cats, days = f["y"].to_numpy(), f["cat"].to_numpy(), f["day"].to_numpy()
    for i in range(0, len(f), 41):
        before = days < days[i]
        if not before.any():
            continue
        mu = ys[before].mean()
        same = before & (cats == cats[i])
        a, b = posterior(np.array([same.sum()]), np.array([ys[same].sum()]), np.array([mu]), 20)
        assert np.isclose(got["te_mean"][i], a[0] / (a[0] + b[0]), rtol=1e-6)


def test_own_label_does_not_change_own_encoding():
    f = _frame()
    enc = BetaTargetEncoder("cat", "te", n_min=30).fit(f, "y")
    before = enc.transform_window(f.lazy()).collect()
    for i in (0, 17, 123):
        flipped = f.with_columns(
            pl.when(pl.int_range(pl.len()) == i).then(1 - pl.col("y")).otherwise(pl.col("y")).alias("y")
        )
        after = BetaTargetEncoder("cat", "te", n_min=30).fit(flipped, "y").transform_window(flipped.lazy()).collect()
        for col in enc.output_columns:
            assert after[col][i] == before[col][i]


def test_unseen_category_gets_prior():
    f = _frame()
    enc = BetaTargetEncoder("cat", "te", n_min=10, stats=("mean", "var")).fit(f, "y")
    out = enc.transform(pl.LazyFrame({"cat": [99]})).collect()
    mu = f["y"].mean()
    assert np.isclose(out["te_mean"][0], mu, rtol=1e-6)
    assert np.isclose(out["te_var"][0], mu * (1 - mu) / 11, rtol=1e-5)


def test_constant_target_is_error():
    from gbmcvr.errors import UserError

    f = _frame().with_columns(pl.lit(0).alias("y"))
    with pytest.raises(UserError, match="constant"):
        BetaTargetEncoder("cat", "te").fit(f, "y")
