"""The ledger's pages. ``/admin/audit``: the ledger entry by entry, with filters, a check
of the whole chain and a CSV export. ``/ledger/checkpoints``: the signed ledger checkpoints
for every institution's admin, the auditor and the steward to download (a witness's
copies), and the steward's "sign one now"; ``/api/v1/audit/checkpoints`` for scripts keeping
a witness folder."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import Select, func, select

from hub.accounts.models import Institution, User
from hub.audit.checkpoints import (
    FILE_PATTERN,
    FORMAT,
    PUBLIC_KEY_FILE,
    anchor_public_pem,
    create_checkpoint,
    file_name,
    handed_over_to,
    key_id,
    load_public_key,
    push_pending,
    signing_key,
)
from hub.audit.models import AuditCheckpoint, AuditEntry, WitnessPush
from hub.audit.services import verify
from hub.audit.words import action_words, detail_facts, target_words
from hub.db import get_database, get_db
from hub.errors import BadRequest, CleanroomError, NotFound, web_text
from hub.exports import SafeWriter, record_export
from hub.routing import MAX_ID
from hub.web import actor, app_settings, current_user, guard

bp = Blueprint("ledger", __name__, url_prefix="/ledger")
api = Blueprint("ledger_api", __name__, url_prefix="/api/v1/audit")
#: The steward's (and the auditor's) ledger, entry by entry: ``/admin/audit``.
pages = Blueprint("audit", __name__, url_prefix="/admin")
PAGE = 100


def _public() -> str:
    """The key a witness checks every checkpoint from (the first signer; see rotations)."""
    return anchor_public_pem(get_db(), app_settings())


@bp.route("/checkpoints")
@guard("read", "ledger/checkpoints")
def checkpoints() -> ResponseReturnValue:
    """The checkpoints, newest first, each to download, with the key that checks them."""
    db = get_db()
    rows = db.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc())).all()
    user = current_user()
    assert user is not None  # the guard let only a signed-in user through
    mine = None
    if user.institution_id is not None:
        mine = db.get(Institution, user.institution_id)
    delivered = {}
    if mine is not None:
        delivered = dict(
            db.execute(
                select(WitnessPush.checkpoint_id, WitnessPush.state).where(
                    WitnessPush.institution_id == mine.id
                )
            ).all()
        )
    entries = db.scalar(select(func.count()).select_from(AuditEntry)) or 0
    anchor = load_public_key(_public().encode())
    handovers = {
        c.id: handed_over_to(json.loads(c.document)) for c in rows if '"next_key"' in c.document
    }
    return render_template(
        "audit/checkpoints.html",
        checkpoints=rows,
        institution=mine,
        delivered=delivered,
        entries=entries,
        key_id=key_id(anchor),
        signing_key_id=key_id(signing_key(app_settings()).public_key()),
        handovers=handovers,
        file_name=file_name,
    )


@bp.route("/checkpoints", methods=["POST"])
@guard("create", "ledger/checkpoints")
def sign_now() -> ResponseReturnValue:
    """The steward signs a checkpoint now; the institutions' copies follow at once."""
    db = get_db()
    settings = app_settings()
    try:
        made = create_checkpoint(db, settings, actor=actor())
        db.commit()
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
        return redirect(url_for("ledger.checkpoints"))
    if made is None:
        flash("The ledger has not grown since the latest checkpoint: none signed.", "info")
        return redirect(url_for("ledger.checkpoints"))
    report = push_pending(db, settings, actor=actor())
    db.commit()
    text = f"Checkpoint {made.id} signed over {made.length} ledger entries."
    if report.failed or report.refused:
        text += (
            " Delivery failed for "
            + ", ".join(report.failed + report.refused)
            + "; it is tried again at the next interval."
        )
    flash(text, "info")
    return redirect(url_for("ledger.checkpoints"))


@bp.route("/checkpoints/<name>")
@guard("read", "ledger/checkpoints")
def download(name: str) -> ResponseReturnValue:
    """A file of a witness's folder, under its own name: ``checkpoint-NNNNNN.json`` or
    ``hub-public-key.pem``."""
    if name == PUBLIC_KEY_FILE:
        return Response(
            _public(),
            mimetype="application/x-pem-file",
            headers={"Content-Disposition": f"attachment; filename={PUBLIC_KEY_FILE}"},
        )
    match = FILE_PATTERN.match(name)
    sequence = int(match.group(1)) if match else 0
    checkpoint = get_db().get(AuditCheckpoint, sequence) if 0 < sequence <= MAX_ID else None
    if checkpoint is None:
        raise NotFound(f"there is no ledger checkpoint file {name[:80]}.")
    return Response(
        checkpoint.document,
        mimetype="application/json",
        headers={"Content-Disposition": f"attachment; filename={file_name(sequence)}"},
    )


@api.route("/checkpoints")
@guard("read", "ledger/checkpoints", scope="read")
def api_checkpoints() -> ResponseReturnValue:
    """Every signed checkpoint (oldest first) and the hub's public key: save each as
    ``checkpoint-NNNNNN.json`` beside ``hub-public-key.pem`` to keep a witness folder."""
    from flask import request

    try:
        after = min(max(0, int(request.args.get("after", "0"))), MAX_ID)
    except ValueError:
        raise BadRequest(
            "`after` must be a checkpoint number: the last one you hold (0 for all)."
        ) from None
    rows = get_db().scalars(
        select(AuditCheckpoint.document)
        .where(AuditCheckpoint.id > after)
        .order_by(AuditCheckpoint.id)
    )
    pem = _public()
    return jsonify(
        {
            "format": FORMAT,
            # The first signer's key: it checks every checkpoint, handovers followed.
            "key_id": key_id(load_public_key(pem.encode())),
            "public_key": pem,
            "signing_key_id": key_id(signing_key(app_settings()).public_key()),
            "checkpoints": [json.loads(d) for d in rows],
        }
    )


# The ledger entry by entry ------------------------------------------------------------


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


@pages.route("/audit")
@guard("read", "admin/audit")
def index() -> ResponseReturnValue:
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
        "audit/ledger.html", entries=entries, filters=filters, verification=result, page=PAGE
    )


@pages.app_template_global("ledger_summary")
def ledger_summary(detail: str, limit: int = 3) -> str:
    """A line for the ledger's list: the first few facts of the detail, in words."""
    facts = detail_facts(detail)
    text = "; ".join(f"{label}: {value}" for label, value, _ in facts[:limit])
    return text + ("; …" if len(facts) > limit else "")


@pages.route("/audit/<int:entry_id>")
@guard("read", "admin/audit")
def entry(entry_id: int) -> ResponseReturnValue:
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
        "audit/entry.html",
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


@pages.route("/audit.csv")
@guard("read", "admin/audit")
def export_csv() -> ResponseReturnValue:
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
