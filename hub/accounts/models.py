"""Institutions, users and API tokens."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column, relationship

from hub.db import Base, UTCDateTime, utcnow


class Role(enum.StrEnum):
    STEWARD = "steward"
    CONTRIBUTOR_ADMIN = "contributor_admin"
    CONTRIBUTOR = "contributor"
    RESEARCHER = "researcher"
    # Reads the ledger, agreements, policies, release requests and spending across
    # institutions, and exports a period's events; changes nothing (docs/auditor.md).
    AUDITOR = "auditor"


class InstitutionKind(enum.StrEnum):
    MANUFACTURER = "manufacturer"
    HOSPITAL = "hospital"
    ACADEMIC = "academic"
    STEWARD = "steward"


class Institution(Base):
    __tablename__ = "institutions"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Ledger checkpoints (issue 18, item 1): where the hub pushes each signed checkpoint,
    # `file:///folder` or `s3://bucket/prefix`; empty means the admins' inbox only.
    witness_store: Mapped[str] = mapped_column(String(500), default="")

    users: Mapped[list[User]] = relationship(back_populates="institution")

    def __repr__(self) -> str:
        return f"<Institution {self.slug}>"


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    email: Mapped[str] = mapped_column(String(254), default="")
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(String(32))
    institution_id: Mapped[int | None] = mapped_column(
        ForeignKey("institutions.id", ondelete="RESTRICT"), index=True
    )
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Unused since sign-in throttling replaced lock-out (kept for the schema's history).
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Unused since sessions are kept server-side (UserSession).
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    # Set when someone else chose the password (the steward, the command line): the user
    # must choose their own at the next sign-in before anything else.
    must_change_password: Mapped[bool] = mapped_column(Boolean, default=False)
    # Named by the steward: may review release requests (never their own).
    is_output_checker: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    institution: Mapped[Institution | None] = relationship(back_populates="users")
    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user")

    def __repr__(self) -> str:
        return f"<User {self.username} ({self.role})>"


class ApiToken(Base):
    """A bearer token. Only the SHA-256 of its secret is stored; the token is shown once."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    # Public lookup part of the token (``crt_<lookup>_<secret>``).
    lookup: Mapped[str] = mapped_column(String(32), unique=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    scopes: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    user: Mapped[User] = relationship(back_populates="tokens")

    @property
    def scope_set(self) -> frozenset[str]:
        return frozenset(s for s in self.scopes.split() if s)


class LoginAttempt(Base):
    """Recent login attempts per client address, for rate limiting."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    address: Mapped[str] = mapped_column(String(64), index=True)
    username: Mapped[str] = mapped_column(String(64))
    succeeded: Mapped[bool] = mapped_column(Boolean)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class UserSession(Base):
    """A portal sign-in, kept server-side: the browser's cookie holds only a random key,
    of which the SHA-256 is stored. It ends at sign-out, after ``session_idle_minutes``
    without a request, ``session_max_hours`` after sign-in, and for every session of the
    user when the password changes or the account is disabled."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ended_reason: Mapped[str] = mapped_column(String(32), default="")
    address: Mapped[str] = mapped_column(String(64), default="")

    user: Mapped[User] = relationship()
