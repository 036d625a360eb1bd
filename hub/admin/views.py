"""The steward's administration pages: institutions and users (the ledger's pages are
:mod:`hub.audit.views`)."""

from __future__ import annotations

from datetime import timedelta

from flask import (
    Blueprint,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from hub.accounts import services as accounts
from hub.accounts.models import Institution, InstitutionKind, LoginAttempt, Role, User
from hub.db import get_db, utcnow
from hub.errors import CleanroomError, NotFound, web_text
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
            flash(web_text(err.message), "error")
            status = err.status
    rows = db.scalars(select(Institution).order_by(Institution.slug)).all()
    return render_template(
        "admin/institutions.html",
        institutions=rows,
        form=form,
        kinds=[k.value for k in InstitutionKind],
    ), status


# Ledger checkpoints (issue 18, item 1) -------------------------------------------------------


@bp.route("/institutions/<int:institution_id>/witness-store", methods=["POST"])
@guard("write", "admin/institutions")
def witness_store(institution_id: int) -> ResponseReturnValue:
    """Where the hub delivers the institution's copies of the ledger checkpoints."""
    from hub.audit.checkpoints import set_witness_store

    db = get_db()
    institution = db.get(Institution, institution_id)
    if institution is None:
        raise NotFound(f"no institution {institution_id}.")
    try:
        set_witness_store(db, institution.slug, request.form.get("store", ""), actor=actor())
        db.commit()
        where = institution.witness_store or "its admins' inbox only"
        flash(f"{institution.name}: ledger checkpoints now go to {where}.", "info")
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
    return redirect(url_for("admin.institutions"))


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
            flash(web_text(err.message), "error")
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
        flash(web_text(err.message), "error")
    return redirect(url_for("admin.users"))
