import numpy as np
import polars as pl
import pytest

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT, load_profile
from gbmcvr.data.synth_multi import generate, write_synth_multi
from gbmcvr.errors import UserError
from tests.factories import run_cli

NAMES = ["act_1", "act_2", "act_3", "act_4"]


@pytest.fixture(scope="module")
def frames():
    return generate(scale=0.05, seed=1)


def test_labels_follow_clicks_reports_and_targets(frames):
    train, test, truth = frames
    assert train.height + test.height == 50_000
    not_clicked = train.filter(pl.col("is_clicked") == 0)
    assert not_clicked.select(pl.sum_horizontal(NAMES).sum()).item() == 0
    target_label = pl.coalesce([pl.when(pl.col("target_action") == j + 1).then(pl.col(c)) for j, c in enumerate(NAMES)])
    assert (train["is_converted"] == train.select(target_label).to_series()).all()
    assert set(test.columns).isdisjoint(["is_clicked", "is_converted", *NAMES])
    assert truth.height == test.height and set(truth["row_id"]) == set(test["row_id"])
    assert (
        (truth.select([f"p_{c}" for c in NAMES]).to_numpy() > 0)
        & (truth.select([f"p_{c}" for c in NAMES]).to_numpy() < 1)
    ).all()


def test_skew_and_incompleteness(frames):
    train, _, _ = frames
    share = train["target_action"].value_counts(normalize=True).sort("target_action")["proportion"].to_numpy()
    assert share[-1] < 0.01 and share[0] > 0.5  # the rarest action's base mask covers < 1 % of samples
    # some advertising tasks report an action they do not target, not all do
    per_task = train.group_by("ad_task").agg(pl.col("target_action").first(), pl.col("act_1").sum())
    others = per_task.filter(pl.col("target_action") != 1)
    assert 0 < (others["act_1"] > 0).sum() < others.height
    assert train["day"].min() == 1 and train["day"].max() == 13


def test_write_and_ingest_with_the_written_profile(tmp_path, capsys):
    code, out, _ = run_cli(
        ["synth", "--kind", "multi-action", tmp_path / "d", "--scale", "0.01", "--actions", "3"], capsys
    )
    assert code == 0 and "profile" in out
    profile = load_profile(tmp_path / "d" / "profile.toml")
    assert profile.conversions == ("act_1", "act_2", "act_3") and profile.conversion_labels == profile.conversions
    assert profile.role("act_2") == "label" and profile.ad_task == "ad_task"
    ingest(tmp_path / "d", profile, tmp_path / "raw")
    raw = pl.read_parquet(tmp_path / "raw" / "train.parquet")
    assert {"act_1", "act_3", "is_converted", "target_action"} <= set(raw.columns)
    assert "act_1" not in pl.read_parquet(tmp_path / "raw" / "test.parquet").columns
    code, _, err = run_cli(["synth", "--kind", "nope", tmp_path / "e"], capsys)
    assert code == 2 and "--kind" in err


def test_sharechat_stays_single_conversion():
    assert SHARECHAT.conversions == () and SHARECHAT.conversion_labels == ("is_installed",)
    assert SHARECHAT.label_columns == SHARECHAT.labels


def test_profile_conversions_need_target_and_task_columns(tmp_path):
    base = 'name = "m"\nrow_id = "id"\nday = "day"\ncategorical = ["t", "k"]\nnumerical = ["x"]\n'
    base += 'click_label = "c"\ninstall_label = "y"\n'
    split = "[split]\nfit_days = [1]\nvalid_day = 2\ntest_day = 3\n"
    path = tmp_path / "p.toml"
    path.write_text(base + 'conversions = ["a", "b"]\n' + split)
    with pytest.raises(UserError, match="target_action"):
        load_profile(path)
    path.write_text(base + 'conversions = ["a", "b"]\ntarget_action = "t"\nad_task = "nope"\n' + split)
    with pytest.raises(UserError, match="ad_task 'nope'"):
        load_profile(path)
    path.write_text(base + 'conversions = ["a", "x"]\ntarget_action = "t"\nad_task = "k"\n' + split)
    with pytest.raises(UserError, match="named twice"):
        load_profile(path)
    path.write_text(base + 'conversions = ["a", "b"]\ntarget_action = "t"\nad_task = "k"\n' + split)
    assert load_profile(path).label_columns == ("c", "y", "a", "b")


def test_rejects_bad_action_count(tmp_path):
    with pytest.raises(UserError):
        write_synth_multi(tmp_path / "x", 0.01, 0, actions=0)
    assert np.isclose(sum(write_synth_multi(tmp_path / "y", 0.01, 0, actions=2).target_share), 1.0)
