"""Append to and verify the audit ledger.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON
(``at``, ``actor``, ``action``, ``target``, ``detail``). :func:`verify` walks the chain and
names the first entry that was edited, deleted or moved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry, AuditHead

GENESIS = "0" * 64


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def entry_hash(prev_hash: str, at: str, actor: str, action: str, target: str, detail: str) -> str:
    body = canonical_json(
        {"at": at, "actor": actor, "action": action, "target": target, "detail": detail}
    )
    return hashlib.sha256((prev_hash + body).encode("utf-8")).hexdigest()


# The ledger's column widths: what is stored is what is hashed.
ACTOR_LENGTH, ACTION_LENGTH, TARGET_LENGTH = 200, 64, 300


def _storable(text: str) -> str:
    """``text`` as every database can store it: no NUL (PostgreSQL refuses it) and no lone
    surrogate (a JSON body's ``"\\ud800"``; not UTF-8). Both become U+FFFD."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


def _clip(text: str, length: int) -> str:
    """``text`` made storable and cut to ``length`` characters, marked with an ellipsis
    where cut."""
    text = _storable(text)
    return text if len(text) <= length else text[: length - 1] + "…"


def _lock_head(session: Session) -> tuple[int, str]:
    """The last entry's id and hash, the head row locked (``FOR UPDATE`` on PostgreSQL)."""
    head = session.execute(
        select(AuditHead.last_id, AuditHead.last_hash).where(AuditHead.id == 1).with_for_update()
    ).first()
    if head is None:
        session.execute(insert(AuditHead).values(id=1, last_id=0, last_hash=GENESIS))
        return 0, GENESIS
    return int(head[0]), str(head[1])


def record(
    session: Session,
    *,
    actor: str,
    action: str,
    target: str = "",
    detail: dict[str, Any] | None = None,
) -> None:
    """Append an entry in the caller's transaction: it lands if and only if the action does.

    On PostgreSQL the head row is locked ``FOR UPDATE``; on SQLite every transaction begins
    IMMEDIATE. Either way, appends are serialised and the chain cannot fork. Text longer than
    its column is cut (and marked) before it is hashed, so the hash covers what is stored: an
    anonymous caller's 400-character user name cannot break the chain.
    """
    actor = _clip(actor, ACTOR_LENGTH)
    action = _clip(action, ACTION_LENGTH)
    target = _clip(target, TARGET_LENGTH)
    last_id, last_hash = _lock_head(session)
    at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    detail_json = _storable(canonical_json(detail or {}))
    digest = entry_hash(last_hash, at, actor, action, target, detail_json)
    # Core statements, not the ORM's unit of work: every request appends at least once.
    session.execute(
        insert(AuditEntry).values(
            id=last_id + 1,
            at=at,
            actor=actor,
            action=action,
            target=target,
            detail=detail_json,
            prev_hash=last_hash,
            entry_hash=digest,
        )
    )
    session.execute(
        update(AuditHead).where(AuditHead.id == 1).values(last_id=last_id + 1, last_hash=digest)
    )


@dataclass(frozen=True)
class Problem:
    entry_id: int
    kind: str  # edited, deleted, reordered, truncated
    message: str


@dataclass(frozen=True)
class Verification:
    """The result of walking the chain: every break found, in ledger order (one break
    cannot hide another). ``problem``, ``entry_id`` and ``kind`` describe the first."""

    entries: int
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def problem(self) -> str:
        return self.problems[0].message if self.problems else ""

    @property
    def entry_id(self) -> int | None:
        return self.problems[0].entry_id if self.problems else None

    @property
    def kind(self) -> str:
        return self.problems[0].kind if self.problems else ""

    SHOWN = 50

    def __str__(self) -> str:
        if self.ok:
            return f"audit ledger intact: {self.entries} entries, chain verified."
        lines = [f"audit ledger BROKEN: {len(self.problems)} problem(s) in {self.entries} entries."]
        lines += [
            f"  entry {p.entry_id} ({p.kind}): {p.message}" for p in self.problems[: self.SHOWN]
        ]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  … and {len(self.problems) - self.SHOWN} more.")
        return "\n".join(lines)


def _iter_entries(session: Session, batch: int = 5000) -> Iterator[AuditEntry]:
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEntry).where(AuditEntry.id > last).order_by(AuditEntry.id).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].id
        session.expunge_all()


def verify(session: Session) -> Verification:
    """Walk the whole chain in id order; report every break. After a break the walk takes
    up again from the entry as stored, so that the next break is found too."""
    # Where each stored hash sits, to tell a moved entry from an edited or deleted one.
    position = {
        h: i for h, i in session.execute(select(AuditEntry.entry_hash, AuditEntry.id)).all()
    }
    problems: list[Problem] = []
    expected_prev = GENESIS
    expected_id = 1
    count = 0
    for e in _iter_entries(session):
        count += 1
        recomputed = entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail)
        if e.prev_hash != expected_prev:
            if e.prev_hash in position:
                problems.append(
                    Problem(
                        e.id,
                        "reordered",
                        f"entry {e.id} links to entry {position[e.prev_hash]}, not to the "
                        "entry before it: entries were reordered.",
                    )
                )
            elif e.id != expected_id:
                missing = (
                    f"entry {expected_id}"
                    if e.id == expected_id + 1
                    else f"entries {expected_id}-{e.id - 1}"
                )
                problems.append(
                    Problem(
                        expected_id,
                        "deleted",
                        f"{missing} deleted: entry {e.id} links to a hash that is no longer "
                        "in the ledger.",
                    )
                )
            elif expected_id > 1:
                problems.append(
                    Problem(
                        expected_id - 1,
                        "edited",
                        f"entry {expected_id - 1} was edited: entry {e.id} links to a hash "
                        "that no longer matches it.",
                    )
                )
            else:
                problems.append(
                    Problem(e.id, "edited", f"entry {e.id}'s link to the start was edited.")
                )
        elif e.id != expected_id:
            problems.append(
                Problem(expected_id, "deleted", f"entry ids jump from {expected_id - 1} to {e.id}.")
            )
        if recomputed != e.entry_hash:
            problems.append(
                Problem(
                    e.id,
                    "edited",
                    f"entry {e.id} ({e.action} by {e.actor} at {e.at}) was edited: its "
                    "content no longer matches its hash.",
                )
            )
        expected_prev = e.entry_hash
        expected_id = e.id + 1
    head = session.get(AuditHead, 1)
    last_id, last_hash = (head.last_id, head.last_hash) if head else (0, GENESIS)
    if last_id != expected_id - 1 or last_hash != expected_prev:
        problems.append(
            Problem(
                expected_id,
                "truncated",
                f"the ledger should end at entry {last_id} but ends at entry "
                f"{expected_id - 1}: its last entries were deleted (or its head was edited).",
            )
        )
    return Verification(count, tuple(problems))
