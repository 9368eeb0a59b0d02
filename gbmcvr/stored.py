"""Reading back what gbmcvr stored (run.json, manifests, prediction tables): a damaged or truncated file is
a UserError that names it and the command that rebuilds it, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from gbmcvr.errors import UserError


def damaged(path: Path, rebuild: str, reason: str) -> UserError:
    """The one-line error for a stored file that cannot be read back."""
    return UserError(f"{path}: damaged ({reason}); rebuild it with `{rebuild}`")


def load_json(path: Path, rebuild: str) -> Any:
    """A JSON file gbmcvr wrote; empty, truncated or non-JSON content is a UserError naming `rebuild`."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise damaged(path, rebuild, "not text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise damaged(
            path, rebuild, "empty file" if not text.strip() else f"invalid JSON at line {exc.lineno}"
        ) from None


def load_json_object(path: Path, rebuild: str, keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON object with the given keys, else a UserError naming `rebuild`."""
    obj = load_json(path, rebuild)
    if not isinstance(obj, dict):
        raise damaged(Path(path), rebuild, f"expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise damaged(Path(path), rebuild, f"no {', '.join(missing)}")
    return obj


def load_parquet(path: Path, rebuild: str, columns: list[str] | None = None) -> pl.DataFrame:
    """A Parquet file gbmcvr wrote; a truncated or foreign file is a UserError naming `rebuild`."""
    path = Path(path)
    try:
        return pl.read_parquet(path, columns=columns, glob=False)
    except (pl.exceptions.PolarsError, OSError) as exc:
        if isinstance(exc, OSError) and not path.is_file():
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise damaged(path, rebuild, first[:160]) from None


def check_parquet(path: Path, rebuild: str) -> None:
    """Read a stored Parquet file's footer: a truncated or overwritten file is a UserError naming `rebuild`."""
    try:
        pq.read_metadata(path)
    except (pa.ArrowException, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise damaged(Path(path), rebuild, first[:160]) from None
