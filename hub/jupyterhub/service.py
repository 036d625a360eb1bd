"""``/api/v1/sandbox/service/``: what JupyterHub asks the hub, and nothing else.

JupyterHub (``sandbox/jupyterhub/``) holds a shared service secret and asks three things:
does this username and password sign in, and may the user use the sandbox (``login``); may
they still (``check``, for re-authentication and for stopping servers of users who lost
their last agreement); and a short-lived ``sandbox``-scoped API token for the notebook
server it is about to start (``token``). The secret is checked by :func:`service_guard`, the
reviewed exception to sign-in guards (``hub.web.SERVICE_ENDPOINTS``); the decisions
themselves come from :mod:`policies` through :func:`hub.agreements.services.may_query`.
"""

from __future__ import annotations

import functools
import hmac
import os
import secrets
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.accounts import services as accounts
from hub.accounts.models import ApiToken, User
from hub.audit.services import record
from hub.db import get_db, utcnow
from hub.errors import BadRequest, Unauthorized
from hub.settings import Settings
from hub.web import get_policy
from policies.store import SyncedPolicy

F = TypeVar("F", bound=Callable[..., Any])

service_api = Blueprint("sandbox_service", __name__, url_prefix="/api/v1/sandbox/service")

SECRET_FILE = "sandbox-service-secret"  # noqa: S105 - a file name, not a secret
TOKEN_NAME = "jupyterhub session"  # noqa: S105 - a token's label


def service_secret(settings: Settings) -> str:
    """The shared secret: the setting, else ``<data_dir>/sandbox-service-secret``,
    generated (mode 0600) on first use."""
    if settings.sandbox_service_secret:
        return settings.sandbox_service_secret
    path: Path = settings.data_path / SECRET_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process won the race
            pass
        else:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
    return path.read_text().strip()


def service_guard(view: F) -> F:
    """Admit only callers presenting the service secret as ``Authorization: Bearer ...``."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        settings: Settings = current_app.config["CLEANROOM_SETTINGS"]
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        expected = service_secret(settings)
        if (
            scheme.lower() != "bearer"
            or not presented
            or not hmac.compare_digest(presented.encode(), expected.encode())
        ):
            db = get_db()
            record(
                db,
                actor="anonymous",
                action="access.refused",
                target=f"route:{request.endpoint}",
                detail={"reason": "service_secret_required", "path": request.path[:500]},
            )
            db.commit()
            raise Unauthorized(
                "this endpoint is for the sandbox's JupyterHub and needs its service secret.",
                code="service_secret_required",
            )
        return view(*args, **kwargs)

    wrapper._cleanroom_service = True  # type: ignore[attr-defined]
    return cast(F, wrapper)


# Decisions ---------------------------------------------------------------------------------


def sandbox_agreements(session: Session, policy: SyncedPolicy, user: User) -> list[str]:
    """The agreements under which ``user`` may query at least one table now."""
    from hub.agreements import services as agreements

    if not accounts.may(user, "query", "sandbox"):
        return []
    return [q.stored.slug for q in agreements.queryable(session, policy, user)]


def issue_token(session: Session, settings: Settings, user: User) -> tuple[str, Any]:
    """A ``sandbox``-scoped token for a notebook server, living ``sandbox_token_hours``;
    the user's earlier notebook tokens are revoked (one live server, one live token)."""
    for old in session.scalars(
        select(ApiToken).where(
            ApiToken.user_id == user.id,
            ApiToken.name == TOKEN_NAME,
            ApiToken.revoked_at.is_(None),
        )
    ):
        accounts.revoke_token(session, old, actor="service:jupyterhub")
    issued = accounts.create_token(
        session, settings, user, TOKEN_NAME, ["sandbox"], days=1, actor="service:jupyterhub"
    )
    hours = max(1, min(24, settings.sandbox_token_hours))
    issued.token.expires_at = utcnow() + timedelta(hours=hours)
    return issued.secret, issued.token.expires_at


# Routes ------------------------------------------------------------------------------------


def _body(*required: str) -> dict[str, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("send a JSON object.")
    missing = [k for k in required if not isinstance(body.get(k), str) or not body[k]]
    if missing:
        raise BadRequest(f"the request needs {', '.join(f'`{m}`' for m in missing)} (text).")
    return {k: str(body[k]) for k in body if isinstance(body[k], str)}


def _user(session: Session, username: str) -> User | None:
    return session.scalar(select(User).where(User.username == username.strip().lower()))


@service_api.route("/login", methods=["POST"])
@service_guard
def login() -> ResponseReturnValue:
    """``{username, password, address}``: the hub's own password check (rate limit and
    throttling included), then whether the user may use the sandbox now."""
    body = _body("username", "password")
    settings: Settings = current_app.config["CLEANROOM_SETTINGS"]
    db = get_db()
    address = body.get("address") or "jupyterhub"
    try:
        user = accounts.authenticate(
            db, settings, body["username"], body["password"], address=f"sandbox:{address}"
        )
    except Exception:
        db.commit()  # failed attempts count towards the rate limit and the delays
        raise
    # A password someone else chose must first be replaced in the portal.
    allowed = [] if user.must_change_password else sandbox_agreements(db, get_policy(), user)
    reason = None
    if not allowed:
        # Said only after the password was right: it tells the user nothing about others.
        if user.must_change_password:
            reason = (
                "Your password was set by someone else: sign in to the Cleanroom portal, "
                "choose your own, then come back."
            )
        elif not accounts.may(user, "query", "sandbox"):
            reason = (
                "The notebook sandbox is for researchers. Your Cleanroom account is a "
                f"{user.role.replace('_', ' ')} account: use the portal instead."
            )
        else:
            reason = (
                "You are not named in an active data-sharing agreement yet, so there is no "
                "data for your notebooks. Ask the steward, or see Agreements in the portal."
            )
    record(
        db,
        actor=f"user:{user.username}",
        action="sandbox.login",
        target=f"user:{user.username}",
        detail={"allowed": bool(allowed), "agreements": allowed},
    )
    db.commit()
    return jsonify(
        {"name": user.username, "allowed": bool(allowed), "agreements": allowed, "reason": reason}
    )


@service_api.route("/check", methods=["POST"])
@service_guard
def check() -> ResponseReturnValue:
    """``{username}``: may the user still use the sandbox?"""
    body = _body("username")
    db = get_db()
    user = _user(db, body["username"])
    allowed = sandbox_agreements(db, get_policy(), user) if user is not None else []
    return jsonify({"name": body["username"], "allowed": bool(allowed), "agreements": allowed})


@service_api.route("/token", methods=["POST"])
@service_guard
def token() -> ResponseReturnValue:
    """``{username}``: a short-lived ``sandbox`` token for the notebook server about to
    start, and the gateway's address; refused when the user may not use the sandbox."""
    body = _body("username")
    settings: Settings = current_app.config["CLEANROOM_SETTINGS"]
    db = get_db()
    user = _user(db, body["username"])
    if user is None or not sandbox_agreements(db, get_policy(), user):
        from hub.errors import Forbidden

        raise Forbidden(
            f"{body['username']} is not a researcher named in an active agreement.",
            code="policy_denied",
        )
    secret, expires = issue_token(db, settings, user)
    db.commit()
    return jsonify(
        {"token": secret, "expires_at": expires.isoformat(), "gateway_url": gateway_url(settings)}
    )


def sandbox_url(settings: Settings) -> str:
    """Where researchers open the sandbox (JupyterHub): ``sandbox_public_url``, else its
    proxy's address while the sandbox is enabled, else "" (no sandbox to link to)."""
    if settings.sandbox_public_url:
        return settings.sandbox_public_url.rstrip("/") + "/"
    if not settings.sandbox_enabled:
        return ""
    host = settings.sandbox_host
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104
    return f"http://{host}:{settings.sandbox_port}/"


@service_api.app_context_processor
def _sandbox_link() -> dict[str, Any]:
    """``sandbox_url()`` in every portal template (the "Open the sandbox" link)."""

    def link() -> str:
        return sandbox_url(current_app.config["CLEANROOM_SETTINGS"])

    return {"sandbox_url": link}


def gateway_url(settings: Settings) -> str:
    """Where notebooks reach the gateway: the setting, else the hub's own address."""
    if settings.sandbox_gateway_url:
        return settings.sandbox_gateway_url.rstrip("/")
    host = settings.host if settings.host not in ("0.0.0.0", "::") else "127.0.0.1"  # noqa: S104
    return f"http://{host}:{settings.port}"
