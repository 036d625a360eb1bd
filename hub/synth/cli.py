"""``cleanroom synth``: make a synthetic version now, in this process, with a progress bar."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.accounts.models import Institution
from hub.command import Hub, pass_hub
from hub.errors import CleanroomError
from hub.ingest.models import DatasetVersion
from hub.jobs import services as jobs

ACTOR = "cli"


@click.command("synth")
@click.option("--table", default=None, help="CDM table, e.g. batch.")
@click.option(
    "--version",
    "version_number",
    type=int,
    default=None,
    help="Released version number of the table (with --institution if several "
    "institutions have one).",
)
@click.option("--institution", default=None, help="Institution slug of the version.")
@click.option(
    "--agreement",
    default=None,
    help="Synthesise the agreement's pooled table instead of one version.",
)
@click.option(
    "--all-tables",
    is_flag=True,
    help="With --agreement: synthesise its linked tables (episode, collection, batch, "
    "release_test) together, so joins on the synthetic keys work; published all or none.",
)
@click.option(
    "--method",
    type=click.Choice(["gaussian_copula", "ctgan", "tvae"]),
    default=None,
    help="Synthesizer (default: the synth_method setting).",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_hub
def synth(
    hub: Hub,
    table: str,
    version_number: int | None,
    institution: str | None,
    agreement: str | None,
    all_tables: bool,
    method: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Synthesise a released table version (--table T --version V), an agreement's pooled
    table (--agreement SLUG --table T) or its linked tables together (--agreement SLUG
    --all-tables), score it and publish it if it passes the gates."""
    from hub.jobs.services import load_task_modules
    from hub.synth import services

    if (version_number is None) == (agreement is None):
        raise click.UsageError("give either --version (a released version) or --agreement.")
    if all_tables and (agreement is None or table is not None):
        raise click.UsageError("--all-tables goes with --agreement, without --table.")
    if table is None and not all_tables:
        raise click.UsageError("name the table with --table (or --agreement with --all-tables).")
    database = hub.require_current_schema()
    load_task_modules(hub.settings.task_modules)
    options: dict[str, Any] = {"actor": ACTOR, "method": method, "seed": seed, "max_attempts": 1}
    try:
        with database.session() as s:
            if all_tables:
                members = services.request_for_agreement_tables(
                    s, hub.settings, agreement or "", **options
                )
            elif agreement is not None:
                members = [
                    services.request_for_agreement(
                        s, hub.settings, agreement, table or "", **options
                    )
                ]
            else:
                version = _find_version(s, table or "", version_number or 0, institution)
                members = [services.request_for_version(s, hub.settings, version, **options)]
            ids, job_id = [m.id for m in members], members[0].job_id
            what = ", ".join(m.cdm_table for m in members) if all_tables else members[0].source
            label = f"{what} ({members[0].method}, seed {seed})"
    except CleanroomError as err:
        raise click.ClickException(err.message) from None
    assert job_id is not None
    with click.progressbar(length=100, label=f"synthesising {label}", file=sys.stderr) as bar:
        done = [0]

        def advance(percent: int, _message: str) -> None:
            if percent > done[0]:
                bar.update(percent - done[0])
                done[0] = percent

        state = jobs.run_now(database, hub.settings, job_id, advance)
        bar.update(100 - done[0])
    with database.session() as s:
        made = [services.get(s, i) for i in ids]
        bodies = [services.synthetic_dict(m, report=False) for m in made]
        headlines = [services.scores(m) for m in made]
        group = json.loads(made[0].report or "{}").get("group")
    if as_json:
        results = [
            {**b, "scores": h, "job_state": state} for b, h in zip(bodies, headlines, strict=True)
        ]
        click.echo(json.dumps(results if all_tables else results[0], indent=2))
    else:
        if group:
            click.echo(
                f"group {group['group_id']} of {agreement}: relationships {group['relationships']}"
            )
        for body, headline in zip(bodies, headlines, strict=True):
            _print(body, headline)
    if any(body["state"] != "published" for body in bodies):
        sys.exit(1)


def _find_version(s: Session, table: str, number: int, institution: str | None) -> DatasetVersion:
    query = (
        select(DatasetVersion)
        .join(Institution, DatasetVersion.institution_id == Institution.id)
        .where(DatasetVersion.cdm_table == table, DatasetVersion.version == number)
    )
    if institution:
        query = query.where(Institution.slug == institution)
    found = list(s.scalars(query))
    if not found:
        raise click.ClickException(
            f"no {table} version {number}" + (f" of {institution}" if institution else "") + "."
        )
    if len(found) > 1:
        slugs = ", ".join(sorted(v.institution.slug for v in found))
        raise click.ClickException(
            f"{len(found)} institutions have {table} version {number} ({slugs}): "
            "name one with --institution."
        )
    return found[0]


def _print(body: dict[str, Any], headline: dict[str, Any]) -> None:
    click.echo(
        f"synthetic version {body['id']}: {body['state']} "
        f"({body['rows']:,} rows of {body['table']}, {body['method']})"
    )
    if body["error"]:
        click.echo(f"error: {body['error']}")
        return

    def fmt(value: object) -> str:
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    click.echo(f"  quality score                {fmt(headline['quality'])}")
    click.echo(f"  DCR overfitting protection   {fmt(headline['dcr_overfitting_protection'])}")
    click.echo(f"  copied rows                  {fmt(headline['copied_rows'])}")
    click.echo(f"  identifier overlap           {fmt(headline['pii_overlap'])}")
    if headline["gates_passed"]:
        click.echo("gates: all passed; published")
    else:
        for gate in headline["failed_gates"]:
            click.echo(f"gate failed: {gate['gate']}: {gate['message']}")
