"""The common data model (CDM): load ``contracts/cdm.yaml`` strictly and render it as Markdown.

The YAML file is the contract sites map their columns onto; this module turns it into frozen
dataclasses and refuses a file that is ambiguous or inconsistent, naming the table, column and
problem, so that a typo in the contract never reaches the mapper or de-identification.

Run ``python -m contracts.markdown`` to print ``docs/cdm.md`` (this module's Markdown followed
by the FHIR mapping; ``scripts/update_docs.py`` writes it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

# The identifier classes are the de-identification library's vocabulary; the CDM assigns
# one to each column (re-exported here for the CDM's readers).
from anonymisation.identifiers import IdentifierClass

DEFAULT_PATH = Path(__file__).with_name("cdm.yaml")
CHANGELOG_PATH = Path(__file__).with_name("CDM-CHANGELOG.md")  # one entry per CDM version


class ColumnType(StrEnum):
    """Logical type of a column's values."""

    STRING = "string"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    DATE = "date"
    DATETIME = "datetime"
    CATEGORY = "category"


@dataclass(frozen=True)
class Column:
    """One CDM column: type, canonical unit and conversions, constraints, names in the wild."""

    name: str
    type: ColumnType
    description: str
    required: bool
    identifier: IdentifierClass
    unit: str | None = None
    alternate_units: Mapping[str, float] = field(default_factory=dict)  # label -> factor
    allowed: tuple[str, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    synonyms: tuple[str, ...] = ()
    references: str | None = None  # "episode.coi_id"
    standard: str | None = None


@dataclass(frozen=True)
class Table:
    """One CDM table with its grain, primary key and columns (in contract order)."""

    name: str
    description: str
    grain: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(
            f"table `{self.name}` has no column `{name}`; its columns are: "
            + ", ".join(self.column_names)
        )

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass(frozen=True)
class Relationship:
    """A foreign key: ``table.column`` refers to ``ref_table.ref_column``."""

    table: str
    column: str
    ref_table: str
    ref_column: str


@dataclass(frozen=True)
class CommonDataModel:
    """The whole contract: a version (semantic, ``MAJOR.MINOR.PATCH``) and its tables."""

    version: str
    tables: tuple[Table, ...]
    description: str = ""

    def table(self, name: str) -> Table:
        for table in self.tables:
            if table.name == name:
                return table
        raise KeyError(
            f"the common data model has no table `{name}`; its tables are: "
            + ", ".join(self.table_names)
        )

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tables)

    @property
    def relationships(self) -> tuple[Relationship, ...]:
        found = []
        for table in self.tables:
            for column in table.columns:
                if column.references:
                    ref_table, ref_column = column.references.split(".", 1)
                    found.append(Relationship(table.name, column.name, ref_table, ref_column))
        return tuple(found)


# Loading ---------------------------------------------------------------------------------

_TOP_KEYS = {"version", "description", "tables"}
_TABLE_KEYS = {"description", "grain", "primary_key", "columns"}
_COLUMN_REQUIRED = {"type", "description", "required", "identifier"}
_COLUMN_KEYS = _COLUMN_REQUIRED | {
    "unit",
    "alternate_units",
    "allowed",
    "minimum",
    "maximum",
    "synonyms",
    "references",
    "standard",
}
_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SEMVER_RE = re.compile(r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)$")
_NUMERIC = {ColumnType.INTEGER, ColumnType.NUMBER}


_SafeLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available


class _StrictLoader(_SafeLoader):
    """A safe loader that refuses duplicate mapping keys (YAML would keep the last silently)."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in result:
            line = key_node.start_mark.line + 1
            raise ValueError(f"duplicate key `{key}` on line {line}")
        result[key] = loader.construct_object(value_node)
    return result


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def normalise_name(name: str) -> str:
    """The form in which two column names count as the same: case, spacing and punctuation
    ignored (``Lot No.`` = ``lot_no``), ``µ`` read as ``u``."""
    text = name.casefold().replace("µ", "u").replace("μ", "u")
    return " ".join(re.sub(r"[^0-9a-z\u00c0-\u024f%+]+", " ", text).split())


def load_cdm(path: Path | None = None) -> CommonDataModel:
    """Load and validate the CDM; the default file is read once per process."""
    if path is None:
        return _load_default()
    return _load(Path(path))


_Built = TypeVar("_Built")


def read_contract(
    path: Path, build: Callable[[Any, CommonDataModel], _Built], cdm: CommonDataModel
) -> _Built:
    """A YAML file that goes with the data model (``codes.yaml``, ``fhir_r5.yaml``), read
    safely and built by ``build`` against ``cdm``; every error names the file."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    try:
        return build(raw, cdm)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def cdm_version(path: Path | None = None) -> str:
    """The contract's semantic version (``"1.0.0"``), as declared in its YAML file."""
    return load_cdm(path).version


@lru_cache(maxsize=1)
def _load_default() -> CommonDataModel:
    return _load(DEFAULT_PATH)


def _load(path: Path) -> CommonDataModel:
    try:
        text = path.read_text(encoding="utf-8")
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML: {err}") from None
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    try:
        return _build(raw)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def _unknown(keys: Iterable[Any], allowed: set[str], where: str) -> None:
    extra = sorted(str(k) for k in keys if k not in allowed)
    if extra:
        raise ValueError(
            f"{where}: unknown key(s) {', '.join(f'`{k}`' for k in extra)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _text(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: must be a non-empty string, not {value!r}")
    return value.strip()


def _number(value: Any, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: must be a finite number, not {value!r}")
    return float(value)


def _build(raw: Any) -> CommonDataModel:
    if not isinstance(raw, dict):
        raise ValueError("the file must be a mapping with `version` and `tables`")
    _unknown(raw, _TOP_KEYS, "top level")
    version = raw.get("version")
    if isinstance(version, int | float) and not isinstance(version, bool):
        raise ValueError(
            f'top level: `version` must be a quoted string such as "1.0.0", '
            f"not the number {version!r}"
        )
    version = _text(version, "top level: `version`")
    if not _SEMVER_RE.match(version or ""):
        raise ValueError(
            f"top level: `version` must be a semantic version MAJOR.MINOR.PATCH such as "
            f'"1.0.0", not {version!r}'
        )
    description = _text(raw.get("description"), "top level: `description`", optional=True)
    tables_raw = raw.get("tables")
    if not isinstance(tables_raw, dict) or not tables_raw:
        raise ValueError("top level: `tables` must be a non-empty mapping of table name to table")
    tables = tuple(_build_table(name, spec) for name, spec in tables_raw.items())
    cdm = CommonDataModel(version=version or "", tables=tables, description=description or "")
    _check_references(cdm)
    return cdm


def _build_table(name: Any, spec: Any) -> Table:
    where = f"table `{name}`"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}: table names are lower_snake_case")
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a mapping with {', '.join(sorted(_TABLE_KEYS))}")
    _unknown(spec, _TABLE_KEYS, where)
    missing = sorted(_TABLE_KEYS - set(spec))
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(f'`{k}`' for k in missing)}")
    description = _text(spec["description"], f"{where}: `description`") or ""
    grain = _text(spec["grain"], f"{where}: `grain`") or ""
    columns_raw = spec["columns"]
    if not isinstance(columns_raw, dict) or not columns_raw:
        raise ValueError(f"{where}: `columns` must be a non-empty mapping of column name to spec")
    columns = tuple(_build_column(name, col, col_spec) for col, col_spec in columns_raw.items())
    by_name = {c.name: c for c in columns}
    pk = spec["primary_key"]
    if not isinstance(pk, list) or not pk or not all(isinstance(k, str) for k in pk):
        raise ValueError(f"{where}: `primary_key` must be a non-empty list of column names")
    for key in pk:
        if key not in by_name:
            raise ValueError(f"{where}: primary key names missing column `{key}`")
        if not by_name[key].required:
            raise ValueError(f"{where}: primary key column `{key}` must be required")
    if len(set(pk)) != len(pk):
        raise ValueError(f"{where}: `primary_key` lists a column twice")
    _check_synonyms(name, columns)
    return Table(name, description, grain, tuple(pk), columns)


def _build_column(table: str, name: Any, spec: Any) -> Column:
    where = f"table `{table}`, column `{name}`"
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"{where}: column names are lower_snake_case")
    if not isinstance(spec, dict):
        raise ValueError(
            f"{where}: must be a mapping with at least " + ", ".join(sorted(_COLUMN_REQUIRED))
        )
    _unknown(spec, _COLUMN_KEYS, where)
    missing = sorted(_COLUMN_REQUIRED - set(spec))
    if missing:
        raise ValueError(f"{where}: missing key(s) {', '.join(f'`{k}`' for k in missing)}")
    try:
        ctype = ColumnType(spec["type"])
    except ValueError:
        raise ValueError(
            f"{where}: unknown type {spec['type']!r} "
            f"(one of {', '.join(t.value for t in ColumnType)})"
        ) from None
    try:
        identifier = IdentifierClass(spec["identifier"])
    except ValueError:
        raise ValueError(
            f"{where}: unknown identifier class {spec['identifier']!r} "
            f"(one of {', '.join(i.value for i in IdentifierClass)})"
        ) from None
    if not isinstance(spec["required"], bool):
        raise ValueError(f"{where}: `required` must be true or false, not {spec['required']!r}")
    description = _text(spec["description"], f"{where}: `description`") or ""
    unit = _text(spec.get("unit"), f"{where}: `unit`", optional=True)
    alternate = _alternate_units(spec.get("alternate_units"), unit, where)
    allowed = _allowed(spec.get("allowed"), ctype, where)
    minimum = _number(spec.get("minimum"), f"{where}: `minimum`")
    maximum = _number(spec.get("maximum"), f"{where}: `maximum`")
    if (minimum is not None or maximum is not None) and ctype not in _NUMERIC:
        raise ValueError(
            f"{where}: `minimum`/`maximum` need type integer or number, not {ctype.value}"
        )
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"{where}: `minimum` {minimum:g} is above `maximum` {maximum:g}")
    synonyms_raw = spec.get("synonyms", [])
    if not isinstance(synonyms_raw, list):
        raise ValueError(f"{where}: `synonyms` must be a list of strings")
    synonyms = tuple(_text(s, f"{where}: synonym") or "" for s in synonyms_raw)
    references = _text(spec.get("references"), f"{where}: `references`", optional=True)
    if references is not None and not re.fullmatch(r"[a-z][a-z0-9_]*\.[a-z][a-z0-9_]*", references):
        raise ValueError(f"{where}: `references` must read `table.column`, not {references!r}")
    standard = _text(spec.get("standard"), f"{where}: `standard`", optional=True)
    return Column(
        name=name,
        type=ctype,
        description=description,
        required=spec["required"],
        identifier=identifier,
        unit=unit,
        alternate_units=MappingProxyType(alternate),  # read-only: the default CDM is shared
        allowed=allowed,
        minimum=minimum,
        maximum=maximum,
        synonyms=synonyms,
        references=references,
        standard=standard,
    )


def _alternate_units(raw: Any, unit: str | None, where: str) -> dict[str, float]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: `alternate_units` must map a unit label to a factor")
    if unit is None:
        raise ValueError(f"{where}: `alternate_units` needs a canonical `unit` to convert into")
    factors: dict[str, float] = {}
    for label, factor in raw.items():
        label_text = _text(label, f"{where}: alternate unit label")
        value = _number(factor, f"{where}: alternate unit `{label}`")
        if value is None or value <= 0:
            raise ValueError(
                f"{where}: alternate unit `{label}` needs a positive factor, not {factor!r}"
            )
        if label_text == unit:
            raise ValueError(f"{where}: alternate unit `{label}` is the canonical unit")
        factors[label_text or ""] = value
    return factors


def _allowed(raw: Any, ctype: ColumnType, where: str) -> tuple[str, ...] | None:
    if ctype is ColumnType.CATEGORY and raw is None:
        raise ValueError(f"{where}: a category needs an `allowed` list")
    if raw is None:
        return None
    if ctype is not ColumnType.CATEGORY:
        raise ValueError(f"{where}: `allowed` is only for type category, not {ctype.value}")
    if not isinstance(raw, list) or not raw or not all(isinstance(v, str) for v in raw):
        raise ValueError(
            f"{where}: `allowed` must be a non-empty list of strings "
            "(quote values YAML would read as booleans or numbers)"
        )
    if len(set(raw)) != len(raw):
        raise ValueError(f"{where}: `allowed` lists a value twice")
    return tuple(raw)


def _check_synonyms(table: str, columns: tuple[Column, ...]) -> None:
    """A site column name must map to at most one column of a table."""
    owner: dict[str, str] = {}
    for column in columns:
        for name in (column.name, *column.synonyms):
            key = normalise_name(name)
            if not key:
                raise ValueError(
                    f"table `{table}`, column `{column.name}`: synonym {name!r} "
                    "has no letters or digits"
                )
            other = owner.setdefault(key, column.name)
            if other != column.name:
                raise ValueError(
                    f"table `{table}`: synonym {name!r} of column `{column.name}` would also "
                    f"map to column `{other}`; keep it on one column only"
                )


def _check_references(cdm: CommonDataModel) -> None:
    tables = {t.name: t for t in cdm.tables}
    for table in cdm.tables:
        for column in table.columns:
            if column.references is None:
                continue
            where = f"table `{table.name}`, column `{column.name}`"
            ref_table, ref_column = column.references.split(".", 1)
            if ref_table not in tables:
                raise ValueError(f"{where}: references missing table `{ref_table}`")
            target = tables[ref_table]
            if ref_column not in target.column_names:
                raise ValueError(f"{where}: references missing column `{column.references}`")
            if target.primary_key != (ref_column,):
                raise ValueError(
                    f"{where}: references `{column.references}`, which is not "
                    f"the primary key of `{ref_table}`"
                )
            if target.column(ref_column).type != column.type:
                raise ValueError(
                    f"{where}: type {column.type.value} differs from the type of "
                    f"`{column.references}` ({target.column(ref_column).type.value})"
                )


# Markdown --------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _constraint(column: Column) -> str:
    if column.allowed:
        return ", ".join(f"`{v}`" for v in column.allowed)
    if column.minimum is not None or column.maximum is not None:
        low = "" if column.minimum is None else f"{column.minimum:g}"
        high = "" if column.maximum is None else f"{column.maximum:g}"
        return f"{low} – {high}"
    return ""


def _unit(column: Column) -> str:
    if not column.unit:
        return ""
    text = column.unit
    if column.alternate_units:
        alts = ", ".join(f"{k} ×{v:g}" for k, v in column.alternate_units.items())
        text += f" (also {alts})"
    return text


def render_markdown(cdm: CommonDataModel) -> str:
    """The CDM as Markdown: its tables and the contract section (``docs/cdm.md`` adds the
    FHIR mapping after it: :func:`contracts.markdown.cdm_document`)."""
    out = [
        "# Common data model",
        "",
        "<!-- Generated from contracts/cdm.yaml by scripts/update_docs.py; do not edit. -->",
        "",
        f"Version **{cdm.version}**. The contract every contributed dataset is mapped onto: "
        "each site keeps its own column names, units and date formats, and the mapper "
        "matches them to these columns by their synonyms, converts values into the "
        "canonical unit (a value in an alternate unit is multiplied by its factor) and checks "
        "the allowed values and ranges.",
        "",
        "Identifier classes tell de-identification what to do: `direct_identifier` is "
        "dropped, `linkable_identifier` becomes a keyed pseudonym (the same in every table), "
        "`quasi_identifier` is generalised (dates become day offsets from the episode's first "
        "collection, ages become bands), `free_text` is scrubbed or dropped, `sensitive` "
        "values are guarded by disclosure control, `safe` passes.",
        "",
        "## Tables",
        "",
        "| table | grain | primary key | columns |",
        "| --- | --- | --- | --- |",
    ]
    for table in cdm.tables:
        pk = ", ".join(f"`{k}`" for k in table.primary_key)
        out.append(
            f"| [`{table.name}`](#{table.name}) | {_cell(table.grain)} | {pk} "
            f"| {len(table.columns)} |"
        )
    out += [
        "",
        "## Relationships",
        "",
        "| column | refers to |",
        "| --- | --- |",
    ]
    for rel in cdm.relationships:
        out.append(f"| `{rel.table}.{rel.column}` | `{rel.ref_table}.{rel.ref_column}` |")
    for table in cdm.tables:
        out += [
            "",
            f"## {table.name}",
            "",
            _cell(table.description),
            "",
            f"Grain: {table.grain}. Primary key: "
            + ", ".join(f"`{k}`" for k in table.primary_key)
            + ".",
            "",
            "| column | type | unit | allowed / range | required | identifier class "
            "| synonyms | standard | description |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for c in table.columns:
            ref = f" → `{c.references}`" if c.references else ""
            out.append(
                "| "
                + " | ".join(
                    [
                        f"`{c.name}`{ref}",
                        c.type.value,
                        _cell(_unit(c)),
                        _cell(_constraint(c)),
                        "yes" if c.required else "no",
                        c.identifier.value,
                        _cell(", ".join(c.synonyms)),
                        _cell(c.standard or ""),
                        _cell(c.description),
                    ]
                )
                + " |"
            )
    out += ["", _CONTRACT_SECTION.format(version=cdm.version).rstrip()]
    return "\n".join(out) + "\n"


# Hand-written, kept here because docs/cdm.md is generated whole from this module.
_CONTRACT_SECTION = """\
## The CDM as a data contract

The model is a contract other projects can build on, not only Cleanroom's own format.

**Versions.** This is version {version}. The version is a semantic version: a new *major*
version can make a valid file invalid or change what a value means (a column removed or
renamed, a range narrowed, an allowed value withdrawn, an optional column made required);
a new *minor* version only adds (a table, an optional column, an allowed value, a wider
range); a *patch* changes wording, synonyms or references to standards. Each version is
described in `contracts/CDM-CHANGELOG.md`, newest first. `cleanroom cdm version` prints the
current one; in Python, `contracts.cdm.cdm_version()`.

**Exports.** Two standard forms of the same contract, written by
`cleanroom cdm export --format jsonschema|frictionless --out FOLDER` (or returned as
dictionaries by `contracts.export.json_schemas()` and `contracts.export.data_package()`):

- `jsonschema`: one JSON Schema (draft 2020-12) per table, `<table>.schema.json`, for one
  row as a JSON object: each column's type, the required columns, allowed values as `enum`,
  ranges as `minimum`/`maximum`, dates as `YYYY-MM-DD` and times as `YYYY-MM-DDThh:mm:ss`
  (a UTC offset allowed); an optional column may be `null` or left out, an unknown column
  is refused. Unit and description are in each column's `description`; what JSON Schema
  cannot express is in annotations validators ignore: `x-cleanroom-class` (the identifier
  class), `x-cleanroom-unit`, `x-cleanroom-alternate-units`, `x-cleanroom-references`,
  `x-cleanroom-standard`, `x-cleanroom-synonyms`, `x-cleanroom-codes` (a category
  column's shared codes, see below), and per table
  `x-cleanroom-primary-key` and `x-cleanroom-cdm-version`.
- `frictionless`: a Frictionless Data Package, `datapackage.json`, with one tabular
  resource per table (`<table>.csv`); each Table Schema lists the fields with their `type`,
  `constraints` (`required`, `enum`, `minimum`, `maximum`) and `description`, the primary
  key and the foreign keys of the relationships above.

Both describe rows as a contributor maps them: CDM column names, canonical units (convert
the alternate units first), real dates, before de-identification. The pool researchers
query differs: identifiers are pseudonyms, dates are day offsets, direct identifiers are
gone.

**Using them in another project.** Export once and keep the files with the project,
named by version. To check rows a system produces before sending them, validate each
row with any draft 2020-12 validator, for example in Python
`jsonschema.Draft202012Validator(schema).iter_errors(row)`. To check a folder of CSV files,
write one file per table named after it (`episode.csv`, `batch.csv`, …) beside
`datapackage.json` and run `frictionless validate datapackage.json`; it checks types,
required cells, allowed values, ranges, primary keys and the references between the files.
When the CDM's major version changes, read its changelog entry before updating the files.
"""
