"""``/api/v1/releases``: a researcher's release requests (bearer tokens with the ``sandbox``
scope, as the notebooks hold). The researcher sees each request's state and its outputs'
specifications; the exact results only once the request is released."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.accounts.models import User
from hub.agreements.models import AgreementRecord
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, Forbidden, NotFound
from hub.exports import SafeWriter, csv_safe
from hub.gateway.views import app_gateway
from hub.releases import services
from hub.releases.models import ReleaseObjection, ReleaseRequest
from hub.web import app_settings, current_user, get_policy, guard

api = Blueprint("releases_api", __name__, url_prefix="/api/v1/releases")


def _context() -> services.Context:
    return services.Context(
        gateway=app_gateway(),
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


# The portal: the request page the reviewers, the institutions and the steward decide on ---

bp = Blueprint("releases", __name__, url_prefix="/releases")


def _page_request(request_id: int, action: str = "read") -> ReleaseRequest:
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    if not services.may_see(db, user, found, action):
        raise Forbidden(f"you may not {action} release request {request_id}.")
    return found


@bp.route("")
@guard("read", "releases")
def index() -> ResponseReturnValue:
    """The requests you may read: to review, from your institution's data, or your own."""
    user = current_user()
    assert user is not None
    db = get_db()
    rows = []
    for found in services.visible(db, user):
        _settled(found)
        stored = db.get(AgreementRecord, found.agreement_id)
        rows.append((found, stored.slug if stored else "", services.may_review(user, found)))
    return render_template(
        "releases/index.html", rows=rows, needed=int(app_settings().release_approvals)
    )


@bp.route("/<int:request_id>")
@guard("read", "releases")
def page(request_id: int) -> ResponseReturnValue:
    """One request: each output with its table or coefficients, the rules applied, the
    cells withheld, the institutions behind it; the reviews, objections and decisions."""
    user = current_user()
    assert user is not None
    db = get_db()
    found = _settled(_page_request(request_id))
    stored = db.get(AgreementRecord, found.agreement_id)
    author = db.get(User, found.researcher_id)
    # The researcher sees results only once released; reviewers, institutions and the
    # steward see them to decide.
    shows_results = found.state == "released" or user.id != found.researcher_id
    outputs = [
        {
            "output": o,
            "spec": json.loads(o.spec),
            "result": json.loads(o.result) if (o.result and shows_results) else None,
            "evidence": json.loads(o.evidence or "{}"),
        }
        for o in found.outputs
    ]
    return render_template(
        "releases/show.html",
        request_=found,
        slug=stored.slug if stored else "",
        author=author,
        outputs=outputs,
        approvals=services.approvals(found),
        needed=int(app_settings().release_approvals),
        may_review=services.may_review(user, found) and found.state == "in_review",
        reviewed=any(
            r.reviewer_id == user.id and r.revision == found.revision for r in found.reviews
        ),
        may_object=found.state in services.OPEN and services.may_see(db, user, found, "object"),
        may_resolve=services.may_see(db, user, found, "resolve"),
        is_author=user.id == found.researcher_id,
        users={u.id: u for u in db.scalars(select(User))},
    )


def _decide(
    request_id: int, act: Callable[[Session, ReleaseRequest, User], str]
) -> ResponseReturnValue:
    """Run one decision on the request (``act`` returns what to tell the user); a refusal
    is shown on the page and changes nothing."""
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    try:
        message = act(db, found, user)
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
    else:
        db.commit()
        flash(message, "info")
    return redirect(url_for("releases.page", request_id=request_id))


@bp.route("/<int:request_id>/review", methods=["POST"])
@guard("read", "releases")
def review(request_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        form = request.form
        services.review(
            db, app_settings(), found, user, form.get("decision", ""), form.get("comment", "")
        )
        return f"Your review is recorded: the request is {found.state.replace('_', ' ')}."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/object", methods=["POST"])
@guard("read", "releases")
def object_(request_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        services.object_to(db, found, user, request.form.get("text", ""))
        return "Your objection is recorded: nothing is released until the steward decides."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/objections/<int:objection_id>", methods=["POST"])
@guard("read", "releases")
def resolve(request_id: int, objection_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        objection = db.get(ReleaseObjection, objection_id)
        if objection is None:
            raise NotFound(f"no objection {objection_id}.")
        form = request.form
        services.resolve(
            db, found, objection, user, form.get("resolution", ""), form.get("note", "")
        )
        return f"The objection is {objection.resolution}."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/<int:position>.<any(csv,xlsx):fmt>")
@guard("read", "releases")
def download(request_id: int, position: int, fmt: str) -> ResponseReturnValue:
    """A released table as CSV or XLSX (formula-safe), stamped with the request and its
    result hash."""
    found = _page_request(request_id)
    for item in services.results(found):
        if item["position"] == position and item["kind"] == "query" and item["result"]:
            result = item["result"]
            stamp = [
                [f"release request {request_id}, output {position}: {item['purpose']}"],
                [f"result hash {item['result_hash']}"],
            ]
            name = f"release-{request_id}-{position}.{fmt}"
            if fmt == "csv":
                out = io.StringIO()
                writer = SafeWriter(out)
                for row in [result["columns"], *result["rows"], [], *stamp]:
                    writer.writerow(row)
                body: str | bytes = out.getvalue()
                mimetype = "text/csv"
            else:
                body = _xlsx([result["columns"], *result["rows"], [], *stamp])
                mimetype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            return Response(
                body,
                mimetype=mimetype,
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
    raise NotFound(f"release request {request_id} has no released table {position}.")


def _xlsx(rows: list[list[Any]]) -> bytes:
    """A one-sheet workbook; text cells made formula-safe as in CSV (openpyxl would store
    ``=…`` as a formula)."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    for row in rows:
        sheet.append([csv_safe(v) if isinstance(v, str) else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
