from dataclasses import replace

import polars as pl

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


def test_key_resolution():
    profile = replace(tiny_profile(), entities={"u": ("x", "y")})
    assert key_columns(("u", "a"), profile) == ["k_u", "a"]
    assert entities_used([("a",), ("u", "b")], profile) == ["u"]
