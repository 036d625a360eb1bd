"""The auditor's view of the hub: the ledger's events grouped the Five Safes way, exported
for a period with each entry's proof of inclusion against the latest signed checkpoint.

The Five Safes (people, projects, settings, data, outputs) is the framework trusted research
environments are audited against. Every ledger action belongs to exactly one of them:
:data:`SAFES` maps action names and prefixes to a safe, longest match first, and a test scans
the code for every action it writes so that none falls through unclassified.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry
from hub.audit.services import entry_hash
from hub.errors import BadRequest

#: The five safes, in the framework's order, with what each asks of the hub.
SAFE_QUESTIONS: dict[str, str] = {
    "people": "Who could reach the hub, and were they the right people? Accounts, roles, "
    "sign-ins (failed ones too), API tokens, sessions, refused requests.",
    "projects": "Was each use of the data agreed? Agreements drafted, signed, activated, "
    "suspended and terminated, and the access rules compiled from them.",
    "settings": "Did the environment hold? Ledger checks and checkpoints, key rotations, "
    "the hub's own jobs.",
    "data": "What data came in and how was it protected? Uploads, validation and "
    "de-identification, releases to the pool, withdrawals, synthetic versions.",
    "outputs": "What left, and was it safe to leave? Differentially private answers and fits, "
    "synthetic downloads, reviewed releases, exports.",
}
SAFE_NAMES = tuple(SAFE_QUESTIONS)

#: Action name or prefix (ending in ".") -> safe. The longest match wins, so "release" (a
#: dataset released to the pool: data) and "release.request" (a researcher's reviewed
#: release: outputs) part ways, as do "sandbox.login" and "sandbox.query".
SAFES: dict[str, str] = {
    # people
    "login.": "people",
    "logout": "people",
    "auth.": "people",
    "user.": "people",
    "token.": "people",
    "password.": "people",
    "institution.": "people",
    "session.": "people",
    "access.": "people",
    "sandbox.login": "people",
    "notice.": "people",
    # projects
    "agreement.": "projects",
    "policy.": "projects",
    # settings
    "audit.": "settings",
    "job.": "settings",
    "pool.rotate_keys": "settings",
    "pool.rotate_anchors": "settings",
    "settings.": "settings",
    # data
    "upload": "data",
    "upload.": "data",
    "ingest.": "data",
    "dataset.": "data",
    "release": "data",
    "withdrawal": "data",
    "synth.": "data",
    "pool.": "data",
    # outputs
    "query": "outputs",
    "sandbox.": "outputs",
    "release.": "outputs",
    "synthetic.": "outputs",
    "catalogue.": "outputs",
    "export.": "outputs",
}
#: Where an action no rule names is counted (and flagged "unclassified" in exports).
FALLBACK = "settings"


def safe_of(action: str) -> str | None:
    """The safe an action belongs to, or None when no rule names it."""
    if action in SAFES and not action.endswith("."):
        return SAFES[action]
    best = max(
        (p for p in SAFES if p.endswith(".") and action.startswith(p)), key=len, default=None
    )
    return SAFES[best] if best else None


# Periods ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    """A period of days, both ends included (UTC)."""

    since: date
    until: date

    @property
    def bounds(self) -> tuple[str, str]:
        """The ledger's ``at`` bounds: ISO 8601 strings sort as times do."""
        return self.since.isoformat(), (self.until + timedelta(days=1)).isoformat()

    def words(self) -> str:
        return f"{self.since:%d %b %Y} to {self.until:%d %b %Y}"


def _day(text: str, name: str) -> date:
    try:
        return date.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(
            f"{name} {text.strip()[:40]!r} is not a date: write it as YYYY-MM-DD, e.g. 2026-01-31."
        ) from None


def period(since: str | None, until: str | None, *, default_days: int = 30) -> Period:
    """The period a request names; by default the last ``default_days`` days."""
    today = datetime.now(UTC).date()
    end = _day(until, "until") if until and until.strip() else today
    start = _day(since, "since") if since and since.strip() else end - timedelta(default_days - 1)
    if start > end:
        raise BadRequest(f"the period starts ({start}) after it ends ({end}): swap the two dates.")
    return Period(start, end)


# Counting and exporting ---------------------------------------------------------------------


def counts(session: Session, span: Period) -> dict[str, Counter[str]]:
    """Entries per safe and action in the period (one GROUP BY, whatever the ledger's size)."""
    low, high = span.bounds
    found: dict[str, Counter[str]] = {name: Counter() for name in SAFE_NAMES}
    rows = session.execute(
        select(AuditEntry.action, func.count())
        .where(AuditEntry.at >= low, AuditEntry.at < high)
        .group_by(AuditEntry.action)
    )
    for action, n in rows:
        found[safe_of(action) or FALLBACK][action] += int(n)
    return found


def _detail(text: str) -> Any:
    try:
        return json.loads(text or "{}")
    except ValueError:
        return text


ProofFn = Callable[[AuditEntry], dict[str, Any] | None]


def _prover(session: Session) -> tuple[dict[str, Any] | None, ProofFn]:
    """The latest signed checkpoint's document (None when there is none yet) and a function
    giving an entry's inclusion proof against it (None for entries after it)."""
    from hub.audit import checkpoints

    latest = checkpoints.latest(session)
    if latest is None:
        return None, lambda _e: None
    prove = checkpoints.prover(session, latest)
    return checkpoints.document_of(latest), lambda e: prove(e.id)


def events(session: Session, span: Period, *, batch: int = 2000) -> Iterator[dict[str, Any]]:
    """The period's ledger entries in order, each with its safe and its inclusion proof.
    The first item is the checkpoint the proofs refer to (``{"record": "checkpoint"}``)."""
    checkpoint, prove = _prover(session)
    yield {
        "record": "checkpoint",
        "period": {"since": span.since.isoformat(), "until": span.until.isoformat()},
        "checkpoint": checkpoint,
    }
    low, high = span.bounds
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry)
            .where(AuditEntry.at >= low, AuditEntry.at < high, AuditEntry.id > last)
            .order_by(AuditEntry.id)
            .limit(batch)
        ).all()
        if not rows:
            return
        for e in rows:
            safe = safe_of(e.action)
            yield {
                "record": "event",
                "id": e.id,
                "at": e.at,
                "safe": safe or FALLBACK,
                "classified": safe is not None,
                "actor": e.actor,
                "action": e.action,
                "target": e.target,
                "detail": _detail(e.detail),
                "prev_hash": e.prev_hash,
                # Recomputed from what is exported, not the stored hash: an entry edited
                # after it was hashed then fails its proof instead of passing on an old hash.
                "entry_hash": entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail),
                "proof": prove(e),
            }
        last = rows[-1].id


def jsonl(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    for item in items:
        yield json.dumps(item, sort_keys=True, ensure_ascii=False, default=str) + "\n"


CSV_COLUMNS = (
    "id",
    "at",
    "safe",
    "actor",
    "action",
    "target",
    "detail",
    "entry_hash",
    "prev_hash",
    "checkpoint_length",
    "proof",
)


def csv_rows(items: Iterator[dict[str, Any]]) -> Iterator[str]:
    """CSV of the events (formula-safe: every cell a spreadsheet could run is neutralised).
    The checkpoint the proofs refer to is in each row's ``checkpoint_length`` and ``proof``."""
    from hub.exports import SafeWriter

    buf = io.StringIO()
    writer = SafeWriter(buf)
    writer.writerow(CSV_COLUMNS)
    length: object = ""
    for item in items:
        if item["record"] == "checkpoint":
            length = (item["checkpoint"] or {}).get("length", "")
            continue
        writer.writerow(
            [
                item["id"],
                item["at"],
                item["safe"],
                item["actor"],
                item["action"],
                item["target"],
                json.dumps(item["detail"], sort_keys=True, ensure_ascii=False),
                item["entry_hash"],
                item["prev_hash"],
                length if item["proof"] is not None else "",
                json.dumps(item["proof"], sort_keys=True) if item["proof"] is not None else "",
            ]
        )
        if buf.tell() > 1 << 16:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()
