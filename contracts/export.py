"""The common data model as files other projects can validate against.

Two standard forms of the same contract (``contracts/cdm.yaml``):

* **JSON Schema** (draft 2020-12): one schema per table for one row, with the CDM's types,
  required columns, allowed values (``enum``) and ranges (``minimum``/``maximum``); units and
  descriptions in ``description``; what JSON Schema cannot say (identifier class, unit,
  references, primary key) as ``x-cleanroom-*`` annotations, which validators ignore.
* **Frictionless Data Package** (``datapackage.json``): one tabular resource per table
  (``<table>.csv``) whose Table Schema carries the fields, constraints, primary key and
  foreign keys, so ``frictionless validate`` checks a folder of CSV files against the CDM.

Both describe rows as a contributor maps them: CDM column names, canonical units, real
dates, before de-identification. The functions return plain dictionaries (ready for
``json.dumps`` or a JSON response) and never touch the hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from contracts.cdm import Column, ColumnType, CommonDataModel, Table, load_cdm
from contracts.codes import load_codes

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
FORMATS = ("jsonschema", "frictionless")
PACKAGE_NAME = "cleanroom-cdm"
PACKAGE_FILE = "datapackage.json"

# A date as the CDM writes it, and a date and time with an optional UTC offset (the ingest
# converts an offset to UTC and keeps a time without one as written).
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$"
DATETIME_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]+)?)?"
    r"(Z|[+-][0-9]{2}:?[0-9]{2})?$"
)

_JSON_TYPES = {
    ColumnType.STRING: "string",
    ColumnType.CATEGORY: "string",
    ColumnType.INTEGER: "integer",
    ColumnType.NUMBER: "number",
    ColumnType.BOOLEAN: "boolean",
    ColumnType.DATE: "string",
    ColumnType.DATETIME: "string",
}
_TABLE_SCHEMA_TYPES = {
    ColumnType.STRING: "string",
    ColumnType.CATEGORY: "string",
    ColumnType.INTEGER: "integer",
    ColumnType.NUMBER: "number",
    ColumnType.BOOLEAN: "boolean",
    ColumnType.DATE: "date",
    ColumnType.DATETIME: "datetime",
}


def schema_file_name(table: str) -> str:
    """The file a table's JSON Schema is written to (``episode.schema.json``)."""
    return f"{table}.schema.json"


def schema_id(cdm: CommonDataModel, table: str) -> str:
    """A stable identifier for a table's schema at one CDM version (a URN, no host)."""
    return f"urn:cleanroom:cdm:{cdm.version}:{table}"


def _number(value: float) -> int | float:
    """Whole bounds written as integers (``0``, not ``0.0``), so integer columns read right."""
    return int(value) if float(value).is_integer() else value


def _unit_text(column: Column) -> str:
    if not column.unit:
        return ""
    text = f" Unit: {column.unit}."
    if column.alternate_units:
        others = ", ".join(
            f"{label} ×{factor:g}" for label, factor in column.alternate_units.items()
        )
        text += f" Convert other units before validating ({others})."
    return text


def _description(column: Column) -> str:
    text = column.description.strip()
    if not text.endswith("."):
        text += "."
    text += _unit_text(column)
    if column.type is ColumnType.DATE:
        text += " Written as YYYY-MM-DD."
    elif column.type is ColumnType.DATETIME:
        text += " Written as YYYY-MM-DDThh:mm:ss, optionally with a UTC offset."
    if column.references:
        text += f" Refers to {column.references}."
    return text


def _annotations(column: Column, table: str) -> dict[str, Any]:
    """What the CDM says beyond types and constraints, as ``x-cleanroom-*`` keywords."""
    out: dict[str, Any] = {"x-cleanroom-class": column.identifier.value}
    codes = load_codes().column(table, column.name)
    if codes is not None:
        # The shared codes of a category column: the system, and each value's code in it.
        out["x-cleanroom-codes"] = {value: code.coding for value, code in codes.codes.items()}
    if column.unit:
        out["x-cleanroom-unit"] = column.unit
    if column.alternate_units:
        out["x-cleanroom-alternate-units"] = dict(column.alternate_units)
    if column.references:
        out["x-cleanroom-references"] = column.references
    if column.standard:
        out["x-cleanroom-standard"] = column.standard
    if column.synonyms:
        out["x-cleanroom-synonyms"] = list(column.synonyms)
    return out


# JSON Schema ----------------------------------------------------------------------------


def _property(column: Column, table: str) -> dict[str, Any]:
    json_type = _JSON_TYPES[column.type]
    prop: dict[str, Any] = {
        "title": column.name,
        "description": _description(column),
        # An optional column may be null (or left out); a required one never.
        "type": json_type if column.required else [json_type, "null"],
    }
    if column.allowed is not None:
        prop["enum"] = [*column.allowed] + ([] if column.required else [None])
    if column.minimum is not None:
        prop["minimum"] = _number(column.minimum)
    if column.maximum is not None:
        prop["maximum"] = _number(column.maximum)
    if column.type is ColumnType.DATE:
        prop["format"] = "date"
        prop["pattern"] = DATE_PATTERN
    elif column.type is ColumnType.DATETIME:
        # No "format": "date-time": RFC 3339 demands an offset the CDM does not.
        prop["pattern"] = DATETIME_PATTERN
    elif column.type is ColumnType.STRING and column.required:
        # The ingest reads a blank cell as missing, so a required text needs a character.
        prop["minLength"] = 1
        prop["pattern"] = r"\S"
    prop.update(_annotations(column, table))
    return prop


def json_schema(table: Table, cdm: CommonDataModel | None = None) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one row of ``table``."""
    cdm = cdm or load_cdm()
    return {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": schema_id(cdm, table.name),
        "title": f"{table.name} (Cleanroom CDM {cdm.version})",
        "description": (
            f"{table.description.strip()} Grain: {table.grain}. One row as a contributor maps "
            "it: CDM column names, canonical units, real dates, before de-identification."
        ),
        "type": "object",
        "properties": {column.name: _property(column, table.name) for column in table.columns},
        "required": [column.name for column in table.columns if column.required],
        "additionalProperties": False,
        "x-cleanroom-cdm-version": cdm.version,
        "x-cleanroom-table": table.name,
        "x-cleanroom-grain": table.grain,
        "x-cleanroom-primary-key": list(table.primary_key),
    }


def json_schemas(cdm: CommonDataModel | None = None) -> dict[str, dict[str, Any]]:
    """Table name -> JSON Schema of one row, in contract order."""
    cdm = cdm or load_cdm()
    return {table.name: json_schema(table, cdm) for table in cdm.tables}


# Frictionless ---------------------------------------------------------------------------


def _field(column: Column, table: str) -> dict[str, Any]:
    field: dict[str, Any] = {
        "name": column.name,
        "type": _TABLE_SCHEMA_TYPES[column.type],
        "format": "default",
        "description": _description(column),
    }
    constraints: dict[str, Any] = {}
    if column.required:
        constraints["required"] = True
    if column.allowed is not None:
        constraints["enum"] = list(column.allowed)
    if column.minimum is not None:
        constraints["minimum"] = _number(column.minimum)
    if column.maximum is not None:
        constraints["maximum"] = _number(column.maximum)
    if constraints:
        field["constraints"] = constraints
    field.update(_annotations(column, table))
    return field


def table_schema(table: Table, cdm: CommonDataModel | None = None) -> dict[str, Any]:
    """The Frictionless Table Schema of ``table``: fields, primary key, foreign keys."""
    cdm = cdm or load_cdm()
    schema: dict[str, Any] = {
        "fields": [_field(column, table.name) for column in table.columns],
        "missingValues": [""],
        "primaryKey": list(table.primary_key),
    }
    foreign = [
        {
            "fields": [rel.column],
            "reference": {"resource": rel.ref_table, "fields": [rel.ref_column]},
        }
        for rel in cdm.relationships
        if rel.table == table.name
    ]
    if foreign:
        schema["foreignKeys"] = foreign
    return schema


def data_package(cdm: CommonDataModel | None = None) -> dict[str, Any]:
    """The Frictionless Data Package: one tabular resource (``<table>.csv``) per table."""
    cdm = cdm or load_cdm()
    return {
        "profile": "tabular-data-package",
        "name": PACKAGE_NAME,
        "title": "Cleanroom common data model for cell and gene therapy process data",
        "description": (
            (cdm.description.strip() + " " if cdm.description else "")
            + "Put one CSV file per table, named after it, beside this file and validate the "
            "folder; rows use CDM column names, canonical units and real dates."
        ),
        "version": cdm.version,
        "resources": [
            {
                "profile": "tabular-data-resource",
                "name": table.name,
                "path": f"{table.name}.csv",
                "title": table.name,
                "description": f"{table.description.strip()} Grain: {table.grain}.",
                "format": "csv",
                "mediatype": "text/csv",
                "encoding": "utf-8",
                "schema": table_schema(table, cdm),
            }
            for table in cdm.tables
        ],
    }


# Files ----------------------------------------------------------------------------------


def _write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def write_export(fmt: str, out: Path, cdm: CommonDataModel | None = None) -> list[Path]:
    """Write the CDM in ``fmt`` (``jsonschema`` or ``frictionless``) into the folder ``out``
    (created if missing; files of the same names are replaced). Returns the files written."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}: choose one of {', '.join(FORMATS)}")
    cdm = cdm or load_cdm()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "frictionless":
        return [_write_json(out / PACKAGE_FILE, data_package(cdm))]
    return [
        _write_json(out / schema_file_name(name), schema)
        for name, schema in json_schemas(cdm).items()
    ]
