"""``/api/v1/sandbox/``: aggregate queries, model fits and synthetic rows for researchers.

Bearer tokens with the ``sandbox`` scope only. The route's guard asks :mod:`policies` whether
the caller may use the sandbox at all; :func:`hub.gateway.services.scope` then asks, per
covered table, whether they may query it under the named agreement now. Nothing here
returns a pooled row: answers are disclosure-controlled aggregates and fit summaries, and
synthetic rows only of a synthetic version that passed the publication gates.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from flask import Blueprint, Response, after_this_request, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.exc import IntegrityError

from hub.db import get_db
from hub.errors import BadRequest, Conflict, Forbidden, NotFound
from hub.exports import FHIR_FILES, FHIR_FORMATS, FhirExportError, fhir_file, fhir_response_headers
from hub.gateway import services
from hub.storage import Storage
from hub.synth import services as synth
from hub.web import actor, current_user, get_policy, guard
from hub.web import app_settings as _settings
from sandbox.gateway import Gateway, GatewayError, QueryRejected, dp, dpfit
from sandbox.gateway.engine import digest

api = Blueprint("sandbox_api", __name__, url_prefix="/api/v1/sandbox")
MAX_SQL = 20_000


def app_gateway() -> Gateway:
    """The app's one :class:`Gateway` (its views and caches), made on first use."""
    gateway = current_app.extensions.get("cleanroom.gateway")
    if gateway is None:
        settings = _settings()
        gateway = Gateway(
            memory_limit=settings.gateway_memory_limit,
            threads=settings.gateway_threads,
            timeout=settings.gateway_timeout_seconds,
        )
        current_app.extensions["cleanroom.gateway"] = gateway
    return gateway


def _body(*required: str) -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(
            "send a JSON object, e.g. "
            '{"agreement": "vein-to-vein-2026", "sql": "SELECT site, COUNT(*) FROM ..."}.'
        )
    missing = [k for k in required if not isinstance(body.get(k), str) or not body[k].strip()]
    if missing:
        raise BadRequest(f"the request needs {', '.join(f'`{m}`' for m in missing)} (text).")
    return body


def _scope(slug: str, action: str) -> services.Scope:
    """Count the request against the caller's rate (its own transaction: it counts even if
    the request then fails), then the views they may ``action`` under ``slug``."""
    user = current_user()
    assert user is not None
    db = get_db()
    try:
        services.check_rate(db, _settings(), actor())
    except services.RateLimited as err:
        headers = err.headers  # the error's response is made after this function returns

        def retry_after(response: Response) -> Response:
            response.headers.update(headers)
            return response

        after_this_request(retry_after)
        raise
    storage: Storage = current_app.extensions["cleanroom.storage"]
    return services.scope(db, get_policy(), _settings(), storage, user, slug, action=action)


def _log(action: str, slug: str, detail: dict[str, Any]) -> None:
    """The request's one ledger entry, naming the caller and the token it came with (the
    sandbox API records no separate ``token.use``: see ``hub.web.SELF_RECORDING``)."""
    token = g.get("token")
    if token is not None:
        detail = {**detail, "token": token.lookup}
    services.log(get_db(), actor=actor(), action=action, slug=slug, detail=detail)
    g.sandbox_logged = True


@api.after_request
def _every_request_recorded(response: Response) -> Response:
    """Every request of a signed-in caller leaves exactly one ledger entry: those answered
    or refused by the gateway wrote theirs; the rest (reads of agreements, tables and
    budgets; refusals by the token's scope, the policy, the rate limit or a malformed
    request) are recorded here, with the error the caller was given."""
    if g.get("sandbox_logged") or g.get("user") is None:
        return response
    db = get_db()
    db.rollback()
    body = request.get_json(silent=True) if request.is_json else None
    slug = request.args.get("agreement") or (
        body.get("agreement") if isinstance(body, dict) else None
    )
    detail: dict[str, Any] = {"request": request.path, "status": response.status_code}
    if response.status_code >= 400:
        error = (response.get_json(silent=True) or {}).get("error") or {}
        detail.update(code=error.get("code"), reason=error.get("message"))
        action = "sandbox.refused"
    else:
        action = f"sandbox.{(request.endpoint or 'request').rsplit('.', 1)[-1]}"
    _log(action, str(slug or "")[:100], detail)
    db.commit()
    return response


def _refused(slug: str, what: str, err: Exception, extra: dict[str, Any]) -> None:
    db = get_db()
    db.rollback()
    _log(
        "sandbox.refused",
        slug,
        {"request": what, "reason": getattr(err, "message", str(err)), **extra},
    )
    db.commit()


@api.route("/agreements")
@guard("read", "sandbox", scope="sandbox")
def agreements() -> ResponseReturnValue:
    """The agreements the caller may query now, with their tables and disclosure terms."""
    from hub.agreements import services as agreement_services

    user = current_user()
    assert user is not None
    found = []
    for q in agreement_services.queryable(get_db(), get_policy(), user):
        d = q.agreement.disclosure
        found.append(
            {
                "agreement": q.stored.slug,
                "title": q.stored.title,
                "tables": q.tables,
                "disclosure": {
                    "k": d.k,
                    "min_institutions": d.min_institutions,
                    "epsilon_per_answer": d.epsilon_per_answer,
                    "epsilon_total": d.epsilon_total,
                    "synthetic_rows": d.allow_synthetic,
                    "model_fitting": d.allow_model_fitting,
                },
            }
        )
    return jsonify({"agreements": found})


@api.route("/tables")
@guard("read", "sandbox", scope="sandbox")
def tables() -> ResponseReturnValue:
    """``?agreement=slug``: each table's columns and types, exactly as the views hold them
    (the agreement's covered columns and ``institution``), with their public bounds."""
    slug = request.args.get("agreement", "")
    if not slug:
        raise BadRequest("name the agreement: ?agreement=<slug>.")
    scope = _scope(slug, "query")
    out = []
    held = {t: s for t, s in scope.tables.items() if s}
    views = services.views(app_gateway(), scope) if held else None
    for table in sorted(scope.tables):
        columns: list[dict[str, Any]] = []
        if views is not None and table in held:
            for name, sql_type in views.columns[table].items():
                fact = views.facts[table][name]
                column: dict[str, Any] = {"name": name, "type": sql_type}
                if fact.bounded:
                    column["bounds"] = [fact.lower, fact.upper]
                if fact.values is not None:
                    column["values"] = list(fact.values)
                columns.append(column)
        out.append({"table": table, "columns": columns, "institutions": len(held.get(table, []))})
    return jsonify({"agreement": slug, "tables": out})


@api.route("/budget")
@guard("read", "sandbox", scope="sandbox")
def budget() -> ResponseReturnValue:
    """``?agreement=slug``: the caller's privacy budget under the agreement this period."""
    slug = request.args.get("agreement", "")
    if not slug:
        raise BadRequest("name the agreement: ?agreement=<slug>.")
    scope = _scope(slug, "query")
    user = current_user()
    assert user is not None
    return jsonify(services.budget(get_db(), user, scope).as_dict())


def _number(body: dict[str, Any], name: str) -> Any:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest(f"`{name}` must be a number.")
    return value


def _answered(
    slug: str,
    scope: services.Scope,
    kind: str,
    identity: str,
    epsilon: float,
    compute: Any,
    detail: dict[str, Any],
) -> ResponseReturnValue:
    """The remembered answer to this question, or a new one paid from the budget.

    The budget is checked before any data is read and debited atomically with the answer's
    storage and its ledger entry (one transaction): an answer leaves only when paid for."""
    user = current_user()
    assert user is not None
    db = get_db()
    question = services.question_key(scope, kind, identity)
    found = services.remembered(db, scope, question)
    spent = 0.0
    if found is None:
        known = services.check_budget(db, user, scope, epsilon)
        # End the reading transaction: no lock is held while the answer is computed (on
        # SQLite every transaction takes the write lock), and the debit is one conditional
        # UPDATE that cannot overspend whatever happened meanwhile.
        db.commit()
        try:
            found = compute()
        except GatewayError as err:
            spent = float(getattr(err, "spent", 0.0) or 0.0)
            if spent:
                db.rollback()
                services.debit(db, user, scope, spent)
                _log(
                    "sandbox.refused",
                    slug,
                    {"request": kind, "reason": err.message, "epsilon": spent, **detail},
                )
                db.commit()
                raise
            _refused(slug, kind, err, detail)
            raise
        try:
            services.remember(db, scope, question, kind, epsilon, found, actor())
        except IntegrityError:  # the same question answered meanwhile: that answer stands
            db.rollback()
            found = services.remembered(db, scope, question)
            assert found is not None
        else:
            left = services.debit(db, user, scope, epsilon, known)
            spent = epsilon
    if not spent:
        left = services.budget(db, user, scope)
    _log(
        f"sandbox.{kind}",
        slug,
        {
            **detail,
            "epsilon": spent,
            "remembered": spent == 0.0,
            "result_hash": found.get("result_hash") or digest(found),
            "institutions": scope.institutions,
        },
    )
    db.commit()
    return jsonify({"agreement": slug, **found, "spent": spent, "budget": left.as_dict()})


@api.route("/query", methods=["POST"])
@guard("query", "sandbox", scope="sandbox")
def query() -> ResponseReturnValue:
    """``{"agreement": slug, "sql": "SELECT …", "epsilon"?, "rows_per_patient"?}`` → a
    differentially private answer (the same question again: the same answer, free)."""
    body = _body("agreement", "sql")
    slug, sql = body["agreement"], body["sql"]
    if len(sql) > MAX_SQL:
        raise BadRequest(f"the query is longer than {MAX_SQL:,} characters.")
    epsilon_asked, rows_asked = _number(body, "epsilon"), _number(body, "rows_per_patient")
    scope = _scope(slug, "query")
    detail: dict[str, Any] = {"sql": sql}
    try:
        views = services.views(app_gateway(), scope)
        epsilon = dp.check_epsilon(epsilon_asked, scope.agreement.disclosure)
        checked = dp.checked_query(sql, views)
        bound = dp.check_rows_per_patient(rows_asked, [v for _a, v in checked.tables])
        identity = dp.canonical(sql, epsilon, bound, views)
    except GatewayError as err:
        _refused(slug, "query", err, {**detail, "construct": getattr(err, "construct", None)})
        raise
    detail["query_hash"] = checked.hash

    def compute() -> dict[str, Any]:
        return dp.answer(
            app_gateway(),
            views,
            scope.agreement.disclosure,
            sql,
            epsilon=epsilon,
            rows_per_patient=bound,
        ).as_dict()

    return _answered(slug, scope, "query", identity, epsilon, compute, detail)


@api.route("/fit", methods=["POST"])
@guard("fit", "sandbox", scope="sandbox")
def fit() -> ResponseReturnValue:
    """``{"agreement", "table", "kind": "linear"|"logistic", "features": [...], "target",
    "filters"?, "epsilon"?}`` → differentially private coefficients and n; never rows."""
    body = _body("agreement", "table", "kind", "target")
    features = body.get("features")
    if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
        raise BadRequest("`features` must be a list of column names.")
    filters = body.get("filters")
    if filters is not None and not isinstance(filters, str):
        raise BadRequest("`filters` must be a SQL condition (text), e.g. \"age_band <> '90+'\".")
    slug = body["agreement"]
    epsilon_asked = _number(body, "epsilon")
    scope = _scope(slug, "fit")
    detail = {k: body.get(k) for k in ("table", "kind", "features", "target", "filters")}
    try:
        views = services.views(app_gateway(), scope)
        epsilon = dp.check_epsilon(epsilon_asked, scope.agreement.disclosure)
    except GatewayError as err:
        _refused(slug, "fit", err, detail)
        raise
    identity = dpfit.request_hash(
        body["kind"], body["table"], features, body["target"], filters, epsilon
    )

    def compute() -> dict[str, Any]:
        return dpfit.fit(
            app_gateway(),
            views,
            scope.agreement.disclosure,
            kind=body["kind"],
            table=body["table"],
            features=features,
            target=body["target"],
            filters=filters,
            epsilon=epsilon,
        ).as_dict()

    return _answered(slug, scope, "fit", identity, epsilon, compute, detail)


@api.route("/synthetic/<table>")
@guard("synthetic", "sandbox", scope="sandbox")
def synthetic(table: str) -> ResponseReturnValue:
    """Synthetic rows of ``table`` under ``?agreement=slug``, where the agreement allows:
    a page of JSON rows, or (``format=fhir-ndjson|fhir-bundle``) the whole synthetic table
    as FHIR R5, every resource validated before it is sent."""
    slug = request.args.get("agreement", "")
    if not slug:
        raise BadRequest("name the agreement: ?agreement=<slug>.")
    fmt = request.args.get("format", "json")
    if fmt != "json" and fmt not in FHIR_FORMATS:
        raise BadRequest(f"`format` must be json, {' or '.join(FHIR_FORMATS)}; not {fmt[:40]!r}.")
    if fmt != "json" and ("limit" in request.args or "offset" in request.args):
        raise BadRequest(
            "`limit` and `offset` page the JSON rows; a FHIR export holds the whole "
            "synthetic table: leave them out."
        )
    limit = _int_arg("limit", synth.DEFAULT_PAGE, 1, synth.MAX_PAGE)
    offset = _int_arg("offset", 0, 0, None)
    scope = _scope(slug, "synthetic")
    if not scope.agreement.disclosure.allow_synthetic:
        raise Forbidden(f"agreement {slug!r} does not allow synthetic rows.", code="policy_denied")
    if table not in scope.tables:
        raise NotFound(f"agreement {slug!r} gives you no synthetic rows of {table!r}.")
    db = get_db()
    published = synth.published_for_agreement(db, scope.stored, table)
    if not published:
        raise NotFound(
            f"no synthetic version of {table!r} exists yet under {slug!r}: none has been "
            "generated and published.",
            code="no_synthetic_version",
        )
    storage: Storage = current_app.extensions["cleanroom.storage"]
    frame = synth.read_rows(storage, published)
    # The same columns as the views: those the agreement covers, nothing else.
    covered = set(scope.columns.get(table, ()))
    frame = frame[[c for c in frame.columns if c in covered]]
    ids = [p.id for p in published]
    if fmt != "json":
        return _synthetic_fhir(slug, table, frame, ids, fmt)
    body = synth.page(frame, limit=limit, offset=offset)
    _log(
        "sandbox.synthetic",
        slug,
        {
            "table": table,
            "synthetic_versions": ids,
            "offset": offset,
            "rows": len(body["rows"]),
            "total": body["total"],
        },
    )
    db.commit()
    # Tables synthesised together share a group; their synthetic keys join each other's.
    groups = sorted({p.group_id for p in published if p.group_id is not None})
    return jsonify(
        {
            "agreement": slug,
            "table": table,
            "synthetic_versions": ids,
            "synthetic_groups": groups,
            **body,
        }
    )


def _synthetic_fhir(
    slug: str, table: str, frame: pd.DataFrame, ids: list[int], fmt: str
) -> ResponseReturnValue:
    """The whole synthetic ``frame`` as FHIR R5, recorded like a page of rows (one
    ``sandbox.synthetic`` entry, with the format) before it is sent."""
    try:
        fhir = fhir_file({table: frame}, FHIR_FORMATS[fmt])
    except FhirExportError as err:
        raise Conflict(str(err), code="fhir_export_refused") from None
    _log(
        "sandbox.synthetic",
        slug,
        {
            "table": table,
            "synthetic_versions": ids,
            "format": fmt,
            "rows": len(frame),
            "left_out": sorted(fhir.left_out),
        },
    )
    get_db().commit()
    ext, mimetype = FHIR_FILES[fmt]
    name = f"{table}-synthetic-{slug}.{ext}"
    return Response(fhir.body, mimetype=mimetype, headers=fhir_response_headers(fhir, name))


def _int_arg(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"`{name}` must be a whole number.") from None
    if value < low or (high is not None and value > high):
        bound = f"between {low:,} and {high:,}" if high is not None else f"at least {low}"
        raise BadRequest(f"`{name}` must be {bound}.")
    return value


def gateway_error(err: GatewayError) -> tuple[dict[str, Any], int]:
    """The hub's one JSON error shape for a gateway error."""
    body: dict[str, Any] = {"code": err.code, "message": err.message}
    if isinstance(err, QueryRejected):
        body["construct"] = err.construct
        body["reason"] = err.reason
    return {"error": body}, err.status
