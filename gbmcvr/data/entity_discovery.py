"""Entity keys discovered from the data: ads by functional dependency, users by repetition beyond independence.

A group of columns is an entity key when its joint value repeats across rows and days far more than independent
columns would allow. The independence baseline is the same rows with every column shuffled on its own: it keeps
each marginal and breaks only the joint structure. The profile's `[entities]` are hints, checked the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import polars as pl

from gbmcvr.data.profile import Profile

SAMPLE_ROWS = 200_000  # rows the search works on (train and test together)
PAIR_ROWS = 50_000  # rows of the pair screen that seeds each user search (and of the dependency screen)
GROW_ROWS = 100_000  # rows on which a user search grows its group (the verdict then uses the whole sample)
MAX_CARDINALITY_SHARE = 0.5  # a column with more distinct values than this share of rows is row-level, never a key
MIN_ROWS_PER_VALUE = 5  # a determinant needs this many rows per value, else every column looks like its function
DEPENDENCY_RATIO = 0.02  # a dependent varies within the determinant's values at most this share of chance variation
CLOSURE_RATIO = 0.15  # looser for a composite user key, whose numerical columns may drift within a user
MIN_GAIN = 0.02  # nats of excess entropy a column must add for the greedy search to take it
MIN_EXCESS_REPEAT = 0.15  # a key: its rows repeat this much more often than independent columns' rows would
MIN_MULTI_DAY = 0.10  # a key: at least this share of rows has a key value seen on two days or more
MAX_GROUP = 16  # columns in a grown user group (before the closure)
MAX_ROUNDS = 12  # user searches (each seeds on the best pair of the columns no earlier search took)
FLOAT_DIGITS = 9  # significant digits kept before numerical values are joined (float noise is not a new value)


@dataclass(frozen=True)
class GroupEvidence:
    """One candidate group and why it is (or is not) an entity key."""

    name: str
    source: str  # "discovered" or "declared"
    method: str  # "dependency" (one column determines the rest), "repetition" (greedy search) or "declared"
    columns: tuple[str, ...]
    rows: int
    distinct_keys: int
    independent_keys: int  # distinct joint values of the same columns shuffled independently
    score: float  # nats: joint entropy of the shuffled columns minus the observed one (excess total correlation)
    rows_per_key: float
    repeat_share: float  # share of rows whose key value appears on another row of the sample
    independent_repeat_share: float
    multi_day_share: float | None  # share of rows whose key value appears on two days or more
    is_key: bool
    reason: str
    determinant: str | None = None


@dataclass(frozen=True)
class DiscoveryReport:
    """Entity groups to use (`groups`, ready to replace `profile.entities`) and the evidence behind them."""

    groups: dict[str, tuple[str, ...]]
    evidence: tuple[GroupEvidence, ...]
    rows: int
    columns_searched: tuple[str, ...]
    overruled: tuple[str, ...] = field(default=())

    def frame(self) -> pl.DataFrame:
        """The evidence as one row per group (analyze's `entity_discovery` section)."""
        schema = {
            "source": pl.String,
            "name": pl.String,
            "method": pl.String,
            "is_key": pl.Boolean,
            "used": pl.Boolean,
            "n_columns": pl.Int64,
            "columns": pl.String,
            "distinct_keys": pl.Int64,
            "independent_keys": pl.Int64,
            "score": pl.Float64,
            "rows_per_key": pl.Float64,
            "repeat_share": pl.Float64,
            "independent_repeat_share": pl.Float64,
            "multi_day_share": pl.Float64,
            "reason": pl.String,
        }
        rows = [
            {
                "source": e.source,
                "name": e.name,
                "method": e.method,
                "is_key": e.is_key,
                "used": self.groups.get(e.name) == e.columns,
                "n_columns": len(e.columns),
                "columns": ", ".join(e.columns),
                "distinct_keys": e.distinct_keys,
                "independent_keys": e.independent_keys,
                "score": e.score,
                "rows_per_key": e.rows_per_key,
                "repeat_share": e.repeat_share,
                "independent_repeat_share": e.independent_repeat_share,
                "multi_day_share": e.multi_day_share,
                "reason": e.reason,
            }
            for e in self.evidence
        ]
        return pl.DataFrame(rows, schema=schema)


def _encode(frame: pl.DataFrame, columns: list[str]) -> tuple[pl.DataFrame, dict[str, int]]:
    """Dense integer codes per column (1..k, missing = 0) and each column's number of codes."""
    exprs = []
    for col in columns:
        expr = pl.col(col)
        if frame.schema[col].is_float():
            expr = expr.round_sig_figs(FLOAT_DIGITS)
        exprs.append(expr.rank("dense").fill_null(0).cast(pl.UInt64).alias(col))
    codes = frame.select(exprs)
    cards = dict(zip(columns, codes.select(pl.all().max()).row(0), strict=True)) if columns else {}
    return codes, {c: int(v or 0) + 1 for c, v in cards.items()}


def _shuffled(codes: pl.DataFrame, seed: int) -> pl.DataFrame:
    """Every column shuffled on its own: the independence baseline with the same marginals."""
    return codes.select(pl.col(c).shuffle(seed=seed + i) for i, c in enumerate(codes.columns))


def _joint(codes: pl.DataFrame, columns: tuple[str, ...] | list[str], cards: dict[str, int]) -> pl.Series:
    """The joint value of `columns` as one dense integer code per row."""
    key = pl.lit(0, dtype=pl.UInt64)
    for col in columns:
        key = (key * cards[col] + pl.col(col)).rank("dense").cast(pl.UInt64)
    return codes.select(key.alias("key")).to_series()


def _entropy(expr: pl.Expr) -> pl.Expr:
    """Plug-in entropy (nats) of the values of `expr`."""
    return expr.unique_counts().entropy()


def _variation(codes: pl.DataFrame, key: pl.Series, columns: list[str]) -> dict[str, int]:
    """Per column: how many extra values it takes within the key's values (missing values left out)."""
    if not columns:
        return {}
    per_key = (
        codes.select(columns)
        .with_columns(key.alias("__key"))
        .group_by("__key")
        .agg(pl.col(c).filter(pl.col(c) > 0).n_unique() for c in columns)
        .select(((pl.col(c).cast(pl.Int64) - 1).clip(lower_bound=0)).sum() for c in columns)
    )
    return dict(zip(columns, per_key.row(0), strict=True))


def _dependents(
    codes: pl.DataFrame, shuffled: pl.DataFrame, key: pl.Series, columns: list[str], ratio: float
) -> list[str]:
    """Columns that vary within the key's values at most `ratio` times as much as they would by chance."""
    seen = _variation(codes, key, columns)
    chance = _variation(shuffled, key, columns)
    return [c for c in columns if chance[c] > 0 and seen[c] <= ratio * chance[c]]


def _key_stats(key: pl.Series, day: pl.Series | None) -> dict[str, float | int | None]:
    """Distinct keys, rows per key, share of rows whose key repeats, share whose key spans two days or more."""
    frame = pl.DataFrame({"key": key, "day": day if day is not None else pl.Series([0] * len(key))})
    stats = frame.select(
        pl.col("key").n_unique().alias("distinct"),
        (pl.len().over("key") >= 2).mean().alias("repeat"),
        (pl.col("day").n_unique().over("key") >= 2).mean().alias("multi_day"),
    ).row(0, named=True)
    return {**stats, "multi_day": stats["multi_day"] if day is not None else None}


def _evidence(
    name: str,
    source: str,
    method: str,
    columns: tuple[str, ...],
    codes: pl.DataFrame,
    shuffled: pl.DataFrame,
    cards: dict[str, int],
    day: pl.Series | None,
    determinant: str | None = None,
    dependents: tuple[str, ...] | None = None,
) -> GroupEvidence:
    """Score a group against its independence baseline and give the verdict with its reason.

    A single column has no joint structure to score: it is a key when it determines `dependents`."""
    seen, chance = _joint(codes, columns, cards), _joint(shuffled, columns, cards)
    obs, ind = _key_stats(seen, day), _key_stats(chance, day)
    score = pl.select(_entropy(pl.lit(chance)) - _entropy(pl.lit(seen))).item()
    multi_day = obs["multi_day"]
    if dependents is not None:
        identifies = bool(dependents)
        why = f"determines {', '.join(dependents)}" if dependents else "one column that determines no other"
    else:
        identifies = obs["repeat"] - ind["repeat"] >= MIN_EXCESS_REPEAT
        why = f"{obs['repeat']:.0%} of rows share a key, {ind['repeat']:.0%} would with independent columns"
    spans = multi_day is None or multi_day >= MIN_MULTI_DAY
    if not identifies:
        reason = f"identifies no one: {why}"
    elif not spans:
        reason = f"repeats within days only: {multi_day:.0%} of rows have a key seen on two days or more"
    else:
        span = f"; {multi_day:.0%} of rows on a key seen on >= 2 days" if multi_day is not None else ""
        reason = f"key: {why}{span}"
    is_key = identifies and spans
    return GroupEvidence(
        name=name,
        source=source,
        method=method,
        columns=columns,
        rows=len(seen),
        distinct_keys=int(obs["distinct"]),
        independent_keys=int(ind["distinct"]),
        score=float(score),
        rows_per_key=len(seen) / max(int(obs["distinct"]), 1),
        repeat_share=float(obs["repeat"]),
        independent_repeat_share=float(ind["repeat"]),
        multi_day_share=None if multi_day is None else float(multi_day),
        is_key=is_key,
        reason=reason,
        determinant=determinant,
    )


def dependency_groups(
    codes: pl.DataFrame, shuffled: pl.DataFrame, determinants: list[str], columns: list[str]
) -> list[tuple[str, tuple[str, ...]]]:
    """Each determinant with the columns that are (nearly) a function of it, the widest group first.

    Candidates come from the first `PAIR_ROWS` rows and are confirmed on all of them."""
    screen, screen_shuffled = codes.head(PAIR_ROWS), shuffled.head(PAIR_ROWS)
    found = []
    for det in determinants:
        if screen.height < MIN_ROWS_PER_VALUE * screen[det].n_unique():
            continue
        others = [c for c in columns if c != det]
        deps = _dependents(screen, screen_shuffled, screen[det], others, DEPENDENCY_RATIO)
        if deps and codes.height > screen.height:
            deps = _dependents(codes, shuffled, codes[det], deps, DEPENDENCY_RATIO)
        if deps:
            found.append((det, (det, *deps)))
    order = {c: i for i, c in enumerate(columns)}
    return sorted(found, key=lambda g: (-len(g[1]), order[g[0]]))


def _pair_gains(
    codes: pl.DataFrame, shuffled: pl.DataFrame, cards: dict[str, int], columns: list[str]
) -> dict[tuple[str, str], float]:
    """Excess entropy (nats) of every pair of columns: how much more concentrated their joint value is than
    independence allows, on the first `PAIR_ROWS` rows of the sample."""
    pairs = [(a, b) for i, a in enumerate(columns) for b in columns[i + 1 :]]
    if not pairs:
        return {}
    rows = min(codes.height, PAIR_ROWS)

    def entropies(frame: pl.DataFrame) -> tuple:
        exprs = [_entropy(pl.col(a) * cards[b] + pl.col(b)).alias(str(k)) for k, (a, b) in enumerate(pairs)]
        return frame.head(rows).select(exprs).row(0)

    gains = [ind - obs for obs, ind in zip(entropies(codes), entropies(shuffled), strict=True)]
    return dict(zip(pairs, gains, strict=True))


def _seed_pair(gains: dict[tuple[str, str], float], pool: set[str]) -> tuple[str, ...]:
    """The pair of pool columns with the largest excess entropy, if it reaches `MIN_GAIN` (ties: first pair)."""
    best, best_gain = (), MIN_GAIN
    for pair, gain in gains.items():
        if gain > best_gain and pair[0] in pool and pair[1] in pool:
            best, best_gain = pair, gain
    return best


def _grow(
    codes: pl.DataFrame,
    shuffled: pl.DataFrame,
    cards: dict[str, int],
    seed: tuple[str, ...],
    candidates: list[str],
    deadline: float,
) -> tuple[str, ...]:
    """Add, one at a time, the column that most raises the group's excess entropy, while it gains `MIN_GAIN`."""
    codes, shuffled = codes.head(GROW_ROWS), shuffled.head(GROW_ROWS)
    group = list(seed)
    key, chance = _joint(codes, group, cards), _joint(shuffled, group, cards)
    current = pl.select(_entropy(pl.lit(chance)) - _entropy(pl.lit(key))).item()
    while len(group) < MAX_GROUP and time.monotonic() < deadline:
        rest = [c for c in candidates if c not in group]
        if not rest:
            break
        obs = codes.select(_entropy(pl.lit(key) * cards[c] + pl.col(c)).alias(c) for c in rest).row(0)
        ind = shuffled.select(_entropy(pl.lit(chance) * cards[c] + pl.col(c)).alias(c) for c in rest).row(0)
        scores = [i - o for o, i in zip(obs, ind, strict=True)]
        best = max(range(len(rest)), key=lambda k: (scores[k], -k))
        if scores[best] - current < MIN_GAIN:
            break
        group.append(rest[best])
        current = scores[best]
        key, chance = _joint(codes, group, cards), _joint(shuffled, group, cards)
    return tuple(group)


def _searchable(codes: pl.DataFrame, columns: list[str]) -> list[str]:
    """Columns that can be part of a key: more than one value, and not nearly one value per row."""
    distinct = codes.select(pl.col(columns).n_unique()).row(0) if columns else ()
    return [c for c, n in zip(columns, distinct, strict=True) if 2 <= n <= MAX_CARDINALITY_SHARE * codes.height]


def _ad_name(profile: Profile) -> str:
    """The profile's name for the ad entity: its first declared entity other than `user`, else `ad`."""
    return next((name for name in profile.entities if name != "user"), "ad")


def discover_entities(
    frame: pl.DataFrame,
    profile: Profile,
    sample_rows: int = SAMPLE_ROWS,
    seed: int = 0,
    time_budget_s: float = 30.0,
) -> DiscoveryReport:
    """Discover entity keys in `frame` (raw rows, train and test together) and check the profile's declared ones.

    Ads come first (the widest functional dependency of a categorical column); users are searched among the
    remaining columns by repetition. `time_budget_s` only caps a pathological search; within it, results are
    deterministic for a given `seed`.
    """
    deadline = time.monotonic() + time_budget_s
    sample = frame if frame.height <= sample_rows else frame.sample(sample_rows, seed=seed)
    features = [c for c in profile.feature_columns if c in sample.columns]
    codes, cards = _encode(sample, features)
    shuffled = _shuffled(codes, seed)
    day = sample[profile.day_column] if profile.day_column in sample.columns else None
    searchable = _searchable(codes, features)

    def _single(group: tuple[str, ...]) -> tuple[str, ...] | None:
        """The dependents of a one-column group (none when it has too few rows per value), else None."""
        if len(group) != 1:
            return None
        if codes.height < MIN_ROWS_PER_VALUE * codes[group[0]].n_unique():
            return ()
        others = [c for c in searchable if c != group[0]]
        return tuple(_dependents(codes, shuffled, codes[group[0]], others, DEPENDENCY_RATIO))

    evidence: list[GroupEvidence] = []
    discovered: dict[str, tuple[str, ...]] = {}
    categorical = [c for c in profile.categorical if c in searchable]
    ads = dependency_groups(codes, shuffled, categorical, searchable)
    if ads:
        det, group = ads[0]
        ad = _evidence(_ad_name(profile), "discovered", "dependency", group, codes, shuffled, cards, day, det)
        evidence.append(ad)
        if ad.is_key:
            discovered[ad.name] = group
    taken = set(discovered.get(_ad_name(profile), ()))
    users: list[GroupEvidence] = []
    seedable = [c for c in searchable if c not in taken and c not in profile.binary]
    gains = _pair_gains(codes, shuffled, cards, seedable)
    for _ in range(MAX_ROUNDS):
        pool = [c for c in searchable if c not in taken]
        seed_pair = _seed_pair(gains, set(pool))
        if not seed_pair or time.monotonic() > deadline:
            break
        core = _grow(codes, shuffled, cards, seed_pair, pool, deadline)
        rest = [c for c in pool if c not in core]
        closure = _dependents(codes, shuffled, _joint(codes, core, cards), rest, CLOSURE_RATIO)
        group = tuple(c for c in pool if c in core or c in closure)
        taken |= set(group)
        users.append(_evidence("", "discovered", "repetition", group, codes, shuffled, cards, day))
    keys = sorted((e for e in users if e.is_key), key=lambda e: -e.distinct_keys)
    names = {id(e): ("user" if k == 0 else f"entity_{k + 1}") for k, e in enumerate(keys)}
    for e in users:
        named = replace(e, name=names.get(id(e), "rejected"))
        evidence.append(named)
        if named.is_key:
            discovered[named.name] = named.columns

    declared = [
        _evidence(name, "declared", "declared", tuple(group), codes, shuffled, cards, day, None, _single(group))
        for name, group in profile.entities.items()
        if all(c in codes.columns for c in group)
    ]
    evidence += declared
    identifies_no_one = {e.name for e in declared if not e.is_key}
    kept = {name: tuple(g) for name, g in profile.entities.items() if name not in identifies_no_one}
    groups = {**kept, **discovered}  # a declared group that identifies no one is dropped, not keyed on
    overruled = tuple(name for name in profile.entities if groups.get(name) != tuple(profile.entities[name]))
    return DiscoveryReport(
        groups=groups,
        evidence=tuple(evidence),
        rows=sample.height,
        columns_searched=tuple(searchable),
        overruled=overruled,
    )
