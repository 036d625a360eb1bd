"""Accounts: password hashing, lock-out, rate limiting and API tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, text, update

from hub.accounts import services
from hub.accounts.models import ApiToken, User
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
        except Unauthorized:
            s.commit()
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


def test_lockout_after_repeated_failures(
    database: Database, settings: Settings, users: Users
) -> None:
    users.make("nadia", "researcher")
    for _ in range(settings.login_max_failures):
        with pytest.raises(Unauthorized, match="wrong username or password"):
            _login(database, settings, "nadia", "wrong password!!")
    # Locked now: even the right password is refused, with a message saying so.
    with pytest.raises(Unauthorized, match="locked"):
        _login(database, settings, "nadia", PASSWORD)
    with database.session() as s:
        actions = s.scalars(select(AuditEntry.action)).all()
        user = services.get_user(s, "nadia")
        assert actions.count("login.failure") == settings.login_max_failures + 1
        assert "user.lock" in actions
        services.unlock(s, user, actor="user:steward")
    assert _login(database, settings, "nadia", PASSWORD).username == "nadia"


def test_lock_expires(database: Database, settings: Settings, users: Users) -> None:
    users.make("nadia", "researcher")
    with database.session() as s:
        s.execute(update(User).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert _login(database, settings, "nadia", PASSWORD).username == "nadia"


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
