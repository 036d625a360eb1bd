"""What the library is told about a data model: its tables, column roles and relations.

The library knows no data model of its own. A caller (the hub, from the common data model)
describes the tables it hands over with these small frozen dataclasses: each column's
identifier class, logical type and declared bounds, each table's key and ordered column
chains, and the foreign keys between tables.
"""

from __future__ import annotations

from dataclasses import dataclass

from anonymisation.identifiers import IdentifierClass


@dataclass(frozen=True)
class ColumnFacts:
    """One column: ``type`` is a logical type (``string``, ``integer``, ``number``,
    ``boolean``, ``date``, ``datetime``, ``category``); ``minimum``, ``maximum`` and
    ``allowed`` are the declared bounds, if any."""

    name: str
    identifier: IdentifierClass
    type: str
    minimum: float | None = None
    maximum: float | None = None
    allowed: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TableFacts:
    """One table: its columns, primary key, and ``inequalities``, ordered column chains
    (each value ≥ the previous one) that hold for its rows."""

    name: str
    columns: tuple[ColumnFacts, ...]
    primary_key: tuple[str, ...] = ()
    inequalities: tuple[tuple[str, ...], ...] = ()

    def column(self, name: str) -> ColumnFacts:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"table `{self.name}` has no column `{name}`")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Relation:
    """A foreign key: ``table.column`` refers to ``ref_table.ref_column``."""

    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class ModelFacts:
    """Several tables and the relations among them."""

    tables: tuple[TableFacts, ...]
    relations: tuple[Relation, ...] = ()

    def table(self, name: str) -> TableFacts:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(f"the data model has no table `{name}`")
