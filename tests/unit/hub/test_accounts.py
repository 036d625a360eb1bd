"""Accounts: password hashing and rules, sign-in throttling, server-side sessions, rate
limiting and API tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text

from hub.accounts import services
from hub.accounts.models import ApiToken, LoginAttempt, User, UserSession
from hub.audit.models import AuditEntry
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, TooManyRequests, Unauthorized
from hub.settings import Settings
from tests.conftest import PASSWORD, Users

pytestmark = pytest.mark.db


def test_passwords_are_stored_as_argon2id(database: Database, users: Users) -> None:
    users.make("nadia")
    with database.session() as s:
        stored = s.scalar(select(User.password_hash).where(User.username == "nadia"))
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


def test_short_passwords_and_bad_names_are_refused(database: Database) -> None:
    with database.session() as s, pytest.raises(BadRequest, match="at least 12"):
        services.create_user(s, "bob", "short", "researcher", institution=None, actor="t")
    with database.session() as s, pytest.raises(BadRequest, match="username"):
        services.create_user(s, "Bob Smith!", PASSWORD, "researcher", institution=None, actor="t")
    with database.session() as s, pytest.raises(BadRequest, match="must belong"):
        services.create_user(s, "bob", PASSWORD, "contributor", institution=None, actor="t")


def test_duplicates_conflict(database: Database, users: Users) -> None:
    users.make("nadia", "researcher")
    with database.session() as s, pytest.raises(Conflict):
        services.create_user(s, "nadia", PASSWORD, "researcher", institution=None, actor="t")


def _login(
    database: Database, settings: Settings, username: str, password: str, address: str = "10.0.0.1"
) -> User:
    with database.session() as s:
        try:
            return services.authenticate(s, settings, username, password, address=address)
        except (Unauthorized, TooManyRequests):
            s.commit()  # as the views do: failed attempts are kept
            raise


def test_login_succeeds_and_is_audited(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia", "researcher")
    user = _login(database, settings, "Nadia", PASSWORD)
    assert user.username == "nadia" and user.last_login_at is not None
    with database.session() as s:
        actions = s.scalars(select(AuditEntry.action)).all()
    assert "login.success" in actions


def _age_attempts(database: Database, seconds: float) -> None:
    """Move every recorded attempt ``seconds`` into the past (time passing)."""
    with database.session() as s:
        for attempt in s.scalars(select(LoginAttempt)):
            attempt.at = attempt.at - timedelta(seconds=seconds)


def _outcome(database, settings, username, password, address="10.0.0.1") -> str:
    try:
        _login(database, settings, username, password, address)
    except (Unauthorized, TooManyRequests) as err:
        return f"{type(err).__name__}: {err.message}"
    return "signed in"


def test_failures_slow_that_name_from_that_address_and_lock_nobody_out(
    database: Database, settings: Settings, users: Users
) -> None:
    """After the free failures each further attempt from that address waits (1 s, doubling),
    the right password included; another address is not affected, so nobody can lock
    another user out; no ``user.lock`` exists any more."""
    users.make("nadia", "researcher")
    free = settings.login_free_failures
    for _ in range(free):
        assert _outcome(database, settings, "nadia", "wrong password!!") == (
            "Unauthorized: wrong username or password."
        )
    throttled = _outcome(database, settings, "nadia", PASSWORD)
    assert throttled.startswith("TooManyRequests: too many failed sign-ins") and "1 seconds" in (
        throttled
    )
    assert _outcome(database, settings, "nadia", PASSWORD, address="10.7.7.7") == "signed in"
    # The throttled attempt counted: the next wait is 2 s, then 4 s ...
    _age_attempts(database, 1.5)
    assert "wait 1 seconds" in _outcome(database, settings, "nadia", PASSWORD)
    _age_attempts(database, 60)
    assert _outcome(database, settings, "nadia", PASSWORD) == "signed in"
    # A success resets the count for that address.
    assert _outcome(database, settings, "nadia", "wrong password!!").startswith("Unauthorized")
    with database.session() as s:
        actions = s.scalars(select(AuditEntry.action)).all()
    assert "user.lock" not in actions and actions.count("login.success") == 2


def test_delays_grow_to_the_cap(database: Database, settings: Settings, users: Users) -> None:
    users.make("nadia", "researcher")
    with database.session() as s:
        for i in range(40):
            s.add(
                LoginAttempt(
                    address="10.0.0.1",
                    username="nadia",
                    succeeded=False,
                    at=utcnow() - timedelta(seconds=160 - i),  # before the rate window
                )
            )
    with database.session() as s:
        wait = services.throttle_wait(s, settings, "nadia", "10.0.0.1")
    assert wait is not None
    cap = timedelta(minutes=settings.login_max_delay_minutes)
    assert cap - timedelta(seconds=125) < wait <= cap - timedelta(seconds=119)
    assert "minutes" in _outcome(database, settings, "nadia", PASSWORD)


def test_a_name_that_does_not_exist_is_answered_alike(
    database: Database, settings: Settings, users: Users, monkeypatch
) -> None:
    """Same messages, in the same order, and the same work (one password check per attempt,
    none once throttled) whether the account exists or not."""
    users.make("nadia", "researcher")
    checks: list[str] = []
    verify = services._verify

    def counted(password_hash: str, password: str) -> bool:
        checks.append("check")
        return verify(password_hash, password)

    monkeypatch.setattr(services, "_verify", counted)
    seen = {}
    for name in ("nadia", "nobody-here"):
        checks.clear()
        seen[name] = [
            _outcome(database, settings, name, "wrong password!!", address=f"10.3.{len(name)}.1")
            for _ in range(settings.login_free_failures + 2)
        ]
        assert checks == ["check"] * settings.login_free_failures, name
    assert seen["nadia"] == seen["nobody-here"]


def test_steward_clears_the_delays(database: Database, settings: Settings, users: Users) -> None:
    users.make("nadia", "researcher")
    for _ in range(settings.login_free_failures + 1):
        _outcome(database, settings, "nadia", "wrong password!!")
    assert _outcome(database, settings, "nadia", PASSWORD).startswith("TooManyRequests")
    with database.session() as s:
        services.unlock(s, services.get_user(s, "nadia"), actor="user:steward")
    assert _outcome(database, settings, "nadia", PASSWORD) == "signed in"


@pytest.mark.parametrize(
    ("password", "why"),
    [
        ("password1234", "common"),
        (" " * 12, "spaces"),
        ("qwertyuiop123", "common"),
        ("nadia-nadia-nadia", "easy to guess"),
        ("aaaaaaaaaaaaaaaa", "easy to guess"),
        ("short", "at least 12"),
        ("x" * 1001, "at most"),
    ],
)
def test_weak_common_and_breached_passwords_are_refused(
    database: Database, password: str, why: str
) -> None:
    with database.session() as s, pytest.raises(BadRequest, match=why) as err:
        services.create_user(s, "nadia", password, "researcher", institution=None, actor="t")
    assert err.value.code == "weak_password"


def test_a_reset_ends_sessions_revokes_tokens_and_must_be_replaced(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia")
    _issue(database, settings)
    with database.session() as s:
        user = services.get_user(s, "nadia")
        key = services.start_session(s, user, address="10.0.0.1")
    with database.session() as s:
        services.set_password(
            s, services.get_user(s, "nadia"), "a new temporary passphrase", actor="t"
        )
    with database.session() as s:
        assert services.resume_session(s, settings, key) is None
        user = services.get_user(s, "nadia")
        assert user.must_change_password
        assert all(t.revoked_at is not None for t in s.scalars(select(ApiToken)))
        with pytest.raises(BadRequest, match="different"):
            services.set_password(s, user, "a new temporary passphrase", actor="t", own=True)
        services.set_password(s, user, "my very own passphrase", actor="t", own=True)
        assert not user.must_change_password


def test_sessions_end_when_idle_or_too_old(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia")
    with database.session() as s:
        user = services.get_user(s, "nadia")
        idle, old, live = (services.start_session(s, user, address="x") for _ in range(3))
    with database.session() as s:
        rows = {r.key_hash: r for r in s.scalars(select(UserSession))}
        by_key = {k: rows[services._session_hash(k)] for k in (idle, old, live)}
        by_key[idle].last_seen_at = utcnow() - timedelta(minutes=settings.session_idle_minutes + 1)
        by_key[old].created_at = utcnow() - timedelta(hours=settings.session_max_hours, minutes=1)
        by_key[old].last_seen_at = utcnow()
    with database.session() as s:
        assert services.resume_session(s, settings, idle) is None
        assert services.resume_session(s, settings, old) is None
        assert services.resume_session(s, settings, live).username == "nadia"
    with database.session() as s:
        reasons = {r.ended_reason for r in s.scalars(select(UserSession)) if r.ended_at}
    assert reasons == {"idle", "lifetime reached"}


def test_rate_limit_per_address(database: Database, users: Users, settings_overrides) -> None:
    from hub.settings import load_settings

    settings = load_settings({**settings_overrides, "login_rate_per_minute": 3}, environ={})
    for _ in range(3):
        with pytest.raises(Unauthorized):
            _login(database, settings, "ghost", "nothing here!", address="10.9.9.9")
    with pytest.raises(TooManyRequests, match="wait a minute"):
        _login(database, settings, "ghost", "nothing here!", address="10.9.9.9")
    # Another address is not affected.
    with pytest.raises(Unauthorized):
        _login(database, settings, "ghost", "nothing here!", address="10.1.1.1")


def test_disabled_account_cannot_sign_in(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia", "researcher")
    with database.session() as s:
        services.set_active(s, services.get_user(s, "nadia"), False, actor="t")
    with pytest.raises(Unauthorized, match="disabled"):
        _login(database, settings, "nadia", PASSWORD)


# Tokens ---------------------------------------------------------------------------------


def _issue(database: Database, settings: Settings, scopes=("upload",), days=None):
    with database.session() as s:
        user = services.get_user(s, "nadia")
        return services.create_token(s, settings, user, "lims", list(scopes), days=days, actor="t")


def test_token_is_hashed_at_rest_and_verifies(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia")
    issued = _issue(database, settings)
    assert issued.secret.startswith("crt_")
    secret_part = issued.secret.split("_", 2)[2]
    with database.engine.connect() as conn:
        dump = " ".join(
            str(v) for row in conn.execute(text("SELECT * FROM api_tokens")) for v in row
        )
    assert secret_part not in dump
    with database.session() as s:
        token = services.verify_token(s, issued.secret, scope="upload")
        assert token.user.username == "nadia"
        assert token.last_used_at is not None


@pytest.mark.parametrize(
    "mutate, code",
    [
        (lambda t: setattr(t, "expires_at", utcnow() - timedelta(minutes=1)), "token_expired"),
        (lambda t: setattr(t, "revoked_at", utcnow()), "token_revoked"),
        (lambda t: setattr(t.user, "is_active", False), "account_disabled"),
    ],
    ids=["expired", "revoked", "disabled-user"],
)
def test_dead_tokens_are_refused_with_a_reason(database, settings, users, mutate, code) -> None:
    users.make("nadia")
    issued = _issue(database, settings)
    with database.session() as s:
        mutate(s.scalar(select(ApiToken)))
    with database.session() as s, pytest.raises(Unauthorized) as err:
        services.verify_token(s, issued.secret)
    assert err.value.code == code


def test_wrong_scope_and_forged_tokens_are_refused(database, settings, users) -> None:
    users.make("nadia")
    issued = _issue(database, settings, scopes=("read",))
    with database.session() as s, pytest.raises(Unauthorized) as err:
        services.verify_token(s, issued.secret, scope="upload")
    assert err.value.code == "insufficient_scope"
    forged = issued.secret[:-4] + ("AAAA" if not issued.secret.endswith("AAAA") else "BBBB")
    with database.session() as s, pytest.raises(Unauthorized, match="unknown"):
        services.verify_token(s, forged)
    with database.session() as s, pytest.raises(Unauthorized, match="malformed"):
        services.verify_token(s, "not-a-token")


def test_token_lifetime_and_scopes_are_bounded(database, settings, users) -> None:
    users.make("nadia")
    with pytest.raises(BadRequest, match="lifetime"):
        _issue(database, settings, days=settings.token_max_days + 1)
    with pytest.raises(BadRequest, match="scopes"):
        _issue(database, settings, scopes=("admin",))
