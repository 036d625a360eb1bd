"""The ledger's background job: verify the whole chain and record the outcome."""

from __future__ import annotations

from typing import Any

from hub.audit.services import record, verify
from hub.jobs.services import JobContext, task


@task("audit.verify")
def verify_audit(ctx: JobContext) -> dict[str, Any]:
    """Verify the audit ledger's chain and record the outcome in the ledger itself."""
    ctx.progress(5, "reading the ledger")
    with ctx.database.session() as s:
        result = verify(s)
    ctx.progress(90, "recording the result")
    with ctx.database.session() as s:
        record(
            s,
            actor="system",
            action="audit.verify",
            target="ledger",
            detail={"ok": result.ok, "entries": result.entries, "problem": result.problem},
        )
    return {"ok": result.ok, "entries": result.entries, "problem": result.problem}
