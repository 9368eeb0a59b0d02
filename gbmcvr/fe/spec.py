"""Feature-set declaration: the `[features]` TOML as frozen dataclasses, checked against the profile."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError
from gbmcvr.tomlfile import read_toml, typed_fields

FAMILIES = (
    "clean",
    "categorical",
    "date",
    "cross",
    "count",
    "group",
    "target",
    "novelty",
    "lagged",
    "daycount",
    "entity_target",
)
# where the entity groups that key families name come from: discovered in the data (the profile's `[entities]`
# are hints it checks) or the profile's declaration as it is
ENTITY_SOURCES = ("discovered", "profile")
GROUP_STATS = (
    "mean",
    "median",
    "std",
    "min",
    "max",
    "ratio_mean",
    "ratio_median",
    "diff_mean",
    "zscore",
    "median_minus_mean",
    "abs_median_minus_mean",
    "median_over_mean",
    "std_over_mean",
)
ALWAYS_ON = ("clean", "categorical")
BETA_STATS = ("mean", "mode", "median", "var", "skew", "kurt")
TARGETS = ("is_installed", "is_like", "install_given_like")
NOVELTY_STATS = ("first_day", "days_since_first", "new_on_day", "active_days")
LAGGED_TARGETS = ("is_installed", "is_like")
DAY_CYCLE_COLUMN = "day_mod_7"
DISCOVERED_NAME = re.compile(r"user|ad|entity_[0-9]+")  # the names `data/entity_discovery.py` gives


@dataclass(frozen=True)
class CleanSpec:
    fill_missing: float | str = 0.0
    divide_by_base: bool = True


@dataclass(frozen=True)
class CategoricalSpec:
    """How categorical columns (and crosses) reach the model, by vocabulary size: LightGBM native up to
    `native_max` values, plain integer codes above, and encodings only (the code leaves the model's inputs)
    above `codes_max` (0: no limit). Measured default: plain integer codes for every column."""

    native_max: int = 1
    codes_max: int = 0


@dataclass(frozen=True)
class DateSpec:
    cycle: int = 7
    sin_cos: bool = False


@dataclass(frozen=True)
class CrossSpec:
    pairs: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class CountSpec:
    columns: tuple[str, ...] = ()
    window: str = "plan"


@dataclass(frozen=True)
class GroupSpec:
    pairs: tuple[tuple[str, str], ...] = ()
    stats: tuple[str, ...] = GROUP_STATS
    scope: str = "plan"


@dataclass(frozen=True)
class TargetSpec:
    columns: tuple[str, ...] = ()
    targets: tuple[str, ...] = ("is_installed", "is_like")
    stats: tuple[str, ...] = BETA_STATS
    n_min: float = 100.0
    folds: int = 5
    scheme: str = "oof"


@dataclass(frozen=True)
class EntityTargetSpec(TargetSpec):
    """Beta target encodings of entity keys (users, ads): fewer statistics and a weaker prior than `[target]`,
    since an entity is seen far fewer times than a category."""

    targets: tuple[str, ...] = ("is_installed", "is_like")
    stats: tuple[str, ...] = ("mean", "var")
    n_min: float = 20.0


@dataclass(frozen=True)
class NoveltySpec:
    """Label-free novelty of key values over all rows of the plan, the unlabeled test day included."""

    keys: tuple[tuple[str, ...], ...] = ()
    stats: tuple[str, ...] = ("days_since_first", "new_on_day", "active_days")
    over_entities: bool = False  # also one key per entity group the build uses (discovered in the data)


@dataclass(frozen=True)
class LaggedSpec:
    """A key's label rates over the previous labelled days (Beta-shrunk to that window's rate)."""

    keys: tuple[tuple[str, ...], ...] = ()
    windows: tuple[int, ...] = (1, 3, 7)
    targets: tuple[str, ...] = LAGGED_TARGETS
    n_min: float = 20.0


@dataclass(frozen=True)
class DayCountSpec:
    """Transductive same-day counts: rows and distinct values of other columns per key and day."""

    keys: tuple[tuple[str, ...], ...] = ()
    distinct: tuple[str, ...] = ()
    over_entities: bool = False  # also each entity group the build uses, as a key and as a distinct count


@dataclass(frozen=True)
class FeatureSpec:
    """A whole feature set; a family left out of the TOML is off (cleaning and categorical handling always on)."""

    clean: CleanSpec = field(default_factory=CleanSpec)
    categorical: CategoricalSpec = field(default_factory=CategoricalSpec)
    date: DateSpec | None = None
    cross: CrossSpec | None = None
    count: CountSpec | None = None
    group: GroupSpec | None = None
    target: TargetSpec | None = None
    novelty: NoveltySpec | None = None
    lagged: LaggedSpec | None = None
    daycount: DayCountSpec | None = None
    entity_target: EntityTargetSpec | None = None
    entities: str = "discovered"

    def digest(self) -> str:
        """Hash of the spec: same spec, same hash (the cache key of the feature tables)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def cross_name(columns: tuple[str, ...]) -> str:
    return "x_" + "_".join(columns)


def _choice(value: str, allowed: tuple[str, ...], where: str, key: str) -> str:
    if value not in allowed:
        raise UserError(f"{where}: {key} '{value}' is not one of {', '.join(allowed)}")
    return value


def _check_keys(raw: dict[str, Any], where: str) -> None:
    for key in raw:
        if key not in FAMILIES and key != "entities":
            raise UserError(
                f"{where}: unknown feature family '{key}' (families: {', '.join(FAMILIES)}; or the key entities)"
            )
    if "entities" in raw:
        if not isinstance(raw["entities"], str):
            raise UserError(f"{where}: entities must be one of {', '.join(ENTITY_SOURCES)}, got {raw['entities']!r}")
        _choice(raw["entities"], ENTITY_SOURCES, where, "entities")


def feature_spec(raw: dict[str, Any], profile: Profile, where: str) -> FeatureSpec:
    """Parse and validate a `[features]` table against the profile's columns.

    Entity names are the profile's `[entities]` or names discovery gives (`user`, `entity_2`, ...): which groups
    they stand for is known once the raw store is (`fe/entity_groups.py`)."""
    _check_keys(raw, where)
    parts: dict[str, Any] = {}
    for name, cls in (
        ("clean", CleanSpec),
        ("categorical", CategoricalSpec),
        ("date", DateSpec),
        ("cross", CrossSpec),
        ("count", CountSpec),
        ("group", GroupSpec),
        ("target", TargetSpec),
        ("novelty", NoveltySpec),
        ("lagged", LaggedSpec),
        ("daycount", DayCountSpec),
        ("entity_target", EntityTargetSpec),
    ):
        if name not in raw:
            continue
        table = raw[name]
        if not isinstance(table, dict):
            raise UserError(f"{where}: [{name}] must be a table (or false to turn the family off), got {table!r}")
        if isinstance(table.get("keys"), list):
            # a key is a column or entity name, or a list of them (a cross)
            table = {**table, "keys": [[k] if isinstance(k, str) else k for k in table["keys"]]}
        parts[name] = cls(**typed_fields(cls, table, f"{where} [{name}]"))
    spec = FeatureSpec(**parts, **({"entities": raw["entities"]} if "entities" in raw else {}))
    _validate(spec, profile, where)
    return spec


def _validate(spec: FeatureSpec, profile: Profile, where: str) -> None:
    kept = set(profile.kept(profile.feature_columns))
    categorical = set(profile.kept(profile.categorical)) | set(profile.kept(profile.binary))
    numerical = set(profile.kept(profile.numerical))

    def need(col: str, allowed: set[str], family: str, what: str) -> None:
        if col in allowed:
            return
        if col in numerical and what != "numerical":
            raise UserError(f"{where} [{family}]: '{col}' is numerical and cannot be used as a {what} key")
        if profile.role(col) and col not in kept:
            raise UserError(f"{where} [{family}]: column '{col}' is in the profile's drop list")
        raise UserError(f"{where} [{family}]: column '{col}' is not a {what} column of profile '{profile.name}'")

    if isinstance(spec.clean.fill_missing, str) and spec.clean.fill_missing != "keep":
        raise UserError(f'{where} [clean]: fill_missing must be a number or "keep"')
    if spec.date is not None and spec.date.cycle < 2:
        raise UserError(f"{where} [date]: cycle must be at least 2")
    keys = set(categorical)
    if spec.date is not None:
        keys.add(DAY_CYCLE_COLUMN)
    if spec.cross is not None:
        for pair in spec.cross.pairs:
            if len(pair) < 2:
                raise UserError(f"{where} [cross]: a cross needs at least two columns, got {list(pair)}")
            if len(set(pair)) < len(pair):
                raise UserError(
                    f"{where} [cross]: a cross of a column with itself, {list(pair)}; name distinct columns"
                )
            for col in pair:
                need(col, keys, "cross", "categorical")
        names = [cross_name(p) for p in spec.cross.pairs]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise UserError(f"{where} [cross]: the cross {twice[0]} is named twice")
        keys |= set(names)
    if spec.count is not None:
        _choice(spec.count.window, ("plan", "fit", "day"), f"{where} [count]", "window")
        for col in spec.count.columns:
            need(col, keys, "count", "categorical")
    if spec.group is not None:
        _choice(spec.group.scope, ("plan", "fit"), f"{where} [group]", "scope")
        for stat in spec.group.stats:
            _choice(stat, GROUP_STATS, f"{where} [group]", "statistic")
        for pair in spec.group.pairs:
            if len(pair) != 2:
                raise UserError(f"{where} [group]: pairs are [categorical, numerical], got {list(pair)}")
            need(pair[0], keys, "group", "categorical")
            need(pair[1], numerical, "group", "numerical")
    for family, t in (("target", spec.target), ("entity_target", spec.entity_target)):
        if t is None:
            continue
        for stat in t.stats:
            _choice(stat, BETA_STATS, f"{where} [{family}]", "statistic")
        for target in t.targets:
            _choice(target, TARGETS, f"{where} [{family}]", "target")
        _choice(t.scheme, ("oof", "past_days"), f"{where} [{family}]", "scheme")
        if t.n_min < 1:
            raise UserError(f"{where} [{family}]: n_min must be at least 1, got {t.n_min}")
        if t.folds < 2:
            raise UserError(f"{where} [{family}]: folds must be at least 2, got {t.folds}")
        for col in t.columns:
            if not is_entity_name(col, profile):
                need(col, keys, family, "categorical")
    if spec.target is not None and spec.entity_target is not None:
        both = sorted(set(spec.target.columns) & set(spec.entity_target.columns))
        if both:
            raise UserError(f"{where} [entity_target]: '{both[0]}' is encoded by [target] already; name it once")
        if spec.target.folds != spec.entity_target.folds:
            raise UserError(
                f"{where} [entity_target]: folds must equal [target]'s ({spec.target.folds}): "
                "both encode out of fold with one fold column"
            )
    c = spec.categorical
    if c.native_max < 0 or c.codes_max < 0:
        raise UserError(f"{where} [categorical]: native_max and codes_max must be non-negative")
    if c.codes_max and c.codes_max < c.native_max:
        raise UserError(f"{where} [categorical]: codes_max must be 0 (no limit) or at least native_max")
    for family, part in (("novelty", spec.novelty), ("lagged", spec.lagged), ("daycount", spec.daycount)):
        if part is None:
            continue
        for key in part.keys:
            if not key:
                raise UserError(f"{where} [{family}]: an empty key")
            for col in key:
                if not is_entity_name(col, profile):
                    need(col, keys, family, "categorical or entity")
    if spec.novelty is not None:
        for stat in spec.novelty.stats:
            _choice(stat, NOVELTY_STATS, f"{where} [novelty]", "statistic")
    if spec.lagged is not None:
        for target in spec.lagged.targets:
            _choice(target, LAGGED_TARGETS, f"{where} [lagged]", "target")
        if any(w < 1 for w in spec.lagged.windows) or not spec.lagged.windows:
            raise UserError(f"{where} [lagged]: windows must be positive day counts")
        if spec.lagged.n_min < 1:
            raise UserError(f"{where} [lagged]: n_min must be at least 1, got {spec.lagged.n_min}")
    if spec.daycount is not None:
        for col in spec.daycount.distinct:
            if not is_entity_name(col, profile):
                need(col, keys, "daycount", "categorical or entity")


def default_toml_text() -> str:
    """The default feature set as `[features.<family>]` tables: pasted into gbmcvr.toml, it parses as it is."""
    text = (resources.files("gbmcvr.defaults") / "features_default.toml").read_text()
    text = text.replace(
        "# Copy this under [features] in gbmcvr.toml to edit it.", "# Paste this into gbmcvr.toml to edit it."
    )
    return re.sub(r"(?m)^\[([A-Za-z_][A-Za-z0-9_.]*)\]", r"[features.\1]", text)


def default_raw(profile: Profile) -> dict[str, Any]:
    """The built-in default `[features]` table; for profiles other than ShareChat, what fits their columns."""
    if profile.name != "sharechat2023":
        return generic_default(profile)
    return read_toml(Path(str(resources.files("gbmcvr.defaults") / "features_default.toml")))


def default_spec(profile: Profile) -> FeatureSpec:
    """The built-in default set."""
    return feature_spec(default_raw(profile), profile, "built-in default features")


def merge_with_default(raw: dict[str, Any], profile: Profile, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A config's `[features]` over the default set: a family not named keeps its default, a named family's
    keys replace the default's keys, `false` removes the family. Returns the merged table and, per family,
    where it comes from."""
    default = default_raw(profile)
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    _check_keys(raw, where)
    if "entities" in raw:
        merged["entities"] = raw["entities"]
    for family in FAMILIES:
        value = raw.get(family, True)
        if value is False:
            if family in ALWAYS_ON:
                raise UserError(f"{where}: the {family} family is always on (set its keys instead)")
            sources[family] = f"off ({where})"
        elif value is True:
            if family in default or family in ALWAYS_ON:
                merged[family] = default.get(family, {})
                sources[family] = "default" if family not in raw else f"default ({where})"
        elif isinstance(value, dict):
            merged[family] = {**default.get(family, {}), **value}
            sources[family] = where
        else:
            raise UserError(f"{where}: [{family}] must be a table or true/false, got {value!r}")
    return merged, sources


def only_families(tables: dict[str, Any]) -> dict[str, Any]:
    """A config `[features]` table that turns off every family it does not name (e.g. raw columns only)."""
    return {**{f: False for f in FAMILIES if f not in ALWAYS_ON}, **tables}


def wants_entities(spec: FeatureSpec) -> bool:
    """Whether a family keys on every entity group the build uses (`over_entities`), whatever they are."""
    return any(part is not None and part.over_entities for part in (spec.novelty, spec.daycount))


def with_entity_keys(spec: FeatureSpec, profile: Profile) -> FeatureSpec:
    """The spec with `over_entities` spelled out: each entity group of `profile` (as the build resolved them)
    becomes a key of novelty and day counts, and a distinct count of day counts, before the declared keys."""
    ents = tuple((e,) for e in profile.entities)
    parts: dict[str, Any] = {}
    if spec.novelty is not None and spec.novelty.over_entities:
        keys = tuple(dict.fromkeys((*ents, *spec.novelty.keys)))
        parts["novelty"] = replace(spec.novelty, keys=keys, over_entities=False)
    if spec.daycount is not None and spec.daycount.over_entities:
        keys = tuple(dict.fromkeys((*ents, *spec.daycount.keys)))
        distinct = tuple(dict.fromkeys((*profile.entities, *spec.daycount.distinct)))
        parts["daycount"] = replace(spec.daycount, keys=keys, distinct=distinct, over_entities=False)
    return replace(spec, **parts) if parts else spec


def is_entity_name(name: str, profile: Profile) -> bool:
    """Whether a key names an entity: one the profile declares, or (unless a column has that name) one that
    discovery may name (`user`, the ad's `ad`, `entity_2`, ...)."""
    if name in profile.entities:
        return True
    return profile.role(name) is None and bool(DISCOVERED_NAME.fullmatch(name))


def config_feature_spec(raw: dict[str, Any] | None, profile: Profile, where: str) -> tuple[FeatureSpec, dict[str, str]]:
    """The feature set of a config (`None`: the default set) and where each active family comes from."""
    merged, sources = merge_with_default(raw or {}, profile, where)
    return feature_spec(merged, profile, where), sources


def generic_default(profile: Profile) -> dict[str, Any]:
    """A default for any profile: cleaning, date cycle, counts and target encoding of its first categoricals,
    and the label-free novelty and same-day counts of those and of the entity groups found in the data."""
    cats = list(profile.kept(profile.categorical))[:6]
    keys = [[c] for c in cats[:3]]
    return {
        "clean": {},
        "date": {},
        "count": {"columns": cats},
        "target": {"columns": cats, "targets": list(TARGETS), "n_min": 100, "folds": 5},
        "novelty": {"keys": keys, "over_entities": True},
        "daycount": {"keys": keys, "distinct": cats[:2], "over_entities": True},
    }
