"""Sign in and out, and the user's own API tokens."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import (
    Blueprint,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from hub.accounts import services
from hub.accounts.models import ApiToken, User
from hub.audit.services import record
from hub.db import get_db, utcnow
from hub.errors import BadRequest, CleanroomError, NotFound, TooManyRequests
from hub.web import actor, current_user, guard, open_endpoint

bp = Blueprint("auth", __name__)
tokens_bp = Blueprint("tokens", __name__, url_prefix="/account/tokens")


def _safe_next(target: str | None) -> str:
    """Only same-site relative paths: never an open redirect."""
    if not target:
        return url_for("portal.index")
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//"):
        return url_for("portal.index")
    return target


@bp.route("/login", methods=["GET", "POST"])
@open_endpoint
def login() -> ResponseReturnValue:
    if request.method == "GET":
        if current_user() is not None:
            return redirect(url_for("portal.index"))
        return render_template("login.html", username="", next=request.args.get("next", ""))
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    next_url = request.form.get("next", "")
    settings = current_app.config["CLEANROOM_SETTINGS"]
    db = get_db()
    try:
        user = services.authenticate(
            db, settings, username, password, address=request.remote_addr or "unknown"
        )
    except CleanroomError as err:
        db.commit()  # failed attempts (they slow the next ones) and their ledger entries are kept
        flash(err.message, "error")
        status = 429 if isinstance(err, TooManyRequests) else 401
        return render_template("login.html", username=username, next=next_url), status
    key = services.start_session(db, user, address=request.remote_addr or "unknown")
    db.commit()
    session.clear()  # a fresh session at every login (no fixation)
    session.permanent = True
    session["sid"] = key
    if user.must_change_password:
        flash("Your password was set by someone else: choose your own to go on.", "info")
        return redirect(url_for("auth.password"))
    return redirect(_safe_next(next_url))


@bp.route("/logout", methods=["POST"])
@guard("read", "portal")
def logout() -> ResponseReturnValue:
    """Sign out everywhere: every session of the user ends and every API token is revoked
    (a copied cookie or token is worthless from now on; tokens can be issued again)."""
    user = current_user()
    assert user is not None
    db = get_db()
    record(db, actor=actor(), action="logout", target=actor())
    _sessions, tokens = services.end_sessions(db, user, "signed out", actor=actor())
    db.commit()
    session.clear()
    flash(
        "You are signed out everywhere."
        + (
            f" Your {tokens} API token(s) were revoked; create new ones when you need them."
            if tokens
            else ""
        ),
        "info",
    )
    return redirect(url_for("auth.login"))


@bp.route("/account/password", methods=["GET", "POST"])
@guard("read", "portal")
def password() -> ResponseReturnValue:
    """Choose your own password. Every other session ends and every API token is revoked;
    this browser stays signed in with a new session."""
    user = current_user()
    assert user is not None
    settings = current_app.config["CLEANROOM_SETTINGS"]
    if request.method == "GET":
        return render_template(
            "password.html",
            min_length=settings.password_min_length,
            forced=user.must_change_password,
        )
    current = request.form.get("current", "")
    new, again = request.form.get("new", ""), request.form.get("again", "")
    db = get_db()
    try:
        if not services.check_current_password(user, current):
            raise BadRequest("the current password is wrong.", code="wrong_password")
        if new != again:
            raise BadRequest("the two new passwords differ; type the same one twice.")
        _ended, tokens = services.set_password(
            db, user, new, actor=actor(), own=True, min_length=settings.password_min_length
        )
    except CleanroomError as err:
        db.rollback()
        if err.code == "wrong_password":  # a signed-in browser failing the password check
            record(
                db,
                actor=actor(),
                action="password.failure",
                target=f"user:{user.username}",
                detail={"reason": "wrong current password"},
            )
            db.commit()
        flash(err.message, "error")
        return render_template(
            "password.html",
            min_length=settings.password_min_length,
            forced=user.must_change_password,
        ), err.status
    key = services.start_session(db, user, address=request.remote_addr or "unknown")
    db.commit()
    session.clear()
    session.permanent = True
    session["sid"] = key
    flash(
        "Your password is changed and your other sessions ended."
        + (
            f" Your {tokens} API token(s) were revoked; create new ones when you need them."
            if tokens
            else ""
        ),
        "info",
    )
    return redirect(url_for("portal.index"))


def _own_token(user: User, token_id: int) -> bool:
    token = get_db().get(ApiToken, token_id)
    return token is not None and token.user_id == user.id


@tokens_bp.route("", methods=["GET"])
@guard("read", "account/tokens")
def list_tokens() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    tokens = (
        get_db()
        .scalars(select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc()))
        .all()
    )
    return render_template(
        "tokens.html",
        tokens=tokens,
        status=services.token_status,
        scopes=services.TOKEN_SCOPES,
        new_token=None,
        now=utcnow(),
    )


@tokens_bp.route("", methods=["POST"])
@guard("create", "account/tokens")
def create_token() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    settings = current_app.config["CLEANROOM_SETTINGS"]
    db = get_db()
    try:
        days = int(request.form.get("days") or settings.token_default_days)
    except ValueError:
        days = -1
    try:
        issued = services.create_token(
            db,
            settings,
            user,
            request.form.get("name", ""),
            request.form.getlist("scopes"),
            days=days,
            actor=actor(),
        )
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
        return redirect(url_for("tokens.list_tokens"))
    db.commit()
    tokens = db.scalars(
        select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id.desc())
    ).all()
    return render_template(
        "tokens.html",
        tokens=tokens,
        status=services.token_status,
        scopes=services.TOKEN_SCOPES,
        new_token=issued.secret,
        now=utcnow(),
    )


@tokens_bp.route("/<int:token_id>/revoke", methods=["POST"])
@guard("revoke", "account/tokens/{token_id}", owner=_own_token)
def revoke_token(token_id: int) -> ResponseReturnValue:
    db = get_db()
    token = db.get(ApiToken, token_id)
    if token is None:
        raise NotFound(f"no token {token_id}.")
    services.revoke_token(db, token, actor=actor())
    db.commit()
    flash(f"Token “{token.name}” revoked.", "info")
    return redirect(
        request.referrer
        if request.referrer and request.referrer.startswith(request.host_url)
        else url_for("tokens.list_tokens")
    )
