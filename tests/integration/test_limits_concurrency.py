"""Limits that hold under concurrency: the sandbox rate limit and the privacy budget, with
real processes on SQLite and PostgreSQL.

- Several ``cleanroom serve`` processes on one database and data directory answer a burst
  of concurrent requests from one researcher; the test counts what came back: exactly the
  limit answered, the rest refused (429 ``rate_limited`` with ``Retry-After``; 403
  ``budget_exhausted`` for the budget), and the database agrees.
- Controls: the same counting harness, run in separate processes, sees the old
  count-then-act check (reimplemented here, with its race window held open by a barrier
  between the count and the act) let every request through, and sees the new one-statement
  checks hold exactly. Without the barrier the old check overran on PostgreSQL in most
  trials but on SQLite in only about one in three, so the window is widened
  deterministically instead.
- The sliding minute itself (roll-over, ``Retry-After``), with the clock given.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hub.accounts import services as accounts
from hub.accounts.models import User
from hub.audit.models import AuditEntry
from hub.audit.services import record
from hub.db import Database
from hub.gateway import services as gateway
from hub.gateway.models import GatewayAnswer, PrivacyBudget, RateCounter
from hub.settings import Settings, load_settings
from tests.conftest import Users, activate_agreement, bearer, release_into_pool
from tests.serving import cleanroom_command, free_port, healthy, server_env, stop
from tests.unit.hub.conftest import V2V_TERMS, batch_frame

pytestmark = [pytest.mark.db, pytest.mark.slow]

SITES = ("acme-bio", "st-aurelia", "kelvin")
SERVERS = 3
HEALTH_DEADLINE_SECONDS = 60.0
REQUEST_TIMEOUT_SECONDS = 120
BUDGET_TERMS = V2V_TERMS + "disclosure:\n  epsilon_per_answer: 1\n  epsilon_total: 5\n"


@pytest.fixture
def pooled(users: Users, database: Database, app: Flask) -> None:
    """Three contributors with released batch data; rosa, a researcher, and the admins who
    sign agreements. The app made the data directory's keys the servers will read."""
    for slug in SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        for n, slug in enumerate(SITES):
            release_into_pool(s, storage, slug, "batch", batch_frame(n, rows=80))


@pytest.fixture
def start_servers(
    settings: Settings, data_dir: Path, tmp_path: Path
) -> Iterator[Callable[..., list[str]]]:
    """``start_servers(**settings)``: ``SERVERS`` ``cleanroom serve`` processes on the test's
    database and data directory, each on its own port; their URLs once all answer."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(**overrides: str | int) -> list[str]:
        urls, logs = [], []
        for n in range(SERVERS):
            port = free_port()
            env = server_env(
                data_dir,
                port,
                database_url=settings.database_url,
                embedded_worker="false",
                threads=16,
                **overrides,
            )
            log = tmp_path / f"serve-{n}.log"
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(  # noqa: S603 (our own entry point)
                        [*cleanroom_command(), "serve", "--host", "127.0.0.1", "--port", str(port)],
                        env=env,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                    )
                )
            urls.append(f"http://127.0.0.1:{port}")
            logs.append(log)
        deadline = time.monotonic() + HEALTH_DEADLINE_SECONDS
        for url, proc, log in zip(urls, procs, logs, strict=True):
            while not healthy(url):
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"`cleanroom serve` at {url} did not come up:\n"
                        f"{log.read_text(errors='replace')[-4000:]}"
                    )
                time.sleep(0.1)
        return urls

    yield start
    for proc in procs:
        stop(proc)


def _burst(requests: list[tuple[str, dict[str, Any] | None]], token: dict[str, str]) -> list:
    """Send every request at once (one thread each, released together); each outcome as
    ``(status, body, headers)``."""
    outcomes: list[Any] = [None] * len(requests)
    start = threading.Barrier(len(requests))

    def send(n: int, url: str, body: dict[str, Any] | None) -> None:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(url, data=data, headers=dict(token))  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        start.wait()
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_SECONDS) as resp:  # noqa: S310
                outcomes[n] = (resp.status, json.loads(resp.read()), dict(resp.headers))
        except urllib.error.HTTPError as err:
            outcomes[n] = (err.code, json.loads(err.read()), dict(err.headers))

    threads = [
        threading.Thread(target=send, args=(n, url, body)) for n, (url, body) in enumerate(requests)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o is not None for o in outcomes), "a request got no answer at all"
    return outcomes


def _clear_of_a_minute_boundary() -> None:
    """Start a burst well inside a minute. The sliding minute gives a burst that crosses a
    boundary no fresh allowance as long as it lasts under 60/limit seconds; starting away
    from the boundary keeps a slow machine from testing that instead."""
    second = datetime.now(UTC).second
    if second >= 50:
        time.sleep(61 - second)


# The rate limit across server processes ----------------------------------------------------


def test_rate_limit_holds_across_server_processes(
    database: Database, settings: Settings, pooled, start_servers
) -> None:
    """30 requests at once through three server processes against a limit of 10 a minute:
    exactly 10 answered, 20 refused with 429 saying how many and when to come back; each
    recorded once in the ledger; the stored count agrees."""
    limit, sent = 10, 30
    activate_agreement(database, V2V_TERMS)
    rosa = bearer(database, settings, "rosa")
    urls = start_servers(gateway_rate_per_minute=limit)
    _clear_of_a_minute_boundary()
    outcomes = _burst(
        [(f"{urls[n % SERVERS]}/api/v1/sandbox/budget?agreement=v2v", None) for n in range(sent)],
        rosa,
    )

    statuses = Counter(status for status, _body, _headers in outcomes)
    assert statuses == {200: limit, 429: sent - limit}, outcomes
    for status, body, headers in outcomes:
        if status == 429:
            assert body["error"]["code"] == "rate_limited"
            message = body["error"]["message"]
            assert f"more than {limit} sandbox requests in a minute" in message
            assert "try again in" in message
            wait = int(headers["Retry-After"])
            assert 1 <= wait <= 120 and f"in {wait} second" in message
        else:
            assert body["answers"] == 0  # a real answer, not an error page
    with database.session() as s:
        counter = s.scalar(select(RateCounter).where(RateCounter.actor == "user:rosa"))
        assert counter is not None and counter.used + counter.previous == limit
        actions = Counter(
            (e.action, json.loads(e.detail).get("status"))
            for e in s.scalars(select(AuditEntry).where(AuditEntry.action.startswith("sandbox.")))
        )
    assert actions == {("sandbox.budget", 200): limit, ("sandbox.refused", 429): sent - limit}

    # Refusals are not counted, and the limit still holds for the next request.
    status, body, headers = _burst(
        [(f"{urls[0]}/api/v1/sandbox/budget?agreement=v2v", None)], rosa
    )[0]
    assert status == 429 and "Retry-After" in headers


# The privacy budget across server processes -------------------------------------------------


def test_budget_holds_across_server_processes(
    database: Database, settings: Settings, pooled, start_servers
) -> None:
    """12 different questions at once through three server processes, ε 1 each, against a
    budget of ε 5: exactly 5 answered and paid for, 7 refused ``budget_exhausted``; the
    stored ``spent`` is 5, and only paid answers are kept."""
    activate_agreement(database, BUDGET_TERMS)
    rosa = bearer(database, settings, "rosa")
    urls = start_servers(gateway_rate_per_minute=1000)
    sent, total, epsilon = 12, 5.0, 1.0
    paid_for = int(total // epsilon)
    outcomes = _burst(
        [
            (
                f"{urls[n % SERVERS]}/api/v1/sandbox/query",
                {
                    "agreement": "v2v",
                    "sql": f"SELECT COUNT(*) FROM batch WHERE viability > {70 + n}",
                },
            )
            for n in range(sent)
        ],
        rosa,
    )

    answered = [body for status, body, _h in outcomes if status == 200]
    refused = [body for status, body, _h in outcomes if status != 200]
    assert len(answered) == paid_for, outcomes
    assert all(a["spent"] == epsilon for a in answered)
    assert len(refused) == sent - paid_for
    assert {(r["error"]["code"]) for r in refused} == {"budget_exhausted"}, refused
    assert all("privacy budget" in r["error"]["message"] for r in refused)
    with database.session() as s:
        row = s.scalar(select(PrivacyBudget))
        assert row is not None and row.spent == len(answered) * epsilon == total
        assert row.answers == paid_for
        assert s.scalar(select(func.count()).select_from(GatewayAnswer)) == paid_for
        paid = s.scalars(select(AuditEntry.detail).where(AuditEntry.action == "sandbox.query"))
        assert sum(json.loads(d)["epsilon"] for d in paid) == total


# Controls: the harness sees an overrun when there is one ------------------------------------

WORKERS = 8
RATE_LIMIT = 3


def _open(overrides: dict[str, Any], **more: Any) -> tuple[Settings, Database]:
    """A child process's settings (registering the ledger key, as a server does) and
    database."""
    settings = load_settings({**overrides, **more}, environ={})
    return settings, Database(settings.effective_database_url)


def _old_rate_check(overrides: dict[str, Any], actor: str, limit: int, barrier: Any) -> str:
    """The check this issue replaced: count the caller's ledger rows of the last minute,
    then act. The barrier holds every process between its count and its act."""
    _settings, database = _open(overrides)
    try:
        with database.session() as s:
            since = (datetime.now(UTC) - timedelta(minutes=1)).isoformat(timespec="microseconds")
            used = s.scalar(
                select(func.count())
                .select_from(AuditEntry)
                .where(
                    AuditEntry.actor == actor,
                    AuditEntry.action.startswith("sandbox."),
                    AuditEntry.at >= since.replace("+00:00", "Z"),
                )
            )
        barrier.wait(timeout=120)
        if (used or 0) >= limit:
            return "refused"
        with database.session() as s:
            record(s, actor=actor, action="sandbox.query", target="agreement:v2v", detail={})
        return "admitted"
    finally:
        database.dispose()


def _new_rate_check(overrides: dict[str, Any], actor: str, limit: int, barrier: Any) -> str:
    settings, database = _open(overrides, gateway_rate_per_minute=limit)
    try:
        barrier.wait(timeout=120)
        with database.session() as s:
            try:
                gateway.check_rate(s, settings, actor)
            except gateway.RateLimited:
                return "refused"
            return "admitted"
    finally:
        database.dispose()


def _budget_scope(s: Session) -> tuple[User, gateway.Scope]:
    """rosa and her scope under ``v2v`` as the debit reads it (the agreement and its terms)."""
    from hub.agreements import services as agreements

    stored = agreements.get(s, "v2v")
    return accounts.get_user(s, "rosa"), gateway.Scope(
        stored, agreements.contract_of(stored), {}, []
    )


def _old_debit(overrides: dict[str, Any], barrier: Any) -> str:
    """Read-then-write spending: read ``spent``, decide, then add ε (the barrier holds every
    process between the read and the write)."""
    _settings, database = _open(overrides)
    try:
        with database.session() as s:
            user, scope = _budget_scope(s)
            found = gateway.budget(s, user, scope)
        barrier.wait(timeout=120)
        if found.spent + 1.0 > found.total:
            return "refused"
        with database.session() as s:
            user, scope = _budget_scope(s)
            row = s.scalar(select(PrivacyBudget).where(PrivacyBudget.user_id == user.id))
            assert row is not None
            row.spent = PrivacyBudget.spent + 1.0  # even atomic increments overspend
            row.answers = PrivacyBudget.answers + 1
        return "admitted"
    finally:
        database.dispose()


def _new_debit(overrides: dict[str, Any], barrier: Any) -> str:
    _settings, database = _open(overrides)
    try:
        barrier.wait(timeout=120)
        with database.session() as s:
            user, scope = _budget_scope(s)
            try:
                gateway.debit(s, user, scope, 1.0)
            except gateway.BudgetExhausted:
                return "refused"
            return "admitted"
    finally:
        database.dispose()


def _run(target: Callable[..., str], queue: Any, *args: Any) -> None:
    try:
        queue.put(target(*args))
    except Exception as error:  # reported to the test, which fails naming it
        queue.put(f"error: {error!r}")


def _in_processes(target: Callable[..., str], *args: Any) -> Counter[str]:
    """``target(*args, barrier)`` in ``WORKERS`` fresh processes at once; their outcomes."""
    # Forked from a clean server process that imported this module once: no connection of
    # the test's is inherited, and starting eight is quick.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    barrier = context.Barrier(WORKERS)
    queue = context.Queue()
    procs = [
        context.Process(target=_run, args=(target, queue, *args, barrier)) for _ in range(WORKERS)
    ]
    for proc in procs:
        proc.start()
    try:
        return Counter(queue.get(timeout=180) for _ in procs)
    finally:
        for proc in procs:
            proc.join(timeout=30)
            if proc.is_alive():  # stuck (a test failure already): not left behind
                proc.kill()


def test_control_count_then_act_overruns_and_the_new_check_does_not(
    database: Database, settings_overrides: dict[str, Any]
) -> None:
    """Eight processes, a limit of three: the old check, its race window held open, lets
    all eight through; the new check lets exactly three through, the others refused."""
    with database.session() as s:  # the ledger's first entry (its head row) exists
        record(s, actor="user:sam", action="test.start", target="test", detail={})
    old = _in_processes(_old_rate_check, settings_overrides, "user:old", RATE_LIMIT)
    assert old == {"admitted": WORKERS}, old  # an overrun, and the harness sees it
    new = _in_processes(_new_rate_check, settings_overrides, "user:new", RATE_LIMIT)
    assert new == {"admitted": RATE_LIMIT, "refused": WORKERS - RATE_LIMIT}, new


def test_control_read_then_write_overspends_and_the_debit_does_not(
    database: Database, settings_overrides: dict[str, Any], pooled
) -> None:
    """Eight processes, ε 1 each, a budget of ε 5: spending by read-then-write pays for all
    eight (ε 8 spent); the conditional UPDATE pays for exactly five."""
    activate_agreement(database, BUDGET_TERMS)
    with database.session() as s:
        user, scope = _budget_scope(s)
        s.add(
            PrivacyBudget(
                user_id=user.id,
                agreement_id=scope.stored.id,
                period=gateway.budget_period(),
                spent=0.0,
                answers=0,
            )
        )
    old = _in_processes(_old_debit, settings_overrides)
    assert old == {"admitted": WORKERS}, old
    with database.session() as s:
        assert s.scalar(select(PrivacyBudget.spent)) == WORKERS  # overspent: ε 8 of 5
        s.query(PrivacyBudget).delete()
    new = _in_processes(_new_debit, settings_overrides)
    assert new == {"admitted": 5, "refused": WORKERS - 5}, new
    with database.session() as s:
        row = s.scalar(select(PrivacyBudget))
        assert row is not None and row.spent == 5.0 and row.answers == 5


# The sliding minute, with the clock given --------------------------------------------------


def test_sliding_minute_rolls_forward_and_says_when_to_come_back(
    database: Database, settings: Settings, monkeypatch
) -> None:
    """A limit of 3: three requests at 12:00:10, the fourth refused until the previous
    minute's share has faded enough (Retry-After exact to the second); a quiet minute
    clears the row; other researchers are counted apart."""
    monkeypatch.setitem(settings.data, "gateway_rate_per_minute", 3)
    start = datetime(2026, 5, 1, 12, 0, 10, tzinfo=UTC)

    def ask(at: datetime, actor: str = "user:rosa") -> int | None:
        with database.session() as s:
            try:
                gateway.check_rate(s, settings, actor, now=at)
            except gateway.RateLimited as err:
                return err.retry_after
        return None

    assert [ask(start + timedelta(seconds=n)) for n in range(3)] == [None, None, None]
    wait = ask(start + timedelta(seconds=3))
    # Not before 12:01, and then not until 3 × (1 − f) ≤ 2: f ≥ 1/3, i.e. 12:01:20.
    assert wait == 67
    assert ask(start + timedelta(seconds=3 + wait - 1)) is not None
    assert ask(start + timedelta(seconds=3 + wait)) is None  # 12:01:20
    assert ask(start + timedelta(seconds=3 + wait + 1)) is not None  # the sliding minute: full
    assert ask(start, actor="user:omar") is None  # counted apart
    # Three quiet minutes later: a fresh allowance, the row rolled forward in place.
    later = start + timedelta(minutes=4)
    assert [ask(later + timedelta(seconds=n)) for n in range(4)][:3] == [None, None, None]
    with database.session() as s:
        rows = s.scalars(select(RateCounter).order_by(RateCounter.actor)).all()
        assert [(r.actor, r.used, r.previous) for r in rows] == [
            ("user:omar", 1, 0),
            ("user:rosa", 3, 0),
        ]
