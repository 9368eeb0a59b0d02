"""Build the feature tables of a plan from the raw store: fit / valid / test Parquet plus a manifest.

One pass prepares the plan's rows with cleaned numericals, dense categorical codes, the date cycle, the folds and
the crosses; small per-key tables (counts, group statistics, target encodings) are computed from the columns they
need; each split is then written one row group at a time, those tables gathered onto its rows. The prepared rows
are held in memory while they fit (STREAM_ROWS); above that they are streamed to a temporary Parquet file and
scanned, so memory follows the per-key tables and one row group, not the rows.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gbmcvr.atomic import atomic_dir, write_json
from gbmcvr.data.profile import Profile
from gbmcvr.data.split import TEST_LABELS, plan_days
from gbmcvr.errors import UserError
from gbmcvr.fe import clean, crosses, entities, entity_groups
from gbmcvr.fe.counts import CountFamily
from gbmcvr.fe.dates import date_exprs
from gbmcvr.fe.daycounts import DayCountFamily
from gbmcvr.fe.family import LIKE, SPLIT, Context, TableFamily
from gbmcvr.fe.groupstats import GroupFamily
from gbmcvr.fe.lagged import LaggedFamily
from gbmcvr.fe.lookup import Attached, Lookup, key_ranges
from gbmcvr.fe.novelty import NoveltyFamily
from gbmcvr.fe.spec import FeatureSpec, cross_name, is_entity_name, wants_entities, with_entity_keys
from gbmcvr.fe.target import EntityTargetFamily, TargetFamily, fold_expr
from gbmcvr.row_groups import DICTIONARY_PAGE_BYTES, write_row_groups
from gbmcvr.stored import check_parquet, load_json_object

__all__ = ["LIKE", "SPLIT", "BuildResult", "build", "read_manifest"]
FEATURE_VERSION = 5
# rows per Parquet row group: the batches the model stages read (Polars' own would follow its morsels)
ROW_GROUP_ROWS = 1 << 18
FEATURE_CODEC = "lz4"  # Parquet codec of the feature tables' columns it shrinks by COMPRESS_GAIN or more
COMPRESS_GAIN = 0.15
CODEC_PROBE_ROWS = 1 << 14  # rows of a split (spread over it, where it is in memory) that decide its codecs
ROWS_FILE = "_rows.parquet"  # the plan's prepared rows, written while a plan builds and removed before it completes
# raw rows above which a plan's rows are streamed through a Parquet file instead of held in memory: in memory the
# build peaks near 0.7 KB a row (2.45 GB at the challenge's 3.6 M rows), so this bounds it near 6 GB; streamed it
# is slower but its peak follows the per-key tables, not the rows (5.1 GB at 36 M rows). Both give the same tables.
STREAM_ROWS = 8_000_000
Keep = Callable[[pl.DataFrame], pl.DataFrame]  # the rows of a split's frame that its table holds
# the table families, in the order their columns appear in the feature tables
TABLE_FAMILIES: tuple[type[TableFamily], ...] = (
    CountFamily,
    GroupFamily,
    TargetFamily,
    NoveltyFamily,
    DayCountFamily,
    LaggedFamily,
    EntityTargetFamily,
)


@dataclass(frozen=True)
class BuildResult:
    out: Path
    rebuilt: bool
    rows: dict[str, int]
    columns: int
    seconds: float
    family_seconds: dict[str, float]


def raw_fingerprint(raw_dir: Path) -> str:
    manifest = Path(raw_dir) / "manifest.json"
    if not manifest.is_file():
        raise UserError(f"{raw_dir}: no raw store (run `gbmcvr ingest DATA_DIR` first)")
    fingerprint = load_json_object(manifest, "gbmcvr ingest DATA_DIR", ("fingerprint",))["fingerprint"]
    for split in ("train", "test"):
        check_parquet(Path(raw_dir) / f"{split}.parquet", "gbmcvr ingest DATA_DIR")
    return fingerprint


def _readable(path: Path) -> dict:
    """A manifest's content, or {} when it is damaged (so the plan is rebuilt instead of trusted)."""
    try:
        old = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return old if isinstance(old, dict) else {}


def _scan_raw(raw_dir: Path) -> pl.LazyFrame:
    train = pl.scan_parquet(raw_dir / "train.parquet", glob=False)
    test = pl.scan_parquet(raw_dir / "test.parquet", glob=False)
    return pl.concat([train, test], how="diagonal_relaxed")


def _vocabularies(
    raw: pl.LazyFrame, profile: Profile, spec: FeatureSpec, vocab_dir: Path, fingerprint: str
) -> dict[str, pl.DataFrame]:
    """Plan-independent vocabularies (from every raw row) for categoricals and crosses, cached on disk."""
    meta = vocab_dir / "vocab.json"
    key = {"fingerprint": fingerprint, "spec": spec.digest(), "version": FEATURE_VERSION}
    cats = list(profile.kept(profile.categorical))
    pairs = list(spec.cross.pairs) if spec.cross else []
    names = [*cats, *(cross_name(p) for p in pairs)]
    if (
        meta.is_file()
        and json.loads(meta.read_text()) == key
        and all((vocab_dir / f"{n}.parquet").is_file() for n in names)
    ):
        return {n: pl.read_parquet(vocab_dir / f"{n}.parquet", glob=False) for n in names}
    vocab: dict[str, pl.DataFrame] = {}
    for col in cats:
        vocab[col] = raw.select(pl.col(col).unique().sort(nulls_last=True)).collect()
    if pairs:
        day_cols = date_exprs(profile.day_column, spec.date) if spec.date else {}
        with_dates = raw.with_columns(**day_cols) if day_cols else raw
        for pair in pairs:
            vocab[cross_name(pair)] = crosses.build_vocab(with_dates, tuple(pair), cross_name(pair))
    with atomic_dir(vocab_dir) as tmp:
        for name, table in vocab.items():
            table.write_parquet(tmp / f"{name}.parquet")
        write_json(tmp / "vocab.json", key)
    return vocab


def _dense_exprs(vocab: dict[str, pl.DataFrame], cats: list[str]) -> list[pl.Expr]:
    """`_dense_codes` as expressions for each scan of the streamed rows: each raw value is in its vocabulary, so its
    index there is its position in the sorted values (null stays null). A hashed replace, not `_dense_codes`'
    binary search: on a scan's row groups it measured 58 s against 69-76 s at full scale."""
    out = []
    for col in cats:
        values = vocab[col][col].drop_nulls()
        codes = pl.Series(np.arange(len(values), dtype=np.int32))
        out.append(pl.col(col).replace_strict(values, codes, default=None, return_dtype=pl.Int32))
    return out


def _dense_codes(frame: pl.DataFrame, vocab: dict[str, pl.DataFrame], cats: list[str]) -> pl.DataFrame:
    """Replace hashed categorical codes by their index in the sorted vocabulary (null stays null)."""
    # expressions, so the columns' binary searches run side by side on the cores
    return frame.with_columns(
        pl.when(pl.col(col).is_not_null())
        .then(pl.lit(vocab[col][col].drop_nulls()).search_sorted(pl.col(col), side="left").cast(pl.Int32))
        .alias(col)
        for col in cats
    )


def _split_layout(
    rows: pl.DataFrame | pl.LazyFrame, days: dict[str, tuple[int, ...]]
) -> tuple[dict[str, int], dict[str, int]]:
    """Rows and first row of each split: the plan's rows hold the splits one after another, in the plan's order."""
    runs = rows.lazy().select(SPLIT).collect().rechunk().select(pl.col(SPLIT).rle()).unnest(SPLIT)
    found = runs["value"].to_list()
    if found != [s for s in days if s in found]:
        raise AssertionError(f"plan rows are not grouped by split: {found}")
    lengths = dict(zip(found, runs["len"].to_list(), strict=True))
    counts = {s: lengths.get(s, 0) for s in days}
    return counts, {s: sum(counts[t] for t in list(days)[: list(days).index(s)]) for s in days}


class _Recorder:
    """Collects output-column recipes and per-family build seconds."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.recipes: dict[str, tuple[str, str]] = {}
        self.seconds: dict[str, float] = {}
        self.progress = progress
        self._t = time.perf_counter()

    def done(self, family: str) -> None:
        now = time.perf_counter()
        self.seconds[family] = round(self.seconds.get(family, 0.0) + now - self._t, 3)
        self.progress(f"features: {family} ({now - self._t:.1f}s)")
        self._t = now

    def add(self, name: str, family: str, recipe: str) -> None:
        self.recipes[name] = (family, recipe)


def _base_frame(raw_dir: Path, profile: Profile, plan: str) -> tuple[pl.LazyFrame, dict[str, tuple[int, ...]]]:
    days = plan_days(profile, plan)
    day = profile.day_column
    parts = []
    for split, split_days in days.items():
        source = "test.parquet" if profile.test_day in split_days else "train.parquet"
        lf = pl.scan_parquet(raw_dir / source, glob=False).filter(pl.col(day).is_in(list(split_days)))
        parts.append(lf.with_columns(pl.lit(split).alias(SPLIT)))
    frame = pl.concat(parts, how="diagonal_relaxed")
    click, install = profile.labels
    return frame.with_columns(((pl.col(click) == 1) | (pl.col(install) == 1)).cast(pl.Int8).alias(LIKE)), days


def _cross_lookups(
    spec: FeatureSpec, vocab: dict[str, pl.DataFrame], cats: list[str], rec: _Recorder
) -> tuple[list[Lookup], list[str]]:
    """Each cross's lookup from its key columns' dense codes to its own code, and the crosses' names."""
    lookups, names = [], []
    for pair in spec.cross.pairs if spec.cross else ():
        name = cross_name(pair)
        # the vocabulary holds raw values: give it the dense codes the rows carry
        table = _dense_codes(vocab[name], vocab, [c for c in pair if c in cats])
        lookups.append(Lookup(tuple(pair), table, lambda v, n=name: {n: v(n).cast(pl.Int32)}))
        rec.add(name, "cross", f"cross: code of ({', '.join(pair)}) in vocab/{name}.parquet")
        names.append(name)
    return lookups, names


class _MemoryRows:
    """The plan's prepared rows (dense codes, crosses) held in memory: the fast way while they fit."""

    def __init__(
        self,
        lf: pl.LazyFrame,
        vocab: dict[str, pl.DataFrame],
        cats: list[str],
        days: dict[str, tuple[int, ...]],
    ) -> None:
        self.base = _dense_codes(lf.collect(), vocab, cats)
        self.lf = self.base.lazy()
        self.rows, self.offsets = _split_layout(self.base, days)

    def cross(self, lookups: list[Lookup], names: list[str]) -> None:
        """Add the crosses' columns: every cross in one pass over the key columns only (the rest is not copied)."""
        keys = list(dict.fromkeys(k for lookup in lookups for k in lookup.keys))
        attached = Attached(lookups, key_ranges(self.base, keys))
        self.base = self.base.hstack(attached.select(self.base.lazy().select(keys), names).collect())
        self.lf = self.base.lazy()

    def write(self, attached: Attached, columns: list[str], split: str, path: Path, keep: Keep | None) -> int:
        """Write one split's `columns` to `path` (only the rows `keep` keeps, when given), attached one row group of
        rows at a time; the number of rows written. Each column's codec is probed on rows spread over the split."""
        rows = self.base.slice(self.offsets[split], self.rows[split])
        if keep is not None:
            rows = keep(rows)
        spread = rows.gather_every(max(1, rows.height // CODEC_PROBE_ROWS))
        codecs = _codecs(attached.select(spread.lazy(), columns).collect().to_arrow())
        batches = (rows.slice(lo, ROW_GROUP_ROWS) for lo in range(0, max(rows.height, 1), ROW_GROUP_ROWS))
        return _write_groups(
            (attached.select(batch.lazy(), columns).collect().to_arrow() for batch in batches), path, codecs
        )

    def close(self) -> None:
        self.base, self.lf = None, None


class _StreamedRows:
    """The plan's rows streamed once to a temporary Parquet file and scanned from there: every family and split
    writer reads the columns it needs, dense codes and crosses applied per scan, so memory follows one row
    group and the per-key tables, not the rows."""

    def __init__(
        self,
        lf: pl.LazyFrame,
        vocab: dict[str, pl.DataFrame],
        cats: list[str],
        days: dict[str, tuple[int, ...]],
        path: Path,
    ) -> None:
        self.path = path
        lf.sink_parquet(path, compression="lz4", statistics=False, row_group_size=ROW_GROUP_ROWS)
        # dense codes are applied to every scan (a lookup Polars' streaming sink would not stream)
        dense = _dense_exprs(vocab, cats)
        self.lf = pl.scan_parquet(path, glob=False).with_columns(dense)
        self.prepare: Callable[[pl.LazyFrame], pl.LazyFrame] = lambda frame: frame.with_columns(dense)
        self.rows, self.offsets = _split_layout(pl.scan_parquet(path, glob=False), days)

    def cross(self, lookups: list[Lookup], names: list[str]) -> None:
        """Attach the crosses to every scan of the rows (a gather on the key columns), never stored."""
        keys = list(dict.fromkeys(k for lookup in lookups for k in lookup.keys))
        attached = Attached(lookups, key_ranges(self.lf, keys))
        columns, prepare = [*self.lf.collect_schema().names(), *names], self.prepare
        self.lf = attached.select(self.lf, columns)
        self.prepare = lambda frame: attached.select(prepare(frame), columns)

    def write(self, attached: Attached, columns: list[str], split: str, path: Path, keep: Keep | None) -> int:
        """Write one split's `columns` (only the rows `keep` keeps, when given), attached one row group of the rows
        file at a time; the number of rows written. Each column's codec is probed on the split's first rows (a
        probe spread over the split would read all of it once more)."""
        offset, n = self.offsets[split], self.rows[split]
        source = pq.ParquetFile(self.path)

        def batches() -> Iterator[pl.DataFrame]:
            start = 0
            for group in range(source.metadata.num_row_groups):
                length = source.metadata.row_group(group).num_rows
                lo, hi = max(start, offset), min(start + length, offset + n)
                start += length
                if lo < hi:
                    batch = pl.from_arrow(source.read_row_group(group)).slice(lo - (start - length), hi - lo)
                    yield batch if keep is None else keep(batch)

        return _write_groups(
            (attached.select(self.prepare(batch.lazy()), columns).collect().to_arrow() for batch in batches()), path
        )

    def close(self) -> None:
        self.path.unlink()


def _codecs(table: pa.Table) -> dict[str, str]:
    """FEATURE_CODEC for each column it shrinks by at least COMPRESS_GAIN on the table's first values, else none:
    smoothed rates and other high-entropy floats barely compress, and compressing them is a third of the encoding."""
    codecs = {}
    for name in table.column_names:
        values = table.column(name).slice(0, CODEC_PROBE_ROWS).combine_chunks().buffers()[-1]
        packed = pa.compress(values, codec=FEATURE_CODEC, asbytes=False) if values is not None else None
        gain = 1 - packed.size / values.size if packed is not None and values.size else 0.0
        codecs[name] = FEATURE_CODEC if gain >= COMPRESS_GAIN else "none"
    return codecs


def _write_groups(tables: Iterable[pa.Table], path: Path, codecs: dict[str, str] | None = None) -> int:
    """Write each table as row groups of `path`, encoding table i on a thread while table i+1 is attached; the
    number of rows written. `codecs` by column (default: probed on the first table).

    The Parquet encoder runs on one core and the attach on the other. At full scale the build peaks at 2.45 GB
    this way, against 2.9-3.0 GB with Polars' streaming sink of the same frames, in the same time or less.
    Every column starts dictionary-encoded: encodings, rates and codes repeat one value per category and day, so
    the file is about half the size of plain values, and a column with more distinct values than a dictionary
    page holds falls back to plain after that page.
    """

    def open_writer(target: Path, first: pa.Table) -> pq.ParquetWriter:
        compression = codecs if codecs is not None else _codecs(first)
        return pq.ParquetWriter(
            target,
            first.schema,
            compression=compression,
            dictionary_pagesize_limit=DICTIONARY_PAGE_BYTES,
            write_statistics=False,
        )

    return write_row_groups(tables, path, open_writer, group_rows=ROW_GROUP_ROWS)


def _keeping(id_col: str, ids: pl.Series) -> Keep:
    """The rows of a frame whose id is one of `ids`: a binary search in the sorted ids, so each streamed row group
    does not hash them all again."""
    known = np.unique(ids.cast(pl.Int64).to_numpy())
    if len(known) == 0:
        return lambda frame: frame.clear()

    def keep(frame: pl.DataFrame) -> pl.DataFrame:
        row_ids = frame[id_col].cast(pl.Int64).to_numpy()
        found = known[np.minimum(np.searchsorted(known, row_ids), len(known) - 1)] == row_ids
        return frame.filter(pl.Series(found))

    return keep


def _raw_rows(raw_dir: Path) -> int:
    """Rows of the raw store (train and test), from its Parquet footers."""
    return sum(pq.ParquetFile(Path(raw_dir) / name).metadata.num_rows for name in ("train.parquet", "test.parquet"))


def _key_lists(spec: FeatureSpec) -> list[tuple[str, ...]]:
    """Every key of the families that may name entities."""
    return [
        *(k for part in (spec.novelty, spec.lagged, spec.daycount) if part is not None for k in part.keys),
        *((c,) for c in (spec.daycount.distinct if spec.daycount else ())),
        *((c,) for part in (spec.target, spec.entity_target) if part is not None for c in part.columns),
    ]


def _entities_used(spec: FeatureSpec, profile: Profile) -> list[str]:
    return entities.entities_used(_key_lists(spec), profile)


def entity_profile(
    raw_dir: Path, profile: Profile, spec: FeatureSpec, progress: Callable[[str], None] = lambda _: None
) -> Profile:
    """The profile with the entity groups the spec's key families use (`fe/entity_groups.py`); unchanged when
    the spec names no entity. An entity name that neither discovery nor the profile gives is a UserError."""
    named = list(dict.fromkeys(c for key in _key_lists(spec) for c in key if is_entity_name(c, profile)))
    if not named and not wants_entities(spec):
        return profile
    resolved = entity_groups.resolve(raw_dir, profile, spec.entities, raw_fingerprint(raw_dir), progress)
    missing = [n for n in named if n not in resolved.entities]
    if missing:
        known = "; ".join(f"{n} = {', '.join(g)}" for n, g in resolved.entities.items()) or "none"
        raise UserError(
            f"[features]: entity '{missing[0]}' names no group of {raw_dir} (entity groups, entities = "
            f'"{spec.entities}": {known}); use one of them'
        )
    return resolved


def keyed(
    raw_dir: Path, profile: Profile, spec: FeatureSpec, progress: Callable[[str], None] = lambda _: None
) -> tuple[Profile, FeatureSpec]:
    """The profile with the entity groups the build uses and the spec with `over_entities` keys spelled out."""
    resolved = entity_profile(raw_dir, profile, spec, progress)
    return resolved, with_entity_keys(spec, resolved)


def recipe_hash(spec: FeatureSpec, profile: Profile) -> str:
    """The manifest's `config_hash`: the feature set's digest plus the entity groups it uses (`profile` as
    `entity_profile` resolves it, so tables keyed on other groups are stale)."""
    used = _entities_used(spec, profile)
    config_hash = spec.digest()
    if used:  # the profile's entity groups are part of the recipe
        groups = json.dumps({e: profile.entities[e] for e in used}, sort_keys=True)
        config_hash = hashlib.sha256(f"{config_hash}{groups}".encode()).hexdigest()[:16]
    return config_hash


def current_recipe_hash(raw_dir: Path, profile: Profile, spec: FeatureSpec) -> str:
    """The recipe hash tables built now from the raw store would carry (entity groups resolved as build does)."""
    resolved, spelled = keyed(raw_dir, profile, spec)
    return recipe_hash(spelled, resolved)


def stale_reason(manifest: dict, raw_dir: Path, profile: Profile, spec: FeatureSpec) -> str | None:
    """Why a built plan no longer matches the raw store or the feature set's config (None: it is current)."""
    if manifest.get("raw_fingerprint") != raw_fingerprint(raw_dir):
        return "the raw store changed since they were built (re-ingested)"
    if manifest.get("config_hash") != current_recipe_hash(raw_dir, profile, spec):
        return "the feature set's config changed since they were built"
    if manifest.get("version") != FEATURE_VERSION:
        return "they were built by another gbmcvr version"
    return None


def build(
    raw_dir: Path,
    profile: Profile,
    spec: FeatureSpec,
    feature_set: str,
    plan: str,
    out_root: Path,
    progress: Callable[[str], None] = lambda _: None,
    force: bool = False,
    stream: bool | None = None,
    fit_ids: pl.Series | None = None,
) -> BuildResult:
    """Build (or reuse) `out_root/<feature_set>/<plan>/` for the given spec; `stream` (default: above
    STREAM_ROWS raw rows) streams the plan's rows through a file so that memory does not grow with them.
    `fit_ids` (row ids) restricts the fit table to those rows: every fit row still feeds the per-key tables, so
    their values are those of the whole table (`select` writes only the rows its proxies read)."""
    start = time.perf_counter()
    raw_dir, out = Path(raw_dir), Path(out_root) / feature_set / plan
    fingerprint = raw_fingerprint(raw_dir)
    profile, spec = keyed(raw_dir, profile, spec, progress)
    used = _entities_used(spec, profile)
    config_hash = recipe_hash(spec, profile)
    if fit_ids is not None:  # the kept rows are part of the recipe
        kept = hashlib.sha256(fit_ids.cast(pl.Int64).sort().to_numpy().tobytes()).hexdigest()
        config_hash = hashlib.sha256(f"{config_hash}{kept}".encode()).hexdigest()[:16]
    manifest_path = out / "manifest.json"
    if not force and manifest_path.is_file():
        old = _readable(manifest_path)
        if (old.get("config_hash"), old.get("raw_fingerprint"), old.get("version")) == (
            config_hash,
            fingerprint,
            FEATURE_VERSION,
        ):
            progress(f"features: {feature_set}/{plan} is current, nothing rebuilt")
            return BuildResult(out, False, old["rows"], len(old["columns"]), 0.0, old["build_seconds"])

    rec = _Recorder(progress)
    families = [cls(getattr(spec, cls.name), profile) for cls in TABLE_FAMILIES if getattr(spec, cls.name) is not None]
    derived = {family.name for family in families}
    id_col, day = profile.id_column, profile.day_column
    cats = list(profile.kept(profile.categorical))
    binary = list(profile.kept(profile.binary))
    nums = list(profile.kept(profile.numerical))
    lf, days = _base_frame(raw_dir, profile, plan)
    if used:
        lf = entities.with_keys(lf, profile, used)
    exprs = clean.clean_exprs(profile, spec.clean)
    for col in nums:
        rec.add(col, "clean", clean.recipe(profile, spec.clean, col))
    date_cols = date_exprs(day, spec.date) if spec.date else {}
    for name in date_cols:
        rec.add(
            name,
            "date",
            f"date: {day} mod {spec.date.cycle}" + (" (sin/cos)" if name.endswith(("sin", "cos")) else ""),
        )
    folds = next((part.folds for part in (spec.target, spec.entity_target) if part is not None), 5)
    vocab = _vocabularies(_scan_raw(raw_dir), profile, spec, Path(out_root) / feature_set / "vocab", fingerprint)
    lf = lf.with_columns(*exprs, fold_expr(id_col, folds), **date_cols)
    for col in cats:
        rec.add(col, "categorical", f"categorical: index of {col} in the sorted vocabulary of all raw rows")
    for col in binary:
        rec.add(col, "binary", f"binary: {col}")
    crosses, cross_cols = _cross_lookups(spec, vocab, cats, rec)
    label_cols = [*profile.labels, LIKE]
    manifest_cols: list[dict[str, str]] = []
    if stream is None:
        raw_rows = _raw_rows(raw_dir)
        stream = raw_rows > STREAM_ROWS
        if stream:
            progress(f"features: {raw_rows:,} raw rows (over {STREAM_ROWS:,}): the plan's rows stream through a file")
    with atomic_dir(out) as tmp:
        prepared = (
            _StreamedRows(lf, vocab, cats, days, tmp / ROWS_FILE) if stream else _MemoryRows(lf, vocab, cats, days)
        )
        rows = prepared.rows
        for split, n in rows.items():
            if n == 0:
                raise UserError(
                    f"plan '{plan}': the {split} split (days {', '.join(map(str, days[split]))}) has no rows in "
                    f"{raw_dir}"
                )
        rec.done("clean+date")
        if crosses:
            prepared.cross(crosses, cross_cols)
            rec.done("cross")

        ctx = Context(profile, prepared.lf, days)
        lookups: list[Lookup] = []
        for family in families:
            lookups += family.lookups(ctx)
            for name, recipe in family.recipes().items():
                rec.add(name, family.name, recipe)
            rec.done(family.name)
        del ctx

        cardinality = {
            **{c: vocab[c].height for c in cats},
            **{c: vocab[c].height for c in cross_cols},
            **dict.fromkeys(binary, 2),
            **{c: spec.date.cycle for c in date_cols if not c.endswith(("sin", "cos"))},
        }
        codes_max = spec.categorical.codes_max
        encoded_only = {c for c in [*cats, *cross_cols] if codes_max and cardinality[c] > codes_max}
        feature_cols = [
            *[c for c in [*cats, *binary, *nums, *date_cols, *cross_cols] if c not in encoded_only],
            *[c for c, (family, _) in rec.recipes.items() if family in derived],
        ]
        ranges = key_ranges(prepared.lf, [k for lookup in lookups for k in lookup.keys])
        kept_rows = {"fit": _keeping(id_col, fit_ids)} if fit_ids is not None else {}
        written = {}
        for split in days:
            attached = Attached([lk.on_days(day, days[split]) for lk in lookups if lk.serves(split)], ranges)
            keep = [id_col, day, *feature_cols] + (label_cols if split != "test" else [])
            written[split] = prepared.write(attached, keep, split, tmp / f"{split}.parquet", kept_rows.get(split))
            if split == "test" and profile.test_day not in days[split]:
                # a rehearsal test day (backtest plan): its labels are kept aside, never in the feature table
                prepared.lf.filter(pl.col(SPLIT) == split).select(id_col, day, *label_cols).sink_parquet(
                    tmp / TEST_LABELS, compression="lz4"
                )
            share = f" of {rows[split]:,}" if written[split] != rows[split] else ""
            progress(f"features: wrote {split}.parquet ({written[split]:,}{share} rows)")
        prepared.close()
        if fit_ids is not None and written["fit"] != fit_ids.n_unique():
            raise ValueError(
                f"{written['fit']:,} of the {fit_ids.n_unique():,} fit ids to keep are fit rows of the plan"
            )
        schema = pl.read_parquet_schema(tmp / "fit.parquet")
        categorical = set(cardinality)
        # categorical handling by vocabulary size: native LightGBM categoricals only for small vocabularies
        native = {c for c, k in cardinality.items() if k <= spec.categorical.native_max}
        for name, dtype in schema.items():
            family, recipe = rec.recipes.get(name, ("meta", name))
            role = (
                "id"
                if name == id_col
                else "day"
                if name == day
                else "label"
                if name in label_cols
                else "categorical"
                if name in categorical
                else "numeric"
            )
            entry = {"name": name, "dtype": str(dtype), "role": role, "family": family, "recipe": recipe}
            if role == "categorical":
                entry |= {"cardinality": cardinality[name], "native": name in native}
            manifest_cols.append(entry)
        rec.done("write")
        total = round(time.perf_counter() - start, 3)
        write_json(
            tmp / "manifest.json",
            {
                "version": FEATURE_VERSION,
                "feature_set": feature_set,
                "plan": plan,
                "profile": profile.name,
                "config_hash": config_hash,
                "raw_fingerprint": fingerprint,
                "entities": {e: list(profile.entities[e]) for e in used},
                "spec": asdict(spec),
                "splits": {s: {"days": list(d), "rows": written[s]} for s, d in days.items()},
                "rows": written,
                **({"plan_rows": rows} if written != rows else {}),
                "columns": manifest_cols,
                "build_seconds": rec.seconds,
                "total_seconds": total,
            },
        )
    return BuildResult(out, True, written, len(manifest_cols), total, rec.seconds)


def read_manifest(plan_dir: Path, build_hint: str) -> dict:
    """The manifest of a built plan, or a UserError that says which command builds it."""
    path = Path(plan_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{plan_dir}: no feature tables (build them with `{build_hint}`)")
    return load_json_object(path, f"{build_hint} --overwrite", ("columns", "config_hash", "raw_fingerprint"))
