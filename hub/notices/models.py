"""A notice in a user's inbox."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column, validates

from hub.db import Base, UTCDateTime, utcnow

MAX_LINK = 500


def is_site_path(link: str) -> bool:
    """Whether ``link`` is a path on this site (``/releases/3``): it starts with one ``/``,
    never ``//`` or ``/\\`` (which browsers read as another host), and holds no spaces or
    control characters. The empty link (a notice with nothing to open) passes too."""
    if link == "":
        return True
    return (
        len(link) <= MAX_LINK
        and link.startswith("/")
        and not link.startswith(("//", "/\\"))
        and "\\" not in link
        and all(c.isprintable() and not c.isspace() for c in link)
    )


class Notice(Base):
    """One notice for one user: a subject line, an optional body, and the page it is about.
    ``read_at`` is empty until the user opens it or marks it read."""

    __tablename__ = "notices"
    # The inbox badge counts a user's unread notices on every page: one indexed lookup.
    __table_args__ = (Index("ix_notices_user_id_read_at", "user_id", "read_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    subject: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    link: Mapped[str] = mapped_column(String(MAX_LINK), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    @validates("link")
    def _check_link(self, _key: str, link: str) -> str:
        # The inbox redirects to this link: nothing may point a user off the site.
        if not is_site_path(link):
            raise ValueError(f"a notice's link must be a path on this site, not {link!r}")
        return link

    def __repr__(self) -> str:
        return f"<Notice {self.id} for user {self.user_id}>"
