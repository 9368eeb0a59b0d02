import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

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


def _naive_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Share of (positive, negative) pairs ranked right, ties counting half: the definition, as a double loop."""
    pos = [b for a, b in zip(y, p, strict=True) if a == 1]
    neg = [b for a, b in zip(y, p, strict=True) if a == 0]
    wins = sum(1.0 if s > t else 0.5 if s == t else 0.0 for s in pos for t in neg)
    return wins / (len(pos) * len(neg))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.floats(0.001, 0.999)), min_size=2, max_size=60))
def test_agrees_with_the_definitions(pairs):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    naive_ll = sum(-math.log(b) if a == 1 else -math.log(1 - b) for a, b in pairs) / len(pairs)
    assert math.isclose(metrics.log_loss(y, p), naive_ll, rel_tol=1e-9)
    if 0 < y.sum() < len(y):
        assert math.isclose(metrics.auc(y, p), _naive_auc(y, p), rel_tol=1e-12)
    else:
        assert math.isnan(metrics.auc(y, p))


def test_prior_has_nce_one():
    y = np.array([1] * 20 + [0] * 80)
    assert math.isclose(metrics.nce(y, np.full(100, 0.2), 0.2), 1.0)
