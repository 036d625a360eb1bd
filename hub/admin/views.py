"""The steward's administration pages: institutions, users and the audit ledger."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator, Mapping
from datetime import timedelta
from typing import Any

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
from hub.errors import CleanroomError, NotFound, web_text
from hub.exports import SafeWriter, record_export
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


# Ledger entries in words ----------------------------------------------------------------------

ACTION_WORDS = {
    "agreement.create": "created the draft agreement",
    "agreement.edit": "edited the draft agreement",
    "agreement.delete": "deleted the draft agreement",
    "agreement.submit": "sent the agreement for signatures",
    "agreement.revise": "returned the agreement to draft",
    "agreement.activate": "activated the agreement",
    "agreement.suspend": "suspended the agreement",
    "agreement.resume": "resumed the agreement",
    "agreement.terminate": "terminated the agreement",
    "agreement.sign": "signed the agreement",
    "sandbox.query": "asked a question of the pooled data",
    "sandbox.fit": "fitted a model on the pooled data",
    "sandbox.synthetic": "downloaded synthetic rows",
    "sandbox.refused": "was refused by the sandbox",
    "release.request": "requested a reviewed release",
    "release.released": "released exact results",
    "login.success": "signed in",
    "login.failure": "failed to sign in",
    "logout": "signed out",
    "password.failure": "gave a wrong current password",
    "token.create": "created an API token",
    "token.revoke": "revoked an API token",
    "token.failure": "presented an invalid API token",
    "access.refused": "was refused access",
    "user.create": "added a user",
    "user.change": "changed a user's role or institution",
    "user.output_checker": "named an output checker",
    "institution.create": "added an institution",
    "upload": "uploaded a file",
    "upload.refused": "had an upload refused",
    "ingest.map": "confirmed a column mapping",
    "ingest.term_forget": "forgot a remembered term",
    "ingest.processed": "validated and de-identified an upload",
    "release": "released a dataset to the pool",
    "withdrawal": "withdrew a dataset from the pool",
    "job.enqueue": "queued a job",
    "job.refused": "had a job stopped by the policy",
    "audit.verify": "checked the ledger",
    "audit.checkpoint": "signed a ledger checkpoint",
    "audit.checkpoint_pushed": "delivered a checkpoint to a witness",
    "export.download": "downloaded a file",
}
_HASH = re.compile(r"^[0-9a-f]{40,64}$")


def action_words(action: str) -> str:
    """What an action means in words ("agreement.sign" -> "signed the agreement")."""
    return ACTION_WORDS.get(action) or action.replace(".", ": ", 1).replace("_", " ")


def target_words(target: str) -> str:
    kind, sep, name = target.partition(":")
    if not sep:
        return target or "—"
    return f"{kind.replace('_', ' ')} {name}" if name else kind.replace("_", " ")


#: Labels of detail keys whose own names say too little.
DETAIL_LABELS = {
    "terms": "terms fingerprint (SHA-256 of the agreement's text as signed)",
    "digest": "fingerprint (SHA-256)",
    "sha256": "file fingerprint (SHA-256)",
    "parties": "parties",
}


def _value_words(value: Any, names: Mapping[str, str]) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ", ".join(_value_words(v, names) for v in value) or "none"
    if isinstance(value, dict):
        return "; ".join(
            f"{k.replace('_', ' ')}: {_value_words(v, names)}" for k, v in value.items()
        )
    text = str(value)
    if text in names:
        return names[text]
    return f"{text[:12]}…" if _HASH.match(text) else text


def detail_facts(detail: str, names: Mapping[str, str] | None = None) -> list[tuple[str, str, str]]:
    """The entry's detail as (label, value in words, full value) rows, never JSON;
    ``names`` turns short codes (institutions' slugs) into names."""
    names = names or {}
    try:
        data = json.loads(detail or "{}")
    except ValueError:
        return [("detail", detail, detail)]
    if not isinstance(data, dict):
        return [("detail", _value_words(data, names), str(data))]
    rows = []
    for key, value in data.items():
        full = value if isinstance(value, str) else _value_words(value, names)
        label = DETAIL_LABELS.get(key, key.replace("_", " "))
        rows.append((label, _value_words(value, names), str(full)))
    return rows


@bp.app_template_global("ledger_summary")
def ledger_summary(detail: str, limit: int = 3) -> str:
    """A line for the ledger's list: the first few facts of the detail, in words."""
    facts = detail_facts(detail)
    text = "; ".join(f"{label}: {value}" for label, value, _ in facts[:limit])
    return text + ("; …" if len(facts) > limit else "")


@bp.route("/audit/<int:entry_id>")
@guard("read", "admin/audit")
def audit_entry(entry_id: int) -> ResponseReturnValue:
    """One ledger entry in words: who, what, on what, when, and its place in the chain."""
    db = get_db()
    entry = db.get(AuditEntry, entry_id) if 0 < entry_id <= MAX_ID else None
    if entry is None:
        raise NotFound(f"the ledger has no entry {entry_id}.")
    before = db.get(AuditEntry, entry_id - 1) if entry_id > 1 else None
    after = db.get(AuditEntry, entry_id + 1) if entry_id < MAX_ID else None
    username = entry.actor.removeprefix("user:")
    person = (
        db.scalar(select(User).where(User.username == username))
        if entry.actor.startswith("user:")
        else None
    )
    try:
        pretty = json.dumps(json.loads(entry.detail or "{}"), indent=2, sort_keys=True)
    except ValueError:
        pretty = entry.detail
    return render_template(
        "admin/audit_entry.html",
        e=entry,
        person=person,
        who=(person.display_name or person.username) if person else username,
        action=action_words(entry.action),
        target=target_words(entry.target),
        facts=detail_facts(
            entry.detail, dict(db.execute(select(Institution.slug, Institution.name)).all())
        ),
        before=before,
        after=after,
        pretty=pretty,
    )


@bp.route("/audit.csv")
@guard("read", "admin/audit")
def audit_csv() -> ResponseReturnValue:
    q, filters = _audit_query()
    database = get_database()
    db = get_db()
    db.rollback()
    record_export(
        db,
        actor=actor(),
        target="ledger",
        fmt="csv",
        detail={"filter": {k: v for k, v in filters.items() if v}},
    )
    db.commit()  # recorded, and the request's own transaction ends before streaming starts

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
