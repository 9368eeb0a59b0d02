"""Analysis sections on tiny frames with hand-known answers, and the `gbmcvr analyze` command."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from gbmcvr.data import analyze as an
from tests.factories import run_cli, tiny_raw


def test_detect_base_finds_the_largest_base_and_tolerates_one_percent_noise():
    k = np.arange(0, 200)
    values = np.r_[k * 0.25, 0.3]  # one value in 201 does not fit 0.25
    base, share = an.detect_base(values, np.ones(len(values)))
    assert base == pytest.approx(0.25, rel=1e-9)
    assert share == pytest.approx(200 / 201)
    # multiples of 3 * 0.1: the largest base is 0.3, not 0.1
    assert an.detect_base(np.arange(1, 50) * 0.3, np.ones(49))[0] == pytest.approx(0.3)


def test_detect_base_reports_none_for_continuous_values():
    values = np.random.default_rng(0).normal(size=500)
    base, share = an.detect_base(values, np.ones(500))
    assert math.isnan(base)
    assert share < 0.99


def test_base_values_beside_the_profile():
    frame = pl.DataFrame({"x": [0.5 * k for k in range(100)], "y": np.random.default_rng(1).normal(size=100)})
    out = an.base_values(frame, ["x", "y"], {"x": 0.5, "y": 0.7}).rows_by_key("column", named=True)
    assert out["x"][0]["detected_base"] == pytest.approx(0.5)
    assert out["x"][0]["profile_share"] == 1.0
    assert out["y"][0]["detected_base"] is None
    assert out["y"][0]["profile_share"] < 0.1
    assert out["x"][0]["distinct_values"] == 100


def test_psi_by_hand():
    # shares (0.5, 0.5) -> (0.25, 0.75): -0.25 ln 0.5 + 0.25 ln 1.5
    expected = -0.25 * math.log(0.5) + 0.25 * math.log(1.5)
    assert an.psi(np.array([50, 50]), np.array([25, 75])) == pytest.approx(expected)
    assert an.psi(np.array([3, 7]), np.array([30, 70])) == 0.0


def _drift_frames() -> tuple[pl.DataFrame, pl.DataFrame]:
    train = pl.DataFrame(
        {
            "day": [1, 1, 1, 1, 2, 2, 2, 2],
            "c": [7, 7, 9, 9, 7, 9, 9, 9],
            "x": [1.0, 2.0, 3.0, 4.0, 1.0, 2.0, 3.0, 4.0],
        }
    )
    test = pl.DataFrame({"day": [3, 3, 3, 3], "c": [7, 7, 9, 9], "x": [1.0, 2.0, 3.0, 4.0]})
    return train, test


def test_drift_and_day_similarity_by_hand():
    train, test = _drift_frames()
    bins = an.bin_expressions(train, ["x"], ["c"], bins=4)
    counts = an.binned_counts(pl.concat([train, test]), "day", bins)
    drift = dict(an.drift(counts, test_day=3).iter_rows())
    # c: train shares 3/8, 5/8; test 1/2, 1/2. x: the same four values on every day
    expected = (0.5 - 3 / 8) * math.log(0.5 / (3 / 8)) + (0.5 - 5 / 8) * math.log(0.5 / (5 / 8))
    assert drift["c"] == pytest.approx(expected)
    assert drift["x"] == pytest.approx(0.0)
    similar = an.day_similarity(counts, test_day=3)
    assert similar["day"].to_list() == [1, 2]
    assert similar["mean_psi"][0] == pytest.approx(0.0)
    day2 = 0.5 * ((0.5 - 0.25) * math.log(0.5 / 0.25) + (0.5 - 0.75) * math.log(0.5 / 0.75))
    assert similar["mean_psi"][1] == pytest.approx(day2)


def test_missing_values_and_blocks():
    frame = pl.DataFrame(
        {
            "a": [None, None, 1.0, 2.0, 3.0, 4.0],
            "b": [None, None, 5.0, 6.0, 7.0, 8.0],
            "c": [1.0, 2.0, None, 4.0, 5.0, 6.0],
            "d": [1.0] * 6,
        }
    )
    test = frame.head(3)
    missing = an.missing_values(frame, test, ["a", "b", "c", "d"]).rows_by_key("column")
    assert missing["a"][0] == (pytest.approx(2 / 6), pytest.approx(2 / 3))
    assert missing["d"][0] == (0.0, 0.0)
    blocks = an.missing_blocks(frame, ["a", "b", "c", "d"])
    assert blocks.rows() == [(1, "a, b", 2, pytest.approx(2 / 6))]


def test_per_day_rates():
    train = pl.DataFrame({"day": [1, 1, 1, 1, 2], "click": [1, 0, 0, 0, 1], "install": [0, 1, 0, 0, 1]})
    test = pl.DataFrame({"day": [3, 3]})
    out = an.per_day(train, test, "day", "click", "install")
    assert out["rows"].to_list() == [4, 1, 2]
    assert out["click_rate"].to_list()[:2] == [0.25, 1.0]
    assert out["install_rate"].to_list()[:2] == [0.25, 1.0]
    assert out["like_rate"].to_list()[:2] == [0.5, 1.0]
    assert out["like_rate"][2] is None


def test_novelty_shares():
    train = pl.DataFrame({"a": [1, 2, 3, 3]})
    test = pl.DataFrame({"a": [1, 4, 4, 5, None]})
    row = an.novelty(train, test, ["a"]).row(0, named=True)
    assert row["new_rows_share"] == pytest.approx(3 / 5)  # 4, 4, 5 are new; a missing value is not
    assert row["new_values_share"] == pytest.approx(2 / 3)
    assert (row["test_values"], row["train_values"]) == (3, 3)


def test_duplicates_and_conflicts_match_a_naive_count():
    frame = pl.DataFrame(
        {
            "f": [1, 1, 1, 2, 2, 3, None, None],
            "g": [5, 5, 5, 6, 6, 7, 8, 8],
            "click": [0, 0, 0, 1, 1, 0, 1, 1],
            "install": [0, 0, 1, 0, 0, 0, 0, 1],
        }
    )
    row = an.duplicates(frame, ["f", "g"], ["click", "install"], "train").row(0, named=True)
    # groups (1,5) x3 with labels disagreeing, (2,6) x2 agreeing, (None,8) x2 disagreeing
    assert row["duplicate_groups"] == 3
    assert row["duplicate_rows"] == 4
    assert row["conflicting_groups"] == 2
    assert row["conflicting_rows"] == 5
    naive = frame.group_by("f", "g").agg(pl.len(), pl.struct("click", "install").n_unique().alias("sets"))
    assert row["conflicting_rows"] == naive.filter((pl.col("len") > 1) & (pl.col("sets") > 1))["len"].sum()
    assert an.duplicates(frame, ["f", "g"], [], "test").row(0, named=True)["conflicting_groups"] == 0


def test_adversarial_finds_the_leaking_column():
    rng = np.random.default_rng(0)
    n = 600
    train = pl.DataFrame({"noise": rng.normal(size=n), "leak": rng.normal(0, 1, n)})
    test = pl.DataFrame({"noise": rng.normal(size=n), "leak": rng.normal(3, 1, n)})
    out = an.adversarial(train, test, ["noise", "leak"], sample_rows=500, rounds=30)
    assert out["column"][0] == "leak"
    assert out["auc"][0] > 0.95
    assert out["train_sample"][0] == 500
    alike = pl.DataFrame({"noise": rng.normal(size=n), "leak": rng.normal(0, 1, n)})
    same = an.adversarial(train, alike, ["noise", "leak"], rounds=30)
    assert abs(same["auc"][0] - 0.5) < 0.1


def test_functional_dependencies_and_entity_groups():
    rng = np.random.default_rng(0)
    ad = rng.integers(0, 10, 400)
    frame = pl.DataFrame(
        {"ad": ad, "advertiser": ad // 3, "ad_price": ad * 1.5, "user": rng.integers(0, 5, 400), "const": 1}
    )
    deps = an.functional_dependencies(
        frame, ["ad", "advertiser", "user"], ["ad", "advertiser", "user", "ad_price", "const"]
    )
    assert deps.select("determinant", "dependent").rows() == [("ad", "ad_price"), ("ad", "advertiser")]
    assert deps["determinant_values"].to_list() == [10, 10]
    groups = an.entity_groups(deps)
    assert groups.rows() == [("ad", 10, 2, "ad_price, advertiser")]
    # a single violating row anywhere, even outside the candidate sample, breaks the dependency
    broken = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 399).then(99).otherwise("advertiser").alias("advertiser")
    )
    deps = an.functional_dependencies(broken, ["ad"], ["advertiser"], sample_rows=200, min_rows_per_value=5)
    assert deps.height == 0


def test_analyze_command_writes_the_report(tmp_path, capsys):
    raw, profile = tiny_raw(tmp_path, rows_per_day=80)
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        'name = "tiny"\nrow_id = "id"\nday = "day"\ncategorical = ["a", "b", "c", "d"]\nbinary = ["e"]\n'
        'numerical = ["x", "y"]\nclick_label = "click"\ninstall_label = "install"\nbase_values = { x = 0.5 }\n'
        "[split]\nfit_days = [1, 2, 3]\nvalid_day = 4\ntest_day = 5\n"
    )
    code, out, err = run_cli(["analyze", "--profile", toml, "--workdir", tmp_path], capsys)
    assert code == 0, err
    report = tmp_path / "reports" / "analyze"
    for name in ("analyze.md", "per_day.png", "drift.png", "novelty.png", "adversarial.png", "missing.png"):
        assert (report / name).is_file(), name
    data = json.loads((report / "analyze.json").read_text())
    assert data["summary"]["train_rows"] == 320
    bases = {r["column"]: r for r in data["sections"]["base_values"]}
    assert bases["x"]["detected_base"] == pytest.approx(0.5)
    assert "## Drift" in (report / "analyze.md").read_text()
    assert "## Entity discovery" in (report / "analyze.md").read_text()
    assert {r["source"] for r in data["sections"]["entity_discovery"]} <= {"discovered", "declared"}
    stored = json.loads((raw / "entities.json").read_text())  # analyze shows the groups the key families use
    assert data["summary"]["entities"] == stored["groups"]
    assert data["summary"]["entities_overruled"] == stored["overruled"]


def test_analyze_without_a_raw_store_is_a_user_error(tmp_path, capsys):
    code, _, err = run_cli(["analyze", "--workdir", tmp_path], capsys)
    assert code == 2
    assert "raw store not found" in err
