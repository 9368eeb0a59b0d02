import hashlib
import json
from dataclasses import asdict

import numpy as np
import polars as pl
import polars.testing
import pytest

from gbmcvr.data.synth import CONFLICTING, DUPLICATES, WORLDS, World, generate, write_synth
from tests.factories import run_cli


@pytest.fixture(scope="module")
def frames():
    return generate(0.02, 3)


def test_layout(tmp_path):
    write_synth(tmp_path / "d", 0.003, 1)
    train = sorted((tmp_path / "d" / "train").iterdir())
    assert [f.name for f in train] == [f"{i:012d}.csv" for i in range(30)]
    assert [f.name for f in (tmp_path / "d" / "test").iterdir()] == ["000000000000.csv"]
    header = train[0].read_text().splitlines()[0].split("\t")
    assert header == [f"f_{i}" for i in range(80)] + ["is_clicked", "is_installed"]
    test_header = (tmp_path / "d" / "test" / "000000000000.csv").read_text().splitlines()[0].split("\t")
    assert test_header == [f"f_{i}" for i in range(80)]
    # missing values are empty fields
    assert any("\t\t" in line for line in train[0].read_text().splitlines()[1:50])
    truth = pl.read_parquet(tmp_path / "d" / "truth" / "test_truth.parquet")
    assert truth.columns[:4] == ["row_id", "is_clicked", "is_installed", "p_install"]


def test_rates_and_quirks(frames):
    train, test, truth = frames
    assert abs(train["is_installed"].mean() - 0.174) < 0.01
    assert abs(train["is_clicked"].mean() - 0.2198) < 0.01
    installed_not_clicked = train.filter((pl.col("is_installed") == 1) & (pl.col("is_clicked") == 0)).height
    assert installed_not_clicked > 0
    assert sorted(train["f_1"].unique().to_list()) == list(range(45, 67))
    assert test["f_1"].unique().to_list() == [67]
    assert abs(train["f_30"].is_null().mean() - 0.478) < 0.02
    assert abs(test["f_30"].is_null().mean() - 0.273) < 0.03
    assert set(train["f_30"].drop_nulls().unique().to_list()) <= {0, 1}
    block = ["f_43", "f_51", "f_58", "f_59", *[f"f_{i}" for i in range(64, 71)]]
    nulls = train.select(pl.col(block).is_null()).to_numpy()
    assert (nulls.all(axis=1) == nulls.any(axis=1)).all()
    assert abs(nulls[:, 0].mean() - 0.052) < 0.01
    assert train["f_7"].n_unique() == 1
    f9 = train.group_by("f_1").agg(pl.col("f_9").n_unique())["f_9"]
    assert (f9 == 1).all() and train["f_9"].n_unique() == 2
    f23_value = train.filter(pl.col("f_23") != 0)["f_23"].unique()
    assert len(f23_value) == 1 and abs((train["f_23"] != 0).mean() - 0.068) < 0.01
    assert not test["f_23"].is_in(f23_value.implode()).any()
    assert all(train[f"f_{c}"].n_unique() == 2 for c in (26, 27, 28, 29))
    assert train.group_by("f_6").agg(pl.col("f_4").n_unique())["f_4"].max() == 1
    base = 0.03856407
    ratio = train["f_42"].drop_nulls().to_numpy() / base
    assert np.allclose(ratio, np.round(ratio), atol=1e-5)
    new_ads = 1 - np.isin(test["f_6"].unique().to_numpy(), train["f_6"].unique().to_numpy()).mean()
    assert 0.2 < new_ads < 0.4


def test_duplicates_with_conflicts(frames):
    train = frames[0]
    features = [f"f_{i}" for i in range(1, 80)]
    dup = train.filter(train.select(features).is_duplicated())
    assert dup.height >= 2 * DUPLICATES * 0.02 * 0.9
    conflicts = dup.group_by(features).agg(pl.col("is_installed").n_unique().alias("k")).filter(pl.col("k") > 1)
    assert abs(conflicts.height - CONFLICTING * 0.02) <= 5


def test_truth_reproduces_label_mean(frames):
    truth = frames[2]
    p = truth["p_install"].to_numpy()
    y = truth["is_installed"].to_numpy()
    assert abs(p.mean() - y.mean()) < 3 * np.sqrt(p.mean() * (1 - p.mean()) / len(p)) + 0.005
    assert ((p > 0) & (p < 1)).all()


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes(tmp_path):
    write_synth(tmp_path / "a", 0.002, 5)
    write_synth(tmp_path / "b", 0.002, 5)
    write_synth(tmp_path / "c", 0.002, 6)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_numeric_groups_identify_users_and_ads(frames):
    train = frames[0].filter(pl.col("f_43").is_not_null())
    user = [f"f_{i}" for i in range(43, 55)]
    item = [f"f_{i}" for i in range(64, 71)]
    # a user's categorical attributes are fixed, so one user key should carry one f_15 and one f_13
    per_user = train.group_by(user).agg(pl.col("f_15").n_unique(), pl.col("f_13").n_unique())
    assert (per_user["f_15"] == 1).mean() > 0.99 and (per_user["f_13"] == 1).mean() > 0.99
    assert per_user.height > 0.5 * train["f_15"].n_unique()
    per_item = train.group_by(item).agg(pl.col("f_6").n_unique())
    assert (per_item["f_6"] == 1).all()


def test_fresh_ads_and_daily_drift(frames):
    train = frames[0]
    first = train.group_by("f_6").agg(pl.col("f_1").min().alias("first"))
    rows = train.join(first, on="f_6").filter(pl.col("first") > 47)
    # fresh ads draw curiosity clicks
    fresh = rows.filter(pl.col("f_1") == pl.col("first"))["is_clicked"].mean()
    old = rows.filter(pl.col("f_1") > pl.col("first") + 2)["is_clicked"].mean()
    assert fresh > old + 0.02
    daily = train.group_by("f_1").agg(pl.col("is_installed").mean())["is_installed"]
    assert daily.std() > 0.005


def test_synth_user_columns_flag(tmp_path, capsys):
    code, _, err = run_cli(["synth", tmp_path / "d", "--scale", "0.002", "--user-columns", "f_1,f_24"], capsys)
    assert code == 2 and "f_1" in err
    code, _, err = run_cli(["synth", tmp_path / "d", "--scale", "0.002", "--user-columns", "f_24,f_71"], capsys)
    assert code == 0, err
    assert "user columns f_24,f_71" in (tmp_path / "d" / ".gbmcvr-synth").read_text()


def _new_ad_share(train: pl.DataFrame, test: pl.DataFrame) -> float:
    seen = set(train["f_6"].to_list())
    ads = test["f_6"].unique().to_list()
    return sum(a not in seen for a in ads) / len(ads)


def test_world_test_shift_moves_only_the_test_day():
    base = generate(0.01, 4)
    up = generate(0.01, 4, world=World(test_shift=0.6))
    down = generate(0.01, 4, world=World(test_shift=-0.6))
    # the labelled days are the same data in every direction of the shift
    assert base[0].equals(up[0]) and base[0].equals(down[0])
    rates = [w[2]["p_install"].mean() for w in (down, base, up)]
    assert rates[0] < rates[1] - 0.02 and rates[2] > rates[1] + 0.02


def test_world_new_ads_and_their_conversion():
    few = generate(0.02, 4, world=World(new_ad_share=0.1))
    many = generate(0.02, 4, world=World(new_ad_share=0.6))
    assert _new_ad_share(*few[:2]) < 0.2 < 0.45 < _new_ad_share(*many[:2])

    def fresh_install_rate(frames: tuple[pl.DataFrame, ...]) -> float:
        train = frames[0]
        first = train.group_by("f_6").agg(pl.col("f_1").min().alias("first"))
        rows = train.join(first, on="f_6").filter((pl.col("first") > 47) & (pl.col("f_1") == pl.col("first")))
        return rows["is_installed"].mean() / train["is_installed"].mean()

    # an ad's first day relative to the average row, as the effect of fresh ads goes from worse to better
    rates = [fresh_install_rate(generate(0.02, 4, world=World(new_ad_install=v))) for v in (-1.0, 0.0, 1.0)]
    assert rates[0] + 0.1 < rates[1] < rates[2] - 0.1


def test_world_user_signal_sets_what_only_history_tells():
    def user_spread(frames: tuple[pl.DataFrame, ...]) -> float:
        # the spread of per-user install rates among users of one f_15 value, as the user key f_43..f_54 sees them
        train = frames[0].filter(pl.col("f_43").is_not_null())
        per = train.group_by([f"f_{c}" for c in range(43, 55)]).agg(pl.col("is_installed").mean(), pl.len())
        return float(per.filter(pl.col("len") >= 30)["is_installed"].std())

    assert user_spread(generate(0.02, 4, world=World(user_signal=0.0))) < user_spread(
        generate(0.02, 4, world=World(user_signal=2.5))
    )


def test_synth_world_flags(tmp_path, capsys):
    code, _, err = run_cli(["synth", tmp_path / "d", "--scale", "0.002", "--world", "moon"], capsys)
    assert code == 2 and "unknown world 'moon'" in err and "shift-down" in err
    code, _, err = run_cli(["synth", tmp_path / "d", "--scale", "0.002", "--test-shift", "9"], capsys)
    assert code == 2 and "--test-shift must be" in err
    assert not (tmp_path / "d").exists()
    args = ["synth", tmp_path / "d", "--scale", "0.002", "--world", "shift-down", "--user-signal", "0.5"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    knobs = json.loads((tmp_path / "d" / "truth" / "world.json").read_text())
    assert knobs == {**asdict(WORLDS["shift-down"]), "user_signal": 0.5, "scale": 0.002, "seed": 0, "user_columns": []}


@pytest.mark.parametrize("spill_rows", [0, 10**9])
def test_streamed_files_are_the_bytes_of_generate(tmp_path, spill_rows):
    # write_synth draws day by day (spilling per-file buckets to disk or not); its files are generate()'s bytes
    world = WORLDS["new-ads-better"]
    result = write_synth(tmp_path / "d", 0.004, 7, world=world, spill_rows=spill_rows)
    train, test, truth = generate(0.004, 7, world=world)
    assert (result.train_rows, result.test_rows) == (train.height, test.height)
    files = sorted((tmp_path / "d" / "train").iterdir())
    bounds = np.linspace(0, train.height, len(files) + 1).astype(int)
    for i, path in enumerate(files):
        part = train.slice(int(bounds[i]), int(bounds[i + 1] - bounds[i]))
        assert path.read_bytes() == part.write_csv(separator="\t", null_value="").encode()
    written = (tmp_path / "d" / "test" / "000000000000.csv").read_bytes()
    assert written == test.write_csv(separator="\t", null_value="").encode()
    pl.testing.assert_frame_equal(pl.read_parquet(tmp_path / "d" / "truth" / "test_truth.parquet"), truth)
    rate = json.loads((tmp_path / "d" / "truth" / "train_rate.json").read_text())["install_rate"]
    assert rate == float(train["is_installed"].mean())
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [".gbmcvr-synth", "test", "train", "truth"]
