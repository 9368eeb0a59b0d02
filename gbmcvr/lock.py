"""Exclusive locks on output folders (run directories, feature plans, the raw store): a lock file beside the
folder holds the owner's pid; a lock whose process is gone is stale and taken over."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from gbmcvr.errors import UserError


def lock_path(target: Path) -> Path:
    """The lock file of an output folder: `.NAME.lock` beside it."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


EMPTY_LOCK_GRACE_S = 5.0  # a holder writes its pid right after creating the lock; empty for longer = abandoned


def _abandoned_empty(path: Path) -> bool:
    """An empty lock file older than the grace period: its writer died before naming itself (e.g. disk full)."""
    try:
        stat = path.stat()
    except OSError:
        return False
    return stat.st_size == 0 and time.time() - stat.st_mtime > EMPTY_LOCK_GRACE_S


def _owner(path: Path) -> tuple[int, str]:
    try:
        pid_text, _, host = path.read_text().partition(" ")
        return int(pid_text), host.strip()
    except (OSError, ValueError):
        return 0, ""


@contextlib.contextmanager
def exclusive(target: Path, what: str) -> Iterator[None]:
    """Hold the lock of `target` for the block; another live holder is a UserError naming its pid."""
    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            pid, host = _owner(path)
            if pid == os.getpid() and host == socket.gethostname():
                yield  # re-entrant: this process already holds it
                return
            if (host == socket.gethostname() and not pid_alive(pid)) or (not pid and _abandoned_empty(path)):
                path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise UserError(
                f"{target}: {what} is being written by process {pid or '?'}"
                f"{f' on {host}' if host and host != socket.gethostname() else ''} (lock {path}); "
                "wait for it to finish, or delete the lock file if that process is gone"
            ) from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(me)
            yield
        finally:
            path.unlink(missing_ok=True)
        return
    raise UserError(f"{target}: could not take the lock {path}")
