"""CSV the hub writes for download, safe to open in a spreadsheet.

Every header and every cell goes through :func:`csv_safe`: text starting with ``=``, ``+``,
``-``, ``@``, a tab or a carriage return gets a leading ``'`` so Excel and LibreOffice show
it as text instead of running it as a formula (OWASP, "CSV Injection"). Every field is
quoted as well, so a separator inside a value (``a;=1+1`` opened with ``;`` as the
delimiter) cannot start a new cell. The same rule, vectorised, is :func:`csv_safe_series`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""Characters that make a spreadsheet read a cell as a formula."""

QUOTING: Final = csv.QUOTE_ALL
"""Every field quoted: a separator or quote in a value stays inside its cell."""


def csv_safe(value: object) -> str:
    """``value`` as a CSV cell no spreadsheet will run as a formula; ``None`` and NaN are
    empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_safe_series(values: pd.Series) -> pd.Series:
    """:func:`csv_safe` over a whole column at once (missing values are empty)."""
    text = values.astype(object).where(values.notna(), "").astype(str)
    risky = text.str.startswith(FORMULA_STARTS)
    return text.where(~risky, "'" + text)


class SafeWriter:
    """A :func:`csv.writer` whose every row, the header included, is made safe first."""

    def __init__(self, fh: Any) -> None:
        self._writer = csv.writer(fh, quoting=QUOTING)

    def writerow(self, values: Iterable[object]) -> None:
        self._writer.writerow([csv_safe(v) for v in values])
