"""Atomic file and directory writes: build under a temporary name, rename when complete.

Temporary names carry the writer's pid (`.NAME.<pid>.<random>.tmp`), so the next writer of the same target removes
what a killed process left behind. Files and folders get the permissions the umask gives (not mkstemp's 0600),
and a folder that cannot be written (read-only, disk full) is a UserError naming the path."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gbmcvr.errors import UserError, exception_chain
from gbmcvr.lock import pid_alive

if TYPE_CHECKING:
    import polars as pl

# errors that say "this place cannot be written": the user can fix them, they are not bugs
WRITE_ERRNOS = {errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EPERM, errno.EFBIG}
_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[^.]+\.(tmp|old)$")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _apply_umask(path: Path, is_dir: bool, mask: int | None = None) -> None:
    os.chmod(path, (0o777 if is_dir else 0o666) & ~(_umask() if mask is None else mask))


def write_error(path: Path, exc: OSError) -> UserError:
    """A one-line UserError for an OS error that stops a write (read-only folder, disk full, ...)."""
    where = exc.filename or path
    return UserError(f"{where}: cannot write ({exc.strerror or exc}); free space or choose a writable folder")


_FAULT_TEXTS = {  # how Polars, Arrow, LightGBM and torch word the same OS errors in their own exception types
    "no space left on device": "No space left on device",
    "os error 28": "No space left on device",
    "disk quota exceeded": "Disk quota exceeded",
    "read-only file system": "Read-only file system",
    "os error 30": "Read-only file system",
    "permission denied": "Permission denied",
    "os error 13": "Permission denied",
    "file too large": "File too large",
    "cannot write binary data": "short write: disk full?",  # LightGBM's wording for a failed model save
}


def fault_error(exc: BaseException) -> UserError | None:
    """A one-line UserError for a real storage fault however a library wraps it (an OSError with a write
    errno, or a Polars/Arrow/LightGBM error whose text names one), else None."""
    for cause in exception_chain(exc):
        if isinstance(cause, OSError) and cause.errno in WRITE_ERRNOS:
            return write_error(Path(cause.filename or "."), cause)
        text = str(cause)
        lowered = text.lower()
        for needle, reason in _FAULT_TEXTS.items():
            if needle in lowered:
                first = text.strip().splitlines()[0][:200]
                return UserError(f"cannot write ({reason}): {first}; free space or choose a writable folder")
    return None


def remove_leftovers(target: Path) -> list[Path]:
    """Remove temporary siblings of `target` left by processes that are gone; return what was removed."""
    target = Path(target)
    removed = []
    if not target.parent.is_dir():
        return removed
    for path in target.parent.iterdir():
        match = _LEFTOVER.match(path.name)
        if match and match["name"] == target.name and not pid_alive(int(match["pid"])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it over `target`, on failure remove it."""
    target = Path(target)
    tmp_path = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        _apply_umask(tmp_path, is_dir=False)
        os.replace(tmp_path, target)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_error(target, exc) from None
        raise
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path, keep_old: Path | None = None) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `target` (old contents removed, or moved to
    `keep_old` when given: run history keeps every attempt)."""
    target = Path(target)
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(target)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
        yield tmp
        mask = _umask()
        for path in [tmp, *tmp.rglob("*")]:
            _apply_umask(path, is_dir=path.is_dir(), mask=mask)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".old", dir=target.parent))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            if keep_old is not None:
                keep_old.parent.mkdir(parents=True, exist_ok=True)
                os.replace(old / "x", keep_old)
            shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise write_error(target, exc) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, obj: Any) -> None:
    """Write JSON (indented, keys kept in order) atomically."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def write_parquet(path: Path, frame: pl.DataFrame) -> None:
    """Write a Parquet file atomically."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
