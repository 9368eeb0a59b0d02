"""`gbmcvr select`: choose feature families and categorical handling by measurement on several rehearsal days.

Every candidate family is built once (the `candidates` set, backtest plan); a candidate feature set is then a
choice of columns from those tables, scored by a fast proxy LightGBM (fixed parameters, fixed rounds) on
`rehearsal_days` days: the plan's validation day and the last fit days before it. One sample of up to
`proxy_rows` rows is drawn from the whole fit window; for rehearsal day d the proxy fits the sample's rows of
days before d only and scores every row of day d. One candidate table set serves every rehearsal day (the
build is the expensive part), and its fit table holds only the rows the proxies read: the sample and the
rehearsal days (the per-key tables still learn from every fit row). Its label statistics are made time-honest for that: target encodings use
earlier days only (`past_days`) in the candidate tables, because out-of-fold encodings of a fit-window day
hold that same day's (and later days') labels, which would flatter the target family on every rehearsal day
inside the window. The chosen set keeps the scheme it declares. Lagged rates use earlier days by
construction; counts, novelty and day counts are label-free.

A step is decided on the mean paired per-row log-loss difference pooled over the rehearsal days' rows
(optionally weighted by each row's density ratio toward the holdout day's unlabeled rows, `weighting =
"density"`), with a day-clustered standard error (`gbmcvr.rehearsal.pooled_gain`). The search is greedy: the
categorical handling first, then one forward pass (switch each absent family on, keep it if the pooled gain
exceeds `significance` SE), then one backward pass (switch each present family off: a family of the default
set stays off only when that wins by `significance` SE, a family the forward pass added unless the loss rises
by more than that): noise keeps the default set, and of the added families the simpler set. Each pass costs one candidate per family, where a
best-first search costs one per family per step and an Optuna study over ~10 on/off choices needs more trials
than that to beat it.

The backtest plan's test day (the validation day of the profile) is never labelled during the search: its
labels (`test_labels.parquet`) are read only afterwards, to report the chosen set beside the default set and
the raw columns on that honest day; the density weighting reads its rows' features only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from gbmcvr import metrics, rehearsal
from gbmcvr.compat import pyplot
from gbmcvr.data.profile import Profile
from gbmcvr.data.split import TEST_LABELS, plan_days
from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import raw_fingerprint
from gbmcvr.fe.select_options import SelectOptions
from gbmcvr.fe.spec import DAY_CYCLE_COLUMN, FeatureSpec, feature_spec, generic_default
from gbmcvr.tables import FeatureTables
from gbmcvr.tomlfile import read_toml

CANDIDATE_SET = "candidates"
PLAN = "backtest"
SEARCHED = ("date", "cross", "count", "group", "target", "novelty", "lagged", "daycount", "entity_target")
DEFAULT_ON = ("date", "cross", "count", "group", "target")
# categorical handling options: (native_max, codes_max) by vocabulary size
HANDLING = {"native": (20000, 0), "small-native": (8, 0), "codes": (1, 0), "encodings-only": (1, 1000)}
DEFAULT_HANDLING = "codes"
PROXY_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "metric": "binary_logloss",
    "learning_rate": 0.15,
    "num_leaves": 31,
    "min_data_in_leaf": 200,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "max_bin": 63,
    "cat_smooth": 10.0,
    "cat_l2": 10.0,
    "min_data_per_group": 100,
    "verbosity": -1,
    "deterministic": True,
    "force_row_wise": True,
}


@dataclass(frozen=True)
class Choice:
    """A candidate feature set: the families switched on and the categorical handling."""

    families: tuple[str, ...]
    handling: str

    def label(self) -> str:
        return f"{self.handling}: {', '.join(self.families) or 'raw columns'}"


@dataclass
class Selection:
    """The search's outcome: the chosen set, every step's score, and the holdout comparison."""

    choice: Choice
    steps: list[dict[str, Any]] = field(default_factory=list)
    holdout: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    rehearsal: dict[str, Any] = field(default_factory=dict)  # rows per rehearsal day and the weighting


def candidate_raw(profile: Profile, entities: str = "discovered") -> dict[str, Any]:
    """The candidate families as a `[features]` table: the default set plus key families over the entities.

    `profile.entities` are the groups the build will use (`fe/entity_groups.py` resolves them from `entities`,
    which the table carries so that the chosen set is built on the same keys)."""
    if profile.name == "sharechat2023":
        raw = read_toml(Path(str(resources.files("gbmcvr.defaults") / "features_default.toml")))
    else:
        raw = generic_default(profile)
    ents = list(profile.entities)
    cats = list(profile.kept(profile.categorical))
    count_cols = list(raw.get("count", {}).get("columns", cats[:3]))
    keys = [[e] for e in ents] + [[c] for c in count_cols[:3]]
    crossed = [[ents[0], c] for c in count_cols[:1]] if ents else []
    raw["novelty"] = {"keys": keys}
    raw["lagged"] = {"keys": keys + crossed, "windows": [1, 3, 7, 28]}
    raw["daycount"] = {"keys": keys, "distinct": [*ents, *count_cols[:2]]}
    if ents:  # its own family: the search weighs entity encodings apart from the default categorical ones
        raw["entity_target"] = {"columns": ents, "folds": raw.get("target", {}).get("folds", 5)}
    if entities != "discovered":  # not the default: the chosen set carries it
        raw["entities"] = entities
    raw["categorical"] = {"native_max": HANDLING["native"][0]}
    return raw


def rehearsal_build(candidates: dict[str, Any]) -> dict[str, Any]:
    """The candidates as built for the rehearsal: every out-of-fold label encoding (`target`, whose default
    scheme is out-of-fold, and any family declaring scheme "oof") switched to earlier days only, so that no
    rehearsal day inside the fit window carries its own or later days' labels."""

    def honest(family: str, table: Any) -> Any:
        if isinstance(table, dict) and (table.get("scheme") == "oof" or (family == "target" and table)):
            return {**table, "scheme": "past_days"}
        return table

    return {family: honest(family, table) for family, table in candidates.items()}


KEYED = ("novelty", "lagged", "daycount")  # the families whose tables hold one entry per (key, day)
ENTITY_TARGET = "entity_target"  # its encoding tables hold one entry per entity
MAX_KEY_SHARE = 0.5  # a key with more distinct values than this share of rows is nearly unique per row


def key_columns(key: list[str] | tuple[str, ...], profile: Profile) -> list[str]:
    """The raw columns a candidate key names (an entity stands for its group of columns)."""
    return list(dict.fromkeys(c for name in key for c in profile.entities.get(name, (name,))))


def key_shares(raw: pl.LazyFrame, candidates: dict[str, Any], profile: Profile) -> dict[tuple[str, ...], float]:
    """Distinct values of each key of the keyed families as a share of the raw rows (one pass over the rows)."""
    keys = {tuple(k) for family in KEYED for k in candidates.get(family, {}).get("keys", [])}
    keys |= {(c,) for c in candidates.get(ENTITY_TARGET, {}).get("columns", [])}
    if not keys:
        return {}
    exprs = [pl.struct(key_columns(k, profile)).n_unique().alias(str(i)) for i, k in enumerate(keys)]
    row = raw.select(pl.len().alias("rows"), *exprs).collect().row(0, named=True)
    return {k: row[str(i)] / max(row["rows"], 1) for i, k in enumerate(keys)}


def bounded(
    candidates: dict[str, Any], shares: dict[tuple[str, ...], float], limit: float = MAX_KEY_SHARE
) -> tuple[dict[str, Any], list[str]]:
    """The candidates without the keys nearly unique per row, and why each key (or family) was left out: for
    such a key every novelty row is new, every lagged rate is the prior and every day count is 1, while its
    per-(key, day) tables are as large as the data."""
    out, why = dict(candidates), []
    unique = {k for k, share in shares.items() if share > limit}
    for key in sorted(unique):
        families = [f for f in KEYED if list(key) in [list(k) for k in candidates.get(f, {}).get("keys", [])]]
        if len(key) == 1 and key[0] in candidates.get("daycount", {}).get("distinct", []):
            families.append("daycount's distinct counts")
        families += (
            [ENTITY_TARGET] if len(key) == 1 and key[0] in candidates.get(ENTITY_TARGET, {}).get("columns", []) else []
        )
        why.append(
            f"key ({', '.join(key)}) left out of {', '.join(families)}: {shares[key]:.0%} of rows have their own "
            f"value (more than {limit:.0%}, nearly one per row)"
        )
    for family in KEYED:
        if family not in candidates:
            continue
        keys = [k for k in candidates[family]["keys"] if tuple(k) not in unique]
        if keys:
            out[family] = {**candidates[family], "keys": keys}
            if "distinct" in out[family]:  # a distinct count of values unique per row is the row count again
                out[family]["distinct"] = [c for c in out[family]["distinct"] if (c,) not in unique]
        else:
            del out[family]
            why.append(f"family {family} left out: every candidate key is nearly unique per row")
    if ENTITY_TARGET in candidates:
        columns = [c for c in candidates[ENTITY_TARGET]["columns"] if (c,) not in unique]
        if columns:
            out[ENTITY_TARGET] = {**candidates[ENTITY_TARGET], "columns": columns}
        else:
            del out[ENTITY_TARGET]
            why.append(f"family {ENTITY_TARGET} left out: every entity is nearly unique per row")
    return out, why


def candidate_spec(
    raw_dir: Path,
    profile: Profile,
    keyed: Profile,
    entities: str = "discovered",
    progress: Callable[[str], None] = lambda _: None,
) -> tuple[dict[str, Any], FeatureSpec]:
    """The candidate families `select` builds from the raw store in `raw_dir` over the entity groups of `keyed`
    (the profile with the groups the build uses; keys nearly unique per row left out, each with a progress line
    saying why), as a `[features]` table and as a spec."""
    candidates = candidate_raw(keyed, entities)
    check_selectable(profile, candidates)
    raw_fingerprint(raw_dir)  # a missing raw store is named before its rows are read
    rows = pl.scan_parquet(Path(raw_dir) / "train.parquet", glob=False)
    candidates, left_out = bounded(candidates, key_shares(rows, candidates, keyed))
    for line in left_out:
        progress(f"select: {line}")
    return candidates, feature_spec(rehearsal_build(candidates), profile, "candidate families")


def requirements(candidates: dict[str, Any]) -> dict[str, set[str]]:
    """Families each candidate family needs built: crosses need the date cycle when they cross it, and
    every family naming a cross column needs the crosses."""

    def names(value: Any) -> set[str]:
        if isinstance(value, str):
            return {value}
        if isinstance(value, list | tuple):
            return set().union(*(names(v) for v in value)) if value else set()
        if isinstance(value, dict):
            return set().union(*(names(v) for v in value.values())) if value else set()
        return set()

    out: dict[str, set[str]] = {}
    for family in SEARCHED:
        used = names(candidates.get(family, {}))
        need = set()
        if family != "date" and DAY_CYCLE_COLUMN in used:
            need.add("date")
        if family != "cross" and any(n.startswith("x_") for n in used):
            need |= {"cross", *out.get("cross", set())}
        out[family] = need
    return out


def closure(families: set[str], requires: dict[str, set[str]], order: tuple[str, ...]) -> tuple[str, ...]:
    """The families plus everything they need, in search order."""
    on = set(families)
    for family in list(on):
        on |= requires.get(family, set())
    return tuple(f for f in order if f in on)


def chosen_raw(candidates: dict[str, Any], choice: Choice) -> dict[str, Any]:
    """The `[features]` table of a choice: the chosen families' candidate sections and the handling."""
    native_max, codes_max = HANDLING[choice.handling]
    out: dict[str, Any] = {"entities": candidates["entities"]} if "entities" in candidates else {}
    out["clean"] = candidates.get("clean", {})
    out["categorical"] = {"native_max": native_max, "codes_max": codes_max}
    for family in SEARCHED:
        if family in choice.families and family in candidates:
            out[family] = candidates[family]
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return "[" + ", ".join(_toml_value(v) for v in value) + "]"


def toml_text(raw: dict[str, Any], header: str) -> str:
    """A feature set as TOML text (tables of scalars and lists; what `feature_spec` reads back)."""
    lines = [f"# {line}" for line in header.splitlines()]
    scalars = {k: v for k, v in raw.items() if not isinstance(v, dict)}
    if scalars:  # before the first table, where TOML keeps top-level keys
        lines += ["", *(f"{k} = {_toml_value(v)}" for k, v in scalars.items())]
    for section, table in raw.items():
        if isinstance(table, dict):
            lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ProxyRows:
    """The fit rows the proxies read: a seeded `sample` of the fit window (ids, ascending) and every row of the
    fit days that are rehearsal days (`inside`); `kept` is the ids of both, the fit rows the candidate tables
    need to hold."""

    sample: pl.Series
    inside: tuple[int, ...]
    kept: pl.Series


def choose_proxy_rows(
    fit: pl.DataFrame, id_col: str, day_col: str, valid_days: list[int], opts: SelectOptions
) -> ProxyRows:
    """The proxies' fit rows from the id and day of every fit row of the plan (the same from the raw store as from
    full fit tables): up to `proxy_rows` ids sampled from the ascending ids, and the last `rehearsal_days - 1` fit
    days that have an earlier fit day and precede the validation day."""
    ids = fit[id_col].sort()
    sample = ids.sample(opts.proxy_rows, seed=opts.seed).sort() if len(ids) > opts.proxy_rows else ids
    fit_days = sorted(fit[day_col].unique().to_list())
    earlier = [d for d in fit_days[1:] if d < min(valid_days)]
    inside = tuple(earlier[len(earlier) - min(opts.rehearsal_days - 1, len(earlier)) :])
    on_inside = fit.filter(pl.col(day_col).is_in(list(inside)))[id_col]
    return ProxyRows(sample, inside, pl.concat([sample, on_inside]).unique().sort())


def raw_proxy_rows(raw_dir: Path, profile: Profile, opts: SelectOptions) -> ProxyRows:
    """`choose_proxy_rows` of the backtest plan, read from the raw store's ids and days before any table is built."""
    days = plan_days(profile, PLAN)
    fit = (
        pl.scan_parquet(Path(raw_dir) / "train.parquet", glob=False)
        .filter(pl.col(profile.day_column).is_in(list(days["fit"])))
        .select(profile.id_column, profile.day_column)
        .collect()
    )
    return choose_proxy_rows(fit, profile.id_column, profile.day_column, list(days["valid"]), opts)


class Proxy:
    """The fast proxy, scored on the rehearsal days: for each day, fixed-parameter LightGBM on the pooled sample's
    rows of earlier days only, scoring every row of that day.

    One sample of up to `proxy_rows` rows is drawn from the whole fit window; rehearsal day d's proxy fits the
    sample's rows with day < d (never day d or later) and scores all of day d's rows. The rehearsal days are the
    plan's validation day and the last `rehearsal_days - 1` fit days that have an earlier fit day. `rows` says
    which rows those are where the fit table holds only them (`raw_proxy_rows`); else they come from the table.
    """

    def __init__(
        self,
        tables: FeatureTables,
        opts: SelectOptions,
        progress: Callable[[str], None],
        rows: ProxyRows | None = None,
    ) -> None:
        fit = tables.splits["fit"]
        self.day = tables.columns("day")[0]
        valid = tables.splits["valid"]
        if rows is None:
            ids = fit.select(tables.id_column, self.day)
            rows = choose_proxy_rows(ids, tables.id_column, self.day, valid[self.day].unique().to_list(), opts)
        self.fit = fit.filter(pl.col(tables.id_column).is_in(rows.sample.implode())).sort(tables.id_column)
        if self.fit.height != len(rows.sample):
            raise ValueError(f"the fit table holds {self.fit.height:,} of the {len(rows.sample):,} sampled rows")
        self.label = tables.install_label
        self.family = {c["name"]: c["family"] for c in tables.manifest["columns"]}
        self.categorical = set(tables.columns("categorical"))
        self.features = tables.features()
        self.cardinality = {
            c["name"]: c.get("cardinality", 0) for c in tables.manifest["columns"] if c["role"] == "categorical"
        }
        self.rehearsal = [*(fit.filter(pl.col(self.day) == d) for d in rows.inside), valid]
        self.rehearsal_days = [int(frame[self.day][0]) for frame in self.rehearsal]
        self.days = np.concatenate([frame[self.day].to_numpy() for frame in self.rehearsal])
        self.y = np.concatenate([frame[self.label].to_numpy() for frame in self.rehearsal]).astype(np.float64)
        self.weights: np.ndarray | None = None
        self.opts = opts
        self.progress = progress
        self.fits = 0

    def fit_rows(self, day: int) -> pl.DataFrame:
        """The sampled fit rows a rehearsal day's proxy may see: those of earlier days."""
        return self.fit.filter(pl.col(self.day) < day)

    def columns(self, choice: Choice) -> tuple[list[str], list[str]]:
        """Model inputs and the native categoricals among them for a choice."""
        native_max, codes_max = HANDLING[choice.handling]
        on = {"clean", "categorical", "binary", *choice.families}
        cols = [c for c in self.features if self.family.get(c) in on]
        if codes_max:
            cols = [c for c in cols if c not in self.categorical or self.cardinality[c] <= max(codes_max, 2)]
        native = [c for c in cols if c in self.categorical and self.cardinality[c] <= native_max]
        return cols, native

    def train(self, choice: Choice, rows: pl.DataFrame) -> lgb.Booster:
        """The proxy for a choice fitted on `rows`."""
        cols, native = self.columns(choice)
        params = {**PROXY_PARAMS, "seed": self.opts.seed, "num_threads": self.opts.threads}
        data = lgb.Dataset(
            rows.select(cols), label=rows[self.label].to_numpy(), categorical_feature=native, free_raw_data=True
        )
        return lgb.train(params, data, num_boost_round=self.opts.rounds)

    def score(self, choice: Choice) -> np.ndarray:
        """Per-row log loss on every rehearsal day (days in `self.days` order), each day's proxy fitted before it."""
        start = time.perf_counter()
        self.fits += 1
        cols, _ = self.columns(choice)
        parts = []
        for day, frame in zip(self.rehearsal_days, self.rehearsal, strict=True):
            booster = self.train(choice, self.fit_rows(day))
            parts.append(np.clip(booster.predict(frame.select(cols)), metrics.EPS, 1 - metrics.EPS))
        p = np.concatenate(parts)
        losses = -(self.y * np.log(p) + (1 - self.y) * np.log1p(-p))
        per_day = ", ".join(f"{d}: {losses[self.days == d].mean():.5f}" for d in self.rehearsal_days)
        self.progress(
            f"select: candidate {self.fits}/{self.opts.max_fits} {choice.label()} ({len(cols)} columns): "
            f"log loss {losses.mean():.6f} (days {per_day}; {time.perf_counter() - start:.0f}s)"
        )
        return losses

    def gain(self, before: np.ndarray, after: np.ndarray) -> rehearsal.Gain:
        """The pooled (weighted) gain from `before` to `after` with its day-clustered standard error."""
        return rehearsal.pooled_gain(before, after, self.days, self.weights)

    def weigh(self, target: pl.DataFrame) -> rehearsal.Weights:
        """Weight the rehearsal rows by their density ratio toward `target`'s rows (raw feature columns only)."""
        raw = [c for c in self.features if self.family.get(c) in ("clean", "categorical", "binary")]
        rows = pl.concat([frame.select(raw) for frame in self.rehearsal], how="vertical_relaxed")
        found = rehearsal.density_weights(rows, target, raw, self.opts.seed, self.opts.threads)
        self.weights = found.weights
        return found


def search(proxy: Proxy, families: tuple[str, ...], requires: dict[str, set[str]], opts: SelectOptions) -> Selection:
    """Greedy categorical-handling step, one forward pass and one backward pass over the families, each step
    decided on the pooled rehearsal days' rows."""
    start = time.perf_counter()
    current = Choice(closure({f for f in DEFAULT_ON if f in families}, requires, families), DEFAULT_HANDLING)
    best = proxy.score(current)
    steps: list[dict[str, Any]] = [
        {"step": "start (default set)", "choice": current.label(), "logloss": float(best.mean()), "gain": 0.0}
    ]

    def try_step(name: str, candidate: Choice, simpler: bool) -> None:
        """Take a candidate only when it wins by `significance` SE; with `simpler` (dropping a family the search
        added), unless it loses by that much. Noise keeps the default set and the simpler option."""
        nonlocal current, best
        if proxy.fits >= opts.max_fits or candidate == current:
            return
        losses = proxy.score(candidate)
        g = proxy.gain(best, losses)
        kept = g.mean > -opts.significance * g.se if simpler else g.mean > opts.significance * g.se
        steps.append(
            {
                "step": name,
                "choice": candidate.label(),
                "logloss": float(losses.mean()),
                "gain": g.mean,
                "se": g.se,
                "per_day": {str(day): gain for day, gain in g.per_day.items()},
                "tau": float(np.sqrt(g.tau2)),
                "kept": kept,
            }
        )
        if kept:
            current, best = candidate, losses

    for handling in HANDLING:
        if handling != current.handling:
            try_step(f"handling {handling}", Choice(current.families, handling), simpler=False)
    for family in families:
        if family not in current.families:
            on = closure({*current.families, family}, requires, families)
            try_step(
                "add " + ", ".join(f for f in on if f not in current.families),
                Choice(on, current.handling),
                simpler=False,
            )
    for family in families:
        if family in current.families:
            # dropping a family drops the families that need it
            rest = closure(
                {f for f in current.families if f != family and family not in requires.get(f, set())},
                requires,
                families,
            )
            dropped = [f for f in current.families if f not in rest]
            # leaving the default set needs evidence either way: a default family goes only when dropping it
            # wins by `significance` SE; a family the forward pass added goes unless dropping it loses by that
            try_step(
                f"drop {', '.join(dropped)}",
                Choice(rest, current.handling),
                simpler=not any(f in DEFAULT_ON for f in dropped),
            )
    return Selection(current, steps, {}, time.perf_counter() - start)


def holdout(tables: FeatureTables, proxy: Proxy, selection: Selection) -> dict[str, Any]:
    """Day-level log loss of raw columns, the default set and the chosen set on the backtest test day.

    Reads the test day's labels, so it runs only after the choice is fixed.
    """
    path = tables.plan_dir / TEST_LABELS
    if not path.is_file():
        return {}
    test = tables.splits["test"]
    labels = pl.read_parquet(path, glob=False).select(tables.id_column, tables.install_label)
    y = test.select(tables.id_column).join(labels, on=tables.id_column, how="left")[tables.install_label].to_numpy()
    rate = float(proxy.fit[tables.install_label].mean())  # the fit window's rate, estimated on the sample
    out: dict[str, Any] = {"base_rate": rate, "prior_logloss": metrics.log_loss(y, np.full(len(y), rate))}
    default = Choice(tuple(f for f in DEFAULT_ON if f in proxy.family.values()), DEFAULT_HANDLING)  # built closed
    for name, choice in (
        ("raw columns", Choice((), DEFAULT_HANDLING)),
        ("default set", default),
        ("selected set", selection.choice),
    ):
        booster = proxy.train(choice, proxy.fit)
        p = booster.predict(test.select(proxy.columns(choice)[0]))
        out[name] = {"logloss": metrics.log_loss(y, p), "calibration_ratio": float(p.mean() / max(y.mean(), 1e-12))}
    return out


def run_selection(
    tables: FeatureTables,
    opts: SelectOptions,
    requires: dict[str, set[str]],
    progress: Callable[[str], None] = lambda _: None,
    rows: ProxyRows | None = None,
) -> Selection:
    """Search on the backtest plan's rehearsal days (fit-window days and the valid day), then report the
    holdout day. With `weighting = "density"` the rehearsal rows are weighted toward the holdout day's
    unlabeled rows (its features only; its labels are read by `holdout` alone, after the search). `rows` names
    the proxies' rows where the fit table holds only them (`raw_proxy_rows`)."""
    built = {c["family"] for c in tables.manifest["columns"]}
    families = tuple(f for f in SEARCHED if f in built)
    proxy = Proxy(tables, opts, progress, rows)
    day_rows = {str(d): int((proxy.days == d).sum()) for d in proxy.rehearsal_days}
    progress(
        f"select: {len(families)} families ({', '.join(families)}), {len(HANDLING)} categorical handlings; "
        f"budget {opts.max_fits} candidates of {opts.rounds} rounds, each fitted on the {proxy.fit.height:,} "
        f"sampled fit rows before each rehearsal day ({', '.join(f'{d}: {n:,} rows' for d, n in day_rows.items())})"
    )
    weighting: dict[str, Any] = {"method": "none"}
    if opts.weighting == "density" and "test" in tables.splits:
        found = proxy.weigh(tables.splits["test"])
        weighting = {
            "method": "density",
            "auc": found.auc,
            "clipped_share": found.clipped,
            "effective_rows": found.effective_rows,
            "rows": int(len(found.weights)),
            "day_weight": {
                str(d): float(found.weights[proxy.days == d].sum() / found.weights.sum()) for d in proxy.rehearsal_days
            },
        }
        progress(
            f"select: density weights toward the holdout day's rows: adversarial AUC {found.auc:.3f}, "
            f"{found.clipped:.1%} clipped, effective rows {found.effective_rows:,.0f} of {len(found.weights):,}"
        )
    selection = search(proxy, families, requires, opts)
    selection.rehearsal = {"days": day_rows, "weighting": weighting}
    if "test" in tables.splits:
        selection.holdout = holdout(tables, proxy, selection)
    return selection


def check_selectable(profile: Profile, raw: dict[str, Any]) -> None:
    """Refuse a candidate table the profile cannot build (named in the error)."""
    feature_spec(raw, profile, "candidate families")
    if len(profile.fit_days) < 3:
        raise UserError("gbmcvr select needs at least three fit days (the backtest plan fits on all but the last)")


def report_markdown(selection: Selection, name: str) -> str:
    """The selection report: each step's pooled gain, its day-clustered SE and the per-day gains, then the
    holdout comparison."""
    days = list(selection.rehearsal.get("days", {}))
    weighting = selection.rehearsal.get("weighting", {"method": "none"})
    lines = [
        f"# Feature selection: `{name}`",
        "",
        f"Chosen: **{selection.choice.label()}** ({selection.seconds:.0f}s).",
        "",
        "Rehearsal days (each scored by a proxy fitted on sampled rows of earlier days only): "
        + ", ".join(f"{d} ({n:,} rows)" for d, n in selection.rehearsal.get("days", {}).items())
        + ". A step is kept when its pooled gain exceeds the significance times its day-clustered SE "
        "(each day's within-day variance plus the between-day variance).",
    ]
    if weighting["method"] == "density":
        lines += [
            "",
            f"Rows weighted by their density ratio toward the holdout day (adversarial AUC {weighting['auc']:.3f}, "
            f"{weighting['clipped_share']:.1%} clipped, effective rows {weighting['effective_rows']:,.0f} of "
            f"{weighting['rows']:,}; day shares "
            + ", ".join(f"{d}: {w:.2f}" for d, w in weighting["day_weight"].items())
            + ").",
        ]
    lines += [
        "",
        "| step | candidate | rehearsal log loss | gain ± SE | " + " | ".join(f"day {d}" for d in days) + " | kept |",
        "|---|---|---|---|" + "---|" * len(days) + "---|",
    ]
    for s in selection.steps:
        kept = "" if "kept" not in s else ("yes" if s["kept"] else "no")
        se = f" ± {s['se']:.6f}" if "se" in s else ""
        per_day = " | ".join(f"{s['per_day'][d]:+.6f}" if "per_day" in s else "" for d in days)
        lines.append(
            f"| {s['step']} | {s['choice']} | {s['logloss']:.6f} | {s['gain']:+.6f}{se} | {per_day} | {kept} |"
        )
    h = selection.holdout
    if h:
        lines += [
            "",
            f"Holdout day (the backtest test day, never seen by the search); prior log loss {h['prior_logloss']:.6f}:",
            "",
            "| set | log loss | calibration ratio |",
            "|---|---|---|",
        ]
        for key in ("raw columns", "default set", "selected set"):
            lines.append(f"| {key} | {h[key]['logloss']:.6f} | {h[key]['calibration_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot_gains(selection: Selection, path: Path) -> None:
    """A bar per step: the pooled gain with a 2-SE error bar (kept steps in blue), and each day's gain as dots."""
    plt = pyplot()

    steps = selection.steps[1:]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(steps) + 1.5))
    names = [s["step"] for s in steps][::-1]
    gains = [s["gain"] for s in steps][::-1]
    errors = [2 * s.get("se", 0.0) for s in steps][::-1]
    colours = ["tab:blue" if s.get("kept") else "tab:gray" for s in steps][::-1]
    ax.barh(names, gains, xerr=errors, color=colours, ecolor="black", capsize=2)
    for i, s in enumerate(steps[::-1]):
        day_gains = list(s.get("per_day", {}).values())
        ax.plot(day_gains, [i] * len(day_gains), "o", color="tab:orange", markersize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("pooled rehearsal log-loss gain ± 2 SE (positive = better); dots: each day's gain")
    ax.set_title("gbmcvr select: gain per step (blue = kept)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
