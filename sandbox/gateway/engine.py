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
import json
import math
import threading
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import duckdb

from contracts.agreements import Disclosure
from sandbox.gateway import disclosure as control
from sandbox.gateway.errors import QueryFailed, QueryTimeout
from sandbox.gateway.sql import INSTITUTION, check_query, rewrite


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


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class AgreementViews:
    """One agreement's locked-down DuckDB database with a view per covered table."""

    def __init__(
        self,
        tables: Mapping[str, Sequence[Source]],
        identifiers: Mapping[str, Iterable[str]] | None = None,
        *,
        memory_limit: str = "2GB",
        threads: int = 2,
    ) -> None:
        ids = dict(cdm_identifiers())
        ids.update({k.lower(): frozenset(v) for k, v in (identifiers or {}).items()})
        self.names = frozenset(t.lower() for t, sources in tables.items() if sources)
        self.identifiers = {t: ids.get(t, frozenset()) for t in self.names}
        con = duckdb.connect(
            ":memory:",
            config={
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_unsigned_extensions": False,
            },
        )
        local = [
            str(Path(s.path).resolve())
            for sources in tables.values()
            for s in sources
            if s.filesystem is None
        ]
        con.execute("SET allowed_paths = $1", [sorted(set(local))])
        self._datasets: list[Any] = []
        for table, sources in tables.items():
            if sources:
                con.execute(self._view_sql(con, table.lower(), sources))
        con.execute("SET python_enable_replacements = false")
        con.execute(f"SET memory_limit = {_literal(memory_limit)}")
        con.execute(f"SET threads = {int(threads)}")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        self.connection = con
        # Registered pyarrow datasets are visible only to this connection, not to cursors:
        # such agreements run their queries on it one at a time.
        self.lock = threading.Lock() if self._datasets else None

    def _view_sql(
        self, con: duckdb.DuckDBPyConnection, table: str, sources: Sequence[Source]
    ) -> str:
        by_institution: dict[tuple[str, int], list[Source]] = {}
        for source in sources:
            key = (source.institution, id(source.filesystem) if source.filesystem else 0)
            by_institution.setdefault(key, []).append(source)
        parts = []
        for (institution, _fs), group in sorted(by_institution.items()):
            if group[0].filesystem is None:
                paths = ", ".join(_literal(str(Path(s.path).resolve())) for s in group)
                scan = f"read_parquet([{paths}], union_by_name = true)"
            else:
                import pyarrow.dataset as pads

                dataset = pads.dataset(
                    [s.path for s in group], filesystem=group[0].filesystem, format="parquet"
                )
                name = f"__src_{table}_{len(self._datasets)}"
                con.register(name, dataset)
                self._datasets.append(dataset)
                scan = f'"{name}"'
            parts.append(
                # A column called `institution` in the file is replaced by the pseudonym.
                # Gateway-built: paths and pseudonyms come from the hub and are quoted by _literal.
                f"SELECT COLUMNS(lambda c: c <> '{INSTITUTION}'), "  # noqa: S608
                f"{_literal(institution)} AS {INSTITUTION} FROM {scan}"
            )
        return f'CREATE VIEW "{table}" AS ' + " UNION ALL BY NAME ".join(parts)

    def close(self) -> None:
        self.connection.close()


PREPARED_CACHE = 256  # checked and rewritten queries remembered per gateway


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
    ) -> AgreementViews:
        """The agreement's views, built once per set of sources (a release or withdrawal
        changes the sources and so builds a new database)."""
        key = (
            agreement,
            tuple(
                sorted(
                    (t, tuple(sorted((s.path, s.institution) for s in ss)))
                    for t, ss in tables.items()
                )
            ),
        )
        with self._lock:
            found = self._cache.get(key)
            if found is None:
                for old in [k for k in self._cache if k[0] == agreement]:
                    self._cache.pop(old).close()
                found = AgreementViews(
                    tables, identifiers, memory_limit=self.memory_limit, threads=self.threads
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
        timer = threading.Timer(self.timeout, cursor.interrupt)
        timer.start()
        try:
            result = cursor.execute(sql)
            rows = result.fetchall()
            columns = [d[0] for d in result.description]
        except duckdb.InterruptException:
            raise QueryTimeout(
                f"the query ran longer than {self.timeout:g} s and was stopped"
            ) from None
        except (duckdb.BinderException, duckdb.CatalogException) as error:
            raise QueryFailed(_first_line(str(error))) from None
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
            timer.cancel()
            if close:
                cursor.close()
        return columns, rows

    def run(self, views: AgreementViews, disclosure: Disclosure, sql: str) -> Answer:
        """Check, rewrite, run and disclosure-control one query."""
        checked, rewritten = self._prepare(views, disclosure, sql)
        columns, rows = self.execute(views, rewritten.sql)
        results = [dict(zip(columns, row, strict=True)) for row in rows]
        if not checked.order:  # no ORDER BY: groups in key order, the same on every run
            results.sort(key=lambda r: tuple(_sortable(r[k]) for k in rewritten.keys))
        controlled = control.control(checked, rewritten, results, disclosure)
        rounded = {
            "base": disclosure.rounding_base,
            "columns": [o.name for o in checked.outputs if o.key is None and o.is_count],
        }
        answer = Answer(
            columns=[o.name for o in checked.outputs],
            rows=[[_plain(v) for v in row] for row in controlled.rows],
            suppressed=controlled.suppressed,
            rounded=rounded,
            query_hash=checked.hash,
        )
        answer.result_hash = hashlib.sha256(
            json.dumps(answer.as_dict(), sort_keys=True, default=str).encode()
        ).hexdigest()
        return answer

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
        return found

    def fit(self, views: AgreementViews, disclosure: Disclosure, **request: Any) -> Any:
        """Fit a model server-side; see :func:`sandbox.gateway.fit.fit`."""
        from sandbox.gateway.fit import fit

        return fit(self, views, disclosure, **request)


def _first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else "the query failed"


def _sortable(value: Any) -> tuple[bool, str, Any]:
    """A sort key for one group key value: missing values last, types apart."""
    return (value is None, type(value).__name__, value if value is not None else 0)


def _plain(value: Any) -> Any:
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
