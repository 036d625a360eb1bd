"""Files the hub writes for download, safe to open in a spreadsheet.

Every header and every text cell goes through :func:`csv_safe`: text starting with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'`` so Excel and
LibreOffice show it as text instead of running it as a formula (OWASP, "CSV Injection").
A plain number (``-3.5``, ``+2``, ``1e-3``) is left alone: a spreadsheet reads it as the
number it is and runs nothing. Every CSV field is quoted as well, so a separator inside a
value (``a;=1+1`` opened with ``;`` as the delimiter) cannot start a new cell. The same
rule, vectorised, is :func:`csv_safe_series`; :func:`xlsx_bytes` applies it to workbooks;
:func:`formula_cells` finds such cells in an upload, for the contributor's review.
"""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from hub.audit.services import record

if TYPE_CHECKING:
    import pandas as pd
    from sqlalchemy.orm import Session

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""Characters that make a spreadsheet read a cell as a formula."""

PLAIN_NUMBER: Final = re.compile(r"[+-]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][+-]?\d+)?%?")
"""A signed number, nothing else: no formula, whatever its first character."""

QUOTING: Final = csv.QUOTE_ALL
"""Every field quoted: a separator or quote in a value stays inside its cell."""


def is_formula(text: str) -> bool:
    """Would a spreadsheet run ``text`` (or read it as something other than the text)?"""
    return text.startswith(FORMULA_STARTS) and PLAIN_NUMBER.fullmatch(text) is None


def csv_safe(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet will run as a formula; ``None`` and NaN are
    empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return "'" + text if is_formula(text) else text


def formula_mask(text: pd.Series) -> pd.Series:
    """Which values of a column of strings a spreadsheet would run (see :func:`is_formula`)."""
    risky = text.str.startswith(FORMULA_STARTS).fillna(False).astype(bool)
    if risky.any():
        plain = text[risky].str.fullmatch(PLAIN_NUMBER.pattern).fillna(False).astype(bool)
        risky.loc[plain[plain].index] = False
    return risky


def csv_safe_series(values: pd.Series) -> pd.Series:
    """:func:`csv_safe` over a whole column at once (missing values are empty)."""
    text = values.astype(object).where(values.notna(), "").astype(str)
    return text.where(~formula_mask(text), "'" + text)


class SafeWriter:
    """A :func:`csv.writer` whose every row, the header included, is made safe first."""

    def __init__(self, fh: Any) -> None:
        self._writer = csv.writer(fh, quoting=QUOTING)

    def writerow(self, values: Iterable[object]) -> None:
        self._writer.writerow([csv_safe(v) for v in values])


def xlsx_bytes(rows: Iterable[Sequence[object]], *, title: str = "Sheet1") -> bytes:
    """A one-sheet workbook of ``rows``. Text cells are made safe as in CSV (openpyxl
    would store ``=…`` as a live formula); numbers, dates and booleans stay typed."""
    from openpyxl import Workbook

    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = title[:31] or "Sheet1"
    for row in rows:
        sheet.append([csv_safe(v) if isinstance(v, str) else v for v in row])
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def formula_cells(
    frame: pd.DataFrame, *, examples: int = 3, first_row: int = 2
) -> list[dict[str, Any]]:
    """Per column of ``frame`` (an upload as text), the cells a spreadsheet would run:
    ``{"column", "count", "rows", "examples"}``; columns without any are left out.
    ``first_row`` is the file row of the frame's first row (row 1 is the header)."""
    found: list[dict[str, Any]] = []
    for name in frame.columns:
        values = frame[name]
        text = values.astype(object).where(values.notna(), "").astype(str)
        risky = formula_mask(text).to_numpy()
        count = int(risky.sum())
        if not count:
            continue
        positions = risky.nonzero()[0]
        shown = list(dict.fromkeys(text.iloc[positions[: examples * 4]]))[:examples]
        found.append(
            {
                "column": str(name),
                "count": count,
                "rows": [int(p) + first_row for p in positions[:examples]],
                "examples": [s if len(s) <= 40 else s[:39] + "…" for s in shown],
            }
        )
    return found


def record_export(
    session: Session, *, actor: str, target: str, fmt: str, detail: dict[str, Any] | None = None
) -> None:
    """An ``export.download`` ledger entry: who took which file out of the hub, in what
    format. Every download view calls it before the first byte leaves."""
    record(
        session,
        actor=actor,
        action="export.download",
        target=target,
        detail={"format": fmt, **(detail or {})},
    )


# FHIR R5 -------------------------------------------------------------------------------------

FHIR_FORMATS: Final = {"fhir-ndjson": "ndjson", "fhir-bundle": "bundle"}
"""The download formats that carry FHIR R5, and the form ``contracts.fhir`` writes for each."""

FHIR_FILES: Final = {
    "fhir-ndjson": ("ndjson", "application/fhir+ndjson"),
    "fhir-bundle": ("json", "application/fhir+json"),
}
"""Per FHIR download format: the file's extension and its media type."""


class FhirExportError(Exception):
    """Rows that cannot be written as FHIR R5; the message says why and what to use instead."""


@dataclass(frozen=True)
class FhirFile:
    """A FHIR R5 file ready to send, and the columns left out of it: ``left_out`` maps
    ``table.column`` to why, in words (see :func:`fhir_file`)."""

    body: bytes
    left_out: dict[str, str] = field(default_factory=dict)

    def note(self) -> str:
        """The left-out columns as one plain sentence (empty when none was)."""
        if not self.left_out:
            return ""
        by_reason: dict[str, list[str]] = {}
        for name, why in self.left_out.items():
            by_reason.setdefault(why, []).append(name)
        listed = "; ".join(f"{', '.join(names)} ({why})" for why, names in by_reason.items())
        return f"Left out of the FHIR file, as FHIR R5 has no place for them: {listed}."


_DAY_OFFSETS = "days since each patient's first date after de-identification, not calendar dates"
_PARTIAL_DATES = "months or years after de-identification, not whole dates"
_RANGES = "ranges such as 60-79 after de-identification, not single numbers"


def _not_fhir_typed(column: Any, values: pd.Series) -> str:
    """Why the (non-missing) ``values`` of a CDM ``column`` cannot take the column's FHIR R5
    type, or "": de-identification writes dates as day offsets (or months where no anchor
    exists) and ages as bands, which the mapping's dates and quantities cannot carry."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype, is_datetime64_any_dtype, is_numeric_dtype

    from contracts.cdm import ColumnType

    if values.empty:
        return ""
    if column.type in (ColumnType.DATE, ColumnType.DATETIME):
        if is_datetime64_any_dtype(values.dtype):
            return ""
        if is_numeric_dtype(values.dtype) and not is_bool_dtype(values.dtype):
            return _DAY_OFFSETS
        text = values.astype(str)
        if text.str.len().min() < 10:  # 2025-03, 2025: generalised
            return _PARTIAL_DATES
        parsed = pd.to_datetime(text, errors="coerce", format="ISO8601")
        return _PARTIAL_DATES if parsed.isna().any() else ""
    if column.type in (ColumnType.INTEGER, ColumnType.NUMBER):
        if is_numeric_dtype(values.dtype):
            return ""
        return _RANGES if pd.to_numeric(values, errors="coerce").isna().any() else ""
    return ""


def fhir_file(frames: Mapping[str, pd.DataFrame], form: str) -> FhirFile:
    """CDM rows (one frame per table, as the pool or a synthetic version holds them) as FHIR
    R5, ``form`` ``"ndjson"`` (one resource a line) or ``"bundle"`` (one collection Bundle).
    Every resource is validated with ``fhir.resources`` by :func:`contracts.fhir.write_fhir`,
    and the whole file is built before a byte is sent, so a download is never cut off
    half-way by an invalid row.

    Columns whose de-identified values cannot take their FHIR type (dates as day offsets,
    ages as bands) are left out, never written as something they are not, and named in
    :attr:`FhirFile.left_out` and in each resource's ``meta.tag`` (so a hub importing the
    file keeps its rows although a required column is missing). A table FHIR R5 has no
    resource for (``deviation``) is refused, naming the formats that carry it."""
    from contracts.fhir import FhirError, load_mapping, write_fhir

    mapping = load_mapping()
    ready: dict[str, pd.DataFrame] = {}
    left_out: dict[str, str] = {}
    for table, frame in frames.items():
        if table in mapping.not_mapped:
            why = re.split(r"[;.]\s", " ".join(mapping.not_mapped[table].split()))[0]
            raise FhirExportError(
                f"`{table}` rows cannot be written as FHIR R5: {why[:1].lower()}{why[1:]}. "
                "Take them out as CSV or XLSX instead."
            )
        columns = {c.name: c for c in mapping.cdm.table(table).columns}
        for name in frame.columns:
            if name in columns and (why := _not_fhir_typed(columns[name], frame[name].dropna())):
                left_out[f"{table}.{name}"] = why
        ready[table] = frame.drop(columns=[c for c in frame.columns if f"{table}.{c}" in left_out])
    try:
        if form == "bundle":
            body = write_fhir(ready, form="bundle", mapping=mapping, withheld=left_out)
            return FhirFile(body, left_out)
        if form == "ndjson":
            lines = write_fhir(ready, form="ndjson", mapping=mapping, withheld=left_out)
            return FhirFile(b"".join(lines), left_out)
    except (FhirError, ValueError, TypeError) as err:
        raise FhirExportError(f"these rows cannot be written as FHIR R5: {err}") from None
    raise FhirExportError(f"unknown FHIR form {form!r}: choose ndjson or bundle.")


def fhir_bytes(frames: Mapping[str, pd.DataFrame], form: str) -> bytes:
    """Just the bytes of :func:`fhir_file` (for callers that need not say what was left
    out)."""
    return fhir_file(frames, form).body


LEFT_OUT_HEADER: Final = "X-Cleanroom-Left-Out"
"""The response header that names the columns a FHIR download left out, in a sentence."""


def fhir_response_headers(fhir: FhirFile, filename: str) -> dict[str, str]:
    """An attachment named ``filename``, and the left-out columns when there are any."""
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    if fhir.left_out:
        headers[LEFT_OUT_HEADER] = fhir.note()
    return headers
