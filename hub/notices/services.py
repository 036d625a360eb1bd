"""The inbox, callable without a request.

- :func:`notify`: leave a notice for each of some users (a release request to look at, a
  decision on one's own request). The caller commits, with the change it tells about.
- :func:`unread_count`, :func:`of_user`: what a user's inbox holds.
- :func:`mark_read`, :func:`mark_all_read`: a user reads their own notices, never another's.

Notifying is not a ledger event: the action that causes a notice (a request, a review, a
decision) is recorded in the ledger already, and a notice only points at it. Reading a
notice is not recorded either.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hub.accounts.models import User
from hub.db import utcnow
from hub.errors import BadRequest, NotFound
from hub.notices.models import MAX_LINK, Notice, is_site_path

MAX_SUBJECT = 200
MAX_BODY = 5000
MAX_LIST = 500


def notify(
    db: Session, users: Iterable[User], subject: str, body: str = "", link: str = ""
) -> list[Notice]:
    """A notice for each active user in ``users`` (each once, however often named); the
    subject becomes one line of at most 200 characters and the body at most 5,000.
    ``link`` is the page the notice is about, a path on this site (``/releases/3``)."""
    line = " ".join((subject or "").split())[:MAX_SUBJECT]
    if not line:
        raise BadRequest("a notice needs a subject line.")
    link = (link or "").strip()
    if not is_site_path(link):
        raise BadRequest(
            f"a notice's link must be a path on this site such as /releases/3 (at most "
            f"{MAX_LINK} characters, no host), not {link[:80]!r}."
        )
    text = (body or "").strip()[:MAX_BODY]
    seen: set[int] = set()
    made = []
    for user in users:
        if user.id in seen or not user.is_active:
            continue
        seen.add(user.id)
        notice = Notice(user_id=user.id, subject=line, body=text, link=link, created_at=utcnow())
        db.add(notice)
        made.append(notice)
    db.flush()
    return made


def unread_count(db: Session, user: User) -> int:
    """How many of ``user``'s notices are unread (one indexed count, for the menu's badge)."""
    found = db.scalar(
        select(func.count())
        .select_from(Notice)
        .where(Notice.user_id == user.id, Notice.read_at.is_(None))
    )
    return int(found or 0)


def of_user(db: Session, user: User, limit: int = 100) -> list[Notice]:
    """``user``'s newest notices first, read or not; at most ``limit`` (up to 500)."""
    limit = max(1, min(int(limit), MAX_LIST))
    return list(
        db.scalars(
            select(Notice)
            .where(Notice.user_id == user.id)
            .order_by(Notice.created_at.desc(), Notice.id.desc())
            .limit(limit)
        )
    )


def mark_read(db: Session, user: User, notice_id: int) -> Notice:
    """Mark one of ``user``'s notices read (a notice read before keeps its first time).
    Another user's notice is :class:`NotFound`, exactly as one that does not exist."""
    notice = db.scalar(select(Notice).where(Notice.id == notice_id, Notice.user_id == user.id))
    if notice is None:
        raise NotFound(f"there is no notice {notice_id} in your inbox.")
    if notice.read_at is None:
        notice.read_at = utcnow()
        db.flush()
    return notice


def mark_all_read(db: Session, user: User) -> int:
    """Mark every unread notice of ``user`` read; how many there were."""
    result = db.execute(
        update(Notice)
        .where(Notice.user_id == user.id, Notice.read_at.is_(None))
        .values(read_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return int(getattr(result, "rowcount", 0) or 0)
