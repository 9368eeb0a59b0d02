import numpy as np
import polars as pl

from gbmcvr.fe.novelty import apply_table, novelty_table


def _frame(seed=0, n=80):
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "day": rng.integers(1, 7, n),
            "a": rng.integers(0, 5, n),
            "b": pl.Series(rng.integers(0, 2, n)).to_list(),
        }
    ).with_columns(pl.when(pl.int_range(pl.len()) % 11 == 0).then(None).otherwise(pl.col("b")).alias("b"))


def test_novelty_matches_a_naive_loop():
    frame = _frame()
    stats = ("first_day", "days_since_first", "new_on_day", "active_days")
    table = novelty_table(frame.lazy(), ["a", "b"], "day", "nov", stats)
    out = apply_table(frame.lazy(), table, ["a", "b"], "day").collect()
    rows = frame.rows()
    for i, (day, a, b) in enumerate(rows):
        days = sorted({d for d, a2, b2 in rows if (a2, b2) == (a, b)})
        assert out["nov_first_day"][i] == days[0]
        assert out["nov_days_since_first"][i] == day - days[0]
        assert out["nov_new_on_day"][i] == int(day == days[0])
        assert out["nov_active_days"][i] == len([d for d in days if d <= day])
    assert out.height == frame.height
