"""``cleanroom upload``: what a LIMS script does, from the command line, with progress."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click
import requests

from hub.command import Hub, pass_hub


class _ProgressReader:
    """A file wrapper that advances a progress bar as requests streams it."""

    def __init__(self, path: Path, bar: Any):
        self.fh = path.open("rb")
        self.size = path.stat().st_size
        self.bar = bar

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        chunk = self.fh.read(n if n and n > 0 else 1 << 20)
        self.bar.update(len(chunk))
        return chunk

    def close(self) -> None:
        self.fh.close()


def _error(resp: requests.Response) -> str:
    try:
        err = resp.json()["error"]
        return f"{err['message']} ({resp.status_code} {err['code']})"
    except (ValueError, KeyError, TypeError):
        return f"the hub answered {resp.status_code}"


@click.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--table",
    default="",
    help="CDM table, e.g. batch (not for a FHIR R5 file: it fills the tables it has records for).",
)
@click.option("--sheet", default="", help="Workbook sheet (XLSX with several sheets).")
@click.option("--url", default=None, help="Hub URL (default: the public_url setting).")
@click.option(
    "--token",
    envvar="CLEANROOM_TOKEN",
    required=True,
    help="API token with the upload scope (or set CLEANROOM_TOKEN).",
)
@click.option(
    "--additional-rows",
    is_flag=True,
    help="Add these rows beside the released version of the table instead of replacing it.",
)
@click.option("--wait/--no-wait", default=True, help="Follow the processing job.")
@pass_hub
def upload(
    hub: Hub,
    file: Path,
    table: str,
    sheet: str,
    url: str | None,
    token: str,
    additional_rows: bool,
    wait: bool,
) -> None:
    """Upload FILE into quarantine over the JSON API and follow its processing. Released,
    it replaces the institution's released version of the table unless --additional-rows.
    A FHIR R5 Bundle or NDJSON file becomes one version per table it fills."""
    base = (url or hub.settings.public_url).rstrip("/")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    params = {"table": table, "filename": file.name, "sheet": sheet}
    if additional_rows:
        params["additional_rows"] = "true"
    size = os.path.getsize(file)
    try:
        with click.progressbar(length=size, label=f"uploading {file.name}", file=sys.stderr) as bar:
            body = _ProgressReader(file, bar)
            try:
                resp = requests.post(
                    f"{base}/api/v1/uploads",
                    params=params,
                    data=body,
                    headers=headers,
                    timeout=(10, 3600),
                )
            finally:
                body.close()
        if resp.status_code != 201:
            raise click.ClickException(_error(resp))
        answer = resp.json()
        versions = answer.get("versions") or [answer]
        for version in versions:
            click.echo(
                f"uploaded: dataset version {version['id']} ({version['table']}"
                f" v{version['version']}, sha256 {version['sha256'][:12]}…)"
            )
        for gap in answer.get("upload_first") or []:
            click.echo(f"warning: {gap['message'].replace('`', '')}", err=True)
        if not wait:
            return
        for version in versions:
            _follow(base, headers, version["id"])
    except requests.ConnectionError:
        raise click.ClickException(f"cannot reach the hub at {base}; check --url.") from None


@click.command("export-fhir")
@click.argument("version_id", type=int)
@click.option(
    "--form",
    type=click.Choice(["ndjson", "bundle"]),
    default="ndjson",
    show_default=True,
    help="NDJSON (one resource a line) or one collection Bundle.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write.",
)
@click.option("--url", default=None, help="Hub URL (default: the public_url setting).")
@click.option(
    "--token",
    envvar="CLEANROOM_TOKEN",
    required=True,
    help="API token with the read or upload scope (or set CLEANROOM_TOKEN).",
)
@pass_hub
def export_fhir(
    hub: Hub, version_id: int, form: str, out: Path, url: str | None, token: str
) -> None:
    """Write your institution's released dataset version VERSION_ID as FHIR R5 (the rows as
    released, de-identified) to --out, over the JSON API."""
    base = (url or hub.settings.public_url).rstrip("/")
    name = "fhir.ndjson" if form == "ndjson" else "fhir-bundle.json"
    try:
        resp = requests.get(
            f"{base}/api/v1/uploads/{version_id}/{name}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=(10, 600),
        )
    except requests.ConnectionError:
        raise click.ClickException(f"cannot reach the hub at {base}; check --url.") from None
    if resp.status_code != 200:
        raise click.ClickException(_error(resp))
    partial = out.with_name(out.name + ".part")
    partial.write_bytes(resp.content)
    partial.replace(out)  # a file that is there is whole
    left = resp.headers.get("X-Cleanroom-Left-Out", "")
    click.echo(f"wrote {out} ({len(resp.content):,} bytes, FHIR R5 {form})")
    if left:
        click.echo(f"left out (no FHIR form): {left}", err=True)


def _follow(base: str, headers: dict[str, str], version_id: int) -> None:
    last = -1
    with click.progressbar(length=100, label="processing", file=sys.stderr) as bar:
        while True:
            resp = requests.get(f"{base}/api/v1/uploads/{version_id}", headers=headers, timeout=30)
            if resp.status_code != 200:
                raise click.ClickException(_error(resp))
            body = resp.json()
            progress = body["progress"]
            if progress["progress"] > last:
                bar.update(progress["progress"] - max(last, 0))
                last = progress["progress"]
            if not progress["active"]:
                break
            time.sleep(0.5)
    state = body["state"]
    if state == "failed":
        raise click.ClickException(body.get("error") or "processing failed")
    click.echo(
        f"dataset version {version_id}: {state.replace('_', ' ')}"
        + (
            f" — confirm the mapping at {base}/datasets/{version_id}"
            if state == "awaiting_mapping"
            else ""
        )
    )


@click.group()
def pool() -> None:
    """The pool of released, de-identified data."""


@pool.command("rotate-keys")
@click.option("--now", is_flag=True, help="Run here and wait, instead of queueing for a worker.")
@pass_hub
def pool_rotate_keys(hub: Hub, now: bool) -> None:
    """Move every stored pseudonym to the current key chain.

    First append the old key to `hmac_previous_keys` and set a new `hmac_key` (in every
    hub and worker process), then run this. Without --now the job is queued for a worker."""
    from sqlalchemy import func, select

    from hub.ingest.models import DatasetVersion
    from hub.jobs.services import Worker, enqueue, get_job, load_task_modules

    load_task_modules(hub.settings.task_modules)
    database = hub.require_current_schema()
    epoch = len(hub.settings.key_chain)
    with database.session() as s:
        behind = s.scalar(
            select(func.count()).select_from(DatasetVersion).where(DatasetVersion.key_epoch < epoch)
        )
        job_id = enqueue(s, "pool.rotate_keys", {}, actor="cli", settings=hub.settings).id
    click.echo(f"key chain has {epoch} key(s); {behind} version(s) are behind; job {job_id}")
    if not now:
        click.echo("queued: a running worker (`cleanroom worker` or `cleanroom up`) will do it.")
        return
    worker = Worker(database, hub.settings, worker_id="cli-rotate")
    while worker.run_once() is not None:
        pass
    with database.session() as s:
        job = get_job(s, job_id)
        if job.state != "succeeded":
            raise click.ClickException(f"rotation {job.state}: {job.error or job.message}")
        click.echo(f"rotated: {job.result}")
