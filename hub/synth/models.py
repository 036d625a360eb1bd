"""A synthetic version: what it was made from, how, its report and where its rows are."""

from __future__ import annotations

import enum
import json
from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hub.db import Base, UTCDateTime, utcnow
from hub.ingest.models import DatasetVersion


class SynthState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    PUBLISHED = "published"  # passed every gate; its rows may be served
    FAILED_GATES = "failed_gates"  # made, but a publication gate failed: never served
    FAILED = "failed"  # could not be made (error says why)
    WITHDRAWN = "withdrawn"  # its training data was withdrawn: objects deleted, never served


class SyntheticVersion(Base):
    """Made from one released dataset version (``dataset_version_id``) or from an
    agreement's pooled table (``agreement_slug`` + ``cdm_table``). Only the de-identified
    pool is ever read. ``data_key`` is set only once the version is published.

    ``group_id`` (the id of the group's first member) is shared by the tables of an
    agreement synthesised together (``synth.agreement_tables``): their pseudonymous keys
    join, and they are published all together or not at all. ``source_versions`` lists the
    dataset versions (JSON ids) whose pool objects it was trained on, so a withdrawal can
    find it."""

    __tablename__ = "synthetic_versions"

    id: Mapped[int] = mapped_column(primary_key=True)
    dataset_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("dataset_versions.id"), index=True
    )
    agreement_slug: Mapped[str] = mapped_column(String(63), default="", index=True)
    cdm_table: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(32))
    seed: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(32), default=SynthState.QUEUED, index=True)
    data_key: Mapped[str] = mapped_column(String(400), default="")
    report: Mapped[str] = mapped_column(Text, default="{}")  # JSON build_report output
    plot_keys: Mapped[str] = mapped_column(Text, default="{}")  # JSON {file: object key}
    rows: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str] = mapped_column(Text, default="")
    job_id: Mapped[int | None] = mapped_column(Integer)
    group_id: Mapped[int | None] = mapped_column(Integer, index=True)
    source_versions: Mapped[str] = mapped_column(Text, default="[]", server_default="[]")
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    dataset_version: Mapped[DatasetVersion | None] = relationship()

    @property
    def source(self) -> str:
        if self.dataset_version_id is not None:
            return f"dataset:{self.dataset_version_id}"
        return f"agreement:{self.agreement_slug}/{self.cdm_table}"

    @property
    def trained_on(self) -> list[int]:
        """The dataset version ids it was trained on (empty until its job has read them)."""
        return [int(v) for v in json.loads(self.source_versions or "[]")]
