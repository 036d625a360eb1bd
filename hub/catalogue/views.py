"""The data catalogue in the portal and the JSON API.

- ``/catalogue``: the common data model's tables, and the agreements that concern the
  signed-in user with what they cover, who contributes and about how many patients;
  ``/catalogue/<table>``: a table's columns in plain words; ``/catalogue/agreements/<slug>``:
  one agreement's coverage, column by column.
- ``/api/v1/catalogue`` and ``/api/v1/catalogue/<table>``: the tables and columns (tokens
  with the ``read`` scope).
- ``/api/v1/sandbox/catalogue?agreement=<slug>``: the same per agreement for a researcher's
  sandbox token, decided exactly as the gateway decides a query (``hub.gateway.services``).
"""

from __future__ import annotations

import re

from flask import Blueprint, g, jsonify, render_template, request
from flask.typing import ResponseReturnValue
from markupsafe import Markup, escape

from hub.accounts.models import User
from hub.agreements import services as agreements
from hub.catalogue import services
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError
from hub.gateway import services as gateway
from hub.web import actor, app_settings, app_storage, current_user, get_policy, guard

bp = Blueprint("catalogue", __name__, url_prefix="/catalogue")
api = Blueprint("catalogue_api", __name__, url_prefix="/api/v1")


def _user() -> User:
    user = current_user()
    assert user is not None  # the guard let only a signed-in user through
    return user


_CODE = re.compile(r"`([^`]+)`")


@bp.app_template_filter("catalogue_code")
def inline_code(text: str) -> Markup:
    """The CDM's descriptions quote values in backticks: shown as code, never raw."""
    parts = _CODE.split(text)  # plain, quoted, plain, quoted, ...
    return Markup("").join(
        Markup("<code>{}</code>").format(part) if n % 2 else escape(part)
        for n, part in enumerate(parts)
    )


# Portal -------------------------------------------------------------------------------------


@bp.route("")
@guard("read", "catalogue")
def index() -> ResponseReturnValue:
    """Every table of the common data model, and the agreements that concern you."""
    db = get_db()
    storage = app_storage()
    concerned = [
        services.facts(db, storage, stored, agreement)
        for stored, agreement in services.concerning(db, get_policy(), _user())
    ]
    return render_template(
        "catalogue/index.html",
        tables=services.table_views(),
        version=services.cdm().version,
        agreements=concerned,
        legend=services.legend(),
    )


@bp.route("/<table>")
@guard("read", "catalogue")
def table(table: str) -> ResponseReturnValue:
    """One table's columns: meaning, type, unit, allowed values, how each is protected, and
    which of your agreements cover it."""
    found = services.get_table(table)
    concerned = services.concerning(get_db(), get_policy(), _user())
    return render_template(
        "catalogue/table.html",
        t=services.table_view(found),
        covering=services.covering(concerned, found.name) if concerned else None,
        tables=services.cdm().table_names,
        legend=services.legend(),
    )


@bp.route("/agreements/<slug>")
@guard("read", "catalogue")
def agreement(slug: str) -> ResponseReturnValue:
    """One agreement that concerns you: its contributors, patients and covered columns."""
    db, policy, user = get_db(), get_policy(), _user()
    facts = services.facts_for(db, policy, app_storage(), user, slug)
    terms = bool(agreements.readable(policy, user, [agreements.get(db, slug)]))
    return render_template(
        "catalogue/agreement.html",
        a=facts,
        tables=services.table_views(),
        may_read_terms=terms,
    )


# API ----------------------------------------------------------------------------------------


@api.route("/catalogue")
@guard("read", "catalogue", scope="read")
def api_catalogue() -> ResponseReturnValue:
    """``{"version", "tables": [{"table", "description", "grain", "columns": [...]}]}``."""
    return jsonify(services.catalogue())


@api.route("/catalogue/schema")
@guard("read", "catalogue", scope="read")
def api_schema() -> ResponseReturnValue:
    """The common data model as a data contract others can use (docs/cdm.md):
    ``?format=jsonschema`` (one JSON Schema per table, the default) or
    ``?format=frictionless`` (a Frictionless Data Package)."""
    from contracts import export
    from contracts.cdm import cdm_version

    form = request.args.get("format", "jsonschema")
    if form == "jsonschema":
        return jsonify({"version": cdm_version(), "tables": export.json_schemas()})
    if form == "frictionless":
        return jsonify(export.data_package())
    raise BadRequest(
        f"format {form[:40]!r}: ask for format=jsonschema (one JSON Schema per table) or "
        "format=frictionless (a Frictionless Data Package)."
    )


@api.route("/catalogue/<table>")
@guard("read", "catalogue", scope="read")
def api_table(table: str) -> ResponseReturnValue:
    """One table object, as in ``/api/v1/catalogue``."""
    return jsonify(services.table_entry(services.get_table(table)))


@api.route("/sandbox/catalogue")
@guard("read", "sandbox", scope="sandbox")
def sandbox_catalogue() -> ResponseReturnValue:
    """``?agreement=slug``: every CDM table with what the agreement lets the caller query
    (``covered``), its contributing institutions and its patients, rounded. Refused in the
    gateway's own words when the caller may not query under the agreement now."""
    slug = request.args.get("agreement", "")
    if not slug:
        raise BadRequest("name the agreement: ?agreement=<slug>.")
    user = _user()
    db = get_db()
    settings = app_settings()
    gateway.check_rate(db, settings, actor())
    detail = {"request": request.path}
    token = g.get("token")
    if token is not None:
        detail["token"] = token.lookup
    try:
        scope = gateway.scope(
            db, get_policy(), settings, app_storage(), user, slug[:100], action="query"
        )
    except CleanroomError as err:
        db.rollback()
        gateway.log(
            db,
            actor=actor(),
            action="sandbox.refused",
            slug=slug[:100],
            detail={**detail, "code": err.code, "reason": err.message},
        )
        db.commit()
        raise
    facts = services.facts(db, app_storage(), scope.stored, scope.agreement, coverage=scope.columns)
    gateway.log(
        db, actor=actor(), action="sandbox.catalogue", slug=scope.stored.slug, detail=detail
    )
    db.commit()
    return jsonify(facts.as_json())
