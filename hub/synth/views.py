"""Synthetic versions in the portal and the JSON API.

Contributors ask for the synthesis of their own released versions, or share a version as
synthetic only; the steward asks for an agreement's pooled table and sees every report.
Reports and their SVG plots are served from the hub itself (no CDN, no script).
"""

from __future__ import annotations

import re
from typing import Any

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

from hub.accounts.models import User
from hub.agreements import services as agreements
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, NotFound
from hub.ingest import services as ingest
from hub.ingest.views import _same_institution, _version
from hub.routing import MAX_ID
from hub.synth import services
from hub.synth.models import SyntheticVersion
from hub.web import actor, guard
from hub.web import app_settings as _settings
from hub.web import app_storage as _storage

bp = Blueprint("synthetic", __name__)
api = Blueprint("synthetic_api", __name__)
_PLOT = re.compile(r"[A-Za-z0-9_-]+\.svg")
ALL_LINKED = "all-linked"  # the form's "all linked tables together" choice


def _owns_synthetic(user: User, synthetic_id: int, **_: object) -> bool:
    """A synthetic version of one of the user's institution's dataset versions."""
    synthetic = get_db().get(SyntheticVersion, synthetic_id)
    if synthetic is None or synthetic.dataset_version_id is None:
        return False
    return _same_institution(user, synthetic.dataset_version_id)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    method = str(body.get("method") or "").strip() or None
    raw_seed = body.get("seed")
    try:
        seed = int(raw_seed) if raw_seed not in (None, "") else 0
    except (TypeError, ValueError):
        raise BadRequest("`seed` must be a whole number.") from None
    if not 0 <= seed <= MAX_ID:  # stored in an integer column
        raise BadRequest(f"`seed` must be between 0 and {MAX_ID:,}.")
    return {"method": method, "seed": seed}


# Portal --------------------------------------------------------------------------------------


@bp.route("/datasets/<int:version_id>/synthesise", methods=["POST"])
@guard("synthesise", "datasets/{version_id}", owner=_same_institution)
def synthesise(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = ingest.get_version(db, version_id)
    try:
        synthetic = services.request_for_version(
            db, _settings(), version, actor=actor(), **_options(request.form)
        )
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    flash(f"Synthetic version {synthetic.id} queued ({synthetic.method}).", "info")
    return redirect(url_for("datasets.show", version_id=version_id) + "#synthetic", 303)


@bp.route("/datasets/<int:version_id>/synthetic-only", methods=["POST"])
@guard("synthetic_only", "datasets/{version_id}", owner=_same_institution)
def synthetic_only(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = ingest.get_version(db, version_id)
    try:
        services.share_synthetic_only(db, _settings(), version, actor=actor())
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    flash(
        "This version is shared as synthetic only: its real rows are in no agreement's "
        "views; its synthetic version is made once it is released.",
        "info",
    )
    return redirect(url_for("datasets.show", version_id=version_id) + "#synthetic", 303)


@bp.route("/synthetic")
@guard("read", "synthetic")
def index() -> ResponseReturnValue:
    """The steward's list of synthetic versions, and the agreement-table form."""
    db = get_db()
    records = agreements.all_records(db)
    tables = {r.slug: [c.table for c in agreements.contract_of(r).tables] for r in records}
    return render_template(
        "synthetic/index.html",
        synthetics=services.recent(db),
        scores=services.scores,
        agreement_tables=tables,
        methods=services.METHODS,
        default_method=_settings().synth_method,
        all_linked=ALL_LINKED,
    )


@bp.route("/synthetic", methods=["POST"])
@guard("synthesise", "synthetic")
def synthesise_agreement() -> ResponseReturnValue:
    """One pooled table, or (``table=all-linked``) the agreement's linked tables together."""
    db = get_db()
    slug, table = request.form.get("agreement", ""), request.form.get("table", "")
    try:
        if table == ALL_LINKED:
            members = services.request_for_agreement_tables(
                db, _settings(), slug, actor=actor(), **_options(request.form)
            )
        else:
            members = [
                services.request_for_agreement(
                    db, _settings(), slug, table, actor=actor(), **_options(request.form)
                )
            ]
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
        return redirect(url_for("synthetic.index"), 303)
    db.commit()
    if len(members) > 1:
        listed = ", ".join(f"{m.cdm_table} #{m.id}" for m in members)
        flash(
            f"Synthetic versions queued together as group {members[0].group_id}: {listed}.", "info"
        )
    else:
        flash(f"Synthetic version {members[0].id} queued.", "info")
    return redirect(url_for("synthetic.show", synthetic_id=members[0].id), 303)


@bp.route("/synthetic/<int:synthetic_id>")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def show(synthetic_id: int) -> ResponseReturnValue:
    db = get_db()
    synthetic = services.get(db, synthetic_id)
    return render_template(
        "synthetic/show.html",
        s=synthetic,
        d=services.synthetic_dict(synthetic),
        scores=services.scores(synthetic),
        group=services.group(db, synthetic.group_id) if synthetic.group_id else [],
    )


@bp.route("/synthetic/<int:synthetic_id>/plots/<name>")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def plot(synthetic_id: int, name: str) -> ResponseReturnValue:
    if not _PLOT.fullmatch(name):
        raise NotFound("no such plot.")
    data = services.plot(_storage(), services.get(get_db(), synthetic_id), name)
    return Response(
        data,
        mimetype="image/svg+xml",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Cache-Control": "private, max-age=3600",
        },
    )


# API ---------------------------------------------------------------------------------------


@api.route("/api/v1/uploads/<int:version_id>/synthetic-only", methods=["POST"])
@guard("synthetic_only", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_synthetic_only(version_id: int) -> ResponseReturnValue:
    """Share this version as synthetic only (under review or released)."""
    db = get_db()
    version = ingest.get_version(db, version_id)
    synthetic = services.share_synthetic_only(db, _settings(), version, actor=actor())
    db.commit()
    return jsonify(
        {
            "upload": _version(version),
            "synthetic": services.synthetic_dict(synthetic, report=False) if synthetic else None,
        }
    )


@api.route("/api/v1/uploads/<int:version_id>/synthesise", methods=["POST"])
@guard("synthesise", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_synthesise(version_id: int) -> ResponseReturnValue:
    """Body (optional): ``{"method": "gaussian_copula"|"ctgan"|"tvae", "seed": n}``."""
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object, e.g. {"method": "gaussian_copula", "seed": 0}.')
    db = get_db()
    version = ingest.get_version(db, version_id)
    synthetic = services.request_for_version(
        db, _settings(), version, actor=actor(), **_options(body)
    )
    db.commit()
    return jsonify(services.synthetic_dict(synthetic, report=False)), 202


@api.route("/api/v1/synthetic/<int:synthetic_id>")
@guard("read", "synthetic/{synthetic_id}", scope="read", owner=_owns_synthetic)
def api_show(synthetic_id: int) -> ResponseReturnValue:
    """The synthetic version with its report (scores, gates, plots' names)."""
    return jsonify(services.synthetic_dict(services.get(get_db(), synthetic_id)))
