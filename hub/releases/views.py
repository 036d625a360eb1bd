"""``/api/v1/releases``: a researcher's release requests (bearer tokens with the ``sandbox``
scope, as the notebooks hold). The researcher sees each request's state and its outputs'
specifications; the exact results only once the request is released."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue

from hub.agreements.models import AgreementRecord
from hub.db import get_db
from hub.errors import BadRequest
from hub.releases import services
from hub.releases.models import ReleaseRequest
from hub.web import app_settings, current_user, get_policy, guard

api = Blueprint("releases_api", __name__, url_prefix="/api/v1/releases")


def _context() -> services.Context:
    from hub.gateway.views import _gateway

    return services.Context(
        gateway=_gateway(),
        policy=get_policy(),
        settings=app_settings(),
        storage=current_app.extensions["cleanroom.storage"],
    )


def _own(user: Any, request_id: int) -> bool:
    found = get_db().get(ReleaseRequest, request_id)
    return found is not None and found.researcher_id == user.id


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(
            "send a JSON object: "
            '{"agreement": "…", "title": "…", "outputs": [{"kind": "query", "sql": "…", '
            '"purpose": "…"}]}.'
        )
    return body


def _summary(found: ReleaseRequest) -> dict[str, Any]:
    stored = get_db().get(AgreementRecord, found.agreement_id)
    body = services.summary(found, stored.slug if stored else "")
    if found.state == "released":
        body["results"] = services.results(found)
    return body


def _settled(found: ReleaseRequest) -> ReleaseRequest:
    """Release it now if its window has passed (the state is kept current on every read)."""
    db = get_db()
    if services.settle(db, found):
        db.commit()
    return found


@api.route("", methods=["POST"])
@guard("create", "releases", scope="sandbox")
def create() -> ResponseReturnValue:
    """``{"agreement", "title"?, "outputs": [...]}`` → the request, computed and in review."""
    body = _body()
    slug = body.get("agreement")
    if not isinstance(slug, str) or not slug.strip():
        raise BadRequest("name the agreement: `agreement`.")
    specs = services.parse_outputs(body.get("outputs"))
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.submit(db, _context(), user, slug, str(body.get("title") or ""), specs)
    db.commit()
    return jsonify(_summary(found)), 201


@api.route("", methods=["GET"])
@guard("read", "releases", scope="sandbox")
def mine() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return jsonify(
        {"requests": [_summary(_settled(r)) for r in services.of_researcher(get_db(), user)]}
    )


@api.route("/<int:request_id>", methods=["GET"])
@guard("read", "releases/{request_id}", scope="sandbox", owner=_own)
def show(request_id: int) -> ResponseReturnValue:
    """The request's state; with its results once released."""
    return jsonify(_summary(_settled(services.get(get_db(), request_id))))


@api.route("/<int:request_id>/revise", methods=["POST"])
@guard("revise", "releases/{request_id}", scope="sandbox", owner=_own)
def revise(request_id: int) -> ResponseReturnValue:
    """``{"outputs": [...]}`` → a new revision, computed anew; earlier reviews no longer
    count."""
    specs = services.parse_outputs(_body().get("outputs"))
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.revise(db, _context(), services.get(db, request_id), user, specs)
    db.commit()
    return jsonify(_summary(found))


@api.route("/<int:request_id>/withdraw", methods=["POST"])
@guard("withdraw", "releases/{request_id}", scope="sandbox", owner=_own)
def withdraw(request_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    body = request.get_json(silent=True)
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    services.withdraw(db, found, user, str(reason))
    db.commit()
    return jsonify(_summary(found))
