"""Alembic migrations: they build exactly the models' schema, and go down and up again."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text

from hub import schema
from hub.db import Base, Database

pytestmark = pytest.mark.db


def test_migrations_match_the_models(database: Database) -> None:
    assert schema.is_current(database)
    with database.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], "models and migrations differ: write a migration (alembic revision)"


def test_downgrade_and_upgrade_again(database: Database) -> None:
    schema.downgrade(database, "base")
    tables = set(inspect(database.engine).get_table_names())
    assert tables <= {"alembic_version"}
    schema.upgrade(database)
    assert {t.name for t in Base.metadata.sorted_tables} <= set(
        inspect(database.engine).get_table_names()
    )


def test_a_populated_database_upgrades(database: Database) -> None:
    """Users, a token and ledger entries exist when 0008 and 0009 add columns to ``users``:
    SQLite must not rebuild that table (its foreign keys would refuse the drop)."""
    schema.downgrade(database, "0007")
    with database.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO institutions (slug, name, kind, created_at) "
                "VALUES ('acme', 'Acme', 'hospital', CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO users (username, display_name, email, password_hash, role, "
                "institution_id, is_active, failed_logins, session_epoch, created_at) "
                "VALUES ('nadia', 'Nadia', '', 'x', 'contributor', "
                "(SELECT id FROM institutions WHERE slug = 'acme'), true, 0, 0, CURRENT_TIMESTAMP)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO api_tokens (lookup, secret_hash, user_id, name, scopes, created_at, "
                "expires_at) VALUES ('abcdefghijklmnop', 'h', (SELECT id FROM users), 't', "
                "'read', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
    schema.upgrade(database)
    assert schema.is_current(database)
    with database.engine.connect() as conn:
        row = conn.execute(
            text("SELECT username, must_change_password, is_output_checker FROM users")
        ).one()
    assert row[0] == "nadia" and not row[1] and not row[2]


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()
