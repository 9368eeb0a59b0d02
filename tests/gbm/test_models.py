"""Datasets from row batches: the same Datasets as LightGBM builds from the whole frame, a lean fit split read
from its Parquet row groups, and the cached fit Dataset binary (hit, key, unreadable file)."""

import json

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import LIKE
from gbmcvr.gbm import models
from gbmcvr.gbm.models import STAGES, predict_stage, stage_data, train_stage
from gbmcvr.gbm.params import DEFAULT_PARAMS, GbmConfig, lightgbm_errors
from gbmcvr.tables import load_tables

ROWS = {"fit": 1500, "valid": 400, "test": 300}


def split_frame(split: str, rows: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, 6, rows).astype(np.int32)
    num = rng.normal(size=rows).astype(np.float32)
    big = rng.integers(0, 40_000_000, rows).astype(np.int32)  # beyond float32's exact integers
    score = 0.8 * num + (cat == 2) - 1.0
    like = (rng.random(rows) < 1 / (1 + np.exp(-score))).astype(np.int8)
    install = (like & (rng.random(rows) < 0.5)).astype(np.int8)
    frame = pl.DataFrame(
        {
            "row_id": np.arange(rows, dtype=np.int64) + 10_000 * seed,
            "day": np.full(rows, 45, np.int64),
            "f_cat": cat,
            "f_num": num,
            "f_igl_ratio_x_igl_": num * 2,
            "f_big": big,
            "f_rare": np.where(rng.random(rows) < 0.03, rng.normal(size=rows), 0.0).astype(np.float32),
        }
    )
    if split == "test":
        return frame
    return frame.with_columns(
        pl.Series("is_clicked", like, dtype=pl.Int8),
        pl.Series("is_installed", install, dtype=pl.Int8),
        pl.Series(LIKE, like, dtype=pl.Int8),
    )


@pytest.fixture
def plan(tmp_path):
    """A hand-made validate plan: fit.parquet in row groups of 200 rows, a manifest with the columns' roles."""
    plan_dir = tmp_path / "features" / "default" / "validate"
    plan_dir.mkdir(parents=True)
    roles = {"row_id": "id", "day": "day", "f_cat": "categorical", "is_clicked": "label", "is_installed": "label"}
    roles[LIKE] = "label"
    frames = {s: split_frame(s, n, i) for i, (s, n) in enumerate(ROWS.items())}
    for split, frame in frames.items():
        frame.write_parquet(plan_dir / f"{split}.parquet", row_group_size=200)
    columns = [{"name": c, "role": roles.get(c, "numeric")} for c in frames["fit"].columns]
    manifest = {"config_hash": "abc", "raw_fingerprint": "def", "splits": ROWS, "columns": columns}
    (plan_dir / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "features", frames


PARAMS = {**DEFAULT_PARAMS, "min_data_in_leaf": 20, "num_leaves": 7, "seed": 3}
# bins from a sample of 500 of the 1,500 fit rows (drawn with the seed), and a pre-filter that drops f_rare
SAMPLED = {**PARAMS, "bin_construct_sample_cnt": 500, "min_data_in_leaf": 100}


def test_lean_split_keeps_labels_and_batches_read_its_row_groups(plan):
    root, frames = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    assert set(tables.splits["fit"].columns) == {"row_id", "day", "is_clicked", "is_installed", LIKE}
    keep = frames["fit"][LIKE].to_numpy() == 1
    batches = tables.batches("fit", ["f_num", "f_big"], keep)
    assert len(batches) == 8  # 1500 rows in groups of 200
    assert [b.rows for b in batches] == [int(keep[s : s + 200].sum()) for s in range(0, 1500, 200)]
    got = pl.concat([b.load() for b in batches])
    assert got.equals(frames["fit"].filter(pl.Series(keep)).select("f_num", "f_big"))
    assert tables.maxima("fit", ["f_cat", "f_big"]) == [frames["fit"]["f_cat"].max(), frames["fit"]["f_big"].max()]


@pytest.mark.parametrize("decode_rows", [32_768, 64], ids=["whole-groups", "blocks-of-groups"])
@pytest.mark.parametrize("params", [PARAMS, SAMPLED], ids=["all-rows", "sampled"])
@pytest.mark.parametrize("stage", ["e2e", "ts_like", "ts_install"])
def test_batched_datasets_train_the_model_of_the_whole_frame(plan, stage, params, decode_rows, monkeypatch):
    monkeypatch.setattr(models, "DECODE_ROWS", decode_rows)  # 64: each row group decoded in several blocks
    root, frames = plan
    st = STAGES[stage]
    cfg = GbmConfig(dataset_cache=False)
    lean = load_tables(root, "default", "validate", lean=("fit",))
    whole = load_tables(root, "default", "validate")
    # the reference: LightGBM's own Dataset from the whole Polars frame, as before batching
    fit, valid = (f.filter(pl.col(LIKE) == 1) if st.rows == "like" else f for f in (frames["fit"], frames["valid"]))
    features = models.stage_features(whole, st)
    label = LIKE if st.target == "like" else "is_installed"
    ref_train = lgb.Dataset(fit.select(features), label=fit[label].to_numpy(), categorical_feature=["f_cat"])
    ref_valid = lgb.Dataset(valid.select(features), label=valid[label].to_numpy(), reference=ref_train)
    reference = lgb.train(params, ref_train, 15, valid_sets=[ref_valid])
    for tables in (lean, whole):
        model = train_stage(tables, st, params, cfg, lambda _: None, rounds=15)
        assert model.booster.model_to_string() == reference.model_to_string()
        assert model.fit_rows == fit.height


def test_fit_dataset_binary_is_cached_by_tables_stage_and_dataset_params(plan, monkeypatch):
    root, frames = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    cfg = GbmConfig()
    first = train_stage(tables, STAGES["e2e"], PARAMS, cfg, lambda _: None, rounds=10)
    cached = sorted((root / "default" / "validate" / models.CACHE_DIR).iterdir())
    assert len(cached) == 1 and cached[0].stat().st_size > 0

    def no_construction(*args, **kwargs):
        raise AssertionError("the fit Dataset was constructed, not loaded")

    # a rerun loads the binary (only the valid split is still built from its rows) and trains the same model
    original = models._sequences
    monkeypatch.setattr(
        models, "_sequences", lambda t, split, *a: no_construction() if split == "fit" else original(t, split, *a)
    )
    again = train_stage(tables, STAGES["e2e"], {**PARAMS, "num_leaves": 5}, cfg, lambda _: None, rounds=10)
    assert again.booster.num_trees() == 10
    same = train_stage(tables, STAGES["e2e"], PARAMS, cfg, lambda _: None, rounds=10)
    assert same.booster.model_to_string() == first.booster.model_to_string()
    monkeypatch.setattr(models, "_sequences", original)
    # another binning is another Dataset; an unreadable binary is rebuilt
    train_stage(tables, STAGES["e2e"], {**PARAMS, "max_bin": 15}, cfg, lambda _: None, rounds=10)
    assert len(list(cached[0].parent.iterdir())) == 2
    cached[0].write_bytes(b"not a dataset")
    messages = []
    rebuilt = train_stage(tables, STAGES["e2e"], PARAMS, cfg, messages.append, rounds=10)
    assert any("cannot be read" in m for m in messages)
    assert rebuilt.booster.model_to_string() == first.booster.model_to_string()


def test_parameters_refused_by_lightgbm_keep_a_valid_cache(plan):
    """Parameters LightGBM refuses fail the run in one line and never delete a good Dataset binary."""
    root, _ = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    first = train_stage(tables, STAGES["e2e"], PARAMS, GbmConfig(), lambda _: None, rounds=5)
    cached = sorted((root / "default" / "validate" / models.CACHE_DIR).iterdir())
    before = cached[0].read_bytes()
    messages = []
    with pytest.raises(UserError, match="LightGBM refused the parameters: .*bagging_fraction") as info:
        train_stage(tables, STAGES["e2e"], {**PARAMS, "bagging_fraction": 3.0}, GbmConfig(), messages.append, rounds=5)
    assert "\n" not in str(info.value) and " at /" not in str(info.value)
    assert cached[0].read_bytes() == before and not any("cannot be read" in m for m in messages)
    again = train_stage(tables, STAGES["e2e"], PARAMS, GbmConfig(), lambda _: None, rounds=5)
    assert again.booster.model_to_string() == first.booster.model_to_string()


def test_lightgbm_errors_during_training_are_one_line():
    x = np.arange(40, dtype=np.float64).reshape(20, 2)
    with pytest.raises(UserError, match="^LightGBM refused the parameters: .*num_leaves"), lightgbm_errors():
        lgb.train({"num_leaves": 1, "verbosity": -1}, lgb.Dataset(x, label=np.arange(20) % 2), num_boost_round=2)


def test_in_memory_tables_are_never_cached(plan):
    root, _ = plan
    tables = load_tables(root, "default", "validate")
    train_stage(tables, STAGES["e2e"], PARAMS, GbmConfig(), lambda _: None, rounds=5)
    assert not (root / "default" / "validate" / models.CACHE_DIR).exists()


def test_prediction_in_slices_equals_one_call(plan, monkeypatch):
    root, frames = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    model = train_stage(tables, STAGES["e2e"], PARAMS, GbmConfig(dataset_cache=False), lambda _: None, rounds=10)
    whole = model.booster.predict(frames["test"].select(model.features), num_iteration=model.best_iteration)
    monkeypatch.setattr(models, "PREDICT_ROWS", 7)
    assert np.array_equal(predict_stage(model, frames["test"]), whole)
    assert predict_stage(model, frames["test"].head(0)).shape == (0,)


def test_reusable_data_serves_trials_with_other_tree_parameters(plan):
    root, _ = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    cfg = GbmConfig(dataset_cache=False)
    data = stage_data(tables, STAGES["e2e"], PARAMS, cfg, reusable=True)
    for leaves, min_leaf in ((7, 20), (3, 5)):
        trial = {**PARAMS, "num_leaves": leaves, "min_data_in_leaf": min_leaf}
        model = train_stage(tables, STAGES["e2e"], trial, cfg, lambda _: None, rounds=5, data=data)
        assert model.booster.num_trees() == 5


def test_row_wise_asked_for_replaces_the_column_wise_default_and_trains_the_same_trees(plan):
    root, _ = plan
    tables = load_tables(root, "default", "validate", lean=("fit",))
    default = GbmConfig(dataset_cache=False)
    row_wise = GbmConfig(dataset_cache=False, stage_params={"e2e": {"force_row_wise": True}})
    params = {"min_data_in_leaf": 20, "num_leaves": 7}
    col, row = default.params("e2e", 3, params), row_wise.params("e2e", 3, params)
    assert (col["force_col_wise"], row["force_col_wise"], row["force_row_wise"]) == (True, False, True)
    # an export that names both (as an older tuned file may) keeps what it says
    assert default.params("e2e", 3, {"force_row_wise": False, "force_col_wise": True})["force_col_wise"] is True
    trees = [
        train_stage(tables, STAGES["e2e"], p, default, lambda _: None, rounds=15).booster.dump_model()["tree_info"]
        for p in (col, row)
    ]
    assert trees[0] == trees[1]
