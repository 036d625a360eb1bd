"""Account logic, callable without a request: institutions, users, passwords, login
throttling and API tokens. Every security-relevant step writes to the audit ledger."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session, joinedload

from hub.accounts.models import ApiToken, Institution, InstitutionKind, LoginAttempt, Role, User
from hub.audit.services import record
from hub.db import utcnow
from hub.errors import BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized
from hub.settings import Settings

_hasher = PasswordHasher()
# Verified against when the username does not exist, so timing does not reveal which
# usernames are real.
_DUMMY_HASH = _hasher.hash("not-a-real-password")

SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,62}$")
MIN_PASSWORD = 12
TOKEN_SCOPES = ("upload", "sandbox", "read")
TOKEN_RE = re.compile(r"^crt_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{20,})$")


# Passwords ---------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    check_password_strength(password)
    return _hasher.hash(password)


def check_password_strength(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise BadRequest(f"passwords must be at least {MIN_PASSWORD} characters long.")


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


# Institutions and users --------------------------------------------------------------------


def create_institution(
    session: Session, slug: str, name: str, kind: str, *, actor: str
) -> Institution:
    if not SLUG_RE.match(slug):
        raise BadRequest(
            f"institution id {slug!r}: use 2-63 lower-case letters, digits and hyphens."
        )
    if kind not in {k.value for k in InstitutionKind}:
        raise BadRequest(
            f"institution kind {kind!r}: choose one of "
            + ", ".join(k.value for k in InstitutionKind)
        )
    if not name.strip():
        raise BadRequest("an institution needs a name.")
    if session.scalar(select(Institution).where(Institution.slug == slug)):
        raise Conflict(f"institution {slug!r} already exists.")
    inst = Institution(slug=slug, name=name.strip(), kind=kind)
    session.add(inst)
    session.flush()
    record(
        session,
        actor=actor,
        action="institution.create",
        target=f"institution:{slug}",
        detail={"name": inst.name, "kind": kind},
    )
    return inst


def get_institution(session: Session, slug: str) -> Institution:
    inst = session.scalar(select(Institution).where(Institution.slug == slug))
    if inst is None:
        raise NotFound(f"no institution {slug!r}; `cleanroom institution list` shows them.")
    return inst


def create_user(
    session: Session,
    username: str,
    password: str,
    role: str,
    *,
    institution: str | None,
    actor: str,
    display_name: str = "",
    email: str = "",
) -> User:
    username = username.strip().lower()
    if not USERNAME_RE.match(username):
        raise BadRequest(
            f"username {username!r}: use 2-63 lower-case letters, digits, dots, hyphens "
            "and underscores."
        )
    if role not in {r.value for r in Role}:
        raise BadRequest(f"role {role!r}: choose one of " + ", ".join(r.value for r in Role))
    inst = get_institution(session, institution) if institution else None
    if role in (Role.CONTRIBUTOR, Role.CONTRIBUTOR_ADMIN) and inst is None:
        raise BadRequest(f"a {role} must belong to an institution (--institution).")
    if session.scalar(select(User).where(User.username == username)):
        raise Conflict(f"user {username!r} already exists.")
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        institution=inst,
        display_name=display_name or username,
        email=email,
    )
    session.add(user)
    session.flush()
    record(
        session,
        actor=actor,
        action="user.create",
        target=f"user:{username}",
        detail={"role": role, "institution": institution},
    )
    return user


def get_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username.strip().lower()))
    if user is None:
        raise NotFound(f"no user {username!r}.")
    return user


def set_password(session: Session, user: User, password: str, *, actor: str) -> None:
    user.password_hash = hash_password(password)
    user.session_epoch += 1
    user.failed_logins = 0
    user.locked_until = None
    record(session, actor=actor, action="user.password", target=f"user:{user.username}")


def set_active(session: Session, user: User, active: bool, *, actor: str) -> None:
    user.is_active = active
    user.session_epoch += 1
    record(
        session,
        actor=actor,
        action="user.enable" if active else "user.disable",
        target=f"user:{user.username}",
    )
    _recompile_agreements(session)


def change_user(
    session: Session, user: User, *, role: str, institution: str | None, actor: str
) -> bool:
    """Move a user to another role and/or institution; False when nothing changes.

    Their sessions end (they sign in again under the new rights), and every agreement's
    rules are recompiled: a party admin who moved away no longer signs for the old
    institution, a researcher who left a recipient institution no longer reaches its data.
    """
    if role not in {r.value for r in Role}:
        raise BadRequest(f"role {role!r}: choose one of " + ", ".join(r.value for r in Role))
    inst = get_institution(session, institution) if institution else None
    if role in (Role.CONTRIBUTOR, Role.CONTRIBUTOR_ADMIN) and inst is None:
        raise BadRequest(f"a {role} must belong to an institution.")
    old_inst = user.institution.slug if user.institution else None
    if user.role == role and old_inst == institution:
        return False
    detail = {"role": [user.role, role], "institution": [old_inst, institution]}
    user.role = role
    user.institution = inst
    user.session_epoch += 1
    session.flush()
    record(
        session, actor=actor, action="user.change", target=f"user:{user.username}", detail=detail
    )
    _recompile_agreements(session)
    return True


def _recompile_agreements(session: Session) -> None:
    # Agreement rules name users by id and derive from their role and institution.
    from hub.agreements.services import recompile_all

    session.flush()
    recompile_all(session)


# Login -------------------------------------------------------------------------------------


def _check_rate(session: Session, settings: Settings, address: str) -> None:
    window_start = utcnow() - timedelta(minutes=1)
    recent = session.scalar(
        select(func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.address == address, LoginAttempt.at >= window_start)
    )
    if (recent or 0) >= settings.login_rate_per_minute:
        raise TooManyRequests(
            "too many login attempts from your address; wait a minute and try again."
        )


def authenticate(
    session: Session, settings: Settings, username: str, password: str, *, address: str
) -> User:
    """Check a username and password, with per-address rate limiting and per-account
    lock-out. Raises :class:`Unauthorized` with a message that does not say which of the
    two was wrong. The caller commits (failures are recorded too)."""
    username = username.strip().lower()
    _check_rate(session, settings, address)
    # Forget attempts older than the rate window so the table stays small.
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < utcnow() - timedelta(minutes=10)))
    user = session.scalar(select(User).where(User.username == username))
    now = utcnow()

    def fail(reason: str, message: str) -> Unauthorized:
        session.add(LoginAttempt(address=address, username=username[:64], succeeded=False))
        record(
            session,
            actor=f"user:{username}" if user else "anonymous",
            action="login.failure",
            target=f"user:{username}",
            detail={"reason": reason, "address": address},
        )
        return Unauthorized(message, code="login_failed")

    generic = "wrong username or password."
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise fail("unknown user", generic)
    if user.locked_until is not None and user.locked_until > now:
        minutes = max(1, int((user.locked_until - now).total_seconds() // 60) + 1)
        raise fail(
            "locked",
            f"this account is locked after repeated failed logins; try again in {minutes} "
            "minute(s) or ask the steward to unlock it.",
        )
    if not _verify(user.password_hash, password):
        user.failed_logins += 1
        if user.failed_logins >= settings.login_max_failures:
            user.locked_until = now + timedelta(minutes=settings.login_lockout_minutes)
            user.failed_logins = 0
            record(
                session,
                actor="system",
                action="user.lock",
                target=f"user:{username}",
                detail={"minutes": settings.login_lockout_minutes},
            )
        raise fail("wrong password", generic)
    if not user.is_active:
        raise fail("disabled", "this account is disabled; ask the steward.")
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.failed_logins = 0
    user.locked_until = None
    user.last_login_at = now
    session.add(LoginAttempt(address=address, username=username, succeeded=True))
    record(
        session,
        actor=f"user:{username}",
        action="login.success",
        target=f"user:{username}",
        detail={"address": address},
    )
    return user


def unlock(session: Session, user: User, *, actor: str) -> None:
    user.locked_until = None
    user.failed_logins = 0
    record(session, actor=actor, action="user.unlock", target=f"user:{user.username}")


# API tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedToken:
    token: ApiToken
    secret: str  # the full bearer string, shown once


def _hash_secret(secret: str) -> str:
    # Token secrets are 256-bit random strings: a fast hash is enough (no guessing to slow).
    return hashlib.sha256(secret.encode()).hexdigest()


def create_token(
    session: Session,
    settings: Settings,
    user: User,
    name: str,
    scopes: list[str] | tuple[str, ...],
    *,
    days: int | None = None,
    actor: str,
) -> IssuedToken:
    scopes = sorted(set(scopes))
    bad = [s for s in scopes if s not in TOKEN_SCOPES]
    if bad or not scopes:
        raise BadRequest(
            f"token scopes {', '.join(bad) or '(none)'}: choose from {', '.join(TOKEN_SCOPES)}."
        )
    days = settings.token_default_days if days is None else days
    if not 1 <= days <= settings.token_max_days:
        raise BadRequest(f"token lifetime must be 1-{settings.token_max_days} days.")
    name = name.strip() or "token"
    lookup = "".join(
        secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789")
        for _ in range(16)
    )
    secret = secrets.token_urlsafe(32)
    token = ApiToken(
        lookup=lookup,
        secret_hash=_hash_secret(secret),
        user=user,
        name=name[:100],
        scopes=" ".join(scopes),
        expires_at=utcnow() + timedelta(days=days),
    )
    session.add(token)
    session.flush()
    record(
        session,
        actor=actor,
        action="token.create",
        target=f"token:{lookup}",
        detail={"user": user.username, "scopes": scopes, "days": days},
    )
    return IssuedToken(token, f"crt_{lookup}_{secret}")


def verify_token(session: Session, bearer: str, *, scope: str | None = None) -> ApiToken:
    """Resolve a bearer string to a live token, or raise :class:`Unauthorized` saying why."""
    match = TOKEN_RE.match(bearer.strip())
    if not match:
        raise Unauthorized(
            "malformed API token; tokens look like crt_XXXXXXXXXXXXXXXX_... "
            "(`cleanroom token create` or the portal's Tokens page issues them).",
            code="invalid_token",
        )
    lookup, secret = match.groups()
    token = session.scalar(
        select(ApiToken).where(ApiToken.lookup == lookup).options(joinedload(ApiToken.user))
    )
    if token is None or not hmac.compare_digest(token.secret_hash, _hash_secret(secret)):
        raise Unauthorized("unknown API token.", code="invalid_token")
    now = utcnow()
    if token.revoked_at is not None:
        raise Unauthorized("this API token was revoked; create a new one.", code="token_revoked")
    if token.expires_at <= now:
        raise Unauthorized(
            f"this API token expired on {token.expires_at:%Y-%m-%d %H:%M} UTC; create a new one.",
            code="token_expired",
        )
    if not token.user.is_active:
        raise Unauthorized("the account of this API token is disabled.", code="account_disabled")
    if scope is not None and scope not in token.scope_set:
        raise Unauthorized(
            f"this API token lacks the {scope!r} scope; create one with --scope {scope}.",
            code="insufficient_scope",
        )
    # Shown to the minute: written at most once a minute, not on every request.
    if token.last_used_at is None or now - token.last_used_at >= timedelta(minutes=1):
        token.last_used_at = now
    return token


def revoke_token(session: Session, token: ApiToken, *, actor: str) -> None:
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        record(session, actor=actor, action="token.revoke", target=f"token:{token.lookup}")


def token_status(token: ApiToken, now: datetime | None = None) -> str:
    now = now or utcnow()
    if token.revoked_at is not None:
        return "revoked"
    if token.expires_at <= now:
        return "expired"
    return "active"
