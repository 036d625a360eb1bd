"""The distribution's shape and the import rules between its packages.

* The top-level packages are the product's folders, and there is one console script.
* The dependency rules of the "Folders" table in ``docs/architecture.md`` hold for every
  module of every package, on every import statement in it (module level, inside functions
  and under ``TYPE_CHECKING``), read with ``ast``: see :data:`MAY_IMPORT`. ``anonymisation/``
  imports nothing of the project, nor Flask or a database layer; the sandbox client
  (``sandbox/__init__.py``, ``sandbox/client.py``) imports nothing of the project but itself
  and nothing outside the standard library but ``requests`` and ``pandas``.
* No import cycle exists between the project's modules (imports under ``TYPE_CHECKING`` are
  left out: they never run).
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"hub", "anonymisation", "policies", "sandbox", "contracts"}

# Which of the project's modules each part may import (docs/architecture.md, "Folders");
# a name allows that module and everything below it. Every module belongs to exactly one
# part: the longest prefix of its name listed here.
MAY_IMPORT: dict[str, tuple[str, ...]] = {
    "hub": tuple(sorted(PACKAGES)),  # the hub may import everything
    "anonymisation": ("anonymisation",),  # nothing of the project
    "policies": ("policies",),
    # The CDM assigns each column one of the library's identifier classes.
    "contracts": ("contracts", "policies", "anonymisation.identifiers"),
    "sandbox.gateway": ("sandbox.gateway", "policies", "contracts"),
    # The researcher client: `import sandbox` / `from sandbox import connect`.
    "sandbox": ("sandbox.client",),
    "sandbox.client": ("sandbox.client",),
    # JupyterHub's authenticator, spawner and configuration talk HTTP to the hub.
    "sandbox.jupyterhub": ("sandbox.jupyterhub",),
    "sandbox.jupyterhub_config": ("sandbox.jupyterhub",),
}
CLIENT_MODULES = ("sandbox", "sandbox.client")
CLIENT_THIRD_PARTY = {"requests", "pandas"}
NOT_IN_A_LIBRARY = {"flask", "flask_wtf", "werkzeug", "sqlalchemy", "alembic", "psycopg"}


@dataclass(frozen=True)
class Import:
    """``module`` imports ``target`` (a dotted name as written, made absolute)."""

    module: str
    target: str
    line: int
    type_checking: bool


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    guarded: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                guarded.update(id(n) for n in ast.walk(child))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno, id(node) in guarded)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                # `from pkg import mod` imports the module pkg.mod; `from mod import name`, mod.
                target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                yield Import(name, target, node.lineno, id(node) in guarded)


IMPORTS = [i for name, path in sorted(MODULES.items()) for i in _imports(name, path)]


def _project_module(target: str) -> str | None:
    """The project module ``target`` names (the longest known prefix), or None."""
    name = target
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _part(module: str) -> str:
    return max((p for p in MAY_IMPORT if _under(module, p)), key=len)


def _where(imp: Import) -> str:
    return f"{MODULES[imp.module].relative_to(ROOT)}:{imp.line}"


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


def test_the_import_parser_sees_every_kind_of_import() -> None:
    """The rules below are only as good as the parser: it must see function-level,
    relative and ``TYPE_CHECKING`` imports (known ones of the code base)."""
    seen = {(i.module, i.target, i.type_checking) for i in IMPORTS}
    assert ("anonymisation.classify", "anonymisation.nlp", False) in seen  # in a function
    assert ("sandbox.gateway.fit", "sandbox.gateway.engine", True) in seen  # TYPE_CHECKING
    assert ("sandbox.jupyterhub_config", "sandbox.jupyterhub.config", False) in seen
    assert len(MODULES) > 100 and all(_project_module(p) == p for p in MODULES)


def test_every_module_imports_only_what_its_part_may() -> None:
    broken = []
    for imp in IMPORTS:
        target = _project_module(imp.target)
        if target is None:
            continue
        allowed = MAY_IMPORT[_part(imp.module)]
        if not any(_under(target, a) for a in allowed):
            broken.append(f"{_where(imp)} imports {target} ({_part(imp.module)}: {allowed})")
    assert broken == []


def test_libraries_stay_libraries() -> None:
    """anonymisation/ never imports Flask or the hub (nor mentions SQLAlchemy)."""
    for path in (ROOT / "anonymisation").rglob("*.py"):
        text = path.read_text()
        for banned in ("import flask", "from flask", "from hub", "import hub", "sqlalchemy"):
            assert banned not in text, f"{path.relative_to(ROOT)} imports {banned}"
    web_or_database = [
        f"{_where(i)} imports {i.target}"
        for i in IMPORTS
        if _under(i.module, "anonymisation") and i.target.split(".")[0] in NOT_IN_A_LIBRARY
    ]
    assert web_or_database == []


def test_the_sandbox_client_needs_only_requests_and_pandas() -> None:
    outside = [
        f"{_where(i)} imports {i.target}"
        for i in IMPORTS
        if i.module in CLIENT_MODULES
        and _project_module(i.target) is None
        and i.target.split(".")[0] not in sys.stdlib_module_names | CLIENT_THIRD_PARTY
    ]
    assert outside == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    """A cycle hidden behind a function-level import is still a cycle: the two modules
    cannot be understood, or loaded, one without the other."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in IMPORTS:
        target = _project_module(imp.target)
        if target is not None and target != imp.module and not imp.type_checking:
            graph[imp.module].add(target)
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_no_test_module_imports_another() -> None:
    """Shared helpers live in ``conftest.py`` or a helper module (``tests/unit/hub/uploads.py``,
    ``tests/unit/anonymisation/deidentified.py``), never in another test module: importing
    one runs its collection-time code twice and couples unrelated tests."""
    root = Path(__file__).resolve().parents[2]
    found = []
    for path in (root / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                last = node.module.rsplit(".", 1)[-1]
                if node.module.startswith("tests.") and last.startswith("test_"):
                    found.append(f"{path.relative_to(root)}: from {node.module}")
    assert found == []
