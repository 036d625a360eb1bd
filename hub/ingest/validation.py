"""Validate a mapped upload against one CDM table: parse every column to its type, convert
units, check every rule, and keep the rows that fail, saying which rule each one broke.

The input has CDM column names and the raw strings the contributor uploaded (the output of
:func:`hub.ingest.mapping.apply_mapping`). Unit conversion happens *here*, after parsing,
with the factors the mapping detected: parse failures are then reported against the values
as they are in the file, and range checks against canonical units.

Dates: ISO (``2024-03-05``, ``2024-03-05T10:20:00``, ``2024-03-05 10:20:00``), Excel serial
day numbers, and ``d/m/y`` or ``m/d/y`` with ``/``, ``.`` or ``-``. The day/month order is
decided per column from the values: day-first when some first field is above 12, month-first
when some second field is above 12. When every value is ambiguous (both fields at most 12),
the column follows the order found in the file's other date columns, else day-first; either
way the column report carries a warning saying so.

Speed: each column is factorised (:func:`pandas.factorize`) and parsed and checked once per
distinct value; rows only ever see numpy lookups. There is no per-row Python loop.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from itertools import product
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.extensions import take

from anonymisation import isbt128
from contracts.cdm import Column, ColumnType, IdentifierClass, Table
from hub.exports import QUOTING, csv_safe_series
from hub.exports import csv_safe as csv_safe  # re-exported for callers of this module

FIRST_DATA_ROW = 2  # the header is row 1 of the contributor's file
EXAMPLES = 5
SOURCES_ATTR = "cdm_sources"  # frame.attrs set by apply_mapping: {cdm column: source column}
FACTORS_ATTR = "cdm_factors"  # frame.attrs set by apply_mapping: {cdm column: unit factor}

#: Cell texts that mean "no value" (compared case-insensitively after stripping), unless the
#: column lists the same text as an allowed value.
NA_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "#n/a"})
TRUE_TOKENS = frozenset({"yes", "y", "true", "t", "1", "ja", "j", "oui", "si", "sí"})
FALSE_TOKENS = frozenset({"no", "n", "false", "f", "0", "nein", "non"})

#: Example values of these columns are shown masked: reports are displayed and downloaded.
MASKED_CLASSES = frozenset(
    {IdentifierClass.DIRECT, IdentifierClass.LINKABLE, IdentifierClass.FREE_TEXT}
)
#: Columns holding ISBT 128 DINs, by the CDM's ``standard`` annotation.
DIN_STANDARD = "ISBT 128 data structure 001"
REPORT_COLUMNS = ("row", "column", "source_column", "rule", "value", "message")
ROW_ERROR_COLUMNS = ("row", "column", "source_column", "rule", "value", "message")


class Rule(StrEnum):
    """The rules a value or row can break."""

    REQUIRED = "required"
    TYPE = "type"
    MINIMUM = "minimum"
    MAXIMUM = "maximum"
    ALLOWED = "allowed"
    DUPLICATE_KEY = "duplicate_key"
    REFERENCE = "reference"


# Status of each distinct value of a column; a value has exactly one.
_OK, _EMPTY, _BAD_TYPE, _BELOW, _ABOVE, _NOT_ALLOWED, _UNKNOWN_REF = range(7)
_STATUS_RULES = {
    _BAD_TYPE: Rule.TYPE,
    _BELOW: Rule.MINIMUM,
    _ABOVE: Rule.MAXIMUM,
    _NOT_ALLOWED: Rule.ALLOWED,
    _UNKNOWN_REF: Rule.REFERENCE,
}


# Small public helpers -----------------------------------------------------------------------


def mask_value(value: str) -> str:
    """An identifier shown by its first and last character only (``A…6``)."""
    return f"{value[0]}…{value[-1]}" if len(value) >= 3 else "…"


def _mask_series(values: pd.Series) -> pd.Series:
    text = values.astype(str)
    masked = text.str[0] + "…" + text.str[-1]
    return masked.where(text.str.len() >= 3, "…")


def _clip(value: str, width: int = 40) -> str:
    return value if len(value) <= width else value[: width - 1] + "…"


def _code(value: str) -> str:
    """``value`` marked as code in a message (pages show it as code, never the marks)."""
    return "`" + value.replace("`", "'") + "`"


def _fmt(x: float) -> str:
    return f"{x:g}"


# Parsing (shared with the mapping's value profiling) ------------------------------------------

_INNER_SPACE = re.compile(r"[\s\u00a0\u202f']")
_EN_THOUSANDS = r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d*)?"
_EU_THOUSANDS = r"[+-]?\d{1,3}(?:\.\d{3})+(?:,\d*)?"
_EU_DECIMAL = r"[+-]?(?:\d{1,3}(?:\.\d{3})+,\d+|(?!\d{1,3},\d{3}$)\d+,\d+)"
_EN_EVIDENCE = r"[+-]?\d{1,3}(?:(?:,\d{3}){2,}(?:\.\d+)?|(?:,\d{3})+\.\d+)"


def parse_number_strings(text: pd.Series) -> tuple[pd.Series, str | None]:
    """Numbers from stripped, non-empty strings (NaN where not a number), and a note when
    the column uses ``,`` as its decimal separator.

    ``1,340`` and ``1,340.5`` are thousands; a column with values like ``1,34`` or
    ``1.340,5`` uses decimal commas (``1.340`` in such a column is still one thousand three
    hundred and forty). Spaces and apostrophes inside numbers are thousands separators; a
    trailing ``%`` is dropped (the unit is the column's)."""
    s = text.astype(str)
    numbers = pd.to_numeric(s, errors="coerce").astype(float)  # plain numbers: one C pass
    failed = numbers.isna().to_numpy()
    note = None
    if failed.any():
        rest = s[failed].str.replace(_INNER_SPACE, "", regex=True)
        rest = rest.str.replace("\u2212", "-", regex=False).str.removesuffix("%")
        # unambiguous evidence only: "1,34" or "1.340,5" (decimal comma) against "1,340.5"
        # or "1,340,000" (thousands); "1,340" alone counts for neither and reads as 1340
        eu = int(rest.str.fullmatch(_EU_DECIMAL).sum())
        en = int(rest.str.fullmatch(_EN_EVIDENCE).sum())
        decimal_comma = eu > en
        if decimal_comma:
            rest = rest.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
            note = "read `,` as the decimal separator (1,34 = 1.34)"
            # "1.340" parsed as 1.34 above is one thousand three hundred and forty here
            grouped = np.zeros(len(s), dtype=bool)
            grouped[~failed] = s[~failed].str.fullmatch(_EU_THOUSANDS).to_numpy(dtype=bool)
            if grouped.any():
                numbers[grouped] = pd.to_numeric(
                    s[grouped].str.replace(".", "", regex=False), errors="coerce"
                ).to_numpy(dtype=float)
        else:
            thousands = rest.str.fullmatch(_EN_THOUSANDS)
            rest = rest.where(~thousands, rest.str.replace(",", "", regex=False))
        numbers[failed] = pd.to_numeric(rest, errors="coerce").to_numpy(dtype=float)
    numbers = numbers.where(np.isfinite(numbers))
    return numbers, note


def parse_booleans(text: pd.Series) -> pd.Series:
    """``True``/``False`` from yes/no words in several languages, ``None`` otherwise."""
    key = text.astype(str).str.strip().str.casefold()
    out = pd.Series(None, index=text.index, dtype=object)
    out[key.isin(TRUE_TOKENS)] = True
    out[key.isin(FALSE_TOKENS)] = False
    return out


def _fold(text: pd.Series) -> pd.Series:
    s = text.astype(str).str.normalize("NFKD").str.replace(r"[\u0300-\u036f]", "", regex=True)
    return s.str.casefold().str.replace(r"\s+", " ", regex=True).str.strip()


def _loose(folded: pd.Series) -> pd.Series:
    return folded.str.replace(r"[\s_\-–/.]+", "", regex=True)


def normalise_categories(text: pd.Series, allowed: tuple[str, ...]) -> pd.Series:
    """Each value's canonical spelling in ``allowed`` (case, accents and spacing ignored;
    then ``-``, ``_``, ``/`` and ``.`` too when that keeps the list distinct), else NaN."""
    canon = pd.Series(list(allowed), dtype=object)
    strict = dict(zip(_fold(canon), canon, strict=True))
    loose_keys = _loose(_fold(canon))
    folded = _fold(text)
    out = folded.map(strict)
    if loose_keys.is_unique:
        loose = dict(zip(loose_keys, canon, strict=True))
        fallback = _loose(folded).map(loose)
        out = pd.Series(np.where(out.notna(), out, fallback), index=text.index, dtype=object)
    return out


_TIME = (
    r"(?:(?:T|\s+)(?P<H>\d{1,2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>[.,]\d+)?)?"
    r"\s*(?P<ap>[AaPp]\.?[Mm]\.?)?)?\s*(?P<tz>Z|UTC|[+-]\d{2}:?\d{2})?"
)
_YMD = re.compile(r"^(?P<y>\d{4})[-/.](?P<m>\d{1,2})[-/.](?P<d>\d{1,2})" + _TIME + r"$")
_DMY = re.compile(r"^(?P<a>\d{1,2})[-/.](?P<b>\d{1,2})[-/.](?P<y>\d{4}|\d{2})" + _TIME + r"$")
_SERIAL = re.compile(r"^\d{5}(?:\.\d+)?$")
_WORDY_DATE = re.compile(r"(?=.*\d)(?=.*[A-Za-z]{3})")
_EXCEL_EPOCH = pd.Timestamp("1899-12-30")


def looks_like_dates(text: pd.Series) -> pd.Series:
    """Which strings have a date shape we parse (ISO, d/m/y or m/d/y)."""
    s = text.astype(str).str.strip()
    return s.str.match(_YMD) | s.str.match(_DMY)


def detect_day_order(text: pd.Series) -> str | None:
    """``"dmy"`` or ``"mdy"`` for d/m/y-shaped values, ``"conflict"`` when both orders are
    evidenced, ``None`` when every value is ambiguous (or there is no such value)."""
    parts = text.astype(str).str.strip().str.extract(_DMY)[["a", "b"]].dropna()
    if parts.empty:
        return None
    first_big = bool((parts["a"].astype(int) > 12).any())
    second_big = bool((parts["b"].astype(int) > 12).any())
    if first_big and second_big:
        return "conflict"
    if first_big:
        return "dmy"
    if second_big:
        return "mdy"
    return None


def _assemble(parts: pd.DataFrame, year: pd.Series, month: pd.Series, day: pd.Series) -> Any:
    num = {k: pd.to_numeric(parts[k], errors="coerce") for k in ("H", "M", "S")}
    hour = num["H"].fillna(0)
    ap = parts["ap"].fillna("").str.casefold().str[0]
    hour = hour.where(ap == "", hour % 12 + np.where(ap == "p", 12, 0))
    stamp = pd.to_datetime(
        pd.DataFrame(
            {
                "year": year,
                "month": month,
                "day": day,
                "hour": hour,
                "minute": num["M"].fillna(0),
                "second": num["S"].fillna(0),
            }
        ),
        errors="coerce",
    )
    frac = pd.to_numeric(parts["f"].str.replace(",", ".", regex=False), errors="coerce")
    stamp = stamp + pd.to_timedelta(frac.fillna(0), unit="s")
    bad_time = (num["H"] > 23) | (num["M"] > 59) | (num["S"] > 59)
    tz = parts["tz"].fillna("")
    offset = tz.str.extract(r"^(?P<sign>[+-])(?P<h>\d{2}):?(?P<m>\d{2})$")
    minutes = pd.to_numeric(offset["h"], errors="coerce") * 60 + pd.to_numeric(
        offset["m"], errors="coerce"
    )
    minutes = minutes.where(offset["sign"] != "-", -minutes).fillna(0)
    stamp = stamp - pd.to_timedelta(minutes, unit="m")  # an offset is converted to UTC
    return stamp.where(~bad_time)


def parse_date_strings(text: pd.Series, order: str = "dmy") -> tuple[pd.Series, list[str]]:
    """Timestamps from stripped, non-empty strings (NaT where not a date) and notes.

    ``order`` applies to d/m/y-shaped values (``"dmy"`` or ``"mdy"``). A time zone offset
    is converted to UTC; a time without one is kept as written."""
    s = text.astype(str).str.strip().reset_index(drop=True)
    out = pd.Series(pd.NaT, index=s.index, dtype="datetime64[ns]")
    notes: list[str] = []
    ymd = s.str.extract(_YMD)
    hit = ymd["y"].notna()
    if hit.any():
        p = ymd[hit]
        out[hit] = _assemble(p, p["y"].astype(int), p["m"].astype(int), p["d"].astype(int))
    dmy = s.str.extract(_DMY)
    hit = dmy["y"].notna()
    if hit.any():
        p = dmy[hit]
        year = p["y"].astype(int)
        year = year.where(year >= 100, year + np.where(year <= 69, 2000, 1900))
        a, b = p["a"].astype(int), p["b"].astype(int)
        day, month = (a, b) if order != "mdy" else (b, a)
        out[hit] = _assemble(p, year, month, day)
    serial = s.str.match(_SERIAL) & out.isna()
    if serial.any():
        days = pd.to_numeric(s[serial], errors="coerce")
        days = days.where(days.between(20000, 80000))
        out[serial] = _EXCEL_EPOCH + pd.to_timedelta(days, unit="D")
        if days.notna().any():
            notes.append("read five-digit numbers as Excel serial dates (45356 = 2024-03-05)")
    wordy = out.isna() & s.str.contains(_WORDY_DATE)
    if wordy.any() and int(wordy.sum()) <= 20_000:  # "5 Mar 2024": dateutil, once per value
        out[wordy] = pd.to_datetime(
            s[wordy], format="mixed", dayfirst=order != "mdy", errors="coerce"
        )
    out.index = text.index
    return out, notes


# Results --------------------------------------------------------------------------------


@dataclass
class RuleError:
    """How many values of one column broke one rule, where, and a few examples."""

    rule: str
    count: int
    rows: list[int]
    examples: list[str]
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "count": self.count,
            "rows": list(self.rows),
            "examples": list(self.examples),
            "message": self.message,
        }


@dataclass
class ColumnReport:
    """What validation found in one CDM column."""

    column: str
    source: str | None
    type: str
    identifier: str
    unit: str | None
    factor: float
    present: bool
    parsed: int
    empty: int
    errors: list[RuleError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    reference: str | None = None  # "checked", "not checked" or None (no reference)

    @property
    def by_rule(self) -> dict[str, RuleError]:
        return {e.rule: e for e in self.errors}

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "source": self.source,
            "type": self.type,
            "identifier": self.identifier,
            "unit": self.unit,
            "factor": float(self.factor),
            "present": self.present,
            "parsed": int(self.parsed),
            "empty": int(self.empty),
            "errors": [e.to_dict() for e in self.errors],
            "warnings": list(self.warnings),
            "reference": self.reference,
        }


@dataclass
class ValidationResult:
    """The typed frame (canonical units, every CDM column, invalid rows kept), which rows
    are valid, per-column reports, one line per broken rule per row, and a summary."""

    table: str
    frame: pd.DataFrame
    valid_mask: pd.Series
    column_reports: list[ColumnReport]
    row_errors: pd.DataFrame
    summary: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def report(self, column: str) -> ColumnReport:
        for report in self.column_reports:
            if report.column == column:
                return report
        raise KeyError(column)

    @property
    def messages(self) -> list[str]:
        """Every error message, column by column, for display."""
        return [e.message for r in self.column_reports for e in r.errors]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe summary for storing on the dataset version (no frames)."""
        return {
            "table": self.table,
            "summary": {
                **{k: v for k, v in self.summary.items() if k != "by_rule"},
                "by_rule": dict(self.summary["by_rule"]),
            },
            "columns": [r.to_dict() for r in self.column_reports],
            "messages": self.messages,
            "warnings": list(self.warnings),
        }


# Validation -----------------------------------------------------------------------------


@dataclass
class _Work:
    """One column's distinct values and what became of them."""

    col: Column
    present: bool
    codes: np.ndarray  # row -> index into the distinct values, -1 for missing cells
    raw: pd.Series  # distinct values as uploaded
    text: pd.Series  # stripped
    status: np.ndarray  # per distinct value
    values: Any = None  # typed, per distinct value
    warnings: list[str] = field(default_factory=list)
    order: str | None = None

    def rows_with(self, status: int) -> np.ndarray:
        per_code = np.append(self.status == status, status == _EMPTY)
        return per_code[self.codes]


@lru_cache(maxsize=64)
def _na_spellings(excluded: frozenset[str]) -> frozenset[str]:
    """Every upper/lower-case spelling of the NA tokens: a hash lookup beats casefolding a
    million values."""
    out: set[str] = set()
    for token in NA_TOKENS - excluded:
        out.update("".join(c) for c in product(*({ch.lower(), ch.upper()} for ch in token)))
    return frozenset(out)


def _prepare(frame: pd.DataFrame, col: Column, mapped: bool) -> _Work:
    n = len(frame)
    if col.name not in frame.columns or not mapped:
        empty = pd.Series([], dtype=object)
        return _Work(
            col, False, np.full(n, -1, dtype=np.intp), empty, empty, np.array([], dtype=np.int8)
        )
    codes, uniques = pd.factorize(frame[col.name].to_numpy(dtype=object), use_na_sentinel=True)
    raw = pd.Series(uniques, dtype=object)
    if pd.api.types.infer_dtype(uniques, skipna=False) != "string":
        raw = raw.astype(str)
    text = raw.str.strip()
    na = _na_spellings(frozenset(a.casefold() for a in col.allowed or ()))
    empty = text.isin(na).to_numpy()
    status = np.where(empty, _EMPTY, _OK).astype(np.int8)
    return _Work(col, True, codes.astype(np.intp), raw, text, status)


def _parse(work: _Work, factor: float, known_keys: Mapping[str, Any] | None) -> None:
    """Type, unit, range, allowed-value and reference checks on the distinct values."""
    col, text, ok = work.col, work.text, work.status == _OK
    kind = col.type
    if kind in (ColumnType.NUMBER, ColumnType.INTEGER):
        numbers, note = parse_number_strings(text[ok]) if ok.any() else (pd.Series([]), None)
        values = np.full(len(text), np.nan)
        values[ok] = numbers.to_numpy(dtype=float) * factor
        bad = ok & np.isnan(values)
        if kind == ColumnType.INTEGER:
            rounded = np.round(values)
            bad |= ok & ~np.isnan(values) & (np.abs(values - rounded) > 1e-9)
            values = rounded
        work.status[bad] = _BAD_TYPE
        ok = work.status == _OK
        if col.minimum is not None:
            work.status[ok & (values < col.minimum)] = _BELOW
        if col.maximum is not None:
            work.status[ok & (values > col.maximum)] = _ABOVE
        values[work.status != _OK] = np.nan
        work.values = values
        if note:
            work.warnings.append(note)
    elif kind in (ColumnType.DATE, ColumnType.DATETIME):
        stamps, notes = parse_date_strings(text[ok], work.order or "dmy")
        values = np.full(len(text), np.datetime64("NaT"), dtype="datetime64[ns]")
        values[ok] = stamps.to_numpy(dtype="datetime64[ns]")
        if kind == ColumnType.DATE:
            values = values.astype("datetime64[D]").astype("datetime64[ns]")
        work.status[ok & np.isnat(values)] = _BAD_TYPE
        values[work.status != _OK] = np.datetime64("NaT")
        work.values = values
        work.warnings.extend(notes)
    elif kind == ColumnType.BOOLEAN:
        flags = parse_booleans(text)
        work.status[ok & flags.isna().to_numpy()] = _BAD_TYPE
        work.values = flags.where(work.status == _OK, None).to_numpy(dtype=object)
    elif col.allowed:
        canon = normalise_categories(text, col.allowed)
        work.status[ok & canon.isna().to_numpy()] = _NOT_ALLOWED
        work.values = canon.where(work.status == _OK, None).to_numpy(dtype=object)
    else:
        work.values = text.where(work.status == _OK, None).to_numpy(dtype=object)
    if col.references and known_keys is not None and col.references in known_keys:
        ok = work.status == _OK
        if ok.any():
            candidates = pd.Series(work.values[ok]).astype(str).reset_index(drop=True)
            known = known_keys[col.references]
            isin = getattr(known, "isin", None)  # a set-like that maps raw values itself
            found = np.asarray(
                isin(candidates) if callable(isin) else candidates.isin(known), dtype=bool
            )
            idx = np.flatnonzero(ok)[~found]
            work.status[idx] = _UNKNOWN_REF
            if kind in (ColumnType.NUMBER, ColumnType.INTEGER):
                work.values[idx] = np.nan
            else:
                work.values[idx] = None


def _typed_column(work: _Work, n: int) -> Any:
    """The row-level typed array: a lookup of the distinct values through the codes."""
    col, codes = work.col, work.codes
    kind = col.type
    if not work.present:
        dtype = {
            ColumnType.NUMBER: "float64",
            ColumnType.INTEGER: "Int64",
            ColumnType.BOOLEAN: "boolean",
            ColumnType.DATE: "datetime64[ns]",
            ColumnType.DATETIME: "datetime64[ns]",
        }.get(kind, "string")
        if kind == ColumnType.CATEGORY and col.allowed:
            return pd.Categorical.from_codes(np.full(n, -1), categories=list(col.allowed))
        return pd.array(np.full(n, None, dtype=object), dtype=dtype)
    if kind == ColumnType.NUMBER:
        return take(work.values, codes, allow_fill=True)
    if kind == ColumnType.INTEGER:
        return pd.array(work.values, dtype="Int64").take(codes, allow_fill=True)
    if kind in (ColumnType.DATE, ColumnType.DATETIME):
        return take(work.values, codes, allow_fill=True)
    if kind == ColumnType.BOOLEAN:
        return pd.array(work.values, dtype="boolean").take(codes, allow_fill=True)
    if kind == ColumnType.CATEGORY and col.allowed:
        cat_codes = pd.Categorical(work.values, categories=list(col.allowed)).codes
        return pd.Categorical.from_codes(
            np.append(cat_codes, -1)[codes], categories=list(col.allowed)
        )
    return pd.array(work.values, dtype="string").take(codes, allow_fill=True)


_TYPE_WORDS = {
    ColumnType.NUMBER: (
        "with no readable number",
        "not a number",
        "write plain numbers such as 1.34",
    ),
    ColumnType.INTEGER: (
        "with no readable whole number",
        "not a whole number",
        "write whole numbers",
    ),
    ColumnType.DATE: ("with no readable date", "not a date", "write dates as 2024-03-05"),
    ColumnType.DATETIME: (
        "with no readable date and time",
        "not a date and time",
        "write them as 2024-03-05T10:20:00",
    ),
    ColumnType.BOOLEAN: ("not yes or no", "not yes or no", "write yes or no"),
}


def _rows_text(rows: np.ndarray, count: int) -> str:
    listed = ", ".join(str(int(r)) for r in rows[:EXAMPLES])
    word = "row" if count == 1 else "rows"
    return f"{word} {listed}" + (" …" if count > len(rows[:EXAMPLES]) else "")


def _wording(col: Column, status: int, factor: float) -> tuple[str, str, str]:
    """(what the values did, per-row message, what to do) for a status of a column."""
    unit = f" {col.unit}" if col.unit else ""
    converted = f" (after converting your unit ×{_fmt(factor)})" if factor != 1 else ""
    if status == _BAD_TYPE:
        return _TYPE_WORDS.get(col.type, ("not valid", "not valid", "correct them"))
    if status == _BELOW:
        limit = f"{_fmt(col.minimum or 0)}{unit}"
        return f"below {limit}{converted}", f"below the minimum {limit}", "check the unit"
    if status == _ABOVE:
        limit = f"{_fmt(col.maximum or 0)}{unit}"
        return f"above {limit}{converted}", f"above the maximum {limit}", "check the unit"
    if status == _NOT_ALLOWED:
        allowed = list(col.allowed or ())
        listed = ", ".join(allowed[:8]) + (" …" if len(allowed) > 8 else "")
        return (
            f"not in the allowed list ({listed})",
            f"not one of {listed}",
            "use one of the listed values",
        )
    ref = col.references or ""
    return (
        f"not found in `{ref}`",
        f"not found in `{ref}`",
        f"upload the `{ref.split('.')[0]}` table first or correct the IDs",
    )


class _Collector:
    """Gathers rule errors into column reports, the row-error list and the invalid mask."""

    def __init__(self, n: int, first_row: int):
        self.rows = np.arange(n, dtype=np.int64) + first_row
        self.invalid = np.zeros(n, dtype=bool)
        self.by_rule: dict[str, np.ndarray] = {}
        self.pieces: list[pd.DataFrame] = []

    def add(
        self,
        report: ColumnReport,
        rule: str,
        mask: np.ndarray,
        shown: np.ndarray | None,
        column_label: str,
        lead: str,
        row_message: str,
        hint: str,
    ) -> None:
        """Record that the rows in ``mask`` broke ``rule``; ``shown`` are their values as
        they may be displayed (masked for identifiers). ``lead`` may say ``{count}`` and
        ``{s}`` (plural ending)."""
        positions = np.flatnonzero(mask)
        count = len(positions)
        if count == 0:
            return
        if shown is None:
            shown = np.full(count, "", dtype=object)
        self.invalid[positions] = True
        seen = self.by_rule.setdefault(rule, np.zeros(len(self.invalid), dtype=bool))
        seen[positions] = True
        rows = self.rows[positions]
        examples = list(dict.fromkeys(_clip(str(v)) for v in shown[:EXAMPLES] if v != ""))
        eg = f" (e.g. {', '.join(_code(v) for v in examples[:3])})" if examples else ""
        what = lead.replace("{count}", str(count)).replace("{s}", "" if count == 1 else "s")
        message = f"{what}{eg}; {_rows_text(rows, count)}; {hint}"
        report.errors.append(
            RuleError(rule, count, [int(r) for r in rows[:EXAMPLES]], examples, message)
        )
        self.pieces.append(
            pd.DataFrame(
                {
                    "row": rows,
                    "column": np.full(count, column_label, dtype=object),
                    "source_column": np.full(count, report.source or "", dtype=object),
                    "rule": np.full(count, str(rule), dtype=object),
                    "value": shown,
                    "message": np.full(count, row_message, dtype=object),
                }
            )
        )

    def row_errors(self) -> pd.DataFrame:
        if not self.pieces:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in ROW_ERROR_COLUMNS}).astype(
                {"row": "int64"}
            )
        errors = pd.concat(self.pieces, ignore_index=True)
        return errors.sort_values("row", kind="stable", ignore_index=True)


def _shown(work: _Work, codes: np.ndarray, mask: bool = True) -> np.ndarray:
    """The values behind ``codes`` as a report may show them: as uploaded, masked for
    identifiers (unless not ``mask``), "" for a missing cell. Only the distinct values
    needed are masked."""
    wanted, inverse = np.unique(codes, return_inverse=True)
    raw = work.raw.to_numpy(dtype=object)
    texts = np.where(wanted >= 0, raw[np.maximum(wanted, 0)] if len(raw) else "", "")
    if mask and work.col.identifier in MASKED_CLASSES:
        filled = texts != ""
        texts[filled] = _mask_series(pd.Series(texts[filled], dtype=object)).to_numpy()
    return texts.astype(object)[inverse.ravel()]


def _decide_orders(works: list[_Work]) -> None:
    """Day/month order of each date column; ambiguous columns follow the file's others."""
    dated = [w for w in works if w.present and w.col.type in (ColumnType.DATE, ColumnType.DATETIME)]
    found: dict[str, str | None] = {}
    for w in dated:
        found[w.col.name] = detect_day_order(w.text[w.status == _OK])
    decided = {o for o in found.values() if o in ("dmy", "mdy")}
    for w in dated:
        order = found[w.col.name]
        if order in ("dmy", "mdy"):
            w.order = order
        elif order == "conflict":
            w.order = "dmy"
            w.warnings.append(
                "both day-first (31/01) and month-first (01/31) dates found; read as "
                "day-first, so month-first dates after the 12th fail"
            )
        elif w.text[w.status == _OK].str.match(_DMY).any():
            if len(decided) == 1:
                w.order = next(iter(decided))
                other = next(n for n, o in found.items() if o == w.order)
                first = "day-first" if w.order == "dmy" else "month-first"
                w.warnings.append(
                    f"day and month are ambiguous (both at most 12 in every date); read as "
                    f"{first} like `{other}` in the same file"
                )
            else:
                w.order = "dmy"
                w.warnings.append(
                    "day and month are ambiguous (both at most 12 in every date); read as "
                    "day-first (05/03/2024 = 5 March 2024); if that is wrong, write the "
                    "dates as 2024-03-05"
                )


def validate(
    frame: pd.DataFrame,
    table: Table,
    *,
    factors: Mapping[str, float] | None = None,
    known_keys: Mapping[str, Any] | None = None,
    sources: Mapping[str, str] | None = None,
    first_row: int = FIRST_DATA_ROW,
    mask_identifiers: bool = True,
    withheld: Collection[str] = (),
) -> ValidationResult:
    """Parse, convert and check ``frame`` (CDM column names, raw strings) against ``table``.

    ``factors`` convert each column's values into its canonical unit (default: what
    :func:`~hub.ingest.mapping.apply_mapping` stored in ``frame.attrs``, else 1).
    ``known_keys["episode.coi_id"]`` holds the keys already validated for the institution:
    a set, or any object with an ``isin(pd.Series) -> pd.Series[bool]`` method; a reference
    without such an entry is reported "not checked". ``first_row`` is the file row of the
    frame's first row (header is row 1). Invalid rows are kept in ``frame`` and named.
    ``mask_identifiers=False`` quotes identifiers in full: for reports only the uploading
    institution reads (its own data). ``withheld`` names required columns the file's source
    left out on purpose (a hub's FHIR export of de-identified rows, see
    :data:`contracts.fhir.WITHHELD_SYSTEM`): their empty values are a warning, not a reason
    to hold a row back."""
    if frame.columns.duplicated().any():
        raise ValueError("frame has duplicate column names")
    n = len(frame)
    factors = {**frame.attrs.get(FACTORS_ATTR, {}), **(factors or {})}
    sources = {**frame.attrs.get(SOURCES_ATTR, {}), **(sources or {})}
    for name, factor in factors.items():
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ValueError(f"unit factor for `{name}` must be a positive number, not {factor!r}")
    # with known sources (apply_mapping's attrs), a column without one is absent even if the
    # frame carries it empty
    works = [
        _prepare(frame, col, col.name in sources if sources else True) for col in table.columns
    ]
    _decide_orders(works)
    collect = _Collector(n, first_row)
    reports: list[ColumnReport] = []
    typed: dict[str, Any] = {}
    for work in works:
        col = work.col
        factor = float(factors.get(col.name, 1.0))
        _parse(work, factor, known_keys)
        typed[col.name] = _typed_column(work, n)
        report = ColumnReport(
            column=col.name,
            source=sources.get(col.name),
            type=str(col.type),
            identifier=str(col.identifier),
            unit=col.unit,
            factor=factor,
            present=work.present,
            parsed=0,
            empty=0,
            warnings=list(work.warnings),
        )
        if col.references:
            checked = known_keys is not None and col.references in known_keys
            report.reference = "checked" if checked else "not checked"
            if not checked:
                report.warnings.append(
                    f"links to `{col.references}` not checked: your institution has not "
                    f"released any `{col.references.split('.')[0]}` rows yet; upload and "
                    f"release `{col.references.split('.')[0]}` first so they can be checked"
                )
        reports.append(report)
        din_warning = _din_check_warning(work, first_row, mask_identifiers)
        if din_warning:
            report.warnings.append(din_warning)
        counts = np.bincount(np.append(work.status, _EMPTY)[work.codes], minlength=7)
        report.empty = int(counts[_EMPTY])
        report.parsed = int(n - counts[_EMPTY] - counts[_BAD_TYPE])
        if col.required and col.name in withheld and counts[_EMPTY]:
            report.warnings.append(
                f"column `{col.name}` was left out by the hub that exported this file (its "
                f"de-identified values have no FHIR form): {int(counts[_EMPTY]):,} rows kept "
                "without it"
            )
        elif col.required and not work.present:
            collect.add(
                report,
                Rule.REQUIRED,
                np.ones(n, dtype=bool),
                None,
                col.name,
                f"column `{col.name}` is required but no source column is mapped to "
                "it: {count} row{s} held back",
                f"column `{col.name}` is required but not in the file",
                "map a column to it or add it to the file",
            )
        elif col.required and counts[_EMPTY]:
            collect.add(
                report,
                Rule.REQUIRED,
                work.rows_with(_EMPTY),
                None,
                col.name,
                f"column `{col.name}`: {{count}} empty value{{s}} but the column is required",
                f"column `{col.name}` is empty but required",
                "fill them in",
            )
        for status in sorted(_STATUS_RULES):
            if counts[status] == 0:
                continue
            mask = work.rows_with(status)
            lead, row_message, hint = _wording(col, status, factor)
            collect.add(
                report,
                _STATUS_RULES[status],
                mask,
                _shown(work, work.codes[mask], mask_identifiers),
                col.name,
                f"column `{col.name}`: {{count}} value{{s}} {lead}",
                f"column `{col.name}`: {row_message}",
                hint,
            )
    result_frame = pd.DataFrame(typed, index=frame.index)
    _check_keys(table, works, reports, collect, result_frame, mask_identifiers)
    row_errors = collect.row_errors()
    valid = pd.Series(~collect.invalid, index=frame.index, name="valid")
    extra = [str(c) for c in frame.columns if c not in set(table.column_names)]
    warnings = [f"column `{c}` is not in the `{table.name}` table and was ignored" for c in extra]
    summary = {
        "rows": n,
        "valid_rows": int(valid.sum()),
        "invalid_rows": int(n - valid.sum()),
        "by_rule": {str(r): int(m.sum()) for r, m in collect.by_rule.items()},
        "ignored_columns": extra,
    }
    return ValidationResult(table.name, result_frame, valid, reports, row_errors, summary, warnings)


def _din_check_warning(work: _Work, first_row: int, mask: bool) -> str | None:
    """A warning (not a rule: the rows are kept) when DINs carry a check character that
    ISO 7064 mod 37-2 says is wrong, most likely a typing error. Checked once per distinct
    value; values without a check character are not judged."""
    if not work.present or not (work.col.standard or "").startswith(DIN_STANDARD):
        return None
    # vectorised pre-filter: only values longer than the bare 13 characters can carry a
    # check character (printed, or encoded in the flags)
    compact = work.text.str.replace(r"[\s=\-]", "", regex=True).str.len()
    candidates = np.flatnonzero((work.status == _OK) & (compact > 13).to_numpy())
    wrong = [
        int(i)
        for i in candidates
        if isbt128.parse_din(str(work.text.iloc[i])) is not None
        and isbt128.din_check_ok(str(work.text.iloc[i])) is False
    ]
    if not wrong:
        return None
    rows = np.flatnonzero(np.isin(work.codes, wrong)) + first_row
    examples = []
    for i in wrong[:2]:
        din = isbt128.parse_din(str(work.text.iloc[i]))
        if din is None:  # cannot happen: kept above only when parsed
            continue
        shown = (
            mask_value(din.din13)
            if mask and work.col.identifier in MASKED_CLASSES
            else din.eye_readable
        )
        examples.append(
            f"DIN {shown} has check character {din.given_check}; ISBT 128 says it should be "
            f"{din.expected_check}"
        )
    count = len(rows)
    return (
        f"{count} DIN{'' if count == 1 else 's'} with a check character that does not match "
        f"({_rows_text(rows, count)}): {'; '.join(examples)}: a typing error? The rows are "
        "kept; compare with the bag label and correct the DIN or its check character"
    )


def _check_keys(
    table: Table,
    works: list[_Work],
    reports: list[ColumnReport],
    collect: _Collector,
    typed: pd.DataFrame,
    mask: bool = True,
) -> None:
    """Rows sharing a primary key are all invalid (the keys compared after parsing)."""
    if not table.primary_key or len(typed) == 0:
        return
    by_name = {w.col.name: w for w in works}
    if any(not by_name[k].present for k in table.primary_key):
        return
    parts = []
    for key in table.primary_key:
        work = by_name[key]
        canon = pd.factorize(pd.Series(work.values), use_na_sentinel=True)[0]
        parts.append(np.append(canon, -1)[work.codes])
    codes = np.column_stack(parts)
    complete = (codes >= 0).all(axis=1)
    if len(parts) == 1:
        counts = np.bincount(codes[complete, 0], minlength=1)
        dup = complete & (counts[np.where(complete, codes[:, 0], 0)] > 1)
    else:
        dup = np.zeros(len(codes), dtype=bool)
        dup[complete] = pd.DataFrame(codes[complete]).duplicated(keep=False).to_numpy()
    if not dup.any():
        return
    label = ", ".join(table.primary_key)
    quoted = ", ".join(f"`{k}`" for k in table.primary_key)
    key_text = f"key {quoted}" if len(parts) == 1 else f"key ({quoted})"
    shown_parts = [_shown(by_name[k], by_name[k].codes[dup], mask) for k in table.primary_key]
    shown = shown_parts[0]
    for part in shown_parts[1:]:
        shown = shown + " / " + part
    distinct = len(pd.DataFrame(codes[dup]).drop_duplicates())
    report = next(r for r in reports if r.column == table.primary_key[0])
    collect.add(
        report,
        Rule.DUPLICATE_KEY,
        dup,
        shown,
        label,
        f"{key_text}: {{count}} row{{s}} share {distinct} repeated value"
        + ("" if distinct == 1 else "s"),
        f"{key_text} appears more than once",
        "each key may appear only once; remove or correct the repeats",
    )


# The downloadable report ----------------------------------------------------------------


def iter_report_csv(result: ValidationResult, *, chunk_rows: int = 100_000) -> Iterator[str]:
    """The validation report as CSV text chunks: first one line per problem found (rule
    summary, warnings), then one line per row and broken rule. Every cell is formula-safe."""
    header = pd.DataFrame([REPORT_COLUMNS], columns=list(REPORT_COLUMNS))
    yield _safe_csv_block(header)
    lines: list[dict[str, Any]] = []
    for report in result.column_reports:
        for error in report.errors:
            lines.append(
                {
                    "column": report.column,
                    "source_column": report.source or "",
                    "rule": error.rule,
                    "value": error.count,
                    "message": error.message,
                }
            )
        for warning in report.warnings:
            lines.append(
                {
                    "column": report.column,
                    "source_column": report.source or "",
                    "rule": "warning",
                    "value": "",
                    "message": f"column `{report.column}`: {warning}",
                }
            )
    for warning in result.warnings:
        lines.append({"rule": "warning", "message": warning})
    s = result.summary
    lines.append(
        {
            "rule": "summary",
            "message": f"{s['valid_rows']} of {s['rows']} rows "
            f"passed validation; {s['invalid_rows']} held back",
        }
    )
    summary = pd.DataFrame(lines, columns=list(REPORT_COLUMNS))
    yield _safe_csv_block(summary)
    errors = result.row_errors
    for start in range(0, len(errors), chunk_rows):
        yield _safe_csv_block(errors.iloc[start : start + chunk_rows])


def _safe_csv_block(block: pd.DataFrame) -> str:
    """Rows of ``block`` (its header is not written) through :mod:`hub.exports`' rule."""
    safe = pd.DataFrame({c: csv_safe_series(block[c]) for c in REPORT_COLUMNS})
    buf = io.StringIO()
    safe.to_csv(buf, header=False, index=False, lineterminator="\n", quoting=QUOTING)
    return buf.getvalue()


def report_csv(result: ValidationResult) -> str:
    """The whole validation report as one CSV string (see :func:`iter_report_csv`)."""
    return "".join(iter_report_csv(result))
