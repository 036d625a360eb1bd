"""Shared fixtures.

- ``db_url``: a freshly migrated, empty metadata database. Parametrised over ``sqlite`` and
  ``postgresql`` (the latter at ``CLEANROOM_TEST_POSTGRES_URL``, which ``make test`` and CI
  set after starting the machine's PostgreSQL), so every test that touches the database runs
  on both.
- ``settings``: hub settings on ``db_url`` with a temporary data directory; ``database``: a
  :class:`hub.db.Database` on them.
- ``app``, ``client``, ``runner`` (a click runner whose environment points at the same
  database and data directory).
- ``users``: a factory making institutions and users; ``auth``: portal sign-in actions
  (``auth.login(username, password)``, CSRF tokens read from the forms like a browser).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from hub import create_app, schema
from hub.accounts import services as accounts
from hub.accounts.models import User
from hub.db import Base, Database, normalise_url
from hub.ingest.models import DatasetVersion
from hub.settings import Settings, load_settings
from hub.storage import Storage

PG_URL_ENV = "CLEANROOM_TEST_POSTGRES_URL"
PASSWORD = "correct horse battery staple"


# Databases ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    database = Database(f"sqlite:///{path}")
    schema.upgrade(database)
    database.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL database for this test session, migrated once."""
    server = os.environ.get(PG_URL_ENV)
    if not server:
        pytest.fail(
            f"{PG_URL_ENV} is not set: run the suite with `make test`, which starts "
            "PostgreSQL (scripts/postgres.sh) and sets it."
        )
    name = f"cleanroom_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = server.rsplit("/", 1)[0] + "/" + name
    database = Database(url)
    schema.upgrade(database)
    database.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_postgres(url: str) -> None:
    """Empty every table. A test that leaked an open transaction (e.g. an unclosed streamed
    response) would block this forever: fail within seconds instead, saying what is open."""
    from sqlalchemy import exc

    engine = create_engine(normalise_url(url))
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    try:
        with engine.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    except exc.OperationalError:
        with engine.connect() as conn:
            leaks = conn.execute(
                text(
                    "SELECT state, left(query, 200) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            ).all()
            conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        raise RuntimeError(f"a previous test left a database transaction open: {leaks}") from None
    finally:
        engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "cleanroom.db"
        shutil.copyfile(template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_url")
    _truncate_postgres(url)
    return url


# Settings, app, clients -----------------------------------------------------------------


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture
def settings_overrides(db_url: str, data_dir: Path) -> dict[str, Any]:
    return {
        "data_dir": str(data_dir),
        "database_url": db_url,
        "log_level": "WARNING",
        "job_lease_seconds": 2,
        "worker_poll_seconds": 0.05,
    }


@pytest.fixture
def settings(settings_overrides: dict[str, Any]) -> Settings:
    return load_settings(settings_overrides, environ={})


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings.effective_database_url)
    yield db
    db.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    app.config["TESTING"] = True
    yield app
    app.extensions["cleanroom.policy"].close()
    app.extensions["cleanroom.db"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def cli_env(settings_overrides: dict[str, Any]) -> dict[str, str]:
    """Environment for running ``cleanroom`` against the test database."""
    return {f"CLEANROOM_{k.upper()}": str(v) for k, v in settings_overrides.items()}


@pytest.fixture
def runner(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for key in list(os.environ):
        if key.startswith("CLEANROOM_") and key != PG_URL_ENV:
            monkeypatch.delenv(key)
    return CliRunner(env=cli_env)


# Users and signing in -------------------------------------------------------------------


class Users:
    """Makes institutions and users directly through the account services."""

    def __init__(self, database: Database):
        self.database = database

    def institution(self, slug: str = "st-aurelia", kind: str = "hospital") -> str:
        with self.database.session() as s:
            accounts.create_institution(s, slug, slug.replace("-", " ").title(), kind, actor="test")
        return slug

    def make(
        self,
        username: str,
        role: str = "contributor",
        institution: str | None = None,
        password: str = PASSWORD,
    ) -> User:
        if role in ("contributor", "contributor_admin") and institution is None:
            with self.database.session() as s:
                from sqlalchemy import select

                from hub.accounts.models import Institution

                exists = s.scalar(select(Institution).where(Institution.slug == "st-aurelia"))
            institution = "st-aurelia" if exists else self.institution()
        with self.database.session() as s:
            user = accounts.create_user(
                s, username, password, role, institution=institution, actor="test"
            )
        return user


@pytest.fixture
def users(database: Database) -> Users:
    return Users(database)


def release_into_pool(
    session: Session, storage: Storage, institution: str, table: str, frame: pd.DataFrame
) -> DatasetVersion:
    """``frame`` as version 1 of ``table`` released by ``institution``: its Parquet in the
    pool zone and a released :class:`DatasetVersion` pointing at it (flushed, so it has an
    id). For tests that need pooled data without running the ingest pipeline."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    key = f"pool/{table}/institution={institution}/version=1/part-0.parquet"
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame), buf)
    buf.seek(0)
    storage.put(key, buf)
    version = DatasetVersion(
        institution_id=accounts.get_institution(session, institution).id,
        cdm_table=table,
        version=1,
        state="released",
        filename=f"{table}.csv",
        created_by="test",
        pool_key=key,
        valid_rows=len(frame),
    )
    session.add(version)
    session.flush()
    return version


def bearer(
    database: Database, settings: Settings, username: str, scopes: tuple[str, ...] = ("sandbox",)
) -> dict[str, str]:
    """An ``Authorization`` header with a fresh API token of ``username``'s."""
    with database.session() as s:
        secret = accounts.create_token(
            s, settings, accounts.get_user(s, username), "t", list(scopes), actor="t"
        ).secret
    return {"Authorization": f"Bearer {secret}"}


def activate_agreement(database: Database, text: str) -> None:
    """The agreement ``text`` created by the steward ``sam``, submitted and signed by each
    party's ``<institution>-admin``: active from its ``valid_from``."""
    from hub.agreements import services as agreements

    terms = yaml.safe_load(text)
    slug, parties = str(terms["id"]), [str(p["institution"]) for p in terms["parties"]]
    with database.session() as s:
        agreements.create(s, text, actor="user:sam")
    with database.session() as s:
        agreements.transition(s, agreements.get(s, slug), "submit", actor="user:sam")
    for party in parties:
        with database.session() as s:
            agreements.sign(
                s,
                agreements.get(s, slug),
                accounts.get_user(s, f"{party}-admin"),
                actor=f"user:{party}-admin",
            )


CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(client: FlaskClient, path: str) -> str:
    """Read the CSRF token from a page's form, as a browser would submit it."""
    page = client.get(path)
    match = CSRF_RE.search(page.get_data(as_text=True))
    assert match, f"no CSRF token in the form at {path} (status {page.status_code})"
    return match.group(1)


class AuthActions:
    def __init__(self, client: FlaskClient):
        self.client = client

    def login(self, username: str, password: str = PASSWORD, *, follow: bool = False) -> Any:
        token = csrf_from(self.client, "/login")
        return self.client.post(
            "/login",
            data={"username": username, "password": password, "csrf_token": token},
            follow_redirects=follow,
        )

    def logout(self) -> Any:
        token = csrf_from(self.client, "/")
        return self.client.post("/logout", data={"csrf_token": token})


@pytest.fixture
def auth(client: FlaskClient) -> AuthActions:
    return AuthActions(client)
