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
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, joinedload

import policies
from hub import events
from hub.accounts import passwords
from hub.accounts.models import (
    ApiToken,
    Institution,
    InstitutionKind,
    LoginAttempt,
    Role,
    User,
    UserSession,
)
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
MIN_PASSWORD = 12  # the default of the `password_min_length` setting
TOKEN_SCOPES = ("upload", "sandbox", "read")
TOKEN_RE = re.compile(r"^crt_([A-Za-z0-9]{16})_([A-Za-z0-9_-]{20,})$")


# Access ------------------------------------------------------------------------------------


def roles_of(user: User) -> tuple[str, ...]:
    """The roles a user holds for :mod:`policies`: their one role, and ``output_checker``
    when the steward named them so (they review release requests). The one place that turns
    a user into policy subjects; nothing else reads a role to decide."""
    return (user.role, "output_checker") if user.is_output_checker else (user.role,)


def may(user: User | None, action: str, obj: str, *, owner: bool = False) -> bool:
    """May ``user`` (active) do ``action`` on ``obj``, as the global rules of :mod:`policies`
    decide for any of their roles? Agreement-scoped questions go to the process's
    :class:`policies.store.SyncedPolicy` with the user as subject instead."""
    if user is None or not user.is_active:
        return False
    return any(policies.allowed(role, action, obj, owner=owner) for role in roles_of(user))


# Passwords ---------------------------------------------------------------------------------


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def check_password(
    password: str, user_inputs: tuple[str, ...] = (), min_length: int = MIN_PASSWORD
) -> None:
    """Refuse a short, common, breached or guessable password, saying why
    (:mod:`hub.accounts.passwords`)."""
    passwords.check(password, min_length, user_inputs)


def check_current_password(user: User, password: str) -> bool:
    """Whether ``password`` is the user's (asked again before it is changed)."""
    return _verify(user.password_hash, password)


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
        raise NotFound(
            f"no institution {slug!r}.", cli_hint="`cleanroom institution list` shows them."
        )
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
    temporary: bool = False,
    min_length: int = MIN_PASSWORD,
) -> User:
    """Add a user. ``temporary``: someone else chose the password (the steward, the command
    line), so the user must choose their own at the first sign-in."""
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
    check_password(password, (username, display_name, email), min_length)
    user = User(
        username=username,
        password_hash=hash_password(password),
        role=role,
        institution=inst,
        display_name=display_name or username,
        email=email,
        must_change_password=temporary,
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


def set_password(
    session: Session,
    user: User,
    password: str,
    *,
    actor: str,
    own: bool = False,
    min_length: int = MIN_PASSWORD,
) -> tuple[int, int]:
    """A new password. ``own``: the user chose it (else it is a reset, and temporary).
    Either way every session of the user ends and every API token is revoked; returns how
    many of each."""
    check_password(password, (user.username, user.display_name, user.email), min_length)
    if _verify(user.password_hash, password):
        raise BadRequest("choose a password different from the current one.", code="same_password")
    user.password_hash = hash_password(password)
    user.must_change_password = not own
    record(
        session,
        actor=actor,
        action="user.password" if own else "user.password_reset",
        target=f"user:{user.username}",
    )
    return end_sessions(session, user, "password changed" if own else "password reset", actor=actor)


def set_output_checker(session: Session, user: User, on: bool, *, actor: str) -> None:
    """Name (or un-name) ``user`` an output checker: they review release requests, never
    their own."""
    user.is_output_checker = on
    record(
        session,
        actor=actor,
        action="user.output_checker" if on else "user.output_checker_removed",
        target=f"user:{user.username}",
    )


def set_active(session: Session, user: User, active: bool, *, actor: str) -> None:
    user.is_active = active
    record(
        session,
        actor=actor,
        action="user.enable" if active else "user.disable",
        target=f"user:{user.username}",
    )
    if not active:
        end_sessions(session, user, "account disabled", actor=actor)
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
    session.flush()
    end_sessions(session, user, "role changed", actor=actor, tokens=False)
    record(
        session, actor=actor, action="user.change", target=f"user:{user.username}", detail=detail
    )
    _recompile_agreements(session)
    return True


def _recompile_agreements(session: Session) -> None:
    # Agreement rules name users by id and derive from their role and institution: the
    # agreements domain recompiles them when told (hub.events).
    session.flush()
    events.emit(events.USERS_CHANGED, session=session)


# Sign-in -----------------------------------------------------------------------------------


def _check_rate(session: Session, settings: Settings, address: str) -> None:
    window_start = utcnow() - timedelta(minutes=1)
    recent = session.scalar(
        select(func.count())
        .select_from(LoginAttempt)
        .where(LoginAttempt.address == address, LoginAttempt.at >= window_start)
    )
    if (recent or 0) >= settings.login_rate_per_minute:
        raise TooManyRequests(
            "too many sign-in attempts from your address; wait a minute and try again."
        )


def _clean_name(username: str) -> str:
    """A typed user name as stored: trimmed, lower case, no control characters, at most
    64 characters (what the attempts table holds)."""
    name = "".join(c for c in username.strip().lower() if c.isprintable())
    return name[:64]


def throttle_wait(
    session: Session, settings: Settings, username: str, address: str
) -> timedelta | None:
    """How long this address must wait before it may try ``username`` again: nothing for
    the first ``login_free_failures`` failures since its last success (in a day), then 1 s,
    doubling per failure, at most ``login_max_delay_minutes``. It depends only on what this
    address did with this name, so it says nothing of whether the account exists, and
    nobody else's failures can keep a user out."""
    since = utcnow() - timedelta(days=1)
    succeeded = session.scalar(
        select(func.max(LoginAttempt.at)).where(
            LoginAttempt.address == address,
            LoginAttempt.username == username,
            LoginAttempt.succeeded.is_(True),
            LoginAttempt.at >= since,
        )
    )
    failures, last = session.execute(
        select(func.count(), func.max(LoginAttempt.at)).where(
            LoginAttempt.address == address,
            LoginAttempt.username == username,
            LoginAttempt.succeeded.is_(False),
            LoginAttempt.at >= max(since, succeeded) if succeeded else LoginAttempt.at >= since,
        )
    ).one()
    extra = int(failures or 0) - settings.login_free_failures
    if extra < 0 or last is None:
        return None
    delay = min(
        timedelta(seconds=2 ** min(extra, 20)),
        timedelta(minutes=settings.login_max_delay_minutes),
    )
    wait = last + delay - utcnow()
    return wait if wait > timedelta(0) else None


def _wait_words(wait: timedelta) -> str:
    seconds = max(1, int(wait.total_seconds() + 0.999))
    return f"{seconds} seconds" if seconds < 120 else f"{(seconds + 59) // 60} minutes"


def authenticate(
    session: Session, settings: Settings, username: str, password: str, *, address: str
) -> User:
    """Check a user name and password. Each address has ``login_rate_per_minute`` attempts
    a minute, and each (name, address) pair a growing delay after repeated failures
    (:func:`throttle_wait`); no account is ever locked by others' failures. The answer and
    its timing are the same whether the name exists or not. The caller commits (failures
    are recorded too)."""
    username = _clean_name(username)
    address = address[:64]
    _check_rate(session, settings, address)
    # Forget attempts older than the throttling's memory so the table stays small.
    session.execute(delete(LoginAttempt).where(LoginAttempt.at < utcnow() - timedelta(days=1)))

    def fail(reason: str, error: Unauthorized | TooManyRequests) -> Exception:
        session.add(LoginAttempt(address=address, username=username, succeeded=False))
        record(
            session,
            actor="anonymous",
            action="login.failure",
            target=f"user:{username}",
            detail={"reason": reason, "address": address},
        )
        return error

    wait = throttle_wait(session, settings, username, address)
    if wait is not None:
        raise fail(
            "throttled",
            TooManyRequests(
                f"too many failed sign-ins with this user name from your address; wait "
                f"{_wait_words(wait)} and try again.",
                code="login_throttled",
            ),
        )
    user = session.scalar(select(User).where(User.username == username))
    generic = Unauthorized("wrong username or password.", code="login_failed")
    if user is None:
        _verify(_DUMMY_HASH, password)
        raise fail("unknown user", generic)
    if not _verify(user.password_hash, password):
        raise fail("wrong password", generic)
    if not user.is_active:
        raise fail(
            "disabled",
            Unauthorized("this account is disabled; ask the steward.", code="login_failed"),
        )
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    user.last_login_at = utcnow()
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
    """Forget the failed sign-ins with this user name (from every address): its delays
    end at once."""
    session.execute(
        delete(LoginAttempt).where(
            LoginAttempt.username == user.username, LoginAttempt.succeeded.is_(False)
        )
    )
    record(session, actor=actor, action="user.unlock", target=f"user:{user.username}")


# Sessions ----------------------------------------------------------------------------------


def _session_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def start_session(session: Session, user: User, *, address: str) -> str:
    """A new portal session for ``user``; returns the key the browser's cookie keeps (only
    its SHA-256 is stored)."""
    key = secrets.token_urlsafe(32)
    session.add(UserSession(key_hash=_session_hash(key), user=user, address=address[:64]))
    session.flush()
    return key


def resume_session(session: Session, settings: Settings, key: str) -> User | None:
    """The user of a live session, or None: unknown, ended, idle longer than
    ``session_idle_minutes`` or older than ``session_max_hours`` (these end it now), or a
    disabled account. Its last activity is written at most once a minute."""
    found = session.scalar(
        select(UserSession)
        .where(UserSession.key_hash == _session_hash(key))
        .options(joinedload(UserSession.user))
    )
    if found is None or found.ended_at is not None:
        return None
    now = utcnow()
    if now - found.created_at > timedelta(hours=settings.session_max_hours):
        _end(found, "lifetime reached", now)
        return None
    if now - found.last_seen_at > timedelta(minutes=settings.session_idle_minutes):
        _end(found, "idle", now)
        return None
    if not found.user.is_active:
        _end(found, "account disabled", now)
        return None
    if now - found.last_seen_at >= timedelta(minutes=1):
        found.last_seen_at = now
    return found.user


def _end(found: UserSession, reason: str, now: datetime) -> None:
    found.ended_at = now
    found.ended_reason = reason[:32]


def end_session(session: Session, key: str, reason: str) -> None:
    found = session.scalar(select(UserSession).where(UserSession.key_hash == _session_hash(key)))
    if found is not None and found.ended_at is None:
        _end(found, reason, utcnow())


def end_sessions(
    session: Session, user: User, reason: str, *, actor: str, tokens: bool = True
) -> tuple[int, int]:
    """End every portal session of ``user`` and (``tokens``) revoke every API token; one
    ledger entry says how many. Returns (sessions, tokens) ended."""
    now = utcnow()
    ended = _rowcount(
        session.execute(
            update(UserSession)
            .where(UserSession.user_id == user.id, UserSession.ended_at.is_(None))
            .values(ended_at=now, ended_reason=reason[:32])
            .execution_options(synchronize_session=False)
        )
    )
    revoked = 0
    if tokens:
        revoked = _rowcount(
            session.execute(
                update(ApiToken)
                .where(ApiToken.user_id == user.id, ApiToken.revoked_at.is_(None))
                .values(revoked_at=now)
                .execution_options(synchronize_session=False)
            )
        )
    session.expire_all()
    record(
        session,
        actor=actor,
        action="user.sessions_ended",
        target=f"user:{user.username}",
        detail={"reason": reason, "sessions": ended, "tokens": revoked},
    )
    return ended, revoked


def _rowcount(result: object) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


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
