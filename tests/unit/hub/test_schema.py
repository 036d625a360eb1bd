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


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    db.dispose()
