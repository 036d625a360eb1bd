"""Rules in the database: the adapter, domain replacement, and reload across processes.

Runs on SQLite (a file under ``tmp_path``) and on PostgreSQL at
``CLEANROOM_TEST_POSTGRES_URL`` (a throw-away database per test), like ``db_url``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import casbin
import pytest
from sqlalchemy import Engine, create_engine, func, select, text

from contracts.agreements import compile_rules, load_template
from hub.db import normalise_url
from policies.enforcer import MODEL, in_window
from policies.store import (
    DomainFilter,
    SQLAlchemyAdapter,
    SyncedPolicy,
    casbin_rule,
    create_tables,
    get_version,
    load_rules,
    replace_domain_rules,
)

PG_URL_ENV = "CLEANROOM_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parents[3]
W = "2026-01-01T00:00:00Z/2030-01-01T00:00:00Z"


def grant(domain: str, user: str) -> list[tuple[str, ...]]:
    return [
        ("p", "role:researcher", domain, "data/batch/*", "query", "any", W),
        ("g", user, "role:researcher", domain),
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'policy.db'}"
        engine = create_engine(url)
        with engine.connect() as conn:
            conn.execute(text("PRAGMA journal_mode=WAL"))
        create_tables(engine)
        engine.dispose()
        yield url
        return
    server = os.environ.get(PG_URL_ENV)
    if not server:
        pytest.fail(f"{PG_URL_ENV} is not set: run the suite with `make test`.")
    name = f"cleanroom_policy_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = normalise_url(server.rsplit("/", 1)[0] + "/" + name)
    engine = create_engine(url)
    create_tables(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def engine(store_url: str) -> Iterator[Engine]:
    engine = create_engine(store_url)
    yield engine
    engine.dispose()


def test_replace_domain_rules_is_scoped_and_bumps_the_version(engine: Engine) -> None:
    assert get_version(engine) == 0
    assert replace_domain_rules(engine, "agreement:a", grant("agreement:a", "user:1")) == 1
    replace_domain_rules(engine, "agreement:b", grant("agreement:b", "user:2"))
    replace_domain_rules(engine, "agreement:a", grant("agreement:a", "user:3"))
    assert get_version(engine) == 3
    assert load_rules(engine, ["agreement:a"]) == grant("agreement:a", "user:3")
    assert load_rules(engine, ["agreement:b"]) == grant("agreement:b", "user:2")
    replace_domain_rules(engine, "agreement:a", [])
    assert load_rules(engine) == grant("agreement:b", "user:2")
    with pytest.raises(ValueError, match="not in domain 'agreement:a'"):
        replace_domain_rules(engine, "agreement:a", grant("agreement:b", "user:1"))


def test_replace_runs_in_the_callers_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError), engine.begin() as conn:
        replace_domain_rules(conn, "agreement:a", grant("agreement:a", "user:1"))
        raise RuntimeError("the agreement change failed")
    assert get_version(engine) == 0 and load_rules(engine) == []


def test_a_stock_casbin_enforcer_loads_through_the_adapter(engine: Engine) -> None:
    replace_domain_rules(engine, "agreement:a", grant("agreement:a", "user:1"))
    replace_domain_rules(engine, "agreement:b", grant("agreement:b", "user:2"))
    adapter = SQLAlchemyAdapter(engine)
    enforcer = casbin.Enforcer(str(MODEL), adapter)
    enforcer.add_function("inWindow", lambda w: in_window(w, 1_800_000_000.0))
    assert enforcer.enforce("user:1", "agreement:a", "data/batch/vcn", "query", "no")
    assert not enforcer.enforce("user:1", "agreement:b", "data/batch/vcn", "query", "no")
    # filtered: only one agreement's rules in memory
    enforcer.load_filtered_policy(DomainFilter(("agreement:b",)))
    assert adapter.is_filtered()
    assert enforcer.get_policy() == [list(grant("agreement:b", "user:2")[0][1:])]
    # auto-save writes through and bumps the version
    before = get_version(engine)
    enforcer.load_policy()
    assert enforcer.add_grouping_policy("user:5", "role:researcher", "agreement:a")
    assert ("g", "user:5", "role:researcher", "agreement:a") in load_rules(engine)
    assert enforcer.remove_grouping_policy("user:5", "role:researcher", "agreement:a")
    assert ("g", "user:5", "role:researcher", "agreement:a") not in load_rules(engine)
    assert get_version(engine) == before + 2
    enforcer.save_policy()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(casbin_rule)).scalar() == 4


def test_synced_policy_reloads_only_when_the_version_moved(engine: Engine) -> None:
    synced = SyncedPolicy(engine, clock=lambda: 1_800_000_000.0)
    args = ("user:1", "query", "data/batch/vcn")
    assert not synced.allowed(*args, domain="agreement:a")
    replace_domain_rules(engine, "agreement:a", grant("agreement:a", "user:1"))
    assert synced.allowed(*args, domain="agreement:a")
    reloads = synced.reloads
    for _ in range(5):
        assert synced.allowed(*args, domain="agreement:a")
    assert synced.reloads == reloads
    replace_domain_rules(engine, "agreement:a", [])
    assert not synced.allowed(*args, domain="agreement:a")
    assert synced.reloads == reloads + 1
    assert synced.allowed("role:steward", "write", "admin/users")  # global rules stay


CHILD = textwrap.dedent(
    """
    import sys
    from sqlalchemy import create_engine
    from policies.store import SyncedPolicy

    synced = SyncedPolicy(create_engine(sys.argv[1]))
    for line in sys.stdin:
        subject, action, obj, domain = line.split()
        print(synced.allowed(subject, action, obj, domain=domain), flush=True)
    """
)


def test_a_suspension_in_one_process_holds_on_the_next_request_in_another(
    engine: Engine, store_url: str
) -> None:
    agreement = load_template("process_comparability").submit()
    for institution in agreement.institutions:
        agreement = agreement.sign(institution, "admin", at=datetime(2026, 1, 2, tzinfo=UTC))
    researcher = agreement.researchers[0]
    question = f"user:{researcher} query data/batch/viability {agreement.domain}\n"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, store_url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdin is not None and child.stdout is not None

    def ask() -> str:
        child.stdin.write(question)  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        return child.stdout.readline().strip()  # type: ignore[union-attr]

    try:
        assert ask() == "False"  # nothing compiled yet
        with engine.begin() as conn:
            replace_domain_rules(conn, agreement.domain, compile_rules(agreement))
        assert ask() == "True"
        assert ask() == "True"
        with engine.begin() as conn:
            replace_domain_rules(conn, agreement.domain, compile_rules(agreement.suspend()))
        assert ask() == "False"
        with engine.begin() as conn:
            replace_domain_rules(conn, agreement.domain, compile_rules(agreement))
        assert ask() == "True"
        with engine.begin() as conn:
            replace_domain_rules(conn, agreement.domain, compile_rules(agreement.terminate()))
        assert ask() == "False"
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert child.returncode == 0
