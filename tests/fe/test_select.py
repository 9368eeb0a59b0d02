import json
import tomllib
from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from gbmcvr.data.profile import SHARECHAT
from gbmcvr.fe.pipeline import build
from gbmcvr.fe.select import (
    CANDIDATE_SET,
    PLAN,
    Choice,
    SelectOptions,
    bounded,
    candidate_raw,
    chosen_raw,
    closure,
    key_shares,
    raw_proxy_rows,
    rehearsal_build,
    report_markdown,
    requirements,
    run_selection,
    toml_text,
)
from gbmcvr.fe.spec import feature_spec
from gbmcvr.rehearsal import pooled_gain
from gbmcvr.tables import load_tables
from tests.factories import tiny_raw

OPTS = SelectOptions(rounds=15, seed=3, rehearsal_days=3, weighting="density")


@pytest.fixture
def setup(tmp_path):
    raw, profile = tiny_raw(tmp_path, rows_per_day=500)
    # a learnable signal, so candidates differ in score
    train = pl.read_parquet(raw / "train.parquet")
    rng = np.random.default_rng(5)
    p = 0.2 + 0.5 * (train["a"] == 7).to_numpy() + 0.2 * (train["x"].to_numpy() > 1)
    train = train.with_columns(pl.Series("install", (rng.random(train.height) < p).astype(np.int8)))
    train.write_parquet(raw / "train.parquet")
    return tmp_path, raw, replace(profile, entities={"u": ("x", "d")})


def _select(root, raw, profile, opts=OPTS):
    raw_spec = candidate_raw(profile, "profile")  # the declared `u` (random columns: discovery would drop it)
    build(raw, profile, feature_spec(rehearsal_build(raw_spec), profile, "t"), CANDIDATE_SET, PLAN, root / "features")
    return run_selection(load_tables(root / "features", CANDIDATE_SET, PLAN), opts, requirements(raw_spec))


def test_selection_is_deterministic_and_blind_to_the_holdout_day(setup):
    root, raw, profile = setup
    first = _select(root, raw, profile)
    assert len(first.steps) > 5 and first.holdout["selected set"]["logloss"] > 0
    assert first.rehearsal["weighting"]["method"] == "density" and first.rehearsal["days"] == {"2": 500, "3": 500}
    again = _select(root, raw, profile)
    assert again.choice == first.choice and again.steps == first.steps
    # permute the labels of the backtest test day (day 4 = the profile's validation day)
    train = pl.read_parquet(raw / "train.parquet")
    day4 = (train["day"] == 4).to_numpy()
    rng = np.random.default_rng(1)
    for col in ("click", "install"):
        values = train[col].to_numpy().copy()
        values[day4] = 1 - rng.permutation(values[day4])
        train = train.with_columns(pl.Series(col, values))
    train.write_parquet(raw / "train.parquet")
    (raw / "manifest.json").write_text('{"fingerprint": "permuted-day-4"}')
    permuted = _select(root, raw, profile)
    assert permuted.choice == first.choice and permuted.steps == first.steps
    assert permuted.holdout["selected set"] != first.holdout["selected set"]


def test_candidate_tables_of_the_proxy_rows_select_as_the_full_tables_do(setup):
    # `gbmcvr select` writes only the fit rows its proxies read (a sample and the rehearsal days): the search,
    # its per-row losses and the holdout are those of the full tables
    root, raw, profile = setup
    opts = replace(OPTS, proxy_rows=700, max_fits=8)
    full = _select(root, raw, profile, opts)
    rows = raw_proxy_rows(raw, profile, opts)
    fit_days = pl.read_parquet(raw / "train.parquet").filter(pl.col("day") < 3)
    assert len(rows.sample) == 700 and rows.inside == (2,) and len(rows.kept) < fit_days.height
    raw_spec = candidate_raw(profile, "profile")
    spec = feature_spec(rehearsal_build(raw_spec), profile, "t")
    build(raw, profile, spec, CANDIDATE_SET, PLAN, root / "features", fit_ids=rows.kept)
    tables = load_tables(root / "features", CANDIDATE_SET, PLAN)
    assert tables.splits["fit"].height == len(rows.kept)
    kept = run_selection(tables, opts, requirements(raw_spec), rows=rows)
    assert kept.choice == full.choice and kept.steps == full.steps and kept.holdout == full.holdout


def test_chosen_set_round_trips_through_toml(setup):
    _, _, profile = setup
    candidates = candidate_raw(profile)
    raw = chosen_raw(candidates, Choice(("count", "lagged"), "codes"))
    parsed = tomllib.loads(toml_text(raw, "chosen\nby a test"))
    spec = feature_spec(parsed, profile, "round trip")
    assert spec.lagged is not None and spec.count is not None and spec.target is None
    assert spec.categorical.native_max == 1 and spec.lagged.keys[0] == ("u",)


def test_requirements_keep_built_columns_buildable():
    candidates = {
        "date": {},
        "cross": {"pairs": [["day_mod_7", "a"]]},
        "target": {"columns": ["a", "x_day_mod_7_a"]},
        "count": {"columns": ["a"]},
    }
    requires = requirements(candidates)
    assert requires["cross"] == {"date"} and requires["target"] == {"cross", "date"} and requires["count"] == set()
    order = ("date", "cross", "count", "target")
    assert closure({"target"}, requires, order) == ("date", "cross", "target")


def test_select_command_writes_a_feature_set_the_pipeline_builds(small_work, tmp_path, capsys):
    from gbmcvr.workdir import Workdir
    from tests.factories import run_cli

    wd, _, _ = small_work
    own = Workdir(tmp_path / "w")
    (own.root / "features").mkdir(parents=True)
    (own.root / "features" / "raw").symlink_to(wd.raw)
    code, out, err = run_cli(["select", "--rounds", "10", "--max-fits", "6", "--workdir", own.root], capsys)
    assert code == 0, err
    chosen = tomllib.loads((own.features / "selected.toml").read_text())
    assert "clean" in chosen and "categorical" in chosen
    assert (own.features / "selected-selection" / "report.md").is_file()
    code, out, err = run_cli(["features", "--set", "selected", "--workdir", own.root], capsys)
    assert code == 0, err
    manifest = json.loads((own.features / "selected" / "validate" / "manifest.json").read_text())
    built = {c["family"] for c in manifest["columns"]}
    assert set(chosen) - {"clean", "categorical"} <= built
    from gbmcvr.config import PipelineConfig
    from gbmcvr.context import Context
    from gbmcvr.pipeline import SELECTED, _selected

    steps: dict[str, str] = {}
    cfg = PipelineConfig(selection=SelectOptions(rounds=10, max_fits=6))  # the options the command ran with
    assert _selected(Context(own, cfg), steps).feature_set == SELECTED and steps == {"select": "current"}
    code, _, err = run_cli(["select", "--rounds", "0", "--workdir", own.root], capsys)
    assert code == 2 and "--rounds and --max-fits must be at least 1" in err


class _FakeProxy:
    """Per-row losses by family set: `entity_target` helps by a noise-sized amount, `lagged` by a clear one."""

    def __init__(self, rng) -> None:
        self.fits = 0
        self.base = rng.uniform(0.2, 0.6, 5000)
        self.noise = rng.normal(0, 0.05, 5000)
        self.days = np.repeat([1, 2, 3], [1500, 1500, 2000])
        self.count_cost = 0.0

    def gain(self, before, after):
        return pooled_gain(before, after, self.days)

    def score(self, choice):
        self.fits += 1
        losses = self.base.copy()
        if "entity_target" in choice.families:
            losses = losses - 0.0005 + self.noise  # mean gain 0.0005, SE ~0.0007: noise
        if "lagged" in choice.families:
            losses = losses - 0.01  # every row better: many standard errors
        if "count" not in choice.families:
            losses = losses - self.count_cost  # what dropping the default `count` family gains
        if "group" not in choice.families:
            losses = losses + 0.0005 * self.noise  # dropping `group` changes nothing beyond noise
        return losses


def test_a_family_that_wins_by_less_than_two_standard_errors_is_not_taken() -> None:
    import numpy as np

    from gbmcvr.fe.select import DEFAULT_ON, SelectOptions, search

    families = (*DEFAULT_ON, "entity_target", "lagged")
    selection = search(_FakeProxy(np.random.default_rng(0)), families, {}, SelectOptions(max_fits=30))
    assert "lagged" in selection.choice.families and "entity_target" not in selection.choice.families
    noise = next(s for s in selection.steps if s["step"] == "add entity_target")
    assert not noise["kept"] and abs(noise["gain"]) < 2 * noise["se"]


def test_each_rehearsal_day_is_scored_by_a_proxy_fitted_on_earlier_days_only(setup, monkeypatch):
    """Backtest plan of the tiny profile: fit days 1-2, valid day 3; rehearsal days 2 and 3 (day 1 has no earlier
    day). Every proxy fit for day d sees sampled rows of days < d only; per-day gains are reported."""
    from gbmcvr.fe import select

    root, raw, profile = setup
    seen: list[tuple[int, int]] = []
    train = select.Proxy.train

    def recording(self, choice, rows):
        seen.append((int(rows["day"].max()), rows.height))
        return train(self, choice, rows)

    monkeypatch.setattr(select.Proxy, "train", recording)
    opts = SelectOptions(rounds=5, seed=3, rehearsal_days=3, max_fits=4)
    chosen = _select(root, raw, profile, opts)
    search_fits = seen[: 2 * 4]  # two rehearsal days per candidate; the holdout's fits come after
    assert [day for day, _ in search_fits] == [1, 2] * 4
    assert all(n == 500 * day for day, n in search_fits)  # all sampled rows of the earlier days
    assert [day for day, _ in seen[8:]] == [2, 2, 2]  # holdout: raw, default, selected on the whole sample
    for step in chosen.steps[1:]:
        assert list(step["per_day"]) == ["2", "3"]
        assert np.isclose(step["gain"], np.mean(list(step["per_day"].values())))  # equal days, no weights
    text = report_markdown(chosen, "t")
    assert "| day 2 | day 3 | kept |" in text and f"{chosen.steps[1]['per_day']['3']:+.6f}" in text


def test_rehearsal_build_makes_label_encodings_use_earlier_days_only():
    built = rehearsal_build({"target": {"columns": ["a"]}, "other": {"scheme": "oof"}, "count": {"columns": ["a"]}})
    assert built["target"]["scheme"] == "past_days" and built["other"]["scheme"] == "past_days"
    assert built["count"] == {"columns": ["a"]}


def test_keys_nearly_unique_per_row_leave_the_keyed_families() -> None:
    profile = SHARECHAT
    rows = pl.DataFrame(
        {c: [i % 3 for i in range(10)] for c in profile.entities["item"]}
        | {c: list(range(10)) for c in profile.entities["user"]}
        | {c: [i % 2 for i in range(10)] for c in profile.categorical}
    )
    candidates = candidate_raw(profile)
    shares = key_shares(rows.lazy(), candidates, profile)
    assert shares[("user",)] == 1.0 and shares[("item",)] == 0.3
    assert shares[("user", candidates["count"]["columns"][0])] == 1.0
    kept, why = bounded(candidates, shares)
    for family in ("novelty", "lagged", "daycount"):
        assert ["item"] in kept[family]["keys"] and ["user"] not in kept[family]["keys"]
    assert all("user" not in k for k in kept["lagged"]["keys"])
    assert kept["entity_target"]["columns"] == ["item"]
    assert why[0].startswith(
        "key (user) left out of novelty, lagged, daycount, daycount's distinct counts, entity_target: 100%"
    )
    assert "user" in candidates["daycount"]["distinct"] and "user" not in kept["daycount"]["distinct"]
    assert "item" in kept["daycount"]["distinct"]
    assert candidates["novelty"]["keys"] != kept["novelty"]["keys"]  # the input is not changed
    only_user = {"novelty": {"keys": [["user"]]}}
    kept, why = bounded(only_user, {("user",): 0.9})
    assert "novelty" not in kept and why[-1] == "family novelty left out: every candidate key is nearly unique per row"


def test_the_default_set_stays_unless_leaving_it_wins_by_two_standard_errors() -> None:
    """A default family whose removal changes nothing beyond noise stays; one whose removal wins clearly goes."""
    from gbmcvr.fe.select import DEFAULT_ON, search

    families = (*DEFAULT_ON, "entity_target", "lagged")
    kept = search(_FakeProxy(np.random.default_rng(1)), families, {}, SelectOptions(max_fits=30))
    assert set(DEFAULT_ON) <= set(kept.choice.families)
    drop_group = next(s for s in kept.steps if s["step"] == "drop group")
    assert not drop_group["kept"] and abs(drop_group["gain"]) < 2 * drop_group["se"]
    proxy = _FakeProxy(np.random.default_rng(1))
    proxy.count_cost = 0.01
    dropped = search(proxy, families, {}, SelectOptions(max_fits=30))
    assert "count" not in dropped.choice.families and "group" in dropped.choice.families


def test_the_proxy_uses_the_threads_the_options_give(monkeypatch) -> None:
    """`[select] threads` reaches the proxy's and the density weights' LightGBM (0: every core)."""
    from types import SimpleNamespace

    from gbmcvr.fe import select

    seen: list[int] = []
    monkeypatch.setattr(select.lgb, "train", lambda params, *a, **k: seen.append(params["num_threads"]))
    rows = pl.DataFrame({"a": [0.0, 1.0, 2.0, 3.0], "y": [0, 1, 0, 1]})
    for threads in (1, 0):
        proxy = SimpleNamespace(columns=lambda _: (["a"], []), label="y", opts=SelectOptions(threads=threads))
        select.Proxy.train(proxy, Choice((), "codes"), rows)
    assert seen == [1, 0]
    # the density weights toward the holdout day use them too (above 50k rows; below, one thread)
    from gbmcvr import rehearsal

    class _Half:
        def predict(self, x):
            return np.full(len(x), 0.5)

    used: list[int] = []
    monkeypatch.setattr(rehearsal.lgb, "train", lambda params, *a, **k: used.append(params["num_threads"]) or _Half())
    big, small = pl.DataFrame({"a": np.arange(60_000.0)}), pl.DataFrame({"a": np.arange(100.0)})
    rehearsal.density_weights(big, big, ["a"], seed=0, threads=1)
    rehearsal.density_weights(small, small, ["a"], seed=0, threads=0)
    assert used == [1, 1, 1, 1]
    rehearsal.density_weights(big, big, ["a"], seed=0, threads=0)
    assert used[-2:] == [0, 0]
