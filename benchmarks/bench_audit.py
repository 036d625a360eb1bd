"""Audit ledger: appending keyed entries through ``record`` against raw INSERTs of the same
rows (one transaction per append, as in use; goal <= 5x), the speed of verifying the chain
with its keys and against a witness's signed checkpoints (goal >= 20,000 entries/s), and the
time to sign a checkpoint over a large ledger (SQLite)."""

from __future__ import annotations

import argparse
import hashlib
import hmac
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert, select, text

from hub import schema
from hub.audit import checkpoints as cp
from hub.audit.models import AuditCheckpoint, AuditEntry, AuditHead
from hub.audit.services import GENESIS, canonical_json, entry_hash, record, verify
from hub.db import Database
from hub.settings import Settings, load_settings


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _bulk_fill(db: Database, settings: Settings, n: int) -> None:
    """``n`` entries exactly as ``record`` writes them, inserted in bulk (building a large
    ledger quickly; appending itself is measured separately)."""
    key = settings.ledger_key.encode()
    prev, rows = GENESIS, []
    for i in range(1, n + 1):
        at = f"2026-01-01T00:00:00.{i:06d}Z"
        detail = canonical_json({"rows": i})
        digest = entry_hash(prev, at, f"user:u{i % 50}", "upload", f"dataset:{i}", detail)
        mac = hmac.new(key, bytes.fromhex(digest), hashlib.sha256).hexdigest()
        rows.append(
            {
                "id": i,
                "at": at,
                "actor": f"user:u{i % 50}",
                "action": "upload",
                "target": f"dataset:{i}",
                "detail": detail,
                "prev_hash": prev,
                "entry_hash": digest,
                "entry_mac": mac,
            }
        )
        prev = digest
    with db.session() as s:
        for start in range(0, n, 10000):
            s.execute(insert(AuditEntry), rows[start : start + 10000])
        s.execute(insert(AuditHead).values(id=1, last_id=n, last_hash=prev))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000, help="appends to time")
    parser.add_argument(
        "--large", type=int, default=100_000, help="entries of the ledger a checkpoint covers"
    )
    args = parser.parse_args()
    n, large = args.entries, args.large
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            {"data_dir": tmp, "database_url": f"sqlite:///{Path(tmp) / 'bench.db'}"}, environ={}
        )
        db = Database(settings.effective_database_url)
        schema.upgrade(db)
        start = time.perf_counter()
        for i in range(n):
            with db.engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO login_attempts (address, username, succeeded, at) "
                        "VALUES (:a, :u, :s, CURRENT_TIMESTAMP)"
                    ),
                    {"a": "10.0.0.1", "u": f"user{i}", "s": True},
                )
        base = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(n):
            with db.session() as s:
                record(
                    s,
                    actor=f"user:u{i}",
                    action="upload",
                    target=f"dataset:{i}",
                    detail={"rows": i},
                )
        appends = time.perf_counter() - start
        with db.session() as s:
            assert s.scalar(select(AuditEntry.entry_mac).limit(1))  # keyed
        db.dispose()

        settings = load_settings(
            {"data_dir": tmp, "database_url": f"sqlite:///{Path(tmp) / 'large.db'}"}, environ={}
        )
        db = Database(settings.effective_database_url)
        schema.upgrade(db)
        _bulk_fill(db, settings, large)
        cp.signing_key(settings)  # made once, not timed
        start = time.perf_counter()
        with db.session() as s:
            first = cp.create_checkpoint(s, settings)
        signing = time.perf_counter() - start
        assert first is not None and first.length == large
        # A second checkpoint after 10 % more entries (what each interval costs later).
        more = large // 10
        with db.session() as s:
            for i in range(more):
                record(s, actor="user:x", action="upload", target=f"dataset:{i}")
        start = time.perf_counter()
        with db.session() as s:
            second = cp.create_checkpoint(s, settings)
        signing_next = time.perf_counter() - start
        assert second is not None
        witness = Path(tmp) / "witness"
        with db.session() as s:
            docs = list(s.scalars(select(AuditCheckpoint.document).order_by(AuditCheckpoint.id)))
        cp.write_folder(witness, docs, cp.public_pem(cp.signing_key(settings).public_key()))
        with db.session() as s:
            total = s.get(AuditHead, 1).last_id  # type: ignore[union-attr]
        start = time.perf_counter()
        with db.session() as s:
            chain = verify(s)
        check = time.perf_counter() - start
        start = time.perf_counter()
        with db.session() as s:
            witnessed = cp.verify_witnessed(s, witness)
        check_witness = time.perf_counter() - start
        assert chain.ok and witnessed.ok, (str(chain), str(witnessed))
        start = time.perf_counter()
        with db.session() as s:
            proof = cp.inclusion_proof(s, large // 2)
        proving = time.perf_counter() - start
        start = time.perf_counter()
        with db.session() as s:
            many = cp.inclusion_proofs(s, range(1, large, large // 1000))
        proving_many = time.perf_counter() - start
        assert len(many) == 1000
        assert proof is not None and cp.verify_inclusion(proof, proof["entry_hash"], second)
        db.dispose()

    ratio = appends / base
    chain_rate = total / check
    witness_rate = total / check_witness
    both_rate = total / (check + check_witness)
    print(f"{n} appends, one transaction each")
    print(f"baseline raw INSERT:   {base:.3f} s ({n / base:.0f}/s)")
    print(f"audit.record (keyed):  {appends:.3f} s ({n / appends:.0f}/s)")
    print(f"ratio record/baseline: {ratio:.2f}x (goal <= 5x: {_met(ratio <= 5)})")
    print(f"ledger of {total} keyed entries, two signed checkpoints:")
    print(f"  checkpoint over {large} entries: {signing:.2f} s")
    print(f"  next checkpoint (+{more + 2} entries): {signing_next:.2f} s")
    print(f"  inclusion proof of one entry: {proving:.2f} s")
    print(f"  inclusion proofs of 1000 entries at once (an export): {proving_many:.2f} s")
    print(f"  verify chain and keys:      {check:.2f} s ({chain_rate:.0f} entries/s)")
    print(f"  verify against witness:     {check_witness:.2f} s ({witness_rate:.0f} entries/s)")
    print(
        f"  both (`audit verify --checkpoints`): {both_rate:.0f} entries/s "
        f"(goal >= 20000/s: {_met(both_rate >= 20000)})"
    )


if __name__ == "__main__":
    main()
