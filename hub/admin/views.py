"""The steward's administration pages: institutions, users and the audit ledger."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import timedelta

from flask import (
    Blueprint,
    Response,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import Select, func, select

from hub.accounts import services as accounts
from hub.accounts.models import Institution, InstitutionKind, LoginAttempt, Role, User
from hub.audit.models import AuditEntry
from hub.audit.services import verify
from hub.db import get_database, get_db, utcnow
from hub.errors import CleanroomError, NotFound
from hub.exports import SafeWriter
from hub.routing import MAX_ID
from hub.web import actor, app_settings, guard

bp = Blueprint("admin", __name__, url_prefix="/admin")

PAGE = 100


@bp.route("/")
@guard("read", "admin")
def index() -> ResponseReturnValue:
    return redirect(url_for("admin.institutions"))


@bp.route("/institutions", methods=["GET", "POST"])
@guard("write", "admin/institutions")
def institutions() -> ResponseReturnValue:
    db = get_db()
    form = {"slug": "", "name": "", "kind": "hospital"}
    status = 200
    if request.method == "POST":
        form = {k: request.form.get(k, "").strip() for k in form}
        try:
            accounts.create_institution(db, form["slug"], form["name"], form["kind"], actor=actor())
            db.commit()
            flash(f"Institution {form['slug']} added.", "info")
            return redirect(url_for("admin.institutions"))
        except CleanroomError as err:
            db.rollback()
            flash(err.message, "error")
            status = err.status
    rows = db.scalars(select(Institution).order_by(Institution.slug)).all()
    return render_template(
        "admin/institutions.html",
        institutions=rows,
        form=form,
        kinds=[k.value for k in InstitutionKind],
    ), status


@bp.route("/users", methods=["GET", "POST"])
@guard("write", "admin/users")
def users() -> ResponseReturnValue:
    db = get_db()
    form = {
        "username": "",
        "display_name": "",
        "email": "",
        "role": "researcher",
        "institution": "",
    }
    status = 200
    if request.method == "POST":
        form = {k: request.form.get(k, "").strip() for k in form}
        try:
            accounts.create_user(
                db,
                form["username"],
                request.form.get("password", ""),
                form["role"],
                institution=form["institution"] or None,
                actor=actor(),
                display_name=form["display_name"],
                email=form["email"],
                temporary=True,
                min_length=app_settings().password_min_length,
            )
            db.commit()
            flash(
                f"User {form['username']} added. Give them the initial password by a separate "
                "channel: they choose their own at the first sign-in.",
                "info",
            )
            return redirect(url_for("admin.users"))
        except CleanroomError as err:
            db.rollback()
            flash(err.message, "error")
            status = err.status
    rows = db.scalars(select(User).order_by(User.username)).all()
    insts = db.scalars(select(Institution).order_by(Institution.slug)).all()
    # Failed sign-ins of the last day per user name: they slow further attempts.
    failures = dict(
        db.execute(
            select(LoginAttempt.username, func.count())
            .where(
                LoginAttempt.succeeded.is_(False),
                LoginAttempt.at >= utcnow() - timedelta(days=1),
            )
            .group_by(LoginAttempt.username)
        ).all()
    )
    return render_template(
        "admin/users.html",
        users=rows,
        institutions=insts,
        form=form,
        roles=[r.value for r in Role],
        failures=failures,
    ), status


@bp.route(
    "/users/<int:user_id>/<any(unlock,disable,enable,checker,unchecker):op>", methods=["POST"]
)
@guard("write", "admin/users/{user_id}")
def user_action(user_id: int, op: str) -> ResponseReturnValue:
    db = get_db()
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}.")
    if op == "unlock":
        accounts.unlock(db, user, actor=actor())
    elif op in ("checker", "unchecker"):
        accounts.set_output_checker(db, user, op == "checker", actor=actor())
    else:
        accounts.set_active(db, user, op == "enable", actor=actor())
    db.commit()
    done = {
        "unlock": "failed sign-ins forgotten, no delay left",
        "disable": "disabled; their sessions ended and API tokens were revoked",
        "enable": "enabled",
        "checker": "named an output checker (reviews release requests, never their own)",
        "unchecker": "no longer an output checker",
    }
    flash(f"User {user.username}: {done[op]}.", "info")
    return redirect(url_for("admin.users"))


@bp.route("/users/<int:user_id>/edit", methods=["POST"])
@guard("write", "admin/users/{user_id}")
def user_edit(user_id: int) -> ResponseReturnValue:
    """Move a user to another role or institution; agreements' rules are recompiled."""
    db = get_db()
    user = db.get(User, user_id)
    if user is None:
        raise NotFound(f"no user {user_id}.")
    try:
        changed = accounts.change_user(
            db,
            user,
            role=request.form.get("role", user.role),
            institution=request.form.get("institution", "").strip() or None,
            actor=actor(),
        )
        db.commit()
        flash(
            f"User {user.username}: "
            + (
                "role and institution saved; their sessions end." if changed else "nothing changed."
            ),
            "info",
        )
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
    return redirect(url_for("admin.users"))


def _audit_query() -> tuple[Select[AuditEntry], dict[str, str]]:
    filters = {
        k: request.args.get(k, "").strip() for k in ("actor", "action", "target", "since", "until")
    }
    q = select(AuditEntry)
    if filters["actor"]:
        q = q.where(AuditEntry.actor.contains(filters["actor"]))
    if filters["action"]:
        q = q.where(AuditEntry.action.startswith(filters["action"]))
    if filters["target"]:
        q = q.where(AuditEntry.target.contains(filters["target"]))
    if filters["since"]:
        q = q.where(AuditEntry.at >= filters["since"])
    if filters["until"]:
        # ``until`` is a date: include that whole day.
        q = q.where(AuditEntry.at < filters["until"] + "~")
    return q, filters


@bp.route("/audit")
@guard("read", "admin/audit")
def audit() -> ResponseReturnValue:
    db = get_db()
    q, filters = _audit_query()
    try:
        before = int(request.args.get("before", "0"))
    except ValueError:
        before = 0
    if 0 < before <= MAX_ID:  # beyond it every id is "before"; the database's integer ends
        q = q.where(AuditEntry.id < before)
    entries = db.scalars(q.order_by(AuditEntry.id.desc()).limit(PAGE)).all()
    result = verify(db) if request.args.get("verify") else None
    return render_template(
        "admin/audit.html", entries=entries, filters=filters, verification=result, page=PAGE
    )


@bp.route("/audit.csv")
@guard("read", "admin/audit")
def audit_csv() -> ResponseReturnValue:
    q, _ = _audit_query()
    database = get_database()
    get_db().rollback()  # the request's own transaction ends before streaming starts

    def rows() -> Iterator[str]:
        """Page by id with a session of its own, holding no transaction between pages, so
        a slow download never blocks writers (SQLite) or schema changes (PostgreSQL)."""
        buf = io.StringIO()
        writer = SafeWriter(buf)
        writer.writerow(
            ["id", "at", "actor", "action", "target", "detail", "prev_hash", "entry_hash"]
        )
        last = 0
        with database.sessionmaker() as s:
            while True:
                page = s.scalars(
                    q.where(AuditEntry.id > last).order_by(AuditEntry.id).limit(1000)
                ).all()
                s.rollback()
                if not page:
                    break
                for e in page:
                    writer.writerow(
                        (
                            e.id,
                            e.at,
                            e.actor,
                            e.action,
                            e.target,
                            e.detail,
                            e.prev_hash,
                            e.entry_hash,
                        )
                    )
                last = page[-1].id
                yield buf.getvalue()
                buf.seek(0)
                buf.truncate()

    return Response(
        rows(),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=cleanroom-audit.csv"},
    )
