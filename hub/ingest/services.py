"""The ingest pipeline: upload → profile → map → validate and de-identify → review → release.

Each step that reads a file runs as a job; each state change is one transaction with its
audit entry, so a crash leaves either the previous state or the complete new one. Objects
are written before the state that points at them commits (an unreferenced object is
invisible; the next attempt overwrites it) and deleted only after.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from anonymisation.pseudonyms import KeyChain, pseudonymise
from contracts.cdm import CommonDataModel, Table, cdm_version, load_cdm
from contracts.codes import term_key
from contracts.fhir import FhirError, read_fhir
from hub import events
from hub.accounts.models import User
from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import BadRequest, CleanroomError, Conflict, NotFound
from hub.exports import SafeWriter, formula_cells
from hub.ingest import deid
from hub.ingest import terms as site_terms
from hub.ingest.mapping import ColumnMatch, MappingProposal, apply_mapping, propose_mapping
from hub.ingest.models import DatasetVersion, InstitutionMapping, InstitutionTerm, VersionState
from hub.ingest.parsing import (
    DEFAULT_LIMITS,
    SNIFF_BYTES,
    FileKind,
    IngestError,
    list_sheets,
    read_table,
    safe_filename,
    sniff,
)
from hub.ingest.validation import Rule, report_csv, validate
from hub.jobs import recheck as job_recheck
from hub.jobs.services import JobContext, enqueue, task
from hub.settings import Settings
from hub.storage import Storage, get_storage
from hub.storage.frames import put_frame

log = logging.getLogger(__name__)


def cdm_table(name: str) -> Table:
    cdm = load_cdm()
    if name not in cdm.table_names:
        raise BadRequest(
            f"unknown table {name!r}; choose one of {', '.join(cdm.table_names)}.",
            code="unknown_table",
        )
    return cdm.table(name)


def get_version(session: Session, version_id: int) -> DatasetVersion:
    version = session.get(DatasetVersion, version_id)
    if version is None:
        raise NotFound(f"no dataset version {version_id}.")
    return version


def _require_state(version: DatasetVersion, *states: VersionState, doing: str) -> None:
    if version.state not in states:
        raise Conflict(
            f"dataset version {version.id} is {version.state.replace('_', ' ')}; it can be "
            f"{doing} only when {' or '.join(s.replace('_', ' ') for s in states)}.",
            code="wrong_state",
        )


# Upload -----------------------------------------------------------------------------------


def start_upload(
    session: Session,
    settings: Settings,
    storage: Storage,
    *,
    user: User,
    table: str,
    filename: str,
    stream: BinaryIO,
    sheet: str = "",
    additional: bool = False,
) -> DatasetVersion:
    """:func:`upload_versions` for callers that expect one version (the first, for a FHIR
    file that fills several tables)."""
    return upload_versions(
        session,
        settings,
        storage,
        user=user,
        table=table,
        filename=filename,
        stream=stream,
        sheet=sheet,
        additional=additional,
    )[0]


def upload_versions(
    session: Session,
    settings: Settings,
    storage: Storage,
    *,
    user: User,
    table: str,
    filename: str,
    stream: BinaryIO,
    sheet: str = "",
    additional: bool = False,
) -> list[DatasetVersion]:
    """Stream an upload into quarantine, sniff it, record the version and queue profiling.

    A FHIR R5 file (Bundle or NDJSON) is read at once instead: it becomes one version per
    CDM table it fills, in the data model's order (``table`` is not used), each with its
    mapping confirmed (the columns are the data model's) and processing queued; a file the
    FHIR reader refuses leaves nothing behind.

    ``additional``: the file holds rows to add beside the institution's released version of
    the table; without it, releasing this version replaces (withdraws) that one.
    The caller must not hold a database transaction open while the bytes stream (SQLite
    serialises writers); this function begins its own after the object is stored."""
    if user.institution is None:
        raise BadRequest("only members of an institution can upload datasets.")
    if table:
        cdm_table(table)  # before the bytes stream; a FHIR file needs no table (see below)
    slug = user.institution.slug
    name = safe_filename(filename)
    key = f"quarantine/{slug}/{uuid.uuid4().hex}/raw"
    info = storage.put(key, stream, max_bytes=settings.max_upload_mb << 20)
    try:
        with storage.open(key) as fh:
            head = fh.read(SNIFF_BYTES)
        kind = sniff(head, name)
        if kind is FileKind.FHIR:
            versions = _fhir_versions(session, settings, storage, key, info, user, name, additional)
            storage.delete(key)  # each table's rows are in its own version's object now
            return versions
        if not table:
            raise BadRequest(
                f"choose the table of the common data model that {name} holds (one of "
                f"{', '.join(cdm().table_names)}); only a FHIR R5 file needs none.",
                code="unknown_table",
            )
        version = DatasetVersion(
            institution_id=user.institution_id,
            cdm_table=table,
            version=_next_version(session, user.institution_id, table),
            state=VersionState.UPLOADED,
            filename=name,
            file_kind=kind,
            sheet=sheet,
            size=info.size,
            sha256=info.sha256 or "",
            raw_key=key,
            additional_rows=additional,
            created_by=f"user:{user.username}",
        )
        session.add(version)
        session.flush()
        job = enqueue(
            session,
            "ingest.profile",
            {"version_id": version.id},
            actor=f"user:{user.username}",
            settings=settings,
        )
        version.job_id = job.id
        record(
            session,
            actor=f"user:{user.username}",
            action="upload",
            target=f"dataset:{version.id}",
            detail={
                "table": table,
                "filename": name,
                "size": info.size,
                "sha256": info.sha256,
                "institution": slug,
                "additional_rows": additional,
            },
        )
        session.commit()
    except BaseException:
        session.rollback()
        storage.delete(key)  # nothing left behind
        raise
    return [version]


FHIR_REASON = "the FHIR file's own element for this column (contracts/fhir_r5.yaml)"
"""Why a FHIR version's mapping was confirmed without asking: the reader already named the
columns as the data model's."""


def _fhir_versions(
    session: Session,
    settings: Settings,
    storage: Storage,
    key: str,
    info: Any,
    user: User,
    name: str,
    additional: bool,
) -> list[DatasetVersion]:
    """Read the FHIR upload at ``key`` and record one version per CDM table it fills, each
    with its rows as a Parquet object in its own quarantine folder and processing queued.
    Objects are written first and deleted again if anything fails, so a refused file
    leaves no version and no object."""
    slug = user.institution.slug if user.institution else "-"
    actor = f"user:{user.username}"
    with tempfile.TemporaryDirectory(prefix="cleanroom-fhir-") as tmp:
        path = Path(tmp) / "upload.fhir"
        with path.open("wb") as out:
            for chunk in storage.iter_chunks(key):
                out.write(chunk)
        try:
            imported = read_fhir(
                path,
                max_bytes=settings.max_upload_mb << 20,
                max_resources=DEFAULT_LIMITS.max_rows,
            )
        except FhirError as err:
            raise IngestError(f"{name} cannot be imported as FHIR R5: {err}.") from None
    report = imported.report
    order = dependency_order(list(imported.frames))
    if not order:
        raise IngestError(
            f"{name} holds no resource the common data model has a table for ("
            + "; ".join(report.lines())
            + "). Check that the file was exported as FHIR R5."
        )
    written: list[str] = []
    try:
        keys: dict[str, str] = {}
        brought: dict[str, list[str]] = {}
        distinct: dict[str, dict[str, list[list[Any]]]] = {}
        samples: dict[str, dict[str, list[str]]] = {}
        for table_name in order:
            table_key = f"quarantine/{slug}/{uuid.uuid4().hex}/raw"
            written.append(table_key)
            frame = _fhir_frame(imported.frames[table_name], table_name)
            put_frame(storage, table_key, frame)
            keys[table_name] = table_key
            brought[table_name] = [str(c) for c in frame.columns]
            distinct[table_name] = site_terms.distinct_values(frame)
            samples[table_name] = sample_values(frame)
        fhir_info = {
            "upload": uuid.uuid4().hex,
            "tables": order,
            "report": report.lines(),
            "ok": report.ok,
            "unknown_types": dict(report.unknown_types),
            "unmapped_elements": len(report.unmapped_elements),
            "invalid": report.invalid_count,
            "missing_references": report.missing_reference_count,
            "withheld": sorted(report.withheld),
        }
        versions: list[DatasetVersion] = []
        for table_name in order:
            table = cdm_table(table_name)
            frame = imported.frames[table_name]
            columns = brought[table_name]
            mapping = _fhir_mapping(columns, table)
            version = DatasetVersion(
                institution_id=user.institution_id,
                cdm_table=table_name,
                version=_next_version(session, user.institution_id, table_name),
                state=VersionState.AWAITING_MAPPING,
                filename=name,
                file_kind=FileKind.FHIR,
                size=info.size,
                sha256=info.sha256 or "",
                raw_key=keys[table_name],
                rows=len(frame),
                additional_rows=additional,
                created_by=actor,
                profile=json.dumps(
                    {
                        "rows": len(frame),
                        "columns": len(columns),
                        "fhir": fhir_info,
                        "samples": samples[table_name],
                        "distinct": distinct[table_name],
                    }
                ),
                mapping=json.dumps(mapping.to_dict()),
            )
            session.add(version)
            session.flush()
            versions.append(version)
            record(
                session,
                actor=actor,
                action="upload",
                target=f"dataset:{version.id}",
                detail={
                    "table": table_name,
                    "filename": name,
                    "size": info.size,
                    "sha256": info.sha256,
                    "institution": slug,
                    "additional_rows": additional,
                    "fhir": True,
                    "rows": len(frame),
                },
            )
            # The columns are the data model's already; the file's codes for category
            # values may not be: a code or term the institution has not confirmed yet is
            # asked about on the version's page, like a spreadsheet's.
            listed = term_proposals(session, version, mapping)
            if any(t.open for ts in listed.values() for t in ts):
                continue
            decided = site_terms.decide(listed, {}, table)
            version.mapping = json.dumps({**mapping.to_dict(), "terms": decided})
            _forget_distinct(version)
            _queue_processing(
                session,
                settings,
                version,
                actor,
                "ingest.map",
                {"columns": sorted(columns), "unused_sources": 0, "automatic": "fhir"},
            )
        session.commit()
    except BaseException:
        session.rollback()
        for table_key in written:
            storage.delete(table_key)
        raise
    return versions


def dependency_order(tables: list[str]) -> list[str]:
    """``tables`` so that each comes after the tables it links to (``episode`` before
    ``collection`` before ``batch`` before ``custody_event``), otherwise in the data model's
    order: the order to release them in, so every link can be checked."""
    model = cdm()
    wanted = [t for t in model.table_names if t in tables]
    needs = {
        t: {
            c.references.split(".", 1)[0]
            for c in model.table(t).columns
            if c.references and c.references.split(".", 1)[0] in wanted
        }
        - {t}
        for t in wanted
    }
    order: list[str] = []
    while len(order) < len(wanted):
        ready = [t for t in wanted if t not in order and needs[t] <= set(order)]
        if not ready:  # a cycle (none in the data model): keep the model's order
            ready = [t for t in wanted if t not in order]
        order.append(ready[0])
    return order


def _fhir_frame(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """The columns a FHIR import filled (and the required ones, so validation reports them
    if empty): the mapping page then lists only what the file brought."""
    required = {c.name for c in cdm_table(table).columns if c.required}
    keep = [c for c in frame.columns if c in required or frame[c].notna().any()]
    return frame[keep or list(frame.columns)]


def _fhir_mapping(columns: list[str], table: Table) -> MappingProposal:
    """Every column onto itself, in the data model's unit (the reader converted them)."""
    matches = [
        ColumnMatch(
            source=c,
            target=c,
            confidence=1.0,
            reason=FHIR_REASON,
            unit=table.column(c).unit or None,
            factor=1.0,
        )
        for c in columns
    ]
    return MappingProposal(table=table.name, columns=matches)


def _next_version(session: Session, institution_id: int | None, table: str) -> int:
    current = session.scalar(
        select(func.max(DatasetVersion.version)).where(
            DatasetVersion.institution_id == institution_id, DatasetVersion.cdm_table == table
        )
    )
    return int(current or 0) + 1


# Job plumbing -------------------------------------------------------------------------------


@contextmanager
def _raw_copy(storage: Storage, version: DatasetVersion) -> Iterator[Path]:
    """The raw upload as a local temporary file (parsers need to seek; openpyxl wants the
    extension), removed afterwards."""
    key = version.raw_key
    with tempfile.TemporaryDirectory(prefix="cleanroom-ingest-") as tmp:
        path = Path(tmp) / f"raw.{version.file_kind or 'bin'}"
        with path.open("wb") as out:
            for chunk in storage.iter_chunks(key):
                out.write(chunk)
        yield path


def _put_bytes(storage: Storage, key: str, data: bytes) -> None:
    storage.put(key, io.BytesIO(data))


def _pick_sheet(sheets: list[str], table: Table) -> str | None:
    if len(sheets) == 1:
        return sheets[0]
    wanted = {
        table.name,
        table.name + "s",
        table.name.replace("_", " "),
        table.name.replace("_", " ") + "s",
    }
    matches = [s for s in sheets if s.strip().casefold() in wanted]
    return matches[0] if len(matches) == 1 else None


def _remembered(session: Session, version: DatasetVersion) -> dict[str, str]:
    row = session.scalar(
        select(InstitutionMapping).where(
            InstitutionMapping.institution_id == version.institution_id,
            InstitutionMapping.cdm_table == version.cdm_table,
        )
    )
    return json.loads(row.mapping) if row else {}


def _term_rows(session: Session, version: DatasetVersion) -> dict[tuple[str, str], InstitutionTerm]:
    """The version's institution's remembered terms for its table, by (column, term_key)."""
    rows = session.scalars(
        select(InstitutionTerm).where(
            InstitutionTerm.institution_id == version.institution_id,
            InstitutionTerm.cdm_table == version.cdm_table,
        )
    )
    return {(r.column, r.term_key): r for r in rows}


def remembered_terms(session: Session, version: DatasetVersion) -> dict[tuple[str, str], str]:
    """``{(column, term_key): value}`` the version's institution confirmed for its table."""
    return {key: row.value for key, row in _term_rows(session, version).items()}


def term_proposals(
    session: Session, version: DatasetVersion, proposal: MappingProposal | None = None
) -> dict[str, list[site_terms.Term]]:
    """The site terms of ``version``'s category columns under its (or ``proposal``'s)
    column mapping, each with what is proposed for it (:mod:`hub.ingest.terms`)."""
    if version.state != VersionState.AWAITING_MAPPING:
        return {}
    proposal = proposal or MappingProposal.from_dict(json.loads(version.mapping))
    distinct = json.loads(version.profile or "{}").get("distinct") or {}
    return site_terms.propose(
        cdm_table(version.cdm_table),
        proposal.sources(),
        distinct,
        remembered_terms(session, version),
    )


def institution_terms(session: Session, institution_id: int | None) -> list[InstitutionTerm]:
    """The institution's remembered terms, by table, column and term."""
    return list(
        session.scalars(
            select(InstitutionTerm)
            .where(InstitutionTerm.institution_id == institution_id)
            .order_by(InstitutionTerm.cdm_table, InstitutionTerm.column, InstitutionTerm.term_key)
        )
    )


def forget_term(
    session: Session, institution_id: int | None, term_id: int, *, actor: str
) -> InstitutionTerm:
    """Forget one of the institution's remembered terms (its next use is asked about
    again); another institution's term is not found."""
    row = session.get(InstitutionTerm, term_id)
    if row is None or row.institution_id != institution_id:
        raise NotFound("no such remembered term for your institution.")
    session.delete(row)
    record(
        session,
        actor=actor,
        action="ingest.term_forget",
        target=f"institution:{institution_id}",
        detail={"table": row.cdm_table, "column": row.column},
    )
    return row


def _forget_distinct(version: DatasetVersion) -> None:
    """Drop the file's distinct values from the profile once its terms are decided: they
    were kept only to ask about them, and a short column of names would otherwise outlive
    the file (the raw copy is deleted on release)."""
    profile = json.loads(version.profile or "{}")
    if profile.pop("distinct", None) is not None:
        version.profile = json.dumps(profile)


def _remember_terms(
    session: Session, version: DatasetVersion, decided: Mapping[str, Mapping[str, str]], actor: str
) -> None:
    """Keep the institution's confirmed terms for its next uploads (the latest wins). A
    term held back is not kept (a stray identifier in a category column must not outlive
    the upload) and forgets an earlier mapping of it: its next use is asked about again."""
    existing = _term_rows(session, version)
    for column, chosen in decided.items():
        for term, value in chosen.items():
            key = term_key(term)
            row = existing.get((column, key))
            if value == site_terms.HOLD_BACK:
                if row is not None:
                    session.delete(row)
                    del existing[(column, key)]
                continue
            if row is None:
                row = InstitutionTerm(
                    institution_id=version.institution_id,
                    cdm_table=version.cdm_table,
                    column=column,
                    term_key=key,
                )
                session.add(row)
                existing[(column, key)] = row
            elif row.value == value and row.term == term:
                continue
            row.term, row.value, row.confirmed_by = term[:200], value, actor


def _fail(database: Database, storage: Storage, version_id: int, error: CleanroomError) -> None:
    """The file cannot be ingested: say why, and keep nothing of it (the record stays, as
    history; the quarantine objects go once the state says so). The reason may quote the
    file, so the ledger, which the steward reads, gets only its kind."""
    with database.session() as s:
        version = get_version(s, version_id)
        version.state = VersionState.FAILED
        version.error = error.message
        record(
            s,
            actor="system",
            action="ingest.failed",
            target=f"dataset:{version_id}",
            detail={"code": error.code},
        )
    with database.session() as s:
        version = get_version(s, version_id)
        for attr in ("raw_key", "staged_key", "held_key", "report_key"):
            key = getattr(version, attr)
            if key:
                storage.delete(key)
                setattr(version, attr, "")


def _read(ctx: JobContext, version: DatasetVersion, path: Path, sheet: str | None) -> Any:
    return read_table(path, FileKind(version.file_kind), sheet=sheet or None)


def _recheck(ctx: JobContext, storage: Storage, version_id: int) -> None:
    """Before it reads the file, the job asks the policy again whether whoever queued it may
    still work on the version (an active user of its institution with the ``map`` right):
    a user disabled, moved or given another role while the job waited is refused, the
    version fails (nothing of the file kept) and the ledger says why."""
    with ctx.database.session() as s:
        institution = get_version(s, version_id).institution_id
    try:
        job_recheck.recheck(
            ctx,
            "map",
            f"datasets/{version_id}",
            owner=lambda user: user.institution_id == institution,
            what="process this upload",
        )
    except job_recheck.JobRefused as err:
        _fail(ctx.database, storage, version_id, err)
        raise


@task("ingest.profile")
def profile_job(ctx: JobContext) -> dict[str, Any]:
    """Parse the upload and propose a column mapping."""
    version_id = int(ctx.payload["version_id"])
    storage = get_storage(ctx.settings)
    _recheck(ctx, storage, version_id)
    with ctx.database.session() as s:
        version = get_version(s, version_id)
        version.state = VersionState.PROFILING
        s.expunge(version)
    ctx.progress(5, "reading the file")
    table = cdm_table(version.cdm_table)
    try:
        with _raw_copy(storage, version) as path:
            sheet = version.sheet or None
            sheets: list[str] = []
            if version.file_kind == FileKind.XLSX:
                sheets = list_sheets(path)
                if sheet is None:
                    sheet = _pick_sheet(sheets, table)
                    if sheet is None:
                        with ctx.database.session() as s:
                            v = get_version(s, version_id)
                            v.state = VersionState.AWAITING_SHEET
                            v.profile = json.dumps({"sheets": sheets})
                        return {"state": VersionState.AWAITING_SHEET}
            ctx.progress(30, "parsing")
            parsed = _read(ctx, version, path, sheet)
    except IngestError as err:
        _fail(ctx.database, storage, version_id, err)
        return {"state": VersionState.FAILED}
    ctx.progress(70, "matching columns to the common data model")
    with ctx.database.session() as s:
        remembered = _remembered(s, version)
    proposal = propose_mapping(parsed.frame, table, remembered)
    ctx.progress(85, "checking which table the file looks like")
    looks_like = guess_other_table(parsed.frame, table, proposal)
    with ctx.database.session() as s:
        v = get_version(s, version_id)
        v.sheet = sheet or ""
        v.rows = parsed.rows
        v.profile = json.dumps(
            {
                "sheets": sheets,
                "encoding": parsed.encoding,
                "delimiter": parsed.delimiter,
                "rows": parsed.rows,
                "columns": parsed.columns,
                "warnings": parsed.warnings,
                "samples": sample_values(parsed.frame),
                "distinct": site_terms.distinct_values(parsed.frame),
                "looks_like": looks_like,
            }
        )
        v.mapping = json.dumps(proposal.to_dict())
        v.state = VersionState.AWAITING_MAPPING
    return {"state": VersionState.AWAITING_MAPPING, "rows": parsed.rows}


SAMPLES = 3
"""Distinct example values per column shown on the mapping page."""
_GUESS_ROWS = 200


def sample_values(frame: pd.DataFrame, n: int = SAMPLES) -> dict[str, list[str]]:
    """A few distinct non-empty values of each column, as uploaded (the mapping page shows
    them to the uploading institution only, like every part of the profile)."""
    out: dict[str, list[str]] = {}
    for name in frame.columns:
        values = frame[name].dropna().astype(str).str.strip()
        values = values[values != ""]
        shown = list(dict.fromkeys(values.head(200)))[:n]
        out[str(name)] = [v if len(v) <= 40 else v[:39] + "…" for v in shown]
    return out


def _own_matches(proposal: MappingProposal, table: Table) -> int:
    """Columns matched by name to a column of ``table`` that is its own, not a link to
    another table (``coi_id`` is in most tables, so it says nothing about which one)."""
    links = {c.name for c in table.columns if c.references}
    return sum(
        1 for m in proposal.columns if m.target and m.target not in links and m.confidence >= _NAMED
    )


_NAMED = 0.85  # a match by name or synonym (value-based guesses score lower)


def guess_other_table(
    frame: pd.DataFrame, table: Table, proposal: MappingProposal
) -> dict[str, Any] | None:
    """Another CDM table that clearly fits the file better than ``table`` (a ``collection``
    file uploaded as ``batch``): ``{"table", "matched", "matched_here", "columns"}``,
    counting the columns matched by name to each table's own columns."""
    here = _own_matches(proposal, table)
    head = frame.head(_GUESS_ROWS)
    best: tuple[int, str] | None = None
    for other in cdm().tables:
        if other.name == table.name:
            continue
        matched = _own_matches(propose_mapping(head, other, {}), other)
        if best is None or matched > best[0]:
            best = (matched, other.name)
    if best is None:
        return None
    matched, name = best
    if matched >= 2 and matched > 2 * here:
        return {
            "table": name,
            "matched": matched,
            "matched_here": here,
            "columns": len(proposal.columns),
        }
    return None


# Upload order and versions ------------------------------------------------------------------

PENDING_STATES = (
    VersionState.UPLOADED,
    VersionState.PROFILING,
    VersionState.AWAITING_SHEET,
    VersionState.AWAITING_MAPPING,
    VersionState.PROCESSING,
    VersionState.AWAITING_REVIEW,
)


def upload_order(session: Session, institution_id: int | None, table: str) -> list[dict[str, Any]]:
    """The tables ``table`` links to that the institution has not released yet, in CDM order:
    ``{"table", "columns", "pending": version number or None}`` (``pending``: uploaded but
    not released). Their links cannot be checked until they are released."""
    wanted: dict[str, list[str]] = {}
    for col in cdm_table(table).columns:
        if col.references:
            ref_table = col.references.split(".", 1)[0]
            if ref_table != table:
                wanted.setdefault(ref_table, []).append(col.name)
    out = []
    for ref_table, columns in wanted.items():
        states = dict(
            session.execute(
                select(DatasetVersion.state, func.max(DatasetVersion.version))
                .where(
                    DatasetVersion.institution_id == institution_id,
                    DatasetVersion.cdm_table == ref_table,
                )
                .group_by(DatasetVersion.state)
            ).all()
        )
        if VersionState.RELEASED in states:
            continue
        pending = [states[st] for st in PENDING_STATES if st in states]
        out.append({"table": ref_table, "columns": columns, "pending": max(pending, default=None)})
    return out


def superseded_by(session: Session, version: DatasetVersion) -> list[DatasetVersion]:
    """The released versions that releasing ``version`` withdraws: every released version
    of the same table from the same institution, unless ``version`` is additional rows."""
    if version.additional_rows:
        return []
    return list(
        session.scalars(
            select(DatasetVersion)
            .where(
                DatasetVersion.institution_id == version.institution_id,
                DatasetVersion.cdm_table == version.cdm_table,
                DatasetVersion.state == VersionState.RELEASED,
                DatasetVersion.id != version.id,
            )
            .order_by(DatasetVersion.version)
        )
    )


# Sheet and mapping choices -------------------------------------------------------------------


def choose_sheet(
    session: Session, settings: Settings, version: DatasetVersion, sheet: str, *, actor: str
) -> None:
    _require_state(version, VersionState.AWAITING_SHEET, doing="given a sheet")
    sheets = json.loads(version.profile or "{}").get("sheets", [])
    if sheet not in sheets:
        raise BadRequest(f"the workbook has no sheet {sheet!r}; it has {', '.join(sheets)}.")
    version.sheet = sheet
    version.state = VersionState.UPLOADED
    version.job_id = enqueue(
        session, "ingest.profile", {"version_id": version.id}, actor=actor, settings=settings
    ).id


def confirm_mapping(
    session: Session,
    settings: Settings,
    version: DatasetVersion,
    choices: Mapping[str, Mapping[str, Any]],
    *,
    actor: str,
    terms: Mapping[str, Mapping[str, str]] | None = None,
    accept_proposed_terms: bool = False,
) -> None:
    """Apply the contributor's mapping: ``{source: {"target": cdm column or "", "unit":
    label}}``, and their decisions on the file's terms for category values (``{column:
    {term: value, or "" to hold its rows back}}``; ``accept_proposed_terms`` takes every
    proposal as it stands). Remembers both for the institution's next upload and queues
    processing.

    While a term is still open (new, or proposed and not confirmed) nothing is queued: the
    column mapping chosen so far is kept, so the page can ask about the terms of the
    columns it now maps, and :class:`BadRequest` ``terms_unconfirmed`` names them."""
    _require_state(version, VersionState.AWAITING_MAPPING, doing="mapped")
    table = cdm_table(version.cdm_table)
    proposal = MappingProposal.from_dict(json.loads(version.mapping))
    confirmed = proposal.with_choices(choices, table)
    if confirmed.missing_required:
        raise BadRequest(
            "required column(s) "
            + ", ".join(f"`{c}`" for c in confirmed.missing_required)
            + " have no source column; map them or fix the file and upload again.",
            code="missing_required",
        )
    listed = term_proposals(session, version, confirmed)
    try:
        decided = site_terms.decide(
            listed, terms or {}, table, accept_proposals=accept_proposed_terms
        )
    except BadRequest as err:
        if err.code == "terms_unconfirmed":
            version.mapping = json.dumps(confirmed.to_dict())
            session.commit()
        raise
    _remember_terms(session, version, decided, actor)
    version.mapping = json.dumps({**confirmed.to_dict(), "terms": decided})
    _forget_distinct(version)
    remembered = session.scalar(
        select(InstitutionMapping).where(
            InstitutionMapping.institution_id == version.institution_id,
            InstitutionMapping.cdm_table == version.cdm_table,
        )
    )
    if remembered is None:
        remembered = InstitutionMapping(
            institution_id=version.institution_id, cdm_table=version.cdm_table
        )
        session.add(remembered)
    remembered.mapping = json.dumps(confirmed.as_mapping())
    # The ledger names the CDM columns only: the source names are the file's header (or,
    # in a file without one, its first row).
    targets = sorted(confirmed.as_mapping().values())
    detail: dict[str, Any] = {
        "columns": targets,
        "unused_sources": len(confirmed.columns) - len(targets),
    }
    if decided:
        chosen = [v for c in decided.values() for v in c.values()]
        detail["terms"] = {
            "mapped": sum(1 for v in chosen if v),
            "held_back": sum(1 for v in chosen if not v),
        }
    _queue_processing(session, settings, version, actor, "ingest.map", detail)


def _queue_processing(
    session: Session,
    settings: Settings,
    version: DatasetVersion,
    actor: str,
    action: str,
    detail: dict[str, Any],
) -> None:
    """Queue (re)processing of ``version``, recording why in the ledger."""
    version.state = VersionState.PROCESSING
    version.job_id = enqueue(
        session, "ingest.process", {"version_id": version.id}, actor=actor, settings=settings
    ).id
    record(session, actor=actor, action=action, target=f"dataset:{version.id}", detail=detail)


# Validate and de-identify ---------------------------------------------------------------


def _staging_prefix(version: DatasetVersion) -> str:
    return version.raw_key.rsplit("/", 1)[0]


def _pool_key(version: DatasetVersion, slug: str, epoch: int = 1) -> str:
    part = "part-0" if epoch <= 1 else f"part-e{epoch}"
    return f"pool/{version.cdm_table}/institution={slug}/version={version.version}/{part}.parquet"


def _keys_key(version: DatasetVersion, slug: str, epoch: int = 1) -> str:
    part = "keys" if epoch <= 1 else f"keys-e{epoch}"
    return f"keys/{version.cdm_table}/institution={slug}/version={version.version}/{part}.parquet"


def referenced_columns(table: Table) -> list[str]:
    """Columns of ``table`` that other tables reference (``episode.coi_id`` ...)."""
    wanted = {
        c.references.split(".", 1)[1]
        for other in cdm().tables
        for c in other.columns
        if c.references and c.references.split(".", 1)[0] == table.name
    }
    return [c.name for c in table.columns if c.name in wanted]


@dataclass(frozen=True)
class _PseudonymKeys:
    """Released keys, held as pseudonyms, that answer ``isin`` for raw values (validation
    calls it): the raw values are pseudonymised with the same key chain and compared."""

    pseudonyms: frozenset[str]
    key: KeyChain

    def isin(self, values: pd.Series) -> pd.Series:
        return pseudonymise(values, self.key).isin(self.pseudonyms)


def _known_keys(
    database: Database, storage: Storage, version: DatasetVersion, table: Table, key: KeyChain
) -> dict[str, _PseudonymKeys]:
    """Keys of the institution's released tables that this table references, as raw-value
    membership tests: the pool holds pseudonyms, so values are compared as pseudonyms."""
    wanted = {c.references for c in table.columns if c.references}
    known: dict[str, _PseudonymKeys] = {}
    for ref in sorted(r for r in wanted if r):
        ref_table, ref_column = ref.split(".", 1)
        with database.session() as s:
            rows = s.execute(
                select(DatasetVersion.keys_key, DatasetVersion.pool_key).where(
                    DatasetVersion.institution_id == version.institution_id,
                    DatasetVersion.cdm_table == ref_table,
                    DatasetVersion.state == VersionState.RELEASED,
                )
            ).all()
        sibling = _fhir_sibling(database, version, ref_table)
        if not rows and sibling is None:
            continue
        pseudonyms: set[str] = set()
        for keys_key, pool_key in rows:
            with storage.open(keys_key or pool_key) as fh:
                column = pq.read_table(pa.BufferReader(fh.read()), columns=[ref_column])
            pseudonyms.update(str(v) for v in column.column(0).to_pylist() if v is not None)
        if sibling is not None and storage.exists(sibling):
            # The linked table came in the same FHIR file: its records count as known, so a
            # collection links to the episode uploaded with it before that is released.
            with storage.open(sibling) as fh:
                parquet = pq.ParquetFile(pa.BufferReader(fh.read()))
            if ref_column in parquet.schema_arrow.names:
                raw = parquet.read(columns=[ref_column]).column(0).to_pylist()
                values = pd.Series([str(v) for v in raw if v is not None], dtype=object)
                pseudonyms.update(pseudonymise(values, key))
        known[ref] = _PseudonymKeys(frozenset(pseudonyms), key)
    return known


def _fhir_sibling(database: Database, version: DatasetVersion, table: str) -> str | None:
    """The raw object of ``table`` from the same FHIR upload as ``version``, if it is still
    pending or released (not discarded, failed or withdrawn)."""
    upload = json.loads(version.profile or "{}").get("fhir", {}).get("upload")
    if not upload or version.file_kind != FileKind.FHIR:
        return None
    with database.session() as s:
        candidates = s.scalars(
            select(DatasetVersion).where(
                DatasetVersion.institution_id == version.institution_id,
                DatasetVersion.cdm_table == table,
                DatasetVersion.file_kind == FileKind.FHIR,
                DatasetVersion.state.in_([*PENDING_STATES, VersionState.RELEASED]),
            )
        ).all()
        for other in candidates:
            if json.loads(other.profile or "{}").get("fhir", {}).get("upload") == upload:
                return other.raw_key or None
    return None


def _formulas(raw: pd.DataFrame, proposal: MappingProposal) -> list[dict[str, Any]]:
    """Cells of the upload a spreadsheet would run, per source column (named with the CDM
    column it maps to, if any). Every file the hub writes neutralises them."""
    targets = proposal.as_mapping()
    return [{**f, "target": targets.get(f["column"])} for f in formula_cells(raw)]


def _overlaps(
    database: Database,
    storage: Storage,
    version: DatasetVersion,
    table: Table,
    valid: pd.DataFrame,
    chain: KeyChain,
) -> list[dict[str, Any]]:
    """Keys of this upload's valid rows already in another released version of the same
    table from the same institution: ``{"column", "count", "versions", "examples"}``. The
    pool holds pseudonyms (or, for a column kept as is, the value), so both are compared."""
    key = table.primary_key[0] if table.primary_key else None
    if key is None or key not in valid or valid[key].notna().sum() == 0:
        return []
    with database.session() as s:
        rows = s.execute(
            select(DatasetVersion.version, DatasetVersion.keys_key, DatasetVersion.pool_key).where(
                DatasetVersion.institution_id == version.institution_id,
                DatasetVersion.cdm_table == version.cdm_table,
                DatasetVersion.state == VersionState.RELEASED,
                DatasetVersion.id != version.id,
            )
        ).all()
    values = valid[key].dropna().astype(str)
    if not rows or values.empty:
        return []
    pseudonyms = pseudonymise(values, chain)
    hit = pd.Series(False, index=values.index)
    versions: list[int] = []
    for number, keys_key, pool_key in rows:
        found = None
        for object_key in (keys_key, pool_key):
            if not object_key or not storage.exists(object_key):
                continue
            with storage.open(object_key) as fh:
                parquet = pq.ParquetFile(pa.BufferReader(fh.read()))
            if key in parquet.schema_arrow.names:  # read that one column only
                column = parquet.read(columns=[key]).column(0)
                found = {str(x) for x in column.to_pylist() if x is not None}
                break
        if not found:
            continue
        here = pseudonyms.isin(found) | values.isin(found)
        if here.any():
            versions.append(int(number))
            hit |= here
    if not hit.any():
        return []
    examples = list(dict.fromkeys(values[hit]))[:3]
    return [
        {
            "column": key,
            "count": int(hit.sum()),
            "versions": sorted(versions),
            "examples": examples,
        }
    ]


def _reference_gaps(result: Any) -> list[dict[str, Any]]:
    """Links held back because the linked record is not in the institution's released
    table: ``{"column", "table", "count", "examples"}``, so the page can say which table to
    upload first."""
    gaps = []
    for report in result.column_reports:
        error = report.by_rule.get(Rule.REFERENCE)
        if error is None:
            continue
        ref = cdm_table(result.table).column(report.column).references or ""
        gaps.append(
            {
                "column": report.column,
                "table": ref.split(".", 1)[0],
                "count": error.count,
                "examples": list(error.examples[:3]),
            }
        )
    return gaps


@task("ingest.process")
def process_job(ctx: JobContext) -> dict[str, Any]:
    """Apply the confirmed mapping, validate, de-identify the valid rows and stage them.
    Runs again, with the contributor's stronger choices, when they ask for them."""
    version_id = int(ctx.payload["version_id"])
    storage = get_storage(ctx.settings)
    _recheck(ctx, storage, version_id)
    chain = ctx.settings.key_chain
    with ctx.database.session() as s:
        version = get_version(s, version_id)
        slug = version.institution.slug
        s.expunge(version)
    table = cdm_table(version.cdm_table)
    proposal = MappingProposal.from_dict(json.loads(version.mapping))
    choices = deid.Choices.from_json(version.deid_choices)
    ctx.progress(5, "reading the file")
    try:
        with _raw_copy(storage, version) as path:
            parsed = _read(ctx, version, path, version.sheet)
    except IngestError as err:
        _fail(ctx.database, storage, version_id, err)
        return {"state": VersionState.FAILED}
    ctx.progress(25, "mapping columns")
    mapped = apply_mapping(parsed.frame, proposal, table)
    mapped = site_terms.apply(mapped, json.loads(version.mapping).get("terms") or {})
    ctx.progress(40, "validating")
    known = _known_keys(ctx.database, storage, version, table, chain)
    # Examples in full: the report is read by the uploading institution only (its own data).
    fhir_info = json.loads(version.profile or "{}").get("fhir") or {}
    withheld = {
        c.split(".", 1)[1] for c in fhir_info.get("withheld", []) if c.startswith(f"{table.name}.")
    }
    result = validate(
        mapped,
        table,
        factors=proposal.factors(),
        known_keys=known,
        mask_identifiers=False,
        withheld=withheld,
    )
    valid = result.frame[result.valid_mask]
    ctx.progress(55, "comparing with your released versions")
    checks = {
        "formulas": _formulas(parsed.frame, proposal),
        "overlaps": _overlaps(ctx.database, storage, version, table, valid, chain),
        "reference_gaps": _reference_gaps(result),
    }
    ctx.progress(60, "de-identifying")
    anchors = deid.resolve_anchors(ctx.database, storage, table, valid, chain)
    steps = max(1, len(valid.columns) + 2)
    # The site's own released vocabulary (facilities, devices, suppliers) and its name are
    # never scrubbed as people's names (docs/deidentification.md).
    allow = deid.site_vocabulary(ctx.database, storage, table, version.institution_id)
    engine = deid.run(
        valid,
        table,
        allow=allow,
        chain=chain,
        k=ctx.settings.deid_k,
        choices=choices,
        anchors=anchors,
        scrub_free_text=ctx.settings.deid_scrub_free_text,
        progress=lambda done, label: ctx.progress(60 + 25 * done // steps, label),
    )
    report = engine.report
    # The pool keeps every CDM column (one schema per table); the report names only the
    # columns this file brought.
    brought = set(proposal.as_mapping().values())
    report["columns"] = [c for c in report["columns"] if c["name"] in brought]
    ctx.progress(88, "staging the de-identified version")
    prefix = _staging_prefix(version)
    staged_key = f"{prefix}/deidentified.parquet"
    report_key = f"{prefix}/validation-report.csv"
    held_key = f"{prefix}/held-back.csv"
    put_frame(storage, staged_key, engine.frame)
    index_key = ""
    if referenced := [c for c in referenced_columns(table) if c in valid]:
        index_key = f"{prefix}/keys.parquet"
        put_frame(
            storage,
            index_key,
            pd.DataFrame({c: pseudonymise(valid[c], chain) for c in referenced}),
        )
    _put_bytes(storage, report_key, report_csv(result).encode("utf-8"))
    _put_bytes(storage, held_key, _held_back_csv(parsed.frame, result).encode("utf-8"))
    with ctx.database.session() as s:
        v = get_version(s, version_id)
        v.staged_key, v.report_key, v.held_key = staged_key, report_key, held_key
        v.keys_key = index_key
        v.rows = int(len(result.frame))
        v.valid_rows = int(result.valid_mask.sum())
        v.validation = json.dumps({**result.to_dict(), **checks})
        v.deid = json.dumps(report)
        if not choices.columns and choices.k is None:
            v.deid_floor = json.dumps(deid.floor_of(report))
        v.key_epoch = len(chain)
        v.cdm_version = cdm_version()
        v.state = VersionState.AWAITING_REVIEW
        record(
            s,
            actor="system",
            action="ingest.processed",
            target=f"dataset:{version_id}",
            detail={
                "rows": v.rows,
                "valid_rows": v.valid_rows,
                "institution": slug,
                "k": report["k"],
                "rows_suppressed": report["risk"]["rows_suppressed"],
                "choices": choices.to_dict(),
                "cdm_version": v.cdm_version,
            },
        )
    return {"state": VersionState.AWAITING_REVIEW, "valid_rows": int(result.valid_mask.sum())}


def choose_deidentification(
    session: Session,
    settings: Settings,
    version: DatasetVersion,
    body: Mapping[str, Any],
    *,
    actor: str,
) -> None:
    """Strengthen the de-identification of a version under review (``{"columns": {name:
    action}, "k": n}``, checked against its floor) and process it again."""
    _require_state(version, VersionState.AWAITING_REVIEW, doing="given stronger choices")
    floor = json.loads(version.deid_floor or "{}")
    choices = deid.check_choices(floor, body, k_floor=settings.deid_k)
    version.deid_choices = json.dumps(choices.to_dict())
    _queue_processing(session, settings, version, actor, "ingest.deid_choices", choices.to_dict())


def _held_back_csv(raw: pd.DataFrame, result: Any) -> str:
    """The rows held back, as the contributor uploaded them, with what is wrong with each.
    Only the uploading institution can download it (it is raw data)."""
    buf = io.StringIO()
    writer = SafeWriter(buf)
    errors = result.row_errors
    writer.writerow(["row", "problems", *raw.columns])  # the file's own header: data too
    if len(errors):
        by_row = errors.groupby("row")["message"].apply(lambda m: "; ".join(m))
        positions = [int(r) - 2 for r in by_row.index]  # file row 2 is the first data row
        subset = raw.iloc[positions]
        for (row, problems), values in zip(
            by_row.items(), subset.itertuples(index=False), strict=True
        ):
            writer.writerow([row, problems, *values])
    return buf.getvalue()


# Review, release, withdrawal ------------------------------------------------------------


def release(
    session: Session,
    settings: Settings,
    storage: Storage,
    version: DatasetVersion,
    *,
    actor: str,
    approved: bool,
) -> None:
    """Publish the staged de-identified version to the pool, then drop the raw copy.
    ``approved`` is the contributor's approval of the de-identification report."""
    _require_state(version, VersionState.AWAITING_REVIEW, doing="released")
    if not approved:
        raise BadRequest(
            "approve the de-identification report before releasing: review it, then release "
            'with the approval box ticked (API: {"approve_deidentification": true}).',
            code="approval_required",
        )
    if version.valid_rows == 0:
        raise BadRequest("no row passed validation; fix the file and upload it again.")
    report = json.loads(version.deid or "{}")
    if report.get("rows_out") == 0:
        raise BadRequest(
            f"k-anonymity (k={report.get('k')}) left no row to release: the table is too small "
            "or its quasi-identifiers too detailed. Upload more rows together, or leave out "
            "quasi-identifier columns you do not need to share.",
            code="nothing_to_release",
        )
    slug = version.institution.slug
    pool_key = _pool_key(version, slug, version.key_epoch)
    storage.copy(version.staged_key, pool_key)  # invisible until the state below commits
    version.pool_key = pool_key
    if version.keys_key:
        keys_key = _keys_key(version, slug, version.key_epoch)
        storage.copy(version.keys_key, keys_key)
        version.keys_key = keys_key
    version.state = VersionState.RELEASED
    version.released_at = utcnow()
    version.released_by = actor
    # The versions it replaces leave the pool in the same transaction, through the
    # withdrawal path (synthetic versions made from them and the ledger included).
    replaced = superseded_by(session, version)
    doomed: list[str] = []
    for old in replaced:
        doomed += _mark_withdrawn(session, old, actor=actor, replaced_by=version)
    # Other domains follow (synthesis makes a version shared as synthetic only now).
    events.emit(
        events.DATASET_RELEASED, session=session, settings=settings, version=version, actor=actor
    )
    if settings.raw_retention_days > 0:
        version.raw_delete_after = utcnow() + timedelta(days=settings.raw_retention_days)
        enqueue(
            session,
            "ingest.expire_raw",
            {"version_id": version.id},
            actor="system",
            settings=settings,
            run_after=version.raw_delete_after,
        )
    record(
        session,
        actor=actor,
        action="release",
        target=f"dataset:{version.id}",
        detail={
            "table": version.cdm_table,
            "version": version.version,
            "rows": version.valid_rows,
            "held_back": version.rows - version.valid_rows,
            "pool_key": pool_key,
            "deidentification_approved": True,
            "report_sha256": hashlib.sha256((version.deid or "").encode()).hexdigest(),
            "additional_rows": version.additional_rows,
            "replaces": [old.version for old in replaced],
        },
    )
    session.commit()
    _delete_objects(session, storage, doomed)
    _drop_quarantine(session, storage, version, keep_raw=settings.raw_retention_days > 0)


def _drop_quarantine(
    session: Session, storage: Storage, version: DatasetVersion, *, keep_raw: bool
) -> None:
    staged_index = f"{_staging_prefix(version)}/keys.parquet" if version.raw_key else ""
    if staged_index and storage.exists(staged_index):
        storage.delete(staged_index)
    doomed = ["staged_key"] + ([] if keep_raw else ["raw_key"])
    for attr in doomed:
        key = getattr(version, attr)
        if key:
            storage.delete(key)
            setattr(version, attr, "")
    session.commit()


@task("ingest.expire_raw")
def expire_raw_job(ctx: JobContext) -> dict[str, Any]:
    """Delete a released version's raw copy once its retention period is over."""
    storage = get_storage(ctx.settings)
    with ctx.database.session() as s:
        version = get_version(s, int(ctx.payload["version_id"]))
        if not version.raw_key:
            return {"deleted": False}
        storage.delete(version.raw_key)
        version.raw_key = ""
        record(s, actor="system", action="ingest.raw_deleted", target=f"dataset:{version.id}")
    return {"deleted": True}


def reject(session: Session, storage: Storage, version: DatasetVersion, *, actor: str) -> None:
    """Discard a version before release: its quarantine objects are deleted."""
    _require_state(
        version,
        VersionState.AWAITING_SHEET,
        VersionState.AWAITING_MAPPING,
        VersionState.AWAITING_REVIEW,
        doing="discarded",
    )
    version.state = VersionState.REJECTED
    record(session, actor=actor, action="ingest.reject", target=f"dataset:{version.id}")
    session.commit()
    for attr in ("raw_key", "staged_key", "held_key", "report_key", "keys_key"):
        key = getattr(version, attr)
        if key:
            storage.delete(key)
            setattr(version, attr, "")
    session.commit()


def withdraw(session: Session, storage: Storage, version: DatasetVersion, *, actor: str) -> None:
    """Take a released version out of the pool: no query after this sees it, and every
    synthetic version trained on it is withdrawn too (its rows and plots deleted)."""
    _require_state(version, VersionState.RELEASED, doing="withdrawn")
    doomed = _mark_withdrawn(session, version, actor=actor)
    session.commit()
    _delete_objects(session, storage, doomed)


def _mark_withdrawn(
    session: Session,
    version: DatasetVersion,
    *,
    actor: str,
    replaced_by: DatasetVersion | None = None,
) -> list[str]:
    """Mark ``version`` withdrawn, with its ledger entry and every synthetic version made
    from it; the caller commits, then deletes the returned objects."""
    version.state = VersionState.WITHDRAWN
    version.withdrawn_at = utcnow()
    version.withdrawn_by = actor
    detail: dict[str, Any] = {"table": version.cdm_table, "version": version.version}
    if replaced_by is not None:
        detail["replaced_by"] = replaced_by.version
    record(session, actor=actor, action="withdrawal", target=f"dataset:{version.id}", detail=detail)
    # Other domains follow (synthesis withdraws every synthetic version made from it) and
    # return the objects of theirs to delete.
    followers = events.emit(events.DATASET_WITHDRAWN, session=session, version=version, actor=actor)
    others = [key for keys in followers for key in keys]
    return [k for k in (version.pool_key, version.keys_key, *others) if k]


def _delete_objects(session: Session, storage: Storage, keys: list[str]) -> None:
    """Delete objects no committed state points at any more."""
    for key in keys:
        storage.delete(key)
    session.commit()


def released_keys(session: Session, table: str) -> list[str]:
    """Pool objects of every released version of ``table`` (what the gateway may read);
    versions shared as synthetic only are not among them."""
    return list(
        session.scalars(
            select(DatasetVersion.pool_key).where(
                DatasetVersion.cdm_table == table,
                DatasetVersion.state == VersionState.RELEASED,
                DatasetVersion.synthetic_only.is_(False),
            )
        )
    )


def version_dict(version: DatasetVersion, *, content: bool) -> dict[str, Any]:
    """The version as JSON. ``content`` says whether the caller may read what is derived
    from the file (policies: ``read`` on ``datasets/<id>/content``, the uploading
    institution only); without it the file-derived parts are :func:`version_reports`'
    content-free ones."""
    return {
        "id": version.id,
        "table": version.cdm_table,
        "version": version.version,
        "institution": version.institution.slug if version.institution else None,
        "state": version.state,
        "filename": version.filename,
        "file_kind": version.file_kind,
        "size": version.size,
        "sha256": version.sha256,
        "rows": version.rows,
        "valid_rows": version.valid_rows,
        "job_id": version.job_id,
        "key_epoch": version.key_epoch,
        "synthetic_only": version.synthetic_only,
        "additional_rows": version.additional_rows,
        "cdm_version": version.cdm_version,
        "created_at": version.created_at.isoformat() if version.created_at else None,
        "released_at": version.released_at.isoformat() if version.released_at else None,
        "withdrawn_at": version.withdrawn_at.isoformat() if version.withdrawn_at else None,
        **version_reports(version, content=content),
    }


# What a version shows to whoever may not read its content --------------------------------
#
# The steward administers versions but never sees institutions' data. Everything a version
# holds that is derived from its file (error texts quoting cells, validation examples and
# messages, category values named by generalisation, the header's column names, sheet names)
# is replaced by a content-free view: counts, the common data model's own column names and
# the kind of each problem. The views are built by allowlist, so a field added to a report
# later stays hidden from them until it is added here.

HIDDEN_ERROR = "the reason is shown to the uploading institution only: it may quote the file."
_SUMMARY_COUNTS = ("rows", "valid_rows", "invalid_rows")
_RISK_NUMBERS = (
    "rows",
    "k_target",
    "k_before",
    "k_after",
    "l",
    "rows_suppressed",
    "cells_suppressed",
    "max_risk",
    "average_risk",
    "share_small_classes",
    "budget_exceeded",
)
_REPORT_NUMBERS = ("rows_in", "rows_out", "k", "l")
_ANCHOR_COUNTS = ("known", "created", "self_anchored_lots")


def version_reports(version: DatasetVersion, *, content: bool) -> dict[str, Any]:
    """The parts of ``version`` derived from its file: as stored when ``content``, else
    content-free (see above)."""
    mapping = json.loads(version.mapping or "{}")
    validation = json.loads(version.validation or "{}")
    report = json.loads(version.deid or "{}")
    floor = json.loads(version.deid_floor or "{}")
    choices = json.loads(version.deid_choices or "{}")
    if content:
        return {
            "sheet": version.sheet or None,
            "error": version.error or None,
            "mapping": mapping,
            "validation": validation,
            "deidentification": report,
            "deidentification_floor": floor,
            "deidentification_choices": choices,
        }
    names = frozenset(cdm_table(version.cdm_table).column_names)
    return {
        "sheet": None,
        "error": HIDDEN_ERROR if version.error else None,
        "mapping": {},
        "validation": _content_free_validation(validation),
        "deidentification": _content_free_report(report, names),
        "deidentification_floor": {n: a for n, a in floor.items() if n in names},
        "deidentification_choices": _content_free_choices(choices, names),
    }


def _content_free_validation(validation: Mapping[str, Any]) -> dict[str, Any]:
    """Row counts and problems counted by rule; no column of the file is named."""
    summary = validation.get("summary")
    if not summary:
        return {}
    rules = {str(r) for r in Rule}
    return {
        "summary": {
            **{k: summary[k] for k in _SUMMARY_COUNTS if k in summary},
            "by_rule": {r: n for r, n in (summary.get("by_rule") or {}).items() if r in rules},
            "ignored_column_count": len(summary.get("ignored_columns") or ()),
        }
    }


def _content_free_choices(choices: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    if not choices:
        return {}
    columns = choices.get("columns") or {}
    return {
        "columns": {n: a for n, a in columns.items() if n in names},
        "k": choices.get("k"),
    }


def _content_free_report(report: Mapping[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """What de-identification did, by CDM column and in numbers: each column's class and
    kind of action (``generalise``, not which categories were merged), k and the risk
    figures; no example, no generalisation step, no attention note (they name values)."""
    if not report:
        return {}
    risk = report.get("risk") or {}
    anchors = report.get("anchors")
    out: dict[str, Any] = {
        "columns": [
            _content_free_column(c) for c in report.get("columns", []) if c.get("name") in names
        ],
        **{k: report[k] for k in _REPORT_NUMBERS if k in report},
        "quasi": [q for q in report.get("quasi", []) if q in names],
        "risk": {
            **{k: risk[k] for k in _RISK_NUMBERS if k in risk},
            "cells_by_column": {
                n: c for n, c in (risk.get("cells_by_column") or {}).items() if n in names
            },
        },
        "attention_count": len(report.get("attention") or ()),
    }
    if report.get("l_sensitive") in names:
        out["l_sensitive"] = report["l_sensitive"]
    if isinstance(anchors, Mapping):
        out["anchors"] = {k: anchors[k] for k in _ANCHOR_COUNTS if k in anchors}
    if "choices" in report:
        out["choices"] = _content_free_choices(report["choices"] or {}, names)
    return out


def _content_free_column(column: Mapping[str, Any]) -> dict[str, Any]:
    kind = deid.short_action(str(column.get("action", "")))
    return {
        "name": column["name"],
        "class": column.get("class"),
        "entity": column.get("entity"),  # a detector's label (PERSON, UK_NHS …)
        "confidence": column.get("confidence"),
        "action": kind,
        "action_kind": kind,
        "needs_attention": bool(column.get("needs_attention")),
        "chosen": bool(column.get("chosen")),
    }


def cdm() -> CommonDataModel:
    return load_cdm()
