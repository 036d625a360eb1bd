"""The hub's side of de-identification: date anchors, the contributor's choices, the floor.

:mod:`anonymisation.engine` is a pure library; this module gives it what only the hub
knows (the common data model's identifier classes, the key chain, anchors stored in the
database, what the contributor asked for) and keeps the rules about what a contributor may
change:

* **Actions** are named by strength, weakest first: ``keep``, ``generalise``,
  ``pseudonymise``, ``scrub``, ``drop``. The first run of a version fixes its **floor**: the
  action the engine took on each column from the data model (which the steward maintains)
  and the evidence in the values. A contributor may choose a *stronger* action for a column
  (:data:`STRONGER`) or a higher ``k``, never a weaker one and never a ``k`` below the
  steward's ``deid_k``.
* **Anchors.** Dates reach the pool as whole days since the subject's anchor: the first
  collection of the episode (chain-of-identity pseudonym), so that intervals between tables
  and institutions hold. An anchor is fixed the first time its subject is seen and never
  moves: from the collection table's ``collection_date`` when that comes first, otherwise
  from the earliest date on the subject's rows. Tables without ``coi_id`` (release tests)
  find their episode through the pooled batch table's ``lot_id`` → ``coi_id`` links; a lot
  with no released batch is anchored on itself, and the report says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from anonymisation.classify import name_shape
from anonymisation.engine import EngineResult, deidentify_frame
from anonymisation.identifiers import DIRECT, FREE_TEXT, LINKABLE, QUASI, SAFE
from anonymisation.pseudonyms import KeyChain, pseudonymise
from contracts.cdm import Table
from hub.db import Database
from hub.errors import BadRequest
from hub.ingest.models import DatasetVersion, DateAnchor, VersionState
from hub.storage import Storage

ACTIONS = ("keep", "generalise", "pseudonymise", "scrub", "drop")
# What a contributor may choose for a column, given the action of its floor.
STRONGER: dict[str, tuple[str, ...]] = {
    "keep": ("keep", "generalise", "pseudonymise", "drop"),
    "generalise": ("generalise", "drop"),
    "pseudonymise": ("pseudonymise", "drop"),
    "scrub": ("scrub", "drop"),
    "drop": ("drop",),
}
# The identifier class the engine is told to treat a column as, for a chosen action.
_CLASS_OF = {"generalise": QUASI, "pseudonymise": LINKABLE, "scrub": FREE_TEXT, "drop": DIRECT}
DATE_TYPES = ("date", "datetime")
_CHUNK = 5000  # bound on an IN (...) list


def short_action(action: str) -> str:
    """The engine's descriptive action (``"generalise: coarsened to month"``) as one of
    :data:`ACTIONS`."""
    word = action.split(":", 1)[0].split(" ", 1)[0].strip()
    return word if word in ACTIONS else "keep"


def floor_of(report: Mapping[str, Any]) -> dict[str, str]:
    """``{column: action}`` of a de-identification report (the first run's is the floor)."""
    return {c["name"]: short_action(c["action"]) for c in report.get("columns", [])}


@dataclass
class Choices:
    """What the contributor asked for above the floor."""

    columns: dict[str, str] = field(default_factory=dict)
    k: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"columns": dict(sorted(self.columns.items())), "k": self.k}

    @classmethod
    def from_json(cls, text: str | None) -> Choices:
        data = json.loads(text or "{}") or {}
        return cls(dict(data.get("columns") or {}), data.get("k"))


def check_choices(floor: Mapping[str, str], body: Mapping[str, Any], *, k_floor: int) -> Choices:
    """The contributor's choices, checked against the floor. ``body`` is
    ``{"columns": {name: action}, "k": n}`` (both optional). Raises :class:`BadRequest`
    naming the column and what it may be instead."""
    raw_columns = body.get("columns") or {}
    if not isinstance(raw_columns, Mapping):
        raise BadRequest("`columns` must be an object {column: action}.")
    columns: dict[str, str] = {}
    for name, wanted in raw_columns.items():
        if name not in floor:
            raise BadRequest(f"column {name!r} is not in this version's report.")
        wanted = str(wanted).strip().lower()
        allowed = STRONGER[floor[name]]
        if wanted not in ACTIONS:
            raise BadRequest(
                f"{name}: {wanted!r} is not an action; use one of {', '.join(allowed)}."
            )
        if wanted not in allowed:
            raise BadRequest(
                f"{name}: {wanted!r} would weaken its de-identification below the floor "
                f"({floor[name]!r}); it may be {', '.join(allowed)}."
            )
        if wanted != floor[name]:
            columns[name] = wanted
    k = body.get("k")
    if k in (None, ""):
        return Choices(columns, None)
    try:
        k_value = int(str(k))
    except ValueError:
        raise BadRequest(f"k must be a whole number, not {k!r}.") from None
    if k_value < k_floor:
        raise BadRequest(f"k may be raised, not lowered: the steward's floor is {k_floor}.")
    if k_value > 1000:
        raise BadRequest("k above 1000 would suppress almost everything; choose a smaller k.")
    return Choices(columns, k_value if k_value != k_floor else None)


def engine_hints(table: Table, choices: Choices) -> dict[str, str]:
    """Identifier classes for the engine: the data model's, overridden by the choices."""
    hints = {c.name: str(c.identifier) for c in table.columns}
    for name, action in choices.columns.items():
        if action in _CLASS_OF:
            hints[name] = _CLASS_OF[action]
    return hints


# Anchors ------------------------------------------------------------------------------------


@dataclass
class Anchors:
    """Anchors for one frame: ``series`` maps the raw ``key`` values to anchor dates."""

    key: str
    series: pd.Series | None
    known: int = 0  # subjects whose anchor was already stored
    created: int = 0  # anchors fixed by this version
    self_anchored_lots: int = 0  # lots with no known episode, anchored on themselves
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "known": self.known,
            "created": self.created,
            "self_anchored_lots": self.self_anchored_lots,
        }


def _local_dates(values: pd.Series) -> pd.Series:
    """Calendar dates (local wall clock) as ``datetime64[ns]`` normalised to midnight."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        values = values.dt.tz_localize(None)
    parsed = pd.to_datetime(values, errors="coerce", format="mixed")
    if isinstance(parsed.dtype, pd.DatetimeTZDtype):
        parsed = parsed.dt.tz_localize(None)
    return parsed.astype("datetime64[ns]").dt.normalize()


def _lot_links(session: Any, storage: Storage, chain: KeyChain) -> dict[str, str]:
    """``{lot pseudonym: coi pseudonym}`` from every released batch version in the pool."""
    keys = session.scalars(
        select(DatasetVersion.pool_key).where(
            DatasetVersion.cdm_table == "batch", DatasetVersion.state == VersionState.RELEASED
        )
    ).all()
    links: dict[str, str] = {}
    for key in keys:
        with storage.open(key) as fh:
            source = pa.BufferReader(fh.read())
        if not {"lot_id", "coi_id"} <= set(pq.read_schema(source).names):
            continue
        data = pq.read_table(source, columns=["lot_id", "coi_id"])
        lots, cois = data.column("lot_id").to_pylist(), data.column("coi_id").to_pylist()
        links.update((lot, coi) for lot, coi in zip(lots, cois, strict=True) if lot and coi)
    return links


def _stored(session: Any, subjects: Iterable[str]) -> dict[str, date]:
    subjects = list(subjects)
    found: dict[str, date] = {}
    for i in range(0, len(subjects), _CHUNK):
        rows = session.execute(
            select(DateAnchor.subject, DateAnchor.anchor).where(
                DateAnchor.subject.in_(subjects[i : i + _CHUNK])
            )
        )
        found.update((s, a) for s, a in rows)
    return found


def resolve_anchors(
    database: Database,
    storage: Storage,
    table: Table,
    frame: pd.DataFrame,
    chain: KeyChain,
) -> Anchors | None:
    """Anchors for the date columns of ``frame`` (the validated rows of ``table``), creating
    the ones seen for the first time. None when the table has no date quasi-identifier."""
    dates = [
        c.name
        for c in table.columns
        if str(c.type) in DATE_TYPES
        and str(c.identifier) == QUASI
        and c.name in frame
        and frame[c.name].notna().any()
    ]
    if not dates:
        return None
    key = "coi_id" if "coi_id" in frame else "lot_id" if "lot_id" in frame else ""
    if not key:
        return Anchors(key="", series=None, notes=["no coi_id or lot_id: dates kept to the month"])
    # Raw values as they are (the engine looks anchors up by them); the pseudonym ignores
    # surrounding whitespace, so " A1" and "A1" are one subject.
    raw = frame[key].astype(object).where(frame[key].notna(), None)
    distinct = pd.Series(raw.dropna().unique(), dtype=object)
    distinct = distinct[distinct.astype(str).str.strip() != ""]
    pseudonyms = pseudonymise(distinct, chain)
    subject_of: dict[str, str] = dict(zip(distinct, pseudonyms, strict=True))
    result = Anchors(key=key, series=None)
    if key == "lot_id":
        with database.session() as s:
            links = _lot_links(s, storage, chain)
        lonely = {lot for lot, p in subject_of.items() if p not in links}
        subject_of = {lot: links.get(p, p) for lot, p in subject_of.items()}
        if lonely:
            result.self_anchored_lots = len(lonely)
            result.notes.append(
                f"{len(lonely)} lot(s) have no released batch linking them to an episode: "
                "their dates count from the lot's own first date. Release the batch table "
                "first to count from the episode's first collection."
            )

    # Each row's candidate anchor: its collection date, else its earliest date.
    own = "collection_date" if "collection_date" in dates else None
    local = pd.DataFrame({c: _local_dates(frame[c]) for c in ([own] if own else dates)})
    candidate = local.min(axis=1)
    rows = pd.DataFrame({"subject": raw.map(subject_of), "date": candidate})
    first = rows.dropna().groupby("subject")["date"].min()
    source = f"{table.name}.{own}" if own else f"{table.name}.earliest date"

    epoch = 1 if isinstance(chain, bytes | bytearray) else len(list(chain))
    with database.session() as s:
        stored = _stored(s, set(subject_of.values()))
    new = {subj: d.date() for subj, d in first.items() if subj not in stored}
    if new:
        try:
            with database.session() as s:
                s.add_all(
                    DateAnchor(subject=subj, anchor=d, source=source, key_epoch=epoch)
                    for subj, d in new.items()
                )
        except IntegrityError:  # another job fixed some of them first: theirs stand
            pass
        with database.session() as s:
            stored = _stored(s, set(subject_of.values()))
    result.known = len(set(subject_of.values())) - len(new)
    result.created = len(new)
    by_raw = {
        value: pd.Timestamp(stored[subj]) for value, subj in subject_of.items() if subj in stored
    }
    result.series = pd.Series(by_raw, dtype="datetime64[ns]")
    return result


# Running the engine -------------------------------------------------------------------------


# Allow-list ------------------------------------------------------------------------------


def cdm_vocabulary(table: Table) -> set[str]:
    """The data model's category values of ``table`` (``fresh``, ``cryopreserved`` ...)."""
    return {v for c in table.columns for v in (c.allowed or ())}


def site_vocabulary(
    database: Database, storage: Storage, table: Table, institution_id: int
) -> set[str]:
    """Values an institution has already released in ``table``'s columns that the data
    model classes as safe text (facility names, device makers, reagent suppliers), plus its
    own name: the allow-list that stops one site's vocabulary being scrubbed as people's
    names on every upload. Values written like a person's name ("Dr A. Patel") are never
    taken, so a name released in a column before it was recognised cannot protect itself."""
    from hub.accounts.models import Institution

    safe_text = [
        c.name
        for c in table.columns
        if str(c.identifier) == SAFE and str(c.type) in ("string", "category", "text")
    ]
    words: set[str] = set()
    with database.session() as s:
        institution = s.get(Institution, institution_id)
        if institution is not None:
            words.add(institution.name)
        keys = s.scalars(
            select(DatasetVersion.pool_key).where(
                DatasetVersion.institution_id == institution_id,
                DatasetVersion.cdm_table == table.name,
                DatasetVersion.state == VersionState.RELEASED,
            )
        ).all()
    for key in keys:
        if not key:
            continue
        with storage.open(key) as fh:
            source = pa.BufferReader(fh.read())
        columns = [c for c in safe_text if c in set(pq.read_schema(source).names)]
        if not columns:
            continue
        data = pq.read_table(source, columns=columns)
        for name in columns:
            words.update(str(v) for v in pc_unique(data.column(name)) if v is not None)
    return {w for w in words if w.strip() and name_shape(w) not in ("title", "surname_given")}


def pc_unique(column: pa.ChunkedArray) -> list[Any]:
    """Distinct values of a parquet column as Python objects."""
    return list(column.unique().to_pylist())


def run(
    frame: pd.DataFrame,
    table: Table,
    *,
    chain: KeyChain,
    k: int,
    choices: Choices,
    anchors: Anchors | None,
    scrub_free_text: bool,
    progress: Callable[[int, str], None] | None = None,
    allow: Iterable[str] = (),
) -> EngineResult:
    """De-identify the validated rows of one version. The data model's category values and
    ``allow`` (:func:`site_vocabulary`) are never taken for people's names."""
    kinds = {c.name: str(c.type) for c in table.columns}
    hints = engine_hints(table, choices)
    result = deidentify_frame(
        frame,
        key=chain,
        hints=hints,
        kinds=kinds,
        anchors=anchors.series if anchors is not None else None,
        anchor_key=anchors.key if anchors is not None and anchors.key else "coi_id",
        k=max(k, choices.k or 0),
        scrub_free_text=scrub_free_text,
        progress=progress,
        allow=cdm_vocabulary(table) | set(allow),
    )
    report = result.report
    for c in report["columns"]:
        c["action_kind"] = short_action(c["action"])
        c["chosen"] = c["name"] in choices.columns
    if anchors is not None:
        report["anchors"] = anchors.to_dict()
        report["attention"] = [*anchors.notes, *report.get("attention", [])]
    report["choices"] = choices.to_dict()
    return result


# Plain words for the review page -----------------------------------------------------------
#
# The engine's report is written for auditors ("cdm hint — CDM class safe"); the review page
# says the same to a lab data manager and keeps the technical line as a tooltip.

_CLASS_WORDS = {
    "direct_identifier": "identifies a person directly",
    "linkable_identifier": "an identifier (linked across tables under a pseudonym)",
    "quasi_identifier": "could identify someone together with other columns",
    "sensitive": "sensitive information",
    "free_text": "free text",
    "safe": "not identifying",
}
_ACTION_WORDS = {
    "keep": "kept as is",
    "generalise": "generalised (made coarser)",
    "pseudonymise": "replaced by a pseudonym",
    "scrub": "identifiers inside the text removed",
    "drop": "removed",
}
_KIND_WORDS = {
    "measurement": "decimal measurements: no names or ID numbers to look for",
    "numeric": "whole numbers: checked only against number-shaped identifiers",
    "numeric-text": "numbers written as text: checked only against number-shaped identifiers",
    "datetime": "dates and times: handled as dates",
    "boolean": "yes/no values: nothing identifying to look for",
}
_NOTE_WORDS = {
    "labels the column": "so the column is treated as such",
    "needs attention: below the labelling rate": "too few to be sure, please check the column",
    "found inside free text": "found inside the text",
    "weak pattern: counts only in a lot/batch column": (
        "a weak pattern, which counts only in a lot or batch column"
    ),
    "reagent/equipment column: shared lots and serials are safe": (
        "a reagent or equipment column, whose shared lot and serial numbers are safe"
    ),
}


def class_words(klass: str | None) -> str:
    """An identifier class in words (``quasi_identifier`` → "could identify someone …")."""
    return _CLASS_WORDS.get(str(klass or ""), str(klass or "").replace("_", " "))


def action_words(action: str | None) -> str:
    """One of :data:`ACTIONS` in words."""
    return _ACTION_WORDS.get(short_action(str(action or "")), str(action or ""))


def _entity_words(entity: str | None) -> str:
    return {
        "PERSON": "person names",
        "AGE": "ages",
        "UK_NHS": "NHS numbers",
        "US_SSN": "social security numbers",
        "NATIONAL_ID": "national ID numbers",
        "MRN": "medical record numbers",
        "EMAIL_ADDRESS": "email addresses",
        "PHONE_NUMBER": "phone numbers",
        "IP_ADDRESS": "IP addresses",
        "LOCATION": "places",
        "UK_POSTCODE": "postcodes",
        "DATE_TIME": "dates",
        "ISBT_DIN": "donation identification numbers (DINs)",
        "COI_ID": "chain-of-identity IDs",
        "LOT_ID": "lot numbers",
        "DEVICE_SERIAL": "device serial numbers",
        "ISBT_PRODUCT_CODE": "product codes",
        "ISBT_FIN": "facility identification numbers (FINs)",
    }.get(str(entity or ""), str(entity or "identifiers").replace("_", " ").lower())


def evidence_words(evidence: Mapping[str, Any]) -> dict[str, str]:
    """One piece of a column's evidence as ``{"text": plain words, "detail": the technical
    line}`` (the page shows the text and puts the detail in a tooltip)."""
    source = str(evidence.get("source") or "")
    entity = evidence.get("entity")
    rate = evidence.get("hit_rate")
    size = evidence.get("sample_size")
    note = str(evidence.get("note") or "")
    detail = source + (f" {entity}" if entity else "")
    if rate is not None:
        detail += f": {100 * float(rate):.0f}% of {size}"
    if note:
        detail += f" — {note}"
    if source == "cdm hint":
        if "contradict" in note:
            text = (
                f"The values look like {_entity_words(entity)}, more identifying than the data "
                "model expects: treated as the stronger class."
            )
        else:
            hinted = note.removeprefix("CDM class ").strip()
            text = f"The common data model says this column is {class_words(hinted)}."
    elif source == "column name":
        if entity:
            text = f"Its name suggests {_entity_words(entity)}."
        else:
            named = note.removeprefix("name suggests ").strip()
            text = f"Going by its name: {class_words(named)}."
    elif source == "dtype":
        kind = note.split(" ", 1)[0]
        if note.startswith("free-text"):
            text = "Free text (long values of several words): searched for names and IDs inside."
        else:
            text = "Values are " + _KIND_WORDS.get(kind, kind) + "."
    elif rate is not None:
        share = f"{100 * float(rate):.0f}% of {size} sampled values"
        extra = _NOTE_WORDS.get(note, note)
        text = f"{share} look like {_entity_words(entity)}" + (f", {extra}" if extra else "") + "."
    else:
        text = _NOTE_WORDS.get(note, note) or source
    return {"text": text, "detail": detail}
