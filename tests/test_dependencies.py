"""Every third-party module imported under gbmcvr/ belongs to a distribution declared in pyproject.toml."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for name, extra in project.get("optional-dependencies", {}).items():
        requirements += [*extra, name]  # an extra's own name: its module when it is not installed here
    return {_normalise(re.match(r"[A-Za-z0-9_.-]+", r).group(0)) for r in requirements}


def _imported_modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted((ROOT / "gbmcvr").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], path)
    return found


def _undeclared(imports: dict[str, Path], declared: set[str]) -> list[str]:
    owners = packages_distributions()
    undeclared = []
    for module, path in imports.items():
        if module in sys.stdlib_module_names or module in ("gbmcvr", "__future__"):
            continue
        dists = {_normalise(d) for d in owners.get(module, [])}
        if not dists and _normalise(module) in declared:
            continue  # an optional extra that is not installed here: declared under its own name
        if not dists & declared:
            undeclared.append(f"{module} (in {path.name}, distributions {sorted(dists) or 'none'})")
    return undeclared


def test_every_third_party_import_is_declared() -> None:
    undeclared = _undeclared(_imported_modules(), _declared())
    assert not undeclared, "imports not declared in pyproject.toml: " + "; ".join(undeclared)


def test_the_check_flags_an_import_whose_distribution_is_not_declared() -> None:
    imports = {"_pytest": ROOT / "x.py", "json": ROOT / "y.py", "numpy": ROOT / "z.py"}
    assert _undeclared(imports, {"numpy"}) == ["_pytest (in x.py, distributions ['pytest'])"]
    assert _undeclared({"no_such_module_xyz": ROOT / "x.py"}, {"numpy"}) == [
        "no_such_module_xyz (in x.py, distributions none)"
    ]


def test_an_optional_extra_that_is_not_installed_counts_as_declared_by_its_name() -> None:
    imports = {"no_such_extra_xyz": ROOT / "compat.py"}
    assert _undeclared(imports, {"no-such-extra-xyz"}) == []
    assert _undeclared(imports, {"numpy"}) == ["no_such_extra_xyz (in compat.py, distributions none)"]
