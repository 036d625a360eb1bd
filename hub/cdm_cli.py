"""``cleanroom cdm``: the common data model as a contract other projects can use (its version,
and its export as JSON Schema or as a Frictionless Data Package). Needs no database."""

from __future__ import annotations

from pathlib import Path

import click

from contracts.cdm import load_cdm
from contracts.export import FORMATS, write_export


@click.group()
def cdm() -> None:
    """The common data model (CDM): its version and its export in standard formats."""


@cdm.command("version")
def cdm_version() -> None:
    """Print the CDM's semantic version (e.g. 1.0.0)."""
    click.echo(load_cdm().version)


@cdm.command("export")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    required=True,
    help="jsonschema: one JSON Schema (draft 2020-12) per table, for one row; "
    "frictionless: a Data Package (datapackage.json) with one Table Schema per table.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder to write into (created if missing; files of the same names are replaced).",
)
def cdm_export(fmt: str, out: Path) -> None:
    """Write the CDM as files another project can validate its data against."""
    if out.exists() and not out.is_dir():
        raise click.ClickException(f"--out {out} is a file; name a folder to write into.")
    model = load_cdm()
    try:
        written = write_export(fmt, out, model)
    except OSError as err:
        raise click.ClickException(
            f"cannot write the export into {out}: {err.strerror or err}; "
            "choose a folder you may write to."
        ) from None
    what = "a Data Package" if fmt == "frictionless" else f"{len(written)} JSON Schemas"
    click.echo(f"wrote the CDM {model.version} as {what} into {out}:")
    for path in written:
        click.echo(f"  {path.name}")
