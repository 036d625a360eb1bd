"""HL7 FHIR R5 in and out of the common data model, driven by ``contracts/fhir_r5.yaml``.

``read_fhir`` takes a ``Bundle`` (JSON) or bulk-data NDJSON (one resource per line, read line
by line), validates every resource with ``fhir.resources`` and maps it through the YAML onto
one DataFrame per CDM table, relinking keys through resource references; its report lists
what was mapped, what was not (unknown resource types, unmappable elements, references to
resources that are not in the upload, invalid resources with the validator's message), so
that nothing is dropped silently. ``write_fhir`` is the inverse: CDM rows to R5 resources,
each validated before it is written. Hostile input is refused with a ``FhirError`` whose
message says what is wrong and what to do.

No Flask, no database: the hub passes a path or bytes and gets DataFrames back.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import uuid
from collections import Counter, deque
from collections.abc import Collection, Iterable, Iterator, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cache, lru_cache
from multiprocessing import get_context
from pathlib import Path
from typing import IO, Any, Literal, overload

import pandas as pd
from fhir.resources import get_fhir_model_class
from pydantic import ValidationError

from contracts.cdm import Column, ColumnType, CommonDataModel, load_cdm, read_contract
from contracts.codes import load_codes

DEFAULT_MAPPING = Path(__file__).with_name("fhir_r5.yaml")

MAX_BYTES = 1 << 30  # 1 GiB
MAX_RESOURCES = 2_000_000
MAX_DEPTH = 32  # FHIR resources of the mapped types nest about 8 levels deep
_LISTED = 50  # problems listed one by one in the report; the rest are counted
WITHHELD_SYSTEM = "urn:cleanroom:cdm:withheld"
"""``meta.tag`` system naming a CDM column (``table.column``) the exporting hub left out of
a resource because its de-identified values have no FHIR form (ages as bands, dates as day
offsets): an importing hub keeps rows without it instead of holding them back."""

_BUNDLE_TYPES_READ = {"collection", "transaction", "batch", "searchset", "document"}
_BUNDLE_TYPES_REFUSED = {
    "history": "holds several versions of the same resources, not one set of records",
    "transaction-response": "is a server's answer to a transaction, not a set of records",
    "batch-response": "is a server's answer to a batch, not a set of records",
    "subscription-notification": "is a notification, not a set of records",
    "message": "is a message; send its resources as a collection Bundle or as NDJSON",
}
# Sub-elements that carry no CDM information wherever they appear (codings' systems and
# labels, identifiers' use); reporting them as unmapped would only be noise.
_QUIET = {"id", "system", "display", "use", "version", "userSelected", "text", "type"}


class FhirError(ValueError):
    """A FHIR upload or export that cannot be processed; the message is meant for the person
    who sent it (what is wrong, where, and what to do)."""


# The mapping file ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Step:
    name: str
    index: int | None = None  # [0]
    every: bool = False  # []
    conds: tuple[tuple[tuple[_Step, ...], str], ...] = ()  # [system=...,code=...]
    sig: str = field(default="", compare=False)  # the selector's keys as text, for indexing
    keys: tuple[tuple[_Step, ...], ...] = field(default=(), compare=False)
    wants: tuple[str, ...] = field(default=(), compare=False)


@dataclass(frozen=True)
class ColumnMap:
    """How one CDM column is read from and written to a resource."""

    column: Column
    paths: tuple[tuple[_Step, ...], ...]  # read: first with a value; write: the first
    text: tuple[str, ...]  # the paths as written in the YAML (for the docs)
    also: tuple[_Step, ...] | None = None
    ref: str | None = None  # the referenced resource's column
    to: tuple[str, ...] = ()  # profiles a reference may point to
    values: Mapping[str, Any] = field(default_factory=dict)  # FHIR code -> CDM value
    placeholder: str | None = None
    kind: str = "primitive"  # primitive | quantity | concept | reference


@dataclass(frozen=True)
class Profile:
    """One kind of resource and the CDM table it fills."""

    name: str
    resource: str
    table: str
    key: str | None
    key_system: str | None
    when: tuple[str, tuple[tuple[_Step, ...], ...], tuple[str, ...]] | None  # kind, paths, text
    fixed: Mapping[str, Any]
    columns: tuple[ColumnMap, ...]

    def matches(self, resource: Mapping[str, Any]) -> bool:
        if resource.get("resourceType") != self.resource:
            return False
        if self.when is None:
            return True
        found = any(_first(resource, steps) is not None for steps in self.when[1])
        return found if self.when[0] == "any_of" else not found


@dataclass(frozen=True)
class _Unit:
    ucum: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class FhirMapping:
    """The whole mapping: identifier systems, units and one profile per CDM table."""

    version: str
    fhir_version: str
    systems: Mapping[str, str]
    units: tuple[_Unit, ...]
    profiles: tuple[Profile, ...]
    ignored: frozenset[str]
    not_mapped: Mapping[str, str]
    cdm: CommonDataModel

    def profile(self, name: str) -> Profile:
        for profile in self.profiles:
            if profile.name == name:
                return profile
        raise KeyError(name)

    def for_table(self, table: str) -> Profile | None:
        for profile in self.profiles:
            if profile.table == table:
                return profile
        return None

    def profile_for(self, resource: Mapping[str, Any]) -> Profile | None:
        for profile in self.profiles:
            if profile.matches(resource):
                return profile
        return None

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(p.resource for p in self.profiles)

    def factor(self, column: Column, code: str | None, unit: str | None) -> float | None:
        """The factor converting a Quantity in (UCUM ``code`` or ``unit`` text) into the
        column's unit; None when it cannot be converted."""
        labels: list[str] = []
        for entry in self.units:
            if code is not None and entry.ucum == code:
                labels.extend(entry.labels)
        if code is None and unit is not None:
            labels.append(unit)
            for entry in self.units:
                if unit == entry.ucum:
                    labels.extend(entry.labels)
        for label in labels:
            if label == column.unit:
                return 1.0
            if label in column.alternate_units:
                return float(column.alternate_units[label])
        return None

    def ucum(self, label: str) -> str | None:
        for entry in self.units:
            if label in entry.labels:
                return entry.ucum
        return None


_STEP_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)(?:\[(.*)\])?$")


def _split(path: str) -> list[str]:
    """Split on dots outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(path):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "." and depth == 0:
            parts.append(path[start:i])
            start = i + 1
    parts.append(path[start:])
    return parts


def _parse_path(path: str, systems: Mapping[str, str], where: str) -> tuple[_Step, ...]:
    steps = []
    for part in _split(path):
        match = _STEP_RE.match(part)
        if not match:
            raise ValueError(f"{where}: cannot read the path {path!r} at {part!r}")
        name, selector = match.group(1), match.group(2)
        if selector is None:
            steps.append(_Step(name))
        elif selector == "":
            steps.append(_Step(name, every=True))
        elif selector.isdigit():
            steps.append(_Step(name, index=int(selector)))
        else:
            conds = []
            for cond in _split_conds(selector):
                key, sep, value = cond.partition("=")
                if not sep or not key:
                    raise ValueError(f"{where}: a selector reads key=value, not {cond!r}")
                conds.append((_parse_path(key, systems, where), _system(value, systems, where)))
            keys = [c.partition("=")[0] for c in _split_conds(selector)]
            steps.append(
                _Step(
                    name,
                    conds=tuple(conds),
                    sig=",".join(keys),
                    keys=tuple(k for k, _ in conds),
                    wants=tuple(v for _, v in conds),
                )
            )
    return tuple(steps)


def _split_conds(selector: str) -> list[str]:
    return [c.strip() for c in selector.split(",") if c.strip()]


def _system(value: str, systems: Mapping[str, str], where: str) -> str:
    if value.startswith("@"):
        if value[1:] not in systems:
            raise ValueError(f"{where}: unknown system {value!r} (declare it under `systems`)")
        return systems[value[1:]]
    return value


_PROFILE_KEYS = {"resource", "table", "key", "key_system", "when", "fixed", "columns"}
_COLUMN_KEYS = {"path", "also", "ref", "to", "map", "placeholder", "property", "extension", "value"}


def load_mapping(path: Path | None = None, cdm: CommonDataModel | None = None) -> FhirMapping:
    """Load and check the mapping against the CDM; the default file is read once."""
    if path is None and cdm is None:
        return _default_mapping()
    return _load_mapping(Path(path or DEFAULT_MAPPING), cdm or load_cdm())


@lru_cache(maxsize=1)
def _default_mapping() -> FhirMapping:
    return _load_mapping(DEFAULT_MAPPING, load_cdm())


def _load_mapping(path: Path, cdm: CommonDataModel) -> FhirMapping:
    return read_contract(path, _build_mapping, cdm)


def _build_mapping(raw: Any, cdm: CommonDataModel) -> FhirMapping:
    if not isinstance(raw, dict):
        raise ValueError("the mapping must be a YAML mapping with `systems`, `units`, `profiles`")
    systems = {str(k): str(v) for k, v in (raw.get("systems") or {}).items()}
    for needed in ("property", "extension", "cdm", "ucum"):
        if needed not in systems:
            raise ValueError(f"`systems` must declare `{needed}`")
    units = tuple(_Unit(str(u["ucum"]), tuple(str(x) for x in u["labels"])) for u in raw["units"])
    profiles = []
    for name, spec in (raw.get("profiles") or {}).items():
        profiles.append(_build_profile(str(name), spec, systems, cdm))
    names = [p.name for p in profiles]
    for profile in profiles:
        for cmap in profile.columns:
            for target in cmap.to:
                if target not in names:
                    raise ValueError(
                        f"profile `{profile.name}`, column `{cmap.column.name}`: "
                        f"`to` names unknown profile `{target}`"
                    )
                other = next(p for p in profiles if p.name == target)
                if cmap.ref not in cdm.table(other.table).column_names:
                    raise ValueError(
                        f"profile `{profile.name}`, column `{cmap.column.name}`: "
                        f"table `{other.table}` has no column `{cmap.ref}`"
                    )
    not_mapped = {
        str(k): " ".join(str(v).split()) for k, v in (raw.get("not_mapped") or {}).items()
    }
    covered = {p.table for p in profiles} | set(not_mapped)
    missing = [t for t in cdm.table_names if t not in covered]
    if missing:
        raise ValueError(
            "CDM table(s) " + ", ".join(f"`{t}`" for t in missing) + " have no profile and are "
            "not listed under `not_mapped`"
        )
    return FhirMapping(
        version=str(raw.get("version", "")),
        fhir_version=str(raw.get("fhir_version", "")),
        systems=systems,
        units=units,
        profiles=tuple(profiles),
        ignored=frozenset(str(x) for x in raw.get("ignored") or ()),
        not_mapped=not_mapped,
        cdm=cdm,
    )


def _build_profile(
    name: str, spec: Any, systems: Mapping[str, str], cdm: CommonDataModel
) -> Profile:
    where = f"profile `{name}`"
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a mapping")
    extra = sorted(set(spec) - _PROFILE_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(extra)}")
    resource = str(spec["resource"])
    try:
        get_fhir_model_class(resource)
    except (KeyError, ValueError):
        raise ValueError(f"{where}: `{resource}` is not a FHIR R5 resource type") from None
    try:
        table = cdm.table(str(spec["table"]))
    except KeyError as err:
        raise ValueError(f"{where}: {err.args[0]}") from None
    when = None
    if spec.get("when"):
        ((kind, elements),) = spec["when"].items()
        if kind not in {"any_of", "none_of"}:
            raise ValueError(f"{where}: `when` is any_of: or none_of:, not {kind!r}")
        texts = tuple(str(e) for e in elements)
        when = (str(kind), tuple(_parse_path(t, systems, where) for t in texts), texts)
    fixed = _resolve_systems(spec.get("fixed") or {}, systems, where)
    columns = []
    for col_name, col_spec in (spec.get("columns") or {}).items():
        try:
            column = table.column(str(col_name))
        except KeyError as err:
            raise ValueError(f"{where}: {err.args[0]}") from None
        columns.append(_build_column(column, col_spec, systems, f"{where}, column `{col_name}`"))
    key = spec.get("key")
    if key is not None and key not in table.column_names:
        raise ValueError(f"{where}: key `{key}` is not a column of `{table.name}`")
    key_system = spec.get("key_system")
    return Profile(
        name=name,
        resource=resource,
        table=table.name,
        key=key,
        key_system=_system(str(key_system), systems, where) if key_system else None,
        when=when,
        fixed=fixed,
        columns=tuple(columns),
    )


def _resolve_systems(value: Any, systems: Mapping[str, str], where: str) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_systems(v, systems, where) for k, v in value.items()}
    if isinstance(value, str) and value.startswith("@"):
        return _system(value, systems, where)
    return value


def _build_column(column: Column, spec: Any, systems: Mapping[str, str], where: str) -> ColumnMap:
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: must be a mapping")
    extra = sorted(set(spec) - _COLUMN_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown key(s) {', '.join(extra)}")
    # `value` may list alternatives: the first is written, any is read (older files).
    raw_values = spec.get("value", "valueString")
    value_names = [str(v) for v in (raw_values if isinstance(raw_values, list) else [raw_values])]
    if "property" in spec:
        texts = [
            f"property[type.coding[].system=@property,type.coding[].code={spec['property']}]"
            f".{value}"
            for value in value_names
        ]
    elif "extension" in spec:
        texts = [
            f"extension[url={systems['extension']}{spec['extension']}].{value}"
            for value in value_names
        ]
    elif "path" in spec:
        raw_paths = spec["path"]
        texts = [str(p) for p in (raw_paths if isinstance(raw_paths, list) else [raw_paths])]
    else:
        raise ValueError(f"{where}: needs `path`, `property` or `extension`")
    paths = tuple(_parse_path(t, systems, where) for t in texts)
    last = paths[0][-1].name
    if "ref" in spec:
        kind = "reference"
    elif last in {"valueQuantity", "quantity"}:
        kind = "quantity"
    elif last == "valueCodeableConcept":
        kind = "concept"
    else:
        kind = "primitive"
    to = spec.get("to", ())
    values = spec.get("map") or {}
    return ColumnMap(
        column=column,
        paths=paths,
        text=tuple(texts),
        also=_parse_path(str(spec["also"]), systems, where) if spec.get("also") else None,
        ref=str(spec["ref"]) if spec.get("ref") else None,
        to=tuple([to] if isinstance(to, str) else to),
        values={str(k): v for k, v in values.items()},
        placeholder=str(spec["placeholder"]) if spec.get("placeholder") else None,
        kind=kind,
    )


# Walking resources --------------------------------------------------------------------------


def _matches(element: Any, conds: tuple[tuple[tuple[_Step, ...], str], ...]) -> bool:
    return all(value in _all(element, steps) for steps, value in conds)


_Index = dict[tuple[Any, ...], Any]
_Cache = dict[tuple[int, str], _Index]


def _combos(element: Any, keys: tuple[tuple[_Step, ...], ...]) -> Iterator[tuple[Any, ...]]:
    values = [[v for v in _all(element, k) if isinstance(v, str | int)] for k in keys]
    return itertools.product(*values)


def _select(items: list[Any], step: _Step, cache: _Cache | None) -> Any:
    """The first element of ``items`` matching the step's selector. With a cache (one per
    resource), each list is indexed once by the values its selectors look at, so a resource
    with many properties costs one pass, not one per column."""
    if cache is None:
        return next((e for e in items if _matches(e, step.conds)), None)
    slot = (id(items), step.sig)
    index = cache.get(slot)
    if index is None:
        index = {}
        for element in items:
            for combo in _combos(element, step.keys):
                index.setdefault(combo, element)
        cache[slot] = index
    return index.get(step.wants)


def _all(node: Any, steps: tuple[_Step, ...]) -> list[Any]:
    """Every value the path reaches (lists fan out)."""
    nodes = [node]
    for step in steps:
        found: list[Any] = []
        for item in nodes:
            if not isinstance(item, dict):
                continue
            value = item.get(step.name)
            if value is None:
                continue
            seq = value if isinstance(value, list) else [value]
            if step.index is not None:
                seq = seq[step.index : step.index + 1]
            elif step.conds:
                seq = [e for e in seq if _matches(e, step.conds)]
            found.extend(seq)
        nodes = found
    return nodes


def _first(node: Any, steps: tuple[_Step, ...], cache: _Cache | None = None) -> Any:
    for step in steps:
        if not isinstance(node, dict):
            return None
        value = node.get(step.name)
        if value is None:
            return None
        if isinstance(value, list):
            if step.index is not None:
                value = value[step.index] if step.index < len(value) else None
            elif step.conds:
                value = _select(value, step, cache)
            else:
                value = value[0] if value else None
        elif step.conds and not _matches(value, step.conds):
            return None
        node = value
    return node


def _set(node: dict[str, Any], steps: tuple[_Step, ...], value: Any) -> None:
    """Write ``value`` at the path, creating elements (a selector's values are written into
    the element it creates; ``[]`` as the last step appends)."""
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        is_list = step.index is not None or step.every or bool(step.conds)
        if not is_list:
            if last:
                node[step.name] = value
                return
            node = node.setdefault(step.name, {})
            continue
        items = node.setdefault(step.name, [])
        if last:
            if step.every:
                items.append(value)
            else:
                items[:] = [value]
            return
        element = None
        if step.conds:
            element = next((e for e in items if _matches(e, step.conds)), None)
        elif items:
            element = items[0]
        if element is None:
            element = {}
            for cond_steps, cond_value in step.conds:
                _set(element, cond_steps, cond_value)
            items.append(element)
        node = element


def _depth(obj: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping as soon as it passes ``limit``."""
    stack = [(obj, 1)]
    deepest = 0
    while stack:
        node, level = stack.pop()
        if level > deepest:
            deepest = level
            if deepest > limit:
                return deepest
        if isinstance(node, dict):
            stack.extend((v, level + 1) for v in node.values() if isinstance(v, dict | list))
        elif isinstance(node, list):
            stack.extend((v, level + 1) for v in node if isinstance(v, dict | list))
    return deepest


# Reading --------------------------------------------------------------------------------------


@dataclass
class FhirIssue:
    """One resource that could not be taken, and why."""

    where: str  # "line 12" / "entry 3"
    resource: str  # "Observation/obs-1" or "Observation"
    message: str

    def __str__(self) -> str:
        return f"{self.where} ({self.resource}): {self.message}"


@dataclass
class FhirReport:
    """What an import did: nothing it could not map is left out of it."""

    resources: int = 0
    mapped: Counter[str] = field(default_factory=Counter)  # resource type -> count
    rows: dict[str, int] = field(default_factory=dict)  # CDM table -> rows
    unknown_types: Counter[str] = field(default_factory=Counter)
    unmapped_elements: Counter[str] = field(default_factory=Counter)  # "Type.path" -> count
    missing_references: list[str] = field(default_factory=list)
    missing_reference_count: int = 0
    invalid: list[FhirIssue] = field(default_factory=list)
    invalid_count: int = 0
    unconverted: Counter[str] = field(default_factory=Counter)  # "table.column: why" -> count
    withheld: Counter[str] = field(default_factory=Counter)  # "table.column" -> resources

    @property
    def ok(self) -> bool:
        return not self.invalid_count and not self.missing_reference_count

    def lines(self) -> list[str]:
        """The report in sentences for a data manager (the portal shows these)."""
        out = [f"{self.resources:,} resources read."]
        for rtype, n in sorted(self.mapped.items()):
            out.append(f"{rtype}: {n:,} mapped.")
        for table, n in self.rows.items():
            out.append(f"Table {table}: {n:,} rows.")
        for rtype, n in sorted(self.unknown_types.items()):
            out.append(f"{rtype}: {n:,} not mapped (the data model has no table for it).")
        for element, n in sorted(self.unmapped_elements.items()):
            out.append(f"{element}: present in {_count(n)}, not mapped to any column.")
        for text, n in sorted(self.unconverted.items()):
            out.append(f"{text} ({_count(n)}); left empty.")
        for column, n in sorted(self.withheld.items()):
            out.append(
                f"{column}: left out by the hub that exported this file (its de-identified "
                f"values have no FHIR form) in {_count(n)}; those rows are kept without it."
            )
        if self.missing_reference_count:
            out.append(
                f"{self.missing_reference_count:,} references point to resources that are "
                "not in the upload; those columns are left empty:"
            )
            out += [f"  {m}" for m in self.missing_references]
        if self.invalid_count:
            out.append(
                f"{self.invalid_count:,} resources are not valid FHIR R5 and were not taken:"
            )
            out += [f"  {issue}" for issue in self.invalid]
        return out


def _count(n: int) -> str:
    return f"{n:,} resource" if n == 1 else f"{n:,} resources"


@dataclass
class FhirImport:
    """One DataFrame per CDM table (columns named as the CDM's) and the report."""

    frames: dict[str, pd.DataFrame]
    report: FhirReport


Source = str | os.PathLike[str] | bytes | bytearray | memoryview


def read_fhir(
    source: Source,
    *,
    max_bytes: int = MAX_BYTES,
    max_resources: int = MAX_RESOURCES,
    max_depth: int = MAX_DEPTH,
    workers: int = 1,
    mapping: FhirMapping | None = None,
) -> FhirImport:
    """Read a FHIR R5 Bundle (JSON) or bulk-data NDJSON into CDM tables.

    With ``workers`` > 1, NDJSON is validated in that many worker processes while this one
    maps (worth it from some ten thousand resources; the workers take a second to start).

    Structural problems (not JSON, not FHIR, too large, too deep, duplicate ids, a Bundle of
    a type that is not a set of records) raise ``FhirError``; problems of single resources
    (invalid FHIR, references to missing resources, unknown types, unmappable elements) are
    listed in the report and the rest is mapped.
    """
    mapping = mapping or load_mapping()
    reader = _Reader(mapping, max_resources=max_resources, max_depth=max_depth)
    with _open(source, max_bytes) as stream:
        first = _first_content_line(stream)
        if first is None:
            raise FhirError("the file is empty; upload a FHIR R5 Bundle (JSON) or NDJSON")
        try:
            head = json.loads(first[1])
        except RecursionError:
            raise _too_deep(max_depth, f"line {first[0]}") from None
        except ValueError:
            head = None
        kind = head.get("resourceType") if isinstance(head, dict) else None
        if kind is not None and kind != "Bundle":
            reader.take(head, f"line {first[0]}", first[1].count(b"{") + first[1].count(b"["))
            _read_ndjson(stream, reader, first[0], workers)
            return reader.finish()
        rest = stream.read()
        text = first[1] + rest if head is None else first[1]
        if head is not None and rest.strip():
            if kind == "Bundle":
                raise FhirError(
                    f"line {first[0]} is a Bundle but more lines follow; NDJSON holds one "
                    "resource per line and no Bundles, a Bundle file holds one Bundle"
                )
            raise FhirError(
                f"line {first[0]} is not a FHIR resource: it has no `resourceType`; check "
                "that the file was exported as FHIR R5"
            )
        _read_bundle(text, reader, max_depth)
    return reader.finish()


def _open(source: Source, max_bytes: int) -> IO[bytes]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        if len(data) > max_bytes:
            raise _too_large(len(data), max_bytes)
        return io.BytesIO(data)
    path = Path(os.fspath(source))
    try:
        size = path.stat().st_size
    except OSError as err:
        raise FhirError(f"cannot read the file: {err.strerror}") from None
    if size > max_bytes:
        raise _too_large(size, max_bytes)
    return path.open("rb")


def _too_large(size: int, limit: int) -> FhirError:
    return FhirError(
        f"the file is {_mib(size)}, above the limit of {_mib(limit)} for a FHIR upload; "
        "split it into several NDJSON files"
    )


def _too_deep(limit: int, where: str) -> FhirError:
    return FhirError(
        f"{where}: the JSON is nested more than {limit} levels deep, which no FHIR R5 resource "
        "of the data model needs; check that the file was exported by a FHIR server"
    )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):,.1f} MiB" if n >= 1 << 20 else f"{n:,} bytes"


def _first_content_line(stream: IO[bytes]) -> tuple[int, bytes] | None:
    for number, line in enumerate(stream, start=1):
        if line.strip():
            return number, line
    return None


def _read_ndjson(stream: IO[bytes], reader: _Reader, after: int, workers: int) -> None:
    lines = ((n, line) for n, line in enumerate(stream, start=after + 1) if line.strip())
    if workers <= 1:
        for number, line in lines:
            _take_line(reader, number, line, _UNCHECKED)
        return
    # Validation is most of the work: worker processes validate chunks of lines ahead while
    # this process parses, maps and relinks them in order.
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
    try:
        pending: deque[tuple[list[tuple[int, bytes]], Future[list[str | None]] | None]]
        pending = deque()
        chunks = iter(lambda: list(itertools.islice(lines, _CHUNK_LINES)), [])
        for chunk in chunks:
            try:
                job: Future[list[str | None]] | None = pool.submit(
                    _validate_lines, [line for _, line in chunk], reader.max_depth
                )
            except BrokenProcessPool:
                job = None  # validated here instead
            pending.append((chunk, job))
            if len(pending) > workers:
                _take_chunk(reader, *pending.popleft())
        while pending:
            _take_chunk(reader, *pending.popleft())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _take_chunk(
    reader: _Reader, chunk: list[tuple[int, bytes]], job: Future[list[str | None]] | None
) -> None:
    verdicts: list[object] = [_UNCHECKED] * len(chunk)
    if job is not None:
        try:
            verdicts = list(job.result())
        except BrokenProcessPool:  # a worker died (killed, out of memory): validate here
            pass
    for (number, line), verdict in zip(chunk, verdicts, strict=True):
        _take_line(reader, number, line, verdict)


def _take_line(reader: _Reader, number: int, line: bytes, verdict: object) -> None:
    where = f"line {number}"
    try:
        obj = json.loads(line)
    except RecursionError:
        raise _too_deep(reader.max_depth, where) from None
    except ValueError as err:
        raise FhirError(
            f"{where} is not JSON ({_json_reason(err)}); NDJSON holds one complete FHIR "
            "resource per line"
        ) from None
    if not isinstance(obj, dict):
        raise FhirError(f"{where} is not a FHIR resource (a JSON object with `resourceType`)")
    if obj.get("resourceType") == "Bundle":
        raise FhirError(
            f"{where} is a Bundle; NDJSON holds one resource per line, not Bundles. "
            "Upload the Bundle as a file of its own"
        )
    reader.take(obj, where, line.count(b"{") + line.count(b"["), verdict=verdict)


def _json_reason(err: ValueError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at column {err.colno}"
    return "not UTF-8 text" if isinstance(err, UnicodeDecodeError) else str(err)


def _read_bundle(text: bytes, reader: _Reader, max_depth: int) -> None:
    try:
        bundle = json.loads(text)
    except RecursionError:
        raise _too_deep(max_depth, "the Bundle") from None
    except ValueError as err:
        raise FhirError(
            f"the file is not JSON ({_json_reason(err)}); upload a FHIR R5 Bundle (JSON) or "
            "NDJSON with one resource per line"
        ) from None
    if not isinstance(bundle, dict) or "resourceType" not in bundle:
        raise FhirError(
            "the file is JSON but not FHIR: it has no `resourceType`; upload a FHIR R5 Bundle "
            "or NDJSON"
        )
    rtype = bundle["resourceType"]
    if rtype != "Bundle":
        raise FhirError(
            f"the file holds a single {rtype} resource; upload a Bundle of resources or NDJSON "
            "(one resource per line)"
        )
    if text.count(b"{") + text.count(b"[") > max_depth and _depth(bundle, max_depth + 3) > (
        max_depth + 3
    ):  # Bundle, entry list, entry: three levels above a resource
        raise _too_deep(max_depth, "the Bundle")
    btype = bundle.get("type")
    if btype in _BUNDLE_TYPES_REFUSED:
        raise FhirError(f"the Bundle is of type `{btype}`, which {_BUNDLE_TYPES_REFUSED[btype]}")
    if btype not in _BUNDLE_TYPES_READ:
        raise FhirError(
            f"the Bundle's type is {btype!r}; a FHIR upload is a Bundle of type collection, "
            "transaction, batch, searchset or document"
        )
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise FhirError("the Bundle's `entry` is not a list of entries")
    for number, entry in enumerate(entries, start=1):
        where = f"entry {number}"
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            reader.report.unmapped_elements["Bundle.entry without a resource"] += 1
            continue
        if resource.get("resourceType") == "Bundle":
            raise FhirError(f"{where} is itself a Bundle; upload nested Bundles on their own")
        full_url = entry.get("fullUrl") if isinstance(entry.get("fullUrl"), str) else None
        reader.take(resource, where, 0, full_url=full_url, depth_checked=True)


_Ref = tuple[str, str, str]  # ("ref", reference, "") or ("ident", system, value)
_UNCHECKED = object()  # take() validates the resource itself
_CHUNK_LINES = 1000  # NDJSON lines per validation job when workers > 1


def _problem(obj: dict[str, Any], rtype: str) -> str | None:
    """Why a resource is not valid FHIR R5 (the validator's message), or None."""
    try:
        model = get_fhir_model_class(rtype)
    except (KeyError, ValueError):
        return f"`{rtype}` is not a FHIR R5 resource type"
    try:
        model.model_validate(obj)
    except ValidationError as err:
        return _validation_message(err)
    return None


def _validate_lines(lines: list[bytes], max_depth: int) -> list[str | None]:
    """Validation of NDJSON lines in a worker process. Lines the reader will refuse anyway
    (not JSON, too deep, no resourceType) get None: the reader says why, in order."""
    out: list[str | None] = []
    for line in lines:
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError):
            out.append(None)
            continue
        rtype = obj.get("resourceType") if isinstance(obj, dict) else None
        deep = line.count(b"{") + line.count(b"[") > max_depth and _depth(obj, max_depth) > (
            max_depth
        )
        out.append(None if deep or not isinstance(rtype, str) else _problem(obj, rtype))
    return out


class _Reader:
    """Collects mapped rows per profile; references are relinked in ``finish``."""

    def __init__(self, mapping: FhirMapping, *, max_resources: int, max_depth: int) -> None:
        self.mapping = mapping
        self.max_resources = max_resources
        self.max_depth = max_depth
        self.report = FhirReport()
        self.rows: dict[str, dict[str, list[Any]]] = {
            p.name: {c.column.name: [] for c in p.columns} for p in mapping.profiles
        }
        self.count: dict[str, int] = {p.name: 0 for p in mapping.profiles}
        self.where: dict[str, list[str]] = {p.name: [] for p in mapping.profiles}
        self.seen: dict[str, str] = {}  # "Type/id" -> where
        self.index: dict[str, tuple[str | None, int]] = {}  # reference -> (profile, row)
        self.trie = {p.name: _trie(p, mapping) for p in mapping.profiles}

    def take(
        self,
        obj: dict[str, Any],
        where: str,
        brackets: int,
        *,
        full_url: str | None = None,
        depth_checked: bool = False,
        verdict: object = _UNCHECKED,
    ) -> None:
        report = self.report
        report.resources += 1
        if report.resources > self.max_resources:
            raise FhirError(
                f"the upload holds more than {self.max_resources:,} resources, the limit for "
                "one FHIR upload; split it into several files"
            )
        if (
            not depth_checked
            and brackets > self.max_depth
            and _depth(obj, self.max_depth) > (self.max_depth)
        ):
            raise _too_deep(self.max_depth, where)
        rtype = obj.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise FhirError(
                f"{where} is not a FHIR resource: it has no `resourceType`; check that the "
                "file was exported as FHIR R5"
            )
        rid = obj.get("id")
        label = f"{rtype}/{rid}" if isinstance(rid, str) else rtype
        if isinstance(rid, str):
            other = self.seen.get(label)
            if other is not None:
                raise FhirError(
                    f"{where} repeats {label}, already at {other}; each resource must appear "
                    "once (remove the copy, or give it its own id)"
                )
            self.seen[label] = where
        problem = _problem(obj, rtype) if verdict is _UNCHECKED else verdict
        if problem is not None:
            self._invalid(where, label, str(problem))
            return
        profile = self.mapping.profile_for(obj)
        if profile is None:
            report.unknown_types[rtype] += 1
            self._register(label, full_url, None, -1)
            return
        row = self.count[profile.name]
        self.count[profile.name] += 1
        self.where[profile.name].append(label)
        self._register(label, full_url, profile.name, row)
        report.mapped[rtype] += 1
        columns = self.rows[profile.name]
        cache: _Cache = {}
        for cmap in profile.columns:
            columns[cmap.column.name].append(self._value(obj, cmap, profile, cache))
        meta = obj.get("meta")
        for tag in (meta.get("tag") or []) if isinstance(meta, dict) else []:
            if isinstance(tag, dict) and tag.get("system") == WITHHELD_SYSTEM:
                table, _, column = str(tag.get("code")).partition(".")
                if table == profile.table and any(c.column.name == column for c in profile.columns):
                    report.withheld[str(tag["code"])] += 1
        _unmapped(obj, self.trie[profile.name], rtype, report.unmapped_elements)

    def _register(self, label: str, full_url: str | None, profile: str | None, row: int) -> None:
        if "/" in label:
            self.index[label] = (profile, row)
        if full_url:
            self.index[full_url] = (profile, row)

    def _invalid(self, where: str, label: str, message: str) -> None:
        self.report.invalid_count += 1
        if len(self.report.invalid) < _LISTED:
            self.report.invalid.append(FhirIssue(where, label, message))

    def _value(self, obj: dict[str, Any], cmap: ColumnMap, profile: Profile, cache: _Cache) -> Any:
        if cmap.kind == "reference":
            refs: list[_Ref] = []
            for steps in cmap.paths:
                for ref in _all(obj, steps):
                    if not isinstance(ref, dict):
                        continue
                    if isinstance(ref.get("reference"), str):
                        refs.append(("ref", ref["reference"], ""))
                    elif isinstance(ref.get("identifier"), dict):
                        ident = ref["identifier"]
                        refs.append(("ident", str(ident.get("system")), str(ident.get("value"))))
            return refs
        value = None
        for steps in cmap.paths:
            value = _first(obj, steps, cache)
            if value is not None:
                break
        if value is None:
            return None
        column = cmap.column
        if cmap.kind == "quantity":
            return self._quantity(value, cmap, profile)
        if cmap.kind == "concept" and isinstance(value, dict):
            value = _concept_code(value, self.mapping.systems["cdm"])
        if cmap.placeholder is not None and value == cmap.placeholder:
            return None
        if cmap.values:
            if str(value) not in cmap.values:
                self.report.unconverted[
                    f"{column.name} ({profile.table}): code {value!r} has no meaning in the "
                    "data model"
                ] += 1
                return None
            return cmap.values[str(value)]
        return value

    def _quantity(self, value: Any, cmap: ColumnMap, profile: Profile) -> Any:
        if not isinstance(value, dict) or value.get("value") is None:
            return None
        number = value["value"]
        column = cmap.column
        if column.unit is None:
            return number
        factor = self.mapping.factor(column, value.get("code"), value.get("unit"))
        if factor is None:
            unit = value.get("code") or value.get("unit") or "no unit"
            self.report.unconverted[
                f"{column.name} ({profile.table}): unit `{unit}` cannot be converted into "
                f"{column.unit}"
            ] += 1
            return None
        return number * factor if factor != 1.0 else number

    def finish(self) -> FhirImport:
        frames: dict[str, pd.DataFrame] = {}
        resolved: dict[tuple[str, str], list[Any]] = {}
        for profile in self.mapping.profiles:
            n = self.count[profile.name]
            if not n:
                continue
            data = {}
            for cmap in profile.columns:
                values = self._column(profile, cmap, resolved, ())
                data[cmap.column.name] = self._typed(values, cmap.column, profile)
            frames[profile.table] = pd.DataFrame(data)
            self.report.rows[profile.table] = n
        return FhirImport(frames, self.report)

    def _column(
        self,
        profile: Profile,
        cmap: ColumnMap,
        resolved: dict[tuple[str, str], list[Any]],
        chain: tuple[tuple[str, str], ...],
    ) -> list[Any]:
        key = (profile.name, cmap.column.name)
        if key in resolved:
            return resolved[key]
        raw = self.rows[profile.name][cmap.column.name]
        if cmap.kind != "reference":
            resolved[key] = raw
            return raw
        if key in chain:  # a reference cycle in the mapping: leave it empty
            return [None] * len(raw)
        out: list[Any] = []
        for row, refs in enumerate(raw):
            out.append(self._resolve(profile, cmap, row, refs, resolved, (*chain, key)))
        resolved[key] = out
        return out

    def _resolve(
        self,
        profile: Profile,
        cmap: ColumnMap,
        row: int,
        refs: list[_Ref],
        resolved: dict[tuple[str, str], list[Any]],
        chain: tuple[tuple[str, str], ...],
    ) -> Any:
        best: tuple[int, Any] | None = None
        missing: list[str] = []
        for kind, a, b in refs:
            if kind == "ident":
                target = next((p for p in self.mapping.profiles if p.key_system == a), None)
                if target is None or target.name not in cmap.to:
                    continue
                rank = cmap.to.index(target.name)
                if cmap.ref == target.key:
                    value: Any = b
                else:
                    rows = self._key_rows(target, resolved)
                    if b not in rows:
                        missing.append(f"{a} {b}")
                        continue
                    value = self._column(target, _cmap(target, cmap.ref or ""), resolved, chain)[
                        rows[b]
                    ]
            else:
                hit = self.index.get(a) or self.index.get(_tail(a))
                if hit is None:
                    missing.append(a)
                    continue
                target_name, target_row = hit
                if target_name is None or target_name not in cmap.to:
                    continue
                target = self.mapping.profile(target_name)
                rank = cmap.to.index(target_name)
                value = self._column(target, _cmap(target, cmap.ref or ""), resolved, chain)[
                    target_row
                ]
            if value is not None and (best is None or rank < best[0]):
                best = (rank, value)
        if best is None and missing:
            self.report.missing_reference_count += 1
            if len(self.report.missing_references) < _LISTED:
                self.report.missing_references.append(
                    f"{self.where[profile.name][row]} ({cmap.column.name}) refers to "
                    f"{missing[0]}, which is not in the upload"
                )
        return None if best is None else best[1]

    def _key_rows(
        self, profile: Profile, resolved: dict[tuple[str, str], list[Any]]
    ) -> dict[Any, int]:
        cache_key = (profile.name, "\0keys")
        if cache_key not in resolved:
            keys = self.rows[profile.name][profile.key or ""]
            resolved[cache_key] = [{k: i for i, k in enumerate(keys) if k is not None}]
        rows: dict[Any, int] = resolved[cache_key][0]
        return rows

    def _typed(self, values: list[Any], column: Column, profile: Profile) -> pd.Series:
        ctype = column.type
        if ctype in {ColumnType.STRING, ColumnType.CATEGORY}:
            return pd.Series([None if v is None else str(v) for v in values], dtype=object)
        if ctype is ColumnType.NUMBER:
            return pd.Series(
                [
                    v if isinstance(v, int | float) and not isinstance(v, bool) else None
                    for v in values
                ],
                dtype="float64",
            )
        if ctype is ColumnType.INTEGER:
            out: list[int | None] = []
            for v in values:
                if isinstance(v, bool) or not isinstance(v, int | float):
                    out.append(None)
                elif float(v).is_integer():
                    out.append(int(v))
                else:
                    self.report.unconverted[
                        f"{column.name} ({profile.table}): {v!r} is not a whole number"
                    ] += 1
                    out.append(None)
            return pd.Series(pd.array(out, dtype="Int64"))
        if ctype is ColumnType.BOOLEAN:
            return pd.Series(
                pd.array([v if isinstance(v, bool) else None for v in values], dtype="boolean")
            )
        if ctype is ColumnType.DATE:
            texts = [v[:10] if isinstance(v, str) else None for v in values]
            parsed = pd.to_datetime(
                pd.Series(texts, dtype=object), format="%Y-%m-%d", errors="coerce"
            )
        else:  # datetime: the wall-clock time as written, the offset left aside
            texts = [_wall_clock(v) if isinstance(v, str) else None for v in values]
            parsed = pd.to_datetime(
                pd.Series(texts, dtype=object), format="ISO8601", errors="coerce"
            )
        bad = sum(1 for t, p in zip(texts, parsed, strict=True) if t is not None and pd.isna(p))
        if bad:
            self.report.unconverted[
                f"{column.name} ({profile.table}): partial dates (a year or a month only) cannot "
                "fill a date column"
            ] += bad
        return parsed.astype("datetime64[ns]")


def _concept_code(concept: Mapping[str, Any], cdm_system: str) -> Any:
    """A CodeableConcept's code: the CDM's own coding if it carries one, else its first (a
    standard code, which the upload's terms step then maps to the CDM's value)."""
    codings = [c for c in concept.get("coding") or () if isinstance(c, dict) and "code" in c]
    ours = [c for c in codings if c.get("system") == cdm_system]
    return (ours or codings or [{"code": None}])[0]["code"]


def _cmap(profile: Profile, column: str) -> ColumnMap:
    for cmap in profile.columns:
        if cmap.column.name == column:
            return cmap
    raise KeyError(column)


def _tail(reference: str) -> str:
    """``http://server/fhir/Patient/p1/_history/2`` -> ``Patient/p1``."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:])


def _wall_clock(text: str) -> str:
    if len(text) <= 10:
        return text
    return re.sub(r"(Z|[+-]\d\d:\d\d)$", "", text)


def _validation_message(err: ValidationError) -> str:
    parts = []
    for item in err.errors()[:3]:
        loc = ".".join(str(x) for x in item.get("loc", ()) if x != "__root__")
        msg = str(item.get("msg", "")).removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    more = err.error_count() - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def _trie(profile: Profile, mapping: FhirMapping) -> dict[str, Any]:
    """The element names a profile reads, as nested dicts; a leaf (``{}``) takes its whole
    subtree (a Quantity, a Reference)."""
    root: dict[str, Any] = {}

    def add(steps: Iterable[_Step], leaf: bool = True) -> None:
        node = root
        steps = list(steps)
        for i, step in enumerate(steps):
            child = node.setdefault(step.name, {})
            if step.conds:
                wants = child.setdefault("\0wants", {}).setdefault(step.sig, (step.keys, set()))
                wants[1].add(step.wants)
            else:
                child["\0any"] = True
            for cond_steps, _ in step.conds:
                add_into(child, cond_steps)
            if i == len(steps) - 1 and leaf:
                child["\0leaf"] = True
            node = child

    def add_into(node: dict[str, Any], steps: Iterable[_Step]) -> None:
        for step in steps:
            node = node.setdefault(step.name, {})
        node["\0leaf"] = True

    for cmap in profile.columns:
        for steps in cmap.paths:
            add(steps)
        if cmap.also:
            add(cmap.also)
    for name in profile.fixed:
        root.setdefault(name, {})["\0leaf"] = True
    for name in mapping.ignored:
        root.setdefault(name, {})["\0leaf"] = True
    if profile.when:
        for steps in profile.when[1]:
            add(steps, leaf=False)
    return root


def _unmapped(
    obj: Any, trie: dict[str, Any], prefix: str, counter: Counter[str], top: bool = True
) -> None:
    if trie.get("\0leaf") or not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if key in _QUIET and not top:
            continue
        child = trie.get(key)
        name = f"{prefix}.{key}"
        if child is None:
            if not key.startswith("_"):
                counter[_describe(name, value)] += 1
            continue
        wants = None if child.get("\0any") else child.get("\0wants")
        for item in value if isinstance(value, list) else [value]:
            if wants and not any(
                combo in want for keys, want in wants.values() for combo in _combos(item, keys)
            ):
                counter[_describe(name, item)] += 1
                continue
            _unmapped(item, child, name, counter, top=False)


def _describe(name: str, value: Any) -> str:
    """Name an unmapped element; list entries by what tells them apart."""
    item = value[0] if isinstance(value, list) and value else value
    if isinstance(item, dict):
        if "url" in item:
            return f"{name} ({item['url']})"
        if "type" in item and isinstance(item["type"], dict):
            codes = _all(item["type"], (_Step("coding"), _Step("code")))
            if codes:
                return f"{name} ({codes[0]})"
    return name


# Writing --------------------------------------------------------------------------------------

_ORDER = ("patient", "collection", "lot", "release_test", "dispense", "custody")
_NAMESPACE = uuid.UUID("7d5a3b1e-1f0c-4e0a-9d62-5c2f0f7c9a41")


@overload
def write_fhir(
    frames: Mapping[str, pd.DataFrame],
    *,
    form: Literal["bundle"] = "bundle",
    utc_offset: str = "+00:00",
    mapping: FhirMapping | None = None,
    withheld: Collection[str] = (),
) -> bytes: ...


@overload
def write_fhir(
    frames: Mapping[str, pd.DataFrame],
    *,
    form: Literal["ndjson"],
    utc_offset: str = "+00:00",
    mapping: FhirMapping | None = None,
    withheld: Collection[str] = (),
) -> Iterator[bytes]: ...


def write_fhir(
    frames: Mapping[str, pd.DataFrame],
    *,
    form: Literal["bundle", "ndjson"] = "bundle",
    utc_offset: str = "+00:00",
    mapping: FhirMapping | None = None,
    withheld: Collection[str] = (),
) -> bytes | Iterator[bytes]:
    """Build FHIR R5 resources from CDM rows, each validated with ``fhir.resources``.

    ``form="bundle"`` returns one collection Bundle (bytes); ``form="ndjson"`` returns an
    iterator of lines, one resource each, built as they are read. The CDM keeps custody
    timestamps as local wall-clock time; FHIR needs an offset with a time of day, so
    ``utc_offset`` is written with them (the site's offset when known). ``withheld`` names
    the columns (``table.column``) left out because their de-identified values have no FHIR
    form; each resource of the table says so in ``meta.tag`` (:data:`WITHHELD_SYSTEM`).
    """
    mapping = mapping or load_mapping()
    if form not in {"bundle", "ndjson"}:
        raise FhirError(f"unknown FHIR form {form!r}; choose bundle or ndjson")
    if not re.fullmatch(r"Z|[+-](0\d|1[0-4]):[0-5]\d", utc_offset):
        raise FhirError(f"utc_offset must read like +01:00 or Z, not {utc_offset!r}")
    plan = _plan(frames, mapping)
    if form == "ndjson":
        return _ndjson(plan, mapping, utc_offset, withheld)
    entries = [
        {"fullUrl": _urn(r), "resource": r}
        for r in _resources(plan, mapping, utc_offset, True, withheld)
    ]
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": entries}
    return json.dumps(bundle, ensure_ascii=False, separators=(",", ":")).encode()


def _ndjson(
    plan: list[tuple[Profile, pd.DataFrame]],
    mapping: FhirMapping,
    utc_offset: str,
    withheld: Collection[str],
) -> Iterator[bytes]:
    for resource in _resources(plan, mapping, utc_offset, False, withheld):
        yield json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"


def _urn(resource: Mapping[str, Any]) -> str:
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, resource['resourceType'] + '/' + resource['id'])}"


def _plan(
    frames: Mapping[str, pd.DataFrame], mapping: FhirMapping
) -> list[tuple[Profile, pd.DataFrame]]:
    plan = []
    for table, frame in frames.items():
        if table in mapping.not_mapped:
            raise FhirError(
                f"table `{table}` has no FHIR R5 form: {mapping.not_mapped[table]} "
                "Leave it out of the FHIR export."
            )
        profile = mapping.for_table(table)
        if profile is None:
            raise FhirError(
                f"`{table}` is not a table of the data model; the tables are: "
                + ", ".join(mapping.cdm.table_names)
            )
        known = {c.column.name for c in profile.columns}
        extra = [c for c in frame.columns if c not in known]
        if extra:
            raise FhirError(
                f"table `{table}`: column(s) {', '.join(f'`{c}`' for c in extra)} are not "
                "columns of the data model; rename or remove them before the export"
            )
        plan.append((profile, frame))
    plan.sort(key=lambda item: _ORDER.index(item[0].name) if item[0].name in _ORDER else 99)
    return plan


def _resources(
    plan: list[tuple[Profile, pd.DataFrame]],
    mapping: FhirMapping,
    utc_offset: str,
    urns: bool,
    withheld: Collection[str] = (),
) -> Iterator[dict[str, Any]]:
    ids: dict[str, dict[Any, str]] = {}  # profile -> key value -> reference
    for profile, frame in plan:
        if profile.key is None or profile.key not in frame.columns:
            continue
        refs = {}
        for number, key in enumerate(frame[profile.key].tolist(), start=1):
            if _present(key):
                head = {"resourceType": profile.resource, "id": _id(profile, number)}
                refs[key] = _urn(head) if urns else f"{profile.resource}/{head['id']}"
        ids[profile.name] = refs
    model_cache: dict[str, Any] = {}
    for profile, frame in plan:
        model = model_cache.setdefault(profile.resource, get_fhir_model_class(profile.resource))
        # The same for every row of the table: its withheld columns, and the standard code
        # (if any) of each coded column's values.
        tags = [
            {"system": WITHHELD_SYSTEM, "code": f"{profile.table}.{c.column.name}"}
            for c in profile.columns
            if f"{profile.table}.{c.column.name}" in withheld
        ]
        standard = {
            c.column.name: _standard_codings(profile.table, c.column.name)
            for c in profile.columns
            if c.kind == "concept"
        }
        records = frame.to_dict("records")
        for number, row in enumerate(records, start=1):
            resource: dict[str, Any] = {
                "resourceType": profile.resource,
                "id": _id(profile, number),
            }
            if tags:
                resource["meta"] = {"tag": [dict(tag) for tag in tags]}
            for name, value in profile.fixed.items():
                resource[name] = json.loads(json.dumps(value))  # a copy per resource
            for cmap in profile.columns:
                _write_column(
                    resource,
                    cmap,
                    row.get(cmap.column.name),
                    mapping,
                    ids,
                    utc_offset,
                    standard=standard.get(cmap.column.name),
                )
            try:
                model.model_validate(resource)
            except ValidationError as err:
                raise FhirError(
                    f"table `{profile.table}`, row {number}: does not make a valid "
                    f"{profile.resource}: {_validation_message(err)}"
                ) from None
            yield resource


def _id(profile: Profile, number: int) -> str:
    return f"{profile.name.replace('_', '-')}-{number}"


def _present(value: Any) -> bool:
    if value is None or value is pd.NaT or value is pd.NA:
        return False
    if isinstance(value, str):
        return bool(value.strip())
    return not (isinstance(value, float) and math.isnan(value))


def _write_column(
    resource: dict[str, Any],
    cmap: ColumnMap,
    value: Any,
    mapping: FhirMapping,
    ids: Mapping[str, Mapping[Any, str]],
    utc_offset: str,
    standard: Mapping[str, Mapping[str, str]] | None = None,
) -> None:
    column = cmap.column
    steps = cmap.paths[0]
    if not _present(value):
        if cmap.placeholder is not None:
            _set(resource, steps, cmap.placeholder)
        return
    if cmap.kind == "reference":
        target = mapping.profile(cmap.to[0])
        if cmap.ref != target.key:  # e.g. a custody unit by the DIN of its collection
            target = next(
                (mapping.profile(t) for t in cmap.to if mapping.profile(t).key == cmap.ref),
                target,
            )
        ref = ids.get(target.name, {}).get(value)
        if ref is not None:
            element: dict[str, Any] = {"reference": ref}
        else:  # not in this export: a logical reference by the key's identifier
            element = {
                "type": target.resource,
                "identifier": {"system": target.key_system, "value": str(value)},
            }
        _set(resource, steps, element)
        return
    if cmap.kind == "quantity":
        quantity: dict[str, Any] = {"value": _number(value)}
        if column.unit:
            code = mapping.ucum(column.unit)
            quantity["unit"] = column.unit
            if code is not None:
                quantity["system"] = mapping.systems["ucum"]
                quantity["code"] = code
        _set(resource, steps, quantity)
        return
    if cmap.values:
        reverse = {v: k for k, v in cmap.values.items()}
        out: Any = reverse.get(_plain(value), str(_plain(value)))
    else:
        out = _fhir_primitive(value, column, utc_offset)
    if cmap.kind == "concept":
        codings: list[dict[str, str]] = [{"system": mapping.systems["cdm"], "code": str(out)}]
        shared = (standard or {}).get(str(out))
        if shared is not None:  # the value's standard code beside it (contracts/codes.yaml)
            codings.append(dict(shared))
        out = {"coding": codings}
    _set(resource, steps, out)
    if cmap.also is not None:
        _set(resource, cmap.also, out)


@cache
def _standard_codings(table: str, column: str) -> Mapping[str, Mapping[str, str]]:
    """The standard code (SNOMED CT, HL7 ...) of each value of a category column that has
    one in the code book, as a FHIR Coding; the CDM's own codes are left out."""
    codes = load_codes().column(table, column)
    if codes is None:
        return {}
    return {value: code.coding for value, code in codes.codes.items() if code.standard}


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _number(value: Any) -> int | float:
    value = _plain(value)
    if isinstance(value, int):
        return value
    number = float(value)
    return int(number) if number.is_integer() and abs(number) < 2**53 else number


def _fhir_primitive(value: Any, column: Column, utc_offset: str) -> Any:
    value = _plain(value)
    ctype = column.type
    if ctype is ColumnType.DATE:
        return pd.Timestamp(value).strftime("%Y-%m-%d")
    if ctype is ColumnType.DATETIME:
        stamp = pd.Timestamp(value)
        if stamp.tzinfo is not None:
            return stamp.isoformat()
        return stamp.strftime("%Y-%m-%dT%H:%M:%S") + utc_offset
    if ctype is ColumnType.BOOLEAN:
        return bool(value)
    if ctype is ColumnType.INTEGER:
        return int(value)
    if ctype is ColumnType.NUMBER:
        return _number(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return str(value)


# Documentation ------------------------------------------------------------------------------


def render_markdown(mapping: FhirMapping | None = None) -> str:
    """The FHIR R5 section of docs/cdm.md, from the mapping file."""
    mapping = mapping or load_mapping()
    out = [
        "## FHIR R5",
        "",
        f"Contributors whose systems speak HL7 FHIR R{mapping.fhir_version[:1]} "
        f"({mapping.fhir_version}) can upload a `Bundle` (JSON; type collection, "
        "transaction, batch, searchset or document) or bulk-data NDJSON (one resource per "
        "line), and released data can be taken out in the same forms. The mapping is the "
        "file `contracts/fhir_r5.yaml`; this section is rendered from it.",
        "",
        "On import every resource is validated against the R5 definitions (`fhir.resources`); "
        "a resource that is not valid is not taken and the report gives the validator's "
        "message with the resource's line or entry number and id. Resources are then mapped "
        "onto the tables below; references (`Reference.reference` to a resource in the same "
        "upload, or a logical reference by identifier) are relinked to the referenced "
        "resource's key (a lot's `din` is the DIN of the collection its `parent` points to). "
        "A Quantity is converted into the column's unit from its UCUM code. The report lists "
        "the resources mapped per type, the resource types the data model has no table for, "
        "every element present that fills no column, values whose unit or code cannot be "
        "converted, and references to resources that are not in the upload: nothing is "
        "dropped silently. The mapped tables then go through the same validation, "
        "de-identification, review and release as a spreadsheet.",
        "",
        "Refused outright, with a message saying what to do: a file that is not JSON or "
        "NDJSON, JSON that is not FHIR (no `resourceType`), a single resource instead of a "
        "Bundle, a Bundle of type history, message or a server response, NDJSON lines holding "
        "Bundles, the same resource (type and id) twice, JSON nested more than "
        f"{MAX_DEPTH} levels deep, more than {MAX_RESOURCES:,} resources or more than "
        f"{MAX_BYTES >> 30} GiB in one upload (the hub may set lower limits). NDJSON is "
        "read line by line, so a large upload never holds more than one resource's "
        "validated model at a time; `read_fhir(..., workers=N)` validates in N worker "
        "processes while the mapping goes on.",
        "",
        "On export each CDM row becomes one resource, validated before it is written. "
        "Custody timestamps are local wall-clock times in the data model; FHIR needs an "
        "offset with a time of day, so the export writes the site's offset (UTC when not "
        "known) and the import keeps the wall-clock time as written. De-identified "
        "values with no FHIR form (ages as bands, dates as day offsets since the "
        "episode's first collection) are left out of the file, named in the download's "
        f"`X-Cleanroom-Left-Out` header and in each resource's `meta.tag` (system "
        f"`{WITHHELD_SYSTEM}`, code `table.column`); a hub importing such a file keeps the "
        "rows although a required column is missing, and its report says which.",
        "",
        "A coded column is written as a CodeableConcept with the CDM's own coding first "
        "and, where the shared code book (`contracts/codes.yaml`, section *Shared codes*) "
        "gives the value a standard code, that coding after it (SNOMED CT for indications "
        "and blood groups, HL7 ObservationInterpretation for qualitative results), so "
        "another system reads the standard code. On import the CDM's coding is taken if "
        "present, else the first; a standard code then goes through the upload's terms "
        "step like any site term.",
        "",
        "Custody events come from `Provenance` resources (one per handling step, its "
        "`target` the unit and, once manufactured, the lot). "
        "`BiologicallyDerivedProduct.storageTempRequirements` states the range a product "
        "must be kept in, not a temperature that was recorded, so it fills no column and "
        "is listed in the report. Columns with no element of their own in R5 travel in "
        "`BiologicallyDerivedProduct.property` (typed by a code of the `property` system) "
        "or in extensions (url: the `extension` prefix and the name).",
        "",
        "In the tables, `[system=@coi]` picks the list entry whose `system` is the `coi` "
        "system below, `[0]` the first entry and `[]` any entry; `property[X]` is the "
        "property whose type is code X, `extension[X]` the extension named X.",
        "",
        "Identifier and code systems:",
        "",
        "| name | system |",
        "| --- | --- |",
    ]
    for name, system in mapping.systems.items():
        out.append(f"| {name} | `{system}` |")
    for profile in mapping.profiles:
        when = ""
        if profile.when:
            kind = "with" if profile.when[0] == "any_of" else "with neither"
            joined = " or " if profile.when[0] == "any_of" else " nor "
            when = f" {kind} " + joined.join(f"`{_short(t, mapping)}`" for t in profile.when[2])
        out += [
            "",
            f"### {profile.resource}{when} → `{profile.table}`",
            "",
        ]
        if profile.fixed:
            out.append(
                "Written with "
                + ", ".join(f"`{k}` = {_fixed_text(v)}" for k, v in profile.fixed.items())
                + "."
            )
            out.append("")
        out += ["| column | FHIR element | notes |", "| --- | --- | --- |"]
        for cmap in profile.columns:
            notes = []
            if cmap.ref:
                notes.append(
                    "reference, relinked to "
                    + " or ".join(f"`{mapping.profile(t).table}.{cmap.ref}`" for t in cmap.to)
                )
            if cmap.kind == "quantity" and cmap.column.unit:
                notes.append(f"Quantity, converted into {cmap.column.unit}")
            if cmap.values:
                notes.append(", ".join(f"`{k}` → {json.dumps(v)}" for k, v in cmap.values.items()))
            if cmap.placeholder:
                notes.append(f"`{cmap.placeholder}` when empty (the element is required)")
            if cmap.kind == "concept":
                shared = _standard_codings(profile.table, cmap.column.name)
                systems = sorted({c["system"] for c in shared.values()})
                standard = ", ".join(f"`{uri}`" for uri in systems)
                notes.append(
                    f"the CDM's coding, then the standard one ({standard})"
                    if systems
                    else "the CDM's coding"
                )
            if len(cmap.text) > 1 and not cmap.ref:
                notes.append("written as the first, read from any")
            element = " or ".join(f"`{_short(t, mapping)}`" for t in cmap.text)
            out.append(f"| `{cmap.column.name}` | {element} | {'; '.join(notes)} |")
    out += ["", "Not mapped:", ""]
    for table, why in mapping.not_mapped.items():
        out.append(f"- `{table}`: {why}")
    return "\n".join(out) + "\n"


def _fixed_text(value: Any) -> str:
    if isinstance(value, dict):
        return "`" + (value.get("code") or json.dumps(value)) + "`"
    return f"`{value}`"


def _short(text: str, mapping: FhirMapping) -> str:
    prefix = "property[type.coding[].system=@property,type.coding[].code="
    if text.startswith(prefix):
        code, _, rest = text[len(prefix) :].partition("]")
        return f"property[{code}]{rest}"
    ext = f"extension[url={mapping.systems['extension']}"
    if text.startswith(ext):
        name, _, rest = text[len(ext) :].partition("]")
        return f"extension[{name}]{rest}"
    return text.replace("|", "\\|")
