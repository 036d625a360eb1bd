"""``/inbox``: a user's notices in the portal, and ``/api/v1/inbox`` for API tokens. Each
user sees and marks only their own (``hub.notices.services``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, flash, g, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import SQLAlchemyError

from hub.accounts.models import User
from hub.db import get_db
from hub.errors import BadRequest
from hub.notices import services
from hub.notices.models import Notice, is_site_path
from hub.web import current_user, guard

bp = Blueprint("notices", __name__, url_prefix="/inbox")
api = Blueprint("notices_api", __name__, url_prefix="/api/v1/inbox")


def _user() -> User:
    user = current_user()
    assert user is not None  # the guard let only a signed-in user through
    return user


@bp.app_context_processor
def _inbox_badge() -> dict[str, Any]:
    """``inbox_unread()`` for the menu: the signed-in user's unread count, counted at most
    once per request and only by a page that shows the menu."""

    def inbox_unread() -> int | None:
        user = g.get("user")
        if user is None:
            return None
        if "inbox_unread" not in g:
            try:
                g.inbox_unread = services.unread_count(get_db(), user)
            except SQLAlchemyError:
                # An error page after a database failure still renders, without the badge.
                g.inbox_unread = None
        return g.inbox_unread

    return {"inbox_unread": inbox_unread}


@bp.route("")
@guard("read", "inbox")
def inbox() -> ResponseReturnValue:
    """Your notices, newest first; the unread ones stand out."""
    user = _user()
    db = get_db()
    return render_template(
        "notices/inbox.html",
        notices=services.of_user(db, user),
        unread=services.unread_count(db, user),
    )


@bp.route("/<int:notice_id>/read", methods=["POST"])
@guard("write", "inbox")
def read(notice_id: int) -> ResponseReturnValue:
    """Mark the notice read and go to the page it is about (the inbox if none)."""
    db = get_db()
    notice = services.mark_read(db, _user(), notice_id)
    db.commit()
    # Checked again here: the redirect must never leave the site, whatever the row holds.
    if notice.link and is_site_path(notice.link):
        return redirect(notice.link)
    return redirect(url_for("notices.inbox"))


@bp.route("/read-all", methods=["POST"])
@guard("write", "inbox")
def read_all() -> ResponseReturnValue:
    db = get_db()
    count = services.mark_all_read(db, _user())
    db.commit()
    flash(
        f"{count} notice{'' if count == 1 else 's'} marked read." if count else "Nothing unread.",
        "info",
    )
    return redirect(url_for("notices.inbox"))


def _as_dict(notice: Notice) -> dict[str, Any]:
    return {
        "id": notice.id,
        "subject": notice.subject,
        "body": notice.body,
        "link": notice.link,
        "created_at": notice.created_at.isoformat(),
        "read_at": notice.read_at.isoformat() if notice.read_at else None,
    }


@api.route("", methods=["GET"])
@guard("read", "inbox", scope="read")
def api_inbox() -> ResponseReturnValue:
    """``{"unread": n, "notices": [...]}``: your newest notices first (``?limit=``, at most
    500). Reading them here does not mark them read."""
    raw = request.args.get("limit", "100")
    if not (
        raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= services.MAX_LIST
    ):
        raise BadRequest(f"`limit` must be a whole number from 1 to {services.MAX_LIST}.")
    user = _user()
    db = get_db()
    return jsonify(
        {
            "unread": services.unread_count(db, user),
            "notices": [_as_dict(n) for n in services.of_user(db, user, int(raw))],
        }
    )
