"""Read TOML into plain dicts and check keys, so every config error names the file and the key."""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from gbmcvr.errors import UserError


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys outside `allowed`, naming the first unknown one and what is allowed."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key '{key}' (allowed: {', '.join(allowed)})")
