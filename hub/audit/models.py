"""The hash-chained audit ledger, its signed checkpoints and their delivery to witnesses."""

from __future__ import annotations

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base


class AuditEntry(Base):
    """One ledger entry. ``entry_hash`` = SHA-256 of ``prev_hash`` and the entry's canonical
    JSON; ``prev_hash`` is the previous entry's ``entry_hash``, so the entries form a chain.
    ``entry_mac`` = HMAC-SHA256 of the entry hash under the ledger key, which is not in the
    database: NULL on entries written before keyed entries (until ``cleanroom audit seal``)."""

    __tablename__ = "audit_entries"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    at: Mapped[str] = mapped_column(String(32), index=True)  # ISO 8601 UTC, part of the hash
    actor: Mapped[str] = mapped_column(String(200), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    target: Mapped[str] = mapped_column(String(300), default="", index=True)
    detail: Mapped[str] = mapped_column(Text, default="{}")  # canonical JSON
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64), unique=True)
    entry_mac: Mapped[str | None] = mapped_column(String(64), nullable=True)


class AuditHead(Base):
    """A single row naming the ledger's last entry. Appends lock it (serialising writers) and
    verification compares it with the chain, so truncating the tail is detected too."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_id: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed checkpoint of the ledger (``hub.audit.checkpoints``). ``document`` is the
    signed file exactly as witnesses receive it; the other columns repeat what it says."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)  # its sequence
    at: Mapped[str] = mapped_column(String(32))
    length: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    merkle_root: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    document: Mapped[str] = mapped_column(Text)


class WitnessPush(Base):
    """One checkpoint's delivery to one institution's witness store (or inbox). A failed
    push stays ``failed`` and is tried again at the next interval until it is ``pushed``."""

    __tablename__ = "audit_witness_pushes"
    __table_args__ = (UniqueConstraint("checkpoint_id", "institution_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    checkpoint_id: Mapped[int] = mapped_column(
        ForeignKey("audit_checkpoints.id", ondelete="CASCADE"), index=True
    )
    institution_id: Mapped[int] = mapped_column(
        ForeignKey("institutions.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16))  # pushed, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    store: Mapped[str] = mapped_column(String(500), default="")  # where it went ("" = inbox)
    message: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[str] = mapped_column(String(32))
