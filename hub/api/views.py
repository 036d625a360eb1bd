"""JSON API, version 1: who the token's user is. Bearer tokens only; errors as
{"error": {"code", "message"}}. Each domain's API lives beside its pages (``views.py`` of
``hub/ingest``, ``hub/jobs``, ``hub/gateway``, ...)."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from hub.web import current_user, guard

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.route("/me")
@guard("read", "account", scope="read")
def me() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return jsonify(
        {
            "username": user.username,
            "display_name": user.display_name,
            "role": user.role,
            "institution": user.institution.slug if user.institution else None,
        }
    )
