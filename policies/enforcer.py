"""Casbin enforcer factory and the decision functions."""

from __future__ import annotations

import csv
import threading
from functools import cache
from pathlib import Path

import casbin

HERE = Path(__file__).parent
MODEL = HERE / "model.conf"
GLOBAL_POLICY = HERE / "global_policy.csv"
GLOBAL_DOMAIN = "*"

_lock = threading.Lock()


def _rules(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    p_rules: list[list[str]] = []
    g_rules: list[list[str]] = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh, skipinitialspace=True):
            if not row or row[0].lstrip().startswith("#"):
                continue
            kind, *rest = (c.strip() for c in row)
            (p_rules if kind == "p" else g_rules).append(rest)
    return p_rules, g_rules


@cache
def get_enforcer() -> casbin.Enforcer:
    """The process's enforcer, built from the model and the global rules."""
    enforcer = casbin.Enforcer(str(MODEL))
    p_rules, g_rules = _rules(GLOBAL_POLICY)
    enforcer.add_policies(p_rules)
    enforcer.add_grouping_policies(g_rules)
    return enforcer


def allowed(
    role: str | None,
    action: str,
    obj: str,
    *,
    domain: str = GLOBAL_DOMAIN,
    owner: bool = False,
) -> bool:
    """May a holder of ``role`` do ``action`` on ``obj`` in ``domain``?

    ``owner`` says whether the object belongs to the caller; rules marked ``owner`` apply
    only then. An anonymous caller (``role`` None) is never allowed anything here.
    """
    if not role:
        return False
    with _lock:  # casbin's enforcer is not documented as thread-safe
        return bool(
            get_enforcer().enforce(f"role:{role}", domain, obj, action, "yes" if owner else "no")
        )


def explain(role: str, action: str, obj: str, *, domain: str = GLOBAL_DOMAIN,
            owner: bool = False) -> list[str]:
    """The rule that allowed the request, for the audit trail and the admin explorer."""
    with _lock:
        ok, rule = get_enforcer().enforce_ex(
            f"role:{role}", domain, obj, action, "yes" if owner else "no"
        )
    return list(rule) if ok else []
