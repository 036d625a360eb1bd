"""Invariant 3: every access decision is made by ``policies/``. Outside it, no code of the
hub, the sandbox or the contracts compares a role; this test reads their source (the syntax
tree, not text) and names any comparison it finds.

A *role comparison* is a comparison (``==``, ``!=``, ``in``, ``not in``, ``is``) one of
whose sides mentions a role: an attribute ``.role``, the ``Role`` enum, a variable called
``role``, a user role's name as a string (``"steward"``) - or the output-checker flag used
as a condition (``if user.is_output_checker``). A ``match`` on a role counts too.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("hub", "sandbox", "contracts")

#: The names of user roles, as strings. ``contributor`` and ``steward`` are left out: they
#: are also a party's role in an agreement and an institution's kind, terms of the contract
#: and of the registry rather than a user's permission; ``user.role == "steward"`` is still
#: found through ``.role``. A name used as a key (``row["researcher"]``) is not a role.
ROLE_NAMES = frozenset({"contributor_admin", "researcher", "output_checker", "auditor"})

#: Reviewed exceptions: (file, function) -> why it is not an access decision. Keep it tiny.
ALLOWED = {
    # The one translation of a user into the subjects the policy decides for.
    ("hub/accounts/services.py", "roles_of"): "turns a user into policy subjects",
    # Account data rules, not access rules: a contributor belongs to an institution, and a
    # change to the same role is no change.
    ("hub/accounts/services.py", "create_user"): "a contributor needs an institution",
    ("hub/accounts/services.py", "change_user"): "a contributor needs an institution",
    # Demo seeding: names the demo's output checkers once (idempotent), decides nothing.
    ("hub/demo.py", "seed"): "demo data: sets the checker flag once",
    # Demo files: which invented person exported a site's file.
    ("hub/demodata/site_formats.py", "data_manager"): "demo data: the file's author",
}


@dataclass(frozen=True)
class Finding:
    path: str
    function: str
    line: int
    code: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line} in {self.function}(): {self.code}"


def _mentions_role(node: ast.AST) -> bool:
    keys = {id(n.slice) for n in ast.walk(node) if isinstance(n, ast.Subscript)}
    for sub in ast.walk(node):
        if id(sub) in keys:
            continue
        if isinstance(sub, ast.Attribute) and sub.attr in ("role", "is_output_checker"):
            return True
        if isinstance(sub, ast.Name) and sub.id in ("Role", "role"):
            return True
        if isinstance(sub, ast.Constant) and sub.value in ROLE_NAMES:
            return True
    return False


def _is_checker_flag(node: ast.AST) -> bool:
    """``x.is_output_checker`` used as a truth value (alone, negated, or in and/or)."""
    if isinstance(node, ast.Attribute) and node.attr == "is_output_checker":
        return True
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        return _is_checker_flag(node.operand)
    if isinstance(node, ast.BoolOp):
        return any(_is_checker_flag(v) for v in node.values)
    return False


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str, source: str) -> None:
        self.path, self.source = path, source
        self.function = "<module>"
        self.found: list[Finding] = []

    def _flag(self, node: ast.AST) -> None:
        code = ast.get_source_segment(self.source, node) or ast.dump(node)
        line = getattr(node, "lineno", 0)
        self.found.append(Finding(self.path, self.function, line, " ".join(code.split())[:120]))

    def _in_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_FunctionDef = _in_function  # noqa: N815 - ast.NodeVisitor's naming
    visit_AsyncFunctionDef = _in_function  # noqa: N815

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(_mentions_role(side) for side in (node.left, *node.comparators)):
            self._flag(node)
        self.generic_visit(node)

    def _test(self, node: ast.If | ast.While | ast.IfExp | ast.Assert) -> None:
        if _is_checker_flag(node.test):
            self._flag(node.test)
        self.generic_visit(node)

    visit_If = _test  # noqa: N815
    visit_While = _test  # noqa: N815
    visit_IfExp = _test  # noqa: N815
    visit_Assert = _test  # noqa: N815

    def visit_Match(self, node: ast.Match) -> None:
        if _mentions_role(node.subject):
            self._flag(node.subject)
        self.generic_visit(node)


def scan_source(path: str, source: str) -> list[Finding]:
    """The role comparisons in ``source`` (a module's text), outside :data:`ALLOWED`."""
    scanner = _Scanner(path, source)
    scanner.visit(ast.parse(source, filename=path))
    return [f for f in scanner.found if (f.path, f.function) not in ALLOWED]


def scan(root: Path = ROOT) -> list[Finding]:
    found: list[Finding] = []
    for package in SCANNED:
        for file in sorted((root / package).rglob("*.py")):
            rel = file.relative_to(root).as_posix()
            if "/migrations/" in rel:
                continue  # history: migrations copy data, they decide nothing
            found += scan_source(rel, file.read_text(encoding="utf-8"))
    return found


def test_no_role_comparison_outside_policies() -> None:
    found = scan()
    assert not found, "decide through policies/ (hub.web.may, get_policy()):\n" + "\n".join(
        str(f) for f in found
    )


def test_the_allow_list_names_code_that_exists() -> None:
    """An exception whose function is gone (renamed, moved) must leave the list, else it
    would silently allow a new function of that name."""
    for path, function in ALLOWED:
        tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
        names = {
            n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        assert function in names, f"{path}: no function {function}() any more"


PLANTED = """
from hub.accounts.models import Role

def view(user, role, kind):
    if user.role == Role.STEWARD:
        return 1
    if role in ("researcher", "auditor") or kind == "researcher":
        return 2
    if not user.is_output_checker:
        return 3
    match user.role:
        case "steward":
            return 4
    return "steward" != user.role
"""


def test_the_scanner_finds_planted_comparisons() -> None:
    """The control: every kind of comparison the test looks for, planted, is found."""
    found = scan_source("hub/planted.py", PLANTED)
    assert [(f.function, f.line) for f in found] == [
        ("view", 5),
        ("view", 7),  # role in (...)
        ("view", 7),  # kind == "researcher"
        ("view", 9),
        ("view", 11),
        ("view", 14),
    ]
    assert "user.role == Role.STEWARD" in found[0].code


@pytest.mark.parametrize(
    "harmless",
    [
        "def f(p):\n    return p.institution == 'st-aurelia'\n",
        "def f(r):\n    return r in ('contributor', 'recipient')\n",  # a party's roles
        "def f(user):\n    return {'role': user.role}\n",  # shown, not compared
    ],
)
def test_the_scanner_leaves_other_comparisons_alone(harmless: str) -> None:
    assert scan_source("hub/harmless.py", harmless) == []


def test_an_allowed_function_elsewhere_is_still_found() -> None:
    """The allow-list names a file and a function: the same name in another file is found."""
    source = "def roles_of(user):\n    return user.role == 'steward'\n"
    assert len(scan_source("hub/elsewhere.py", source)) == 1
