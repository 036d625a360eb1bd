"""Public facts about the views' columns: the bounds and domains differential privacy needs.

Noise is calibrated to how much one patient can change an answer, so every value that is
summed must lie in a range known *before* the data is read, and every group key must come
from a domain known before the data is read (else a group's mere presence tells that some
record has that value). Those facts are public: they come from the common data model
(``contracts/cdm.yaml``: a column's ``minimum``/``maximum``, its ``allowed`` categories, its
type), never from the pool. A column the CDM gives no bounds can still be summed inside
``CLAMP(expr, low, high)``, the researcher's own public bounds.

Dates are whole days since the episode's first collection in the pool; their public range is
:data:`DATE_OFFSET_BOUNDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

DATE_OFFSET_BOUNDS = (-365.0, 1095.0)
"""Public range of a date in the pool (days since the episode's first collection)."""

INTEGER_DOMAIN_MAX = 400
"""An integer column with public bounds this close together is a domain of its own (it may be
grouped by directly, e.g. ``prior_lines`` 0–15)."""

NUMERIC_TYPES = frozenset(
    {
        "TINYINT",
        "SMALLINT",
        "INTEGER",
        "INT",
        "BIGINT",
        "HUGEINT",
        "UTINYINT",
        "USMALLINT",
        "UINTEGER",
        "UBIGINT",
        "FLOAT",
        "DOUBLE",
        "REAL",
        "DECIMAL",
        "NUMERIC",
    }
)
"""DuckDB's number types, as a view column's type names them (without precision)."""


@dataclass(frozen=True)
class Facts:
    """What is publicly known about one column's values."""

    kind: str  # number, integer, boolean, category, band, string
    lower: float | None = None
    upper: float | None = None
    values: tuple[Any, ...] | None = None  # the public domain, where there is one

    @property
    def bounded(self) -> bool:
        return self.lower is not None and self.upper is not None

    def domain(self) -> tuple[Any, ...] | None:
        """The values a GROUP BY on this column may take, known without reading data."""
        if self.values is not None:
            return self.values
        if (
            self.kind == "integer"
            and self.bounded
            and self.upper - self.lower <= INTEGER_DOMAIN_MAX  # type: ignore[operator]
        ):
            return tuple(range(int(self.lower), int(self.upper) + 1))  # type: ignore[arg-type]
        return None


AGE_BAND_WIDTHS = (5, 10, 20)
AGE_TOP = 90


def age_bands(widths: tuple[int, ...] = AGE_BAND_WIDTHS, top: int = AGE_TOP) -> tuple[str, ...]:
    """Every band de-identification can give an age (``"35-39"``, ``"30-39"``, ``"20-39"``,
    ``"90+"``): its public generalisation ladder (``anonymisation.generalise``: bands of 5,
    then 10, then 20 years, top-coded at 90), so the domain of a banded age is known before
    any data is read."""
    found: list[str] = []
    for width in widths:
        for low in range(0, top, width):
            band = f"{low}-{min(low + width - 1, top - 1)}"
            if band not in found:
                found.append(band)
    found.append(f"{top}+")
    return tuple(found)


def _is_age(column: str) -> bool:
    return column == "age" or column.endswith("_age")


@lru_cache(maxsize=1)
def cdm_facts() -> dict[str, dict[str, Facts]]:
    """Per CDM table and column, the facts the CDM declares."""
    from contracts.cdm import ColumnType, load_cdm

    cdm = load_cdm()
    found: dict[str, dict[str, Facts]] = {}
    for name in cdm.table_names:
        columns: dict[str, Facts] = {}
        for column in cdm.table(name).columns:
            kind = column.type
            if kind in (ColumnType.NUMBER, ColumnType.INTEGER):
                columns[column.name] = Facts(str(kind), column.minimum, column.maximum)
            elif kind is ColumnType.BOOLEAN:
                columns[column.name] = Facts("boolean", 0.0, 1.0, (False, True))
            elif kind is ColumnType.CATEGORY and column.allowed:
                columns[column.name] = Facts("category", values=tuple(column.allowed))
            elif kind in (ColumnType.DATE, ColumnType.DATETIME):
                lower, upper = DATE_OFFSET_BOUNDS
                columns[column.name] = Facts("integer", lower, upper)
            else:
                columns[column.name] = Facts("string")
        found[name] = columns
    return found


def view_facts(
    table: str,
    types: Mapping[str, str],
    declared: Mapping[str, Mapping[str, Facts]] | None = None,
) -> dict[str, Facts]:
    """The facts of a view's columns, from the CDM (or ``declared``) and the type the view
    actually holds: a CDM number that de-identification turned into bands (``age`` →
    ``'60-79'``) is a string in the pool and has no bounds there."""
    known = (declared or cdm_facts()).get(table, {})
    found: dict[str, Facts] = {}
    for column, sql_type in types.items():
        base = sql_type.upper().split("(")[0]
        fact = known.get(column)
        if base == "BOOLEAN":
            found[column] = Facts("boolean", 0.0, 1.0, (False, True))
        elif base in NUMERIC_TYPES:
            if fact is not None and fact.kind in ("number", "integer") and fact.bounded:
                integer = base not in ("FLOAT", "DOUBLE", "REAL", "DECIMAL")
                found[column] = Facts(
                    "integer" if integer and fact.kind == "integer" else "number",
                    fact.lower,
                    fact.upper,
                )
            else:
                found[column] = Facts("number")
        elif fact is not None and fact.kind == "category":
            found[column] = fact
        elif fact is not None and fact.kind in ("number", "integer") and base == "VARCHAR":
            # Generalised into bands: text such as '40-49', never a number to compute with.
            found[column] = Facts("band", values=age_bands() if _is_age(column) else None)
        else:
            found[column] = Facts("string")
    return found
