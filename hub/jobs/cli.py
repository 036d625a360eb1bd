"""``cleanroom job``."""

from __future__ import annotations

import json

import click
from sqlalchemy import select

from hub.command import Hub, pass_hub
from hub.jobs.models import Job
from hub.jobs.services import enqueue, get_job, job_dict, load_task_modules


@click.group()
def job() -> None:
    """The job queue."""


@job.command("enqueue")
@click.argument("kind")
@click.option("--payload", default="{}", help="JSON object handed to the job.")
@pass_hub
def job_enqueue(hub: Hub, kind: str, payload: str) -> None:
    """Queue a job of KIND (e.g. audit.verify)."""
    try:
        data = json.loads(payload)
    except json.JSONDecodeError as err:
        raise click.ClickException(f"--payload is not valid JSON: {err.msg}") from None
    if not isinstance(data, dict):
        raise click.ClickException("--payload must be a JSON object")
    load_task_modules(hub.settings.task_modules)
    with hub.require_current_schema().session() as s:
        j = enqueue(s, kind, data, actor="cli", settings=hub.settings)
        job_id = j.id
    click.echo(job_id)


@job.command("list")
@click.option("-n", "count", default=20, show_default=True)
@pass_hub
def job_list(hub: Hub, count: int) -> None:
    """Newest jobs first."""
    with hub.require_current_schema().session() as s:
        for j in s.scalars(select(Job).order_by(Job.id.desc()).limit(count)):
            click.echo(
                f"{j.id:>6} {j.kind:<20} {j.state:<10} {j.progress:>3}% "
                f"attempts={j.attempts} {j.error or j.message}"
            )


@job.command("show")
@click.argument("job_id", type=int)
@pass_hub
def job_show(hub: Hub, job_id: int) -> None:
    """A job as JSON."""
    with hub.require_current_schema().session() as s:
        # The CLI runs on the server, with the database's own access: the whole job.
        click.echo(json.dumps(job_dict(get_job(s, job_id), content=True), indent=2))
