"""The distribution's shape: the product's folders and one console script."""

from __future__ import annotations

import tomllib
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"hub", "anonymisation", "policies", "sandbox", "contracts"}


def test_top_level_packages_are_the_products_folders() -> None:
    found = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert found == PACKAGES
    for folder in ("tests", "deploy", "benchmarks", "docs", ".ci"):
        assert (ROOT / folder).is_dir(), folder
    for name in ("README.md", "CHANGELOG.md", "Makefile", ".ci/run"):
        assert (ROOT / name).is_file(), name


def test_one_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "cgt-cleanroom"
    assert project["scripts"] == {"cleanroom": "hub.cli:cli"}
    (script,) = [e for e in entry_points(group="console_scripts") if e.name == "cleanroom"]
    assert script.value == "hub.cli:cli"


def test_libraries_stay_libraries() -> None:
    """anonymisation/ never imports Flask or the hub; the sandbox client needs only
    requests and pandas."""
    for path in (ROOT / "anonymisation").rglob("*.py"):
        text = path.read_text()
        for banned in ("import flask", "from flask", "from hub", "import hub", "sqlalchemy"):
            assert banned not in text, f"{path.relative_to(ROOT)} imports {banned}"
