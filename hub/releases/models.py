"""Release requests, their outputs, reviews and objections.

A request moves ``in_review`` → ``approved`` (enough independent approvals; the contributing
institutions' review window runs) → ``released``; a reviewer's rejection or an upheld
objection ends it ``rejected``; the researcher may ``withdraw`` it before release. A change
to its outputs starts a new ``revision``: reviews of an earlier revision no longer count.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hub.accounts.models import User
from hub.db import Base, UTCDateTime, utcnow


class ReleaseRequest(Base):
    __tablename__ = "release_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    agreement_id: Mapped[int] = mapped_column(
        ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    researcher_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default="in_review")
    revision: Mapped[int] = mapped_column(Integer, default=1)
    reason: Mapped[str] = mapped_column(Text, default="")  # why rejected or withdrawn
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    window_ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    researcher: Mapped[User] = relationship(foreign_keys=[researcher_id])
    outputs: Mapped[list[ReleaseOutput]] = relationship(
        order_by="ReleaseOutput.position", cascade="all, delete-orphan"
    )
    reviews: Mapped[list[ReleaseReview]] = relationship(
        order_by="ReleaseReview.id", cascade="all, delete-orphan"
    )
    objections: Mapped[list[ReleaseObjection]] = relationship(
        order_by="ReleaseObjection.id", cascade="all, delete-orphan"
    )
    comments: Mapped[list[ReleaseComment]] = relationship(
        order_by="ReleaseComment.id", cascade="all, delete-orphan"
    )


class ReleaseOutput(Base):
    """One output wanted: an aggregate query or a model fit, computed exactly."""

    __tablename__ = "release_outputs"
    __table_args__ = (UniqueConstraint("request_id", "position"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("release_requests.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # query, fit
    spec: Mapped[str] = mapped_column(Text)  # canonical JSON of what was asked
    purpose: Mapped[str] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text, default="")  # canonical JSON; never shown early
    result_hash: Mapped[str] = mapped_column(String(64), default="")
    evidence: Mapped[str] = mapped_column(Text, default="{}")  # for the checkers
    refused: Mapped[str] = mapped_column(Text, default="")  # why it could not be computed


class ReleaseReview(Base):
    __tablename__ = "release_reviews"
    __table_args__ = (UniqueConstraint("request_id", "reviewer_id", "revision"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("release_requests.id", ondelete="CASCADE"), index=True
    )
    reviewer_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    decision: Mapped[str] = mapped_column(String(16))  # approve, reject
    comment: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    reviewer: Mapped[User] = relationship()


class ReleaseObjection(Base):
    """A contributing institution's objection: it blocks release until the steward resolves
    it (``upheld``: the request is rejected; ``dismissed``: the release may go on)."""

    __tablename__ = "release_objections"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("release_requests.id", ondelete="CASCADE"), index=True
    )
    institution_id: Mapped[int] = mapped_column(ForeignKey("institutions.id", ondelete="CASCADE"))
    raised_by_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolution: Mapped[str] = mapped_column(String(16), default="")  # upheld, dismissed
    resolved_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    note: Mapped[str] = mapped_column(Text, default="")

    raised_by: Mapped[User] = relationship(foreign_keys=[raised_by_id])


class ReleaseComment(Base):
    """A comment on one output of a request (``position``), or on the whole request
    (position 0): a checker's remark with a review, an institution's question, the
    researcher's answer. Kept across revisions, each marked with the revision it was about."""

    __tablename__ = "release_comments"

    id: Mapped[int] = mapped_column(primary_key=True)
    request_id: Mapped[int] = mapped_column(
        ForeignKey("release_requests.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer, default=0)
    revision: Mapped[int] = mapped_column(Integer)
    author_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    text: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    author: Mapped[User] = relationship()
