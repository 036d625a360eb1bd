"""``/ledger/checkpoints``: the signed ledger checkpoints for every institution's admin,
the auditor and the steward to download (a witness's copies), and the steward's "sign one
now"; ``/api/v1/audit/checkpoints`` for scripts keeping a witness folder."""

from __future__ import annotations

import json

from flask import Blueprint, Response, flash, jsonify, redirect, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from hub.accounts.models import Institution
from hub.audit.checkpoints import (
    FILE_PATTERN,
    FORMAT,
    PUBLIC_KEY_FILE,
    create_checkpoint,
    file_name,
    key_id,
    public_pem,
    push_pending,
    signing_key,
)
from hub.audit.models import AuditCheckpoint, AuditEntry, WitnessPush
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, NotFound, web_text
from hub.routing import MAX_ID
from hub.web import actor, app_settings, current_user, guard

bp = Blueprint("ledger", __name__, url_prefix="/ledger")
api = Blueprint("ledger_api", __name__, url_prefix="/api/v1/audit")


def _public() -> str:
    return public_pem(signing_key(app_settings()).public_key())


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
    key = signing_key(app_settings()).public_key()
    return render_template(
        "audit/checkpoints.html",
        checkpoints=rows,
        institution=mine,
        delivered=delivered,
        entries=entries,
        key_id=key_id(key),
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
    key = signing_key(app_settings()).public_key()
    return jsonify(
        {
            "format": FORMAT,
            "key_id": key_id(key),
            "public_key": public_pem(key),
            "checkpoints": [json.loads(d) for d in rows],
        }
    )
