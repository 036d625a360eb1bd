"""Check a researcher's SQL against the allow-list and rewrite it for disclosure control.

``check_query`` parses one statement in DuckDB's dialect with sqlglot and walks its syntax
tree. Everything is refused unless it is on an allow-list: one ``SELECT`` over the
agreement's views (optionally joined on column equalities), a ``WHERE`` of row predicates,
``GROUP BY`` keys, and output columns that are group keys or arithmetic over the allowed
aggregates. Subqueries and CTEs are refused outright: an inner query could return rows, and
an aggregate-only rule for them buys little that a join does not give.

``rewrite`` turns a checked query into one statement that pre-aggregates by the group keys
and each table's ``institution`` (a single scan) and then combines the partial aggregates
per group, carrying for every output cell what disclosure control needs: record count,
distinct institutions per table, per-aggregate contributor counts, the records in each
branch of every ``CASE`` or predicate inside an aggregate, the records each ``WHERE``
conjunct removes, and the share of the largest institutions (dominance). Beside each record
count it carries the distinct patients (``__pid`` of the first table, counted per
institution and summed), the unit the thresholds are judged in. The researcher's text is
never executed: only SQL generated from the checked tree is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError

from sandbox.gateway.errors import QueryRejected

INSTITUTION = "institution"
"""The pseudonym column every view carries; it is not an identifier of a person."""

# Aggregates real data answers: sqlglot class -> canonical name.
AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Avg: "avg",
    exp.Stddev: "stddev_samp",
    exp.StddevSamp: "stddev_samp",
    exp.StddevPop: "stddev_pop",
    exp.Variance: "var_samp",
    exp.VariancePop: "var_pop",
}
COUNTS = {"count", "count_star"}

# Refused aggregates and functions, each with the sentence a researcher sees.
_SINGLE_VALUE = "returns a single record's value; real data answers only aggregates"
REFUSED_NODES: dict[type[exp.Expr], tuple[str, str]] = {
    exp.Min: ("MIN", _SINGLE_VALUE),
    exp.Max: ("MAX", _SINGLE_VALUE),
    exp.ArgMax: ("ARG_MAX", _SINGLE_VALUE),
    exp.ArgMin: ("ARG_MIN", _SINGLE_VALUE),
    exp.First: ("FIRST", _SINGLE_VALUE),
    exp.Last: ("LAST", _SINGLE_VALUE),
    exp.AnyValue: ("ANY_VALUE", _SINGLE_VALUE),
    exp.Median: ("MEDIAN", "exact quantiles are a record's value; use AVG or a synthetic version"),
    exp.Quantile: ("QUANTILE", "exact quantiles are a record's value"),
    exp.PercentileCont: ("QUANTILE_CONT", "exact quantiles are a record's value"),
    exp.PercentileDisc: ("QUANTILE_DISC", "exact quantiles are a record's value"),
    exp.ApproxQuantile: ("APPROX_QUANTILE", "quantiles are close to a record's value"),
    exp.Mode: ("MODE", _SINGLE_VALUE),
    exp.ArrayAgg: ("ARRAY_AGG/LIST", "returns the records themselves"),
    exp.GroupConcat: ("STRING_AGG", "returns the records themselves"),
    exp.Window: ("window function", "window functions return one value per record"),
    exp.Filter: ("FILTER clause", "use CASE WHEN inside the aggregate instead"),
    exp.WithinGroup: ("WITHIN GROUP", "ordered-set aggregates (quantiles) are refused"),
    exp.Subquery: ("subquery", "subqueries are not supported on real data; use joins"),
    exp.Exists: ("EXISTS subquery", "subqueries are not supported on real data; use joins"),
    exp.Placeholder: ("parameter", "write values into the query; parameters are not supported"),
    exp.Star: ("SELECT *", "name aggregates and group keys; rows are never returned"),
    exp.Columns: ("COLUMNS(...)", "name aggregates and group keys explicitly"),
    exp.ReadCSV: ("read_csv", "table functions and file readers are refused"),
    exp.ReadParquet: ("read_parquet", "table functions and file readers are refused"),
    exp.Lambda: ("lambda", "lambdas are not supported"),
}

_ARITHMETIC = (
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.IntDiv,
    exp.Mod,
    exp.Pow,
    exp.Neg,
    exp.Paren,
)
NUMBER_FUNCTIONS = (
    exp.Round,
    exp.Abs,
    exp.Ln,
    exp.Log,
    exp.Exp,
    exp.Sqrt,
    exp.Floor,
    exp.Ceil,
    exp.Trunc,
)
"""The allowed functions that take a number (``typecheck`` refuses them over text)."""
_FUNCTIONS = (
    *NUMBER_FUNCTIONS,
    exp.Lower,
    exp.Upper,
    exp.Cast,
    exp.TryCast,
    exp.DataType,
    exp.Coalesce,
    exp.Extract,
    exp.Var,
    exp.DPipe,
    exp.Least,
    exp.Greatest,
)
COMPARISONS = (
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.NullSafeEQ,
    exp.NullSafeNEQ,
)
"""The allowed comparisons (``typecheck`` refuses text compared with a number)."""
_PREDICATES = (
    *COMPARISONS,
    exp.And,
    exp.Or,
    exp.Not,
    exp.In,
    exp.Between,
    exp.Is,
    exp.Like,
    exp.ILike,
)
_LEAVES = (exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null)
_CONDITIONALS = (exp.Case, exp.If)
SCALAR_NODES = _ARITHMETIC + _FUNCTIONS + _PREDICATES + _LEAVES + _CONDITIONALS
ANONYMOUS_ALLOWED = {"date_part", "datepart", "clamp"}
_TABLE_FUNCTIONS = {
    "read_csv",
    "read_csv_auto",
    "read_parquet",
    "parquet_scan",
    "read_json",
    "read_json_auto",
    "read_text",
    "read_blob",
    "glob",
    "read_ndjson",
    "range",
    "generate_series",
    "sniff_csv",
    "parquet_metadata",
    "parquet_schema",
}
_SYSTEM_PREFIXES = ("duckdb_", "pg_", "pragma_", "sqlite_", "information_schema")
_SYSTEM_FUNCTIONS = {
    "getenv",
    "current_setting",
    "current_database",
    "current_schema",
    "version",
    "query",
    "query_table",
    "which_secret",
    "sql_auto_complete",
}

_SELECT_ARGS = {
    "kind",
    "hint",
    "expressions",
    "limit",
    "offset",
    "from_",
    "joins",
    "where",
    "group",
    "order",
    "operation_modifiers",
    "exclude",
    "distinct",
}
_STATEMENTS: dict[type[exp.Expr], str] = {
    exp.Copy: "COPY",
    exp.Attach: "ATTACH",
    exp.Detach: "DETACH",
    exp.Install: "INSTALL",
    exp.Pragma: "PRAGMA",
    exp.Set: "SET",
    exp.Create: "CREATE",
    exp.Insert: "INSERT",
    exp.Update: "UPDATE",
    exp.Delete: "DELETE",
    exp.Drop: "DROP",
    exp.Union: "UNION",
    exp.Intersect: "INTERSECT",
    exp.Except: "EXCEPT",
    exp.Describe: "DESCRIBE",
    exp.Use: "USE",
}


@dataclass(frozen=True)
class Selector:
    """A ``CASE``/``IF`` or a predicate inside an aggregate: each branch must hold 0 or ≥ k
    records of the cell, else the aggregate singles out a few records."""

    branches: tuple[exp.Expr, ...]  # the condition under which each branch is taken
    text: str


@dataclass(frozen=True)
class Aggregate:
    """One allowed aggregate in an output column."""

    func: str  # count_star, count, sum, avg, var_samp, var_pop, stddev_samp, stddev_pop
    arg: exp.Expr | None
    selectors: tuple[Selector, ...]
    node: exp.Expr  # the node in the checked tree (identity used by the rewrite)


@dataclass(frozen=True)
class Output:
    """One output column: a group key (``key`` set) or an expression over aggregates."""

    name: str
    expr: exp.Expr
    key: int | None
    aggregates: tuple[Aggregate, ...] = ()

    @property
    def is_count(self) -> bool:
        return any(a.func in COUNTS for a in self.aggregates)


@dataclass(frozen=True)
class CheckedQuery:
    """A query that passed ``check_query``: the parts the rewrite and disclosure need."""

    sql: str
    tree: exp.Select
    tables: tuple[tuple[str, str], ...]  # (alias, view) in FROM order
    keys: tuple[exp.Expr, ...]
    outputs: tuple[Output, ...]
    conjuncts: tuple[exp.Expr, ...]
    order: tuple[tuple[int, bool], ...] = ()  # (output index, descending)
    limit: int | None = None
    aggregates: tuple[Aggregate, ...] = field(default=())

    @cached_property
    def hash(self) -> str:
        """SHA-256 of the canonical text of the checked query (comments and case removed);
        computed once (the tree is never changed after checking)."""
        return hashlib.sha256(self.tree.sql(dialect="duckdb").encode()).hexdigest()


def _reject(construct: str, reason: str) -> QueryRejected:
    return QueryRejected(reason, construct)


def check_query(
    sql: str,
    views: Iterable[str],
    identifiers: Mapping[str, Iterable[str]] | None = None,
) -> CheckedQuery:
    """Parse ``sql`` and check it against the allow-list; raise :class:`QueryRejected`.

    ``views`` are the table names this agreement exposes; ``identifiers`` maps a view to its
    pseudonymous identifier columns, which may appear only in join conditions."""
    views = {v.lower() for v in views}
    try:
        statements = [s for s in sqlglot.parse(sql, read="duckdb") if s is not None]
    except ParseError as error:
        first = error.errors[0]["description"] if error.errors else str(error)
        raise _reject("syntax", f"the query does not parse as DuckDB SQL ({first})") from None
    if len(statements) != 1:
        raise _reject("multiple statements", f"send exactly one statement, not {len(statements)}")
    (tree,) = statements
    if not isinstance(tree, exp.Select):
        for cls, name in _STATEMENTS.items():
            if isinstance(tree, cls):
                raise _reject(name, "only a single SELECT is answered")
        word = tree.name.upper() if isinstance(tree, exp.Command) else type(tree).__name__
        raise _reject(word or "statement", "only a single SELECT is answered")
    return _Checker(tree, views, identifiers or {}).check(sql)


class _Checker:
    def __init__(
        self, tree: exp.Select, views: set[str], identifiers: Mapping[str, Iterable[str]]
    ) -> None:
        self.tree = tree
        self.views = views
        self.identifier_map = {k.lower(): {c.lower() for c in v} for k, v in identifiers.items()}
        self.aliases: dict[str, str] = {}
        self.identifiers: set[str] = set()

    # -- structure -------------------------------------------------------------------------

    def check(self, sql: str) -> CheckedQuery:
        tree = self.tree
        for key, value in tree.args.items():
            if value in (None, False, []) or key in ("kind", "hint", "operation_modifiers"):
                continue
            if key == "with_":
                raise _reject("CTE (WITH)", "CTEs are not supported on real data; use joins")
            if key == "distinct":
                raise _reject("SELECT DISTINCT", "DISTINCT returns values; use GROUP BY")
            if key not in _SELECT_ARGS:
                raise _reject(key.rstrip("_").upper(), "this clause is not supported")
        if tree.args.get("kind") or tree.args.get("hint") or tree.args.get("exclude"):
            raise _reject("SELECT modifier", "this clause is not supported")
        tables = self._tables()
        conjuncts = self._where()
        keys = self._keys()
        outputs = self._outputs(keys)
        if not any(o.aggregates for o in outputs):
            raise _reject(
                "no aggregate",
                "real data answers only aggregates: add COUNT(*), SUM, AVG, STDDEV or VARIANCE",
            )
        order = self._order(outputs)
        limit = self._limit()
        aggregates = tuple(a for o in outputs for a in o.aggregates)
        return CheckedQuery(sql, tree, tables, keys, outputs, conjuncts, order, limit, aggregates)

    def _tables(self) -> tuple[tuple[str, str], ...]:
        from_ = self.tree.args.get("from_")
        if from_ is None:
            raise _reject("SELECT without FROM", "query one of the agreement's views")
        found = [self._table(from_.this)]
        joins = self.tree.args.get("joins") or []
        for join in joins:
            found.append(self._table(join.this))
        for alias, _view in found:
            if alias in self.aliases:
                raise _reject(f"table alias `{alias}`", "each table needs its own alias")
            self.aliases[alias] = _view
        for _alias, view in found:
            self.identifiers |= self.identifier_map.get(view, set())
        for join in joins:
            self._join(join)
        return tuple(found)

    def _table(self, node: exp.Expr) -> tuple[str, str]:
        if isinstance(node, exp.Subquery):
            raise _reject("subquery", "subqueries are not supported on real data; use joins")
        if not isinstance(node, exp.Table):
            raise _reject(type(node).__name__, "FROM must name one of the agreement's views")
        inner = node.this
        if isinstance(inner, exp.Func):
            name = inner.sql_name().lower() if not isinstance(inner, exp.Anonymous) else inner.name
            raise _reject(
                f"table function `{name.lower()}`",
                "table functions and file readers are refused; query the agreement's views",
            )
        if not isinstance(inner, exp.Identifier):
            raise _reject(type(inner).__name__, "FROM must name one of the agreement's views")
        if node.args.get("db") or node.args.get("catalog"):
            qualified = node.sql(dialect="duckdb")
            raise _reject(
                f"qualified name `{qualified}`",
                "schema-qualified names and system catalogs are refused; name a view",
            )
        for key, value in node.args.items():
            if value not in (None, False, []) and key not in ("this", "alias"):
                raise _reject(f"table {key}", "only a plain view name and alias are allowed")
        name = inner.name.lower()
        if name not in self.views:
            what = "system catalog" if name.startswith(_SYSTEM_PREFIXES) else "table"
            known = ", ".join(sorted(self.views))
            raise _reject(
                f"{what} `{inner.name}`",
                f"not a view of this agreement (its tables: {known})",
            )
        alias_node = node.args.get("alias")
        if alias_node is not None and alias_node.args.get("columns"):
            raise _reject("column aliases", "rename columns in the SELECT list instead")
        alias = alias_node.name.lower() if alias_node is not None else name
        return alias, name

    def _join(self, join: exp.Join) -> None:
        method = (join.args.get("method") or "").upper()
        kind = (join.args.get("kind") or "").upper()
        side = (join.args.get("side") or "").upper()
        if method:
            raise _reject(f"{method} JOIN", "only INNER and LEFT joins on equal keys")
        if kind == "CROSS":
            raise _reject("CROSS JOIN", "cross joins multiply records; join on equal keys")
        if kind not in ("", "INNER") or side not in ("", "LEFT"):
            raise _reject(f"{side or kind} JOIN", "only INNER and LEFT joins on equal keys")
        for key, value in join.args.items():
            if value not in (None, False, []) and key not in (
                "this",
                "on",
                "using",
                "kind",
                "side",
            ):
                raise _reject(f"join {key}", "only plain joins on equal keys are allowed")
        on, using = join.args.get("on"), join.args.get("using")
        if using:
            for ident in using:
                if not isinstance(ident, exp.Identifier):
                    raise _reject("USING", "USING takes column names")
                self._column_name(ident.name)
            return
        if on is None:
            raise _reject("join without ON", "an implicit (comma) join is a cross join; use ON")
        for part in _conjuncts(on):
            if not (
                isinstance(part, exp.EQ)
                and isinstance(part.this, exp.Column)
                and isinstance(part.expression, exp.Column)
            ):
                raise _reject(
                    f"join condition `{part.sql(dialect='duckdb')}`",
                    "joins must be equalities between columns (a.key = b.key)",
                )
            for column in (part.this, part.expression):
                self._column(column, allow_identifier=True)

    def _where(self) -> tuple[exp.Expr, ...]:
        where = self.tree.args.get("where")
        if where is None:
            return ()
        self._scalar(where.this, "WHERE")
        return tuple(_conjuncts(where.this))

    def _keys(self) -> tuple[exp.Expr, ...]:
        group = self.tree.args.get("group")
        selects = self.tree.expressions
        if group is None:
            return ()
        for key, value in group.args.items():
            if value not in (None, False, []) and key not in ("expressions", "all"):
                raise _reject(
                    f"GROUP BY {key.upper()}",
                    "ROLLUP, CUBE and GROUPING SETS are not supported; ask for each grouping",
                )
        if group.args.get("all"):
            keys = []
            for select in selects:
                inner = select.this if isinstance(select, exp.Alias) else select
                if not _has_aggregate(inner):
                    keys.append(inner)
        else:
            aliases = {s.alias.lower(): s.this for s in selects if isinstance(s, exp.Alias)}
            keys = []
            for node in group.expressions:
                if isinstance(node, exp.Literal) and not node.is_string:
                    if not node.this.isdigit():
                        raise _reject(f"GROUP BY {node.this}", "a position is a whole number")
                    position = int(node.this)
                    if not 1 <= position <= len(selects):
                        raise _reject(f"GROUP BY {position}", "no such output column")
                    chosen = selects[position - 1]
                    node = chosen.this if isinstance(chosen, exp.Alias) else chosen
                elif (
                    isinstance(node, exp.Column) and not node.table and node.name.lower() in aliases
                ):
                    node = aliases[node.name.lower()]
                keys.append(node)
        for node in keys:
            if _has_aggregate(node):
                raise _reject("aggregate in GROUP BY", "group by columns, not aggregates")
            self._scalar(node, "GROUP BY")
        return tuple(keys)

    def _outputs(self, keys: tuple[exp.Expr, ...]) -> tuple[Output, ...]:
        outputs = []
        names: set[str] = set()
        for position, select in enumerate(self.tree.expressions):
            inner = select.this if isinstance(select, exp.Alias) else select
            if isinstance(select, exp.Alias):
                name = select.alias
            elif isinstance(inner, exp.Column):
                name = inner.name
            else:
                name = inner.sql(dialect="duckdb")
            if name.lower() in names:
                name = f"{name}_{position + 1}"
            names.add(name.lower())
            key = next((i for i, k in enumerate(keys) if k == inner), None)
            if key is not None:
                outputs.append(Output(name, inner, key))
                continue
            aggregates: list[Aggregate] = []
            self._output_expr(inner, aggregates)
            outputs.append(Output(name, inner, None, tuple(aggregates)))
        return tuple(outputs)

    def _output_expr(self, node: exp.Expr, found: list[Aggregate]) -> None:
        self._refused(node)
        for cls, func in AGGREGATES.items():
            if type(node) is cls:
                found.append(self._aggregate(node, func))
                return
        if isinstance(node, exp.Anonymous) and node.name.lower() == "mean":
            raise _reject("MEAN", "write AVG(...)")
        if isinstance(node, exp.Column):
            raise _reject(
                f"non-aggregated column `{node.sql(dialect='duckdb')}`",
                "every output must be an aggregate or a GROUP BY key",
            )
        if not isinstance(node, _ARITHMETIC + _FUNCTIONS + (exp.Literal, exp.Null)):
            self._unknown(node)
        for child in node.iter_expressions():
            self._output_expr(child, found)

    def _aggregate(self, node: exp.Expr, func: str) -> Aggregate:
        arg = node.this
        if func == "count" and (arg is None or isinstance(arg, exp.Star)):
            return Aggregate("count_star", None, (), node)
        if isinstance(arg, exp.Distinct):
            raise _reject(
                f"{func.upper()}(DISTINCT ...)",
                "distinct aggregates are not supported yet; count rows of the table keyed "
                "by the entity instead",
            )
        # `big_int` is how sqlglot marks DuckDB's COUNT (it returns BIGINT), not an argument.
        extra = [
            c
            for k, c in node.args.items()
            if k not in ("this", "big_int") and c not in (None, False, [])
        ]
        if arg is None or extra:
            raise _reject(f"{func.upper()} arguments", "aggregates take one expression")
        if _has_aggregate(arg):
            raise _reject("nested aggregate", "aggregates cannot contain aggregates")
        self._scalar(arg, func.upper())
        selectors: list[Selector] = []
        _selectors(arg, selectors)
        return Aggregate(func, arg, tuple(selectors), node)

    # -- scalar expressions ----------------------------------------------------------------

    def _scalar(self, node: exp.Expr, where: str) -> None:
        self._refused(node)
        if isinstance(node, exp.Column):
            self._column(node)
            return
        if _is_aggregate(node):
            raise _reject(f"aggregate in {where}", "aggregates belong in the SELECT list")
        if isinstance(node, exp.In) and (node.args.get("query") or node.args.get("unnest")):
            raise _reject("IN (subquery)", "subqueries are not supported on real data")
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            if name not in ANONYMOUS_ALLOWED:
                self._unknown(node)
            first = node.expressions[0] if node.expressions else None
            if name != "clamp" and not (isinstance(first, exp.Literal) and first.is_string):
                raise _reject(f"{name}", "the date part must be a quoted literal")
        elif not isinstance(node, SCALAR_NODES):
            self._unknown(node)
        for child in node.iter_expressions():
            self._scalar(child, where)

    def _column(self, node: exp.Column, allow_identifier: bool = False) -> None:
        if not isinstance(node.this, exp.Identifier):
            self._refused(node.this)
            raise _reject(node.sql(dialect="duckdb"), "name a column")
        if node.args.get("db") or node.args.get("catalog"):
            raise _reject(f"qualified column `{node.sql(dialect='duckdb')}`", "use alias.column")
        table = node.table.lower() if node.table else None
        if table is not None and table not in self.aliases:
            raise _reject(f"table `{node.table}`", "not a table of this query")
        name = node.name.lower()
        self._column_name(name)
        if not allow_identifier:
            owners = [table] if table else list(self.aliases)
            for alias in owners:
                if name in self.identifier_map.get(self.aliases[alias], set()):
                    raise _reject(
                        f"identifier column `{node.name}`",
                        "pseudonymous identifiers may be used only in join conditions; "
                        "grouping, filtering or computing on them singles out records",
                    )

    @staticmethod
    def _column_name(name: str) -> None:
        if name.startswith("__") or name in ("rowid", "filename", "file_row_number"):
            raise _reject(f"column `{name}`", "internal columns are not queryable")

    @staticmethod
    def _refused(node: exp.Expr) -> None:
        for cls, (construct, reason) in REFUSED_NODES.items():
            if isinstance(node, cls):
                raise _reject(construct, reason)
        if isinstance(node, exp.IgnoreNulls | exp.RespectNulls):
            _Checker._refused(node.this)

    @staticmethod
    def _unknown(node: exp.Expr) -> None:
        if isinstance(node, exp.Func):
            name = (node.name if isinstance(node, exp.Anonymous) else node.sql_name()).lower()
            if name in _TABLE_FUNCTIONS:
                raise _reject(f"`{name}`", "table functions and file readers are refused")
            if name in _SYSTEM_FUNCTIONS or name.startswith(_SYSTEM_PREFIXES):
                raise _reject(f"`{name}`", "system functions and catalogs are refused")
            if isinstance(node, exp.AggFunc):
                raise _reject(
                    f"aggregate `{name}`",
                    "allowed aggregates are COUNT, SUM, AVG, STDDEV and VARIANCE",
                )
            raise _reject(f"function `{name}`", "not on the gateway's allow-list of functions")
        raise _reject(type(node).__name__, "this construct is not on the gateway's allow-list")

    def _order(self, outputs: tuple[Output, ...]) -> tuple[tuple[int, bool], ...]:
        order = self.tree.args.get("order")
        if order is None:
            return ()
        names = {o.name.lower(): i for i, o in enumerate(outputs)}
        found = []
        for ordered in order.expressions:
            node = ordered.this
            if isinstance(node, exp.Literal) and not node.is_string:
                if not node.this.isdigit():
                    raise _reject(f"ORDER BY {node.this}", "a position is a whole number")
                index = int(node.this) - 1
                if not 0 <= index < len(outputs):
                    raise _reject(f"ORDER BY {node.this}", "no such output column")
            elif isinstance(node, exp.Column) and not node.table and node.name.lower() in names:
                index = names[node.name.lower()]
            else:
                raise _reject(
                    f"ORDER BY `{node.sql(dialect='duckdb')}`",
                    "ORDER BY may name only output columns (by name or position)",
                )
            found.append((index, bool(ordered.args.get("desc"))))
        return tuple(found)

    def _limit(self) -> int | None:
        if self.tree.args.get("offset") is not None:
            raise _reject("OFFSET", "OFFSET is not supported")
        limit = self.tree.args.get("limit")
        if limit is None:
            return None
        value = limit.args.get("expression")
        if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
            raise _reject("LIMIT", "LIMIT takes a whole number")
        return int(value.this)


def _conjuncts(node: exp.Expr) -> list[exp.Expr]:
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    return [node]


def _is_aggregate(node: exp.Expr) -> bool:
    return isinstance(node, exp.AggFunc | exp.Window) or type(node) in AGGREGATES


def _has_aggregate(node: exp.Expr) -> bool:
    return any(_is_aggregate(n) for n in node.walk())


def _selectors(node: exp.Expr, found: list[Selector]) -> None:
    """Collect the conditionals and predicates inside an aggregate's argument."""
    if isinstance(node, exp.Case):
        operand = node.args.get("this")
        branches: list[exp.Expr] = []
        taken_before: list[exp.Expr] = []
        for when in node.args.get("ifs") or []:
            condition = when.this
            if operand is not None:
                condition = exp.EQ(this=operand.copy(), expression=condition.copy())
            is_true = exp.Is(this=exp.paren(condition.copy()), expression=exp.true())
            branches.append(exp.and_(*taken_before, is_true) if taken_before else is_true)
            taken_before.append(exp.Not(this=is_true.copy()))
        branches.append(exp.and_(*taken_before))
        found.append(Selector(tuple(branches), node.sql(dialect="duckdb")))
        if operand is not None:
            _selectors(operand, found)
        for when in node.args.get("ifs") or []:
            _selectors(when.args["true"], found)
        if node.args.get("default") is not None:
            _selectors(node.args["default"], found)
        return
    if isinstance(node, exp.If):
        is_true = exp.Is(this=exp.paren(node.this.copy()), expression=exp.true())
        found.append(Selector((is_true, exp.Not(this=is_true.copy())), node.sql("duckdb")))
        for key in ("true", "false"):
            if node.args.get(key) is not None:
                _selectors(node.args[key], found)
        return
    if isinstance(node, _PREDICATES):
        is_true = exp.Is(this=exp.paren(node.copy()), expression=exp.true())
        found.append(Selector((is_true, exp.Not(this=is_true.copy())), node.sql("duckdb")))
        return
    for child in node.iter_expressions():
        _selectors(child, found)


# -- rewrite -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rewritten:
    """The statement the gateway runs and the names of what it returns."""

    sql: str
    keys: tuple[str, ...]  # __k0 ...
    outputs: tuple[str | None, ...]  # per output: __oX, or None for a key output
    tables: int


_PARTIALS = {
    "count": ("c",),
    "sum": ("s", "c", "m"),
    "avg": ("s", "c"),
    "var_samp": ("s", "c", "q"),
    "var_pop": ("s", "c", "q"),
    "stddev_samp": ("s", "c", "q"),
    "stddev_pop": ("s", "c", "q"),
}
# Partials a CASE/IF with constant outcomes yields from its branch counts alone.
_FOLDABLE = {"count", "sum", "avg"}


def _q(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _is_true(condition: exp.Expr) -> exp.Expr:
    return exp.Is(this=exp.paren(condition.copy()), expression=exp.true())


def _filtered(agg: exp.Expr, condition: exp.Expr | None) -> exp.Expr:
    if condition is None:
        return agg
    return exp.Filter(this=agg, expression=exp.Where(this=condition.copy()))


def _count_if(*conditions: exp.Expr) -> exp.Expr:
    """Records meeting every condition (each never NULL): ``COUNT_IF`` costs less than a
    filtered ``COUNT(*)``, and identical ones are computed once."""
    if not conditions:
        return exp.Count(this=exp.Star(), big_int=True)
    return exp.CountIf(this=exp.and_(*[c.copy() for c in conditions]))


def _patients_if(pid: exp.Expr, *conditions: exp.Expr) -> exp.Expr:
    """Distinct patients with a record meeting every condition (each never NULL)."""
    count = exp.Count(this=exp.Distinct(expressions=[pid.copy()]), big_int=True)
    return _filtered(count, exp.and_(*[c.copy() for c in conditions]) if conditions else None)


def _not_null(node: exp.Expr) -> exp.Expr:
    return exp.Not(this=exp.Is(this=exp.paren(node.copy()), expression=exp.Null()))


def _total(terms: list[exp.Expr]) -> exp.Expr:
    total = terms[0].copy()
    for term in terms[1:]:
        total = exp.Add(this=total, expression=term.copy())
    return total


def _constant(node: exp.Expr | None) -> float | None | bool:
    """A numeric literal's value, None for NULL, False for anything else."""
    if node is None or isinstance(node, exp.Null):
        return None
    negative = isinstance(node, exp.Neg)
    inner = node.this if negative else node
    if isinstance(inner, exp.Literal) and not inner.is_string:
        try:
            value = float(inner.this)
        except ValueError:
            return False
        return -value if negative else value
    return False


def _outcomes(arg: exp.Expr) -> list[exp.Expr | None] | None:
    """The constant outcomes of a ``CASE``/``IF`` argument in branch order, else None."""
    if isinstance(arg, exp.Case):
        found = [when.args.get("true") for when in arg.args.get("ifs") or []]
        found.append(arg.args.get("default"))
    elif isinstance(arg, exp.If):
        found = [arg.args.get("true"), arg.args.get("false")]
    else:
        return None
    if any(_constant(v) is False for v in found):
        return None
    return [None if _constant(v) is None else v for v in found]


class _Inner:
    """The pre-aggregation's columns: each distinct expression is computed once and every
    name asking for it is mapped to the first one."""

    def __init__(self) -> None:
        self.columns: list[exp.Expr] = []
        self._by_sql: dict[str, str] = {}
        self._names: dict[str, str] = {}

    def add(self, name: str, node: exp.Expr) -> None:
        physical = self._by_sql.setdefault(node.sql(dialect="duckdb"), name)
        if physical == name:
            self.columns.append(exp.alias_(node, _q(name)))
        self._names[name] = physical

    def ref(self, name: str) -> str:
        return f'"{self._names.get(name, name)}"'


def _branch_counts(
    inner: _Inner,
    prefix: str,
    selector: Selector,
    where: list[exp.Expr],
    n: exp.Expr,
    pid: exp.Expr,
) -> list[exp.Expr]:
    """Records per branch (the branches part the cell, so the last is the rest), and the
    distinct patients taking each branch (``{prefix}_p{b}``)."""
    counts = [_count_if(*where, branch) for branch in selector.branches[:-1]]
    counts.append(exp.Sub(this=n.copy(), expression=exp.paren(_total(counts))) if counts else n)
    for b, count in enumerate(counts):
        inner.add(f"{prefix}_{b}", count.copy())
    for b, branch in enumerate(selector.branches):
        inner.add(f"{prefix}_p{b}", _patients_if(pid, *where, branch))
    return counts


def _aggregate_partials(
    inner: _Inner, j: int, agg: Aggregate, where: list[exp.Expr], n: exp.Expr, pid: exp.Expr
) -> None:
    assert agg.arg is not None
    condition = exp.and_(*[c.copy() for c in where]) if where else None
    outcomes = _outcomes(agg.arg) if agg.func in _FOLDABLE else None
    inner.add(f"__a{j}_p", _patients_if(pid, *where, _not_null(agg.arg)))
    for s, selector in enumerate(agg.selectors):
        counts = _branch_counts(inner, f"__s{j}_{s}", selector, where, n, pid)
        if s == 0 and outcomes is not None:
            # SUM(CASE WHEN c THEN 1 ELSE 0 END) = 1 × records taking the first branch …
            taken = [cnt for cnt, v in zip(counts, outcomes, strict=True) if v is not None]
            count = (
                n.copy() if len(taken) == len(counts) else _total(taken or [exp.Literal.number(0)])
            )
            scaled = [
                (exp.Mul(this=v.copy(), expression=cnt.copy()), exp.Abs(this=v.copy()), cnt)
                for cnt, v in zip(counts, outcomes, strict=True)
                if v is not None and _constant(v) != 0
            ]
            some = exp.GT(this=count.copy(), expression=exp.Literal.number(0))
            plain = _total([p for p, _a, _c in scaled] or [exp.Literal.number(0)])
            absolute = _total(
                [exp.Mul(this=a, expression=c.copy()) for _p, a, c in scaled]
                or [exp.Literal.number(0)]
            )
            partial = {
                "c": count,
                "s": exp.Case(ifs=[exp.If(this=some, true=plain)]),
                "m": exp.Case(ifs=[exp.If(this=some.copy(), true=absolute)]),
            }
            for kind in _PARTIALS[agg.func]:
                inner.add(f"__a{j}_{kind}", partial[kind])
    if outcomes is not None and agg.selectors:
        return
    arg = agg.arg
    count = _filtered(exp.Count(this=arg.copy(), big_int=True), condition)
    for kind in _PARTIALS[agg.func]:
        if kind == "c":
            node = count.copy()
        elif kind == "s":
            node = _filtered(exp.Sum(this=arg.copy()), condition)
        elif kind == "m":
            node = _filtered(exp.Sum(this=exp.Abs(this=arg.copy())), condition)
        else:  # M2 = sum of squared deviations, combined across institutions by Chan's formula
            as_double = exp.Cast(this=arg.copy(), to=exp.DataType.build("DOUBLE"))
            node = exp.Coalesce(
                this=exp.Mul(
                    this=_filtered(exp.VariancePop(this=as_double), condition),
                    expression=count.copy(),
                ),
                expressions=[exp.Literal.number(0)],
            )
        inner.add(f"__a{j}_{kind}", node)


def _combined(func: str, j: int, rounding_base: int, ref: Callable[[str], str]) -> str:
    s, c, q = ref(f"__a{j}_s"), ref(f"__a{j}_c"), ref(f"__a{j}_q")
    if func in COUNTS:
        total = f"SUM({ref('__n')})" if func == "count_star" else f"SUM({c})"
        if rounding_base > 1:
            return f"CAST(ROUND({total} / {rounding_base}) * {rounding_base} AS BIGINT)"
        return f"CAST({total} AS BIGINT)"
    if func == "sum":
        return f"SUM({s})"
    if func == "avg":
        return f"(SUM({s}) / NULLIF(SUM({c}), 0))"
    m2 = (
        f"GREATEST(SUM({q}) + SUM(CAST({s} AS DOUBLE) * {s} / NULLIF({c}, 0)) "
        f"- CAST(SUM({s}) AS DOUBLE) * SUM({s}) / NULLIF(SUM({c}), 0), 0)"
    )
    divisor = f"NULLIF(SUM({c}), 0)" if func.endswith("pop") else f"NULLIF(SUM({c}) - 1, 0)"
    variance = f"({m2} / {divisor})"
    return f"SQRT{variance}" if func.startswith("stddev") else variance


def _contribution(func: str, j: int, ref: Callable[[str], str]) -> str:
    if func == "count_star":
        return ref("__n")
    if func == "sum":
        return ref(f"__a{j}_m")
    return ref(f"__a{j}_c")


def _aggregate_nodes(node: exp.Expr) -> list[exp.Expr]:
    """Aggregates of an output expression in the order ``_Checker._output_expr`` found them."""
    if type(node) in AGGREGATES:
        return [node]
    found: list[exp.Expr] = []
    for child in node.iter_expressions():
        found.extend(_aggregate_nodes(child))
    return found


SPREAD = {"sum", "avg", "var_samp", "var_pop", "stddev_samp", "stddev_pop"}


def _rows_select(checked: CheckedQuery, columns: list[exp.Expr]) -> str:
    """``SELECT columns`` over the checked query's FROM, joins and WHERE (every row the
    query reads, keys named ``__k0``…, the first table's patient as ``__pid``)."""
    alias = _q(checked.tables[0][0])
    found = [exp.alias_(key.copy(), _q(f"__k{i}")) for i, key in enumerate(checked.keys)]
    found.append(exp.alias_(exp.column("__pid", table=alias), _q("__pid")))
    select = exp.Select(expressions=found + columns)
    select.set("from_", checked.tree.args["from_"].copy())
    if checked.tree.args.get("joins"):
        select.set("joins", [j.copy() for j in checked.tree.args["joins"]])
    if checked.conjuncts:
        select = select.where(
            _is_true(exp.and_(*[c.copy() for c in checked.conjuncts])), copy=False
        )
    return select.sql(dialect="duckdb")


def spread_sql(checked: CheckedQuery) -> str | None:
    """For the exact path's ``spread`` rule: per group, for each SUM, AVG, variance or
    standard deviation, the distinct patients whose value differs from the group's most
    common value (``__d{j}``). When all but a few patients share one value (an indicator
    times a weight, a constant offset), the aggregate is a function of those few patients'
    values. None when the query has no such aggregate."""
    picked = [j for j, a in enumerate(checked.aggregates) if a.arg is not None and a.func in SPREAD]
    if not picked:
        return None
    values = [
        exp.alias_(arg.copy(), _q(f"__x{j}"))
        for j in picked
        if (arg := checked.aggregates[j].arg) is not None
    ]
    rows = _rows_select(checked, values)
    keys = [f'"__k{i}"' for i in range(len(checked.keys))]
    modes = ", ".join(f'mode("__x{j}") AS "__m{j}"' for j in picked)
    group = f" GROUP BY {', '.join(keys)}" if keys else ""
    on = " AND ".join(f'"__r".{k} IS NOT DISTINCT FROM "__g".{k}' for k in keys) or "TRUE"
    counts = ", ".join(
        f'COUNT(DISTINCT "__r"."__pid") FILTER (WHERE "__r"."__x{j}" IS NOT NULL AND '
        f'"__r"."__x{j}" IS DISTINCT FROM "__g"."__m{j}") AS "__d{j}"'
        for j in picked
    )
    shown = ", ".join(f'"__r".{k}' for k in keys)
    rgroup = f" GROUP BY {shown}" if keys else ""
    # Only the rewrite's own names and SQL printed from the checked tree.
    return (
        f'WITH "__r" AS ({rows}), "__g" AS (SELECT {", ".join([*keys, modes])} '  # noqa: S608
        f'FROM "__r"{group}) SELECT {shown + ", " if keys else ""}{counts} '
        f'FROM "__r" JOIN "__g" ON {on}{rgroup}'
    )


def patients_sql(checked: CheckedQuery) -> str:
    """For reviewed release's evidence (never for an answer): per group of ``checked``, the
    distinct patients (``__pid`` of the first table) and institutions behind it, as lists,
    keys named ``__k0``… like :func:`rewrite`'s."""
    alias = _q(checked.tables[0][0])
    rows = _rows_select(checked, [exp.alias_(exp.column(_q(INSTITUTION), table=alias), _q("__i"))])
    keys = ", ".join(f'"__k{i}"' for i in range(len(checked.keys)))
    group = f" GROUP BY {keys}" if keys else ""
    # Only the rewrite's own names and SQL printed from the checked tree.
    return (
        f"SELECT {keys + ', ' if keys else ''}"  # noqa: S608
        'list(DISTINCT "__pid") AS "__pids", list(DISTINCT "__i") AS "__insts" '
        f'FROM ({rows}) AS "__r"{group}'
    )


def rewrite(checked: CheckedQuery, dominance_n: int = 2, rounding_base: int = 1) -> Rewritten:
    """One statement: pre-aggregate by keys and institutions, combine per group, attach the
    disclosure columns (see the module docstring and docs/gateway.md)."""
    nk, nt = len(checked.keys), len(checked.tables)
    conjuncts = checked.conjuncts
    where = [_is_true(exp.and_(*[c.copy() for c in conjuncts]))] if conjuncts else []

    keys = [exp.alias_(key.copy(), _q(f"__k{i}")) for i, key in enumerate(checked.keys)]
    keys += [
        exp.alias_(exp.column(_q(INSTITUTION), table=_q(alias)), _q(f"__i{t}"))
        for t, (alias, _view) in enumerate(checked.tables)
    ]
    inner = _Inner()
    n = _count_if(*where)
    inner.add("__n", n)
    pid = exp.column("__pid", table=_q(checked.tables[0][0]))
    inner.add("__np", _patients_if(pid, *where))
    for j, agg in enumerate(checked.aggregates):
        if agg.arg is not None:
            _aggregate_partials(inner, j, agg, where, n, pid)
    for i in range(len(conjuncts)):
        others = [c.copy() for k, c in enumerate(conjuncts) if k != i]
        kept = [_is_true(exp.and_(*others))] if others else []
        removed = exp.Not(this=_is_true(conjuncts[i]))
        inner.add(f"__w{i}", _count_if(*kept, removed))
        inner.add(f"__wp{i}", _patients_if(pid, *kept, removed))
    select = exp.Select(expressions=keys + inner.columns)
    select.set("from_", checked.tree.args["from_"].copy())
    if checked.tree.args.get("joins"):
        select.set("joins", [j.copy() for j in checked.tree.args["joins"]])
    if len(conjuncts) >= 2:
        # Keep the rows every conjunct but one accepts: enough to count what each removes.
        select = select.where(
            exp.or_(
                *[
                    exp.and_(*[c.copy() for k, c in enumerate(conjuncts) if k != i])
                    for i in range(len(conjuncts))
                ]
            ),
            copy=False,
        )
    select = (
        select.group_by(*[exp.Literal.number(p + 1) for p in range(nk + nt)], copy=False)
        if nk + nt
        else select
    )
    inner_sql = select.sql(dialect="duckdb")
    ref = inner.ref

    key_names = tuple(f"__k{i}" for i in range(nk))
    key_list = ", ".join(f'"{k}"' for k in key_names)
    cells = [f'"{k}"' for k in key_names]
    outputs: list[str | None] = []
    for x, output in enumerate(checked.outputs):
        if output.key is not None:
            outputs.append(None)
            continue
        expr = output.expr.copy()
        base = next(i for i, a in enumerate(checked.aggregates) if a is output.aggregates[0])
        for offset, node in enumerate(_aggregate_nodes(expr)):
            j = base + offset
            replacement = sqlglot.parse_one(
                _combined(checked.aggregates[j].func, j, rounding_base, ref), read="duckdb"
            )
            if node is expr:
                expr = replacement
            else:
                node.replace(replacement)
        cells.append(f'{expr.sql(dialect="duckdb")} AS "__o{x}"')
        outputs.append(f"__o{x}")
    cells.append(f'SUM({ref("__n")}) AS "__n"')
    cells.append(f'SUM({ref("__np")}) AS "__np"')
    for t in range(nt):
        cells.append(f'COUNT(DISTINCT "__i{t}") FILTER (WHERE {ref("__n")} > 0) AS "__inst{t}"')
    for j, agg in enumerate(checked.aggregates):
        contributors = ref("__n") if agg.func == "count_star" else ref(f"__a{j}_c")
        cells.append(f'SUM({contributors}) AS "__a{j}_n"')
        patients = ref("__np") if agg.func == "count_star" else ref(f"__a{j}_p")
        cells.append(f'SUM({patients}) AS "__a{j}_p"')
        for s, selector in enumerate(agg.selectors):
            for b in range(len(selector.branches)):
                cells.append(f'SUM({ref(f"__s{j}_{s}_{b}")}) AS "__s{j}_{s}_{b}"')
                cells.append(f'SUM({ref(f"__s{j}_{s}_p{b}")}) AS "__s{j}_{s}_p{b}"')
    for i in range(len(conjuncts)):
        cells.append(f'SUM({ref(f"__w{i}")}) AS "__w{i}"')
        cells.append(f'SUM({ref(f"__wp{i}")}) AS "__wp{i}"')
    group = f" GROUP BY {key_list}" if nk else ""

    def top(value: str) -> str:
        return f"list_sum(max({value}, {int(dominance_n)}))"

    if nt == 1:
        # The partials are already one row per group and institution: the institutions'
        # contributions are the rows themselves, so dominance needs no second pass.
        for j, agg in enumerate(checked.aggregates):
            v = _contribution(agg.func, j, ref)
            cells.append(f'{top(v)} AS "__top0_{j}", SUM({v}) AS "__tot0_{j}"')
        # Only the rewrite's own names and SQL printed from the checked tree.
        sql = f'SELECT {", ".join(cells)} FROM ({inner_sql}) AS "__p"{group}'  # noqa: S608
        return Rewritten(sql, key_names, tuple(outputs), nt)

    ctes = [
        f'"__p" AS MATERIALIZED ({inner_sql})',
        # Only the rewrite's own names and SQL printed from the checked tree.
        f'"__c" AS (SELECT {", ".join(cells)} FROM "__p"{group})',  # noqa: S608
    ]
    final = ['"__c".*']
    joins = []
    for t in range(nt):
        per_inst = ", ".join(
            f'SUM({_contribution(a.func, j, ref)}) AS "v{j}"'
            for j, a in enumerate(checked.aggregates)
        )
        tops = ", ".join(
            f'{top(quoted)} AS "__top{t}_{j}", SUM({quoted}) AS "__tot{t}_{j}"'
            for j, quoted in ((j, f'"v{j}"') for j in range(len(checked.aggregates)))
        )
        inst_keys = ", ".join([*(f'"{k}"' for k in key_names), f'"__i{t}"'])
        ctes.append(
            # Only the rewrite's own names and SQL printed from the checked tree.
            f'"__d{t}" AS (SELECT {key_list + ", " if nk else ""}{tops} FROM '  # noqa: S608
            f'(SELECT {inst_keys}, {per_inst} FROM "__p" WHERE {ref("__n")} > 0 '
            f"GROUP BY {inst_keys}){group})"
        )
        final.extend(
            f'"__d{t}"."__top{t}_{j}", "__d{t}"."__tot{t}_{j}"'
            for j in range(len(checked.aggregates))
        )
        on = " AND ".join(f'"__c"."{k}" IS NOT DISTINCT FROM "__d{t}"."{k}"' for k in key_names)
        joins.append(f' LEFT JOIN "__d{t}" ON {on or "TRUE"}')
    # Only the rewrite's own names and SQL printed from the checked tree.
    sql = f'WITH {", ".join(ctes)} SELECT {", ".join(final)} FROM "__c"{"".join(joins)}'  # noqa: S608
    return Rewritten(sql, key_names, tuple(outputs), nt)
