"""The "who can reach what" explorer: read the rules of a :class:`PolicyEngine` backwards.

:func:`reachable` lists, for a subject, every object pattern and action it can reach and
through which domain (agreement) and role; :func:`who_can` lists, for an object path, every
subject (users and roles) that can reach it. Both say whether a rule's validity window is
open at ``now``, so an expired agreement shows as such rather than vanishing.

Global rules (domain ``*``) are listed under ``*`` only; an agreement domain lists its own.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

from casbin.util import key_match2

from policies.enforcer import GLOBAL_DOMAIN, PolicyEngine, Rule, in_window


@dataclass(frozen=True)
class Reach:
    """One way ``subject`` reaches ``obj``: the rule ``(role, domain, obj, actions, cond,
    window)`` it holds through ``role`` (the subject itself or one of its roles)."""

    subject: str
    role: str
    domain: str
    obj: str
    actions: str
    cond: str
    window: str
    open_now: bool


def _closure(start: str, links: dict[str, set[str]]) -> set[str]:
    seen = {start}
    frontier = {start}
    for _level in range(10):  # casbin's default hierarchy depth
        frontier = {nxt for name in frontier for nxt in links.get(name, ())} - seen
        if not frontier:
            break
        seen |= frontier
    return seen


def _links(rules: Iterable[Rule], *, reverse: bool = False) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for rule in rules:
        if rule[0] == "g":
            member, role = rule[1], rule[2]
            a, b = (role, member) if reverse else (member, role)
            out.setdefault(a, set()).add(b)
    return out


def reachable(policy: PolicyEngine, subject: str, *, now: float | None = None) -> list[Reach]:
    """Everything ``subject`` can reach, domain by domain."""
    moment = time.time() if now is None else now
    found: list[Reach] = []
    for domain in policy.domains:
        rules = policy.domain_rules(domain)
        roles = _closure(subject, _links(rules))
        for rule in rules:
            if rule[0] == "p" and rule[1] in roles:
                _p, role, dom, obj, act, cond, window = rule
                found.append(
                    Reach(subject, role, dom, obj, act, cond, window, in_window(window, moment))
                )
    return found


def who_can(
    policy: PolicyEngine,
    obj: str,
    action: str | None = None,
    *,
    domain: str | None = None,
    now: float | None = None,
) -> list[Reach]:
    """Every subject that can reach the path ``obj`` (with ``action``, when given).

    ``domain`` limits the answer to one agreement (global rules are then left out).
    """
    moment = time.time() if now is None else now
    found: list[Reach] = []
    domains = [domain] if domain is not None else policy.domains
    for dom in domains:
        rules = policy.domain_rules(dom)
        members = _links(rules, reverse=True)
        for rule in rules:
            if rule[0] != "p" or not key_match2(obj, rule[3]):
                continue
            if action is not None and not re.fullmatch(f"(?:{rule[4]})", action):
                continue
            _p, role, rule_dom, pattern, act, cond, window = rule
            open_now = in_window(window, moment)
            for subject in sorted(_closure(role, members)):
                found.append(Reach(subject, role, rule_dom, pattern, act, cond, window, open_now))
    return found


__all__ = ["GLOBAL_DOMAIN", "Reach", "reachable", "who_can"]
