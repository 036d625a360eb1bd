"""What the gateway remembers: privacy budgets spent, answers already given, request rates.

``PrivacyBudget`` holds the ε a researcher has spent under an agreement in a budget period
(a calendar year, UTC); it is debited with one conditional ``UPDATE`` (``spent + ε <=
total``), so concurrent requests in any number of processes cannot overspend on SQLite or
PostgreSQL. ``GatewayAnswer`` keeps each noisy answer by the identity of its question (the
checked query, its ε and contribution bound, and the pool it was answered on), so the same
question is answered again with the same numbers at no new cost — averaging repeated
answers learns nothing. ``RateCounter`` holds each researcher's requests in the current and
the previous minute, taken with one conditional ``UPDATE`` per request (see
:func:`hub.gateway.services.check_rate`): one row per researcher, however long they use the
sandbox.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from hub.db import Base, UTCDateTime, utcnow


class PrivacyBudget(Base):
    __tablename__ = "privacy_budgets"
    __table_args__ = (UniqueConstraint("user_id", "agreement_id", "period"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    agreement_id: Mapped[int] = mapped_column(
        ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    period: Mapped[str] = mapped_column(String(10))  # the period's first day, ISO 8601
    spent: Mapped[float] = mapped_column(Float, default=0.0)
    answers: Mapped[int] = mapped_column(default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class RateCounter(Base):
    """A researcher's sandbox requests in the minute ``minute`` (minutes since the Unix
    epoch, UTC) and in the minute before it. The row rolls forward in place: a request in a
    later minute moves ``used`` to ``previous`` (or drops both when a minute or more went
    by without requests) in the same statement that counts it."""

    __tablename__ = "rate_counters"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(200), unique=True)  # as in the ledger
    minute: Mapped[int] = mapped_column(Integer)
    used: Mapped[int] = mapped_column(Integer, default=0)
    previous: Mapped[int] = mapped_column(Integer, default=0)


class GatewayAnswer(Base):
    __tablename__ = "gateway_answers"
    __table_args__ = (UniqueConstraint("agreement_id", "question"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    agreement_id: Mapped[int] = mapped_column(
        ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    question: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # query, fit
    epsilon: Mapped[float] = mapped_column(Float)
    answer: Mapped[str] = mapped_column(Text)  # JSON
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
