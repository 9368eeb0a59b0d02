import numpy as np
import polars as pl

from gbmcvr.fe.groupstats import apply_group, group_table
from gbmcvr.fe.spec import GROUP_STATS


def test_against_naive_loop():
    rng = np.random.default_rng(3)
    f = pl.DataFrame({"k": rng.integers(0, 5, 200), "v": rng.integers(0, 4, 200).astype(float)})
    t = group_table(f.lazy(), "k", "v", "g")
    out = apply_group(f.lazy(), t, "k", "v", "g", GROUP_STATS).collect()
    for i in range(0, 200, 13):
        vals = f.filter(pl.col("k") == f["k"][i])["v"].to_numpy()
        b, mean, med, std = f["v"][i], vals.mean(), np.median(vals), vals.std(ddof=1)
        expect = {
            "mean": mean,
            "median": med,
            "std": std,
            "min": vals.min(),
            "max": vals.max(),
            "ratio_mean": b / mean if mean else None,
            "ratio_median": b / med if med else None,
            "diff_mean": b - mean,
            "zscore": (b - mean) / std if std else None,
            "median_minus_mean": med - mean,
            "abs_median_minus_mean": abs(med - mean),
            "median_over_mean": med / mean if mean else None,
            "std_over_mean": std / mean if mean else None,
        }
        for stat, value in expect.items():
            got = out[f"g_{stat}"][i]
            if value is None:
                assert got is None
            else:
                assert np.isclose(got, value, rtol=1e-5, atol=1e-6), stat


def test_division_by_zero_is_null():
    f = pl.DataFrame({"k": [1, 1, 2], "v": [0.0, 0.0, 5.0]})
    out = apply_group(f.lazy(), group_table(f.lazy(), "k", "v", "g"), "k", "v", "g", GROUP_STATS).collect()
    assert out["g_ratio_mean"][0] is None and out["g_zscore"][0] is None and out["g_std_over_mean"][0] is None
    assert out["g_std"][2] is None  # a single-row group has no sample std
    assert not any(np.isinf(out[c].drop_nulls().to_numpy()).any() for c in out.columns if c.startswith("g_"))
