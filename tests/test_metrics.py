import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from gbmcvr import metrics


def test_hand_computed():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.8, 0.4, 0.6, 0.2])
    expected = -(math.log(0.8) + math.log(0.6) + math.log(0.6) + math.log(0.8)) / 4
    assert math.isclose(metrics.log_loss(y, p), expected, rel_tol=1e-12)
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert math.isclose(metrics.entropy(0.25), h)
    assert math.isclose(metrics.nce(y, p, 0.25), expected / h)
    assert metrics.auc(y, p) == 1.0
    assert math.isclose(metrics.calibration_ratio(y, p), 0.5 / 0.5)
    assert math.isclose(metrics.calibration_ratio(np.array([1, 0]), np.array([0.3, 0.3])), 0.6)


def test_ece_hand_computed():
    # bin 0 ([0, .1)): p=.05,.05 y=0,1 -> |1 - .1| ; bin 9: p=.95 y=1 -> |1 - .95|
    y = np.array([0, 1, 1])
    p = np.array([0.05, 0.05, 0.95])
    assert math.isclose(metrics.expected_calibration_error(y, p), (0.9 + 0.05) / 3)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.001, 0.999)), min_size=2, max_size=60))
def test_agrees_with_sklearn(pairs):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    assert math.isclose(metrics.log_loss(y, p), sk_log_loss(y, p, labels=[0, 1]), rel_tol=1e-9)
    if 0 < y.sum() < len(y):
        assert math.isclose(metrics.auc(y, p), roc_auc_score(y, p))
    else:
        assert math.isnan(metrics.auc(y, p))


def test_prior_has_nce_one():
    y = np.array([1] * 20 + [0] * 80)
    assert math.isclose(metrics.nce(y, np.full(100, 0.2), 0.2), 1.0)
