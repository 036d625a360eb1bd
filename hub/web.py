"""Request plumbing shared by every blueprint: who is calling, the one guard decorator,
error rendering and security headers."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar, cast

from flask import (
    Flask,
    Response,
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_wtf.csrf import CSRFError
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from hub.accounts.models import User
from hub.accounts.services import TOKEN_SCOPES, resume_session, verify_token
from hub.accounts.services import may as may  # re-exported: views ask through hub.web
from hub.accounts.services import roles_of as roles_of
from hub.audit.services import record
from hub.db import get_database, get_db
from hub.errors import CleanroomError, DatabaseUnavailable, Forbidden, Unauthorized
from hub.settings import Settings
from hub.storage import Storage
from policies.enforcer import user_subject
from policies.store import SyncedPolicy

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Endpoints reachable without signing in. A test enumerates the app's routes and proves
#: every other endpoint carries :func:`guard`.
OPEN_ENDPOINTS = frozenset({"static", "auth.login", "health.healthz"})

#: Endpoints for the sandbox's JupyterHub only: no user signs in to them; they demand the
#: shared service secret instead (``hub.jupyterhub.service.service_guard``). Reviewed
#: exceptions to :func:`guard`, each listed here and enumerated by the same test.
SERVICE_ENDPOINTS = frozenset(
    {"sandbox_service.login", "sandbox_service.check", "sandbox_service.token"}
)


#: What a user whose password someone else chose may reach before choosing their own.
PASSWORD_CHANGE_ENDPOINTS = frozenset({"auth.password", "auth.logout"})

#: Blueprints (and single endpoints) whose every request leaves its own ledger entry, naming
#: the caller and the token (``hub.gateway.views``, the sandbox's catalogue): a bearer
#: token's use there is not recorded a second time.
SELF_RECORDING = frozenset({"sandbox_api", "catalogue_api.sandbox_catalogue"})


def is_api_request() -> bool:
    return request.path.startswith("/api/")


# Who is calling -------------------------------------------------------------------------


def current_user() -> User | None:
    """The signed-in user (portal session) or the token's user (API), loaded once per
    request. API routes accept only bearer tokens, so a browser's cookie can never drive
    them (no CSRF through the API)."""
    if "user" in g:
        return cast(User | None, g.user)
    g.user, g.token = None, None
    if is_api_request():
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() != "bearer" or not value:
                refused = Unauthorized(
                    "send the API token as `Authorization: Bearer crt_...`.",
                    code="invalid_token",
                )
                _record_token_failure(get_db(), "", refused)
                raise refused
            db = get_db()
            try:
                token = verify_token(db, value)
            except Unauthorized as err:
                _record_token_failure(db, value, err)
                raise
            g.user, g.token = token.user, token
            if not SELF_RECORDING & {request.blueprint, request.endpoint}:
                record(
                    db,
                    actor=f"user:{token.user.username}",
                    action="token.use",
                    target=f"token:{token.lookup}",
                    detail={"method": request.method, "path": request.path},
                )
            db.commit()
    elif "sid" in session:
        db = get_db()
        user = resume_session(db, app_settings(), str(session["sid"]))
        db.commit()  # a session that just ended stays ended; its last activity is kept
        if user is None:
            session.clear()
        else:
            g.user = user
    return cast(User | None, g.user)


def app_settings() -> Settings:
    """The running app's settings."""
    settings: Settings = current_app.config["CLEANROOM_SETTINGS"]
    return settings


def app_storage() -> Storage:
    """The running app's object store."""
    storage: Storage = current_app.extensions["cleanroom.storage"]
    return storage


def actor() -> str:
    user = current_user()
    return f"user:{user.username}" if user else "anonymous"


def get_policy() -> SyncedPolicy:
    """The process's policy (global rules plus those compiled from agreements), brought up
    to date with the database once per request: a suspension committed by any process
    holds from the next request on."""
    policy: SyncedPolicy = current_app.extensions["cleanroom.policy"]
    if not g.get("policy_fresh"):
        policy.refresh()
        g.policy_fresh = True
    return policy


def _refresh_policy() -> None:
    """Before the request opens its own session: on SQLite every transaction takes the
    write lock (BEGIN IMMEDIATE), so the version check must not wait on the request's."""
    if request.endpoint not in OPEN_ENDPOINTS:
        get_policy()


def agreement_domain(slug: str, **_: Any) -> str:
    """The policy domain of the agreement a view's ``slug`` names."""
    return f"agreement:{slug}"


def _scopes(scope: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if scope is None:
        return ()
    found = (scope,) if isinstance(scope, str) else tuple(scope)
    unknown = [s for s in found if s not in TOKEN_SCOPES]
    if unknown or not found:
        raise ValueError(f"guard scope {scope!r}: name one or more of {', '.join(TOKEN_SCOPES)}")
    return found


def _record_refusal(user: User, act: str, target: str, code: str) -> None:
    """An ``access.refused`` entry: who was refused what, on which route (committed now,
    since the refusal ends the request). The sandbox's routes record each of their requests
    themselves, refusals included (``sandbox.refused``): one entry per request there."""
    if SELF_RECORDING & {request.blueprint, request.endpoint}:
        return
    db = get_db()
    db.rollback()  # nothing the request began is kept with the entry
    record(
        db,
        actor=f"user:{user.username}",
        action="access.refused",
        target=f"route:{request.endpoint}",
        detail={
            "action": act,
            "object": target,
            "method": request.method,
            "path": request.path[:500],
            "reason": code,
            "token": g.token.lookup if g.get("token") is not None else None,
        },
    )
    db.commit()


def _record_token_failure(db: Any, presented: str, err: Unauthorized) -> None:
    """A ``token.failure`` entry for a bearer token refused (malformed, unknown, revoked,
    expired, of a disabled account): the failed sign-in of the API. Only the token's public
    lookup part is kept, never its secret."""
    parts = presented.strip().split("_")
    lookup = parts[1] if len(parts) >= 3 and parts[0] == "crt" and len(parts[1]) == 16 else ""
    db.rollback()
    record(
        db,
        actor="anonymous",
        action="token.failure",
        target=f"token:{lookup}" if lookup.isalnum() else "token:malformed",
        detail={"reason": err.code, "method": request.method, "path": request.path[:500]},
    )
    db.commit()


def guard(
    action: str,
    obj: str,
    *,
    scope: str | tuple[str, ...] | None = None,
    owner: Callable[..., bool] | None = None,
    domain: Callable[..., str] | None = None,
) -> Callable[[F], F]:
    """Sign-in and permission check for a view, decided by :mod:`policies`.

    ``obj`` may name view arguments (``"jobs/{job_id}"``). ``scope`` is the API-token scope
    (or scopes, any one of which suffices) the route accepts: every route under ``/api/``
    must declare one (:func:`check_api_scopes` refuses an app with such a route, and the
    guard refuses every token on it); portal pages keep ``None``. ``owner(user,
    **view_args)`` says whether the object is the caller's own, for rules that apply only to
    owners. ``domain(**view_args)`` names an agreement domain: the decision is then the
    user's (``user:<id>``) in that agreement, made by the process's :func:`get_policy`;
    without it, the user's global role decides. A refusal leaves an ``access.refused``
    entry in the ledger.
    """
    scopes = _scopes(scope)

    def decorate(view: F) -> F:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            user = current_user()
            if user is None:
                if is_api_request():
                    raise Unauthorized(
                        "this API needs a bearer token: `Authorization: Bearer crt_...`.",
                        code="missing_token",
                    )
                return redirect(url_for("auth.login", next=request.full_path))
            target, act = obj.format(**kwargs), action.format(**kwargs)
            if is_api_request():
                held = g.token.scope_set if g.get("token") is not None else set()
                if not scopes or not held & set(scopes):
                    _record_refusal(user, act, target, "insufficient_scope")
                    needed = " or ".join(repr(s) for s in scopes) or "a declared"
                    raise Forbidden(
                        f"this API token lacks the {needed} scope; create one that has it.",
                        code="insufficient_scope",
                    )
            if (
                user.must_change_password
                and not is_api_request()
                and request.endpoint not in PASSWORD_CHANGE_ENDPOINTS
            ):
                flash("Choose your own password before you go on.", "info")
                return redirect(url_for("auth.password"))
            is_owner = bool(owner(user, **kwargs)) if owner is not None else False
            if domain is not None:
                ok = get_policy().allowed(
                    user_subject(user.id),
                    act,
                    target,
                    domain=domain(**kwargs),
                    owner=is_owner,
                    refresh=False,
                )
            else:
                ok = may(user, act, target, owner=is_owner)
            if not ok:
                _record_refusal(user, act, target, "forbidden")
                raise Forbidden(f"you may not {act} {target}.")
            return view(*args, **kwargs)

        wrapper._cleanroom_guard = (action, obj, domain)  # type: ignore[attr-defined]
        wrapper._cleanroom_scopes = scopes  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate


def check_api_scopes(app: Flask) -> None:
    """Refuse an app in which a guarded route under ``/api/`` declares no token scope.
    (JupyterHub's service endpoints take the service secret, not a token: not guarded.)"""
    missing = sorted(
        f"{rule.rule} ({rule.endpoint})"
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/api/")
        and getattr(app.view_functions[rule.endpoint], "_cleanroom_guard", None)
        and not getattr(app.view_functions[rule.endpoint], "_cleanroom_scopes", ())
    )
    if missing:
        raise RuntimeError(
            "every API route must declare the token scopes it accepts "
            f"(guard(..., scope=...)); these do not: {', '.join(missing)}"
        )


def open_endpoint(view: F) -> F:
    """Mark a view as deliberately reachable without signing in (see OPEN_ENDPOINTS)."""
    view._cleanroom_open = True  # type: ignore[attr-defined]
    return view


# Errors ---------------------------------------------------------------------------------


def _render_error(status: int, code: str, message: str) -> Response:
    if is_api_request():
        resp = jsonify({"error": {"code": code, "message": message}})
    else:
        resp = Response(
            render_template("error.html", status=status, code=code, message=message),
            mimetype="text/html",
        )
    resp.status_code = status
    return resp


def _handle_cleanroom(err: CleanroomError) -> Response:
    if err.status >= 500:
        log.error("%s: %s", err.code, err.message)
    resp = _render_error(err.status, err.code, err.message)
    resp.headers.update(getattr(err, "headers", None) or {})  # e.g. Retry-After on a 429
    return resp


def _handle_csrf(err: CSRFError) -> Response:
    return _render_error(
        400,
        "csrf_failed",
        "the form has expired or did not come from this site; reload the page and try again.",
    )


#: Endpoints that take an uploaded file: a body refused for its size there (413, before the
#: view runs) is a refused upload, and recorded as one.
UPLOAD_ENDPOINTS = frozenset({"datasets.upload", "uploads_api.api_upload"})


def _record_too_large() -> None:
    try:
        who = actor()
    except CleanroomError:  # a bad token: refused for that too, and recorded there
        who = "anonymous"
    db = get_db()
    db.rollback()
    user = g.get("user")
    record(
        db,
        actor=who,
        action="upload.refused",
        target=f"institution:{user.institution.slug if user and user.institution else '-'}",
        detail={
            "reason": "too_large",
            "status": 413,
            "table": request.args.get("table", "")[:64],
            "filename": request.args.get("filename", "")[:200],
        },
    )
    db.commit()


def _handle_http(err: HTTPException) -> Response:
    if err.code == 413 and request.endpoint in UPLOAD_ENDPOINTS:
        _record_too_large()
    code = (err.name or "error").lower().replace(" ", "_")
    messages = {
        404: "there is nothing at this address.",
        405: f"{request.method} is not allowed here.",
        413: "the request is too large.",
    }
    status = err.code or 500
    return _render_error(status, code, messages.get(status, err.description or err.name))


def _handle_db_down(err: sa_exc.OperationalError) -> Response:
    from hub.db import describe_operational_error

    log.error(describe_operational_error(get_database().url, err))
    unavailable = DatabaseUnavailable(
        "the metadata database is unavailable; try again shortly or tell the steward."
    )
    return _handle_cleanroom(unavailable)


def _handle_unexpected(err: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    return _render_error(
        500,
        "internal_error",
        "something went wrong on our side; it has been logged. Try again, and tell the "
        "steward if it keeps happening.",
    )


# Security headers -----------------------------------------------------------------------

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)


def _security_headers(resp: Response) -> Response:
    from flask import current_app

    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["X-Frame-Options"] = "DENY"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
    resp.headers["Permissions-Policy"] = "camera=(), microphone=(), geolocation=()"
    if current_app.config["CLEANROOM_SETTINGS"].uses_tls:
        resp.headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
    if "user" in g and g.user is not None:
        resp.headers["Cache-Control"] = "no-store"
    return resp


def init_app(app: Flask) -> None:
    app.extensions["cleanroom.policy"] = SyncedPolicy(get_database(app).engine)
    app.before_request(_refresh_policy)
    app.register_error_handler(CleanroomError, _handle_cleanroom)
    app.register_error_handler(CSRFError, _handle_csrf)
    app.register_error_handler(HTTPException, _handle_http)
    app.register_error_handler(sa_exc.OperationalError, _handle_db_down)
    app.register_error_handler(Exception, _handle_unexpected)
    app.after_request(_security_headers)

    @app.context_processor
    def _inject() -> dict[str, Any]:
        user = g.get("user")

        def can(action: str, obj: str) -> bool:
            return may(user, action, obj)

        return {"current_user": user, "can": can}
