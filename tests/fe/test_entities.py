from dataclasses import replace

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from gbmcvr.fe.entities import entities_used, key_columns, with_keys
from tests.factories import tiny_profile


def test_keys_equal_exactly_when_tuples_equal():
    profile = replace(tiny_profile(), entities={"u": ("x", "y")})
    frame = pl.DataFrame({"x": [1.0, 1.0, None, None, 2.0, 1.0], "y": [0.5, 0.5, 3.0, 3.0, 0.5, 0.7]})
    out = with_keys(frame.lazy(), profile, ["u"]).collect()
    keys = out["k_u"].to_list()
    rows = frame.rows()
    for i in range(len(rows)):
        for j in range(len(rows)):
            assert (keys[i] == keys[j]) == (rows[i] == rows[j])
    assert sorted(set(keys)) == list(range(len(set(rows))))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.one_of(st.none(), st.integers(-2, 2)), st.one_of(st.none(), st.sampled_from([0.5, -1.0, 3.25]))),
        min_size=1,
        max_size=40,
    )
)
def test_keys_are_a_dense_code_of_the_distinct_tuples(rows):
    """Against a dict of the tuples (an independent reference): equal keys exactly for equal tuples, nulls equal."""
    profile = replace(tiny_profile(), entities={"u": ("x", "y")})
    frame = pl.DataFrame(rows, schema={"x": pl.Int64, "y": pl.Float64}, orient="row")
    keys = with_keys(frame.lazy(), profile, ["u"]).collect()["k_u"]
    assert keys.dtype == pl.Int32
    code: dict[tuple, int] = {}
    for row, key in zip(rows, keys.to_list(), strict=True):
        assert code.setdefault(row, key) == key
    assert len(set(code.values())) == len(code) and sorted(code.values()) == list(range(len(code)))


def test_key_resolution():
    profile = replace(tiny_profile(), entities={"u": ("x", "y")})
    assert key_columns(("u", "a"), profile) == ["k_u", "a"]
    assert entities_used([("a",), ("u", "b")], profile) == ["u"]
