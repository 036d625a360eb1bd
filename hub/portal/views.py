"""The signed-in landing page and the health check."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import text

from hub.db import get_db
from hub.web import current_user, guard, open_endpoint

bp = Blueprint("portal", __name__)
health = Blueprint("health", __name__)


@bp.route("/")
@guard("read", "portal")
def index() -> ResponseReturnValue:
    return render_template("index.html", user=current_user())


@health.route("/healthz")
@open_endpoint
def healthz() -> ResponseReturnValue:
    """Liveness and readiness: the database answers and the object store is reachable."""
    checks: dict[str, str] = {}
    status = 200
    try:
        get_db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # reported, not raised: this is the health check
        checks["database"] = "unavailable"
        status = 503
    storage = current_app.extensions.get("cleanroom.storage")
    if storage is not None:
        try:
            storage.check()
            checks["storage"] = "ok"
        except Exception:
            checks["storage"] = "unavailable"
            status = 503
    return jsonify({"status": "ok" if status == 200 else "degraded", "checks": checks}), status
