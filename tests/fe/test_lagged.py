import numpy as np
import polars as pl
import pytest

from gbmcvr.fe.lagged import apply_lagged, lagged_table, window_map

FIT_DAYS = (1, 2, 3, 4, 5)
ALL_DAYS = (1, 2, 3, 4, 5, 6, 7)


def _rows(seed=0, n=300, nulls=False, keys=5):
    rng = np.random.default_rng(seed)
    frame = pl.DataFrame(
        {
            "day": np.sort(rng.integers(1, 8, n)),
            "k": rng.integers(0, keys, n),
            "y": rng.integers(0, 2, n),
        }
    )
    return frame.with_columns(pl.when(pl.col("k") != 0).then("k").alias("k")) if nulls else frame


def _lagged(frame, window, n_min=20.0, wanted=False):
    fit = frame.filter(pl.col("day").is_in(FIT_DAYS))
    pairs = window_map(FIT_DAYS, ALL_DAYS, window, "day")
    rows = frame.select("k", "day").unique() if wanted else None
    table, prior = lagged_table(fit.lazy(), ["k"], "day", {"inst": "y"}, pairs, ALL_DAYS, n_min, "lr", rows)
    if wanted:  # only the pairs rows look up
        assert table.height == table.join(rows, on=["k", "day"], nulls_equal=True).height
    return apply_lagged(frame.lazy(), table, prior, ["k"], "day").collect()


def test_window_map():
    pairs = window_map(FIT_DAYS, ALL_DAYS, 2, "day").rows()
    assert (1, 0) not in pairs and [s for d, s in pairs if d == 1] == []
    assert [s for d, s in pairs if d == 3] == [1, 2]
    assert [s for d, s in pairs if d == 7] == [4, 5]  # after the fit window: the last labelled days


@pytest.mark.parametrize("keys", [5, 250], ids=["repeated", "nearly-unique"])
@pytest.mark.parametrize("nulls", [False, True], ids=["keys", "null-keys"])
@pytest.mark.parametrize("wanted", [False, True], ids=["every-pair", "wanted-pairs"])
def test_lagged_rates_match_a_naive_loop(nulls, wanted, keys):
    frame = _rows(nulls=nulls, keys=keys)
    for window in (1, 3):
        out = _lagged(frame, window, wanted=wanted)
        rows = frame.rows()
        fit_rows = [r for r in rows if r[0] in FIT_DAYS]
        for i, (day, k, _y) in enumerate(rows):
            src = [d for d in FIT_DAYS if d < day][-window:]
            in_window = [r for r in fit_rows if r[0] in src]
            if not in_window:
                assert out["lr_n"][i] == 0 and out["lr_inst"][i] is None
                continue
            mu = np.mean([r[2] for r in in_window])
            mine = [r[2] for r in in_window if r[1] == k]
            N, n = len(mine), sum(mine)
            strength = max(20.0 - N, 0.0)
            expected = (mu * strength + n) / (strength + N)
            assert out["lr_n"][i] == N
            assert abs(out["lr_inst"][i] - expected) < 1e-5


def test_labels_of_later_days_never_reach_earlier_rates():
    frame = _rows(1)
    rng = np.random.default_rng(9)
    for d in (2, 4):
        late = frame["day"] >= d
        shuffled = frame["y"].to_numpy().copy()
        shuffled[late.to_numpy()] = rng.permutation(shuffled[late.to_numpy()])
        shuffled[late.to_numpy()] = 1 - shuffled[late.to_numpy()]
        other = frame.with_columns(pl.Series("y", shuffled))
        a, b = _lagged(frame, 3), _lagged(other, 3)
        early = (frame["day"] <= d).to_numpy()
        assert a.filter(early).select("lr_n", "lr_inst").equals(b.filter(early).select("lr_n", "lr_inst"))
        assert not a.select("lr_inst").equals(b.select("lr_inst"))
