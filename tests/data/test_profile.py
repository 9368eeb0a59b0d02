from pathlib import Path

import pytest

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT, load_profile
from gbmcvr.errors import UserError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_sharechat_facts():
    p = SHARECHAT
    assert p.row_id == "f_0" and p.day == "f_1"
    assert p.categorical[0] == "f_2" and p.categorical[-1] == "f_32" and len(p.categorical) == 31
    assert p.binary == tuple(f"f_{i}" for i in range(33, 42))
    assert p.numerical == tuple(f"f_{i}" for i in range(42, 80))
    assert p.drop == ("f_7", "f_9", "f_23", "f_24", "f_47", "f_49")
    assert p.fit_days == tuple(range(45, 66)) and p.valid_day == 66 and p.test_day == 67
    assert p.base_values["f_42"] == 0.03856407 and p.base_values["f_73"] == 0.57112147
    assert p.base_values["f_60"] == 8.07946039 and p.base_values["f_79"] == 37.38457512
    assert "f_43" not in p.base_values


def _write(tmp_path, text):
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


MINIMAL = """
name = "mine"
row_id = "id"
day = "day"
categorical = ["a", "b"]
numerical = ["x"]
click_label = "click"
install_label = "buy"
[split]
fit_days = [1, 2]
valid_day = 3
test_day = 4
"""


def test_custom_profile_loads(tmp_path):
    p = load_profile(_write(tmp_path, MINIMAL))
    assert p.name == "mine" and p.categorical == ("a", "b") and p.fit_days == (1, 2)


def test_unknown_key_is_error(tmp_path):
    with pytest.raises(UserError, match="unknown key 'colour'"):
        load_profile(_write(tmp_path, 'colour = "red"\n' + MINIMAL))


def test_column_named_twice_is_error(tmp_path):
    with pytest.raises(UserError, match="column 'a' is named twice"):
        load_profile(_write(tmp_path, MINIMAL.replace('numerical = ["x"]', 'numerical = ["a"]')))


def test_overlapping_split_is_error(tmp_path):
    with pytest.raises(UserError, match="must not overlap"):
        load_profile(_write(tmp_path, MINIMAL.replace("valid_day = 3", "valid_day = 2")))


def test_unknown_profile_name():
    with pytest.raises(UserError, match="unknown profile 'nope'"):
        load_profile("nope")


def test_ali_ccp_profile_ingests_fixture(tmp_path):
    profile = load_profile("ali_ccp")
    data = tmp_path / "ali"
    data.mkdir()
    for f in FIXTURES.glob("ali_ccp_*_sample.csv"):
        (data / f.name).write_text(f.read_text())
    result = ingest(data, profile, tmp_path / "raw")
    import polars as pl

    train = pl.read_parquet(tmp_path / "raw" / "train.parquet")
    truth = pl.read_parquet(tmp_path / "raw" / "test_truth.parquet")
    rows = {f.name: len(f.read_text().strip().splitlines()) - 1 for f in data.iterdir()}
    assert result.train_rows == rows["ali_ccp_train_sample.csv"] + rows["ali_ccp_val_sample.csv"]
    assert result.test_rows == rows["ali_ccp_test_sample.csv"]
    assert sorted(train["day"].unique().to_list()) == [1, 2]
    assert truth.columns == ["row_id", "is_clicked", "is_installed"]
    expected = pl.read_csv(data / "ali_ccp_test_sample.csv")["purchase"].to_list()
    assert truth.sort("row_id")["is_installed"].to_list() == expected
    assert train["D109_14"].dtype == pl.Float64 and train["101"].dtype == pl.Int64
    assert train["row_id"].n_unique() == train.height


def test_score_against_the_labelled_test_split_of_ali_ccp(tmp_path, capsys):
    from tests.factories import run_cli

    data = tmp_path / "ali"
    data.mkdir()
    for f in FIXTURES.glob("ali_ccp_*_sample.csv"):
        (data / f.name).write_text(f.read_text())
    raw = tmp_path / "features" / "raw"
    ingest(data, load_profile("ali_ccp"), raw)
    import math

    import polars as pl

    truth = pl.read_parquet(raw / "test_truth.parquet")
    sub = tmp_path / "s.tsv"
    pl.DataFrame({"RowId": truth["row_id"], "is_clicked": 0.5, "is_installed": 0.25}).write_csv(sub, separator="\t")
    code, out, err = run_cli(["score", sub, "--truth", raw], capsys)
    assert code == 0, err
    rate = truth["is_installed"].mean()
    expected = -(rate * math.log(0.25) + (1 - rate) * math.log(0.75))
    assert f"log loss            {expected:.5f}" in out


def test_entities(tmp_path):
    p = load_profile(_write(tmp_path, MINIMAL + '[entities]\nuser = ["x", "a"]\n'))
    assert p.entities == {"user": ("x", "a")}
    assert SHARECHAT.entities["user"] == tuple(f"f_{i}" for i in range(43, 55))
    with pytest.raises(UserError, match="entity 'user' names 'z', which is not a feature column"):
        load_profile(_write(tmp_path, MINIMAL + '[entities]\nuser = ["x", "z"]\n'))
