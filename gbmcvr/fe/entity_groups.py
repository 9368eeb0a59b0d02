"""The entity groups that key families name: discovered once per raw store, or the profile's declaration.

Discovery (`data/entity_discovery.py`) runs on a seeded sample of the raw store's train and test rows, reading
the day and feature columns only (never a label), and is stored in `<raw store>/entities.json`, keyed by the
raw store's fingerprint and the profile's declaration. The profile's `[entities]` are hints it checks and may
overrule; `[features] entities = "profile"` keeps them as declared.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from gbmcvr.atomic import write_json
from gbmcvr.data.entity_discovery import SAMPLE_ROWS, DiscoveryReport, GroupEvidence, discover_entities
from gbmcvr.data.profile import Profile
from gbmcvr.errors import UserError
from gbmcvr.stored import load_json_object

FILE = "entities.json"
VERSION = 2  # 2: a declared group that identifies no one is dropped
SEED = 0  # the sample and the independence baseline: fixed, so the groups do not follow the config's seed


def sample_raw(raw_dir: Path, profile: Profile, rows: int = SAMPLE_ROWS, seed: int = SEED) -> pl.DataFrame:
    """A seeded sample of the raw store's rows, train and test in proportion: day and feature columns only."""
    scans = {s: pl.scan_parquet(Path(raw_dir) / f"{s}.parquet", glob=False) for s in ("train", "test")}
    sizes = {s: int(scan.select(pl.len()).collect().item()) for s, scan in scans.items()}
    total = max(sum(sizes.values()), 1)
    rng = np.random.default_rng(seed)
    parts = []
    for split, scan in scans.items():
        present = set(scan.collect_schema().names())
        cols = [c for c in (profile.day_column, *profile.feature_columns) if c in present]
        take = min(sizes[split], round(rows * sizes[split] / total))
        picked = pl.Series(np.sort(rng.choice(sizes[split], size=take, replace=False)), dtype=pl.UInt32)
        part = scan.select(cols).with_row_index("__row").filter(pl.col("__row").is_in(picked.implode()))
        parts.append(part.drop("__row").collect(engine="streaming"))
    return pl.concat(parts, how="diagonal_relaxed")


def _key(profile: Profile, fingerprint: str) -> dict[str, Any]:
    """What the stored groups depend on: the raw store, the profile's columns and declaration, the search."""
    declared = {
        "columns": [profile.day_column, *profile.categorical, *profile.binary, *profile.numerical],
        "entities": {name: list(group) for name, group in profile.entities.items()},
    }
    digest = hashlib.sha256(json.dumps(declared, sort_keys=True).encode()).hexdigest()[:16]
    return {"fingerprint": fingerprint, "profile": digest, "version": VERSION, "seed": SEED, "rows": SAMPLE_ROWS}


def discover(raw_dir: Path, profile: Profile, fingerprint: str) -> dict[str, Any]:
    """Discover the groups on the raw store's sample; the record `entities.json` holds."""
    start = time.perf_counter()
    report = discover_entities(sample_raw(raw_dir, profile), profile, seed=SEED)
    return {
        "key": _key(profile, fingerprint),
        "groups": {name: list(group) for name, group in report.groups.items()},
        "overruled": list(report.overruled),
        "rows": report.rows,
        "columns_searched": list(report.columns_searched),
        "seconds": round(time.perf_counter() - start, 2),
        "evidence": [asdict(e) for e in report.evidence],
    }


def stored_or_discovered(
    raw_dir: Path, profile: Profile, fingerprint: str, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """The raw store's discovery record: read back when it matches the store and profile, else made and stored."""
    path = Path(raw_dir) / FILE
    key = _key(profile, fingerprint)
    if path.is_file():
        try:
            record = load_json_object(path, "gbmcvr features", ("key", "groups"))
        except UserError:
            record = {}
        if record.get("key") == key and isinstance(record.get("groups"), dict):
            return record
    progress(f"entities: discovering entity keys on a sample of {raw_dir} (once per raw store)")
    record = discover(raw_dir, profile, fingerprint)
    write_json(path, record)
    return record


def report_of(record: dict[str, Any]) -> DiscoveryReport:
    """A stored discovery record as the report analyze renders, so that analyze shows the groups features use."""
    evidence = tuple(GroupEvidence(**{**e, "columns": tuple(e["columns"])}) for e in record.get("evidence", []))
    return DiscoveryReport(
        groups={name: tuple(group) for name, group in record["groups"].items()},
        evidence=evidence,
        rows=int(record.get("rows", 0)),
        columns_searched=tuple(record.get("columns_searched", ())),
        overruled=tuple(record.get("overruled", ())),
    )


def describe(record: dict[str, Any], profile: Profile) -> str:
    """One line: the groups used, and each declared group that was overruled, with the reason."""
    used = "; ".join(f"{name} = {', '.join(group)}" for name, group in record["groups"].items())
    reasons = {
        e["name"]: e["reason"] if not e.get("is_key") else "a key, but discovery found a wider group"
        for e in record.get("evidence", [])
        if e.get("source") == "declared"
    }
    overruled = [
        f"{name} ({', '.join(profile.entities[name])}: {reasons.get(name, 'discovery found another group')})"
        for name in record.get("overruled", [])
        if name in profile.entities
    ]
    line = f"entities: discovered on {record.get('rows', 0):,} rows: {used or 'none'}"
    return line + (f"; overruled the profile's {'; '.join(overruled)}" if overruled else "")


def resolve(
    raw_dir: Path,
    profile: Profile,
    source: str,
    fingerprint: str,
    progress: Callable[[str], None] = lambda _: None,
) -> Profile:
    """The profile whose `entities` the key families use: the discovered groups, or (source "profile") its own."""
    if source == "profile":
        progress('entities: the profile\'s declared groups (entities = "profile")')
        return profile
    record = stored_or_discovered(raw_dir, profile, fingerprint, progress)
    progress(describe(record, profile))
    return replace(profile, entities={name: tuple(group) for name, group in record["groups"].items()})
