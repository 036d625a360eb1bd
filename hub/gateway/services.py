"""The hub's side of the query gateway: which data an agreement pools, who may ask, limits.

:mod:`sandbox.gateway` checks, rewrites, runs and disclosure-controls queries over views it
is given. The hub decides what those views hold and who may see them:

* a view exists only for the covered tables the researcher may ``query`` (``fit``) under
  the agreement *now*, as :mod:`policies` says (named researcher, active, inside the
  validity window); any other table is unknown to the query;
* a view reads only the released, non-withdrawn versions of contributors that signed the
  agreement's current terms (:func:`hub.agreements.services.pool_versions`), each with its
  institution's pseudonym;
* every answered or refused request is in the audit ledger (``sandbox.query``,
  ``sandbox.fit``, ``sandbox.refused``) with the agreement, the query text and hashes, the
  suppressions and the institutions whose data it read (for their transparency page);
* each researcher gets ``gateway_rate_per_minute`` requests a sliding minute, checked and
  counted in one conditional ``UPDATE`` (:func:`check_rate`), so the limit holds across
  processes.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import pandas as pd
from sqlalchemy import Float, case, literal, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, joinedload

from anonymisation.pseudonyms import pseudonymise
from contracts.agreements import Agreement
from contracts.cdm import load_cdm
from hub.accounts.models import User
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord, AgreementSignature
from hub.audit.services import record
from hub.db import utcnow
from hub.errors import CleanroomError, Forbidden
from hub.gateway.models import GatewayAnswer, PrivacyBudget, RateCounter
from hub.ingest.models import DatasetVersion
from hub.settings import Settings
from hub.storage import LocalStorage, Storage
from policies.store import SyncedPolicy
from sandbox.gateway import AgreementViews, Gateway, Source


@dataclass
class Scope:
    """What one request may read: the agreement, its terms and the views' sources."""

    stored: AgreementRecord
    agreement: Agreement
    tables: dict[str, list[Source]]
    institutions: list[str]  # slugs whose released data the views read
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # covered, per table
    links: dict[str, list[Source]] = field(default_factory=dict)  # lot/DIN -> patient


def institution_pseudonym(slug: str, settings: Settings) -> str:
    """The ``institution`` column's value: a keyed pseudonym of the slug (12 hex)."""
    return _institution_pseudonym(slug, tuple(settings.key_chain))


@lru_cache(maxsize=4096)
def _institution_pseudonym(slug: str, chain: tuple[bytes, ...]) -> str:
    return str(pseudonymise(pd.Series([f"institution:{slug}"]), list(chain)).iloc[0])[:12]


def _source(storage: Storage, settings: Settings, key: str, institution: str) -> Source:
    if isinstance(storage, LocalStorage):
        return Source(str(storage.root / key), institution)
    from pyarrow import fs

    s3 = fs.S3FileSystem(
        access_key=settings.s3_access_key_id or None,
        secret_key=settings.s3_secret_access_key or None,
        region=settings.s3_region,
        endpoint_override=settings.s3_endpoint_url or None,
    )
    return Source(f"{settings.s3_bucket}/{key}", institution, filesystem=s3)


# What each action is called in a sentence, and the agreement term that allows it.
ACTION_WORDS = {"query": "query", "synthetic": "read synthetic rows", "fit": "fit models"}
ALLOWED_BY = {
    "synthetic": ("allow_synthetic", "synthetic rows"),
    "fit": ("allow_model_fitting", "model fits on real data"),
}


def refusal(action: str, slug: str) -> Forbidden:
    """The one answer to a request under an agreement the caller may not use, whether or
    not it exists."""
    words = ACTION_WORDS.get(action, action)
    return Forbidden(
        f"you may not {words} under agreement {slug!r} now: there is no such agreement for "
        "you, you are not one of its researchers, or it is not active (awaiting signatures, "
        "suspended, expired or terminated).",
        code="policy_denied",
    )


def scope(
    session: Session,
    policy: SyncedPolicy,
    settings: Settings,
    storage: Storage,
    user: User,
    slug: str,
    *,
    action: str,
) -> Scope:
    """The views ``user`` may ``action`` under agreement ``slug``; refuses with 403 when
    there are none (not named, not active, expired, suspended, terminated) and, in the same
    words, when there is no such agreement: a refusal never tells whether a slug exists."""
    stored = (
        session.execute(
            select(AgreementRecord)
            .where(AgreementRecord.slug == slug)
            .options(
                joinedload(AgreementRecord.signatures).joinedload(AgreementSignature.institution)
            )
        )
        .unique()
        .scalar_one_or_none()
    )
    if stored is None:
        raise refusal(action, slug)
    agreement = agreements.contract_of(stored)
    cdm = load_cdm()
    covers = [
        cover
        for cover in agreement.tables
        if agreements.may_query(policy, user, slug, cover.table, action=action, refresh=False)
    ]
    if not covers:
        if action in ALLOWED_BY and any(
            agreements.may_query(policy, user, slug, cover.table, refresh=False)
            for cover in agreement.tables
        ):
            # The caller may query under it, so it exists for them: say the real reason.
            term, what = ALLOWED_BY[action]
            raise Forbidden(
                f"agreement {slug!r} does not allow {what} (its terms set `{term}: false`). "
                "Aggregate queries are open to you under it; to change its terms, ask the "
                "steward.",
                code="not_allowed",
            )
        raise refusal(action, slug)
    # One query for the covered tables and those that link a lot or a DIN to its patient
    # (read only for that link).
    linking = ("batch", "collection")
    pooled = agreements.pooled(
        session, stored, [c.table for c in covers], linking=linking, agreement=agreement
    )

    def sources(versions: Sequence[DatasetVersion]) -> list[Source]:
        return [
            _source(
                storage, settings, v.pool_key, institution_pseudonym(v.institution.slug, settings)
            )
            for v in versions
        ]

    tables = {c.table: sources(pooled.get(c.table, [])) for c in covers}
    columns = {
        c.table: c.columns or tuple(col.name for col in cdm.table(c.table).columns) for c in covers
    }
    institutions = sorted({v.institution.slug for c in covers for v in pooled.get(c.table, [])})
    links = {table: sources(pooled.get(table, [])) for table in linking}
    return Scope(stored, agreement, tables, institutions, columns, links)


def views(gateway: Gateway, scope: Scope) -> AgreementViews:
    tables = {t: s for t, s in scope.tables.items() if s}
    if not tables:
        raise Forbidden(
            "no contributor has released data under this agreement yet.", code="no_data"
        )
    return gateway.views(scope.stored.slug, tables, columns=scope.columns, links=scope.links)


RATE_WINDOW_SECONDS = 60


class RateLimited(CleanroomError):
    """Beyond ``gateway_rate_per_minute``; ``retry_after`` (whole seconds) says when the
    next request would be accepted, for the ``Retry-After`` header."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


def check_rate(
    session: Session, settings: Settings, actor: str, now: datetime | None = None
) -> None:
    """Count one of ``actor``'s sandbox requests, or refuse it (429) beyond
    ``gateway_rate_per_minute``. Commits the session: the count is its own short
    transaction, so a request that later fails or is refused still counted.

    A sliding minute, estimated from two fixed minutes: the requests of the previous minute
    are taken as evenly spread, so at a fraction ``f`` into this minute the last sixty
    seconds hold ``used + previous × (1 − f)``. A request is accepted when that estimate,
    rounded up, stays below the limit; a burst across a minute's boundary gets no fresh
    allowance. The check and the count are one conditional ``UPDATE`` of the researcher's
    one row, which rolls the minutes forward in the same statement, so concurrent requests
    in any number of processes cannot together exceed the limit (on PostgreSQL the row lock
    orders them and each re-checks the condition; on SQLite writers take turns). Refused
    requests are not counted: waiting is what lets a researcher back in.
    """
    limit = settings.gateway_rate_per_minute
    seconds = (now or utcnow()).timestamp()
    minute = int(seconds // RATE_WINDOW_SECONDS)
    elapsed = seconds - minute * RATE_WINDOW_SECONDS
    carry = 1.0 - elapsed / RATE_WINDOW_SECONDS  # the previous minute's share still inside
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        # A count lost to a crash in the next fraction of a second costs nothing; waiting
        # for the disk on every request would cost more than the check itself.
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))
    counted = _count_request(session, actor, minute, carry, limit)
    if not counted:
        # No room, or no row yet (the researcher's first request, or a row another
        # process is making now): make sure the row exists (waiting for that process, on
        # PostgreSQL), then the same statement again decides.
        insert = pg_insert if postgres else sqlite_insert
        session.execute(
            insert(RateCounter)
            .values(actor=actor, minute=minute, used=0, previous=0)
            .on_conflict_do_nothing(index_elements=["actor"])
        )
        counted = _count_request(session, actor, minute, carry, limit)
    if counted:
        session.commit()
        return
    row = session.scalar(
        select(RateCounter)
        .where(RateCounter.actor == actor)
        .execution_options(populate_existing=True)
    )
    session.commit()
    wait = _retry_after(row, minute, elapsed, limit)
    raise RateLimited(
        f"more than {limit} sandbox request{'s' if limit != 1 else ''} in a minute; try "
        f"again in {wait} second{'s' if wait != 1 else ''}.",
        retry_after=wait,
    )


def _count_request(session: Session, actor: str, minute: int, carry: float, limit: int) -> bool:
    """The one statement: count a request if the sliding minute has room. False: not
    counted (no room, or no row for ``actor``)."""
    row = RateCounter
    # What the row says of this minute and the one before, read in the statement itself.
    # A row stamped later than ``minute`` (another process's clock a little ahead) counts
    # as this minute.
    used = case((row.minute >= minute, row.used), else_=0)
    previous = case(
        (row.minute >= minute, row.previous), (row.minute == minute - 1, row.used), else_=0
    )
    result = session.execute(
        update(row)
        .where(
            row.actor == actor,
            # 1e-9: a share that is exactly the room left, in floating point, fits
            used + 1 + previous * literal(carry, Float) <= limit + 1e-9,
        )
        .values(
            used=used + 1,
            previous=previous,
            minute=case((row.minute > minute, row.minute), else_=minute),
        )
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0) == 1)


def _retry_after(row: RateCounter | None, minute: int, elapsed: float, limit: int) -> int:
    """Whole seconds until the sliding minute has room again (at least 1); ``elapsed``:
    seconds into ``minute``."""
    window = RATE_WINDOW_SECONDS
    if row is None or limit < 1:
        return window
    used = row.used if row.minute >= minute else 0
    previous = row.previous if row.minute >= minute else row.used if row.minute == minute - 1 else 0
    if used + 1 <= limit and previous:
        # Room comes as the previous minute's share fades: previous × (1 − t/60) ≤ room.
        wait = window - window * (limit - 1 - used) / previous - elapsed
    else:
        # Not before the next minute, where this minute's requests are the previous ones.
        wait = window - elapsed + (max(0.0, window - window * (limit - 1) / used) if used else 0)
    return max(1, math.ceil(wait - 1e-6))


def suppression_summary(suppressed: Sequence[dict[str, Any]]) -> dict[str, int]:
    return dict(Counter(str(s.get("reason", "suppressed")) for s in suppressed))


def log(
    session: Session,
    *,
    actor: str,
    action: str,
    slug: str,
    detail: dict[str, Any],
) -> None:
    """One ledger entry per answered or refused request."""
    record(session, actor=actor, action=action, target=f"agreement:{slug}", detail=detail)


# Privacy budgets and remembered answers ------------------------------------------------


class BudgetExhausted(CleanroomError):
    status = 403
    code = "budget_exhausted"


def budget_period(now: datetime | None = None) -> str:
    """The budget period an answer falls in: the calendar year (UTC), by its first day."""
    return f"{(now or utcnow()).year:04d}-01-01"


@dataclass
class Budget:
    """One researcher's privacy budget under one agreement, this period."""

    agreement: str
    period: str
    total: float
    per_answer: float
    spent: float
    answers: int

    @property
    def left(self) -> float:
        return max(0.0, self.total - self.spent)

    def as_dict(self) -> dict[str, Any]:
        return {
            "agreement": self.agreement,
            "period": self.period,
            "epsilon_total": self.total,
            "epsilon_per_answer": self.per_answer,
            "epsilon_spent": round(self.spent, 9),
            "epsilon_left": round(self.left, 9),
            "answers": self.answers,
        }


def budget(session: Session, user: User, scope: Scope) -> Budget:
    row = session.scalar(
        select(PrivacyBudget).where(
            PrivacyBudget.user_id == user.id,
            PrivacyBudget.agreement_id == scope.stored.id,
            PrivacyBudget.period == budget_period(),
        )
    )
    d = scope.agreement.disclosure
    return Budget(
        scope.stored.slug,
        budget_period(),
        float(d.epsilon_total),
        float(d.epsilon_per_answer),
        float(row.spent) if row else 0.0,
        int(row.answers) if row else 0,
    )


def _exhausted(found: Budget, epsilon: float) -> BudgetExhausted:
    return BudgetExhausted(
        f"your privacy budget under {found.agreement!r} is spent: ε {found.spent:g} of "
        f"{found.total:g} used in the period from {found.period}, and this answer needs "
        f"ε {epsilon:g}. Ask the same questions again (they cost nothing), ask for a smaller "
        "ε per answer, or ask the steward to raise the agreement's `epsilon_total` (new "
        "terms, signed again by the parties)."
    )


def check_budget(session: Session, user: User, scope: Scope, epsilon: float) -> Budget:
    """Refuse before any data is read when the budget cannot pay for ``epsilon``; return
    the budget as it stands."""
    found = budget(session, user, scope)
    if found.spent + epsilon > found.total + 1e-9:
        raise _exhausted(found, epsilon)
    return found


def debit(
    session: Session, user: User, scope: Scope, epsilon: float, known: Budget | None = None
) -> Budget:
    """Spend ``epsilon`` atomically: one conditional UPDATE, so concurrent requests in any
    process cannot together overspend. Not committed: the caller commits with the answer.
    ``known``: the budget read just before (saves reading it again)."""
    period = budget_period()
    total = float(scope.agreement.disclosure.epsilon_total)
    if known is None or known.answers == 0:
        exists = session.scalar(
            select(PrivacyBudget.id).where(
                PrivacyBudget.user_id == user.id,
                PrivacyBudget.agreement_id == scope.stored.id,
                PrivacyBudget.period == period,
            )
        )
    else:
        exists = 1  # a row with answers exists: rows are never deleted
    if exists is None:
        try:
            with session.begin_nested():
                session.add(
                    PrivacyBudget(
                        user_id=user.id, agreement_id=scope.stored.id, period=period, spent=0.0
                    )
                )
        except IntegrityError:  # another request created it first
            pass
    result = session.execute(
        update(PrivacyBudget)
        .where(
            PrivacyBudget.user_id == user.id,
            PrivacyBudget.agreement_id == scope.stored.id,
            PrivacyBudget.period == period,
            PrivacyBudget.spent + epsilon <= total + 1e-9,
        )
        .values(spent=PrivacyBudget.spent + epsilon, answers=PrivacyBudget.answers + 1)
        .execution_options(synchronize_session=False)
    )
    if getattr(result, "rowcount", 0) != 1:
        raise _exhausted(budget(session, user, scope), epsilon)
    if known is not None:  # what the UPDATE made of it (others may have spent meanwhile)
        return Budget(
            known.agreement,
            known.period,
            known.total,
            known.per_answer,
            known.spent + epsilon,
            known.answers + 1,
        )
    return budget(session, user, scope)


def question_key(scope: Scope, kind: str, identity: str) -> str:
    """A question's identity under the pool it is answered on: a release or a withdrawal
    makes it a new question."""
    pool = sorted((t, sorted(s.path for s in sources)) for t, sources in scope.tables.items())
    return hashlib.sha256(json.dumps([kind, identity, pool]).encode()).hexdigest()


def remembered(session: Session, scope: Scope, question: str) -> dict[str, Any] | None:
    stored = session.scalar(
        select(GatewayAnswer).where(
            GatewayAnswer.agreement_id == scope.stored.id, GatewayAnswer.question == question
        )
    )
    return json.loads(stored.answer) if stored is not None else None


def remember(
    session: Session,
    scope: Scope,
    question: str,
    kind: str,
    epsilon: float,
    answer: dict[str, Any],
    actor: str,
) -> None:
    session.add(
        GatewayAnswer(
            agreement_id=scope.stored.id,
            question=question,
            kind=kind,
            epsilon=epsilon,
            answer=json.dumps(answer, default=str),
            created_by=actor,
        )
    )
    session.flush()


def spending(session: Session, stored: AgreementRecord) -> list[dict[str, Any]]:
    """ε spent per researcher under an agreement, per period (for the steward and the
    contributing institutions)."""
    rows = session.execute(
        select(User.username, PrivacyBudget.period, PrivacyBudget.spent, PrivacyBudget.answers)
        .join(User, User.id == PrivacyBudget.user_id)
        .where(PrivacyBudget.agreement_id == stored.id)
        .order_by(PrivacyBudget.period.desc(), User.username)
    )
    return [
        {"researcher": r[0], "period": r[1], "epsilon_spent": round(r[2], 9), "answers": r[3]}
        for r in rows
    ]
