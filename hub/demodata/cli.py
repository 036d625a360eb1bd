"""``cleanroom demo-data``: write synthetic CGT process files, one folder per institution."""

from __future__ import annotations

import time
from pathlib import Path

import click
import pandas as pd

from hub.demodata.generator import generate
from hub.demodata.site_formats import Institution, SiteFormat


@click.command("demo-data")
@click.option(
    "--institutions",
    type=click.IntRange(1, 50),
    default=3,
    show_default=True,
    help="How many institutions (the demo consortium's three, then generated ones).",
)
@click.option(
    "--patients",
    type=click.IntRange(1, 100_000),
    default=200,
    show_default=True,
    help="Episodes (patients) per institution.",
)
@click.option("--seed", type=int, default=7, show_default=True, help="Same seed, same files.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, writable=True, path_type=Path),
    default=Path("demo-data"),
    show_default=True,
    help="Folder to write into; each institution gets a sub-folder (files are overwritten).",
)
def demo_data(institutions: int, patients: int, seed: int, out: Path) -> None:
    """Write synthetic CGT process data as sites keep it: own column names, units, date
    formats and file types (CSV, XLSX, Parquet), with the patient identifiers real exports
    carry. For demos and tests only."""
    started = time.perf_counter()

    def report(
        inst: Institution, fmt: SiteFormat, tables: dict[str, pd.DataFrame], paths: list[Path]
    ) -> None:
        rows = ", ".join(f"{name} {len(frame)}" for name, frame in tables.items())
        click.echo(f"{inst.slug} ({inst.kind}): {len(paths)} {fmt.key} file(s); {fmt.description}")
        click.echo(f"  rows: {rows}")

    try:
        written = generate(
            out, institutions=institutions, patients=patients, seed=seed, progress=report
        )
    except OSError as err:
        raise click.ClickException(f"cannot write the demo data into {out}: {err}") from None
    seconds = time.perf_counter() - started
    click.echo(
        f"wrote {len(written)} file(s) for {institutions} institution(s) x {patients} patients "
        f"(seed {seed}) into {out} in {seconds:.1f} s"
    )
