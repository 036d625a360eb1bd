"""``cleanroom agreement``: apply agreement YAML, list, show and move agreements."""

from __future__ import annotations

from pathlib import Path

import click

from hub.agreements import services
from hub.command import Hub, pass_hub

ACTOR = "cli"


@click.group()
def agreement() -> None:
    """Data-sharing agreements (docs/agreements.md)."""


@agreement.command("apply")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--submit", is_flag=True, help="Also send a draft out for signatures.")
@pass_hub
def agreement_apply(hub: Hub, file: Path, submit: bool) -> None:
    """Create or update the agreement in FILE (idempotent: the same file changes nothing)."""
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise click.ClickException(f"{file}: cannot read: {err}") from None
    try:
        with hub.require_current_schema().session() as s:
            stored, what = services.apply(s, text, actor=ACTOR, submit=submit)
            slug, state = stored.slug, stored.state
    except services.InvalidAgreement as err:
        raise click.ClickException(f"{file}: {err.cli_message}") from None
    if what == "unchanged":
        click.echo(f"agreement {slug} unchanged ({state}): the file matches what is stored")
    else:
        click.echo(f"agreement {slug} {what} ({state})")


@agreement.command("list")
@pass_hub
def agreement_list(hub: Hub) -> None:
    """List agreements with their state now (expiry included)."""
    with hub.require_current_schema().session() as s:
        for stored in services.all_records(s):
            click.echo(f"{stored.slug:<28} {services.state_now(stored).value:<20} {stored.title}")


@agreement.command("show")
@click.argument("slug")
@pass_hub
def agreement_show(hub: Hub, slug: str) -> None:
    """Print an agreement's state, signatures, terms and compiled rules."""
    from policies import store

    with hub.require_current_schema().session() as s:
        stored = services.get(s, slug)
        agreement = services.contract_of(stored)
        who = services.subjects(s, agreement)
        click.echo(f"{stored.slug}: {agreement.title}")
        click.echo(f"state: {agreement.state_at().value} (stored: {stored.state})")
        click.echo(f"terms digest: {stored.digest}")
        signed = {sig.institution for sig in agreement.valid_signatures()}
        for party in agreement.parties:
            roles = ", ".join(
                r
                for r, on in (("contributor", party.contributor), ("recipient", party.recipient))
                if on
            )
            mark = "signed" if party.institution in signed else "not signed"
            click.echo(f"  party {party.institution:<24} {roles:<24} {mark}")
        for problem in who.unmatched:
            click.echo(f"  researcher {problem}")
        click.echo("rules:")
        for rule in store.load_rules(s, [agreement.domain]):
            click.echo("  " + ", ".join(rule))


def _move(event: str, help_text: str) -> click.Command:
    @click.argument("slug")
    @pass_hub
    def command(hub: Hub, slug: str) -> None:
        with hub.require_current_schema().session() as s:
            state = services.transition(s, services.get(s, slug), event, actor=ACTOR)
        click.echo(f"agreement {slug}: {event} done; it is now {state.value}")

    command.__doc__ = help_text
    return agreement.command(event)(command)


for _event, _help in (
    ("submit", "Send a draft out for signatures."),
    ("revise", "Return an agreement awaiting signatures to draft (signatures dropped)."),
    ("activate", "Activate an agreement every party has signed."),
    ("suspend", "Suspend an active agreement: access ends on the next request everywhere."),
    ("resume", "Resume a suspended agreement."),
    ("terminate", "Terminate an agreement for good."),
):
    _move(_event, _help)
