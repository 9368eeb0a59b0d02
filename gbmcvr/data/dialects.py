"""Data dialects: the same generated data written the ways real exporters write it, for benchmarks and tests.

`int` (as generated), `intfloat` (integer columns as `0.0`/`123.0`, as pandas writes them when they have missing
values), `crlf` and `gzip` hold the same data; `hashed` (categories as sparse 63-bit integers) and `noisy`
(continuous columns with tiny noise, high entropy) are different data sets of the same shape.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl

from gbmcvr.atomic import atomic_dir
from gbmcvr.data.ingest import schema, source_files
from gbmcvr.data.profile import SHARECHAT, Profile
from gbmcvr.errors import UserError

DIALECTS = ("int", "intfloat", "hashed", "noisy", "crlf", "gzip")
SAME_DATA = ("int", "intfloat", "crlf", "gzip")  # dialects whose raw store equals the `int` one
_MASK63 = np.uint64(2**63 - 1)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it modulo 2^63 is a bijection
NOISE = 1e-7  # relative size of the noise added to continuous columns


def write_dialect(src: Path, out: Path, dialect: str, profile: Profile = SHARECHAT, seed: int = 0) -> Path:
    """Write the data folder `src` (as `gbmcvr synth` writes it) to `out` in `dialect`; files other than the
    profile's train and test files (truth, marker) are copied. Returns `out`."""
    if dialect not in DIALECTS:
        raise UserError(f"unknown dialect '{dialect}' (choose from {', '.join(DIALECTS)})")
    src, out = Path(src), Path(out)
    train, test = source_files(src, profile)
    data_files = set(train) | set(test)
    with atomic_dir(out) as tmp:
        for path in sorted(src.rglob("*")):
            target = tmp / path.relative_to(src)
            if path.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif path not in data_files or dialect == "int":
                _link_or_copy(path, target)
        for i, path in enumerate(sorted(data_files) if dialect != "int" else []):
            frame = _TRANSFORMS[dialect](_read(path, profile), profile, np.random.default_rng([seed, i]))
            _write(frame, tmp / path.relative_to(src), dialect, profile.separator)
    return out


def _link_or_copy(path: Path, target: Path) -> None:
    try:
        os.link(path, target)
    except OSError:
        shutil.copy2(path, target)


def _read(path: Path, profile: Profile) -> pl.DataFrame:
    dtypes = schema(profile, with_labels=True)
    header = pl.read_csv(path, separator=profile.separator, n_rows=0).columns
    return pl.read_csv(path, separator=profile.separator, schema={c: dtypes[c] for c in header})


def _write(frame: pl.DataFrame, target: Path, dialect: str, sep: str) -> None:
    if dialect == "gzip":
        target = target.with_name(target.name + ".gz")
        frame.write_csv(target, separator=sep, null_value="", compression="gzip", check_extension=False)
        return
    terminator = "\r\n" if dialect == "crlf" else "\n"
    frame.write_csv(target, separator=sep, null_value="", line_terminator=terminator)


def _as_is(frame: pl.DataFrame, profile: Profile, rng: np.random.Generator) -> pl.DataFrame:
    return frame


def _integral_floats(frame: pl.DataFrame, profile: Profile, rng: np.random.Generator) -> pl.DataFrame:
    """Categorical and binary columns as floats: written `0.0`, `1.0`, `123.0`, nulls still empty."""
    cols = [c for c in (*profile.categorical, *profile.binary) if c in frame.columns]
    return frame.with_columns(pl.col(cols).cast(pl.Float64))


def hash63(values: np.ndarray, salt: int) -> np.ndarray:
    """A fixed bijection of integers onto sparse 63-bit integers (multiply by an odd constant, xor-shift)."""
    x = (values.astype(np.uint64) + np.uint64(salt)) & _MASK63
    with np.errstate(over="ignore"):
        x = (x * _GOLDEN) & _MASK63
    return (x ^ (x >> np.uint64(29))).astype(np.int64)


def _hashed(frame: pl.DataFrame, profile: Profile, rng: np.random.Generator) -> pl.DataFrame:
    """Category values mapped by `hash63` (salted by column) to large sparse integers: an isomorphic data set."""
    cols = [c for c in profile.categorical if c in frame.columns]
    return frame.with_columns(
        pl.when(pl.col(c).is_not_null()).then(pl.Series(hash63(frame[c].fill_null(0).to_numpy(), i))).alias(c)
        for i, c in enumerate(cols)
    )


def _noisy(frame: pl.DataFrame, profile: Profile, rng: np.random.Generator) -> pl.DataFrame:
    """Continuous numerical columns (any non-integral value) with a tiny relative noise: high-entropy floats."""
    cols = [c for c in profile.numerical if c in frame.columns]
    continuous = frame.select((pl.col(c) != pl.col(c).round()).any().alias(c) for c in cols).row(0, named=True)
    return frame.with_columns(
        pl.col(c) * (1 + pl.Series(rng.uniform(-NOISE, NOISE, frame.height)))
        + pl.Series(rng.normal(0, NOISE, frame.height))
        for c in cols
        if continuous[c]
    )


_TRANSFORMS: dict[str, Callable[[pl.DataFrame, Profile, np.random.Generator], pl.DataFrame]] = {
    "intfloat": _integral_floats,
    "hashed": _hashed,
    "noisy": _noisy,
    "crlf": _as_is,
    "gzip": _as_is,
}
