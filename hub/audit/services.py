"""Append to and verify the audit ledger.

Each entry's hash covers the previous entry's hash and the entry's own canonical JSON
(``at``, ``actor``, ``action``, ``target``, ``detail``): the public SHA-256 chain that
checkpoints and inclusion proofs commit to (``hub.audit.checkpoints``). Each entry also
carries an HMAC-SHA256 of its hash under the ledger key, which is never in the database, so
whoever can only write the database cannot make an entry that verifies. :func:`verify`
walks the chain and names the first entry that was edited, deleted, moved or forged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Engine, Table, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.audit.models import AuditEntry, AuditHead
from hub.errors import ConfigurationError

GENESIS = "0" * 64
KEYED_SINCE = "0013"
"""The schema revision that began keying entries: earlier ones are unkeyed until sealed."""


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


def entry_mac(key: bytes, digest: str) -> str:
    """The entry's HMAC-SHA256 under the ledger key, over its hash."""
    return hmac.new(key, bytes.fromhex(digest), hashlib.sha256).hexdigest()


# The ledger key of each engine, found once: appends are on every request's path.
_ENGINE_KEYS: weakref.WeakKeyDictionary[Engine, tuple[str, str, bytes]] = (
    weakref.WeakKeyDictionary()
)


def ledger_key(session: Session) -> bytes:
    """The ledger key of the session's database: the one its settings named in this process
    (``hub.settings.LEDGER_KEYS``), else, for an embedded SQLite database, the development
    key in ``keys.toml`` beside it. Refused (a configuration error) when neither is known."""
    from hub.settings import LEDGER_KEYS

    bind = session.get_bind()
    engine = bind if isinstance(bind, Engine) else bind.engine
    cached = _ENGINE_KEYS.get(engine)
    # Settings loaded later in the process for the same database (tests) win over the cache.
    if cached is not None and LEDGER_KEYS.get(cached[0], cached[1]) == cached[1]:
        return cached[2]
    url = engine.url.render_as_string(hide_password=False)
    text = LEDGER_KEYS.get(url) or _key_beside(engine)
    if not text:
        raise ConfigurationError(
            "the audit ledger's key is not known in this process: set CLEANROOM_LEDGER_KEY "
            "(or, in development, keep the data directory's keys.toml beside the database)."
        )
    key = text.encode()
    _ENGINE_KEYS[engine] = (url, text, key)
    return key


def _key_beside(engine: Engine) -> str:
    """A development instance's ledger key, from the ``keys.toml`` beside its SQLite file."""
    import tomllib
    from pathlib import Path

    from hub.settings import KEYS_FILE

    if engine.dialect.name != "sqlite" or not engine.url.database:
        return ""
    try:
        found = tomllib.loads((Path(engine.url.database).parent / KEYS_FILE).read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return ""
    value = found.get("ledger_key")
    return value if isinstance(value, str) else ""


# Statements built once: every request appends at least once, and building an ORM
# statement costs more than running it.
_ENTRIES = cast(Table, AuditEntry.__table__)
_HEAD = cast(Table, AuditHead.__table__)
_INSERT_ENTRY = _ENTRIES.insert()
_SELECT_HEAD = select(_HEAD.c.last_id, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
_MOVE_HEAD = (
    _HEAD.update()
    .where(_HEAD.c.id == 1)
    .values(last_id=bindparam("new_id"), last_hash=bindparam("new_hash"))
)


def _lock_head(session: Session) -> tuple[int, str]:
    """The last entry's id and hash, the head row locked (``FOR UPDATE`` on PostgreSQL)."""
    session.flush()  # what the caller added lands first, as an ORM query would do
    head = session.connection().execute(_SELECT_HEAD).first()
    if head is None:
        # The ledger's first entry: two writers may both find no head row. Create it so that
        # the loser of the race waits on the winner's row instead of failing on its key.
        try:
            with session.begin_nested():
                session.execute(insert(AuditHead).values(id=1, last_id=0, last_hash=GENESIS))
        except IntegrityError:
            pass
        head = session.connection().execute(_SELECT_HEAD).first()
        assert head is not None
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
    mac = hmac.new(ledger_key(session), bytes.fromhex(digest), hashlib.sha256).hexdigest()
    # Core statements on the session's connection, not the ORM's unit of work.
    conn = session.connection()
    conn.execute(
        _INSERT_ENTRY,
        {
            "id": last_id + 1,
            "at": at,
            "actor": actor,
            "action": action,
            "target": target,
            "detail": detail_json,
            "prev_hash": last_hash,
            "entry_hash": digest,
            "entry_mac": mac,
        },
    )
    conn.execute(_MOVE_HEAD, {"new_id": last_id + 1, "new_hash": digest})


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
    unkeyed: int = 0  # entries 1..unkeyed were written before entries were keyed

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
            text = f"audit ledger intact: {self.entries} entries, chain verified."
            return text + (f"\n{self.unkeyed_note}" if self.unkeyed else "")
        lines = [f"audit ledger BROKEN: {len(self.problems)} problem(s) in {self.entries} entries."]
        lines += [
            f"  entry {p.entry_id} ({p.kind}): {p.message}" for p in self.problems[: self.SHOWN]
        ]
        if len(self.problems) > self.SHOWN:
            lines.append(f"  … and {len(self.problems) - self.SHOWN} more.")
        if self.unkeyed:
            lines.append(self.unkeyed_note)
        return "\n".join(lines)

    @property
    def unkeyed_note(self) -> str:
        span = "entry 1 is" if self.unkeyed == 1 else f"entries 1-{self.unkeyed} are"
        return (
            f"note: {span} unkeyed (written before keyed entries, schema revision "
            f"{KEYED_SINCE}); sealing keys them once (docs/security.md, Keyed entries)."
        )


_COLUMNS = (
    AuditEntry.id,
    AuditEntry.at,
    AuditEntry.actor,
    AuditEntry.action,
    AuditEntry.target,
    AuditEntry.detail,
    AuditEntry.prev_hash,
    AuditEntry.entry_hash,
    AuditEntry.entry_mac,
)


def _iter_entries(
    session: Session, batch: int = 5000, first: int = 1, last: int | None = None
) -> Iterator[Any]:
    """Entries ``first``..``last`` in id order, as plain rows (``e.id``, ``e.actor``, …: no
    ORM objects, which cost more to load than the hashing)."""
    after = first - 1
    while True:
        q = select(*_COLUMNS).where(AuditEntry.id > after)
        if last is not None:
            q = q.where(AuditEntry.id <= last)
        rows = session.execute(q.order_by(AuditEntry.id).limit(batch)).all()
        if not rows:
            return
        yield from rows
        after = rows[-1].id


def verify(session: Session) -> Verification:
    """Walk the whole chain in id order; report every break. After a break the walk takes
    up again from the entry as stored, so that the next break is found too."""
    # Where each stored hash sits, to tell a moved entry from an edited or deleted one.
    # Built only when a link is broken: an intact ledger never needs it.
    positions: dict[str, int] = {}

    def position() -> dict[str, int]:
        if not positions:
            positions.update(session.execute(select(AuditEntry.entry_hash, AuditEntry.id)).all())
        return positions

    problems: list[Problem] = []
    expected_prev = GENESIS
    expected_id = 1
    count = 0
    key = ledger_key(session)
    unkeyed = 0
    keyed_seen = False
    for e in _iter_entries(session):
        count += 1
        recomputed = entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail)
        if e.entry_mac is None and not keyed_seen:
            unkeyed += 1  # written before entries were keyed: tolerated as the first ones
        elif e.entry_mac is None:
            problems.append(
                Problem(
                    e.id,
                    "forged",
                    f"entry {e.id} ({e.action} by {e.actor} at {e.at}) has no key signature "
                    "although earlier entries have: it was forged or edited without the key.",
                )
            )
        else:
            keyed_seen = True
            if not _valid_mac(key, e.entry_hash, e.entry_mac):
                problems.append(
                    Problem(
                        e.id,
                        "forged",
                        f"entry {e.id} ({e.action} by {e.actor} at {e.at}) carries a wrong key "
                        "signature: it was forged or edited without the ledger key.",
                    )
                )
        if e.prev_hash != expected_prev:
            if e.prev_hash in position():
                problems.append(
                    Problem(
                        e.id,
                        "reordered",
                        f"entry {e.id} links to entry {position()[e.prev_hash]}, not to the "
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
    return Verification(count, tuple(problems), unkeyed)


def _valid_mac(key: bytes, digest: str, mac: str) -> bool:
    try:
        expected = hmac.new(key, bytes.fromhex(digest), hashlib.sha256).hexdigest()
    except ValueError:  # not a hex hash: edited
        return False
    return hmac.compare_digest(expected, mac)


def verify_range(session: Session, first: int, last: int) -> list[Problem]:
    """Check entries ``first``..``last`` alone (before signing a checkpoint over them): each
    present, linked to the one before, its hash and its key signature right."""
    key = ledger_key(session)
    before = session.get(AuditEntry, first - 1) if first > 1 else None
    expected_prev = before.entry_hash if before is not None else GENESIS
    first_keyed = session.scalar(
        select(func.min(AuditEntry.id)).where(AuditEntry.entry_mac.is_not(None))
    )
    problems: list[Problem] = []
    expected_id = first
    for e in _iter_entries(session, first=first, last=last):
        if e.id != expected_id:
            problems.append(Problem(expected_id, "deleted", f"entry {expected_id} is missing."))
        elif e.prev_hash != expected_prev:
            problems.append(
                Problem(e.id, "edited", f"entry {e.id} does not link to the entry before it.")
            )
        elif entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail) != e.entry_hash:
            problems.append(Problem(e.id, "edited", f"entry {e.id} no longer matches its hash."))
        elif e.entry_mac is None:
            if first_keyed is not None and e.id > first_keyed:
                problems.append(Problem(e.id, "forged", f"entry {e.id} has no key signature."))
        elif not _valid_mac(key, e.entry_hash, e.entry_mac):
            problems.append(
                Problem(
                    e.id,
                    "forged",
                    f"entry {e.id} carries a wrong key signature: it was forged or edited "
                    "without the ledger key.",
                )
            )
        if problems:
            return problems
        expected_prev = e.entry_hash
        expected_id = e.id + 1
    if expected_id != last + 1:
        problems.append(Problem(expected_id, "deleted", f"entry {expected_id} is missing."))
    return problems


def seal(session: Session, *, actor: str) -> int:
    """Key the entries written before entries were keyed (``entry_mac`` NULL), once, after
    checking their chain: sealing a broken chain would bless the break. How many; the seal
    itself is an entry (``audit.seal``)."""
    from hub.errors import Conflict

    result = verify(session)
    if not result.ok:
        raise Conflict(
            f"the ledger cannot be sealed: {result.problem} Investigate (`cleanroom audit "
            "verify`) before keying its entries."
        )
    key = ledger_key(session)
    rows = session.execute(
        select(AuditEntry.id, AuditEntry.entry_hash)
        .where(AuditEntry.entry_mac.is_(None))
        .order_by(AuditEntry.id)
    ).all()
    for entry_id, digest in rows:
        session.execute(
            update(AuditEntry)
            .where(AuditEntry.id == entry_id)
            .values(entry_mac=entry_mac(key, digest))
        )
    if rows:
        record(
            session,
            actor=actor,
            action="audit.seal",
            target="ledger",
            detail={"entries": len(rows), "first": rows[0][0], "last": rows[-1][0]},
        )
    return len(rows)
