import json

import numpy as np
import polars as pl
import polars.testing
import pyarrow.parquet as pq
import pytest

from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import FEATURE_CODEC, _codecs, _write_groups, build
from gbmcvr.fe.spec import feature_spec
from tests.factories import run_cli, tiny_profile, tiny_raw

SPEC = {
    "clean": {"fill_missing": 0.0},
    "date": {"cycle": 7},
    "cross": {"pairs": [["a", "b"], ["day_mod_7", "c"]]},
    "count": {"columns": ["a", "x_a_b"], "window": "plan"},
    "group": {"pairs": [["c", "x"]], "stats": ["mean", "zscore"], "scope": "plan"},
    "target": {
        "columns": ["a", "x_a_b"],
        "targets": ["is_installed", "is_like", "install_given_like"],
        "stats": ["mean", "var"],
        "n_min": 20,
        "folds": 3,
    },
}


@pytest.fixture
def tiny(tmp_path):
    raw, profile = tiny_raw(tmp_path)
    return tmp_path, raw, profile


def _build(root, raw, profile, spec=SPEC, plan="validate", **kw):
    return build(raw, profile, feature_spec(spec, profile, "test"), "t", plan, root / "features", **kw)


def _read(root, plan, split):
    return pl.read_parquet(root / "features" / "t" / plan / f"{split}.parquet")


def test_hand_computed_families(tiny):
    root, raw, profile = tiny
    _build(root, raw, profile)
    train = pl.read_parquet(raw / "train.parquet")
    fit, valid = _read(root, "validate", "fit"), _read(root, "validate", "valid")
    assert fit.height == train.filter(pl.col("day") <= 3).height and valid["day"].unique().to_list() == [4]
    row = fit.row(0, named=True)
    src = train.filter(pl.col("id") == row["id"]).row(0, named=True)
    assert row["x"] == round(src["x"] / 0.5)  # base value 0.5
    assert row["day_mod_7"] == src["day"] % 7
    codes = sorted(train["a"].unique().to_list())
    assert row["a"] == codes.index(src["a"])  # dense code in the sorted vocabulary
    every = pl.concat([train.drop("click", "install"), pl.read_parquet(raw / "test.parquet")])
    assert row["cnt_a"] == every.filter(pl.col("a") == src["a"]).height
    group = every.filter(pl.col("c") == src["c"])["x"].to_numpy() / 0.5
    assert np.isclose(row["g_c_x_mean"], group.mean(), rtol=1e-6)
    assert np.isclose(row["g_c_x_zscore"], (row["x"] - group.mean()) / group.std(ddof=1), rtol=1e-5)
    # valid rows are encoded from the whole fit window
    vrow = valid.row(0, named=True)
    vsrc = train.filter(pl.col("id") == vrow["id"]).row(0, named=True)
    window = train.filter(pl.col("day") <= 3)
    same = window.filter(pl.col("a") == vsrc["a"])
    mu = window["install"].mean()
    k = max(20 - same.height, 0)
    expect = (mu * k + same["install"].sum()) / (k + same.height)
    assert np.isclose(vrow["te_a_inst_mean"], expect, rtol=1e-5)
    like = window.filter((pl.col("click") == 1) | (pl.col("install") == 1))
    same_like = like.filter(pl.col("a") == vsrc["a"])
    mu_igl = like["install"].mean()
    k = max(20 - same_like.height, 0)
    assert np.isclose(
        vrow["te_a_igl_mean"], (mu_igl * k + same_like["install"].sum()) / (k + same_like.height), rtol=1e-5
    )
    manifest = json.loads((root / "features" / "t" / "validate" / "manifest.json").read_text())
    roles = {c["name"]: c["role"] for c in manifest["columns"]}
    assert roles["a"] == "categorical" and roles["x_a_b"] == "categorical" and roles["te_a_inst_mean"] == "numeric"
    # plain integer codes for LightGBM under the default categorical handling
    assert not any(c.get("native") for c in manifest["columns"])
    assert roles["install"] == "label" and "recipe" in manifest["columns"][0]
    assert set(manifest["build_seconds"]) >= {"clean+date", "cross", "count", "group", "target", "write"}


def test_missing_filled_and_drop_list(tmp_path):
    raw, profile = tiny_raw(tmp_path)
    train = pl.read_parquet(raw / "train.parquet").with_columns(
        pl.when(pl.col("id") == 100).then(None).otherwise(pl.col("y")).alias("y")
    )
    train.write_parquet(raw / "train.parquet")
    from dataclasses import replace

    profile = replace(profile, drop=("d",))
    build(raw, profile, feature_spec({"clean": {}}, profile, "t"), "t", "validate", tmp_path / "features")
    fit = _read(tmp_path, "validate", "fit")
    assert fit.filter(pl.col("id") == 100)["y"][0] == 0.0
    assert "d" not in fit.columns


def test_leakage_permuting_valid_and_test_labels(tiny):
    root, raw, profile = tiny
    _build(root, raw, profile)
    before = {s: _read(root, "validate", s) for s in ("fit", "valid", "test")}
    train = pl.read_parquet(raw / "train.parquet")
    rng = np.random.default_rng(9)
    is_valid = (train["day"] == 4).to_numpy()
    for col in ("click", "install"):
        values = train[col].to_numpy().copy()
        values[is_valid] = rng.permutation(values[is_valid])
        values[is_valid] = 1 - values[is_valid]
        train = train.with_columns(pl.Series(col, values))
    train.write_parquet(raw / "train.parquet")
    (raw / "manifest.json").write_text('{"fingerprint": "permuted"}')
    _build(root, raw, profile)
    features = [c for c in before["valid"].columns if c not in ("click", "install", "is_like")]
    for split in ("fit", "valid", "test"):
        after = _read(root, "validate", split)
        assert after.select(features).equals(before[split].select(features)), split


def test_crosses_decode_consistently_between_plans(tiny):
    root, raw, profile = tiny
    _build(root, raw, profile, plan="validate")
    _build(root, raw, profile, plan="full")
    vocab = pl.read_parquet(root / "features" / "t" / "vocab" / "x_a_b.parquet").rename(
        {"a": "a_vocab", "b": "b_vocab"}
    )
    raw_test = pl.read_parquet(raw / "test.parquet").select("id", a_raw="a", b_raw="b")
    for plan in ("validate", "full"):
        decoded = _read(root, plan, "test").join(raw_test, on="id").join(vocab, on="x_a_b", how="left")
        assert (decoded["a_vocab"] == decoded["a_raw"]).all() and (decoded["b_vocab"] == decoded["b_raw"]).all()
    joined = (
        _read(root, "validate", "fit")
        .select("id", "x_a_b")
        .join(_read(root, "full", "fit").select("id", "x_a_b"), on="id")
    )
    assert joined.height > 0 and (joined["x_a_b"] == joined["x_a_b_right"]).all()


def test_cache_hit_and_miss(tiny):
    root, raw, profile = tiny
    assert _build(root, raw, profile).rebuilt
    assert not _build(root, raw, profile).rebuilt
    changed = {**SPEC, "count": {"columns": ["a"], "window": "day"}}
    result = _build(root, raw, profile, spec=changed)
    assert result.rebuilt
    assert "cnt_a_day" in _read(root, "validate", "fit").columns


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"count": {"columns": ["zz"]}}, "column 'zz' is not a categorical column"),
        ({"group": {"pairs": [["x", "y"]]}}, "'x' is numerical and cannot be used as a categorical key"),
        ({"group": {"pairs": [["a", "x"]], "stats": ["mean", "mode"]}}, "statistic 'mode' is not one of"),
        ({"target": {"columns": ["a"], "stats": ["entropy"]}}, "statistic 'entropy'"),
        ({"colour": {}}, "unknown feature family 'colour'"),
        ({"target": {"columns": ["a"], "n_min": 0}}, "n_min must be at least 1"),
        ({"target": {"columns": ["a"], "folds": 1}}, "folds must be at least 2"),
        ({"count": {"columns": ["a"], "colour": 1}}, "unknown key 'colour'"),
        ({"novelty": {"keys": [["a", "zz"]]}}, "column 'zz' is not a categorical or entity column"),
        ({"novelty": {"keys": [["a"]], "stats": ["last_day"]}}, "statistic 'last_day' is not one of"),
        ({"lagged": {"keys": ["a"], "windows": [0]}}, "windows must be positive"),
        ({"lagged": {"keys": ["x"]}}, "'x' is numerical"),
        ({"daycount": {"keys": ["a"], "distinct": ["zz"]}}, "column 'zz' is not"),
        ({"categorical": {"native_max": 10, "codes_max": 5}}, "codes_max must be 0"),
    ],
)
def test_bad_feature_config(spec, message):
    with pytest.raises(UserError, match=message):
        feature_spec(spec, tiny_profile(), "cfg")


def test_empty_split_keeps_previous_tables(tiny):
    root, raw, profile = tiny
    _build(root, raw, profile)
    before = _read(root, "validate", "valid")
    from dataclasses import replace

    with pytest.raises(UserError, match="the valid split \\(days 9\\) has no rows"):
        _build(root, raw, replace(profile, valid_day=9), spec={**SPEC, "date": {"cycle": 5}})
    assert _read(root, "validate", "valid").equals(before)


def test_cli_bad_config_exit_code(tmp_path, capsys):
    (tmp_path / "gbmcvr.toml").write_text('[features.count]\ncolumns = ["f_999"]\n')
    code, _, err = run_cli(["features", "--workdir", tmp_path], capsys)
    assert code == 2
    assert "column 'f_999' is not a categorical column of profile 'sharechat2023'" in err


def test_show_default(capsys):
    code, out, _ = run_cli(["features", "--show-default"], capsys)
    assert code == 0 and "[features.target]" in out and 'scheme = "oof"' in out


KEY_SPEC = {  # the declared group `u` (random columns: it identifies no one, so discovery would drop it)
    "entities": "profile",
    "categorical": {"native_max": 4, "codes_max": 5},
    "novelty": {"keys": [["u"], ["a", "c"]]},
    "lagged": {"keys": [["u"], ["u", "c"]], "windows": [1, 2], "n_min": 10},
    "daycount": {"keys": [["u"]], "distinct": ["a", "u"]},
}


def _permute_labels(raw, days, seed=9):
    train = pl.read_parquet(raw / "train.parquet")
    rng = np.random.default_rng(seed)
    rows = train["day"].is_in(days).to_numpy()
    for col in ("click", "install"):
        values = train[col].to_numpy().copy()
        values[rows] = 1 - rng.permutation(values[rows])
        train = train.with_columns(pl.Series(col, values))
    train.write_parquet(raw / "train.parquet")
    (raw / "manifest.json").write_text(f'{{"fingerprint": "permuted-{days}"}}')


@pytest.fixture
def keyed(tmp_path):
    from dataclasses import replace

    raw, profile = tiny_raw(tmp_path, rows_per_day=80)
    return tmp_path, raw, replace(profile, entities={"u": ("x", "d")})


def test_key_families_leak_no_valid_or_test_label(keyed):
    root, raw, profile = keyed
    _build(root, raw, profile, KEY_SPEC)
    before = {s: _read(root, "validate", s) for s in ("fit", "valid", "test")}
    assert any(c.startswith("lr_k_u_c_2d") for c in before["fit"].columns)
    _permute_labels(raw, [4])
    _build(root, raw, profile, KEY_SPEC)
    features = [c for c in before["valid"].columns if c not in ("click", "install", "is_like")]
    for split in ("fit", "valid", "test"):
        assert _read(root, "validate", split).select(features).equals(before[split].select(features)), split


def test_lagged_rates_of_a_day_ignore_labels_of_that_day_and_later(keyed):
    root, raw, profile = keyed
    _build(root, raw, profile, KEY_SPEC)
    lagged = [c for c in _read(root, "validate", "fit").columns if c.startswith("lr_")]
    before = _read(root, "validate", "fit").select("id", "day", *lagged)
    _permute_labels(raw, [2, 3, 4])
    _build(root, raw, profile, KEY_SPEC)
    after = _read(root, "validate", "fit").select("id", "day", *lagged)
    early = pl.col("day") <= 2
    assert after.filter(early).equals(before.filter(early))
    assert not after.filter(pl.col("day") == 3).equals(before.filter(pl.col("day") == 3))


def test_categorical_handling_by_vocabulary_size(keyed):
    root, raw, profile = keyed
    _build(root, raw, profile, KEY_SPEC)
    manifest = json.loads((root / "features" / "t" / "validate" / "manifest.json").read_text())
    native = {c["name"]: c.get("native") for c in manifest["columns"]}
    # vocabularies: a 4, b 6, c 3, d 2, e binary -> b (6 > codes_max 5) leaves the inputs, a/c/d/e native
    assert "b" not in native
    assert [native[c] for c in ("a", "c", "d", "e")] == [True] * 4
    _build(root, raw, profile, {**KEY_SPEC, "categorical": {"native_max": 2}})
    manifest = json.loads((root / "features" / "t" / "validate" / "manifest.json").read_text())
    native = {c["name"]: c.get("native") for c in manifest["columns"]}
    assert [native[c] for c in ("a", "b", "c", "d", "e")] == [False, False, False, True, True]
    cardinality = {c["name"]: c.get("cardinality") for c in manifest["columns"]}
    assert (cardinality["a"], cardinality["b"]) == (4, 6)


def _one_shot(root, raw, profile, spec_table, plan="validate"):
    """The plan's tables as build() made them before it streamed: every row of the plan in one frame, the
    families' tables learned from it, each split attached in one piece (the split tables' columns, in order)."""
    from gbmcvr.fe import clean, entities
    from gbmcvr.fe import pipeline as pipe
    from gbmcvr.fe.dates import date_exprs
    from gbmcvr.fe.family import SPLIT, Context
    from gbmcvr.fe.lookup import Attached, Lookup, key_ranges
    from gbmcvr.fe.spec import cross_name
    from gbmcvr.fe.target import fold_expr

    spec = feature_spec(spec_table, profile, "test")
    profile, spec = pipe.keyed(raw, profile, spec)
    used = pipe._entities_used(spec, profile)
    lf, days = pipe._base_frame(raw, profile, plan)
    lf = entities.with_keys(lf, profile, used) if used else lf
    exprs = [*clean.clean_exprs(profile, spec.clean), fold_expr(profile.id_column, spec.target.folds)]
    base = lf.with_columns(*exprs, **date_exprs(profile.day_column, spec.date)).collect()
    vocab = pipe._vocabularies(
        pipe._scan_raw(raw), profile, spec, root / "features" / "t" / "vocab", pipe.raw_fingerprint(raw)
    )
    cats = list(profile.kept(profile.categorical))
    base = pipe._dense_codes(base, vocab, cats)
    names = [cross_name(p) for p in spec.cross.pairs]
    cross = [
        Lookup(tuple(p), pipe._dense_codes(vocab[n], vocab, [c for c in p if c in cats]), lambda v, n=n: {n: v(n)})
        for p, n in zip(spec.cross.pairs, names, strict=True)
    ]
    keys = list(dict.fromkeys(c for p in spec.cross.pairs for c in p))
    crossed = Attached(cross, key_ranges(base, keys)).select(base.lazy().select(keys), names).collect()
    base = base.hstack(crossed.select(pl.all().cast(pl.Int32)).get_columns())
    ctx = Context(profile, base.lazy(), days)
    families = [cls(getattr(spec, cls.name), profile) for cls in pipe.TABLE_FAMILIES if getattr(spec, cls.name)]
    lookups = [lookup for family in families for lookup in family.lookups(ctx)]
    ranges = key_ranges(base, [k for lookup in lookups for k in lookup.keys])
    out = {}
    for split, split_days in days.items():
        attached = Attached([lk.on_days(profile.day_column, split_days) for lk in lookups if lk.serves(split)], ranges)
        columns = _read(root, plan, split).columns
        out[split] = attached.select(base.filter(pl.col(SPLIT) == split).lazy(), columns).collect()
    return out


def test_large_raw_stores_stream_their_rows(tiny, monkeypatch):
    # above STREAM_ROWS raw rows the build streams (and says so); the tables are those of the in-memory build
    root, raw, profile = tiny
    _build(root, raw, profile, force=True)
    in_memory = {s: _read(root, "validate", s) for s in ("fit", "valid", "test")}
    monkeypatch.setattr("gbmcvr.fe.pipeline.STREAM_ROWS", 10)
    lines = []
    _build(root, raw, profile, force=True, progress=lines.append)
    rows = pl.scan_parquet([raw / "train.parquet", raw / "test.parquet"]).select(pl.len()).collect().item()
    assert f"features: {rows:,} raw rows (over 10): the plan's rows stream through a file" in lines
    for split, frame in in_memory.items():
        pl.testing.assert_frame_equal(_read(root, "validate", split), frame, check_exact=True)


@pytest.mark.parametrize(
    ("plan", "stream", "group_rows"),
    [("validate", True, 1 << 18), ("backtest", True, 37), ("validate", False, 1 << 18), ("validate", False, 37)],
)
def test_streamed_build_equals_the_one_shot_tables(tmp_path, monkeypatch, plan, stream, group_rows):
    # streamed, build() writes the plan's rows once and learns and applies every table from scans of them; held in
    # memory, it attaches each split in batches (row groups): either way its tables are exactly those of the whole
    # plan in one frame
    monkeypatch.setattr("gbmcvr.fe.pipeline.ROW_GROUP_ROWS", group_rows)
    root = tmp_path
    raw, profile = tiny_raw(tmp_path, rows_per_day=80)
    keyed_spec = {
        "categorical": {"native_max": 4, "codes_max": 5},
        "novelty": {"keys": [["a"], ["a", "c"]]},
        "lagged": {"keys": [["a"], ["a", "c"]], "windows": [1, 2], "n_min": 10},
        "daycount": {"keys": [["a"]], "distinct": ["c"]},
    }
    spec = {**SPEC, **keyed_spec}
    _build(root, raw, profile, spec, plan=plan, stream=stream)
    expected = _one_shot(root, raw, profile, spec, plan)
    for split, frame in expected.items():
        pl.testing.assert_frame_equal(_read(root, plan, split), frame, check_exact=True)
    assert not list((root / "features" / "t" / plan).glob("_rows*"))


def test_feature_columns_are_compressed_only_where_it_pays():
    # a column the codec shrinks by COMPRESS_GAIN or more keeps it; random floats, which it cannot shrink, do not
    rng = np.random.default_rng(0)
    n = 1 << 17
    table = pl.DataFrame(
        {
            "repeats": np.repeat(np.arange(8, dtype=np.int32), n // 8),
            "noise": rng.random(n).astype(np.float32),
            "empty": pl.Series([None] * n, dtype=pl.Float32),
        }
    ).to_arrow()
    assert _codecs(table) == {"repeats": FEATURE_CODEC, "noise": "none", "empty": FEATURE_CODEC}


def test_feature_tables_are_dictionary_encoded_and_noise_falls_back_to_plain(tmp_path):
    # a rate repeats one value per category: dictionary pages; continuous noise overflows the dictionary page and
    # falls back to plain values, so its file is no larger than plain by more than the one page it tried
    rng = np.random.default_rng(1)
    n = 1 << 18
    rates = rng.random(300).astype(np.float32)
    table = pl.DataFrame({"rate": rates[rng.integers(0, 300, n)], "noise": rng.random(n).astype(np.float32)})
    path = tmp_path / "t.parquet"
    assert _write_groups([table.to_arrow()], path) == n
    chunks = {c.path_in_schema: c for c in (pq.ParquetFile(path).metadata.row_group(0).column(i) for i in range(2))}
    assert chunks["rate"].has_dictionary_page and "RLE_DICTIONARY" in chunks["rate"].encodings
    assert chunks["rate"].total_compressed_size < 0.3 * 4 * n  # 9 bits a value for 300 values, against 32 plain
    assert 4 * n < chunks["noise"].total_compressed_size < 1.15 * 4 * n
    pl.testing.assert_frame_equal(pl.read_parquet(path), table, check_exact=True)


@pytest.mark.parametrize(("stream", "which"), [(False, "sample"), (True, "sample"), (True, "one day")])
def test_fit_ids_write_those_fit_rows_with_the_values_of_the_whole_build(tiny, monkeypatch, stream, which):
    # the per-key tables still learn from every fit row: the kept rows are exactly those rows of the full build
    # (one day's ids leave whole streamed row groups empty)
    root, raw, profile = tiny
    monkeypatch.setattr("gbmcvr.fe.pipeline.ROW_GROUP_ROWS", 37)
    _build(root, raw, profile, force=True, stream=stream)
    full = {s: _read(root, "validate", s) for s in ("fit", "valid", "test")}
    fit = full["fit"]
    ids = fit["id"].sample(fraction=0.3, seed=1) if which == "sample" else fit.filter(pl.col("day") == 2)["id"]
    lines = []
    result = _build(root, raw, profile, stream=stream, fit_ids=ids, progress=lines.append)
    assert result.rebuilt  # other kept rows, another recipe: not the cached full build
    kept = _read(root, "validate", "fit")
    polars.testing.assert_frame_equal(kept, full["fit"].filter(pl.col("id").is_in(ids.implode())), check_exact=True)
    for split in ("valid", "test"):
        polars.testing.assert_frame_equal(_read(root, "validate", split), full[split], check_exact=True)
    manifest = json.loads((root / "features" / "t" / "validate" / "manifest.json").read_text())
    assert manifest["rows"]["fit"] == len(ids) == manifest["splits"]["fit"]["rows"]
    assert manifest["plan_rows"]["fit"] == full["fit"].height
    assert f"features: wrote fit.parquet ({len(ids):,} of {full['fit'].height:,} rows)" in lines


def test_fit_ids_that_are_not_fit_rows_are_refused(tiny):
    root, raw, profile = tiny
    valid_ids = pl.read_parquet(raw / "train.parquet").filter(pl.col("day") == 4)["id"]
    with pytest.raises(ValueError, match=r"0 of the 60 fit ids to keep are fit rows of the plan"):
        _build(root, raw, profile, fit_ids=valid_ids)
    assert not (root / "features" / "t" / "validate").exists()
