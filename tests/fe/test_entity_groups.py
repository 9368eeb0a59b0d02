"""Entity groups of the key families: discovered once per raw store (or the profile's), in the recipe hash, and the
entity target encoding checked against a naive loop and for leaks."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from gbmcvr.data.ingest import ingest
from gbmcvr.data.profile import SHARECHAT
from gbmcvr.data.synth import write_synth
from gbmcvr.errors import UserError
from gbmcvr.fe import entity_groups
from gbmcvr.fe.pipeline import build, stale_reason
from gbmcvr.fe.select import Choice, candidate_raw, chosen_raw, toml_text
from gbmcvr.fe.spec import feature_spec
from gbmcvr.fe.target import fold_expr
from tests.factories import tiny_raw

PLANTED = ("f_24", "f_25", "f_71", "f_72")
DAYCOUNT = {"daycount": {"keys": [["user"]]}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A raw store of a small synth world whose users live in PLANTED, not in the profile's f_43..f_54."""
    root = tmp_path_factory.mktemp("planted")
    write_synth(root / "data", 0.003, 2, user_columns=PLANTED)
    ingest(root / "data", SHARECHAT, root / "raw")
    return root, root / "raw"


def _build(root, raw, profile, table, name="t", **kw):
    spec = feature_spec(table, profile, "test")
    return build(raw, profile, spec, name, "validate", root / "features", **kw), spec


def _manifest(result):
    return json.loads((result.out / "manifest.json").read_text())


def test_features_of_a_planted_world_key_on_the_planted_columns(planted):
    root, raw = planted
    lines: list[str] = []
    result, _ = _build(root, raw, SHARECHAT, DAYCOUNT, progress=lines.append)
    assert _manifest(result)["entities"]["user"] == list(PLANTED)
    summary = next(line for line in lines if line.startswith("entities: discovered"))
    assert f"user = {', '.join(PLANTED)}" in summary
    assert "overruled the profile's user (f_43" in summary and "identifies no one" in summary
    # the same-day row count of each row's user is the count of rows sharing the planted values that day
    rows = pl.concat(
        [pl.read_parquet(raw / "train.parquet"), pl.read_parquet(raw / "test.parquet")], how="diagonal_relaxed"
    )
    expected = rows.select(SHARECHAT.id_column, pl.len().over(SHARECHAT.day_column, *PLANTED).alias("expected"))
    for split in ("fit", "valid", "test"):
        table = pl.read_parquet(result.out / f"{split}.parquet", columns=[SHARECHAT.id_column, "dc_k_user_rows"])
        joined = table.join(expected, on=SHARECHAT.id_column)
        assert joined.height == table.height > 0
        assert (joined["dc_k_user_rows"] == joined["expected"]).all(), split


def test_discovery_is_stored_once_per_raw_store_and_reads_no_label(planted):
    root, raw = planted
    record = json.loads((raw / entity_groups.FILE).read_text())
    assert record["groups"]["user"] == list(PLANTED) and record["key"]["fingerprint"]
    sample = entity_groups.sample_raw(raw, SHARECHAT, rows=5_000)
    assert not set(SHARECHAT.labels) & set(sample.columns)
    assert sample.equals(entity_groups.sample_raw(raw, SHARECHAT, rows=5_000))  # seeded
    lines: list[str] = []
    entity_groups.resolve(raw, SHARECHAT, "discovered", record["key"]["fingerprint"], lines.append)
    assert not any("discovering" in line for line in lines)  # read back, not searched again


def test_entities_profile_keeps_the_declared_groups(planted):
    root, raw = planted
    result, _ = _build(root, raw, SHARECHAT, {**DAYCOUNT, "entities": "profile"}, name="declared")
    assert _manifest(result)["entities"]["user"] == list(SHARECHAT.entities["user"])


def test_other_groups_make_the_tables_stale(planted, tmp_path):
    root, raw = planted
    result, spec = _build(root, raw, SHARECHAT, DAYCOUNT, name="stale")
    manifest = _manifest(result)
    assert stale_reason(manifest, raw, SHARECHAT, spec) is None
    record = json.loads((raw / entity_groups.FILE).read_text())
    try:  # the stored discovery says another group is the user
        (raw / entity_groups.FILE).write_text(
            json.dumps({**record, "groups": {**record["groups"], "user": ["f_24", "f_25"]}})
        )
        assert stale_reason(manifest, raw, SHARECHAT, spec) == "the feature set's config changed since they were built"
    finally:
        (raw / entity_groups.FILE).write_text(json.dumps(record))
    # with the declared groups, another declaration is another recipe
    declared = feature_spec({**DAYCOUNT, "entities": "profile"}, SHARECHAT, "test")
    result = build(raw, SHARECHAT, declared, "stale2", "validate", tmp_path)
    other = replace(SHARECHAT, entities={**SHARECHAT.entities, "user": SHARECHAT.entities["user"][:6]})
    assert stale_reason(_manifest(result), raw, SHARECHAT, declared) is None
    assert stale_reason(_manifest(result), raw, other, declared) is not None


def test_over_entities_keys_on_every_group_discovery_finds(planted):
    """`over_entities` (the default set's novelty and day counts) builds exactly what naming each discovered
    group by hand builds, and names the groups in the manifest."""
    root, raw = planted
    implicit = {
        "novelty": {"keys": [["f_2"]], "over_entities": True},
        "daycount": {"keys": [["f_2"]], "distinct": ["f_4"], "over_entities": True},
    }
    a, spec = _build(root, raw, SHARECHAT, implicit, name="implicit")
    record = json.loads((raw / entity_groups.FILE).read_text())
    names = [[name] for name in record["groups"]]
    assert ["user"] in names
    explicit = {
        "novelty": {"keys": [*names, ["f_2"]]},
        "daycount": {"keys": [*names, ["f_2"]], "distinct": [*(n[0] for n in names), "f_4"]},
    }
    b, _ = _build(root, raw, SHARECHAT, explicit, name="explicit")
    assert set(_manifest(a)["entities"]) == set(record["groups"])
    for split in ("fit", "valid", "test"):
        left, right = pl.read_parquet(a.out / f"{split}.parquet"), pl.read_parquet(b.out / f"{split}.parquet")
        assert "nov_k_user_new_on_day" in left.columns and "dc_k_user_rows" in left.columns
        assert left.equals(right), split
    assert stale_reason(_manifest(a), raw, SHARECHAT, spec) is None


def test_an_entity_name_discovery_does_not_give_is_one_line(planted):
    root, raw = planted
    spec = feature_spec({"novelty": {"keys": [["entity_7"]]}}, SHARECHAT, "test")  # a name discovery may give
    with pytest.raises(UserError, match=r"entity 'entity_7' names no group of .*user = f_24, f_25"):
        build(raw, SHARECHAT, spec, "bad", "validate", root / "features")
    with pytest.raises(UserError, match="'entity_x' is not a categorical or entity column"):
        feature_spec({"novelty": {"keys": [["entity_x"]]}}, SHARECHAT, "test")
    with pytest.raises(UserError, match="entities 'found' is not one of discovered, profile"):
        feature_spec({"entities": "found"}, SHARECHAT, "test")


def test_select_candidates_use_the_groups_given_and_keep_their_source():
    keyed = replace(SHARECHAT, entities={"user": PLANTED, "item": ("f_6", "f_4"), "entity_2": ("f_10", "f_11")})
    candidates = candidate_raw(keyed, "profile")
    assert candidates["entity_target"]["columns"] == ["user", "item", "entity_2"]
    assert ["entity_2"] in candidates["novelty"]["keys"] and "entity_2" in candidates["daycount"]["distinct"]
    chosen = chosen_raw(candidates, Choice(("entity_target",), "codes"))
    parsed = tomllib.loads(toml_text(chosen, "a test"))
    spec = feature_spec(parsed, SHARECHAT, "round trip")
    assert spec.entities == "profile" and spec.entity_target.columns == ("user", "item", "entity_2")


ENTITY_TARGET = {"entity_target": {"columns": ["u"], "targets": ["is_installed"], "stats": ["mean"], "n_min": 5}}


@pytest.fixture
def keyed(tmp_path):
    raw, profile = tiny_raw(tmp_path, rows_per_day=80)
    return tmp_path, raw, replace(profile, entities={"u": ("x", "d")})


def _posterior_mean(N: float, n: float, mu: float, n_min: float) -> float:
    strength = max(n_min - N, 0.0)
    return (mu * strength + n) / (strength + N)


def test_entity_target_encoding_matches_a_naive_loop(keyed):
    root, raw, profile = keyed
    table = {**ENTITY_TARGET, "entities": "profile"}
    table["entity_target"] = {**table["entity_target"], "folds": 3}
    result, _ = _build(root, raw, profile, table)
    train = pl.read_parquet(raw / "train.parquet").with_columns(fold_expr("id", 3))
    fit = train.filter(pl.col("day") <= 3)
    keys = list(zip(fit["x"].to_list(), fit["d"].to_list(), strict=True))
    y, folds = fit["install"].to_numpy(), fit["_fold"].to_numpy()
    col = "te_k_u_inst_mean"
    out = pl.read_parquet(result.out / "fit.parquet", columns=["id", col])
    got = dict(zip(out["id"].to_list(), out[col].to_list(), strict=True))
    for i, row_id in enumerate(fit["id"].to_list()):
        other = folds != folds[i]
        same = np.array([k == keys[i] for k in keys]) & other
        want = _posterior_mean(same.sum(), y[same].sum(), y[other].mean(), 5)
        assert got[row_id] == pytest.approx(want, rel=1e-5)
    test = pl.read_parquet(raw / "test.parquet")
    out = pl.read_parquet(result.out / "test.parquet", columns=["id", col])
    got = dict(zip(out["id"].to_list(), out[col].to_list(), strict=True))
    for row in test.iter_rows(named=True):
        same = np.array([k == (row["x"], row["d"]) for k in keys])
        assert got[row["id"]] == pytest.approx(_posterior_mean(same.sum(), y[same].sum(), y.mean(), 5), rel=1e-5)


@pytest.mark.parametrize(
    "table", [{"target": {"columns": ["a", "u"], "n_min": 10}}, {"entity_target": {"columns": ["u"]}}]
)
def test_entity_encodings_leak_no_valid_or_test_label(keyed, table):
    from tests.fe.test_pipeline import _permute_labels

    root, raw, profile = keyed
    table = {**table, "entities": "profile"}
    result, _ = _build(root, raw, profile, table)
    before = {s: pl.read_parquet(result.out / f"{s}.parquet") for s in ("fit", "valid", "test")}
    encoded = [c for c in before["fit"].columns if c.startswith("te_k_u_")]
    assert "te_k_u_inst_mean" in encoded and "te_k_u_like_var" in encoded
    _permute_labels(raw, [4])
    result, _ = _build(root, raw, profile, table)
    for split, frame in before.items():
        features = [c for c in frame.columns if c not in ("click", "install", "is_like")]
        after = pl.read_parquet(result.out / f"{split}.parquet")
        assert after.select(features).equals(frame.select(features)), split
