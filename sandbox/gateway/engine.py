"""The gateway engine: locked-down DuckDB views per agreement, and answering queries.

For each agreement the hub hands over, per CDM table, the released Parquet of the signing
contributors (:class:`Source`: a path, the institution's pseudonym and, for S3, a pyarrow
filesystem). :meth:`Gateway.views` builds one in-memory DuckDB database for it:

- local files: ``allowed_paths`` is set to exactly those files, then a view per table reads
  them with ``read_parquet`` and adds the ``institution`` column;
- files behind a pyarrow filesystem (S3): a ``pyarrow.dataset`` per institution is registered
  and the view reads it; no DuckDB extension is installed or loaded;
- then ``enable_external_access`` is switched off (no other file, URL or extension can be
  read), Python replacement scans are off, memory and threads are capped, and the
  configuration is locked, so a statement that slipped past the parser still cannot read a
  file or change a setting.

Each query runs on its own cursor of that database with a timer that interrupts it after the
time limit. Only SQL generated from the checked syntax tree is ever executed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb

from contracts.agreements import Disclosure
from sandbox.gateway import disclosure as control
from sandbox.gateway.errors import QueryFailed, QueryTimeout
from sandbox.gateway.facts import Facts, view_facts
from sandbox.gateway.sql import INSTITUTION, check_query, patients_sql, rewrite, spread_sql
from sandbox.gateway.typecheck import check_types


@dataclass(frozen=True)
class Source:
    """One released Parquet file of a contributor: where it is and whose it is."""

    path: str
    institution: str
    filesystem: Any = None  # a pyarrow.fs.FileSystem (S3); None for a local path


@dataclass
class Answer:
    """A disclosure-controlled answer. ``rows`` hold None where a cell was suppressed."""

    columns: list[str]
    rows: list[list[Any]]
    suppressed: list[dict[str, Any]]
    rounded: dict[str, Any]
    query_hash: str
    result_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "columns": self.columns,
            "rows": self.rows,
            "suppressed": self.suppressed,
            "rounded": self.rounded,
            "query_hash": self.query_hash,
            "result_hash": self.result_hash,
        }


@lru_cache(maxsize=1)
def cdm_identifiers() -> dict[str, frozenset[str]]:
    """Per CDM table, the columns that identify a person or unit (pseudonymised or dropped)."""
    from contracts.cdm import IdentifierClass, load_cdm

    cdm = load_cdm()
    kinds = {IdentifierClass.LINKABLE, IdentifierClass.DIRECT}
    return {
        table: frozenset(c.name for c in cdm.table(table).columns if c.identifier in kinds)
        for table in cdm.table_names
    }


def digest(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys): an answer's ``result_hash``
    and the ledger's record of it."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# Internal tables linking a lot or a collection (DIN) to its patient's chain of identity:
# name -> (the CDM table read, its key column).
_LINKS = {"__link_lot": ("batch", "lot_id"), "__link_din": ("collection", "din")}
# The columns of other tables that reach a patient through each link.
_LINK_COLUMNS = {"__link_lot": ("lot_id",), "__link_din": ("din", "unit_id")}
# Columns the scan adds that never reach a view.
_FILE_ONLY = {"filename", "file_row_number", "__row"}


class AgreementViews:
    """One agreement's locked-down DuckDB database with a view per covered table.

    A view holds exactly the columns the agreement covers (``columns``; None: every column
    of the files), the ``institution`` pseudonym, and ``__pid``: the privacy unit, which the
    checker never lets a query name. ``__pid`` is the episode's chain of identity (the
    pseudonymised ``coi_id``); a table without it reaches it through ``lot_id`` (the
    ``batch`` files in ``links``) or ``din``/``unit_id`` (the ``collection`` files), and a row
    linked to no patient is a unit of its own."""

    def __init__(
        self,
        tables: Mapping[str, Sequence[Source]],
        identifiers: Mapping[str, Iterable[str]] | None = None,
        *,
        columns: Mapping[str, Sequence[str] | None] | None = None,
        links: Mapping[str, Sequence[Source]] | None = None,
        facts: Mapping[str, Mapping[str, Facts]] | None = None,
        memory_limit: str = "2GB",
        threads: int = 2,
    ) -> None:
        ids = dict(cdm_identifiers())
        ids.update({k.lower(): frozenset(v) for k, v in (identifiers or {}).items()})
        self.names = frozenset(t.lower() for t, sources in tables.items() if sources)
        self.identifiers = {t: ids.get(t, frozenset()) for t in self.names}
        covered = {k.lower(): v for k, v in (columns or {}).items()}
        con = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_unsigned_extensions": False,
            },
        )
        links = {k: v for k, v in (links or {}).items() if v}
        local = [
            str(Path(s.path).resolve())
            for group in (*tables.values(), *links.values())
            for s in group
            if s.filesystem is None
        ]
        con.execute("SET allowed_paths = $1", [sorted(set(local))])
        self._datasets: list[Any] = []
        self._footers: dict[str, Any] = {}
        self.institutions: dict[str, tuple[str, ...]] = {}
        self._links: set[str] = set()
        for name, (table, key) in _LINKS.items():
            sources = links.get(table) or tables.get(table) or ()
            if sources:
                self._link_table(con, name, table, key, sources)
        for table, sources in tables.items():
            if sources:
                con.execute(self._view_sql(con, table.lower(), sources, covered.get(table.lower())))
        self.columns: dict[str, dict[str, str]] = {}
        for table in sorted(self.names):
            rows = con.execute(f'DESCRIBE "{table}"').fetchall()
            self.columns[table] = {
                str(r[0]): str(r[1]) for r in rows if not str(r[0]).startswith("__")
            }
        self.facts = {
            table: view_facts(table, types, facts) for table, types in self.columns.items()
        }
        for table in self.names:
            self.facts[table][INSTITUTION] = Facts("category", values=self.institutions[table])
        # CLAMP(x, low, high), the gateway's grammar for bounding a value, on the exact path.
        con.execute(
            "CREATE MACRO clamp(x, low, high) AS "
            "CASE WHEN x IS NULL THEN NULL ELSE least(greatest(x, low), high) END"
        )
        con.execute("SET python_enable_replacements = false")
        con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self.connection = con
        self._footers.clear()  # only needed while building
        # Registered pyarrow datasets are visible only to this connection, not to cursors:
        # such agreements run their queries on it one at a time.
        self.lock = threading.Lock() if self._datasets else None
        self._rows_per_patient: dict[str, int] = {}
        self._observed: dict[str, dict[str, tuple[float, float]]] = {}
        # The DP planner's prepared questions (sandbox.gateway.dp), by text and bound.
        self.plans: dict[tuple[str, int], Any] = {}

    def _scan(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        group: Sequence[Source],
        with_row: bool = True,
    ) -> str:
        """A FROM clause reading one institution's files, with ``__row`` (``with_row``): a
        number unique within the scan (a unit for rows linked to no patient)."""
        if group[0].filesystem is None:
            paths = ", ".join(_literal(str(Path(s.path).resolve())) for s in group)
            if not with_row:
                return f"read_parquet([{paths}], union_by_name = true)"
            return (
                # Gateway-built: the paths come from the hub and are quoted by _literal.
                "(SELECT *, CAST(hash(filename) AS VARCHAR) || '.' || "  # noqa: S608
                "CAST(file_row_number AS VARCHAR) AS __row FROM "
                f"read_parquet([{paths}], union_by_name = true, filename = true, "
                "file_row_number = true))"
            )
        import pyarrow.dataset as pads

        dataset = pads.dataset(
            [s.path for s in group], filesystem=group[0].filesystem, format="parquet"
        )
        name = f"__src_{table}_{len(self._datasets)}"
        con.register(name, dataset)
        self._datasets.append(dataset)
        if not with_row:
            return f'"{name}"'
        return f'(SELECT *, CAST(row_number() OVER () AS VARCHAR) AS __row FROM "{name}")'  # noqa: S608

    @staticmethod
    def _groups(sources: Sequence[Source]) -> list[tuple[str, list[Source]]]:
        by_institution: dict[tuple[str, int], list[Source]] = {}
        for source in sources:
            key = (source.institution, id(source.filesystem) if source.filesystem else 0)
            by_institution.setdefault(key, []).append(source)
        return [(inst, group) for (inst, _fs), group in sorted(by_institution.items())]

    def _metadata(self, source: Source) -> Any:
        """A file's Parquet footer, read once while the views are built."""
        found = self._footers.get(source.path)
        if found is None:
            import pyarrow.parquet as papq

            if source.filesystem is None:
                found = papq.read_metadata(source.path)
            else:
                with source.filesystem.open_input_file(source.path) as handle:
                    found = papq.read_metadata(handle)
            self._footers[source.path] = found
        return found

    def _never_null(self, group: Sequence[Source], column: str) -> bool:
        """Whether every file's ``column`` is there and, by its Parquet statistics, holds
        no NULL (then the column alone names each row's patient)."""
        for source in group:
            metadata = self._metadata(source)
            names = metadata.schema.names
            if column not in names:
                return False
            index = names.index(column)
            for group_index in range(metadata.num_row_groups):
                stats = metadata.row_group(group_index).column(index).statistics
                if stats is None or not stats.has_null_count or stats.null_count:
                    return False
        return True

    def _file_columns(self, group: Sequence[Source]) -> set[str]:
        found: set[str] = set()
        for source in group:
            found |= set(self._metadata(source).schema.to_arrow_schema().names)
        return found

    def _link_table(
        self,
        con: duckdb.DuckDBPyConnection,
        name: str,
        table: str,
        key: str,
        sources: Sequence[Source],
    ) -> None:
        parts = []
        for _inst, group in self._groups(sources):
            if {key, "coi_id"} <= self._file_columns(group):
                scan = self._scan(con, f"{name}_{table}", group)
                parts.append(f'SELECT "{key}" AS k, coi_id FROM {scan} AS s')  # noqa: S608
        if not parts:
            return
        union = " UNION ALL ".join(parts)
        # Gateway-built from fixed names; materialised once (one row per lot or DIN).
        con.execute(
            f"CREATE TABLE {name} AS SELECT k, min(coi_id) AS coi_id FROM ({union}) "  # noqa: S608
            "WHERE k IS NOT NULL AND coi_id IS NOT NULL GROUP BY k"
        )
        self._links.add(name)

    def _view_sql(
        self,
        con: duckdb.DuckDBPyConnection,
        table: str,
        sources: Sequence[Source],
        covered: Sequence[str] | None,
    ) -> str:
        parts = []
        institutions = []
        for institution, group in self._groups(sources):
            institutions.append(institution)
            present = self._file_columns(group) - _FILE_ONLY
            wanted = sorted(present if covered is None else present & set(covered))
            wanted = [c for c in wanted if c != INSTITUTION and not c.startswith("__")]
            inst = _literal(institution)
            joins, units = [], []
            if "coi_id" in present:
                units.append("s.coi_id")
            complete = "coi_id" in present and self._never_null(group, "coi_id")
            if not complete:
                for link in _LINKS:
                    for column in _LINK_COLUMNS[link]:
                        if link in self._links and column in present:
                            alias = f"{link}_{column}"
                            joins.append(f'LEFT JOIN {link} {alias} ON s."{column}" = {alias}.k')
                            units.append(f"{alias}.coi_id")
                units.append(f"'row:' || {inst} || ':' || s.__row")
            scan = self._scan(con, table, group, with_row=not complete)
            selected = [f's."{c}"' for c in wanted]
            parts.append(
                # Gateway-built: paths and pseudonyms come from the hub and are quoted by
                # _literal; column names come from the files and the agreement.
                f"SELECT {', '.join([*selected, f'{inst} AS {INSTITUTION}'])}, "  # noqa: S608
                f"COALESCE({', '.join(units)}) AS __pid FROM {scan} AS s {' '.join(joins)}"
            )
        self.institutions[table] = tuple(sorted(set(institutions)))
        return f'CREATE VIEW "{table}" AS ' + " UNION ALL BY NAME ".join(parts)

    def rows_per_patient(self, table: str, run: Any) -> int:
        """The most rows one patient has in ``table`` (remembered: the views never change)."""
        found = self._rows_per_patient.get(table)
        if found is None:
            _, rows = run(
                f'SELECT max(n) FROM (SELECT count(*) AS n FROM "{table}" GROUP BY __pid)'  # noqa: S608
            )
            found = int(rows[0][0] or 0)
            self._rows_per_patient[table] = found
        return found

    def observed(self, table: str, run: Any) -> dict[str, tuple[float, float]]:
        """Each numeric column's smallest and largest value in ``table``, for the columns
        that hold no NaN or infinity (remembered: the views never change). Never shown to
        anyone: the DP planner leaves out a clamp that these show would change nothing."""
        found = self._observed.get(table)
        if found is None:
            numeric = [
                c for c, fact in self.facts[table].items() if fact.kind in ("number", "integer")
            ]
            found = {}
            if numeric:
                parts = []
                for column in numeric:
                    value = f'CAST("{column}" AS DOUBLE)'
                    parts += [
                        f"min({value})",
                        f"max({value})",
                        f"count(*) FILTER (WHERE NOT isfinite({value}))",
                    ]
                _, rows = run(f'SELECT {", ".join(parts)} FROM "{table}"')  # noqa: S608
                row = rows[0]
                for i, column in enumerate(numeric):
                    low, high, odd = row[3 * i : 3 * i + 3]
                    if low is not None and high is not None and not odd:
                        found[column.lower()] = (float(low), float(high))
            self._observed[table] = found
        return found

    def close(self) -> None:
        self.connection.close()


PREPARED_CACHE = 256  # checked and rewritten queries remembered per gateway


class _Watchdog:
    """Interrupts queries that run past their deadline: one thread for all of them,
    checking four times a second (a timer thread per query costs a small query ~1 ms)."""

    TICK = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[float, duckdb.DuckDBPyConnection]] = {}
        self._next = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, cursor: duckdb.DuckDBPyConnection, seconds: float) -> int:
        with self._lock:
            token = next(self._next)
            self._due[token] = (time.monotonic() + seconds, cursor)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="gateway-watchdog", daemon=True
                )
                self._thread.start()
            return token

    def done(self, token: int) -> None:
        """The query ended: after this returns, it is never interrupted."""
        with self._lock:
            self._due.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK)
            now = time.monotonic()
            with self._lock:
                for token, (deadline, cursor) in list(self._due.items()):
                    if deadline <= now:
                        del self._due[token]
                        cursor.interrupt()


_WATCHDOG = _Watchdog()


class Gateway:
    """Answers aggregate queries and fits models on agreements' views."""

    def __init__(
        self, *, memory_limit: str = "2GB", threads: int = 2, timeout: float = 30.0
    ) -> None:
        self.memory_limit = memory_limit
        self.threads = threads
        self.timeout = timeout
        self._cache: dict[tuple[Any, ...], AgreementViews] = {}
        self._prepared: dict[tuple[Any, ...], Any] = {}
        self._lock = threading.Lock()

    def views(
        self,
        agreement: Hashable,
        tables: Mapping[str, Sequence[Source]],
        identifiers: Mapping[str, Iterable[str]] | None = None,
        *,
        columns: Mapping[str, Sequence[str] | None] | None = None,
        links: Mapping[str, Sequence[Source]] | None = None,
    ) -> AgreementViews:
        """The agreement's views, built once per set of sources and covered columns (a
        release, a withdrawal or new terms build a new database)."""

        def files(groups: Mapping[str, Sequence[Source]]) -> tuple[Any, ...]:
            return tuple(
                sorted(
                    (t, tuple(sorted((s.path, s.institution) for s in ss)))
                    for t, ss in groups.items()
                )
            )

        covered = tuple(
            sorted(
                (t, tuple(sorted(c)) if c is not None else None) for t, c in (columns or {}).items()
            )
        )
        key = (agreement, files(tables), files(links or {}), covered)
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                for old in [k for k in self._cache if k[0] == agreement]:
                    self._cache.pop(old).close()
                found = AgreementViews(
                    tables,
                    identifiers,
                    columns=columns,
                    links=links,
                    memory_limit=self.memory_limit,
                    threads=self.threads,
                )
                self._cache[key] = found
            return found

    def close(self) -> None:
        with self._lock:
            for views in self._cache.values():
                views.close()
            self._cache.clear()

    def execute(self, views: AgreementViews, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
        """Run gateway-generated SQL on a fresh cursor under the time limit."""
        if views.lock is not None:
            with views.lock:
                return self._execute(views.connection, sql, close=False)
        return self._execute(views.connection.cursor(), sql, close=True)

    def _execute(
        self, cursor: duckdb.DuckDBPyConnection, sql: str, *, close: bool
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        watched = _WATCHDOG.watch(cursor, self.timeout)
        try:
            result = cursor.execute(sql)
            rows = result.fetchall()
            columns = [d[0] for d in result.description]
        except duckdb.InterruptException:
            raise QueryTimeout(
                f"the query ran longer than {self.timeout:g} s and was stopped"
            ) from None
        except (duckdb.BinderException, duckdb.CatalogException) as error:
            # Types and names are checked before (typecheck.py); what is left is said
            # without the engine's vocabulary where it can be.
            raise QueryFailed(
                f"the query cannot be run as written ({_plain_error(str(error))}); check "
                "the columns' names and types with cr.schema(table)"
            ) from None
        except duckdb.OutOfMemoryException:
            raise QueryFailed("the query needs more memory than the gateway allows") from None
        except duckdb.Error as error:
            # Conversion and other runtime errors can quote a record's value; say only
            # what kind of error it was.
            raise QueryFailed(
                f"the query failed at run time ({type(error).__name__}); check types "
                "and use TRY_CAST for conversions"
            ) from None
        finally:
            _WATCHDOG.done(watched)
            if close:
                cursor.close()
        return columns, rows

    def run(self, views: AgreementViews, disclosure: Disclosure, sql: str) -> Answer:
        """Check, rewrite, run and disclosure-control one query."""
        checked, rewritten = self._prepare(views, disclosure, sql)
        columns, rows = self.execute(views, rewritten.sql)
        results = [dict(zip(columns, row, strict=True)) for row in rows]
        spread = spread_sql(checked)
        if spread is not None:
            names, found = self.execute(views, spread)
            n = len(checked.keys)
            by_key = {tuple(r[:n]): dict(zip(names[n:], r[n:], strict=True)) for r in found}
            for result in results:
                result.update(by_key.get(tuple(result[k] for k in rewritten.keys), {}))
        if not checked.order:  # no ORDER BY: groups in key order, the same on every run
            results.sort(key=lambda r: tuple(_sortable(r[k]) for k in rewritten.keys))
        controlled = control.control(checked, rewritten, results, disclosure)
        rounded = {
            "base": disclosure.rounding_base,
            "columns": [o.name for o in checked.outputs if o.key is None and o.is_count],
        }
        answer = Answer(
            columns=[o.name for o in checked.outputs],
            rows=[[plain(v) for v in row] for row in controlled.rows],
            suppressed=controlled.suppressed,
            rounded=rounded,
            query_hash=checked.hash,
        )
        answer.result_hash = digest(answer.as_dict())
        return answer

    def patients_behind(
        self, views: AgreementViews, sql: str, rows: Sequence[Sequence[Any]]
    ) -> list[tuple[frozenset[Any], frozenset[str]] | None]:
        """For the rows of an exact answer to ``sql`` (reviewed release): the distinct
        patients (pseudonymous units, never shown) and institutions behind each row, exactly,
        every record counted; None for a row no group matches. Evidence for the output
        checkers and for the differencing check across releases."""
        checked = check_query(sql, views.names, views.identifiers)
        check_types(checked, views.columns, views.facts)
        names, found = self.execute(views, patients_sql(checked))
        n = len(checked.keys)
        groups = {
            tuple(plain(v) for v in row[:n]): (
                frozenset(row[n] or ()),
                frozenset(row[n + 1] or ()),
            )
            for row in found
        }
        key_at = {o.key: i for i, o in enumerate(checked.outputs) if o.key is not None}
        if len(key_at) < n:  # a key the answer does not show: its rows cannot be matched
            return [None] * len(rows)
        return [groups.get(tuple(plain(shown[key_at[k]]) for k in range(n))) for shown in rows]

    def _prepare(self, views: AgreementViews, disclosure: Disclosure, sql: str) -> Any:
        """``check_query`` + ``rewrite``, remembered for the last queries: both are pure
        functions of the text, the view names and identifiers, and the disclosure
        parameters they read, and parsing costs more than a small query's run."""
        key = (
            sql,
            tuple(sorted((t, tuple(sorted(ids))) for t, ids in views.identifiers.items())),
            disclosure.dominance_n,
            disclosure.rounding_base,
        )
        with self._lock:
            found = self._prepared.get(key)
        if found is None:
            checked = check_query(sql, views.names, views.identifiers)
            found = (checked, rewrite(checked, disclosure.dominance_n, disclosure.rounding_base))
            with self._lock:
                if len(self._prepared) >= PREPARED_CACHE:
                    self._prepared.pop(next(iter(self._prepared)))
                self._prepared[key] = found
        # Outside the cache: the views' column types decide, and they are the views' own.
        check_types(found[0], views.columns, views.facts)
        return found

    def fit(self, views: AgreementViews, disclosure: Disclosure, **request: Any) -> Any:
        """Fit a model server-side; see :func:`sandbox.gateway.fit.fit`."""
        from sandbox.gateway.fit import fit

        return fit(self, views, disclosure, **request)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "the query failed"


def _plain_error(message: str) -> str:
    """DuckDB's first line without its error-class prefix ("Binder Error: ")."""
    line = _first_line(message)
    head, sep, rest = line.partition(" Error: ")
    return rest if sep and " " not in head else line


def _sortable(value: Any) -> tuple[bool, str, Any]:
    """A sort key for one group key value: missing values last, types apart."""
    return (value is None, type(value).__name__, value if value is not None else 0)


def plain(value: Any) -> Any:
    """JSON-friendly cell values (Decimal and HUGEINT results become float and int).
    Floats keep 12 significant digits: DuckDB sums in parallel, in no fixed order, so the
    last bits of an average vary from run to run; rounded, the same question gives the same
    answer and the same result hash."""
    if value is None or isinstance(value, bool | int | str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return float(f"{number:.12g}") if math.isfinite(number) else number
