"""Audit ledger: appending through ``record`` against raw INSERTs of the same rows, and the
speed of ``verify`` over the whole chain (SQLite, one transaction per append as in use)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from hub import schema
from hub.audit.services import record, verify
from hub.db import Database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", type=int, default=2000)
    args = parser.parse_args()
    n = args.entries
    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{Path(tmp) / 'bench.db'}")
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
        start = time.perf_counter()
        with db.session() as s:
            result = verify(s)
        check = time.perf_counter() - start
        assert result.ok and result.entries == n
        db.dispose()
    print(f"{n} appends, one transaction each")
    print(f"baseline raw INSERT:  {base:.3f} s ({n / base:.0f}/s)")
    print(f"audit.record:         {appends:.3f} s ({n / appends:.0f}/s)")
    print(f"ratio record/baseline: {appends / base:.2f}x (target <= 5x)")
    print(f"audit.verify: {check:.3f} s ({n / check:.0f} entries/s, target >= 20000/s)")


if __name__ == "__main__":
    main()
