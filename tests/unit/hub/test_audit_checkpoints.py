"""Signed ledger checkpoints and their witnesses (issue 18, item 1).

Every tampering a database writer can do (edit, delete, reorder, truncate, rewrite from an
entry with new hashes with or without the ledger key, replace the head, restore an old
backup) is detected from one witness's copies alone, naming the first bad entry; each test
first checks its control (the untouched ledger verifies). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import stat
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text, update

from hub.audit import checkpoints as cp
from hub.audit.models import AuditCheckpoint, AuditEntry, AuditHead, WitnessPush
from hub.audit.services import entry_hash, entry_mac, record, verify
from hub.db import Database
from hub.settings import Settings
from tests.conftest import Users

pytestmark = pytest.mark.db


def _fill(database: Database, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        with database.session() as s:
            record(
                s,
                actor=f"user:u{i}",
                action="upload",
                target=f"dataset:{i}",
                detail={"rows": i * 10, "name": "Zoë"},
            )


def _checkpoint(database: Database, settings: Settings) -> AuditCheckpoint:
    with database.session() as s:
        made = cp.create_checkpoint(s, settings)
        assert made is not None
        s.expunge(made)
    return made


@pytest.fixture
def witnessed(database: Database, settings: Settings, tmp_path: Path) -> Path:
    """A ledger of 19 entries and one witness's folder: checkpoint 1 covers entries 1-10,
    checkpoint 2 entries 1-17 (each checkpoint is itself an entry after the ones it covers)."""
    _fill(database, 10)
    assert _checkpoint(database, settings).length == 10  # entry 11 records it
    _fill(database, 6, start=10)
    assert _checkpoint(database, settings).length == 17
    _fill(database, 1, start=16)
    return _export(database, settings, tmp_path / "witness")


def _export(database: Database, settings: Settings, folder: Path) -> Path:
    with database.session() as s:
        docs = list(s.scalars(select(AuditCheckpoint.document).order_by(AuditCheckpoint.id)))
        anchor = cp.anchor_public_pem(s, settings)
    cp.write_folder(folder, docs, anchor)
    return folder


def _check(database: Database, folder: Path) -> cp.WitnessVerification:
    with database.session() as s:
        return cp.verify_witnessed(s, folder)


@pytest.fixture
def later(monkeypatch: pytest.MonkeyPatch) -> None:
    """The periodic job's clock two hours ahead: the ledger's entries (and checkpoints) made
    in the test are an interval old, so a checkpoint is due."""
    from datetime import UTC, datetime, timedelta

    monkeypatch.setattr(cp, "clock", lambda: datetime.now(UTC) + timedelta(hours=2))


def _control(database: Database, folder: Path) -> None:
    result = _check(database, folder)
    assert result.ok, str(result)
    assert (result.checkpoints, result.covered, result.entries) == (2, 17, 19)
    with database.session() as s:
        assert verify(s).ok


def _rewrite_from(database: Database, first: int, key: bytes | None) -> None:
    """Rewrite entries ``first``.. with new content and correct SHA-256 hashes; with the
    ledger key their MACs are right too, so the chain alone verifies."""
    with database.session() as s:
        prev = s.get(AuditEntry, first - 1).entry_hash  # type: ignore[union-attr]
        for e in s.scalars(
            select(AuditEntry).where(AuditEntry.id >= first).order_by(AuditEntry.id)
        ):
            e.detail = json.dumps({"rows": 0}, separators=(",", ":"))
            e.prev_hash = prev
            prev = entry_hash(prev, e.at, e.actor, e.action, e.target, e.detail)
            e.entry_hash = prev
            e.entry_mac = entry_mac(key, prev) if key else "0" * 64
            s.flush()
        s.execute(update(AuditHead).values(last_hash=prev))


# Tampering, each named from the witness's copies -------------------------------------------


def test_untouched_ledger_extends_every_checkpoint(database: Database, witnessed: Path) -> None:
    _control(database, witnessed)
    result = _check(database, witnessed)
    assert "entries 18-19 are newer than the latest checkpoint" in str(result)


def test_edit_is_named(database: Database, witnessed: Path) -> None:
    _control(database, witnessed)
    with database.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id == 5).values(target="dataset:x"))
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 5, "edited")
    assert "first bad entry: 5 (edited)" in str(result)


def test_delete_is_named(database: Database, witnessed: Path) -> None:
    _control(database, witnessed)
    with database.session() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.id == 7))
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 7, "deleted")


def test_reorder_is_named(database: Database, witnessed: Path) -> None:
    _control(database, witnessed)
    cols = ("at", "actor", "action", "target", "detail", "prev_hash", "entry_hash", "entry_mac")
    with database.session() as s:
        a, b = s.get(AuditEntry, 3), s.get(AuditEntry, 4)
        assert a is not None and b is not None
        va, vb = ({c: getattr(x, c) for c in cols} for x in (a, b))
        s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(entry_hash="x"))
        s.execute(update(AuditEntry).where(AuditEntry.id == 4).values(**va))
        s.execute(update(AuditEntry).where(AuditEntry.id == 3).values(**vb))
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 3, "reordered")
    assert "now entry 4" in str(result)


def test_truncation_with_a_consistent_head_is_named(database: Database, witnessed: Path) -> None:
    """The tail is cut and the head row set to match: the chain alone looks intact."""
    _control(database, witnessed)
    with database.session() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.id >= 14))
        last = s.get(AuditEntry, 13)
        assert last is not None
        s.execute(update(AuditHead).values(last_id=13, last_hash=last.entry_hash))
    with database.session() as s:
        assert verify(s).ok  # the chain alone cannot tell
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 14, "truncated")
    assert "entries 14-17 are missing" in str(result)


@pytest.mark.parametrize("with_key", [True, False], ids=["with-key", "without-key"])
def test_rewrite_from_an_entry_with_new_hashes_is_named(
    database: Database, settings: Settings, witnessed: Path, with_key: bool
) -> None:
    """The whole chain from entry 6 rewritten with correct SHA-256 links. With the ledger
    key (an insider holding it) the chain alone verifies; the checkpoints still name 6."""
    _control(database, witnessed)
    _rewrite_from(database, 6, settings.ledger_key.encode() if with_key else None)
    with database.session() as s:
        chain = verify(s)
    if with_key:
        assert chain.ok, str(chain)
    else:
        assert (chain.ok, chain.entry_id, chain.kind) == (False, 6, "forged")
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 6, "edited")


def test_replacing_the_head_is_named(
    database: Database, settings: Settings, witnessed: Path
) -> None:
    """The last entry the latest checkpoint covers (its head, 17) is replaced by another,
    keyed and linked, and made the ledger's head: the chain verifies; the witness names 17."""
    _control(database, witnessed)
    key = settings.ledger_key.encode()
    with database.session() as s:
        s.execute(delete(AuditEntry).where(AuditEntry.id >= 17))
        prev = s.get(AuditEntry, 16).entry_hash  # type: ignore[union-attr]
        at, detail = "2026-01-01T00:00:00.000000Z", '{"rows":1}'
        digest = entry_hash(prev, at, "user:mallory", "upload", "dataset:1", detail)
        s.add(
            AuditEntry(
                id=17,
                at=at,
                actor="user:mallory",
                action="upload",
                target="dataset:1",
                detail=detail,
                prev_hash=prev,
                entry_hash=digest,
                entry_mac=entry_mac(key, digest),
            )
        )
        s.execute(update(AuditHead).values(last_id=17, last_hash=digest))
    with database.session() as s:
        assert verify(s).ok
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 17, "edited")


def test_head_row_replaced_is_named_by_the_chain(database: Database, witnessed: Path) -> None:
    """The head row itself pointed elsewhere: the chain check names the mismatch."""
    _control(database, witnessed)
    with database.session() as s:
        s.execute(update(AuditHead).values(last_id=12, last_hash="f" * 64))
    with database.session() as s:
        result = verify(s)
    assert (result.ok, result.kind) == (False, "truncated")


def test_rollback_to_an_old_backup_is_named(
    database: Database, settings: Settings, witnessed: Path
) -> None:
    """The database restored from a backup taken at entry 12 (after checkpoint 1, before
    checkpoint 2): a consistent older state, the checkpoint table rolled back too."""
    _control(database, witnessed)
    with database.session() as s:
        s.execute(delete(WitnessPush))
        s.execute(delete(AuditCheckpoint).where(AuditCheckpoint.id >= 2))
        s.execute(delete(AuditEntry).where(AuditEntry.id > 12))
        last = s.get(AuditEntry, 12)
        assert last is not None
        s.execute(update(AuditHead).values(last_id=12, last_hash=last.entry_hash))
    with database.session() as s:
        assert verify(s).ok
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 13, "truncated")
    assert "older backup" in str(result)


def test_the_hub_refuses_to_sign_over_a_rewritten_history(
    database: Database, settings: Settings, witnessed: Path, later: None
) -> None:
    from hub.errors import Conflict

    _rewrite_from(database, 4, settings.ledger_key.encode())
    _fill(database, 1, start=50)
    with database.session() as s, pytest.raises(Conflict, match="no longer extends checkpoint 2"):
        cp.create_checkpoint(s, settings)
    # The workers' interval raises the alarm in the ledger itself.
    with database.session() as s:
        s.execute(update(AuditCheckpoint).values(at="2000-01-01T00:00:00Z"))
    assert cp.checkpoint_due(database, settings) is None
    with database.session() as s:
        last = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(1)).one()
        assert s.scalar(select(func.count()).select_from(AuditCheckpoint)) == 2
    assert last.action == "audit.checkpoint_refused"
    assert "no longer extends checkpoint 2" in last.detail


# Forged checkpoints and incomplete witness folders --------------------------------------


def test_a_checkpoint_altered_after_signing_is_refused(database: Database, witnessed: Path) -> None:
    _control(database, witnessed)
    path = witnessed / cp.file_name(2)
    doc = json.loads(path.read_text())
    doc["length"] = 15
    path.write_text(json.dumps(doc))
    result = _check(database, witnessed)
    assert not result.ok
    assert "checkpoint-000002.json is not a checkpoint signed by the hub" in str(result)
    assert "signature does not verify" in str(result)


def test_a_checkpoint_from_another_key_is_refused(database: Database, witnessed: Path) -> None:
    """A forger with their own key signs a checkpoint blessing a rewritten ledger: refused,
    whether it names its own key or claims the hub's."""
    _control(database, witnessed)
    other = Ed25519PrivateKey.generate()
    doc = json.loads((witnessed / cp.file_name(2)).read_text())
    for claimed, why in (
        (cp.key_id(other.public_key()), "names another signing key"),
        (doc["key_id"], "signature does not verify"),
    ):
        forged = {**doc, "sequence": 3, "key_id": claimed}
        forged["signature"] = base64.b64encode(other.sign(cp.signed_body(forged))).decode()
        (witnessed / cp.file_name(3)).write_text(json.dumps(forged))
        result = _check(database, witnessed)
        assert not result.ok and result.checkpoints == 2
        assert "checkpoint-000003.json is not a checkpoint signed by the hub" in str(result)
        assert why in str(result)
    # With the forger's key named explicitly, the hub's own checkpoints fail instead.
    with database.session() as s:
        result = cp.verify_witnessed(s, witnessed, other.public_key())
    assert "checkpoint-000001.json is not a checkpoint signed by the hub" in str(result)


def test_a_missing_checkpoint_is_noted_and_its_entries_still_checked(
    database: Database, witnessed: Path
) -> None:
    _control(database, witnessed)
    (witnessed / cp.file_name(1)).unlink()
    result = _check(database, witnessed)
    assert result.ok, str(result)
    assert "lacks checkpoint(s) 1" in str(result)
    # An edit among the entries only checkpoint 1 listed: checkpoint 2's root catches it.
    with database.session() as s:
        s.execute(update(AuditEntry).where(AuditEntry.id == 4).values(actor="user:mallory"))
    result = _check(database, witnessed)
    assert (result.ok, result.entry_id, result.kind) == (False, 4, "edited")


def test_cli_verify_against_a_witness_folder(
    runner, database: Database, witnessed: Path, tmp_path: Path
) -> None:
    from hub.cli import cli

    ok = runner.invoke(cli, ["audit", "verify", "--checkpoints", str(witnessed)])
    assert ok.exit_code == 0, ok.output
    assert "extends all 2 checkpoint(s)" in ok.output
    _rewrite_from(database, 9, None)
    broken = runner.invoke(cli, ["audit", "verify", "--checkpoints", str(witnessed)])
    assert broken.exit_code == 1
    assert "first bad entry: 9 (edited)" in broken.output
    assert "Traceback" not in broken.output
    for bad in (tmp_path / "nowhere", tmp_path / "empty"):
        if bad.name == "empty":
            bad.mkdir()
            (bad / cp.PUBLIC_KEY_FILE).write_text(
                cp.public_pem(Ed25519PrivateKey.generate().public_key())
            )
        out = runner.invoke(cli, ["audit", "verify", "--checkpoints", str(bad)])
        assert out.exit_code == 1 and "Traceback" not in out.output
        assert str(bad) in out.output
    assert (
        "cannot be read"
        in runner.invoke(
            cli, ["audit", "verify", "--checkpoints", str(tmp_path / "nowhere")]
        ).output
    )
    nokey = tmp_path / "nokey"
    nokey.mkdir()
    out = runner.invoke(cli, ["audit", "verify", "--checkpoints", str(nokey)])
    assert out.exit_code == 1 and "hub-public-key.pem" in out.output


def test_cli_checkpoint_public_key_and_export(
    runner, database: Database, settings: Settings, tmp_path: Path
) -> None:
    from hub.cli import cli

    _fill(database, 3)
    made = runner.invoke(cli, ["audit", "checkpoint"])
    assert made.exit_code == 0, made.output
    assert "checkpoint 1 signed: 3 entries" in made.output
    again = runner.invoke(cli, ["audit", "checkpoint"])
    assert "has not grown" not in again.output  # the checkpoint and push entries are new
    key = runner.invoke(cli, ["audit", "public-key"])
    assert key.output.startswith("-----BEGIN PUBLIC KEY-----")
    out = runner.invoke(cli, ["audit", "export-checkpoints", str(tmp_path / "mine")])
    assert out.exit_code == 0, out.output
    assert (tmp_path / "mine" / cp.PUBLIC_KEY_FILE).read_text() == key.output
    assert sorted(p.name for p in (tmp_path / "mine").glob("checkpoint-*")) == [
        "checkpoint-000001.json",
        "checkpoint-000002.json",
    ]
    ok = runner.invoke(cli, ["audit", "verify", "--checkpoints", str(tmp_path / "mine")])
    assert ok.exit_code == 0, ok.output


# Key rotation -----------------------------------------------------------------------------


def _signed_by(document: dict, pem: str) -> bool:
    """The oracle: an Ed25519 check written here, not the hub's (no key ids, no handovers)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    body = json.dumps(
        {k: v for k, v in document.items() if k != "signature"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode()
    try:
        load_pem_public_key(pem.encode()).verify(  # type: ignore[union-attr]
            base64.b64decode(document["signature"]), body
        )
    except InvalidSignature:
        return False
    return True


def test_a_rotated_key_is_checked_from_the_first_key(
    runner, database: Database, settings: Settings, witnessed: Path, tmp_path: Path
) -> None:
    """`rotate-key`: the old key signs a handover naming the new one; a witness holding only
    the first public key checks every checkpoint; the retired key can sign nothing more."""
    from cryptography.hazmat.primitives import serialization

    from hub.cli import cli

    _control(database, witnessed)
    first_pem = (witnessed / cp.PUBLIC_KEY_FILE).read_text()
    path = settings.effective_checkpoint_key_path
    retired = serialization.load_pem_private_key(path.read_bytes(), password=None)
    out = runner.invoke(cli, ["audit", "rotate-key", "--no-push"])
    assert out.exit_code == 0, out.output
    assert "checkpoint 3 hands signing over" in out.output and "Traceback" not in out.output
    assert not cp.next_key_path(settings).exists()
    new_pem = cp.public_pem(cp.signing_key(settings).public_key())
    assert new_pem != first_pem
    _fill(database, 2, start=30)
    assert _checkpoint(database, settings).id == 4  # signed with the new key
    assert runner.invoke(cli, ["audit", "public-key"]).output == first_pem
    fresh = _export(database, settings, tmp_path / "fresh")
    assert (fresh / cp.PUBLIC_KEY_FILE).read_text() == first_pem
    for folder in (fresh, _export(database, settings, witnessed)):
        result = _check(database, folder)
        assert result.ok and result.checkpoints == 4, str(result)
        assert "checkpoint 3 handed signing over" in str(result)
    # The oracle: 1-3 verify with the first key, 4 with the key 3 names, and not the reverse.
    docs = {n: json.loads((fresh / cp.file_name(n)).read_text()) for n in (1, 2, 3, 4)}
    named = docs[3]["next_key"]["public_key"]
    assert named == new_pem and docs[3]["public_key"] == first_pem
    assert all(_signed_by(docs[n], first_pem) for n in (1, 2, 3))
    assert _signed_by(docs[4], named) and not _signed_by(docs[4], first_pem)
    # Control: the retired key, stolen, signs a checkpoint 5: the witness refuses it.
    forged = {**docs[4], "sequence": 5, "key_id": docs[3]["key_id"]}
    forged["signature"] = base64.b64encode(retired.sign(cp.signed_body(forged))).decode()  # type: ignore[union-attr]
    assert _signed_by(forged, first_pem)  # a valid signature by the first key ...
    (fresh / cp.file_name(5)).write_text(json.dumps(forged))
    result = _check(database, fresh)
    assert not result.ok  # ... but no longer the key in force
    assert "checkpoint-000005.json is not a checkpoint signed by the hub" in str(result)
    # Verifying with the new key alone checks only what it signed.
    (fresh / cp.file_name(5)).unlink()
    with database.session() as s:
        partial = cp.verify_witnessed(s, fresh, cp.load_public_key(new_pem.encode()))
    assert "checkpoint-000001.json is not a checkpoint signed by the hub" in str(partial)
    assert "checkpoint-000004.json" not in str(partial)
    with database.session() as s:
        assert verify(s).ok
        rotated = s.scalars(select(AuditEntry).where(AuditEntry.action == "audit.key_rotated"))
        assert rotated.one().actor == "cli"


def test_an_interrupted_rotation_is_finished_and_a_strange_key_refused(
    database: Database, settings: Settings, witnessed: Path
) -> None:
    """The process stops after the handover is stored, before the new key is in place: the
    next checkpoint finishes the rotation. A key swapped in by hand signs nothing."""
    from hub.errors import Conflict

    _control(database, witnessed)
    path = settings.effective_checkpoint_key_path
    with database.session() as s:
        handover = cp.rotate_key(s, settings, actor="test")
        wanted = cp.handed_over_to(cp.document_of(handover))
    assert cp.next_key_path(settings).is_file()  # not moved into place: "crashed" here
    _fill(database, 1, start=40)
    assert _checkpoint(database, settings).key_id == wanted
    assert not cp.next_key_path(settings).exists()
    assert cp.key_id(cp.signing_key(settings).public_key()) == wanted
    # A key replaced without a handover: refused, and the ledger is left as it was.
    kept = path.read_bytes()
    path.unlink()
    cp.new_key(path)
    _fill(database, 1, start=41)
    with database.session() as s, pytest.raises(Conflict, match="every witness would reject"):
        cp.create_checkpoint(s, settings)
    path.write_bytes(kept)  # the control: the right key signs again
    assert _checkpoint(database, settings).id == 5
    result = _check(database, _export(database, settings, witnessed))
    assert result.ok and result.checkpoints == 5, str(result)


def test_the_checkpoints_page_shows_a_rotation(
    client, auth, users: Users, database: Database, settings: Settings
) -> None:
    from hub.accounts import services as accounts

    users.make("sam", "steward")
    _fill(database, 3)
    _checkpoint(database, settings)
    auth.login("sam")
    before = client.get("/ledger/checkpoints").get_data(as_text=True)
    assert 'data-testid="rotated"' not in before and 'data-testid="handover"' not in before
    anchor = client.get("/ledger/checkpoints/hub-public-key.pem").data
    with database.session() as s:
        handover = cp.rotate_key(s, settings, actor="test")
        s.commit()
        cp.finish_rotation(settings, handover)
    after = client.get("/ledger/checkpoints").get_data(as_text=True)
    row = after.split('data-checkpoint="2"')[1].split("</tr>")[0]
    assert 'data-testid="handover"' in row and "signing key changed here" in row
    assert 'data-testid="rotated"' in after
    assert client.get("/ledger/checkpoints/hub-public-key.pem").data == anchor
    with database.session() as s:
        sam = accounts.get_user(s, "sam")
        read = accounts.create_token(s, settings, sam, "witness", ["read"], actor="t").secret
    headers = {"Authorization": f"Bearer {read}"}
    body = client.get("/api/v1/audit/checkpoints", headers=headers).get_json()
    assert body["public_key"].encode() == anchor and body["signing_key_id"] != body["key_id"]


# Keys ------------------------------------------------------------------------------------------


def test_development_signing_key_is_private_and_kept(settings: Settings) -> None:
    key = cp.signing_key(settings)
    path = settings.effective_checkpoint_key_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert cp.key_id(cp.signing_key(settings).public_key()) == cp.key_id(key.public_key())


def test_production_needs_a_ledger_key_and_a_checkpoint_key_file(tmp_path: Path) -> None:
    from hub.errors import ConfigurationError
    from hub.settings import load_settings

    base = {
        "data_dir": str(tmp_path),
        "mode": "production",
        "secret_key": "s" * 40,
        "hmac_key": "h" * 40,
    }
    with pytest.raises(ConfigurationError, match="CLEANROOM_LEDGER_KEY"):
        load_settings(base, environ={}).check_production()
    base["ledger_key"] = "l" * 40
    with pytest.raises(ConfigurationError, match="CLEANROOM_CHECKPOINT_KEY_PATH"):
        load_settings(base, environ={}).check_production()
    base["checkpoint_key_path"] = str(tmp_path / "absent.pem")
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(base, environ={}).check_production()
    cp.new_key(tmp_path / "absent.pem")
    load_settings(base, environ={}).check_production()


def test_an_older_keys_file_gains_a_ledger_key_and_keeps_the_others(tmp_path: Path) -> None:
    from hub.settings import load_settings

    (tmp_path / "keys.toml").write_text('secret_key = "s-old-secret"\nhmac_key = "h-old-hmac"\n')
    first = load_settings({"data_dir": str(tmp_path)}, environ={})
    assert (first.secret_key, first.hmac_key) == ("s-old-secret", "h-old-hmac")
    assert len(first.ledger_key) >= 48
    assert load_settings({"data_dir": str(tmp_path)}, environ={}).ledger_key == first.ledger_key


# Merkle trees and inclusion proofs ------------------------------------------------------------


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 section 2.1, literally."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return hashlib.sha256(
        b"\x01" + _reference_root(leaves[:k]) + _reference_root(leaves[k:])
    ).digest()


def test_merkle_roots_follow_rfc_6962() -> None:
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
    for n in range(0, 40):
        want = _reference_root([bytes.fromhex(h) for h in hashes[:n]]).hex()
        assert cp.merkle_root(hashes[:n]) == want, n


def test_inclusion_proofs(database: Database, settings: Settings) -> None:
    _fill(database, 12)
    first = _checkpoint(database, settings)  # covers 1-12
    _fill(database, 3, start=12)
    second = _checkpoint(database, settings)  # covers 1-16
    with database.session() as s:
        assert cp.inclusion_proof(s, 17) is None  # not covered yet
        assert cp.inclusion_proof(s, 0) is None
        for entry_id in range(1, 17):
            digest = s.get(AuditEntry, entry_id).entry_hash  # type: ignore[union-attr]
            proof = cp.inclusion_proof(s, entry_id)
            assert proof is not None and proof["checkpoint"] == second.id
            json.dumps(proof)  # plain JSON
            assert cp.verify_inclusion(proof, digest, second)
            assert cp.verify_inclusion(proof, digest, json.loads(second.document))
            assert not cp.verify_inclusion(proof, "ab" * 32, second)
            assert not cp.verify_inclusion(proof, digest, first)  # another tree
            if entry_id <= 12:
                older = cp.inclusion_proof(s, entry_id, s.get(AuditCheckpoint, first.id))
                assert older is not None and cp.verify_inclusion(older, digest, first)
        batch = cp.inclusion_proofs(s, range(0, 20))  # an export's many at once
        assert sorted(batch) == list(range(1, 17))
        assert all(batch[i] == cp.inclusion_proof(s, i) for i in batch)
        proof = cp.inclusion_proof(s, 5)
        assert proof is not None
        bent = {**proof, "path": proof["path"][:-1]}
        assert not cp.verify_inclusion(bent, s.get(AuditEntry, 5).entry_hash, second)  # type: ignore[union-attr]
        assert not cp.verify_inclusion({"nonsense": 1}, "ab" * 32, second)


# Witness stores, pushes and the periodic job ------------------------------------------------


def test_periodic_checkpoint_pushes_to_folders_and_inboxes(
    database: Database,
    settings: Settings,
    users: Users,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime, timedelta

    from hub.accounts.models import Institution
    from hub.jobs.services import PERIODIC
    from hub.notices.models import Notice

    assert "audit.checkpoint" in PERIODIC
    users.institution("st-aurelia")
    users.institution("kelvin-bio", kind="manufacturer")
    admin = users.make("ada", "contributor_admin", institution="st-aurelia")
    users.make("carl", "contributor", institution="st-aurelia")
    store = tmp_path / "kelvin-witness"
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the folder should be")
    with database.session() as s:
        cp.set_witness_store(s, "kelvin-bio", f"file://{blocker}/sub", actor="test")
    hours = [2.0]  # the workers' clock, ahead of the entries just written
    monkeypatch.setattr(cp, "clock", lambda: datetime.now(UTC) + timedelta(hours=hours[0]))
    made = cp.checkpoint_due(database, settings)
    assert made is not None and made.id == 1
    with database.session() as s:
        actions = [
            (e.action, e.target)
            for e in s.scalars(select(AuditEntry).where(AuditEntry.action.like("audit.%")))
        ]
        assert ("audit.checkpoint", "checkpoint:1") in actions
        assert ("audit.checkpoint_pushed", "institution:st-aurelia") in actions
        assert ("audit.checkpoint_push_failed", "institution:kelvin-bio") in actions
        notices = s.scalars(select(Notice)).all()
        assert [n.user_id for n in notices] == [admin.id]  # the admin, not the contributor
        assert notices[0].link == "/ledger/checkpoints"
        failed = s.scalars(select(WitnessPush).where(WitnessPush.state == "failed")).one()
        assert failed.attempts == 1
    # Within the interval nothing happens; the failed push waits for the next one.
    hours[0] = 0
    assert cp.checkpoint_due(database, settings) is None

    def attempts() -> int:
        with database.session() as s:
            return (
                s.scalars(select(WitnessPush).where(WitnessPush.state == "failed")).one().attempts
            )

    with database.session() as s:
        s.execute(update(AuditCheckpoint).values(at="2000-01-01T00:00:00Z"))
    assert cp.checkpoint_due(database, settings) is None  # only housekeeping since: none new
    assert attempts() == 1  # its failure is younger than the interval
    with database.session() as s:
        s.execute(update(WitnessPush).values(at="2000-01-01T00:00:00Z"))
    cp.checkpoint_due(database, settings)
    assert attempts() == 2  # retried at the next interval, failing again
    with database.session() as s:
        cp.set_witness_store(s, "kelvin-bio", store.as_uri(), actor="test")
        report = cp.push_pending(s, settings)
    assert report.pushed == ["kelvin-bio"] and not report.failed
    assert (store / cp.file_name(1)).is_file() and (store / cp.PUBLIC_KEY_FILE).is_file()
    with database.session() as s:
        assert verify(s).ok
        assert cp.verify_witnessed(s, store).ok
        inst = s.scalars(select(Institution).where(Institution.slug == "kelvin-bio")).one()
        assert {p.state for p in s.scalars(select(WitnessPush))} == {"pushed"}
        assert inst.witness_store == store.as_uri()


def test_an_idle_ledger_gets_no_new_checkpoint(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No checkpoint before an interval has passed since the ledger began (a new hub's
    start); afterwards none while only the checkpointing's own entries are new."""
    from datetime import UTC, datetime, timedelta

    _fill(database, 2)
    assert cp.checkpoint_due(database, settings) is None  # the ledger is younger than 60 min
    monkeypatch.setattr(cp, "clock", lambda: datetime.now(UTC) + timedelta(hours=2))
    assert cp.checkpoint_due(database, settings) is not None
    with database.session() as s:
        assert not cp._grew(s, cp.latest(s).length)  # type: ignore[union-attr]
        s.execute(update(AuditCheckpoint).values(at="2000-01-01T00:00:00Z"))
    assert cp.checkpoint_due(database, settings) is None  # due, but only housekeeping since
    _fill(database, 1, start=5)
    with database.session() as s:
        s.execute(update(AuditCheckpoint).values(at="2000-01-01T00:00:00Z"))
    assert cp.checkpoint_due(database, settings) is not None


def test_a_witness_store_must_be_a_folder_or_a_bucket(database: Database, users: Users) -> None:
    from hub.errors import BadRequest

    users.institution("st-aurelia")
    with database.session() as s:
        for bad in ("relative/folder", "file://elsewhere/x", "https://example.org/x", "s3://"):
            with pytest.raises(BadRequest, match="file:///path/to/folder"):
                cp.set_witness_store(s, "st-aurelia", bad, actor="test")
        assert cp.set_witness_store(
            s, "st-aurelia", " s3://bucket/p ", actor="t"
        ).witness_store == ("s3://bucket/p")


# Pages and the API ----------------------------------------------------------------------------


def test_admins_download_checkpoints_researchers_do_not(
    client, auth, users: Users, database: Database, settings: Settings
) -> None:
    from hub.accounts import services as accounts

    users.institution("st-aurelia")
    users.make("ada", "contributor_admin", institution="st-aurelia")
    users.make("rosa", "researcher")
    _fill(database, 4)
    made = _checkpoint(database, settings)
    auth.login("ada")
    page = client.get("/ledger/checkpoints")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'data-checkpoint="1"' in html and "Sign a checkpoint now" not in html
    assert "{" not in html.split('data-testid="checkpoints"')[1].split("</table>")[0]
    file = client.get("/ledger/checkpoints/checkpoint-000001.json")
    assert file.status_code == 200 and json.loads(file.data)["merkle_root"] == made.merkle_root
    assert client.get("/ledger/checkpoints/hub-public-key.pem").data.startswith(b"-----BEGIN")
    assert client.get("/ledger/checkpoints/checkpoint-000009.json").status_code == 404
    assert client.get("/ledger/checkpoints/..%2Fkeys.toml").status_code == 404
    assert client.post("/ledger/checkpoints").status_code in (400, 403)
    auth.logout()
    auth.login("rosa")
    assert client.get("/ledger/checkpoints").status_code == 403
    with database.session() as s:
        ada = accounts.get_user(s, "ada")
        read = accounts.create_token(s, settings, ada, "witness", ["read"], actor="t").secret
        upload = accounts.create_token(s, settings, ada, "lims", ["upload"], actor="t").secret
    resp = client.get("/api/v1/audit/checkpoints", headers={"Authorization": f"Bearer {read}"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert [c["sequence"] for c in body["checkpoints"]] == [1]
    assert body["public_key"].startswith("-----BEGIN PUBLIC KEY-----")
    assert (
        cp.check_signature(body["checkpoints"][0], cp.load_public_key(body["public_key"].encode()))
        == ""
    )
    auth_read = {"Authorization": f"Bearer {read}"}
    newer = client.get("/api/v1/audit/checkpoints?after=1", headers=auth_read)
    assert newer.get_json()["checkpoints"] == []
    bad = client.get("/api/v1/audit/checkpoints?after=x", headers=auth_read)
    assert bad.status_code == 400 and "checkpoint number" in bad.get_json()["error"]["message"]
    denied = client.get("/api/v1/audit/checkpoints", headers={"Authorization": f"Bearer {upload}"})
    assert denied.status_code == 403
    assert denied.get_json()["error"]["code"] == "insufficient_scope"


def test_steward_signs_now_and_sets_a_witness_store(
    client, auth, users: Users, database: Database, tmp_path: Path
) -> None:
    from tests.conftest import csrf_from

    users.institution("st-aurelia")
    users.make("sam", "steward")
    _fill(database, 2)
    auth.login("sam")
    token = csrf_from(client, "/admin/institutions")
    with database.session() as s:
        from hub.accounts.models import Institution

        inst_id = s.scalars(select(Institution.id).where(Institution.slug == "st-aurelia")).one()
    store = tmp_path / "aurelia-copies"
    resp = client.post(
        f"/admin/institutions/{inst_id}/witness-store",
        data={"store": store.as_uri(), "csrf_token": token},
        follow_redirects=True,
    )
    assert "ledger checkpoints now go to" in resp.get_data(as_text=True)
    bad = client.post(
        f"/admin/institutions/{inst_id}/witness-store",
        data={"store": "not a place", "csrf_token": token},
        follow_redirects=True,
    )
    assert "file:///path/to/folder" in bad.get_data(as_text=True)
    token = csrf_from(client, "/ledger/checkpoints")
    resp = client.post("/ledger/checkpoints", data={"csrf_token": token}, follow_redirects=True)
    assert "Checkpoint 1 signed" in resp.get_data(as_text=True)
    assert (store / cp.file_name(1)).is_file()
    with database.session() as s:
        assert s.scalar(select(text("count(*)")).select_from(AuditCheckpoint)) == 1


def test_checkpoints_pushed_to_an_s3_prefix_verify(
    database: Database, settings_overrides: dict, users: Users, tmp_path: Path, later: None
) -> None:
    """An institution's S3 prefix as witness store (a real S3-protocol server): what lands
    there, copied into a folder, verifies the ledger; a missing bucket fails and is retried."""
    import boto3

    from hub.settings import load_settings
    from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, s3_server

    bucket = f"kelvin-witness-{uuid.uuid4().hex[:8]}"  # moto's buckets outlive a server
    users.institution("kelvin-bio", kind="manufacturer")
    _fill(database, 5)
    with s3_server() as endpoint:
        settings = load_settings(
            {
                **settings_overrides,
                "s3_endpoint_url": endpoint,
                "s3_region": REGION,
                "s3_access_key_id": ACCESS_KEY_ID,
                "s3_secret_access_key": SECRET_ACCESS_KEY,
            },
            environ={},
        )
        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )
        with database.session() as s:
            cp.set_witness_store(s, "kelvin-bio", f"s3://{bucket}/cleanroom", actor="t")
        assert cp.checkpoint_due(database, settings) is not None
        with database.session() as s:
            push = s.scalars(select(WitnessPush)).one()
            assert (push.state, push.attempts) == ("failed", 1)
            assert "NoSuchBucket" in push.message
        client.create_bucket(Bucket=bucket)
        with database.session() as s:
            assert cp.push_pending(s, settings).pushed == ["kelvin-bio"]
        folder = tmp_path / "from-s3"
        folder.mkdir()
        listed = client.list_objects_v2(Bucket=bucket, Prefix="cleanroom/")
        for item in listed["Contents"]:
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            (folder / item["Key"].split("/")[-1]).write_bytes(body)
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint-000001.json",
        cp.PUBLIC_KEY_FILE,
    ]
    with database.session() as s:
        assert cp.verify_witnessed(s, folder).ok


def test_a_new_witness_store_receives_every_checkpoint_so_far(
    database: Database, settings: Settings, users: Users, tmp_path: Path
) -> None:
    """Checkpoints announced in the inbox, then a folder named: the folder gets the whole
    series, not just what comes next (a witness needs every checkpoint)."""
    users.institution("st-aurelia")
    for start in (0, 10):
        _fill(database, 3, start=start)
        _checkpoint(database, settings)
        with database.session() as s:
            assert cp.push_pending(s, settings).pushed == ["st-aurelia"]  # the inbox
    folder = tmp_path / "aurelia"
    with database.session() as s:
        cp.set_witness_store(s, "st-aurelia", folder.as_uri(), actor="test")
        assert cp.push_pending(s, settings).pushed == ["st-aurelia"]
    assert sorted(p.name for p in folder.glob("checkpoint-*")) == [
        cp.file_name(1),
        cp.file_name(2),
    ]
    with database.session() as s:
        result = cp.verify_witnessed(s, folder)
    assert result.ok and not result.notes, str(result)
