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
from collections.abc import Iterable, Sequence
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
