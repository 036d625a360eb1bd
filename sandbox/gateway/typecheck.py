"""Types before the engine: a query that computes with text is refused in the researcher's
terms before DuckDB binds it.

``check_query`` knows which constructs are allowed but not what the views' columns hold; the
views do (``AgreementViews.columns`` and ``.facts``). Without this check ``AVG(age)``, where
de-identification turned ``age`` into bands such as ``'40-49'``, reached DuckDB and came back
as its binder error ("No function matches the given name and argument types 'avg(VARCHAR)'").
:func:`check_types` walks the checked tree once and refuses, naming the column and what to
write instead: a numeric aggregate, arithmetic or a numeric function over text; a comparison
of text with a number (``age > 40``, ``age BETWEEN 40 AND 60``, ``age IN (40, 50)``); ``LIKE``
with a number; a text function over a number; a date part of a column that is not a date.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp

from sandbox.gateway.errors import QueryRejected
from sandbox.gateway.facts import NUMERIC_TYPES, Facts
from sandbox.gateway.sql import AGGREGATES, COMPARISONS, NUMBER_FUNCTIONS, CheckedQuery

_TEXT = {"VARCHAR", "TEXT", "STRING", "CHAR"}
_DATES = {"DATE", "TIMESTAMP", "TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ", "TIME"}
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.IntDiv, exp.Mod, exp.Pow)


class _Text:
    """A text value and, when it is a column, which one (for the message)."""

    def __init__(self, column: str = "", fact: Facts | None = None, *, numeric: bool = False):
        self.column = column
        self.fact = fact
        self.numeric = numeric  # a quoted number ('3'), which DuckDB compares with numbers

    @property
    def banded(self) -> bool:
        return self.fact is not None and self.fact.kind == "band"

    def example(self) -> str:
        values = [str(v) for v in (self.fact.values or ()) if v is not None] if self.fact else []
        if self.banded:
            wanted = [v for v in values if v in ("40-49", "40-44")] or values
            return f"'{wanted[-1]}'" if wanted else "'40-49'"
        return f"'{values[0]}'" if values else "'…'"

    def what(self) -> str:
        if self.banded:
            return f"`{self.column}` is given in bands such as {self.example()}, not as a number"
        return f"`{self.column}` is text, not a number"


Kind = str | _Text | None  # "n" number, "b" boolean, "d" date, _Text text, None unknown


def check_types(
    checked: CheckedQuery,
    types: Mapping[str, Mapping[str, str]],
    facts: Mapping[str, Mapping[str, Facts]] | None = None,
    *,
    fit: bool = False,
) -> None:
    """Refuse (:class:`QueryRejected`) a checked query that computes with text or compares
    text with numbers. ``types``: per view, each column's SQL type as the view holds it;
    ``facts``: the views' public facts (which text columns are bands, their values);
    ``fit``: the query is a model fit's probe (``SUM(feature)``), and is refused as one."""
    _Types(checked, types, facts or {}, fit=fit).check()


class _Types:
    def __init__(
        self,
        checked: CheckedQuery,
        types: Mapping[str, Mapping[str, str]],
        facts: Mapping[str, Mapping[str, Facts]],
        *,
        fit: bool = False,
    ) -> None:
        self.checked = checked
        self.fit = fit
        self.aliases = dict(checked.tables)
        self.types = {
            v.lower(): {c.lower(): t for c, t in cols.items()} for v, cols in types.items()
        }
        self.facts = {
            v.lower(): {c.lower(): f for c, f in cols.items()} for v, cols in facts.items()
        }

    def check(self) -> None:
        tree = self.checked.tree
        for select in tree.expressions:
            self.kind(select.this if isinstance(select, exp.Alias) else select)
        where = tree.args.get("where")
        if where is not None:
            self.kind(where.this)
        for key in self.checked.keys:
            self.kind(key)

    # -- what a column holds ---------------------------------------------------------------

    def column(self, node: exp.Column) -> Kind:
        name = node.name.lower()
        if node.table:
            views = [self.aliases.get(node.table.lower(), "")]
        else:
            views = [v for _, v in self.checked.tables if name in self.types.get(v, {})]
        for view in views:
            sql_type = self.types.get(view, {}).get(name)
            if sql_type is None:
                continue
            base = sql_type.upper().split("(")[0].strip()
            if base in NUMERIC_TYPES:
                return "n"
            if base == "BOOLEAN":
                return "b"
            if base in _DATES:
                return "d"
            if base in _TEXT:
                return _Text(node.name, self.facts.get(view, {}).get(name))
            return None
        return None

    # -- inference, refusing what cannot bind -----------------------------------------------

    def kind(self, node: exp.Expr | None) -> Kind:  # noqa: C901 - one branch per construct
        if node is None or isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Paren):
            return self.kind(node.this)
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, exp.Boolean):
            return "b"
        if isinstance(node, exp.Literal):
            return _Text(numeric=_is_number(node.this)) if node.is_string else "n"
        for cls, func in AGGREGATES.items():
            if type(node) is cls:
                return self.aggregate(node, func)
        if isinstance(node, exp.Neg):
            self.number(node.this, "-", node)
            return "n"
        if isinstance(node, _ARITHMETIC):
            self.number(node.this, _symbol(node), node)
            self.number(node.expression, _symbol(node), node)
            return "n"
        if isinstance(node, NUMBER_FUNCTIONS):
            self.number(node.this, node.sql_name(), node)
            for other in node.iter_expressions():
                if other is not node.this:
                    self.kind(other)
            return "n"
        if isinstance(node, exp.Lower | exp.Upper):
            inner = self.kind(node.this)
            if inner == "n":
                raise _reject(node, f"{node.sql_name()} takes text, and its argument is a number")
            return _Text()
        if isinstance(node, exp.DPipe):
            self.kind(node.this)
            self.kind(node.expression)
            return _Text()
        if isinstance(node, exp.Cast | exp.TryCast):
            inner = self.kind(node.this)
            target = node.to.sql(dialect="duckdb").upper().split("(")[0].strip()
            if target in NUMERIC_TYPES:
                if isinstance(inner, _Text) and inner.banded and not isinstance(node, exp.TryCast):
                    raise _reject(
                        node,
                        f"{inner.what()}, so it cannot be cast to one: GROUP BY "
                        f"{inner.column}, or compare it with a band "
                        f"({inner.column} = {inner.example()})",
                    )
                return "n"
            if target in _TEXT:
                return _Text()
            if target == "BOOLEAN":
                return "b"
            return "d" if target in _DATES else None
        if isinstance(node, exp.Coalesce | exp.Least | exp.Greatest):
            return self.same([node.this, *node.expressions], node)
        if isinstance(node, exp.Case):
            if node.args.get("this") is not None:
                self.kind(node.args["this"])
            results = []
            for when in node.args.get("ifs") or []:
                self.kind(when.this)
                results.append(when.args.get("true"))
            results.append(node.args.get("default"))
            return self.same(results, node)
        if isinstance(node, exp.If):
            self.kind(node.this)
            return self.same([node.args.get("true"), node.args.get("false")], node)
        if isinstance(node, COMPARISONS):
            self.comparable(node.this, [node.expression], node)
            return "b"
        if isinstance(node, exp.Between):
            self.comparable(node.this, [node.args.get("low"), node.args.get("high")], node)
            return "b"
        if isinstance(node, exp.In):
            self.comparable(node.this, list(node.expressions), node)
            return "b"
        if isinstance(node, exp.Like | exp.ILike):
            for side in (node.this, node.expression):
                if self.kind(side) in ("n", "b"):
                    word = "ILIKE" if isinstance(node, exp.ILike) else "LIKE"
                    raise _reject(
                        node,
                        f"{word} compares text with a quoted pattern, such as "
                        f"{_sql(node.this)} {word} 'abc%'; for a number use = or BETWEEN",
                    )
            return "b"
        if isinstance(node, exp.Anonymous) and node.name.lower() == "clamp":
            for i, arg in enumerate(node.expressions):
                self.number(arg, "CLAMP", node, bound=i > 0)
            return "n"
        if isinstance(node, exp.Anonymous) and node.name.lower() in ("date_part", "datepart"):
            if len(node.expressions) > 1:
                self.date(node.expressions[1], node)
            return "n"
        if isinstance(node, exp.Extract):
            self.date(node.expression, node)
            return "n"
        for child in node.iter_expressions():
            self.kind(child)
        return None

    def aggregate(self, node: exp.Expr, func: str) -> Kind:
        arg = node.this
        if func == "count" or arg is None or isinstance(arg, exp.Star):
            if arg is not None and not isinstance(arg, exp.Star):
                self.kind(arg)
            return "n"
        inner = self.kind(arg)
        if isinstance(inner, _Text):
            shown = _sql(node)
            word = shown.split("(")[0]
            if self.fit:
                what = inner.what() if inner.column else f"{_sql(arg)} gives text"
                advice = (
                    f"filter on it instead ({inner.column} = {inner.example()})"
                    if inner.column
                    else "give an expression that is a number"
                )
                raise _reject(
                    node,
                    f"{what}: the features and the target of a fit must be numbers or "
                    f"booleans; {advice}",
                    construct=f"fit on `{_sql(arg)}`",
                )
            if inner.column and isinstance(arg, exp.Column | exp.Paren):
                if inner.banded:
                    raise _reject(
                        node,
                        f"{inner.what()}: GROUP BY {inner.column} instead of {shown}",
                        construct=shown,
                    )
                raise _reject(
                    node,
                    f"{inner.what()}, so {word} cannot compute with it: GROUP BY "
                    f"{inner.column} with COUNT(*), or count one value with SUM(CASE WHEN "
                    f"{inner.column} = {inner.example()} THEN 1 ELSE 0 END)",
                    construct=shown,
                )
            raise _reject(
                node,
                f"{word} needs a number and this expression gives text",
                construct=shown,
            )
        return "n"

    # -- requirements ------------------------------------------------------------------------

    def number(self, node: exp.Expr | None, op: str, parent: exp.Expr, bound: bool = False) -> None:
        found = self.kind(node)
        if not isinstance(found, _Text):
            return
        if found.column:
            if found.banded:
                advice = (
                    f"GROUP BY {found.column}, or compare it with a band "
                    f"({found.column} = {found.example()})"
                )
            else:
                advice = f"GROUP BY {found.column}, or compare it with a quoted value"
            raise _reject(parent, f"{found.what()}, so `{op}` cannot compute with it: {advice}")
        what = "a bound" if bound else "an operand"
        raise _reject(parent, f"`{op}` needs numbers, and {what} here is text")

    def same(self, parts: list[exp.Expr | None], parent: exp.Expr) -> Kind:
        found = [self.kind(p) for p in parts if p is not None]
        text = [k for k in found if isinstance(k, _Text)]
        if text and any(k == "n" for k in found):
            column = next((k for k in text if k.column), None)
            detail = f" ({column.what()})" if column is not None else ""
            raise _reject(
                parent,
                f"its results mix text and numbers{detail}; give every branch the same kind "
                "of value",
            )
        if text:
            return text[0]
        return next((k for k in found if k is not None), None)

    def comparable(self, left: exp.Expr, others: list[exp.Expr | None], parent: exp.Expr) -> None:
        kinds = [self.kind(left), *(self.kind(o) for o in others if o is not None)]
        text = [k for k in kinds if isinstance(k, _Text) and not (k.numeric and not k.column)]
        if not text or "n" not in kinds:
            return
        column = next((k for k in text if k.column), None)
        if column is None:
            raise _reject(
                parent,
                "it compares a number with quoted text; write the number without quotes",
            )
        if column.banded:
            values = [str(v) for v in (column.fact.values or ()) if v is not None]  # type: ignore[union-attr]
            pair = [v for v in values if v in ("40-49", "50-59")] or values[:2]
            listed = ", ".join(f"'{v}'" for v in pair) if pair else "'40-49', '50-59'"
            raise _reject(
                parent,
                f"{column.what()}: compare it with bands ({column.column} = {column.example()} "
                f"or {column.column} IN ({listed})), or GROUP BY {column.column}",
            )
        raise _reject(
            parent,
            f"{column.what()}: compare it with a quoted value "
            f"({column.column} = {column.example()})",
        )

    def date(self, node: exp.Expr, parent: exp.Expr) -> None:
        found = self.kind(node)
        if found == "n":
            raise _reject(
                parent,
                "dates in the pool are whole days since the episode's first collection (a "
                "number), not calendar dates: compute with the day count instead, e.g. "
                f"FLOOR({_sql(node)} / 30) for months",
            )
        if isinstance(found, _Text):
            raise _reject(parent, f"{_sql(node)} is text, not a date")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _sql(node: exp.Expr) -> str:
    return node.sql(dialect="duckdb")


def _symbol(node: exp.Expr) -> str:
    symbols: dict[type[exp.Expr], str] = {
        exp.Add: "+",
        exp.Sub: "-",
        exp.Mul: "*",
        exp.Div: "/",
        exp.IntDiv: "//",
        exp.Mod: "%",
        exp.Pow: "^",
    }
    return symbols.get(type(node), type(node).__name__)


def _reject(node: exp.Expr, reason: str, construct: str = "") -> QueryRejected:
    return QueryRejected(reason, construct or f"`{_sql(node)}`")
