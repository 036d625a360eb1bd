"""``cleanroom deid``: de-identify one CSV, Excel or Parquet file with the full engine.

Imports only click, pandas (with pyarrow/openpyxl) and :mod:`anonymisation`: the hub adds
the command to its group, never the other way round.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import click
import pandas as pd

from anonymisation.identifiers import CLASSES

if TYPE_CHECKING:  # the engine pulls in Presidio and spaCy: import it only when run
    from anonymisation.engine import EngineResult

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
EXCEL_SUFFIXES = (".xlsx", ".xlsm")
PARQUET_SUFFIXES = (".parquet", ".pq")
ENCODINGS = ("utf-8-sig", "cp1252")


def read_table(path: Path, sheet: str | None = None) -> pd.DataFrame:
    """Read a CSV (delimiter sniffed; UTF-8, else Windows-1252), an Excel sheet or a Parquet
    file; text formats are read as strings. Raises ``click.ClickException`` on failure."""
    suffix = path.suffix.lower()
    try:
        if suffix in CSV_SUFFIXES:
            for encoding in ENCODINGS:
                try:
                    return pd.read_csv(
                        path, sep=None, engine="python", dtype=str, encoding=encoding
                    )
                except UnicodeDecodeError:
                    continue
            raise click.ClickException(
                f"cannot read {path}: not UTF-8 or Windows-1252 text; re-save it as UTF-8 CSV"
            )
        if suffix in EXCEL_SUFFIXES:
            return pd.read_excel(path, sheet_name=sheet or 0, dtype=str, engine="openpyxl")
        if suffix in PARQUET_SUFFIXES:
            return pd.read_parquet(path)
    except click.ClickException:
        raise
    except Exception as err:  # any reader failure becomes one readable line
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise click.ClickException(f"cannot read {path}: {detail}") from None
    raise click.ClickException(
        f"cannot read {path}: unsupported file type {suffix or '(none)'}; "
        "use .csv, .xlsx or .parquet"
    )


def read_hints(path: Path | None) -> dict[str, str]:
    """``{column: identifier class}`` from a JSON file, checked against the known classes."""
    if path is None:
        return {}
    try:
        hints = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise click.ClickException(f"cannot read hints {path}: {err}") from None
    if not isinstance(hints, Mapping) or not all(isinstance(v, str) for v in hints.values()):
        raise click.ClickException(f"hints {path} must be a JSON object of column: class")
    bad = sorted(f"{c}={v}" for c, v in hints.items() if v not in CLASSES)
    if bad:
        raise click.ClickException(
            f"unknown identifier class in {path}: {', '.join(bad)} (allowed: {', '.join(CLASSES)})"
        )
    return {str(c): v for c, v in hints.items()}


def load_key(env: str) -> bytes:
    """The HMAC key from the environment variable ``env`` (UTF-8, at least 16 bytes)."""
    value = os.environ.get(env, "")
    if not value:
        raise click.ClickException(
            f"no pseudonymisation key: set the environment variable {env} to a secret of at "
            "least 16 bytes (the same key at every site, so pseudonyms link)"
        )
    key = value.encode("utf-8")
    if len(key) < 16:
        raise click.ClickException(f"the key in {env} is too short: use at least 16 bytes")
    return key


def _write(result: EngineResult, out: Path, report: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.frame.to_parquet(out, index=False)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(
            json.dumps(result.report, indent=2, default=str, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
    except Exception as err:  # report the failure, not a traceback
        raise click.ClickException(f"cannot write the output: {err}") from None


@click.command("deid")
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="De-identified table to write (Parquet).",
)
@click.option(
    "--report",
    "report",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON report of every column's class, action and examples.",
)
@click.option(
    "--hints",
    "hints_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="JSON {column: class} hints, e.g. the CDM table's identifier classes "
    "(direct_identifier, linkable_identifier, quasi_identifier, sensitive, free_text, safe).",
)
@click.option(
    "--key-env",
    default="CLEANROOM_HMAC_KEY",
    show_default=True,
    help="Environment variable holding the HMAC pseudonymisation key.",
)
@click.option("--k", "k", default=5, show_default=True, type=click.IntRange(min=1))
@click.option("--sheet", default=None, help="Excel sheet name (default: the first sheet).")
@click.option("--no-scrub", is_flag=True, help="Drop free-text columns instead of scrubbing them.")
def deid(
    input_path: Path,
    out: Path,
    report: Path,
    hints_path: Path | None,
    key_env: str,
    k: int,
    sheet: str | None,
    no_scrub: bool,
) -> None:
    """De-identify INPUT (CSV, XLSX or Parquet) into a Parquet file and a JSON report.

    Columns are classified (with --hints when given: CDM-table hints are passed this way),
    direct identifiers dropped, linkable identifiers pseudonymised with the key from
    --key-env, quasi-identifiers generalised until k-anonymous, free text scrubbed."""
    from anonymisation.engine import deidentify_frame, progress_steps

    key = load_key(key_env)
    hints = read_hints(hints_path)
    if not input_path.is_file():
        raise click.ClickException(f"cannot read {input_path}: no such file")
    frame = read_table(input_path, sheet)
    unknown = sorted(set(hints) - {str(c) for c in frame.columns})
    if unknown:
        click.secho(
            f"warning: hints for absent columns: {', '.join(unknown)}", fg="yellow", err=True
        )
    with click.progressbar(
        length=progress_steps(len(frame.columns)),
        label="de-identifying",
        file=sys.stderr,
    ) as bar:

        def progress(done: int, _label: str) -> None:
            bar.update(done - bar.pos)

        try:
            result = deidentify_frame(
                frame, key=key, hints=hints, k=k, scrub_free_text=not no_scrub, progress=progress
            )
        except ValueError as err:
            raise click.ClickException(f"de-identification failed: {err}") from None
    _write(result, out, report)
    rep = result.report
    for item in rep["attention"]:
        click.secho(f"attention: {item}", fg="yellow", err=True)
    click.echo(
        f"wrote {out} ({rep['rows_out']} of {rep['rows_in']} rows, "
        f"{len(result.frame.columns)} columns; k={rep['risk']['k_after']}) and {report}"
    )
