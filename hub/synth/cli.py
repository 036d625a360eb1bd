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

ACTOR = "cli"


@click.command("synth")
@click.option("--table", required=True, help="CDM table, e.g. batch.")
@click.option("--version", "version_number", type=int, default=None,
              help="Released version number of the table (with --institution if several "
                   "institutions have one).")
@click.option("--institution", default=None, help="Institution slug of the version.")
@click.option("--agreement", default=None,
              help="Synthesise the agreement's pooled table instead of one version.")
@click.option("--method", type=click.Choice(["gaussian_copula", "ctgan", "tvae"]), default=None,
              help="Synthesizer (default: the synth_method setting).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_hub
def synth(
    hub: Hub,
    table: str,
    version_number: int | None,
    institution: str | None,
    agreement: str | None,
    method: str | None,
    seed: int,
    as_json: bool,
) -> None:
    """Synthesise a released table version (--table T --version V) or an agreement's pooled
    table (--agreement SLUG --table T), score it and publish it if it passes the gates."""
    from hub.jobs.services import load_task_modules
    from hub.synth import services

    if (version_number is None) == (agreement is None):
        raise click.UsageError("give either --version (a released version) or --agreement.")
    database = hub.require_current_schema()
    load_task_modules(hub.settings.task_modules)
    try:
        with database.session() as s:
            if agreement is not None:
                synthetic = services.request_for_agreement(
                    s, hub.settings, agreement, table, actor=ACTOR, method=method, seed=seed,
                    max_attempts=1,
                )
            else:
                version = _find_version(s, table, version_number or 0, institution)
                synthetic = services.request_for_version(
                    s, hub.settings, version, actor=ACTOR, method=method, seed=seed,
                    max_attempts=1,
                )
            synthetic_id, job_id = synthetic.id, synthetic.job_id
            label = f"{synthetic.source} ({synthetic.method}, seed {seed})"
    except CleanroomError as err:
        raise click.ClickException(err.message) from None
    assert job_id is not None
    with click.progressbar(length=100, label=f"synthesising {label}", file=sys.stderr) as bar:
        done = [0]

        def advance(percent: int, _message: str) -> None:
            if percent > done[0]:
                bar.update(percent - done[0])
                done[0] = percent

        state = services.run_inline(database, hub.settings, job_id, advance)
        bar.update(100 - done[0])
    with database.session() as s:
        synthetic = services.get(s, synthetic_id)
        body = services.synthetic_dict(synthetic, report=False)
        headline = services.scores(synthetic)
    if as_json:
        click.echo(json.dumps({**body, "scores": headline, "job_state": state}, indent=2))
    else:
        _print(body, headline)
    if body["state"] != "published":
        sys.exit(1)


def _find_version(
    s: Session, table: str, number: int, institution: str | None
) -> DatasetVersion:
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
    click.echo(f"synthetic version {body['id']}: {body['state']} "
               f"({body['rows']:,} rows of {body['table']}, {body['method']})")
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
