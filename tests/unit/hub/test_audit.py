"""The hash-chained audit ledger: appends, verification and the three kinds of tampering."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from hub.audit.models import AuditEntry, AuditHead
from hub.audit.services import GENESIS, entry_hash, record, verify
from hub.db import Database
from hub.jobs.services import job_dict
from tests.conftest import csrf_from

pytestmark = pytest.mark.db


def _fill(database: Database, n: int = 6) -> None:
    for i in range(n):
        with database.session() as s:
            record(
                s,
                actor=f"user:u{i}",
                action="upload",
                target=f"dataset:{i}",
                detail={"rows": i * 10, "name": "Zoë"},
            )


def test_entries_form_a_chain(database: Database) -> None:
    _fill(database, 4)
    with database.session() as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        assert [e.id for e in entries] == [1, 2, 3, 4]
        assert entries[0].prev_hash == GENESIS
        for before, after in zip(entries, entries[1:], strict=False):
            assert after.prev_hash == before.entry_hash
        assert len({e.entry_hash for e in entries}) == 4
        result = verify(s)
    assert result.ok and result.entries == 4
    assert "4 entries" in str(result)


def test_an_empty_ledger_verifies(database: Database) -> None:
    with database.session() as s:
        assert verify(s).ok


def test_an_entry_rolled_back_with_its_action_leaves_no_trace(database: Database) -> None:
    _fill(database, 2)
    with pytest.raises(RuntimeError), database.session() as s:
        record(s, actor="user:x", action="release", target="dataset:9")
        raise RuntimeError("the release failed")
    with database.session() as s:
        assert s.scalar(select(AuditEntry.id).order_by(AuditEntry.id.desc()).limit(1)) == 2
        assert verify(s).ok
    _fill(database, 1)
    with database.session() as s:
        assert verify(s).ok


def test_long_text_is_cut_before_it_is_hashed(database: Database, client) -> None:
    """One anonymous login attempt with a 400-character user name used to break the chain
    for good (the hash covered text the column could not hold)."""
    token = csrf_from(client, "/login")
    resp = client.post(
        "/login", data={"username": "x" * 400, "password": "wrong", "csrf_token": token}
    )
    assert resp.status_code in (200, 401)
    with database.session() as s:
        record(s, actor="a" * 500, action="b" * 100, target="t" * 1000, detail={"k": "v"})
    with database.session() as s:
        entries = s.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
        failure = next(e for e in entries if e.action == "login.failure")
        assert failure.target == "user:" + "x" * 64  # the name as the attempts table keeps it
        last = entries[-1]
        assert (len(last.actor), len(last.action), len(last.target)) == (200, 64, 300)
        result = verify(s)
    assert result.ok, str(result)


def test_every_break_is_listed_so_one_cannot_hide_another(database: Database) -> None:
    _fill(database, 8)
    with database.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id == 2).values(target="dataset:x"))
        s.execute(text("DELETE FROM audit_entries WHERE id = 5"))
        s.execute(update(AuditEntry).where(AuditEntry.id == 7).values(detail='{"rows":0}'))
    with database.session() as s:
        result = verify(s)
    assert not result.ok
    assert [(p.entry_id, p.kind) for p in result.problems] == [
        (2, "edited"),
        (5, "deleted"),
        (7, "edited"),
    ]
    assert (result.entry_id, result.kind) == (2, "edited")
    assert str(result).count("\n  entry ") == 3


# Every code point: NUL, control characters, lone surrogates (a JSON body can carry them).
ANY_CHARACTER = st.characters(codec=None, exclude_categories=())


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    fields=st.lists(
        st.tuples(
            st.text(ANY_CHARACTER, min_size=0, max_size=700),
            st.text(ANY_CHARACTER, min_size=1, max_size=200),
            st.text(ANY_CHARACTER, min_size=0, max_size=1500),
            st.dictionaries(
                st.text(ANY_CHARACTER, max_size=20),
                st.text(ANY_CHARACTER, max_size=300),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=4,
    )
)
def test_any_text_of_any_length_is_stored_as_hashed(database: Database, fields) -> None:
    """Random long and non-ASCII actors, actions, targets and details: the ledger verifies,
    and every stored field is what its hash covers."""
    for actor, action, target, detail in fields:
        with database.session() as s:
            record(s, actor=actor, action=action, target=target, detail=detail)
    with database.session() as s:
        assert verify(s).ok, str(verify(s))
        for e in s.scalars(select(AuditEntry)):
            assert entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail) == (
                e.entry_hash
            )
            assert len(e.actor) <= 200 and len(e.action) <= 64 and len(e.target) <= 300


def test_edit_is_named(database: Database) -> None:
    _fill(database)
    with database.session() as s:
        s.execute(
            update(AuditEntry).where(AuditEntry.id == 3).values(detail='{"name":"Zoë","rows":0}')
        )
    with database.session() as s:
        result = verify(s)
    assert not result.ok
    assert (result.entry_id, result.kind) == (3, "edited")
    assert "entry 3" in str(result)


def test_edit_with_recomputed_hash_is_named(database: Database) -> None:
    """An editor who also recomputes the entry's own hash cannot make its key signature
    (the ledger key is not in the database), and breaks the next entry's link."""
    from hub.audit.services import entry_hash

    _fill(database)
    with database.session() as s:
        e = s.get(AuditEntry, 2)
        assert e is not None
        e.actor = "user:someone-else"
        e.entry_hash = entry_hash(e.prev_hash, e.at, e.actor, e.action, e.target, e.detail)
    with database.session() as s:
        result = verify(s)
    assert [(p.entry_id, p.kind) for p in result.problems] == [(2, "forged"), (2, "edited")]
    assert "forged or edited without the ledger key" in str(result)


def test_entries_are_keyed_with_a_key_outside_the_database(
    database: Database, settings, data_dir
) -> None:
    """Each entry carries HMAC-SHA256(ledger key, entry hash); the key is the settings'
    (development: keys.toml), never a database value."""
    import hashlib
    import hmac

    _fill(database, 3)
    key = settings.ledger_key.encode()
    assert key and key != settings.hmac_key.encode()
    assert "ledger_key" in (data_dir / "keys.toml").read_text()
    with database.session() as s:
        for e in s.scalars(select(AuditEntry)):
            want = hmac.new(key, bytes.fromhex(e.entry_hash), hashlib.sha256).hexdigest()
            assert e.entry_mac == want
        dump = " ".join(
            str(v) for row in s.execute(text("SELECT * FROM audit_entries")).all() for v in row
        )
    assert settings.ledger_key not in dump


def test_a_whole_chain_rewritten_without_the_key_is_named_at_its_first_entry(
    database: Database,
) -> None:
    """Someone who can write the database rewrites the chain from entry 3 with correct
    SHA-256 hashes: the chain links, but the key signatures name entry 3 onwards."""
    from hub.audit.services import entry_hash

    _fill(database, 6)
    with database.session() as s:
        assert verify(s).ok  # control
        prev = s.get(AuditEntry, 2).entry_hash  # type: ignore[union-attr]
        for i in range(3, 7):
            e = s.get(AuditEntry, i)
            assert e is not None
            e.detail = '{"rows":0}'
            e.prev_hash = prev
            e.entry_hash = prev = entry_hash(prev, e.at, e.actor, e.action, e.target, e.detail)
        s.execute(update(AuditHead).values(last_hash=prev))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.entry_id, result.kind) == (False, 3, "forged")
    assert [p.entry_id for p in result.problems] == [3, 4, 5, 6]


def test_entries_from_before_keying_are_noted_then_sealed_once(database: Database, runner) -> None:
    """Entries written before keyed entries carry no MAC: verify notes them (not a break)
    while they come first; `cleanroom audit seal` keys them after checking their chain."""
    from hub.cli import cli

    _fill(database, 4)
    with database.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id <= 2).values(entry_mac=None))
    with database.session() as s:
        result = verify(s)
    assert result.ok and result.unkeyed == 2
    assert "entries 1-2 are unkeyed (written before keyed entries" in str(result)
    sealed = runner.invoke(cli, ["audit", "seal"])
    assert sealed.exit_code == 0, sealed.output
    assert "2 entries" in sealed.output
    with database.session() as s:
        result = verify(s)
        last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert result.ok and result.unkeyed == 0
        assert last.action == "audit.seal"
        # A MAC stripped from an entry after keyed ones is a break, not an old entry.
        s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(entry_mac=None))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.entry_id, result.kind) == (False, 3, "forged")
    again = runner.invoke(cli, ["audit", "seal"])
    assert again.exit_code == 1 and "cannot be sealed" in again.output
    assert "Traceback" not in again.output


def test_deletion_is_named(database: Database) -> None:
    _fill(database)
    with database.session() as s:
        s.execute(text("DELETE FROM audit_entries WHERE id = 4"))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.entry_id, result.kind) == (False, 4, "deleted")
    assert "entry 4 deleted" in str(result)


def test_reordering_is_named(database: Database) -> None:
    _fill(database)
    cols = ("at", "actor", "action", "target", "detail", "prev_hash", "entry_hash", "entry_mac")
    with database.session() as s:
        a, b = s.get(AuditEntry, 3), s.get(AuditEntry, 4)
        assert a is not None and b is not None
        va, vb = ({c: getattr(x, c) for c in cols} for x in (a, b))
        # Swap through a placeholder: entry_hash is unique.
        s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(entry_hash="x"))
        s.execute(update(AuditEntry).where(AuditEntry.id == 4).values(**va))
        s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(**vb))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.entry_id, result.kind) == (False, 3, "reordered")


def test_truncating_the_tail_is_detected(database: Database) -> None:
    _fill(database)
    with database.session() as s:
        s.execute(text("DELETE FROM audit_entries WHERE id >= 5"))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.kind) == (False, "truncated")


def test_cli_verify_names_the_entry_and_fails(runner, database: Database) -> None:
    from hub.cli import cli

    _fill(database)
    ok = runner.invoke(cli, ["audit", "verify"])
    assert ok.exit_code == 0, ok.output
    assert "intact: 6 entries" in ok.output
    with database.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id == 5).values(actor="user:mallory"))
    broken = runner.invoke(cli, ["audit", "verify"])
    assert broken.exit_code == 1
    assert "BROKEN: 1 problem(s)" in broken.output and "entry 5 (edited)" in broken.output
    assert "Traceback" not in broken.output


def test_verify_job_records_its_result(database: Database, settings) -> None:
    from hub.jobs.services import Worker, enqueue, get_job, load_task_modules

    load_task_modules()
    _fill(database, 3)
    with database.session() as s:
        job_id = enqueue(s, "audit.verify", actor="user:steward").id
    assert Worker(database, settings).run_once() == "succeeded"
    with database.session() as s:
        job = job_dict(get_job(s, job_id), content=True)
        last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
    assert job["result"] == {"ok": True, "entries": 4, "problem": ""}
    assert last.action == "audit.verify"
