"""Stored agreements and their signatures.

The terms are kept in the YAML form of :mod:`contracts.agreements` (``terms``), so what the
portal shows, the CLI applies and the rules compile from are one text. The state is the
stored lifecycle state; expiry is computed from the terms at every decision.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hub.accounts.models import Institution, User
from hub.db import Base, UTCDateTime, utcnow


class AgreementRecord(Base):
    __tablename__ = "agreements"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    title: Mapped[str] = mapped_column(String(300))
    terms: Mapped[str] = mapped_column(Text)  # the agreement's YAML
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the terms (what parties sign)
    state: Mapped[str] = mapped_column(String(32), default="draft", index=True)
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    signatures: Mapped[list[AgreementSignature]] = relationship(
        back_populates="agreement", cascade="all, delete-orphan", order_by="AgreementSignature.id"
    )

    def __repr__(self) -> str:
        return f"<Agreement {self.slug} ({self.state})>"


class AgreementSignature(Base):
    """A party's signature of one version of the terms (``terms`` is that version's digest)."""

    __tablename__ = "agreement_signatures"
    __table_args__ = (UniqueConstraint("agreement_id", "institution_id", "terms"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agreement_id: Mapped[int] = mapped_column(
        ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id"))
    signed_by_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    terms: Mapped[str] = mapped_column(String(64))

    agreement: Mapped[AgreementRecord] = relationship(back_populates="signatures")
    institution: Mapped[Institution] = relationship()
    signed_by: Mapped[User] = relationship()
