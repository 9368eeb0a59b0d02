"""Lookups attached by position: the dense layout and the join give a naive dict lookup's values, and a table
with a repeated key is refused."""

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gbmcvr.fe import lookup
from gbmcvr.fe.lookup import Attached, Lookup, key_ranges


def _naive(rows: pl.DataFrame, table: pl.DataFrame, keys: list[str]) -> list:
    values = {tuple(r[k] for k in keys): r["v"] for r in table.iter_rows(named=True)}
    return [values.get(tuple(r[k] for k in keys)) for r in rows.iter_rows(named=True)]


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    dense=st.booleans(),
)
def test_attached_values_are_a_dict_lookups(n, k, seed, dense):
    rng = np.random.default_rng(seed)

    def col(size: int) -> pl.Series:
        values = rng.integers(0, k, size).tolist()
        return pl.Series([None if rng.random() < 0.1 else v for v in values], dtype=pl.Int32)

    rows = pl.DataFrame({"a": col(n), "b": col(n)})
    pairs = pl.DataFrame({"a": col(3 * k), "b": col(3 * k)}).unique(maintain_order=True)
    table = pairs.with_columns(pl.Series("v", rng.normal(size=pairs.height)))
    ranges = key_ranges(rows, ["a", "b"]) if dense else {}  # no ranges: every table joins
    got = Attached([Lookup(("a", "b"), table, lambda v: {"v": v("v")})], ranges).select(rows.lazy(), ["v"])
    assert got.collect()["v"].to_list() == _naive(rows, table, ["a", "b"])


def test_a_table_with_a_repeated_key_is_refused():
    rows = pl.DataFrame({"a": [0, 1, 2]}, schema={"a": pl.Int32})
    table = pl.DataFrame({"a": [0, 1, 1], "v": [1.0, 2.0, 3.0]}, schema={"a": pl.Int32, "v": pl.Float64})
    with pytest.raises(ValueError, match=r"lookup table keyed by \['a'\] has duplicate keys"):
        Attached([Lookup(("a",), table, lambda v: {"v": v("v")})], key_ranges(rows, ["a"]))
    assert lookup.DENSE_MIN > 3  # the table above is laid out densely, where the check lives
