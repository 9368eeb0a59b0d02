import json

import numpy as np
import pytest

from gbmcvr.errors import UserError
from gbmcvr.metrics import log_loss
from gbmcvr.post.calibrate import Calibrator, prior_shift
from gbmcvr.post.ensemble import combine, cross_fit, fit_weights
from gbmcvr.post.options import parse_weights


def miscalibrated(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    true = rng.beta(2, 8, n)
    y = (rng.random(n) < true).astype(float)
    p = np.clip(true**0.6, 1e-4, 1 - 1e-4)  # over-confident upwards
    return p, y, true


def test_scaling_matches_formula_and_mean():
    p, y, _ = miscalibrated()
    cal = Calibrator("scaling").fit(p, y)
    w = y.mean() / p.mean()
    assert np.isclose(cal.state["w"], w)
    q = cal.transform(p)
    assert np.allclose(q, p / (p + (1 - p) / w))
    # the paper's correction with w = mean(y)/mean(p) moves the mean towards mean(y)
    assert abs(q.mean() - y.mean()) < abs(p.mean() - y.mean())


def test_scaling_fit_minimises_loss():
    p, y, _ = miscalibrated()
    cal = Calibrator("scaling-fit").fit(p, y)
    best = log_loss(y, cal.transform(p))
    for w in (cal.state["w"] * 0.9, cal.state["w"] * 1.1, y.mean() / p.mean()):
        assert best <= log_loss(y, prior_shift(p, w)) + 1e-9


@pytest.mark.parametrize("method", ["isotonic", "platt", "scaling", "scaling-fit"])
def test_calibrators_reduce_valid_loss_and_round_trip(method):
    p, y, _ = miscalibrated()
    cal = Calibrator(method).fit(p, y)
    assert log_loss(y, cal.transform(p)) < log_loss(y, p)
    back = Calibrator.from_json(json.loads(json.dumps(cal.to_json())))
    assert np.array_equal(back.transform(p), cal.transform(p))


def test_isotonic_matches_sklearn_predict():
    from sklearn.isotonic import IsotonicRegression

    p, y, _ = miscalibrated()
    ours = Calibrator("isotonic").fit(p, y).transform(p)
    ref = IsotonicRegression(y_min=1e-15, y_max=1 - 1e-15, out_of_bounds="clip").fit(p, y).predict(p)
    assert np.allclose(ours, np.clip(ref, 1e-15, 1 - 1e-15))


def test_unknown_calibration():
    with pytest.raises(UserError, match="unknown calibration 'magic'"):
        Calibrator("magic")


def test_fitted_weights_on_simplex_and_not_worse_than_best():
    p, y, true = miscalibrated()
    rng = np.random.default_rng(1)
    a = np.clip(true + rng.normal(0, 0.05, len(y)), 0.01, 0.99)
    b = np.clip(true + rng.normal(0, 0.08, len(y)), 0.01, 0.99)
    for space in ("probability", "logit"):
        w = fit_weights([a, b, p], y, space)
        assert all(v >= 0 for v in w) and np.isclose(sum(w), 1.0)
        ens = log_loss(y, combine([a, b, p], w, space))
        assert ens <= min(log_loss(y, x) for x in (a, b, p)) + 1e-12


def test_weights_never_worse_even_with_a_useless_input():
    _, y, true = miscalibrated()
    noise = np.full(len(y), 0.5)
    w = fit_weights([true, noise], y)
    assert log_loss(y, combine([true, noise], w)) <= log_loss(y, true) + 1e-12


def test_cross_fit_is_out_of_fold():
    p, y, _ = miscalibrated()
    cal, ens = cross_fit([p, p**1.1], y, "isotonic", None, "probability", 5, 0)
    in_sample = log_loss(y, Calibrator("isotonic").fit(p, y).transform(p))
    assert log_loss(y, cal[0]) > in_sample  # honest numbers are worse than in-sample ones
    assert ens.shape == y.shape


@pytest.mark.parametrize(
    ("text", "message"),
    [("0.5", "1 weights for 2 runs"), ("0.5,-0.1", "non-negative"), ("a,b", "comma-separated numbers")],
)
def test_bad_weights(text, message):
    with pytest.raises(UserError, match=message):
        parse_weights(text, 2)


def test_weights_normalised():
    assert parse_weights("1,3", 2) == [0.25, 0.75]
    assert parse_weights("auto", 3) is None
