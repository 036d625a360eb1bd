"""Policy rules in the hub database, and keeping every process's decisions in step with them.

- ``casbin_rule`` (``ptype``, ``v0``..``v5``: Casbin's usual shape) holds the rules compiled
  from agreements; ``casbin_policy_version`` holds one counter row. Both live on their own
  :data:`metadata`, which the hub's Alembic migration creates.
- Writers change rules and bump the counter in the same transaction
  (:func:`replace_domain_rules`, or the :class:`SQLAlchemyAdapter` methods).
- Each process holds a :class:`SyncedPolicy`: before a decision it reads the counter (one
  primary-key SELECT) and reloads the rules when it moved, so a suspension written by one
  process takes effect on the next request in every other one. No cron, no messaging.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from casbin import persist
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from policies.enforcer import (
    GLOBAL_DOMAIN,
    Clock,
    PolicyEngine,
    Rule,
    check_rule,
    rule_domain,
)

metadata = MetaData()

casbin_rule = Table(
    "casbin_rule",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ptype", String(8), nullable=False),
    Column("v0", String(255), nullable=True),
    Column("v1", String(255), nullable=True),
    Column("v2", String(255), nullable=True),
    Column("v3", String(255), nullable=True),
    Column("v4", String(255), nullable=True),
    Column("v5", String(255), nullable=True),
    # the domain of a p rule is v1, of a g rule v2: replacing one agreement's rules uses these
    Index("ix_casbin_rule_ptype_v1", "ptype", "v1"),
    Index("ix_casbin_rule_ptype_v2", "ptype", "v2"),
)

policy_version = Table(
    "casbin_policy_version",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("version", BigInteger, nullable=False),
)

_VERSION_ROW = 1
_FIELDS = ("v0", "v1", "v2", "v3", "v4", "v5")

Bind = Connection | Session


def create_tables(engine: Engine) -> None:
    """Create the tables and the counter row (tests and tools; the hub uses its migration)."""
    metadata.create_all(engine)
    with engine.begin() as conn:
        if conn.execute(select(policy_version.c.id)).first() is None:
            conn.execute(insert(policy_version).values(id=_VERSION_ROW, version=0))


# Rows <-> rules ----------------------------------------------------------------------------


def _row(rule: Sequence[str]) -> dict[str, Any]:
    checked = check_rule(rule)
    values: dict[str, Any] = dict.fromkeys(_FIELDS)  # every key: one executemany statement
    values["ptype"] = checked[0]
    for name, value in zip(_FIELDS, checked[1:], strict=False):
        values[name] = value
    return values


def _rule(row: Any) -> Rule:
    values = [row.v0, row.v1, row.v2, row.v3, row.v4, row.v5]
    while values and values[-1] is None:
        values.pop()
    return (row.ptype, *values)


def _in_domains(domains: Iterable[str]) -> Any:
    domains = list(domains)
    return or_(
        and_(casbin_rule.c.ptype == "p", casbin_rule.c.v1.in_(domains)),
        and_(casbin_rule.c.ptype == "g", casbin_rule.c.v2.in_(domains)),
    )


def load_rules(bind: Bind | Engine, domains: Iterable[str] | None = None) -> list[Rule]:
    """The stored rules (of ``domains`` only, when given), in insertion order."""
    query = select(casbin_rule).order_by(casbin_rule.c.id)
    if domains is not None:
        query = query.where(_in_domains(domains))
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            return [_rule(row) for row in conn.execute(query)]
    return [_rule(row) for row in bind.execute(query)]


# The counter -------------------------------------------------------------------------------


def get_version(bind: Bind | Engine) -> int:
    """The policy version: moves whenever any stored rule changes."""
    query = select(policy_version.c.version).where(policy_version.c.id == _VERSION_ROW)
    if isinstance(bind, Engine):
        with bind.connect() as conn:
            value = conn.execute(query).scalar()
    else:
        value = bind.execute(query).scalar()
    return int(value or 0)


def bump_version(bind: Bind) -> int:
    """Move the counter in the caller's transaction (it locks the row until commit)."""
    result = bind.execute(
        update(policy_version)
        .where(policy_version.c.id == _VERSION_ROW)
        .values(version=policy_version.c.version + 1)
        .returning(policy_version.c.version)
    )
    value = result.scalar()
    if value is None:  # no migration seeded the row yet
        bind.execute(insert(policy_version).values(id=_VERSION_ROW, version=1))
        return 1
    return int(value)


def replace_domain_rules(bind: Bind | Engine, domain: str, rules: Iterable[Sequence[str]]) -> int:
    """Make ``rules`` the whole rule set of ``domain`` and bump the version; returns it.

    Runs in the caller's transaction when given a connection or session (the caller
    commits, together with the agreement change that produced the rules); an engine gets a
    transaction of its own. Every rule must belong to ``domain``: derived rules of one
    agreement never touch another's.
    """
    rows = []
    for rule in rules:
        checked = check_rule(rule)
        if rule_domain(checked) != domain:
            raise ValueError(f"rule {checked!r} is not in domain {domain!r}")
        rows.append(_row(checked))
    if isinstance(bind, Engine):
        with bind.begin() as conn:
            return _replace(conn, domain, rows)
    return _replace(bind, domain, rows)


def _replace(bind: Bind, domain: str, rows: list[dict[str, Any]]) -> int:
    version = bump_version(bind)  # first: the row lock orders concurrent writers
    bind.execute(delete(casbin_rule).where(_in_domains([domain])))
    if rows:
        bind.execute(insert(casbin_rule), rows)
    return version


# The Casbin adapter ------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainFilter:
    """Load only the rules of these domains (``load_filtered_policy``)."""

    domains: tuple[str, ...] = field(default_factory=tuple)


class SQLAlchemyAdapter(persist.Adapter):
    """Casbin's storage interface over ``casbin_rule``; every write bumps the version.

    Derived rules are written with :func:`replace_domain_rules`; this adapter exists so a
    stock Casbin enforcer can load (all or a filtered part of) the same table.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._filtered = False

    # loading

    def load_policy(self, model: Any) -> None:
        self._filtered = False
        self._into(model, load_rules(self.engine))

    def load_filtered_policy(self, model: Any, filter: DomainFilter) -> None:  # noqa: A002
        self._filtered = True
        self._into(model, load_rules(self.engine, filter.domains))

    def is_filtered(self) -> bool:
        return self._filtered

    @staticmethod
    def _into(model: Any, rules: Iterable[Rule]) -> None:
        for rule in rules:
            ptype = rule[0]
            section = model.model.get(ptype[0], {})
            if ptype in section:
                section[ptype].policy.append(list(rule[1:]))

    # saving (auto-save)

    def save_policy(self, model: Any) -> bool:
        rows: list[dict[str, Any]] = []
        for sec in ("p", "g"):
            for ptype, assertion in model.model.get(sec, {}).items():
                rows.extend(_row((ptype, *rule)) for rule in assertion.policy)
        with self.engine.begin() as conn:
            bump_version(conn)
            conn.execute(delete(casbin_rule))
            if rows:
                conn.execute(insert(casbin_rule), rows)
        return True

    def add_policy(self, sec: str, ptype: str, rule: Sequence[str]) -> bool:
        return self.add_policies(sec, ptype, [rule])

    def add_policies(self, sec: str, ptype: str, rules: Iterable[Sequence[str]]) -> bool:
        rows = [_row((ptype, *rule)) for rule in rules]
        with self.engine.begin() as conn:
            bump_version(conn)
            if rows:
                conn.execute(insert(casbin_rule), rows)
        return True

    def remove_policy(self, sec: str, ptype: str, rule: Sequence[str]) -> bool:
        return self.remove_policies(sec, ptype, [rule])

    def remove_policies(self, sec: str, ptype: str, rules: Iterable[Sequence[str]]) -> bool:
        removed = 0
        with self.engine.begin() as conn:
            bump_version(conn)
            for rule in rules:
                where = [casbin_rule.c.ptype == ptype]
                where += [
                    casbin_rule.c[name] == value for name, value in zip(_FIELDS, rule, strict=False)
                ]
                removed += conn.execute(delete(casbin_rule).where(*where)).rowcount
        return removed > 0

    def remove_filtered_policy(
        self, sec: str, ptype: str, field_index: int, *field_values: str
    ) -> bool:
        where = [casbin_rule.c.ptype == ptype]
        for offset, value in enumerate(field_values):
            if value:  # casbin: an empty value matches anything
                where.append(casbin_rule.c[_FIELDS[field_index + offset]] == value)
        with self.engine.begin() as conn:
            bump_version(conn)
            removed = conn.execute(delete(casbin_rule).where(*where)).rowcount
        return bool(removed)


# One process's view ------------------------------------------------------------------------


class SyncedPolicy:
    """A :class:`PolicyEngine` that follows the database.

    :meth:`refresh` reads the counter and reloads the rules when it moved; :meth:`allowed`
    refreshes first when the last check is older than ``check_interval`` seconds (0, the
    default: before every decision). A web process may instead call :meth:`refresh` once per
    request and decide with ``refresh=False``.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Clock = time.time,
        check_interval: float = 0.0,
        policy: PolicyEngine | None = None,
    ) -> None:
        self.engine = engine
        self.check_interval = check_interval
        self.policy = policy if policy is not None else PolicyEngine(clock=clock)
        self.version: int | None = None
        self.reloads = 0
        self._checked_at = -float("inf")
        self._lock = threading.Lock()
        self._conn: Connection | None = None

    def _read_version(self) -> int:
        """The counter, over one connection this object keeps (a pool checkout per check
        costs several times the SELECT); a broken connection is replaced once."""
        for attempt in (1, 2):
            try:
                if self._conn is None:
                    self._conn = self.engine.connect()
                value = get_version(self._conn)
                self._conn.rollback()  # end the read: the next check sees newer commits
                return value
            except DBAPIError:
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Give back the connection used for version checks."""
        if self._conn is not None:
            try:
                self._conn.close()
            except DBAPIError:
                pass  # already broken: nothing to give back
            self._conn = None

    def refresh(self) -> bool:
        """Reload when the stored version moved; True when it did."""
        with self._lock:
            self._checked_at = time.monotonic()
            version = self._read_version()
            if version == self.version:
                return False
            # The version is read before the rules: if a writer commits in between, we hold
            # newer rules under an older number and simply reload once more next time.
            self.policy.load(load_rules(self.engine))
            self.version = version
            self.reloads += 1
            return True

    def _maybe_refresh(self) -> None:
        if time.monotonic() - self._checked_at >= self.check_interval:
            self.refresh()

    def allowed(
        self,
        subject: str | None,
        action: str,
        obj: str,
        *,
        domain: str = GLOBAL_DOMAIN,
        owner: bool = False,
        refresh: bool = True,
    ) -> bool:
        """May ``subject`` do ``action`` on ``obj`` in ``domain``, as the database says now?"""
        if refresh:
            self._maybe_refresh()
        return self.policy.allowed(subject, action, obj, domain=domain, owner=owner)

    def explain(
        self,
        subject: str,
        action: str,
        obj: str,
        *,
        domain: str = GLOBAL_DOMAIN,
        owner: bool = False,
        refresh: bool = True,
    ) -> list[str]:
        if refresh:
            self._maybe_refresh()
        return self.policy.explain(subject, action, obj, domain=domain, owner=owner)
