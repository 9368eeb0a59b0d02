import numpy as np
import polars as pl

from gbmcvr.fe.daycounts import daycount_table
from gbmcvr.fe.novelty import apply_table


def test_daycounts_match_a_naive_loop():
    rng = np.random.default_rng(3)
    n = 90
    frame = pl.DataFrame({"day": rng.integers(1, 4, n), "k": rng.integers(0, 4, n), "v": rng.integers(0, 6, n)})
    frame = frame.with_columns(pl.when(pl.col("v") == 5).then(None).otherwise(pl.col("v")).alias("v"))
    table = daycount_table(frame.lazy(), ["k"], "day", ["v", "k"], "dc")
    assert table.columns == ["k", "day", "dc_rows", "dc_nd_v"]
    out = apply_table(frame.lazy(), table, ["k"], "day").collect()
    rows = frame.rows()
    for i, (day, k, _v) in enumerate(rows):
        same = [r for r in rows if r[0] == day and r[1] == k]
        assert out["dc_rows"][i] == len(same)
        assert out["dc_nd_v"][i] == len({r[2] for r in same if r[2] is not None})
