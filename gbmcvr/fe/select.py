"""`gbmcvr select`: choose feature families and categorical handling by measurement on the selection days.

Every candidate family is built once (the `candidates` set, backtest plan); a candidate feature set is then a
choice of columns from those tables, scored by a fast proxy LightGBM (fixed parameters, fixed rounds) trained
on up to `proxy_rows` rows sampled from the whole fit window of the backtest plan and scored on its validation
day (the selection day). The search is greedy: the categorical handling first, then one forward pass (switch
each absent family on, keep it if the selection-day log loss drops by more than two paired standard errors of
the per-row difference), then one backward pass (switch each present family off, keep it off unless the loss
rises by more than two standard errors): noise keeps the simpler set. Each pass costs one fit per family, where a best-first search costs one per
family per step and an Optuna study over ~10 on/off choices needs more trials than that to beat it.

The backtest plan's test day (the validation day of the profile) is never read during the search: its labels
(`test_labels.parquet`) are read only afterwards, to report the chosen set beside the default set and the raw
columns on that honest day.
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

from gbmcvr import metrics
from gbmcvr.compat import pyplot
from gbmcvr.data.profile import Profile
from gbmcvr.data.split import TEST_LABELS
from gbmcvr.errors import UserError
from gbmcvr.fe.pipeline import raw_fingerprint
from gbmcvr.fe.spec import DAY_CYCLE_COLUMN, FeatureSpec, feature_spec, generic_default
from gbmcvr.tables import FeatureTables
from gbmcvr.tomlfile import read_toml

CANDIDATE_SET = "candidates"
PLAN = "backtest"
SEARCHED = ("date", "cross", "count", "group", "target", "novelty", "lagged", "daycount")
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
class SelectOptions:
    """The proxy model and the search budget."""

    rounds: int = 150
    proxy_rows: int = 400_000  # fit rows sampled from the whole fit window (all of them when fewer)
    significance: float = 2.0  # a change is kept only when it wins by this many paired standard errors
    max_fits: int = 30
    seed: int = 42


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


def candidate_raw(profile: Profile) -> dict[str, Any]:
    """The candidate families as a `[features]` table: the default set plus key families over the entities."""
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
    raw["categorical"] = {"native_max": HANDLING["native"][0]}
    return raw


KEYED = ("novelty", "lagged", "daycount")  # the families whose tables hold one entry per (key, day)
MAX_KEY_SHARE = 0.5  # a key with more distinct values than this share of rows is nearly unique per row


def key_columns(key: list[str] | tuple[str, ...], profile: Profile) -> list[str]:
    """The raw columns a candidate key names (an entity stands for its group of columns)."""
    return list(dict.fromkeys(c for name in key for c in profile.entities.get(name, (name,))))


def key_shares(raw: pl.LazyFrame, candidates: dict[str, Any], profile: Profile) -> dict[tuple[str, ...], float]:
    """Distinct values of each key of the keyed families as a share of the raw rows (one pass over the rows)."""
    keys = {tuple(k) for family in KEYED for k in candidates.get(family, {}).get("keys", [])}
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
    return out, why


def candidate_spec(
    raw_dir: Path, profile: Profile, progress: Callable[[str], None] = lambda _: None
) -> tuple[dict[str, Any], FeatureSpec]:
    """The candidate families `select` builds from the raw store in `raw_dir` (keys nearly unique per row left
    out, each with a progress line saying why), as a `[features]` table and as a spec."""
    candidates = candidate_raw(profile)
    check_selectable(profile, candidates)
    raw_fingerprint(raw_dir)  # a missing raw store is named before its rows are read
    rows = pl.scan_parquet(Path(raw_dir) / "train.parquet", glob=False)
    candidates, left_out = bounded(candidates, key_shares(rows, candidates, profile))
    for line in left_out:
        progress(f"select: {line}")
    return candidates, feature_spec(candidates, profile, "candidate families")


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
    out: dict[str, Any] = {"clean": candidates.get("clean", {})}
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
    for section, table in raw.items():
        lines += ["", f"[{section}]", *(f"{k} = {_toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


class Proxy:
    """The fast proxy: fixed-parameter LightGBM on rows sampled from the fit window, scored on the selection day."""

    def __init__(self, tables: FeatureTables, opts: SelectOptions, progress: Callable[[str], None]) -> None:
        fit = tables.splits["fit"]
        self.fit = (
            fit.sample(opts.proxy_rows, seed=opts.seed).sort(tables.id_column) if fit.height > opts.proxy_rows else fit
        )
        self.valid = tables.splits["valid"]
        self.label = tables.install_label
        self.family = {c["name"]: c["family"] for c in tables.manifest["columns"]}
        self.categorical = set(tables.columns("categorical"))
        self.features = tables.features()
        self.cardinality = {
            c["name"]: c.get("cardinality", 0) for c in tables.manifest["columns"] if c["role"] == "categorical"
        }
        self.opts = opts
        self.progress = progress
        self.fits = 0

    def columns(self, choice: Choice) -> tuple[list[str], list[str]]:
        """Model inputs and the native categoricals among them for a choice."""
        native_max, codes_max = HANDLING[choice.handling]
        on = {"clean", "categorical", "binary", *choice.families}
        cols = [c for c in self.features if self.family.get(c) in on]
        if codes_max:
            cols = [c for c in cols if c not in self.categorical or self.cardinality[c] <= max(codes_max, 2)]
        native = [c for c in cols if c in self.categorical and self.cardinality[c] <= native_max]
        return cols, native

    def train(self, choice: Choice) -> lgb.Booster:
        cols, native = self.columns(choice)
        params = {**PROXY_PARAMS, "seed": self.opts.seed, "num_threads": 0}
        data = lgb.Dataset(
            self.fit.select(cols), label=self.fit[self.label].to_numpy(), categorical_feature=native, free_raw_data=True
        )
        self.fits += 1
        return lgb.train(params, data, num_boost_round=self.opts.rounds)

    def score(self, choice: Choice) -> np.ndarray:
        """Selection-day log loss of each row, for the proxy trained on the choice's columns."""
        start = time.perf_counter()
        booster = self.train(choice)
        cols, _ = self.columns(choice)
        p = np.clip(booster.predict(self.valid.select(cols)), metrics.EPS, 1 - metrics.EPS)
        y = self.valid[self.label].to_numpy().astype(np.float64)
        losses = -(y * np.log(p) + (1 - y) * np.log1p(-p))
        value = float(losses.mean())
        self.progress(
            f"select: fit {self.fits}/{self.opts.max_fits} {choice.label()} ({len(cols)} columns): "
            f"log loss {value:.6f} ({time.perf_counter() - start:.0f}s)"
        )
        return losses


def paired_gain(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Mean per-row log-loss drop from `before` to `after`, and its paired standard error."""
    diff = before - after
    return float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")


def search(proxy: Proxy, families: tuple[str, ...], requires: dict[str, set[str]], opts: SelectOptions) -> Selection:
    """Greedy categorical-handling step, one forward pass and one backward pass over the families."""
    start = time.perf_counter()
    current = Choice(closure({f for f in DEFAULT_ON if f in families}, requires, families), DEFAULT_HANDLING)
    best = proxy.score(current)
    steps: list[dict[str, Any]] = [
        {"step": "start (default set)", "choice": current.label(), "logloss": float(best.mean()), "gain": 0.0}
    ]

    def try_step(name: str, candidate: Choice, simpler: bool) -> None:
        """Take a more complex candidate only when it wins by `significance` SE; a simpler one unless it
        loses by that much (so noise keeps the simpler option)."""
        nonlocal current, best
        if proxy.fits >= opts.max_fits or candidate == current:
            return
        losses = proxy.score(candidate)
        gain, se = paired_gain(best, losses)
        kept = gain > -opts.significance * se if simpler else gain > opts.significance * se
        steps.append(
            {
                "step": name,
                "choice": candidate.label(),
                "logloss": float(losses.mean()),
                "gain": gain,
                "se": se,
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
            dropped = ", ".join(f for f in current.families if f not in rest)
            try_step(f"drop {dropped}", Choice(rest, current.handling), simpler=True)
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
    rate = float(tables.splits["fit"][tables.install_label].mean())
    out: dict[str, Any] = {"base_rate": rate, "prior_logloss": metrics.log_loss(y, np.full(len(y), rate))}
    default = Choice(tuple(f for f in DEFAULT_ON if f in proxy.family.values()), DEFAULT_HANDLING)  # built closed
    for name, choice in (
        ("raw columns", Choice((), DEFAULT_HANDLING)),
        ("default set", default),
        ("selected set", selection.choice),
    ):
        booster = proxy.train(choice)
        p = booster.predict(test.select(proxy.columns(choice)[0]))
        out[name] = {"logloss": metrics.log_loss(y, p), "calibration_ratio": float(p.mean() / max(y.mean(), 1e-12))}
    return out


def run_selection(
    tables: FeatureTables,
    opts: SelectOptions,
    requires: dict[str, set[str]],
    progress: Callable[[str], None] = lambda _: None,
) -> Selection:
    """Search on the backtest plan's fit and valid splits, then report the holdout day."""
    built = {c["family"] for c in tables.manifest["columns"]}
    families = tuple(f for f in SEARCHED if f in built)
    proxy = Proxy(tables, opts, progress)
    progress(
        f"select: {len(families)} families ({', '.join(families)}), {len(HANDLING)} categorical handlings; "
        f"budget {opts.max_fits} proxy fits of {opts.rounds} rounds on {proxy.fit.height:,} rows"
    )
    selection = search(proxy, families, requires, opts)
    if "test" in tables.splits:
        selection.holdout = holdout(tables, proxy, selection)
    return selection


def check_selectable(profile: Profile, raw: dict[str, Any]) -> None:
    """Refuse a candidate table the profile cannot build (named in the error)."""
    feature_spec(raw, profile, "candidate families")
    if len(profile.fit_days) < 3:
        raise UserError("gbmcvr select needs at least three fit days (the backtest plan fits on all but the last)")


def report_markdown(selection: Selection, name: str) -> str:
    """The selection report: each step's selection-day log loss and gain, then the holdout comparison."""
    lines = [
        f"# Feature selection: `{name}`",
        "",
        f"Chosen: **{selection.choice.label()}** ({selection.seconds:.0f}s).",
        "",
        "| step | candidate | selection-day log loss | gain (± paired SE) | kept |",
        "|---|---|---|---|---|",
    ]
    for s in selection.steps:
        kept = "" if "kept" not in s else ("yes" if s["kept"] else "no")
        se = f" ± {s['se']:.6f}" if "se" in s else ""
        lines.append(f"| {s['step']} | {s['choice']} | {s['logloss']:.6f} | {s['gain']:+.6f}{se} | {kept} |")
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
    """A bar per step: the selection-day gain of the candidate (kept steps in a darker colour)."""
    plt = pyplot()

    steps = selection.steps[1:]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(steps) + 1.5))
    colours = ["tab:blue" if s.get("kept") else "tab:gray" for s in steps]
    ax.barh([s["step"] for s in steps][::-1], [s["gain"] for s in steps][::-1], color=colours[::-1])
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_xlabel("selection-day log loss gain (positive = better)")
    ax.set_title("gbmcvr select: gain per step (blue = kept)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
