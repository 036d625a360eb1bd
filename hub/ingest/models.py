"""Uploaded dataset versions and each institution's remembered column mappings and terms."""

from __future__ import annotations

import enum
from datetime import date, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hub.accounts.models import Institution
from hub.db import Base, UTCDateTime, utcnow


class VersionState(enum.StrEnum):
    """Where a dataset version is in the pipeline. Only ``released`` versions are pooled."""

    UPLOADED = "uploaded"  # raw file in quarantine, profiling queued
    PROFILING = "profiling"
    AWAITING_SHEET = "awaiting_sheet"  # a workbook with several sheets: which one?
    AWAITING_MAPPING = "awaiting_mapping"  # the contributor confirms the column mapping
    PROCESSING = "processing"  # map, validate, de-identify
    AWAITING_REVIEW = "awaiting_review"  # the contributor reviews and releases
    RELEASED = "released"
    WITHDRAWN = "withdrawn"
    REJECTED = "rejected"  # discarded by the contributor before release
    FAILED = "failed"


ACTIVE_STATES = frozenset({VersionState.UPLOADED, VersionState.PROFILING, VersionState.PROCESSING})


class DatasetVersion(Base):
    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("institution_id", "cdm_table", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"), index=True)
    cdm_table: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(32), default=VersionState.UPLOADED, index=True)
    filename: Mapped[str] = mapped_column(String(255))
    file_kind: Mapped[str] = mapped_column(String(16), default="")
    sheet: Mapped[str] = mapped_column(String(255), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str] = mapped_column(String(64), default="")
    # Object keys; emptied when the object is deleted.
    raw_key: Mapped[str] = mapped_column(String(400), default="")
    staged_key: Mapped[str] = mapped_column(String(400), default="")
    held_key: Mapped[str] = mapped_column(String(400), default="")
    report_key: Mapped[str] = mapped_column(String(400), default="")
    pool_key: Mapped[str] = mapped_column(String(400), default="")
    # Pseudonyms of the referenced key columns of every valid row (rows k-anonymity kept out
    # of the pool included), so later uploads' links validate. Never read by the gateway.
    keys_key: Mapped[str] = mapped_column(String(400), default="")
    rows: Mapped[int] = mapped_column(Integer, default=0)
    valid_rows: Mapped[int] = mapped_column(Integer, default=0)
    profile: Mapped[str] = mapped_column(Text, default="{}")  # JSON: encoding, sheets, …
    mapping: Mapped[str] = mapped_column(Text, default="{}")  # JSON MappingProposal
    validation: Mapped[str] = mapped_column(Text, default="{}")  # JSON summary
    deid: Mapped[str] = mapped_column(Text, default="{}")  # JSON de-identification report
    # The contributor's strengthened actions {"columns": {name: action}, "k": n}, and the
    # floor they were chosen above (the first run's actions, JSON {name: action}).
    deid_choices: Mapped[str] = mapped_column(Text, default="{}")
    deid_floor: Mapped[str] = mapped_column(Text, default="{}")
    # Length of the pseudonym key chain the staged/pooled pseudonyms were computed with.
    key_epoch: Mapped[int] = mapped_column(Integer, default=1)
    # The common data model version the rows were validated against ("1.0.0"); None until
    # validated.
    cdm_version: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str] = mapped_column(Text, default="")
    # "Share synthetic only": the contributor shares this version's synthetic equivalent and
    # keeps its real rows out of every agreement's views (pool_versions skips it).
    synthetic_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # "Additional rows": released beside the institution's released versions of the table.
    # Without it a release supersedes them (they are withdrawn), so counts never double.
    additional_rows: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    job_id: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    released_by: Mapped[str] = mapped_column(String(200), default="")
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    withdrawn_by: Mapped[str] = mapped_column(String(200), default="")
    raw_delete_after: Mapped[datetime | None] = mapped_column(UTCDateTime())

    institution: Mapped[Institution] = relationship()


class InstitutionMapping(Base):
    """The mapping an institution last confirmed for a table, offered on its next upload."""

    __tablename__ = "institution_mappings"
    __table_args__ = (UniqueConstraint("institution_id", "cdm_table"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    cdm_table: Mapped[str] = mapped_column(String(64))
    mapping: Mapped[str] = mapped_column(Text, default="{}")  # JSON {source: target}
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class InstitutionTerm(Base):
    """A site term for a category value, as the institution confirmed it (``value`` empty:
    its rows are held back), applied to the institution's next uploads without asking."""

    __tablename__ = "institution_terms"
    __table_args__ = (UniqueConstraint("institution_id", "cdm_table", "column", "term_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    cdm_table: Mapped[str] = mapped_column(String(64))
    column: Mapped[str] = mapped_column(String(64))
    term_key: Mapped[str] = mapped_column(String(200))  # contracts.codes.term_key(term)
    term: Mapped[str] = mapped_column(String(200))  # as the site last wrote it
    value: Mapped[str] = mapped_column(String(64))
    confirmed_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class DateAnchor(Base):
    """The anchor date of a subject (an episode's chain-of-identity pseudonym, or a lot's
    where no episode is known): dates in the pool are whole days since it. Set once, on
    first sight, and never moved, so every table and institution counts from the same day.
    It never leaves the hub database."""

    __tablename__ = "date_anchors"

    id: Mapped[int] = mapped_column(primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), unique=True)  # pseudonym
    anchor: Mapped[date] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(128))  # e.g. "collection.collection_date"
    key_epoch: Mapped[int] = mapped_column(Integer, default=1)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
