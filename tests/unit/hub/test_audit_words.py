"""Every action the hub records has words on the ledger's pages and the auditor's overview
(``hub/audit/words.py``): the actions are found by reading the code, not from a list kept
beside the words."""

from __future__ import annotations

import ast
from pathlib import Path

from hub.audit.words import ACTION_WORDS, action_words

HUB = Path(__file__).parents[3] / "hub"


def _strings(node: ast.AST) -> list[str]:
    """The literal actions an expression can give: a string, or either side of ``a if c else
    b``; an f-string's constant head is returned with a trailing ``*``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    if isinstance(node, ast.JoinedStr) and node.values:
        head = node.values[0]
        if isinstance(head, ast.Constant):
            return [f"{head.value}*"]
    return []


def recorded_actions() -> set[str]:
    """``action=`` of every call in hub/, and the action argument of the releases' ``_log``."""
    found: set[str] = set()
    for path in HUB.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            for keyword in node.keywords:
                if keyword.arg == "action":
                    found.update(_strings(keyword.value))
            if isinstance(node.func, ast.Name) and node.func.id == "_log" and len(node.args) > 3:
                found.update(_strings(node.args[3]))
    return found


def test_every_recorded_action_has_words() -> None:
    actions = recorded_actions()
    # The scan sees the code: a few actions known to be recorded, each form included.
    assert {"release.held", "user.disable", "audit.key_rotated", "agreement.*"} <= actions
    # The gateway records its answers by kind (``query``, ``fit``), grouped by the auditor.
    exact = {a for a in actions if not a.endswith("*") and "." in a}
    missing = sorted(a for a in exact if a not in ACTION_WORDS)
    assert not missing, f"actions without words in hub/audit/words.py: {missing}"
    prefixes = {a[:-1] for a in actions if a.endswith("*")}
    for prefix in prefixes:  # an action made from an event: some words start with it
        assert any(w.startswith(prefix) for w in ACTION_WORDS), prefix


def test_an_unknown_action_still_reads() -> None:
    assert action_words("release.held").startswith("held an approved release")
    assert action_words("something.new_here") == "something: new here"
