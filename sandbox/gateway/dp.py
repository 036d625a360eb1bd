"""Differentially private answers to aggregate queries, with the patient as the privacy unit.

A query first passes the allow-list of :mod:`sandbox.gateway.sql` (one ``SELECT``, the
agreement's views, equality joins, no subqueries). Then:

1. **Columns** resolve to the view's columns (exactly the agreement's); anything else — an
   uncovered column, a table alias used as a value — is refused.
2. **Group keys** must have a public domain (a CDM category, a boolean, an integer column
   with close public bounds, a condition, a ``CASE`` with literal outcomes, or a number
   binned with ``FLOOR``/``CEIL``/``ROUND``/``CAST … AS INTEGER`` of a bounded expression).
   Every cell of that domain is answered, empty or not, so a group's presence says nothing.
3. **Aggregated values** are clamped to public bounds: the CDM's ``minimum``/``maximum``,
   worked through the expression (interval arithmetic), or the researcher's own
   ``CLAMP(expr, low, high)``. An expression with no bounds is refused with a reason.
4. **Contribution**: every row carries its patient (``__pid``; joins are made within a
   patient), and each patient keeps at most ``rows_per_patient`` rows of the query.
5. **Run-time errors** cannot depend on a record: every row-level expression runs inside
   DuckDB's ``TRY`` (an error becomes NULL), and numbers are computed in ``DOUBLE``.
6. **Noise**: per cell, the statistics behind each aggregate (counts, clamped sums, sums of
   squares about the bounds' midpoint) get Laplace noise for their sensitivity; a third of
   the answer's ε pays for noisy patient counts per institution, from which the steward's
   institution rules (``k`` patients, ``min_institutions``, dominance) are judged. Output
   expressions are then computed from the noisy aggregates (post-processing).

Nothing here decides who may ask or how much budget is left: the hub debits the budget
before the answer leaves.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import duckdb
from sqlglot import exp

from contracts.agreements import Disclosure
from sandbox.gateway.engine import digest
from sandbox.gateway.errors import QueryRejected
from sandbox.gateway.facts import Facts
from sandbox.gateway.noise import Noise
from sandbox.gateway.sql import (
    _PREDICATES,
    INSTITUTION,
    Aggregate,
    CheckedQuery,
    check_query,
)
from sandbox.gateway.typecheck import check_types

if TYPE_CHECKING:
    from sandbox.gateway.engine import AgreementViews, Gateway


MAX_CELLS = 10_000
"""Most cells an answer may have (the product of its keys' public domains)."""

MAX_BINS = 2_000
"""Most values one binned key (``FLOOR(x / w)``) may take."""

RULES_SHARE = 1 / 3
"""Share of an answer's ε spent on the noisy patient counts per institution that the
institution rules and the k threshold are judged on."""

RULE_SCALES = 2.0
"""An institution counts towards ``min_institutions`` in a cell when its noisy patient count
is at least this many noise scales (an absent institution passes with probability ≤ 7 %,
and a cell needs several to pass)."""

ROWS_PER_PATIENT = {
    "episode": 1,
    "collection": 2,
    "batch": 2,
    "administration": 1,
    "deviation": 5,
    "release_test": 20,
    "custody_event": 20,
}
"""Default rows one patient may contribute to an answer, per table (the largest among a
query's tables applies); a request may state its own, from 1 to :data:`MAX_ROWS_PER_PATIENT`."""

MAX_ROWS_PER_PATIENT = 100

_INTEGER_TYPES = {"TINYINT", "SMALLINT", "INT", "INTEGER", "BIGINT", "HUGEINT", "UBIGINT"}
_NUMERIC_CASTS = _INTEGER_TYPES | {"DOUBLE", "FLOAT", "REAL", "DECIMAL", "BOOLEAN"}

Interval = tuple[float, float]


def _reject(construct: str, reason: str) -> QueryRejected:
    return QueryRejected(reason, construct)


def _sql(node: exp.Expr) -> str:
    return node.sql(dialect="duckdb")


# -- columns -------------------------------------------------------------------------------


class Resolver:
    """Resolves a query's columns to the views' columns and their public facts."""

    def __init__(self, checked: CheckedQuery, views: AgreementViews) -> None:
        self.aliases = dict(checked.tables)
        self.order = [alias for alias, _view in checked.tables]
        self.views = views
        self.using = _using_columns(checked)  # joined on: the same value on both sides

    def resolve(self, column: exp.Column) -> tuple[str, str, Facts]:
        name = column.name.lower()
        alias = column.table.lower() if column.table else None
        if alias is not None:
            owners = [alias] if name in self._columns(alias) else []
        else:
            owners = [a for a in self.order if name in self._columns(a)]
        if not owners:
            where = f"`{alias}`" if alias else "this query's tables"
            known = sorted(
                {c for a in ([alias] if alias else self.order) for c in self._columns(a)}
            )
            raise _reject(
                f"column `{_sql(column)}`",
                f"no such column in {where} under this agreement "
                f"(columns: {', '.join(known) or 'none'})",
            )
        if len(owners) > 1 and name not in self.using:
            raise _reject(
                f"column `{column.name}`",
                f"ambiguous: it is in {', '.join(owners)}; write alias.{column.name}",
            )
        owner = owners[0]
        return owner, name, self.views.facts[self.aliases[owner]][name]

    def _columns(self, alias: str) -> dict[str, str]:
        view = self.aliases.get(alias)
        return {c.lower(): t for c, t in self.views.columns.get(view or "", {}).items()}

    def qualify(self, node: exp.Expr) -> exp.Expr:
        """A copy of ``node`` with every column qualified and quoted, and ``CLAMP`` spelled
        as DuckDB's ``LEAST(GREATEST(...))``."""
        node = node.copy()
        if isinstance(node, exp.Column):
            alias, name, _ = self.resolve(node)
            return exp.column(name, table=alias, quoted=True)
        for column in list(node.find_all(exp.Column)):
            alias, name, _ = self.resolve(column)
            column.replace(exp.column(name, table=alias, quoted=True))
        for func in list(node.find_all(exp.Anonymous)):
            if func.name.lower() == "clamp":
                func.replace(_clamp(*func.expressions))
        if isinstance(node, exp.Anonymous) and node.name.lower() == "clamp":
            return _clamp(*node.expressions)
        return node


def _clamp(*parts: exp.Expr) -> exp.Expr:
    if len(parts) != 3:
        raise _reject("CLAMP", "CLAMP takes an expression and two numbers: CLAMP(x, low, high)")
    value, low, high = parts
    return exp.Least(
        this=exp.Greatest(this=value.copy(), expressions=[low.copy()]),
        expressions=[high.copy()],
    )


# -- bounds --------------------------------------------------------------------------------


def _number(node: exp.Expr) -> float | None:
    """The value of a numeric literal (``-3``, ``2.5``), else None."""
    if isinstance(node, exp.Paren):
        return _number(node.this)
    if isinstance(node, exp.Neg):
        inner = _number(node.this)
        return -inner if inner is not None else None
    if isinstance(node, exp.Literal) and not node.is_string:
        try:
            return float(node.this)
        except ValueError:
            return None
    return None


def _union(parts: Sequence[Interval | None]) -> Interval | None:
    if any(p is None for p in parts) or not parts:
        return None
    return (min(p[0] for p in parts), max(p[1] for p in parts))  # type: ignore[index]


MAX_BOUND = 1e12
"""Bounds beyond this are no bounds (they would overflow the statistics)."""

MIN_EPSILON = 0.001
"""The smallest ε an answer may spend (less gives noise, not answers)."""


def _finite(found: Interval | None) -> Interval | None:
    if found is None or not all(math.isfinite(v) and abs(v) <= MAX_BOUND for v in found):
        return None
    return found


def interval(node: exp.Expr, facts: Callable[[exp.Column], Facts]) -> Interval | None:
    """Public bounds of a row-level numeric expression, or None where it has none."""
    return _finite(_interval(node, facts))


def _interval(node: exp.Expr, facts: Callable[[exp.Column], Facts]) -> Interval | None:
    def sub(n: exp.Expr) -> Interval | None:
        return _interval(n, facts)

    literal = _number(node)
    if literal is not None:
        return (literal, literal)
    if isinstance(node, exp.Boolean):
        return (1.0, 1.0) if node.this else (0.0, 0.0)
    if isinstance(node, exp.Column):
        found = facts(node)
        return (found.lower, found.upper) if found.bounded else None  # type: ignore[return-value]
    if isinstance(node, exp.Paren):
        return sub(node.this)
    if isinstance(node, exp.Neg):
        inner = sub(node.this)
        return (-inner[1], -inner[0]) if inner else None
    if isinstance(node, _PREDICATES):
        return (0.0, 1.0)
    if isinstance(node, exp.Add | exp.Sub | exp.Mul | exp.Div):
        left, right = sub(node.this), sub(node.expression)
        if left is None or right is None:
            return None
        if isinstance(node, exp.Add):
            return (left[0] + right[0], left[1] + right[1])
        if isinstance(node, exp.Sub):
            return (left[0] - right[1], left[1] - right[0])
        if isinstance(node, exp.Div):
            if right[0] <= 0 <= right[1]:
                return None
            right = (1 / right[1], 1 / right[0])
        products = [a * b for a in left for b in right]
        return (min(products), max(products))
    if isinstance(node, exp.Abs):
        inner = sub(node.this)
        if inner is None:
            return None
        low = 0.0 if inner[0] <= 0 <= inner[1] else min(abs(inner[0]), abs(inner[1]))
        return (low, max(abs(inner[0]), abs(inner[1])))
    if isinstance(node, exp.Floor | exp.Ceil | exp.Round | exp.Trunc):
        inner = sub(node.this)
        decimals = node.args.get("decimals")
        places = 0.0 if decimals is None else _number(decimals)
        if inner is None or places is None or places < -12:
            return None
        # To the left of the point (ROUND(x, -2)), the result may pass x's bounds.
        step = 10.0 ** max(0, -int(places))
        return (math.floor(inner[0] / step) * step, math.ceil(inner[1] / step) * step)
    if isinstance(node, exp.Cast | exp.TryCast):
        target = node.to.this.name if isinstance(node.to, exp.DataType) else ""
        if target.upper() not in _NUMERIC_CASTS:
            return None
        inner = sub(node.this)
        if inner and target.upper() in _INTEGER_TYPES:
            return (math.floor(inner[0]), math.ceil(inner[1]))
        return inner
    if isinstance(node, exp.Case):
        outcomes = [w.args["true"] for w in node.args.get("ifs") or []]
        default = node.args.get("default")
        outcomes += [default] if default is not None else []
        return _union([sub(o) for o in outcomes if not isinstance(o, exp.Null)])
    if isinstance(node, exp.If):
        outcomes = [node.args.get("true"), node.args.get("false")]
        return _union([sub(o) for o in outcomes if o is not None and not isinstance(o, exp.Null)])
    if isinstance(node, exp.Coalesce):
        parts = [node.this, *node.expressions]
        return _union([sub(p) for p in parts if not isinstance(p, exp.Null)])
    if isinstance(node, exp.Least | exp.Greatest):
        parts = [sub(p) for p in [node.this, *node.expressions]]
        if any(p is None for p in parts):
            return None
        pick = min if isinstance(node, exp.Least) else max
        known = [p for p in parts if p is not None]
        return (pick(p[0] for p in known), pick(p[1] for p in known))
    if isinstance(node, exp.Anonymous) and node.name.lower() == "clamp":
        if len(node.expressions) != 3:
            raise _reject("CLAMP", "CLAMP takes an expression and two numbers: CLAMP(x, low, high)")
        lowest, highest = _number(node.expressions[1]), _number(node.expressions[2])
        if lowest is None or highest is None or lowest > highest:
            raise _reject(
                f"`{_sql(node)}`", "CLAMP's bounds must be two numbers, the lower one first"
            )
        if max(abs(lowest), abs(highest)) > MAX_BOUND:
            raise _reject(f"`{_sql(node)}`", f"CLAMP's bounds must lie within ±{MAX_BOUND:g}")
        return (lowest, highest)
    if isinstance(node, exp.Exp):
        inner = sub(node.this)
        return (math.exp(min(inner[0], 700)), math.exp(min(inner[1], 700))) if inner else None
    if isinstance(node, exp.Sqrt):
        inner = sub(node.this)
        return (math.sqrt(max(inner[0], 0)), math.sqrt(max(inner[1], 0))) if inner else None
    if isinstance(node, exp.Ln):
        inner = sub(node.this)
        return (math.log(inner[0]), math.log(inner[1])) if inner and inner[0] > 0 else None
    if isinstance(node, exp.Pow):
        base, power = sub(node.this), _number(node.expression)
        if base is None or power is None or base[0] < 0 or power < 0:
            return None
        return (base[0] ** power, base[1] ** power)
    return None


# -- domains -------------------------------------------------------------------------------


def _cores(
    node: exp.Expr, facts: Callable[[exp.Column], Facts], key: exp.Expr
) -> list[tuple[exp.Expr, tuple[Any, ...]]]:
    """The parts of a group key whose values come from a public domain."""
    if isinstance(node, exp.Column):
        domain = facts(node).domain()
        if domain is None:
            raise _reject(
                f"GROUP BY `{_sql(key)}`",
                f"column `{node.name}` has no public list of values, so its groups would "
                "tell which values occur; group by a category, a boolean, a condition, or a "
                "binned number such as FLOOR(x / 10) * 10",
            )
        return [(node, (*domain, None))]
    if isinstance(node, exp.Literal | exp.Boolean | exp.Null):
        return []
    if isinstance(node, _PREDICATES):
        return [(node, (True, False, None))]
    # (An If inside a CASE is one of its WHEN arms, not a conditional of its own.)
    if isinstance(node, exp.Case) or (
        isinstance(node, exp.If) and not isinstance(node.parent, exp.Case)
    ):
        if isinstance(node, exp.Case):
            outcomes = [w.args["true"] for w in node.args.get("ifs") or []]
            outcomes.append(node.args.get("default") or exp.Null())
        else:
            outcomes = [node.args.get("true"), node.args.get("false") or exp.Null()]
        if all(isinstance(o, exp.Literal | exp.Boolean | exp.Null) for o in outcomes):
            values = []
            for outcome in outcomes:
                value = _literal_value(outcome)
                if value not in values:
                    values.append(value)
            if None not in values:
                values.append(None)
            return [(node, tuple(values))]
    binned = isinstance(node, exp.Floor | exp.Ceil | exp.Trunc) or (
        isinstance(node, exp.Round) and node.args.get("decimals") is None
    )
    if isinstance(node, exp.Cast | exp.TryCast):
        target = node.to.this.name.upper() if isinstance(node.to, exp.DataType) else ""
        binned = target in _INTEGER_TYPES
    if binned:
        bounds = interval(node, facts)
        if bounds is None:
            raise _reject(
                f"GROUP BY `{_sql(key)}`",
                f"`{_sql(node)}` has no public bounds; bin a column with bounds, or "
                "CLAMP(x, low, high) first",
            )
        low, high = int(bounds[0]), int(bounds[1])
        if high - low + 1 > MAX_BINS:
            raise _reject(
                f"GROUP BY `{_sql(key)}`",
                f"`{_sql(node)}` takes {high - low + 1:,} values; use wider bins "
                f"(at most {MAX_BINS:,})",
            )
        return [(node, (*range(low, high + 1), None))]
    found = []
    for child in node.iter_expressions():
        found += _cores(child, facts, key)
    return found


def _literal_value(node: exp.Expr) -> Any:
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Boolean):
        return bool(node.this)
    if node.is_string:
        return node.this
    value = float(node.this)
    return int(value) if value.is_integer() and "." not in node.this else value


def key_domain(key: exp.Expr, resolver: Resolver) -> tuple[Any, ...]:
    """Every value ``key`` can take, computed from public facts alone."""

    def facts(column: exp.Column) -> Facts:
        return resolver.resolve(column)[2]

    cores = _cores(key, facts, key)
    if len(cores) == 1 and cores[0][0] is key:
        return cores[0][1]
    size = math.prod(len(d) for _, d in cores) if cores else 1
    if size > MAX_CELLS:
        raise _reject(
            f"GROUP BY `{_sql(key)}`", f"it can take {size:,} values; at most {MAX_CELLS:,}"
        )
    template = key.copy()
    # Replace each core (found by position in a walk of the copy) with a column of values.
    originals = [id(c) for c, _ in cores]
    pairs = list(zip(key.walk(), template.walk(), strict=True))
    for index, node_id in enumerate(originals):
        copy_node = next(c for o, c in pairs if id(o) == node_id)
        if copy_node is template:
            template = exp.column(f"__c{index}")
        else:
            copy_node.replace(exp.column(f"__c{index}"))
    template = _spell_clamp(template)
    rows = list(itertools.product(*(d for _, d in cores))) or [()]
    columns = [f"__c{i}" for i in range(len(cores))]
    con = duckdb.connect(":memory:")
    try:
        if not cores:  # a constant key
            found = con.execute(f"SELECT TRY({_sql(template)})").fetchall()  # noqa: S608
            return (*{_plain(r[0]) for r in found if r[0] is not None}, None)
        import pandas as pd

        frame = pd.DataFrame(rows, columns=columns, dtype=object)
        for column, (_, domain) in zip(columns, cores, strict=True):
            kinds = {type(v) for v in domain if v is not None}
            if kinds <= {int}:
                frame[column] = frame[column].astype("Int64")
            elif kinds <= {int, float}:
                frame[column] = frame[column].astype("Float64")
            elif kinds <= {bool}:
                frame[column] = frame[column].astype("boolean")
        con.register("__domain", frame)
        found = con.execute(
            f"SELECT DISTINCT TRY({_sql(template)}) FROM __domain"  # noqa: S608 - gateway-built
        ).fetchall()
    except duckdb.Error as error:
        raise _reject(
            f"GROUP BY `{_sql(key)}`", f"its values cannot be listed ({type(error).__name__})"
        ) from None
    finally:
        con.close()
    values = sorted({_plain(r[0]) for r in found if r[0] is not None}, key=_sort_key)
    return (*values, None)


def _spell_clamp(node: exp.Expr) -> exp.Expr:
    """``CLAMP(x, low, high)`` as DuckDB spells it."""
    if isinstance(node, exp.Anonymous) and node.name.lower() == "clamp":
        return _clamp(*node.expressions)
    for func in list(node.find_all(exp.Anonymous)):
        if func.name.lower() == "clamp":
            func.replace(_clamp(*func.expressions))
    return node


def _sort_key(value: Any) -> tuple[str, Any]:
    return (type(value).__name__ if not isinstance(value, int | float) else "0", value)


def _plain(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# -- the plan ------------------------------------------------------------------------------


@dataclass
class Stat:
    """One noisy statistic per cell: its SQL over the bounded rows and the most one row can
    move it."""

    name: str
    sql: str
    per_row: float


@dataclass
class Planned:
    """One aggregate of the query, with its bounds and the statistics it is computed from."""

    aggregate: Aggregate
    text: str
    bounds: Interval | None
    stats: dict[str, str] = field(default_factory=dict)  # role (n, c, s, q, sum) -> Stat name


@dataclass
class PrivateAnswer:
    """A differentially private answer. ``rows`` hold None where a cell was withheld."""

    columns: list[str]
    rows: list[list[Any]]
    suppressed: list[dict[str, Any]]
    epsilon: float
    rows_per_patient: int
    aggregates: list[dict[str, Any]]
    query_hash: str
    result_hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "suppressed": self.suppressed,
            "epsilon": self.epsilon,
            "rows_per_patient": self.rows_per_patient,
            "aggregates": self.aggregates,
            "query_hash": self.query_hash,
            "result_hash": self.result_hash,
        }


def default_rows_per_patient(tables: Sequence[str]) -> int:
    return max(ROWS_PER_PATIENT.get(t, 5) for t in tables)


def check_epsilon(epsilon: float | None, disclosure: Disclosure) -> float:
    """The ε an answer spends: the request's, at most the agreement's per-answer limit."""
    limit = float(disclosure.epsilon_per_answer)
    if epsilon is None:
        return limit
    if not isinstance(epsilon, int | float) or not math.isfinite(epsilon) or epsilon <= 0:
        raise _reject("epsilon", "epsilon must be a positive number")
    if epsilon < MIN_EPSILON:
        raise _reject("epsilon", f"epsilon must be at least {MIN_EPSILON:g}")
    if epsilon > limit + 1e-12:
        raise _reject(
            "epsilon", f"this agreement allows at most ε = {limit:g} per answer; ask for less"
        )
    return float(epsilon)


def check_rows_per_patient(value: int | None, tables: Sequence[str]) -> int:
    if value is None:
        return default_rows_per_patient(tables)
    if not isinstance(value, int) or isinstance(value, bool):
        raise _reject("rows_per_patient", "rows_per_patient must be a whole number")
    if not 1 <= value <= MAX_ROWS_PER_PATIENT:
        raise _reject(
            "rows_per_patient", f"rows_per_patient must be between 1 and {MAX_ROWS_PER_PATIENT}"
        )
    return value


_CHECKED: dict[tuple[Any, ...], CheckedQuery] = {}
_CHECKED_MAX = 256
_CHECKED_LOCK = threading.Lock()


def checked_query(sql: str, views: AgreementViews) -> CheckedQuery:
    """``check_query`` remembered for the last queries (a pure function of the text, the
    view names and identifiers; parsing costs milliseconds). The checked tree is only read."""
    key = (
        sql,
        views.names,
        tuple(sorted((t, tuple(sorted(i))) for t, i in views.identifiers.items())),
    )
    with _CHECKED_LOCK:
        found = _CHECKED.get(key)
    if found is None:
        found = check_query(sql, views.names, views.identifiers)
        with _CHECKED_LOCK:
            if len(_CHECKED) >= _CHECKED_MAX:
                _CHECKED.pop(next(iter(_CHECKED)))
            _CHECKED[key] = found
    # Outside the cache: the views' column types decide, and they are the views' own.
    check_types(found, views.columns, views.facts)
    return found


def canonical(sql: str, epsilon: float, rows_per_patient: int, views: AgreementViews) -> str:
    """The identity of a question: its checked text and the terms it is answered on."""
    checked = checked_query(sql, views)
    return digest([checked.hash, round(epsilon, 12), rows_per_patient])


def answer(
    gateway: Gateway,
    views: AgreementViews,
    disclosure: Disclosure,
    sql: str,
    *,
    epsilon: float | None = None,
    rows_per_patient: int | None = None,
    noise: Noise | None = None,
) -> PrivateAnswer:
    """Check, plan, run and add noise to one query (see the module docstring)."""
    noise = noise or Noise()
    epsilon = check_epsilon(epsilon, disclosure)
    checked = checked_query(sql, views)
    resolver = Resolver(checked, views)
    tables = [view for _alias, view in checked.tables]
    bound = check_rows_per_patient(rows_per_patient, tables)

    prepared = views.plans.get((sql, bound))
    if prepared is None:
        prepared = _prepare(gateway, views, checked, resolver, tables, bound)
        if len(views.plans) >= PLANS_PER_VIEWS:
            views.plans.pop(next(iter(views.plans)), None)
        views.plans[(sql, bound)] = prepared
    cells, planned, stats = prepared.cells, prepared.planned, prepared.stats
    aliases, keys = prepared.aliases, prepared.keys
    names, rows = gateway.execute(views, prepared.sql)

    index = {cell: i for i, cell in enumerate(cells)}
    institutions = [views.institutions[t] for t in tables]
    totals = {name: [0.0] * len(cells) for name in stats}
    patients = [[[0.0] * len(institutions[t]) for _ in cells] for t in range(len(aliases))]
    for row in rows:
        record = dict(zip(names, row, strict=True))
        cell = index.get(tuple(_plain(record[k]) for k in keys))
        if cell is None:
            continue
        grouped = [record[f"__g{t}"] == 0 for t in range(len(aliases))]
        if len(aliases) == 1:
            for name in stats:
                totals[name][cell] += float(record[name] or 0)
        elif not any(grouped):
            for name in stats:
                totals[name][cell] = float(record[name] or 0)
            continue
        table = grouped.index(True)
        inst = record[f"__i{table}"]
        if inst in institutions[table]:
            patients[table][cell][institutions[table].index(inst)] = float(record["__np"])

    # Noise: a third of ε for the patient counts (split over the tables), the rest over
    # the statistics. The counts first, in one release (each table's patient counts per
    # cell and institution): the rules read them and withhold cells; then the statistics
    # of the cells answered, in a second release (a withheld cell's need no noise: they
    # are never shown). Two releases, ε in all: the second one's cells are chosen from
    # the first one's noisy output.
    rules_epsilon = epsilon * RULES_SHARE / len(aliases)
    stat_epsilon = epsilon * (1 - RULES_SHARE) / max(1, len(stats))
    counted, rule_scales = noise.laplace_many(
        [[v for cell in patients[t] for v in cell] for t in range(len(aliases))],
        [float(min(bound, len(cells) * max(1, len(institutions[t])))) for t in range(len(aliases))],
        [rules_epsilon] * len(aliases),
    )
    noisy_patients = [
        [
            counted[t][i * len(institutions[t]) : (i + 1) * len(institutions[t])]
            for i in range(len(cells))
        ]
        for t in range(len(aliases))
    ]
    withheld = [_rules(cell, noisy_patients, rule_scales, disclosure) for cell in range(len(cells))]
    answered = [cell for cell in range(len(cells)) if not withheld[cell]]
    names_in_order = list(stats)
    released, released_scales = noise.laplace_many(
        [[totals[name][cell] for cell in answered] for name in names_in_order],
        [stats[name].per_row * bound for name in names_in_order],
        [stat_epsilon] * len(names_in_order),
    )
    noisy: dict[str, list[float]] = {name: [0.0] * len(cells) for name in names_in_order}
    for name, vector in zip(names_in_order, released, strict=True):
        for cell, value in zip(answered, vector, strict=True):
            noisy[name][cell] = value
    scales = dict(zip(names_in_order, released_scales, strict=True))
    values_by_cell = [
        {p.text: _value(p, noisy, cell) if not withheld[cell] else None for p in planned}
        for cell in range(len(cells))
    ]
    columns_out, out_rows = _outputs(checked, cells, values_by_cell, withheld, prepared.outputs)
    ranking = _order(checked, out_rows)
    out_rows = [out_rows[i] for i in ranking]
    reasons = [withheld[i] for i in ranking]
    if checked.limit is not None:
        out_rows, reasons = out_rows[: checked.limit], reasons[: checked.limit]
    suppressed: list[dict[str, Any]] = [
        {"row": row, "column": None, "reason": reason}
        for row, reason in enumerate(reasons)
        if reason
    ]
    described = [
        {
            "expression": p.text,
            "bounds": list(p.bounds) if p.bounds else None,
            "noise_scale": {role: scales[name] for role, name in p.stats.items()},
        }
        for p in planned
    ]
    result = PrivateAnswer(
        columns=columns_out,
        rows=out_rows,
        suppressed=suppressed,
        epsilon=epsilon,
        rows_per_patient=bound,
        aggregates=described,
        query_hash=checked.hash,
    )
    result.result_hash = digest(result.as_dict())
    return result


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def _kind(node: exp.Expr, facts: Callable[[exp.Column], Facts]) -> str | None:
    """``n`` (number), ``s`` (text) or ``b`` (boolean) for a column or literal, else None."""
    if isinstance(node, exp.Paren):
        return _kind(node.this, facts)
    if isinstance(node, exp.Column):
        kind = facts(node).kind
        return {"number": "n", "integer": "n", "boolean": "b"}.get(kind, "s")
    if isinstance(node, exp.Boolean):
        return "b"
    if isinstance(node, exp.Literal):
        return "s" if node.is_string else "n"
    return None


def _cannot_fail(node: exp.Expr, facts: Callable[[exp.Column], Facts]) -> bool:
    """Whether ``node`` cannot raise on any row: columns, literals, logic, CASE/IF over such
    parts, comparisons of a column or literal with one of the same kind (no implicit cast),
    and a numeric or boolean column cast to DOUBLE. Anything else runs inside ``TRY``."""
    if isinstance(node, exp.Column | exp.Literal | exp.Boolean | exp.Null):
        return True
    if isinstance(node, exp.Paren | exp.Not):
        return _cannot_fail(node.this, facts)
    if isinstance(node, exp.And | exp.Or):
        return _cannot_fail(node.this, facts) and _cannot_fail(node.expression, facts)
    if isinstance(node, exp.Is):
        return isinstance(node.expression, exp.Null) and _cannot_fail(node.this, facts)
    if isinstance(node, _COMPARISONS):
        left, right = _kind(node.this, facts), _kind(node.expression, facts)
        return left is not None and left == right
    if isinstance(node, exp.Case):
        parts = [node.args.get("default")]
        for when in node.args.get("ifs") or []:
            parts += [when.this, when.args.get("true")]
        return node.args.get("this") is None and all(
            p is None or _cannot_fail(p, facts) for p in parts
        )
    if isinstance(node, exp.If):
        parts = [node.this, node.args.get("true"), node.args.get("false")]
        return all(p is None or _cannot_fail(p, facts) for p in parts)
    if isinstance(node, exp.Cast) and node.to.this.name.upper() == "DOUBLE":
        inner = node.this
        if isinstance(inner, exp.Column):
            return _kind(inner, facts) in ("n", "b")
        return isinstance(inner, exp.Case | exp.If | exp.Paren) and _cannot_fail(inner, facts)
    return False


def _total(node: exp.Expr, facts: Callable[[exp.Column], Facts]) -> str:
    """``node`` as SQL that cannot fail on a row: inside ``TRY`` unless it cannot anyway
    (``TRY`` costs time on every row)."""
    if _cannot_fail(node, facts):
        return _sql(node)
    return f"TRY({_sql(node)})"


@dataclass
class _Prepared:
    """Everything about a question that does not depend on the data: its cells, the
    statistics behind its aggregates and the SQL that computes them (remembered per views,
    question and contribution bound)."""

    cells: list[tuple[Any, ...]]
    planned: list[Planned]
    stats: dict[str, Stat]
    aliases: list[str]
    keys: list[str]
    sql: str
    outputs: tuple[list[str], dict[str, str]]  # see _output_plan


PLANS_PER_VIEWS = 256


def _prepare(
    gateway: Gateway,
    views: AgreementViews,
    checked: CheckedQuery,
    resolver: Resolver,
    tables: list[str],
    bound: int,
) -> _Prepared:
    def facts(column: exp.Column) -> Facts:
        return resolver.resolve(column)[2]

    def sure(column: exp.Column) -> Facts:
        """A column's bounds as the data holds them (its own minimum and maximum): what
        every row's value is, where ``facts`` says only what it should be."""
        alias, name, fact = resolver.resolve(column)
        if fact.kind == "boolean":
            return fact
        table = resolver.aliases[alias]
        seen = views.observed(table, lambda q: gateway.execute(views, q)).get(name)
        return Facts(fact.kind, *seen) if seen else Facts(fact.kind)

    # Every column the query reads must be the agreement's.
    for join in checked.tree.args.get("joins") or []:
        if join.args.get("on") is not None:
            resolver.qualify(join.args["on"])
    where = checked.tree.args.get("where")
    if where is not None:
        resolver.qualify(where.this)

    domains = [key_domain(k, resolver) for k in checked.keys]
    cells = list(itertools.product(*domains)) if domains else [()]
    if len(cells) > MAX_CELLS:
        raise _reject(
            "GROUP BY", f"the keys' public domains give {len(cells):,} cells; at most {MAX_CELLS:,}"
        )

    planned: list[Planned] = []
    stats: dict[str, Stat] = {}
    values: list[str] = []
    by_text: dict[str, Planned] = {}
    for aggregate in checked.aggregates:
        text = _sql(aggregate.node)
        if text in by_text:
            continue
        plan = _plan(aggregate, text, facts, sure, resolver, stats, values)
        by_text[text] = plan
        planned.append(plan)

    # The rows, each with its patient, institutions, keys and clamped values.
    aliases = [alias for alias, _view in checked.tables]
    selects = [f'"{aliases[0]}".__pid AS __pid']
    selects += [f'"{a}".{INSTITUTION} AS __i{t}' for t, a in enumerate(aliases)]
    selects += [
        f"{_total(resolver.qualify(k), facts)} AS __k{i}" for i, k in enumerate(checked.keys)
    ]
    selects += [f"{v} AS __v{j}" for j, v in enumerate(values)]
    rows_sql = f"SELECT {', '.join(selects)} FROM {_from(checked, resolver)}"  # noqa: S608
    if where:
        rows_sql += f" WHERE COALESCE({_total(resolver.qualify(where.this), facts)}, FALSE)"

    most = math.prod(views.rows_per_patient(t, lambda q: gateway.execute(views, q)) for t in tables)
    columns = [c.split(" AS ")[-1] for c in selects]
    if most > bound:
        order = ", ".join(columns)
        bounded = (
            "SELECT * FROM __r QUALIFY row_number() OVER (PARTITION BY __pid "  # noqa: S608
            f"ORDER BY hash({order})) <= {bound}"
        )
    else:
        bounded = None
    keys = [f"__k{i}" for i in range(len(checked.keys))]
    # Patients per cell and institution: with at most one row per patient (known from the
    # views, not from this query's data), a row count is a patient count.
    patients_sql = "COUNT(*)" if most <= 1 else "COUNT(DISTINCT __pid)"
    institution_columns = [f"__i{t}" for t in range(len(aliases))]
    if len(aliases) == 1:
        # One table: group by keys and institution once; the cell totals are sums over
        # institutions (every statistic is additive).
        grouping = f"GROUP BY {', '.join([*keys, '__i0'])}"
        flags = ["0 AS __g0"]
    else:
        sets = [f"({', '.join(keys)})"] + [
            f"({', '.join([*keys, column])})" for column in institution_columns
        ]
        grouping = f"GROUP BY GROUPING SETS ({', '.join(sets)})"
        flags = [f"GROUPING({column}) AS __g{t}" for t, column in enumerate(institution_columns)]
    outputs = [*keys, *institution_columns, *flags, f"{patients_sql} AS __np"]
    outputs += [f"{s.sql} AS {s.name}" for s in stats.values()]
    rows = f"__r AS ({rows_sql})" + (f", __b AS ({bounded})" if bounded else "")
    final = (
        f"WITH {rows} SELECT {', '.join(outputs)} "  # noqa: S608 - gateway-built
        f"FROM {'__b' if bounded else '__r'} {grouping}"
    )
    shown = _output_plan(checked, [p.text for p in planned])
    return _Prepared(cells, planned, stats, aliases, keys, final, shown)


def _using_columns(checked: CheckedQuery) -> set[str]:
    found: set[str] = set()
    for join in checked.tree.args.get("joins") or []:
        for ident in join.args.get("using") or []:
            found.add(ident.name.lower())
    return found


def _from(checked: CheckedQuery, resolver: Resolver) -> str:
    """FROM and JOINs, every join made within one patient (``a.__pid = b.__pid``)."""
    (first_alias, first_view), *rest = checked.tables
    parts = [f'"{first_view}" AS "{first_alias}"']
    joins = checked.tree.args.get("joins") or []
    seen = [first_alias]
    for (alias, view), join in zip(rest, joins, strict=True):
        conditions = [f'"{first_alias}".__pid = "{alias}".__pid']
        if join.args.get("on") is not None:
            on = _sql(resolver.qualify(join.args["on"]))
            conditions.insert(0, f"COALESCE(TRY({on}), FALSE)")
        for ident in join.args.get("using") or []:
            name = ident.name.lower()
            left = next(
                (a for a in seen if name in resolver._columns(a)),
                None,
            )
            if left is None or name not in resolver._columns(alias):
                raise _reject(f"USING ({ident.name})", "both sides of the join need the column")
            conditions.insert(0, f'"{left}"."{name}" = "{alias}"."{name}"')
        side = "LEFT " if (join.args.get("side") or "").upper() == "LEFT" else ""
        parts.append(f'{side}JOIN "{view}" AS "{alias}" ON {" AND ".join(conditions)}')
        seen.append(alias)
    return " ".join(parts)


def _plan(
    aggregate: Aggregate,
    text: str,
    facts: Callable[[exp.Column], Facts],
    sure: Callable[[exp.Column], Facts],
    resolver: Resolver,
    stats: dict[str, Stat],
    values: list[str],
) -> Planned:
    """The statistics one aggregate needs, each added to ``stats`` once."""
    func = aggregate.func

    def stat(name: str, sql: str, per_row: float) -> str:
        stats.setdefault(name, Stat(name, sql, per_row))
        return name

    if func == "count_star":
        return Planned(aggregate, text, None, {"n": stat("__n", "COUNT(*)", 1.0)})
    assert aggregate.arg is not None
    arg = resolver.qualify(aggregate.arg)
    if func == "count":
        j = _value_slot(values, _total(arg, facts))
        return Planned(aggregate, text, None, {"c": stat(f"__c{j}", f"COUNT(__v{j})", 1.0)})
    bounds = interval(aggregate.arg, facts)
    if bounds is None:
        raise _reject(
            f"{func.upper()}({_sql(aggregate.arg)})",
            "its values have no public bounds, so one patient's effect on it is unlimited; "
            "aggregate a column the data model bounds, or state bounds with "
            "CLAMP(expr, low, high)",
        )
    low, high = bounds
    as_double = exp.Cast(this=arg.copy(), to=exp.DataType.build("DOUBLE"))
    value = _total(as_double, facts)
    if not _within(aggregate.arg, sure, low, high):
        value = _clamped(value, low, high)
    j = _value_slot(values, value)
    mid, half = (low + high) / 2, (high - low) / 2
    roles = {"c": stat(f"__c{j}", f"COUNT(__v{j})", 1.0)}
    if func == "sum":
        return Planned(
            aggregate,
            text,
            bounds,
            {"sum": stat(f"__sum{j}", f"SUM(__v{j})", max(abs(low), abs(high)))},
        )
    roles["s"] = stat(f"__s{j}", f"SUM(__v{j} - {mid!r})", half)
    if func in ("var_samp", "var_pop", "stddev_samp", "stddev_pop"):
        centred = f"(__v{j} - {mid!r})"
        roles["q"] = stat(f"__q{j}", f"SUM({centred} * {centred})", half * half)
    return Planned(aggregate, text, bounds, roles)


_GUARANTEED = (
    exp.Paren,
    exp.Neg,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Abs,
    exp.Floor,
    exp.Ceil,
    exp.Round,
    exp.Cast,
    exp.TryCast,
    exp.Case,
    exp.If,
    exp.Coalesce,
    exp.Least,
    exp.Greatest,
)
_ROUNDING = (exp.Add, exp.Sub, exp.Mul, exp.Div)


def _guaranteed(node: exp.Expr) -> bool:
    """Whether ``node``'s interval, from its columns' true minimum and maximum, holds for
    every row as DuckDB computes it: arithmetic, rounding, casts and choices between such
    parts (a predicate is 0, 1 or NULL whatever it reads); no function that can turn finite
    inputs into NaN or infinity."""
    if isinstance(node, (*_PREDICATES, exp.Column, exp.Literal, exp.Boolean, exp.Null)):
        return True
    if isinstance(node, exp.Anonymous):
        return node.name.lower() == "clamp" and all(_guaranteed(e) for e in node.expressions)
    if not isinstance(node, _GUARANTEED):
        return False
    if isinstance(node, exp.Case):
        parts = [w.args.get("true") for w in node.args.get("ifs") or []]
        parts.append(node.args.get("default"))
    elif isinstance(node, exp.If):
        parts = [node.args.get("true"), node.args.get("false")]
    elif isinstance(node, exp.Cast | exp.TryCast):
        parts = [node.this]
    else:
        parts = list(node.iter_expressions())
    return all(p is None or _guaranteed(p) for p in parts)


def _within(node: exp.Expr, sure: Callable[[exp.Column], Facts], low: float, high: float) -> bool:
    """Whether every row's value of ``node`` already lies in [low, high], by the data's own
    extremes: clamping it would change nothing (only the time the query takes)."""
    if not _guaranteed(node):
        return False
    found = interval(node, sure)
    if found is None:
        return False
    # Floating-point arithmetic may round past an interval computed here by an ulp or so.
    rounding = any(isinstance(n, _ROUNDING) for n in node.walk())
    margin = 1e-9 * max(1.0, abs(low), abs(high)) if rounding else 0.0
    return low + margin <= found[0] and found[1] <= high - margin


def _clamped(value: str, low: float, high: float) -> str:
    """``value`` clamped to [low, high]; NULL stays NULL (DuckDB's GREATEST would skip it).
    The pool holds no NaN (``hub.storage.frames.put_frame`` stores it as missing): DuckDB
    orders NaN above every number, but folds these comparisons away by Parquet statistics
    that pyarrow writes without NaN."""
    return (
        f"CASE WHEN {value} < {low!r} THEN {low!r} WHEN {value} > {high!r} THEN {high!r} "
        f"ELSE {value} END"
    )


def _value_slot(values: list[str], sql: str) -> int:
    """The index of a row-level value, computed once however many aggregates use it."""
    if sql not in values:
        values.append(sql)
    return values.index(sql)


def _value(plan: Planned, noisy: dict[str, list[float]], cell: int) -> float | None:
    """One aggregate's value in one cell, from its noisy statistics (post-processing)."""
    get = {role: noisy[name][cell] for role, name in plan.stats.items()}
    func = plan.aggregate.func
    if func == "count_star":
        return float(max(0, round(get["n"])))
    if func == "count":
        return float(max(0, round(get["c"])))
    if func == "sum":
        return get["sum"]
    assert plan.bounds is not None
    low, high = plan.bounds
    mid, half = (low + high) / 2, (high - low) / 2
    count = get["c"]
    if count < 1:
        return None
    mean = min(max(mid + get["s"] / count, low), high)
    if func == "avg":
        return mean
    centred = get["s"] / count
    variance = min(max(get["q"] / count - centred * centred, 0.0), half * half)
    if func.endswith("samp"):
        if count < 2:
            return None
        variance *= count / (count - 1)
    return math.sqrt(variance) if func.startswith("stddev") else variance


def _rules(
    cell: int, patients: list[list[list[float]]], scales: list[float], disclosure: Disclosure
) -> str | None:
    """Why a cell is withheld, judged on noisy patient counts only (post-processing)."""
    first = [max(0.0, v) for v in patients[0][cell]]
    if sum(first) < disclosure.k:
        return f"fewer than {disclosure.k} patients (noisy count)"
    for table, per_institution in enumerate(patients):
        counts = [max(0.0, v) for v in per_institution[cell]]
        threshold = max(1.0, RULE_SCALES * scales[table])
        if sum(1 for c in counts if c >= threshold) < disclosure.min_institutions:
            return f"fewer than {disclosure.min_institutions} institutions (noisy counts)"
        total = sum(counts)
        top = sum(sorted(counts, reverse=True)[: disclosure.dominance_n])
        if total > 0 and top > total * disclosure.dominance_percent / 100:
            return (
                f"the largest {disclosure.dominance_n} institutions hold more than "
                f"{disclosure.dominance_percent:g} % (noisy counts)"
            )
    return None


def _output_plan(checked: CheckedQuery, texts: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The researcher's output expressions as SQL over the aggregates' slots (``__a0``, ...)
    and the keys (``__k0``, ...), and the slot of each aggregate's text."""
    slots = {text: f"__a{i}" for i, text in enumerate(sorted(set(texts)))}
    exprs = []
    for output in checked.outputs:
        if output.key is not None:
            exprs.append(f"__k{output.key}")
            continue
        node = output.expr.copy()
        if type(node) in {type(a.node) for a in output.aggregates} and _sql(node) in slots:
            exprs.append(f"TRY({slots[_sql(node)]})")
            continue
        for found in list(node.walk()):
            if found is not node and _sql(found) in slots and found.parent is not None:
                found.replace(exp.column(slots[_sql(found)]))
        exprs.append(f"TRY({_sql(node)})")
    return exprs, slots


def _outputs(
    checked: CheckedQuery,
    cells: list[tuple[Any, ...]],
    values: list[dict[str, float | None]],
    withheld: list[str | None],
    plan: tuple[list[str], dict[str, str]],
) -> tuple[list[str], list[list[Any]]]:
    """The researcher's output expressions over the noisy aggregates, per cell."""
    names = [o.name for o in checked.outputs]
    exprs, slots = plan
    plain = [e for e in exprs if re.fullmatch(r"__k\d+|TRY\(__a\d+\)", e)]
    texts_by_slot = {slot: text for text, slot in slots.items()}
    if len(plain) == len(exprs):
        # Every output is a key or one aggregate: no expression to compute.
        def pick(expr: str, cell: int) -> Any:
            if expr.startswith("__k"):
                return cells[cell][int(expr[3:])]
            return values[cell][texts_by_slot[expr[4:-1]]]

        rows = [tuple(pick(e, c) for e in exprs) for c in range(len(cells))]
    else:
        rows = _compute(exprs, checked, cells, values, slots)
    out = []
    for row, reason in zip(rows, withheld, strict=True):
        out.append(
            [
                _cell(v) if (o.key is not None or not reason) else None
                for v, o in zip(row, checked.outputs, strict=True)
            ]
        )
    return names, out


def _compute(
    exprs: list[str],
    checked: CheckedQuery,
    cells: list[tuple[Any, ...]],
    values: list[dict[str, float | None]],
    slots: dict[str, str],
) -> list[tuple[Any, ...]]:
    """Output expressions over the noisy aggregates, computed by DuckDB (post-processing)."""
    import pandas as pd

    data: dict[str, list[Any]] = {
        f"__k{i}": [c[i] for c in cells] for i in range(len(checked.keys))
    }
    for text, slot in slots.items():
        data[slot] = [v[text] for v in values]
    frame = pd.DataFrame(data, index=range(len(cells)))
    for slot in slots.values():
        frame[slot] = frame[slot].astype("Float64")
    con = duckdb.connect(":memory:")
    try:
        con.register("__cells", frame)
        select = ", ".join(exprs) or "1"
        return con.execute(f"SELECT {select} FROM __cells").fetchall()  # noqa: S608 - built
    finally:
        con.close()


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() and abs(number) < 2**53 else float(f"{number:.6g}")


def _order(checked: CheckedQuery, rows: list[list[Any]]) -> list[int]:
    """Row order: ORDER BY on the (noisy) output, withheld and missing values last."""
    indexes = list(range(len(rows)))
    for position, descending in reversed(checked.order):

        def key(i: int, p: int = position) -> tuple[bool, str, Any]:
            value = rows[i][p]
            return (value is None, type(value).__name__, value if value is not None else 0)

        present = [i for i in indexes if rows[i][position] is not None]
        missing = [i for i in indexes if rows[i][position] is None]
        present.sort(key=key, reverse=descending)
        indexes = present + missing
    return indexes
