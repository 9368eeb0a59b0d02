import polars as pl
import pytest
from polars.testing import assert_frame_equal

from gbmcvr.data.dialects import SAME_DATA, write_dialect
from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("dialects")
    write_synth(root / "data", 0.002, 1)
    ingest(root / "data", SHARECHAT, root / "int-raw")
    return root


def _store(raw):
    return {name: pl.read_parquet(raw / f"{name}.parquet") for name in ("train", "test")}


@pytest.mark.parametrize("dialect", [d for d in SAME_DATA if d != "int"])
def test_same_data_dialects_give_the_int_raw_store(dialect, generated, tmp_path):
    data = write_dialect(generated / "data", tmp_path / dialect, dialect)
    ingest(data, SHARECHAT, tmp_path / "raw")
    expected, got = _store(generated / "int-raw"), _store(tmp_path / "raw")
    for name in expected:
        assert_frame_equal(got[name], expected[name])


def test_intfloat_writes_integral_floats_with_empty_cells(generated, tmp_path):
    data = write_dialect(generated / "data", tmp_path / "intfloat", "intfloat")
    text = (data / "train" / "000000000000.csv").read_text().splitlines()
    header, row = text[0].split("\t"), text[1].split("\t")
    assert row[header.index("f_2")].endswith(".0") and row[header.index("f_33")] in ("0.0", "1.0", "")
    assert any(line.split("\t")[header.index("f_30")] == "" for line in text[1:])


@pytest.mark.parametrize("dialect", ["hashed", "noisy"])
def test_other_data_dialects_keep_the_shape(dialect, generated, tmp_path):
    data = write_dialect(generated / "data", tmp_path / dialect, dialect)
    ingest(data, SHARECHAT, tmp_path / "raw")
    expected, got = _store(generated / "int-raw"), _store(tmp_path / "raw")
    for name in expected:
        assert got[name].schema == expected[name].schema and got[name].height == expected[name].height
        for col in expected[name].columns:
            assert got[name][col].null_count() == expected[name][col].null_count(), col
            if dialect == "hashed":
                assert got[name][col].n_unique() == expected[name][col].n_unique(), col
    changed = SHARECHAT.categorical if dialect == "hashed" else ("f_58",)
    assert all(not got["train"][c].equals(expected["train"][c]) for c in changed)
