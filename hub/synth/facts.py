"""The common data model's facts as the synthesis library takes them.

:mod:`anonymisation` knows no data model: the hub describes each CDM table it hands over
(identifier classes, logical types, declared bounds, keys, relations) with
:mod:`anonymisation.datamodel`, and adds what the CDM file does not say but holds for its
tables: the ordered column chains of :data:`INEQUALITIES`.
"""

from __future__ import annotations

from anonymisation.datamodel import ColumnFacts, ModelFacts, Relation, TableFacts
from contracts.cdm import CommonDataModel, Table, load_cdm

# Ordered column chains (each value ≥ the previous one) that hold for CDM tables; a chain
# is applied to the columns of it that a frame has (two or more).
INEQUALITIES: dict[str, tuple[tuple[str, ...], ...]] = {
    "batch": (("manufacturing_start", "release_date", "expiration_date"),),
    "custody_event": (("temp_min", "temp_max"),),
}
# The hierarchy synthesised together when SDV's multi-table synthesizer allows it.
HIERARCHY = ("episode", "collection", "batch", "release_test")


def table_facts(table: Table) -> TableFacts:
    """One CDM table as the synthesis library's :class:`TableFacts`."""
    return TableFacts(
        name=table.name,
        columns=tuple(
            ColumnFacts(
                name=c.name,
                identifier=c.identifier,
                type=c.type.value,
                minimum=c.minimum,
                maximum=c.maximum,
                allowed=c.allowed,
            )
            for c in table.columns
        ),
        primary_key=table.primary_key,
        inequalities=INEQUALITIES.get(table.name, ()),
    )


def model_facts(cdm: CommonDataModel | None = None) -> ModelFacts:
    """Every table of the CDM (the loaded one by default) and its relationships."""
    cdm = cdm or load_cdm()
    return ModelFacts(
        tables=tuple(table_facts(t) for t in cdm.tables),
        relations=tuple(
            Relation(r.table, r.column, r.ref_table, r.ref_column) for r in cdm.relationships
        ),
    )
