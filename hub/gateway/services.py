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
* each researcher gets ``gateway_rate_per_minute`` requests a minute, counted in the
  ledger, so the limit holds across processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any

import pandas as pd
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from anonymisation.pseudonyms import pseudonymise
from contracts.agreements import Agreement
from hub.accounts.models import User
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord, AgreementSignature
from hub.audit.models import AuditEntry
from hub.audit.services import record
from hub.db import utcnow
from hub.errors import CleanroomError, Forbidden
from hub.settings import Settings
from hub.storage import LocalStorage, Storage
from policies.store import SyncedPolicy
from sandbox.gateway import AgreementViews, Gateway, Source


class RateLimited(CleanroomError):
    status = 429
    code = "rate_limited"


@dataclass
class Scope:
    """What one request may read: the agreement, its terms and the views' sources."""

    stored: AgreementRecord
    agreement: Agreement
    tables: dict[str, list[Source]]
    institutions: list[str]  # slugs whose released data the views read


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
    there are none (not named, not active, expired, suspended, terminated)."""
    stored = session.scalar(
        select(AgreementRecord)
        .where(AgreementRecord.slug == slug)
        .options(
            selectinload(AgreementRecord.signatures).joinedload(AgreementSignature.institution)
        )
    )
    if stored is None:
        raise Forbidden(f"you may not {action} under agreement {slug!r}.", code="policy_denied")
    agreement = agreements.contract_of(stored)
    tables: dict[str, list[Source]] = {}
    institutions: set[str] = set()
    for cover in agreement.tables:
        if not agreements.may_query(policy, user, slug, cover.table, action=action, refresh=False):
            continue
        tables[cover.table] = []
        for version in agreements.pool_versions(session, stored, cover.table, agreement=agreement):
            inst = version.institution.slug
            institutions.add(inst)
            tables[cover.table].append(
                _source(storage, settings, version.pool_key, institution_pseudonym(inst, settings))
            )
    if not tables:
        raise Forbidden(
            f"you may not {action} under agreement {slug!r} now: you are not one of its "
            "researchers, or it is not active (awaiting signatures, suspended, expired or "
            "terminated).",
            code="policy_denied",
        )
    return Scope(stored, agreement, tables, sorted(institutions))


def views(gateway: Gateway, scope: Scope) -> AgreementViews:
    tables = {t: s for t, s in scope.tables.items() if s}
    if not tables:
        raise Forbidden(
            "no contributor has released data under this agreement yet.", code="no_data"
        )
    return gateway.views(scope.stored.slug, tables)


def check_rate(session: Session, settings: Settings, actor: str) -> None:
    """Refuse (429) a researcher's request beyond ``gateway_rate_per_minute``."""
    since = (utcnow() - timedelta(minutes=1)).isoformat(timespec="microseconds")
    since = since.replace("+00:00", "Z")  # the ledger's own format: ISO 8601 strings sort
    used = session.scalar(
        select(func.count())
        .select_from(AuditEntry)
        .where(
            AuditEntry.actor == actor,
            AuditEntry.action.startswith("sandbox."),
            AuditEntry.at >= since,
        )
    )
    limit = int(settings.gateway_rate_per_minute)
    if (used or 0) >= limit:
        raise RateLimited(
            f"more than {limit} sandbox requests in a minute; wait a minute and try again."
        )


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
