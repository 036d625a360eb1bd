"""The data catalogue, callable without a request.

Two kinds of facts:

* the common data model (``contracts/cdm.yaml``): every table and column with its
  description, type, unit, allowed values or range and identifier class. Public to every
  signed-in member; :func:`table_entry` and :func:`column_entry` give the JSON shape,
  :func:`table_view` and :func:`column_view` the same in plain words for pages;
* per agreement: which tables and columns it covers, which institutions contribute and how
  many patients their released, pooled data holds, rounded (:func:`patients_in_words`) so
  that two readings cannot be differenced down to one patient. Only for the agreements that
  concern the reader (:func:`concerning`), decided by :mod:`policies`.
"""

from __future__ import annotations

import io
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.agreements import Agreement, State, contributing_institutions
from contracts.cdm import Column, ColumnType, CommonDataModel, IdentifierClass, Table, load_cdm
from hub.accounts.models import Institution, User
from hub.accounts.services import may
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord
from hub.errors import CleanroomError, NotFound
from hub.storage import Storage
from policies.store import SyncedPolicy

#: The column that names a patient (the episode's chain of identity) wherever it appears.
PATIENT_KEY = "coi_id"

#: Patient counts are rounded to this; below it the catalogue says "fewer than" it.
ROUND_TO = 10

# Plain words --------------------------------------------------------------------------------

IDENTIFIER_WORDS: Mapping[IdentifierClass, tuple[str, str]] = {
    IdentifierClass.DIRECT: (
        "direct identifier",
        "Names a person directly. Removed during de-identification: it never leaves the "
        "contributing site's upload and never reaches the pool or a researcher.",
    ),
    IdentifierClass.LINKABLE: (
        "pseudonymised key",
        "Replaced by a keyed code, the same in every table and institution, so that the "
        "records of one patient or product still link up without saying whose they are.",
    ),
    IdentifierClass.QUASI: (
        "indirect identifier",
        "Could single someone out in combination with other facts, so it is coarsened in "
        "the pool: dates become days since the episode's first collection, ages become "
        "bands, rare values are grouped.",
    ),
    IdentifierClass.SENSITIVE: (
        "sensitive outcome",
        "Kept in the pool; every answer that uses it passes disclosure control.",
    ),
    IdentifierClass.FREE_TEXT: (
        "free text",
        "Names, numbers and dates are scrubbed from it, or the column is removed.",
    ),
    IdentifierClass.SAFE: (
        "safe",
        "Identifies nobody; passes into the pool unchanged.",
    ),
}

TYPE_WORDS: Mapping[ColumnType, str] = {
    ColumnType.STRING: "text",
    ColumnType.INTEGER: "whole number",
    ColumnType.NUMBER: "number",
    ColumnType.BOOLEAN: "yes or no",
    ColumnType.DATE: "date",
    ColumnType.DATETIME: "date and time",
    ColumnType.CATEGORY: "one of a fixed list",
}

UNIT_WORDS: Mapping[str, str] = {
    "%": "per cent",
    "degC": "degrees Celsius",
    "kg": "kilograms",
    "L": "litres",
    "mL": "millilitres",
    "10^6 cells": "million cells",
    "10^6 cells/kg": "million cells per kilogram of body weight",
    "10^9 cells": "billion (10⁹) cells",
    "10^9/L": "billion (10⁹) per litre",
    "cells/µL": "cells per microlitre",
    "copies/cell": "copies per cell",
}


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _shown(value: float) -> str:
    return f"{_number(value):,}" if isinstance(_number(value), int) else f"{value:g}"


def legend() -> list[tuple[str, str, str]]:
    """Every identifier class as ``(code, label, meaning)``, for the pages' legend."""
    return [(code.value, label, meaning) for code, (label, meaning) in IDENTIFIER_WORDS.items()]


def unit_words(unit: str | None) -> str:
    """The unit as a person reads it (``10^6 cells/kg`` is "million cells per kilogram …")."""
    if not unit:
        return ""
    return UNIT_WORDS.get(unit, unit)


def range_words(column: Column) -> str:
    """ "0 to 120 years", "at least 0", "at most 15"; empty without bounds."""
    low, high = column.minimum, column.maximum
    if low is None and high is None:
        return ""
    unit = f" {unit_words(column.unit)}" if column.unit else ""
    if low is not None and high is not None:
        return f"{_shown(low)} to {_shown(high)}{unit}"
    if low is not None:
        return f"at least {_shown(low)}{unit}"
    return f"at most {_shown(high or 0)}{unit}"


# The common data model ----------------------------------------------------------------------


def cdm() -> CommonDataModel:
    """The shipped common data model (read once per process)."""
    return load_cdm()


def get_table(name: str) -> Table:
    """The CDM table ``name``; 404 naming the tables there are."""
    model = cdm()
    if name not in model.table_names:
        raise NotFound(
            f"the data catalogue has no table {name!r}; its tables are: "
            + ", ".join(model.table_names)
            + "."
        )
    return model.table(name)


def column_entry(column: Column, *, covered: bool | None = None) -> dict[str, Any]:
    """A column as the API answers it; ``covered`` only when asked about an agreement."""
    bounds = None
    if column.minimum is not None or column.maximum is not None:
        bounds = [
            None if column.minimum is None else _number(column.minimum),
            None if column.maximum is None else _number(column.maximum),
        ]
    entry: dict[str, Any] = {
        "name": column.name,
        "description": column.description,
        "type": column.type.value,
        "unit": column.unit,
        "allowed_values": list(column.allowed) if column.allowed else None,
        "range": bounds,
        "identifier_class": column.identifier.value,
    }
    if covered is not None:
        entry["covered"] = covered
    return entry


def table_entry(
    table: Table, *, covered: bool | None = None, columns: Iterable[str] | None = None
) -> dict[str, Any]:
    """A table as the API answers it. With ``covered`` (about an agreement), ``columns``
    are the covered ones; a direct identifier is never covered (it never reaches the pool)."""
    wanted = set(columns or ())
    entry: dict[str, Any] = {
        "table": table.name,
        "description": table.description,
        "grain": table.grain,
    }
    if covered is None:
        entry["columns"] = [column_entry(c) for c in table.columns]
        return entry
    entry["covered"] = covered
    entry["columns"] = [
        column_entry(c, covered=covered and c.name in wanted and in_pool(c)) for c in table.columns
    ]
    return entry


def catalogue() -> dict[str, Any]:
    """Every CDM table and column (``GET /api/v1/catalogue``)."""
    model = cdm()
    return {"version": model.version, "tables": [table_entry(t) for t in model.tables]}


def in_pool(column: Column) -> bool:
    """Whether the column can reach the pool at all (direct identifiers never do)."""
    return column.identifier is not IdentifierClass.DIRECT


@dataclass(frozen=True)
class ColumnView:
    """A column in plain words, for the pages."""

    name: str
    description: str
    type: str
    unit: str
    allowed: tuple[str, ...]
    range: str
    identifier: str  # the class's code, for styling
    identifier_label: str
    identifier_meaning: str
    required: bool
    primary_key: bool
    refers_to: str  # "episode" when the column names a row of that table
    synonyms: tuple[str, ...]
    standard: str


@dataclass(frozen=True)
class TableView:
    name: str
    description: str
    grain: str
    columns: tuple[ColumnView, ...]


def column_view(table: Table, column: Column) -> ColumnView:
    label, meaning = IDENTIFIER_WORDS[column.identifier]
    return ColumnView(
        name=column.name,
        description=column.description,
        type=TYPE_WORDS[column.type],
        unit=unit_words(column.unit),
        allowed=column.allowed or (),
        range=range_words(column),
        identifier=column.identifier.value,
        identifier_label=label,
        identifier_meaning=meaning,
        required=column.required,
        primary_key=column.name in table.primary_key,
        refers_to=(column.references or "").split(".", 1)[0],
        synonyms=column.synonyms,
        standard=column.standard or "",
    )


def table_view(table: Table) -> TableView:
    return TableView(
        name=table.name,
        description=table.description,
        grain=table.grain,
        columns=tuple(column_view(table, c) for c in table.columns),
    )


def table_views() -> list[TableView]:
    return [table_view(t) for t in cdm().tables]


# Patients -----------------------------------------------------------------------------------


def patients_in_words(count: int) -> str:
    """A patient count safe to show: "none yet", "fewer than 10", else "about N" rounded to
    the nearest 10 (halves up), so that no reading pins down a single patient."""
    if count <= 0:
        return "none yet"
    if count < ROUND_TO:
        return f"fewer than {ROUND_TO}"
    return f"about {math.floor(count / ROUND_TO + 0.5) * ROUND_TO:,}"


_counted: dict[tuple[str, ...], int] = {}
_counted_lock = threading.Lock()
_COUNT_CACHE = 256


def patient_count(storage: Storage, pool_keys: Sequence[str]) -> int:
    """Distinct patients (pseudonymised chains of identity) in the pooled objects
    ``pool_keys``. A pooled object never changes under its key, so counts are remembered
    per set of keys."""
    key = tuple(sorted(set(pool_keys)))
    with _counted_lock:
        if key in _counted:
            return _counted[key]
    patients: set[str] = set()
    for pool_key in key:
        with storage.open(pool_key) as fh:
            parquet = pq.ParquetFile(io.BytesIO(fh.read()))
        if PATIENT_KEY not in parquet.schema_arrow.names:
            continue
        column = parquet.read(columns=[PATIENT_KEY]).column(0)
        patients.update(str(v) for v in column.to_pylist() if v is not None)
    with _counted_lock:
        if len(_counted) >= _COUNT_CACHE:
            _counted.clear()
        _counted[key] = len(patients)
    return len(patients)


def patient_tables() -> tuple[str, ...]:
    """The CDM tables whose rows name their patient."""
    return tuple(t.name for t in cdm().tables if PATIENT_KEY in t.column_names)


# Agreements ---------------------------------------------------------------------------------


def _may(user: User, action: str, obj: str) -> bool:
    return may(user, action, obj)


def concerning(
    session: Session, policy: SyncedPolicy, user: User
) -> list[tuple[AgreementRecord, Agreement]]:
    """The agreements whose catalogue facts ``user`` may see, by slug: every one for whom
    the policy allows ``read catalogue/agreements`` (the steward); those their institution is
    a party to for ``read catalogue/agreements/institution`` (contributors); and those
    they may read in the agreement's own domain (named researchers of an active agreement,
    party admins)."""
    if not user.is_active:
        return []
    records = agreements.all_records(session)
    every = _may(user, "read", "catalogue/agreements")
    party = (
        user.institution.slug
        if user.institution is not None and _may(user, "read", "catalogue/agreements/institution")
        else None
    )
    readable = {r.slug for r in agreements.readable(policy, user, records)}
    found = []
    for stored in records:
        try:
            agreement = agreements.contract_of(stored)
        except CleanroomError:
            continue  # terms that no longer load describe nothing (the steward sees why)
        if every or stored.slug in readable or (party and party in agreement.institutions):
            found.append((stored, agreement))
    return found


@dataclass(frozen=True)
class Party:
    name: str
    contributor: bool
    recipient: bool
    signed: bool


@dataclass(frozen=True)
class AgreementFacts:
    """What the catalogue says about one agreement."""

    slug: str
    title: str
    purpose: str
    state: str
    parties: tuple[Party, ...]
    institutions: tuple[str, ...]  # names of the contributing institutions (signed)
    patients: str
    coverage: dict[str, tuple[str, ...]]  # covered table -> its covered columns

    @property
    def covered_columns(self) -> int:
        return sum(len(c) for c in self.coverage.values())

    def as_json(self) -> dict[str, Any]:
        """The answer of ``GET /api/v1/sandbox/catalogue``: every CDM table, each saying
        whether the agreement covers it and which of its columns."""
        return {
            "agreement": self.slug,
            "institutions": list(self.institutions),
            "patients": self.patients,
            "tables": [
                table_entry(
                    t, covered=t.name in self.coverage, columns=self.coverage.get(t.name, ())
                )
                for t in cdm().tables
            ],
        }


def coverage_of(agreement: Agreement) -> dict[str, tuple[str, ...]]:
    """The agreement's covered tables and columns (direct identifiers left out: they never
    reach the pool), in the CDM's order."""
    model = cdm()
    out: dict[str, tuple[str, ...]] = {}
    for cover in agreement.tables:
        table = model.table(cover.table)
        names = set(cover.columns) if cover.columns is not None else set(table.column_names)
        out[cover.table] = tuple(c.name for c in table.columns if c.name in names and in_pool(c))
    order = {name: n for n, name in enumerate(model.table_names)}
    return dict(sorted(out.items(), key=lambda item: order[item[0]]))


def facts(
    session: Session,
    storage: Storage,
    stored: AgreementRecord,
    agreement: Agreement,
    *,
    coverage: Mapping[str, Iterable[str]] | None = None,
    now: datetime | None = None,
) -> AgreementFacts:
    """The agreement's catalogue facts. ``coverage`` narrows the covered tables and columns
    (a researcher's sandbox sees what the policy lets them query). Patients are counted in
    the released, pooled data of the contributing institutions, across every table that
    names its patient, whether or not the agreement covers it; nothing is pooled unless the
    agreement is active."""
    now = now or datetime.now(UTC)
    state = agreement.state_at(now)
    names = dict(
        session.execute(
            select(Institution.slug, Institution.name).where(
                Institution.slug.in_(agreement.institutions)
            )
        ).all()
    )
    signed = {s.institution for s in agreement.valid_signatures()}
    parties = tuple(
        Party(
            names.get(p.institution, p.institution),
            p.contributor,
            p.recipient,
            p.institution in signed,
        )
        for p in agreement.parties
    )
    contributing = tuple(names.get(slug, slug) for slug in contributing_institutions(agreement))
    if state is State.ACTIVE:
        pooled = agreements.pooled(
            session, stored, (), linking=patient_tables(), now=now, agreement=agreement
        )
        keys = [v.pool_key for versions in pooled.values() for v in versions]
        patients = patients_in_words(patient_count(storage, keys))
    else:
        patients = "none while the agreement is not active"
    full = coverage_of(agreement)
    if coverage is not None:
        allowed = {t: set(cols) for t, cols in coverage.items()}
        full = {
            t: tuple(c for c in cols if c in allowed[t]) for t, cols in full.items() if t in allowed
        }
    return AgreementFacts(
        slug=stored.slug,
        title=agreement.title,
        purpose=agreement.purpose.text,
        state=state.value,
        parties=parties,
        institutions=contributing,
        patients=patients,
        coverage=full,
    )


def facts_for(
    session: Session, policy: SyncedPolicy, storage: Storage, user: User, slug: str
) -> AgreementFacts:
    """The facts of agreement ``slug`` if it concerns ``user``; otherwise 404 in the same
    words whether or not it exists (the catalogue never says which agreements there are)."""
    for stored, agreement in concerning(session, policy, user):
        if stored.slug == slug:
            return facts(session, storage, stored, agreement)
    raise NotFound(
        f"the catalogue has no agreement {slug!r} for you: it names the agreements you are a "
        "researcher of, those your institution is a party to, and, for the steward, all."
    )


def covering(
    concerned: Sequence[tuple[AgreementRecord, Agreement]], table: str
) -> dict[str, list[str]]:
    """For a table page: per column, the slugs of the concerned agreements covering it."""
    out: dict[str, list[str]] = {}
    for stored, agreement in concerned:
        for column in coverage_of(agreement).get(table, ()):
            out.setdefault(column, []).append(stored.slug)
    return out
