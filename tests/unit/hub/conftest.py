"""Fixtures shared by the hub's ingest tests."""

from __future__ import annotations

import pytest

from hub.accounts import services as accounts
from hub.db import Database
from hub.jobs.services import load_task_modules
from hub.settings import Settings
from tests.conftest import Users


@pytest.fixture(autouse=True)
def _tasks() -> None:
    load_task_modules()


@pytest.fixture
def token(users: Users, database: Database, settings: Settings) -> str:
    users.make("nadia", "contributor")
    with database.session() as s:
        return accounts.create_token(
            s, settings, accounts.get_user(s, "nadia"), "lims", ["upload", "read"], actor="t"
        ).secret
