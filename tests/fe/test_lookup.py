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


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**31),
    dense=st.booleans(),
)
def test_attached_values_are_a_dict_lookups(n, k, seed, dense):
    """Two tables on the same keys (each with its own key set) and one on a single key, laid out densely or
    joined (no ranges): every output is the naive dict lookup of its own table."""
    rng = np.random.default_rng(seed)

    def col(size: int) -> pl.Series:
        values = rng.integers(0, k, size).tolist()
        return pl.Series([None if rng.random() < 0.1 else v for v in values], dtype=pl.Int32)

    def table(keys: list[str], name: str) -> pl.DataFrame:
        pairs = pl.DataFrame({c: col(3 * k) for c in keys}).unique(maintain_order=True)
        return pairs.with_columns(pl.Series(name, rng.normal(size=pairs.height)))

    rows = pl.DataFrame({"a": col(n), "b": col(n)})
    tables = {"v": table(["a", "b"], "v"), "w": table(["a", "b"], "w"), "z": table(["a"], "z")}
    lookups = [
        Lookup(tuple(c for c in ("a", "b") if c in t.columns), t, lambda v, name=name: {name: v(name)})
        for name, t in tables.items()
    ]
    ranges = key_ranges(rows, ["a", "b"]) if dense else {}  # no ranges: every table joins
    got = Attached(lookups, ranges).select(rows.lazy(), ["v", "w", "z"]).collect()
    for name, t in tables.items():
        keys = [c for c in ("a", "b") if c in t.columns]
        assert got[name].to_list() == _naive(rows, t.rename({name: "v"}), keys), name


def test_a_table_with_a_repeated_key_is_refused():
    rows = pl.DataFrame({"a": [0, 1, 2]}, schema={"a": pl.Int32})
    table = pl.DataFrame({"a": [0, 1, 1], "v": [1.0, 2.0, 3.0]}, schema={"a": pl.Int32, "v": pl.Float64})
    for ranges in (key_ranges(rows, ["a"]), {}):  # laid out densely, or joined
        with pytest.raises(ValueError, match=r"lookup table keyed by \['a'\] has duplicate keys"):
            Attached([Lookup(("a",), table, lambda v: {"v": v("v")})], ranges)
    assert lookup.DENSE_MIN > 3  # the table above is laid out densely, where the check lives
