import numpy as np
import polars as pl
import pytest

from gbmcvr.errors import UserError
from gbmcvr.post import submission as sub

IDS = pl.Series("id", [10, 11, 12, 13], dtype=pl.Int64)


def good():
    return sub.build(np.array([10, 11, 12, 13]), np.array([0.1, 0.2, 0.3, 0.4]), np.array([0.05, 0.5, 1.0, 0.0]))


def test_good_passes_and_round_trips(tmp_path):
    sub.write(tmp_path / "s.tsv", good(), IDS)
    back = sub.read(tmp_path / "s.tsv")
    sub.validate(back, IDS)
    assert back.columns == ["RowId", "is_clicked", "is_installed"]
    assert (tmp_path / "s.tsv").read_text().splitlines()[0] == "RowId\tis_clicked\tis_installed"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.rename({"is_installed": "p"}), "expected RowId, is_clicked, is_installed"),
        (lambda f: f.head(3), "3 rows, but the test set has 4"),
        (lambda f: f.with_columns(pl.Series("RowId", [10, 10, 12, 13])), "RowId 10 appears more than once"),
        (lambda f: f.with_columns(pl.Series("RowId", [10, 11, 12, 99])), "test RowId 13 is missing"),
        (
            lambda f: f.with_columns(pl.Series("is_installed", [0.1, float("nan"), 0.2, 0.3])),
            "is_installed at RowId 11",
        ),
        (lambda f: f.with_columns(pl.Series("is_installed", [0.1, 1.5, 0.2, 0.3])), "must be finite in [0, 1]"),
        (lambda f: f.with_columns(pl.Series("is_clicked", [0.1, -0.1, 0.2, 0.3])), "is_clicked at RowId 11"),
        (
            lambda f: f.with_columns(pl.Series("is_installed", [0.1, float("inf"), 0.2, 0.3])),
            "is_installed at RowId 11",
        ),
    ],
)
def test_validator_catches_defects(mutate, message, tmp_path):
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")):
        sub.validate(mutate(good()), IDS)
    with pytest.raises(UserError):
        sub.write(tmp_path / "bad.tsv", mutate(good()), IDS)
    assert not (tmp_path / "bad.tsv").exists()


def test_validate_and_score_commands(tmp_path, capsys):
    from gbmcvr.data.synth import write_synth
    from tests.factories import run_cli

    data = tmp_path / "data"
    write_synth(data, 0.002, 4)
    truth = pl.read_parquet(data / "truth" / "test_truth.parquet")
    frame = sub.build(truth["row_id"].to_numpy(), truth["p_like"].to_numpy(), truth["p_install"].to_numpy())
    sub.write(tmp_path / "s.tsv", frame, truth["row_id"])
    code, out, _ = run_cli(["validate", tmp_path / "s.tsv", "--data", data], capsys)
    assert code == 0 and "valid" in out
    code, out, _ = run_cli(["score", tmp_path / "s.tsv", "--truth", data], capsys)
    assert code == 0 and "truth log loss" in out and "train install rate" in out
    lines = out.splitlines()
    ours = float(next(line for line in lines if line.startswith("log loss")).split()[2])
    floor = float(next(line for line in lines if line.startswith("truth log loss")).split()[3])
    assert ours == pytest.approx(floor, abs=1e-6)  # the truth's own probabilities score the floor
    (tmp_path / "s.tsv").write_text("\n".join((tmp_path / "s.tsv").read_text().splitlines()[:-1]) + "\n")
    code, _, err = run_cli(["validate", tmp_path / "s.tsv", "--data", data], capsys)
    assert code == 2 and "rows, but the test set has" in err
