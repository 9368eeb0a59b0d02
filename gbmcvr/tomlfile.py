"""Read TOML into plain dicts and check keys, so every config error names the file and the key."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import fields
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin, get_type_hints

from gbmcvr.errors import UserError


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file; a missing file or a syntax error is a UserError naming the file."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a TOML file")
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")  # a byte-order mark, as some editors write, is harmless
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML ({exc})") from None


def check_keys(table: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys outside `allowed`, naming the first unknown one and what is allowed."""
    allowed = list(allowed)
    for key in table:
        if key not in allowed:
            raise UserError(f"{where}: unknown key '{key}' (allowed: {', '.join(allowed)})")


def _type_name(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        return " or ".join(_type_name(a) for a in args if a is not type(None))
    if origin is tuple:
        if args and get_origin(args[0]) is tuple:
            return "a list of lists"
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    if origin is dict or hint is dict:
        return "a table"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(hint, str(hint))


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted to the field's Python type) for one TOML value."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):
        for arg in args:
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if hint is str:
        return isinstance(value, str), value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False, value
        item_hint = args[0] if args else Any
        items = []
        for item in value:
            ok, converted = _coerce(item, item_hint)
            if not ok:
                return False, value
            items.append(converted)
        return True, tuple(items)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value


def typed_fields(cls: type, table: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Check a TOML table against a dataclass: unknown keys and values of the wrong type are errors naming
    the key, the expected type and the value; lists become tuples."""
    hints = get_type_hints(cls)
    allowed = [f.name for f in fields(cls) if f.init]
    check_keys(table, allowed, where)
    out = {}
    for key, value in table.items():
        ok, converted = _coerce(value, hints[key])
        if not ok:
            raise UserError(f"{where}: '{key}' must be {_type_name(hints[key])}, got {value!r}")
        out[key] = converted
    return out


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items() if v is not None) + " }"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def toml_text(tables: Mapping[str, Any], prefix: str = "") -> str:
    """TOML for nested dicts: scalars first, then each sub-dict as a `[prefix.name]` table (None values left out)."""
    lines = [f"{_key(k)} = {_value(v)}" for k, v in tables.items() if v is not None and not isinstance(v, dict)]
    for name, sub in tables.items():
        if isinstance(sub, dict):
            header = f"{prefix}{_key(name)}"
            body = toml_text(sub, f"{header}.")
            lines += ["", f"[{header}]", body] if body else ["", f"[{header}]"]
    return "\n".join(line for line in lines).strip("\n")
