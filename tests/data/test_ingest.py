import gzip
import hashlib
import json
import shutil

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from gbmcvr.data.ingest import compression, dictionary_columns, ingest, schema
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from tests.factories import run_cli


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    data = tmp_path_factory.mktemp("ing") / "data"
    write_synth(data, 0.002, 2)
    return data


@pytest.fixture
def data(pristine, tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(pristine, copy)
    return copy


def test_round_trip_exact(data, tmp_path, capsys):
    code, out, _ = run_cli(["ingest", data, "--workdir", tmp_path], capsys)
    assert code == 0, out
    raw = tmp_path / "features" / "raw"
    train = pl.read_parquet(raw / "train.parquet")
    assert train["f_2"].dtype == pl.Int64 and train["f_33"].dtype == pl.Int8 and train["f_42"].dtype == pl.Float64
    text = (data / "train" / "000000000003.csv").read_text().splitlines()
    header = text[0].split("\t")
    for line in text[1:40]:
        fields = dict(zip(header, line.split("\t"), strict=True))
        row = train.filter(pl.col("f_0") == int(fields["f_0"])).row(0, named=True)
        for col in ("f_2", "f_30", "f_42", "f_51", "f_64", "f_79", "is_installed"):
            expected = None if fields[col] == "" else float(fields[col])
            assert row[col] == expected, (col, fields[col], row[col])
    n_lines = sum(len(f.read_text().strip().splitlines()) - 1 for f in (data / "train").iterdir())
    assert train.height == n_lines


def _expect_error(capsys, tmp_path, data, message):
    code, out, err = run_cli(["ingest", data, "--workdir", tmp_path], capsys)
    assert code == 2
    assert message in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "features" / "raw").exists()
    leftovers = list((tmp_path / "features").glob(".*")) if (tmp_path / "features").exists() else []
    assert leftovers == []


def _edit(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")


def test_missing_folder(tmp_path, capsys):
    _expect_error(capsys, tmp_path, tmp_path / "nope", "data folder not found")


def test_missing_test_files(data, tmp_path, capsys):
    shutil.rmtree(data / "test")
    _expect_error(capsys, tmp_path, data, "no test files matching test/*.csv")


def test_missing_column(data, tmp_path, capsys):
    _edit(data / "train" / "000000000004.csv", lambda ls: ["\t".join(x.split("\t")[:-1]) for x in ls])
    _expect_error(capsys, tmp_path, data, "000000000004.csv: missing column 'is_installed'")


def test_unexpected_column(data, tmp_path, capsys):
    _edit(data / "train" / "000000000001.csv", lambda ls: [ls[0] + "\tbonus"] + [x + "\t1" for x in ls[1:]])
    _expect_error(capsys, tmp_path, data, "000000000001.csv: unexpected column 'bonus'")


def test_non_numeric_value(data, tmp_path, capsys):
    def corrupt(lines):
        fields = lines[5].split("\t")
        fields[44] = "abc"  # f_44
        lines[5] = "\t".join(fields)
        return lines

    _edit(data / "train" / "000000000002.csv", corrupt)
    _expect_error(capsys, tmp_path, data, "000000000002.csv: line 6, column 'f_44': 'abc' is not a number")


def test_duplicate_row_id(data, tmp_path, capsys):
    _edit(data / "train" / "000000000000.csv", lambda ls: ls + [ls[1]])
    _expect_error(capsys, tmp_path, data, "duplicate row id")


def test_labels_in_test_file(data, tmp_path, capsys):
    _edit(data / "test" / "000000000000.csv", lambda ls: [ls[0] + "\tis_installed"] + [x + "\t0" for x in ls[1:]])
    _expect_error(capsys, tmp_path, data, "label column 'is_installed' in the test file")


def test_test_day_in_train(data, tmp_path, capsys):
    def move_day(lines):
        fields = lines[1].split("\t")
        fields[1] = "67"
        lines[1] = "\t".join(fields)
        return lines

    _edit(data / "train" / "000000000007.csv", move_day)
    _expect_error(capsys, tmp_path, data, "day 67 is not a fit or validation day")


def test_empty_file(data, tmp_path, capsys):
    (data / "train" / "000000000009.csv").write_text("")
    _expect_error(capsys, tmp_path, data, "000000000009.csv: empty file")


def test_header_only_file(data, tmp_path, capsys):
    _edit(data / "train" / "000000000009.csv", lambda ls: ls[:1])
    _expect_error(capsys, tmp_path, data, "000000000009.csv: empty file (header only")


def test_failed_ingest_keeps_previous_store(data, tmp_path, capsys):
    assert run_cli(["ingest", data, "--workdir", tmp_path], capsys)[0] == 0
    before = (tmp_path / "features" / "raw" / "train.parquet").read_bytes()
    (data / "train" / "000000000009.csv").write_text("")
    code, _, _ = run_cli(["ingest", data, "--workdir", tmp_path], capsys)
    assert code == 2
    assert (tmp_path / "features" / "raw" / "train.parquet").read_bytes() == before
    assert np.isfinite(pl.read_parquet(tmp_path / "features" / "raw" / "train.parquet")["f_0"].to_numpy()).all()


@pytest.fixture(scope="module")
def clean_store(pristine, tmp_path_factory):
    """The raw store of the untouched data: what every accepted variant must equal exactly."""
    out = tmp_path_factory.mktemp("clean") / "raw"
    ingest(pristine, SHARECHAT, out)
    return {name: pl.read_parquet(out / f"{name}.parquet") for name in ("train", "test")}


def _assert_same_store(clean_store, data, tmp_path):
    result = ingest(data, SHARECHAT, tmp_path / "raw")
    for name, frame in clean_store.items():
        assert_frame_equal(pl.read_parquet(tmp_path / "raw" / f"{name}.parquet"), frame)
    return result


FIRST = "train/000000000000.csv"


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda b: b.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(lambda b: b.replace(b"\n", b"\r"), id="cr-only"),
        pytest.param(lambda b: b"\xef\xbb\xbf" + b, id="byte-order-mark"),
        pytest.param(lambda b: b + b"\n\n\n", id="blank-lines-at-end"),
        pytest.param(lambda b: b + b"\n", id="one-blank-line-at-end"),
        pytest.param(lambda b: b.replace(b"\n", b"\r\n") + b"\r\n\r\n", id="crlf-blank-lines-at-end"),
    ],
)
@pytest.mark.parametrize("compressed", [False, True], ids=["plain", "gzip"])
def test_line_endings_and_marks_are_accepted(variant, compressed, data, tmp_path, clean_store):
    path = data / FIRST
    raw = variant(path.read_bytes())
    path.write_bytes(gzip.compress(raw) if compressed else raw)
    _assert_same_store(clean_store, data, tmp_path)


@pytest.mark.parametrize("name", ["000000000000.csv.gz", "000000000000.CSV", "000000000000.Csv.GZ"])
def test_gzip_and_any_case_suffixes_are_read(name, data, tmp_path, clean_store):
    path = data / FIRST
    raw = path.read_bytes()
    path.unlink()
    (data / "train" / name).write_bytes(gzip.compress(raw) if name.lower().endswith(".gz") else raw)
    assert _assert_same_store(clean_store, data, tmp_path).skipped == ()


def test_skipped_entries_are_listed(data, tmp_path, capsys):
    (data / "train" / "extra.tsv.gz").write_bytes(gzip.compress(b"x"))
    (data / "train" / "more").mkdir()
    code, out, err = run_cli(["ingest", data, "--workdir", tmp_path], capsys)
    assert code == 0, err
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 2, out
    assert "extra.tsv.gz" in skipped[0] and "matches none of train/*.csv" in skipped[0]
    assert "more" in skipped[1] and "a folder" in skipped[1]


def test_broken_symlink_is_refused(data, tmp_path, capsys):
    (data / "train" / "000000000099.csv").symlink_to(tmp_path / "gone.csv")
    _expect_error(capsys, tmp_path, data, "000000000099.csv: broken symbolic link")


def _field(lines, row, col, value):
    fields = lines[row].split("\t")
    fields[int(col.removeprefix("f_"))] = value
    lines[row] = "\t".join(fields)
    return lines


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e400", "-1e400"])
def test_non_finite_numbers_are_refused(value, data, tmp_path, capsys):
    _edit(data / "train" / "000000000002.csv", lambda ls: _field(ls, 7, "f_50", value))
    _expect_error(capsys, tmp_path, data, f"000000000002.csv: line 8, column 'f_50': '{value}' is not a finite number")


def test_non_finite_number_in_a_file_of_integral_floats_is_refused(data, tmp_path, capsys):
    def edit(lines):
        lines = [ln.replace("\t1\t", "\t1.0\t") for ln in lines]
        return _field(lines, 9, "f_44", "inf")

    _edit(data / "train" / "000000000002.csv", edit)
    _expect_error(capsys, tmp_path, data, "000000000002.csv: line 10, column 'f_44': 'inf' is not a finite number")


@pytest.mark.parametrize(("col", "value"), [("f_2", "inf"), ("f_33", "nan"), ("f_3", "1e400"), ("f_4", "2.5")])
def test_non_integers_among_integral_floats_are_refused(col, value, data, tmp_path, capsys):
    def edit(lines):
        lines = [ln.replace("\t0\t", "\t0.0\t") for ln in lines]
        return _field(lines, 4, col, value)

    _edit(data / "train" / "000000000005.csv", edit)
    _expect_error(capsys, tmp_path, data, f"000000000005.csv: line 5, column '{col}': '{value}' is not an integer")


def test_large_integers_beside_integral_floats_stay_exact(data, tmp_path):
    big = 2**62 + 1
    _edit(
        data / "train" / "000000000005.csv",
        lambda ls: _field([ln.replace("\t0\t", "\t0.0\t") for ln in ls], 3, "f_5", str(big)),
    )
    ingest(data, SHARECHAT, tmp_path / "raw")
    assert big in pl.read_parquet(tmp_path / "raw" / "train.parquet")["f_5"].to_list()


def test_streamed_store_equals_the_files_read_whole(pristine, tmp_path):
    ingest(pristine, SHARECHAT, tmp_path / "raw")
    files = sorted((pristine / "train").glob("*.csv"))
    dtypes = schema(SHARECHAT, with_labels=True)
    expected = pl.concat([pl.read_csv(f, separator="\t", schema=dtypes) for f in files])
    columns = [SHARECHAT.id_column, SHARECHAT.day_column, *SHARECHAT.feature_columns, *SHARECHAT.label_columns]
    assert_frame_equal(pl.read_parquet(tmp_path / "raw" / "train.parquet"), expected.select(columns))
    assert pq.ParquetFile(tmp_path / "raw" / "train.parquet").num_row_groups == len(files)


def test_dictionary_only_for_columns_with_few_distinct_values(data, tmp_path):
    frame = pl.DataFrame({"id": np.arange(1000), "flag": np.arange(1000) % 2, "few": np.arange(1000) % 100})
    assert dictionary_columns(frame) == ["flag", "few"]  # 100 distinct of 1000 rows is the share's edge
    ingest(data, SHARECHAT, tmp_path / "raw")
    meta = pq.ParquetFile(tmp_path / "raw" / "train.parquet").metadata.row_group(0)
    encodings = {meta.column(i).path_in_schema: meta.column(i).encodings for i in range(meta.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings[SHARECHAT.id_column])
    assert any("DICTIONARY" in e for e in encodings[SHARECHAT.binary[0]])
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs[SHARECHAT.id_column] == codecs[SHARECHAT.binary[0]] == "ZSTD"
    floats = frame.with_columns(smooth=np.linspace(0, 1, 1000), steps=np.arange(1000) % 3 / 2)
    assert compression(floats, dictionary_columns(floats)) == {
        "id": "zstd",
        "flag": "zstd",
        "few": "zstd",
        "smooth": "none",
        "steps": "zstd",
    }


def test_fingerprint_is_the_digest_of_the_written_files(data, tmp_path):
    """The fingerprint hashed while the files grow equals one read of the finished files (train, then test)."""
    raw = tmp_path / "raw"
    ingest(data, SHARECHAT, raw)
    digest = hashlib.sha256()
    for name in ("train.parquet", "test.parquet"):
        digest.update((raw / name).read_bytes())
    assert json.loads((raw / "manifest.json").read_text())["fingerprint"] == digest.hexdigest()[:32]
