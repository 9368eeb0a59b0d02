"""Entity keys: a group of columns that together identify a user or an ad, label-encoded as one key column."""

from __future__ import annotations

import polars as pl

from gbmcvr.data.profile import Profile

PREFIX = "k_"


def entity_column(name: str) -> str:
    """Column name of an entity's key (`k_user` for the profile's `user` group)."""
    return PREFIX + name


def key_columns(key: tuple[str, ...], profile: Profile) -> list[str]:
    """Resolve a family key: entity names become their key columns, other names stay columns."""
    return [entity_column(c) if c in profile.entities else c for c in key]


def entities_used(keys: list[tuple[str, ...]], profile: Profile) -> list[str]:
    """The entity names a list of keys refers to, in profile order."""
    named = {c for key in keys for c in key}
    return [e for e in profile.entities if e in named]


def with_keys(frame: pl.LazyFrame, profile: Profile, names: list[str]) -> pl.LazyFrame:
    """Add one key column per entity: the dense rank (0..k-1) of the row's value tuple among the distinct tuples.

    Keys come from the raw values (before cleaning, which may merge values), so equal tuples, nulls included,
    get equal keys; no label is read. One sort of the tuples' row encoding, no join: a nearly unique
    12-column key takes 3.8 s at full scale, against 10.4 s for a sorted vocabulary joined back.
    """
    return frame.with_columns(
        (pl.struct(list(profile.entities[name])).rank("dense") - 1).cast(pl.Int32).alias(entity_column(name))
        for name in names
    )
