"""Casbin enforcer factory and the decision functions.

Two ways to ask:

- :func:`allowed` / :func:`explain`: global role permissions (``global_policy.csv``) for a
  role name, as the hub's ``guard`` asks today.
- :class:`PolicyEngine`: the global rules plus rules compiled from agreements (users as
  subjects, ``agreement:<id>`` domains). It keeps one small Casbin enforcer per domain (a
  filtered load: a request in domain D can only match rules of D and of ``*``) and caches
  decisions until the next validity-window boundary, so it stays fast with thousands of
  agreements. :class:`policies.store.SyncedPolicy` keeps one in step with the database.

A rule is a tuple that starts with its type: ``("p", sub, dom, obj, act, cond, window)`` or
``("g", member, role, dom)``.
"""

from __future__ import annotations

import bisect
import copy
import csv
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import casbin
from casbin import persist

HERE = Path(__file__).parent
MODEL = HERE / "model.conf"
GLOBAL_POLICY = HERE / "global_policy.csv"
GLOBAL_DOMAIN = "*"
ALWAYS = "*"  # the window of a rule that never expires

Rule = tuple[str, ...]
Clock = Callable[[], float]

_lock = threading.Lock()


# Rules ------------------------------------------------------------------------------------


def _rules(path: Path) -> tuple[list[list[str]], list[list[str]]]:
    p_rules: list[list[str]] = []
    g_rules: list[list[str]] = []
    with path.open(newline="") as fh:
        for row in csv.reader(fh, skipinitialspace=True):
            if not row or row[0].lstrip().startswith("#"):
                continue
            kind, *rest = (c.strip() for c in row)
            if kind == "p" and len(rest) == 5:  # the file leaves out the window: always
                rest.append(ALWAYS)
            (p_rules if kind == "p" else g_rules).append(rest)
    return p_rules, g_rules


@cache
def global_rules() -> tuple[Rule, ...]:
    """The global role rules of ``global_policy.csv`` as rule tuples."""
    p_rules, g_rules = _rules(GLOBAL_POLICY)
    return tuple(("p", *r) for r in p_rules) + tuple(("g", *r) for r in g_rules)


def rule_domain(rule: Sequence[str]) -> str:
    """The domain a rule belongs to (``p``: its 3rd field, ``g``: its 4th)."""
    if rule[0] == "p":
        return rule[2]
    if rule[0] == "g":
        return rule[3]
    raise ValueError(f"unknown rule type {rule[0]!r} in {tuple(rule)!r}")


def check_rule(rule: Sequence[str]) -> Rule:
    """Refuse a malformed rule before it reaches the store or an enforcer."""
    rule = tuple(rule)
    if not all(isinstance(v, str) for v in rule):
        raise ValueError(f"rule fields must be strings: {rule!r}")
    if rule and rule[0] == "p" and len(rule) == 7:
        parse_window(rule[6])
        return rule
    if rule and rule[0] == "g" and len(rule) == 4:
        return rule
    raise ValueError(
        f"a rule is ('p', sub, dom, obj, act, cond, window) or ('g', member, role, dom), "
        f"not {rule!r}"
    )


# Validity windows --------------------------------------------------------------------------


def _iso(moment: datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError(f"validity times must carry a time zone, not {moment!r}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def make_window(start: datetime | None, end: datetime | None) -> str:
    """The window field for rules valid from ``start`` (inclusive) until ``end`` (exclusive)."""
    if start is None and end is None:
        return ALWAYS
    return f"{_iso(start) if start else ''}/{_iso(end) if end else ''}"


@cache
def parse_window(window: str) -> tuple[float, float]:
    """``(start, end)`` as POSIX seconds (``-inf``/``inf`` when open) of a window field."""
    if window in (ALWAYS, ""):
        return (-math.inf, math.inf)
    start_text, sep, end_text = window.partition("/")
    if not sep:
        raise ValueError(f"a window is '*' or 'START/END' in ISO 8601, not {window!r}")
    try:
        start = datetime.fromisoformat(start_text).timestamp() if start_text else -math.inf
        end = datetime.fromisoformat(end_text).timestamp() if end_text else math.inf
    except ValueError:
        raise ValueError(f"window {window!r}: START and END must be ISO 8601 times") from None
    for text in (start_text, end_text):
        if text and datetime.fromisoformat(text).tzinfo is None:
            raise ValueError(f"window {window!r}: times must carry a time zone (e.g. Z)")
    return (start, end)


def in_window(window: str, now: float) -> bool:
    start, end = parse_window(window)
    return start <= now < end


# Enforcers ---------------------------------------------------------------------------------


class MemoryAdapter(persist.Adapter):
    """Hands a fixed list of rule tuples to an enforcer (read-only)."""

    def __init__(self, rules: Iterable[Sequence[str]]) -> None:
        self._rules = [tuple(r) for r in rules]

    def load_policy(self, model: Any) -> None:
        for rule in self._rules:
            ptype = rule[0]
            model.model[ptype[0]][ptype].policy.append(list(rule[1:]))


class _ParsedOnceEnforcer(casbin.Enforcer):
    """``casbin.Enforcer`` that parses its matcher once, not at every decision.

    Casbin re-parses the matcher text (``ast.parse``) on each ``enforce``; that parse costs
    more than evaluating a handful of rules. The parsed expression only depends on the
    matcher text and on the functions, which are fixed before the first decision here (the
    role manager object the ``g`` function consults stays the same across policy loads).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._expressions: dict[str, Any] = {}
        super().__init__(*args, **kwargs)

    def _get_expression(self, expr: str, functions: Any = None) -> Any:
        found = self._expressions.get(expr)
        if found is None:
            found = self._expressions[expr] = casbin.Enforcer._get_expression(expr, functions)
        return found


@cache
def _base_model() -> Any:
    return casbin.Enforcer.new_model(str(MODEL))


def new_enforcer(rules: Iterable[Sequence[str]], *, clock: Clock = time.time) -> casbin.Enforcer:
    """A Casbin enforcer on the model, holding exactly ``rules``.

    ``inWindow`` in the matcher reads ``clock`` (POSIX seconds) at every decision.
    """
    enforcer = _ParsedOnceEnforcer(copy.deepcopy(_base_model()), MemoryAdapter(rules))
    enforcer.add_function("inWindow", lambda window: in_window(window, clock()))
    enforcer.enable_auto_save(False)
    return enforcer


@cache
def get_enforcer() -> casbin.Enforcer:
    """The process's enforcer for global role permissions."""
    return new_enforcer(global_rules())


def _request(owner: bool) -> str:
    return "yes" if owner else "no"


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
        return bool(get_enforcer().enforce(f"role:{role}", domain, obj, action, _request(owner)))


def _as_written(rule: Sequence[str]) -> list[str]:
    """A rule as ``global_policy.csv`` writes it: without the window when it is always."""
    rule = list(rule)
    if len(rule) == 6 and rule[5] == ALWAYS:
        rule.pop()
    return rule


def explain(
    role: str, action: str, obj: str, *, domain: str = GLOBAL_DOMAIN, owner: bool = False
) -> list[str]:
    """The rule that allowed the request, for the audit trail and the admin explorer."""
    with _lock:
        ok, rule = get_enforcer().enforce_ex(f"role:{role}", domain, obj, action, _request(owner))
    return _as_written(rule) if ok else []


_REGEX_CHARS = frozenset(":*.?+[](){}|^$\\")


def _literal_prefix(pattern: str) -> str:
    """The part of a keyMatch2 pattern every matching path starts with."""
    for i, char in enumerate(pattern):
        if char in _REGEX_CHARS:
            return pattern[:i]
    return pattern


class _Partition:
    """One domain's filtered enforcer, with an index that narrows the rules Casbin evaluates.

    The matcher can only hold for a ``p`` rule whose subject is the request's subject or one
    of its roles in the domain (``g``), and whose object pattern's literal prefix starts the
    requested path. Casbin evaluates its own matcher on exactly those candidates (handed to
    it the way casbin's ``FastEnforcer`` filters policies), so the decision is the model's
    decision, only without scanning rules that cannot match.
    """

    def __init__(self, domain: str, rules: Sequence[Rule], clock: Clock) -> None:
        self.domain = domain
        self.enforcer = new_enforcer(rules, clock=clock)
        self._assertion = self.enforcer.model.model["p"]["p"]
        self._all = self._assertion.policy
        self._index: dict[tuple[str, str], list[tuple[int, list[str]]]] = {}
        marks: set[float] = set()
        for position, row in enumerate(self._all):
            sub, _dom, obj = row[0], row[1], row[2]
            key = (sub, _literal_prefix(obj))
            self._index.setdefault(key, []).append((position, row))
            marks.update(t for t in parse_window(row[5]) if math.isfinite(t))
        self._prefixes_of: dict[str, set[str]] = {}
        for _sub, prefix in self._index:
            self._prefixes_of.setdefault(_sub, set()).add(prefix)
        self._boundaries = sorted(marks)
        self._links: dict[tuple[str, str], set[str]] = {}
        for rule in rules:
            if rule[0] == "g":
                self._links.setdefault((rule[3], rule[1]), set()).add(rule[2])
        self._roles: dict[tuple[str, str], frozenset[str]] = {}

    def roles(self, subject: str, domain: str | None = None) -> frozenset[str]:
        """``subject`` and every role it reaches in ``domain`` (casbin's 10 levels)."""
        domain = self.domain if domain is None else domain
        key = (domain, subject)
        found = self._roles.get(key)
        if found is None:
            seen = {subject}
            frontier = {subject}
            for _level in range(10):
                frontier = {
                    role for name in frontier for role in self._links.get((domain, name), ())
                } - seen
                if not frontier:
                    break
                seen |= frontier
            if len(self._roles) > 100_000:  # subjects are unbounded; keep memory bounded
                self._roles.clear()
            found = self._roles[key] = frozenset(seen)
        return found

    def enforce_ex(self, sub: str, dom: str, obj: str, act: str, owner: str) -> tuple[bool, Any]:
        candidates: list[tuple[int, list[str]]] = []
        for role in self.roles(sub, dom):
            for prefix in self._prefixes_of.get(role, ()):
                if obj.startswith(prefix):
                    candidates.extend(self._index[(role, prefix)])
        candidates.sort(key=lambda item: item[0])
        self._assertion.policy = [row for _position, row in candidates]
        try:
            if not self._assertion.policy:
                return False, []  # casbin evaluates an empty policy against blank fields
            ok, rule = self.enforcer.enforce_ex(sub, dom, obj, act, owner)
            return bool(ok), rule
        finally:
            self._assertion.policy = self._all

    def next_boundary(self, now: float) -> float:
        i = bisect.bisect_right(self._boundaries, now)
        return self._boundaries[i] if i < len(self._boundaries) else math.inf


class PolicyEngine:
    """Decisions over the global rules plus agreement rules, one filtered enforcer per domain.

    A request in domain D can only match ``p`` rules of D or of ``*`` (the matcher says so),
    so each domain gets a Casbin enforcer holding just those, built on first use. Decisions
    are cached per request and kept until the next validity-window boundary among the
    domain's rules, so an expiry still takes effect at the moment it falls due.
    Thread-safe.
    """

    def __init__(
        self,
        rules: Iterable[Sequence[str]] = (),
        *,
        clock: Clock = time.time,
        include_global: bool = True,
        cache_size: int = 200_000,
    ) -> None:
        self._clock = clock
        self._include_global = include_global
        self._cache_size = cache_size
        self._lock = threading.RLock()
        self._by_domain: dict[str, tuple[Rule, ...]] = {}
        self._parts: dict[str, _Partition] = {}
        self._cache: dict[tuple[str, str, str, str, bool], tuple[bool, list[str], float]] = {}
        self.load(rules)

    # Loading

    def load(self, rules: Iterable[Sequence[str]]) -> None:
        """Replace the rules; enforcers and cached decisions of unchanged domains survive."""
        by_domain: dict[str, list[Rule]] = {}
        for rule in (*global_rules(), *rules) if self._include_global else rules:
            checked = check_rule(rule)
            by_domain.setdefault(rule_domain(checked), []).append(checked)
        new = {d: tuple(dict.fromkeys(rs)) for d, rs in by_domain.items()}  # dedupe, keep order
        with self._lock:
            if new.get(GLOBAL_DOMAIN) != self._by_domain.get(GLOBAL_DOMAIN):
                stale = set(self._by_domain) | set(new)
            else:
                stale = {
                    d
                    for d in set(self._by_domain) | set(new)
                    if new.get(d) != self._by_domain.get(d)
                }
            self._by_domain = new
            for domain in stale:
                self._parts.pop(domain, None)
            if stale:
                self._cache = {k: v for k, v in self._cache.items() if k[1] not in stale}

    @property
    def rules(self) -> list[Rule]:
        """Every rule the engine holds (global ones included), grouped by domain."""
        with self._lock:
            return [r for rules in self._by_domain.values() for r in rules]

    def domain_rules(self, domain: str) -> tuple[Rule, ...]:
        with self._lock:
            return self._by_domain.get(domain, ())

    @property
    def domains(self) -> list[str]:
        with self._lock:
            return list(self._by_domain)

    def warm(self) -> None:
        """Build every domain's enforcer now rather than on its first request."""
        with self._lock:
            for domain in self._by_domain:
                self._part(domain)

    def _part(self, domain: str) -> _Partition:
        part = self._parts.get(domain)
        if part is None:
            rules = self._by_domain.get(GLOBAL_DOMAIN, ())
            if domain != GLOBAL_DOMAIN:
                rules += self._by_domain.get(domain, ())
            part = self._parts[domain] = _Partition(domain, rules, self._clock)
        return part

    # Deciding

    def enforce_ex(
        self, sub: str, dom: str, obj: str, act: str, owner: bool = False
    ) -> tuple[bool, list[str]]:
        """The decision and the rule that allowed it (empty when denied)."""
        key = (sub, dom, obj, act, owner)
        now = self._clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now < hit[2]:
                return hit[0], hit[1]
            # A domain without rules of its own holds what the global domain holds.
            part = self._part(dom if dom in self._by_domain else GLOBAL_DOMAIN)
            ok, rule = part.enforce_ex(sub, dom, obj, act, _request(owner))
            until = part.next_boundary(now)
            result = (bool(ok), list(rule) if ok else [], until)
            if self._cache_size > 0:  # 0 turns the decision cache off
                if len(self._cache) >= self._cache_size:
                    self._cache.clear()  # crude but bounded; refilling is cheap
                self._cache[key] = result
            return result[0], result[1]

    def enforce(self, sub: str, dom: str, obj: str, act: str, owner: bool = False) -> bool:
        return self.enforce_ex(sub, dom, obj, act, owner)[0]

    def allowed(
        self,
        subject: str | None,
        action: str,
        obj: str,
        *,
        domain: str = GLOBAL_DOMAIN,
        owner: bool = False,
    ) -> bool:
        """May ``subject`` (``user:42``, ``role:steward``) do ``action`` on ``obj``?"""
        if not subject:
            return False
        return self.enforce(subject, domain, obj, action, owner)

    def explain(
        self,
        subject: str,
        action: str,
        obj: str,
        *,
        domain: str = GLOBAL_DOMAIN,
        owner: bool = False,
    ) -> list[str]:
        """The rule that allowed the request (``[]`` when denied)."""
        return self.enforce_ex(subject, domain, obj, action, owner)[1]

    def roles_for(self, subject: str, domain: str) -> list[str]:
        """Every role ``subject`` holds in ``domain``, inherited ones included."""
        with self._lock:
            part = self._part(domain if domain in self._by_domain else GLOBAL_DOMAIN)
            return sorted(part.roles(subject) - {subject})


def user_subject(user_id: object) -> str:
    """The Casbin subject of a hub user."""
    return f"user:{user_id}"


def now_utc() -> datetime:
    return datetime.now(UTC)
