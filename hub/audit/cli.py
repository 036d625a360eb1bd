"""``cleanroom audit``."""

from __future__ import annotations

import click
from sqlalchemy import select

from hub.audit.models import AuditEntry
from hub.audit.services import verify
from hub.command import Hub, pass_hub


@click.group()
def audit() -> None:
    """The hash-chained audit ledger."""


@audit.command("verify")
@pass_hub
def audit_verify(hub: Hub) -> None:
    """Check the whole chain; name every entry edited, deleted or reordered."""
    with hub.require_current_schema().session() as s:
        result = verify(s)
    if not result.ok:
        raise click.ClickException(str(result))
    click.echo(str(result))


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True)
@pass_hub
def audit_tail(hub: Hub, count: int) -> None:
    """Print the newest entries."""
    with hub.require_current_schema().session() as s:
        rows = s.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(count)).all()
    for e in reversed(rows):
        click.echo(f"{e.id:>7} {e.at} {e.actor:<24} {e.action:<18} {e.target} {e.detail}")
