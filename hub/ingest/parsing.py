"""Uploaded files to tables of raw strings: the first step of the ingest pipeline.

:func:`sniff` decides what a file is from its content (the name is only a hint for messages);
:func:`read_table` reads CSV, XLSX or Parquet into a :class:`ParsedTable` whose cells are all
``str`` or ``None``, so that typing stays with the mapping and validation steps. Anything that
cannot be read safely (a binary posing as CSV, a zip bomb, a macro-enabled workbook, ragged
rows, an oversized table) is refused with an :class:`IngestError` whose message says what is
wrong and what to do; no library traceback reaches a contributor.

Values that are not text in the file are rendered one way for every format: dates and
datetimes as ISO 8601 (the date alone when the time is 00:00), integers without ``.0``,
booleans as ``true``/``false``, durations as ``[-]H:MM:SS[.ffffff]``, missing values as
``None``. Text is kept verbatim: ``=1+1`` or ``@SUM(A1)`` are data here; neutralising them is
the export's job.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import io
import logging
import math
import re
import unicodedata
import warnings
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import numpy as np
import openpyxl
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from charset_normalizer import from_bytes
from openpyxl.utils import get_column_letter

from hub.errors import BadRequest
from hub.storage.base import human_size

log = logging.getLogger(__name__)

SNIFF_BYTES = 64 * 1024
"""How much of the start of a file :func:`sniff` and the encoding detection look at."""

_GIB = 1 << 30
_MIB = 1 << 20

_CHUNK = 1 << 20
_RATIO_FLOOR = 1 * _MIB
"""Members that unpack to less than this are not ratio-checked: they cannot be a bomb, and
small, repetitive XML parts of genuine workbooks often compress more than 100 times."""


class IngestError(BadRequest):
    """An upload that cannot be read; ``message`` says what is wrong and what to do."""

    code = "invalid_file"


class FileKind(StrEnum):
    """The formats Cleanroom reads."""

    CSV = "csv"
    XLSX = "xlsx"
    PARQUET = "parquet"
    FHIR = "fhir"  # an HL7 FHIR R5 Bundle or NDJSON, read by contracts.fhir


@dataclass(frozen=True)
class Limits:
    """Bounds on what a reader accepts; each one is named in the message that enforces it."""

    max_columns: int = 1000
    max_rows: int = 5_000_000
    max_cell_chars: int = 32_768
    max_xlsx_uncompressed: int = 2 * _GIB
    max_xlsx_ratio: float = 100
    max_header_chars: int = 1000


DEFAULT_LIMITS = Limits()


@dataclass
class ParsedTable:
    """A table as read from a file: every cell a ``str`` or ``None``, column names stripped."""

    frame: pd.DataFrame
    encoding: str | None
    delimiter: str | None
    sheet: str | None
    warnings: list[str] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.frame)

    @property
    def columns(self) -> int:
        return len(self.frame.columns)


# Sniffing ------------------------------------------------------------------------------------

_UPLOAD_ADVICE = "upload CSV, XLSX or Parquet"
_JSON_START = re.compile(rb"^(?:\xef\xbb\xbf)?\s*[{\[]")
_RESOURCE_TYPE = re.compile(rb'"resourceType"\s*:')

_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ENCRYPTED_PACKAGE = "EncryptedPackage".encode("utf-16-le")

_BINARY_MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable program (ELF)"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!\x1a\x07", "a RAR archive"),
    (b"\xfd7zXZ\x00", "an xz archive"),
    (b"\x28\xb5\x2f\xfd", "a zstd archive"),
    (b"BZh91AY&SY", "a bzip2 archive"),  # the usual level 9; other levels differ in one digit
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"ARROW1", "an Arrow/Feather file"),
    (b"{\\rtf", "an RTF document"),
)

# C0 controls other than tab, line feed, form feed and carriage return, plus DEL.
_CONTROL_BYTES = bytes([*range(0, 9), 11, *range(14, 32), 127])
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_SHARE = 0.01


def _shown(filename: str) -> str:
    name = safe_filename(filename) if filename else ""
    return f"the file '{name}'" if name else "the file"


def _extension(filename: str) -> str:
    return Path(safe_filename(filename)).suffix.lower() if filename else ""


def _binary(shown: str, what: str) -> IngestError:
    return IngestError(f"{shown} looks like a binary file ({what}), not CSV; {_UPLOAD_ADVICE}.")


def _utf16_without_bom(head: bytes) -> str | None:
    """``"utf-16-le"``/``"utf-16-be"`` when ``head`` is mostly ASCII stored as UTF-16 without
    a byte-order mark (every other byte NUL), else ``None``."""
    sample = head[:4096]
    sample = sample[: len(sample) - len(sample) % 2]
    if len(sample) < 8:
        return None
    even, odd = sample[0::2], sample[1::2]
    even_nul = even.count(0) / len(even)
    odd_nul = odd.count(0) / len(odd)
    if odd_nul >= 0.9 and even_nul <= 0.1:
        return "utf-16-le"
    if even_nul >= 0.9 and odd_nul <= 0.1:
        return "utf-16-be"
    return None


def _bom_encoding(head: bytes) -> str | None:
    # UTF-32 first: its little-endian BOM starts with UTF-16's.
    if head.startswith((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE)):
        return "utf-32"
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return None


def _markup(text: str) -> str | None:
    """What a text file is when it is an HTML or XML document (web exports named .xls)."""
    start = text.lstrip("\ufeff \t\r\n")[:512].lower()
    if start.startswith("<?xml") and "urn:schemas-microsoft-com:office:spreadsheet" in text:
        return "an Excel 2003 XML spreadsheet; open it in Excel and save as .xlsx or CSV"
    if start.startswith(("<?xml", "<!doctype", "<html", "<table", "<head", "<body")):
        return (
            "an HTML or XML document, not CSV; if a web application exported it as a "
            "spreadsheet, open it in Excel and save it as .xlsx or CSV"
        )
    return None


def sniff(head: bytes, filename: str) -> FileKind:
    """Tell CSV, XLSX, Parquet and FHIR R5 (JSON whose first object has a ``resourceType``:
    a Bundle or NDJSON) apart from the first bytes of a file (``SNIFF_BYTES`` is plenty)
    and refuse everything else.

    The decision is made on content: a text file named ``.xls`` is read as CSV, a ZIP archive
    is taken for a workbook and checked when opened. ``filename`` only sharpens messages.
    """
    shown = _shown(filename)
    ext = _extension(filename)
    if not head:
        raise IngestError(f"{shown} is empty; {_UPLOAD_ADVICE} with a header row and data.")
    if head.startswith(b"PAR1"):
        return FileKind.PARQUET
    if head.startswith(_ZIP_MAGICS):
        return FileKind.XLSX
    if head.startswith(_OLE2_MAGIC):
        if ext in (".xlsx", ".xlsm") or _ENCRYPTED_PACKAGE in head:
            raise IngestError(
                f"{shown} is a password-protected (encrypted) workbook, which Cleanroom cannot "
                "read; remove the password in Excel, save as .xlsx and upload it again."
            )
        raise IngestError(
            f"{shown} is a legacy .xls workbook (Excel 97-2003), which Cleanroom does not read: "
            "save as .xlsx or CSV and upload it again."
        )
    for magic, what in _BINARY_MAGICS:
        if head.startswith(magic):
            raise _binary(shown, what)
    if _JSON_START.match(head):
        if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{") and _RESOURCE_TYPE.search(head):
            return FileKind.FHIR
        raise IngestError(
            f"{shown} is JSON but not FHIR R5: it has no `resourceType`. Upload a FHIR R5 "
            "Bundle or NDJSON (one resource per line), or CSV, XLSX or Parquet."
        )

    encoding = _bom_encoding(head) or _utf16_without_bom(head)
    if encoding is not None and encoding != "utf-8-sig":
        text = head.decode(encoding, errors="replace")
        controls = len(_CONTROL_CHARS.findall(text))
        if "\x00" in text or controls > _MAX_CONTROL_SHARE * len(text):
            raise _binary(shown, "PDF/ZIP/executable/image or similar")
    else:
        if head.startswith(b"MZ") and b"\x00" in head:
            raise _binary(shown, "a Windows executable")
        controls = len(head) - len(head.translate(None, _CONTROL_BYTES))
        if b"\x00" in head or controls > _MAX_CONTROL_SHARE * len(head):
            if ext == ".parquet":
                raise IngestError(
                    f"{shown} is named .parquet but is not a Parquet file (it does not start "
                    "with 'PAR1'); it may be damaged: export it again and upload it."
                )
            if ext in (".xlsx", ".xlsm"):
                raise IngestError(
                    f"{shown} is named {ext} but is not an Excel workbook (an {ext} file is a "
                    "ZIP archive); save it again from Excel as .xlsx or CSV."
                )
            raise _binary(shown, "PDF/ZIP/executable/image or similar")
        text = head.removeprefix(codecs.BOM_UTF8).decode("latin-1")
    markup = _markup(text)
    if markup is not None:
        raise IngestError(f"{shown} is {markup}.")
    return FileKind.CSV


def sniff_file(path: Path, filename: str = "") -> FileKind:
    """:func:`sniff` on the first ``SNIFF_BYTES`` of the file at ``path``."""
    with open(path, "rb") as fh:
        return sniff(fh.read(SNIFF_BYTES), filename or path.name)


# File names ----------------------------------------------------------------------------------

_MAX_NAME = 200
_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_filename(name: str) -> str:
    """A readable base name for display and records (never a path): directories, drive
    letters, control and bidi-override characters and leading dots removed, at most 200
    characters with the extension kept, ``"upload"`` when nothing is left."""
    text = unicodedata.normalize("NFC", str(name))
    text = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Zl", "Zp"))
    text = text.replace("\\", "/")
    parts = [p.strip() for p in text.split("/")]
    parts = [p for p in parts if p.strip(". ")]
    base = parts[-1] if parts else ""
    base = _DRIVE.sub("", base)
    base = " ".join(base.split())  # collapse runs of whitespace
    base = base.lstrip(". ").rstrip(" ")
    if len(base) > _MAX_NAME:
        stem, dot, ext = base.rpartition(".")
        if dot and stem and 0 < len(ext) <= 16:
            base = stem[: _MAX_NAME - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            base = base[:_MAX_NAME].rstrip(" .")
    return base or "upload"


# Encodings and delimiters --------------------------------------------------------------------

_LEGACY_ENCODINGS = [
    "cp1252",
    "iso8859_15",
    "latin_1",
    "cp1250",
    "cp1251",
    "cp1253",
    "cp1254",
    "cp1257",
    "mac_roman",
]
"""Single-byte code pages charset-normalizer may pick from. East-Asian multi-byte encodings
are left out on purpose: on short Western samples they win by accident, and Excel offers
"CSV UTF-8" to anyone who writes them."""

_UTF8_ADVICE = "save the file as UTF-8 (in Excel: Save As > 'CSV UTF-8') and upload it again"


def _decodes(sample: bytes, encoding: str) -> str | None:
    """``sample`` decoded strictly, tolerating a character cut at its end; ``None`` if it is
    not valid in ``encoding``."""
    try:
        return codecs.getincrementaldecoder(encoding)("strict").decode(sample, final=False)
    except (UnicodeDecodeError, LookupError):
        return None


def _mixes_utf8(sample: bytes) -> bool:
    """True when some lines of ``sample`` are non-ASCII UTF-8 and others are not UTF-8."""
    utf8 = other = False
    for line in sample.split(b"\n"):
        if line.isascii():
            continue
        if _decodes(line, "utf-8") is None:
            other = True
        else:
            utf8 = True
        if utf8 and other:
            return True
    return False


def detect_encoding(sample: bytes) -> str:
    """The text encoding of ``sample``: a byte-order mark first, then strict UTF-8, then
    charset-normalizer's best guess among Western, Central European, Cyrillic, Greek and
    Turkish code pages (cp1252 when it reads the same text: Excel's own "CSV"). A sample
    with some lines in UTF-8 and others not is reported as UTF-8, so that reading fails at
    the first line that is not (the message names it) instead of garbling the others.

    Raises :class:`IngestError` when nothing decodes sensibly."""
    bom = _bom_encoding(sample)
    if bom is not None:
        return bom
    utf16 = _utf16_without_bom(sample)
    if utf16 is not None:
        return utf16
    if _decodes(sample, "utf-8") is not None or _mixes_utf8(sample):
        # A file that mixes encodings: reading it as UTF-8 fails at the line that breaks
        # it, which the message then names; a single-byte code page would silently garble
        # the UTF-8 lines instead.
        return "utf-8"
    matches = from_bytes(sample, cp_isolation=_LEGACY_ENCODINGS)
    best = matches.best()
    if best is None:
        raise IngestError(
            f"Cleanroom could not tell the text encoding of the file; {_UTF8_ADVICE}."
        )
    guess = best.encoding
    cp1252 = _decodes(sample, "cp1252")
    if guess != "cp1252" and cp1252 is not None:
        if any(m.encoding == "cp1252" for m in matches) or cp1252 == _decodes(sample, guess):
            return "cp1252"
    return guess


_DELIMITERS = ",;\t|"
_SNIFF_LINES = 50


def _whole_lines(text: str, limit: int = 64 * 1024) -> str:
    """At most ``limit`` characters of ``text`` ending at a line break (when it has one)."""
    text = text[:limit]
    cut = max(text.rfind("\n"), text.rfind("\r"))
    return text[: cut + 1] if cut > 0 else text


def _field_counts(text: str, delimiter: str, limit: int = _SNIFF_LINES) -> list[int]:
    counts: list[int] = []
    try:
        for record in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
            if record and not (len(record) == 1 and not record[0].strip()):
                counts.append(len(record))
            if len(counts) >= limit:
                break
    except csv.Error:
        pass
    return counts


def _consistency(counts: list[int]) -> tuple[float, int]:
    """Share of records with the most common field count, and that count."""
    if not counts:
        return 0.0, 0
    mode, seen = Counter(counts).most_common(1)[0]
    return seen / len(counts), mode


def detect_delimiter(text_sample: str) -> str:
    """The field delimiter among ``,`` ``;`` tab and ``|``: csv.Sniffer's choice when the
    records then have consistent field counts, else the delimiter giving the most consistent
    count above one; ``,`` for a one-column file."""
    text = _whole_lines(text_sample)
    if not text.strip():
        return ","
    try:
        lines = "".join(text.splitlines(keepends=True)[:_SNIFF_LINES])
        guess = csv.Sniffer().sniff(lines, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        guess = None
    if guess and guess in _DELIMITERS:
        share, mode = _consistency(_field_counts(text, guess))
        if mode > 1 and share >= 0.9:
            return guess
    best, best_score = ",", (0.0, 0)
    for candidate in _DELIMITERS:
        share, mode = _consistency(_field_counts(text, candidate))
        if mode > 1 and (share, mode) > best_score:
            best, best_score = candidate, (share, mode)
    return best


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tab", ",": "','", ";": "';'", "|": "'|'"}.get(delimiter, repr(delimiter))


# Shared checks -------------------------------------------------------------------------------


def _position(index: int, excel: bool) -> str:
    """``"3"``, or ``"3 (C)"`` in a workbook, for the column at 0-based ``index``."""
    return f"{index + 1} ({get_column_letter(index + 1)})" if excel else f"{index + 1}"


def _column_label(index: int, excel: bool) -> str:
    return f"column {_position(index, excel)}"


def _joined(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _check_column_count(count: int, limits: Limits) -> None:
    if count > limits.max_columns:
        raise IngestError(
            f"the file has {count:,} columns; Cleanroom accepts up to {limits.max_columns:,}: "
            "remove unused columns or split the table into several files."
        )


def _check_row_count(count: int, limits: Limits) -> None:
    if count > limits.max_rows:
        raise IngestError(
            f"the file has more than {limits.max_rows:,} data rows, the most Cleanroom accepts "
            "in one upload; split it into several files."
        )


def _check_names(names: list[str], limits: Limits, *, excel: bool = False) -> None:
    """Refuse over-long and duplicate column names (missing names are checked once the
    data is known, since empty trailing columns are dropped)."""
    for i, name in enumerate(names):
        if len(name) > limits.max_header_chars:
            raise IngestError(
                f"the name of {_column_label(i, excel)} is {len(name):,} characters long; "
                f"column names may have up to {limits.max_header_chars:,} characters. Is the "
                "first row really the header?"
            )
    positions: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        if name:
            positions.setdefault(name, []).append(i)
    repeated = [(n, p) for n, p in positions.items() if len(p) > 1]
    if repeated:
        parts = [
            f"'{name}' (columns {_joined([_position(i, excel) for i in where])})"
            for name, where in repeated[:5]
        ]
        raise IngestError(
            f"the header repeats column names: {'; '.join(parts)}; give every column a unique name."
        )


def _check_unnamed(names: list[str], *, excel: bool = False) -> None:
    missing = [i for i, name in enumerate(names) if not name]
    if missing:
        labels = [_column_label(i, excel) for i in missing[:5]]
        verb = "has" if len(missing) == 1 else "have"
        more = f" (and {len(missing) - 5:,} more)" if len(missing) > 5 else ""
        raise IngestError(
            f"{_joined(labels)}{more} {verb} no name; put a name in the header row (the "
            "first row) above every column that holds data."
        )


def _cell_too_long(column: str, where: str, length: int, limits: Limits) -> IngestError:
    return IngestError(
        f"column '{column}' has a value of {length:,} characters in {where}; a cell "
        f"may hold up to {limits.max_cell_chars:,} characters. If this is a CSV file, check "
        "for a missing closing quote that made several rows run together."
    )


def _assemble(
    names: list[str],
    arrays: list[np.ndarray],
    masks: list[np.ndarray],
    warnings_: list[str],
    *,
    excel: bool = False,
) -> pd.DataFrame:
    """Drop empty trailing columns without a name and empty trailing rows, refuse other
    unnamed columns, and build the frame of ``str``/``None`` cells."""
    dropped = 0
    while names and not names[-1] and bool(masks[-1].all()):
        names, arrays, masks = names[:-1], arrays[:-1], masks[:-1]
        dropped += 1
    if dropped:
        plural = "s" if dropped > 1 else ""
        warnings_.append(
            f"{dropped} empty column{plural} without a name at the end of the table "
            f"{'were' if dropped > 1 else 'was'} ignored."
        )
    _check_unnamed(names, excel=excel)
    if arrays and len(arrays[0]):
        empty_rows = np.logical_and.reduce(masks)
        filled = np.flatnonzero(~empty_rows)
        keep = int(filled[-1]) + 1 if len(filled) else 0
        trailing = len(arrays[0]) - keep
        if trailing:
            arrays = [a[:keep] for a in arrays]
            plural = "s" if trailing > 1 else ""
            were = "were" if trailing > 1 else "was"
            warnings_.append(
                f"{trailing:,} empty row{plural} at the end of the table {were} ignored."
            )
    frame = pd.DataFrame(dict(enumerate(arrays)), copy=False)
    if not arrays:
        frame = pd.DataFrame(index=pd.RangeIndex(0))
    frame.columns = pd.Index(names, dtype=object)
    if len(frame) == 0:
        warnings_.append("the table has a header but no data rows.")
    return frame


def _overlong(values: np.ndarray, limit: int) -> tuple[int, int] | None:
    """The first cell of ``values`` longer than ``limit`` characters, as (index, length)."""
    if not len(values):
        return None
    strings = pa.array(values, type=pa.string(), from_pandas=True)
    if (pc.max(pc.binary_length(strings)).as_py() or 0) <= limit:
        return None  # the cheap test: a character takes at least one byte
    lengths = pc.utf8_length(strings)
    first = pc.index(pc.greater(lengths, limit), True).as_py()
    return None if first < 0 else (first, lengths[first].as_py())


@contextlib.contextmanager
def _plain_errors(what: str, advice: str, path: Path) -> Iterator[None]:
    """Turn any failure inside a reader into an IngestError saying ``what``, with the
    library's one-line reason (server paths removed)."""
    try:
        yield
    except (IngestError, MemoryError):
        raise
    except Exception as exc:
        log.info("reader failed on %s", path, exc_info=True)
        detail = str(exc).replace(str(path), "the file").strip().splitlines()
        reason = detail[0][:200] if detail else type(exc).__name__
        raise IngestError(f"{what} ({reason}); {advice}.") from exc


# CSV -----------------------------------------------------------------------------------------


def _encoding_sample(path: Path, budget: int = SNIFF_BYTES) -> tuple[bytes, bytes]:
    """The head of the file, and a sample for :func:`detect_encoding`: the head plus lines
    holding non-ASCII bytes found further on (so an "é" on line 90,000 still counts)."""
    with open(path, "rb") as fh:
        head = fh.read(SNIFF_BYTES)
        if _bom_encoding(head) or _utf16_without_bom(head):
            return head, head
        cut = head.rfind(b"\n") + 1 or _ascii_cut(head)
        parts, carry = [head[:cut]], head[cut:]
        found = 0
        while found < budget:
            chunk = fh.read(_CHUNK)
            if not chunk:
                if carry and not carry.isascii():
                    parts.append(carry)
                break
            block = carry + chunk
            end = block.rfind(b"\n") + 1
            if end == 0 and len(block) > _CHUNK:
                end = _ascii_cut(block)  # a very long line: never split a character
            block, carry = block[:end], block[end:]
            if not block.isascii():
                for line in block.split(b"\n"):
                    if not line.isascii():
                        parts.append(line + b"\n")
                        found += len(line) + 1
    return head, b"".join(parts)


def _ascii_cut(block: bytes) -> int:
    """Where to cut ``block`` so that no multi-byte character is split: after its last
    ASCII byte (or at its end when it has none)."""
    found = re.search(rb"[\x00-\x7f][\x80-\xff]*\Z", block)
    return found.start() + 1 if found else len(block)


def _decode_head(head: bytes, encoding: str) -> str:
    text = codecs.getincrementaldecoder(encoding)("replace").decode(head, final=False)
    return text.lstrip("\ufeff")


def _header_record(path: Path, encoding: str, delimiter: str, limits: Limits) -> list[str]:
    """The header's field names, counting its fields while streaming so that a file with
    100,000 columns is refused without being read."""
    cap = limits.max_columns * (limits.max_header_chars + 3) + 2
    count, kept, kept_len = 1, [], 0
    in_quotes, started = False, False
    with open(path, encoding=encoding, newline="") as fh:
        while chunk := fh.read(64 * 1024):
            if not started:
                chunk = chunk.lstrip("\ufeff\r\n")
                if not chunk:
                    continue
                started = True
            end = None
            offset = 0
            for i, part in enumerate(chunk.split('"')):
                if i:
                    in_quotes = not in_quotes  # a doubled "" toggles twice: no change
                if not in_quotes:
                    breaks = [p for p in (part.find("\n"), part.find("\r")) if p >= 0]
                    if breaks:
                        count += part.count(delimiter, 0, min(breaks))
                        end = offset + min(breaks)
                        break
                    count += part.count(delimiter)
                offset += len(part) + 1
            piece = chunk if end is None else chunk[:end]
            if kept_len <= cap:
                kept.append(piece)
                kept_len += len(piece)
            if end is not None:
                break
    _check_column_count(count, limits)
    if kept_len > cap:
        raise IngestError(
            f"the header row is {kept_len:,}+ characters long; column names may have up to "
            f"{limits.max_header_chars:,} characters each. Is the first row really the header?"
        )
    text = "".join(kept)
    for record in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter):
        return [name.strip() for name in record]
    return []


def _scan_records(
    path: Path, encoding: str, delimiter: str, expected: int
) -> tuple[list[tuple[int, int]], int, list[int]]:
    """Rows with more fields than the header (the first five, as (line, fields)) and rows
    with fewer (how many, and the first five lines), by physical line number."""
    longer: list[tuple[int, int]] = []
    shorter: list[int] = []
    short_count = 0
    previous = 0
    header_seen = False
    with open(path, encoding=encoding, newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter, quotechar='"', doublequote=True)
        try:
            for record in reader:
                start, previous = previous + 1, reader.line_num
                if not record or (len(record) == 1 and not record[0].strip()):
                    continue  # a blank line: pandas skips it too
                if not header_seen:
                    header_seen = True
                    continue
                if len(record) > expected:
                    longer.append((start, len(record)))
                    if len(longer) >= 5:
                        break
                elif len(record) < expected:
                    short_count += 1
                    if len(shorter) < 5:
                        shorter.append(start)
        except csv.Error:
            pass  # e.g. a field over csv's size limit: report what was found so far
    return longer, short_count, shorter


def _cells_may_exceed(path: Path, encoding: str, records: int, limit: int) -> bool:
    """False when no cell can be longer than ``limit`` characters, found without looking at
    the cells: every record is one line (as many records as non-blank lines; a record over
    several lines takes at least two non-blank ones) and no line is longer than ``limit``
    bytes (a character takes at least one)."""
    if path.stat().st_size <= limit:
        return False
    if encoding.startswith(("utf-16", "utf-32")):
        return True  # line breaks are not single bytes there
    longest, lines, carry = 0, 0, b""
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            parts = (carry + chunk).split(b"\n")
            carry = parts.pop()
            longest = max(longest, max(map(len, parts), default=0))
            lines += len(parts) - parts.count(b"") - parts.count(b"\r")
            if longest > limit:
                return True
    if carry.strip(b"\r"):
        longest, lines = max(longest, len(carry)), lines + 1
    return longest > limit or lines != records


def _ragged(path: Path, encoding: str, delimiter: str, expected: int, pandas_msg: str) -> str:
    longer, _, _ = _scan_records(path, encoding, delimiter, expected)
    if not longer:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", pandas_msg)
        if found is None:
            return ""
        longer = [(int(found.group(2)), int(found.group(3)))]
    listed = ", ".join(f"line {line:,} has {n} fields" for line, n in longer)
    first = " (the first five are shown)" if len(longer) >= 5 else ""
    return (
        f"{listed}, the header has {expected}{first}; check for unquoted delimiters: a value "
        f"containing {_delimiter_name(delimiter)} must be enclosed in double quotes."
    )


def _decode_failure(path: Path, encoding: str) -> str:
    """Where the file stops being valid ``encoding``: line and byte offset, for the message."""
    decoder = codecs.getincrementaldecoder(encoding)("strict")
    offset, lines = 0, 0
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                position = max(0, min(exc.start, len(chunk)))
                before = chunk[:position].decode(encoding, errors="replace")
                line = lines + before.count("\n") + 1
                bad = chunk[position : position + 1].hex().upper()
                what = f"byte 0x{bad}" if bad else "the last character, which is cut off,"
                return f"{what} at line {line:,} (byte offset {offset + position:,})"
            if not chunk:
                return "somewhere in the file"
            lines += text.count("\n")
            offset += len(chunk)


_ENCODING_NAMES = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}


_CSV_FAILED = "the CSV file could not be read"
_CSV_ADVICE = "check that it is a plain comma-, semicolon- or tab-separated text file"


def _read_csv(path: Path, limits: Limits) -> ParsedTable:
    head, sample = _encoding_sample(path)
    kind = sniff(head, "")
    if kind is not FileKind.CSV:
        raise IngestError(f"the file holds {kind.value.upper()} data, not CSV; read it as such.")
    encoding = detect_encoding(sample)
    with _plain_errors(_CSV_FAILED, _CSV_ADVICE, path):
        try:
            return _parse_csv(path, head, encoding, limits)
        except UnicodeDecodeError:
            shown = _ENCODING_NAMES.get(encoding, encoding)
            where = _decode_failure(path, encoding)
            mixed = " (the file probably mixes encodings)" if encoding.startswith("utf-8") else ""
            raise IngestError(
                f"the file is not valid {shown} text{mixed}: {where} cannot be read as "
                f"{shown}; {_UTF8_ADVICE}."
            ) from None


def _parse_csv(path: Path, head: bytes, encoding: str, limits: Limits) -> ParsedTable:
    delimiter = detect_delimiter(_decode_head(head, encoding))
    names = _header_record(path, encoding, delimiter, limits)
    _check_names(names, limits)
    try:
        raw = pd.read_csv(
            path,
            sep=delimiter,
            header=None,  # the header is row 0: a longer data row is then an error, not an index
            dtype=str,
            keep_default_na=False,
            na_values=[""],
            encoding=encoding,
            encoding_errors="strict",
            engine="c",
            quotechar='"',
            doublequote=True,
            skip_blank_lines=True,
            nrows=limits.max_rows + 2,
        )
    except pd.errors.EmptyDataError:
        raise IngestError("the file is empty; upload a file with a header row and data.") from None
    except pd.errors.ParserError as exc:
        text = str(exc)
        if "EOF inside string" in text:
            found = re.search(r"row (\d+)", text)
            where = (
                f" (it opens in row {int(found.group(1)) + 1:,}, counting the header as row 1)"
                if found
                else ""
            )
            raise IngestError(
                f"a quoted value is never closed{where}, so the rest of the file runs into "
                "it; check that every opening double quote has a closing one."
            ) from None
        message = _ragged(path, encoding, delimiter, len(names), text) if names else ""
        raise IngestError(
            message or f"{_CSV_FAILED} ({text.strip()[:200]}); {_CSV_ADVICE}."
        ) from None

    if raw.shape[0] == 0:
        raise IngestError("the file is empty; upload a file with a header row and data.")
    header = [v.strip() if isinstance(v, str) else "" for v in raw.iloc[0].tolist()]
    if header:
        header[0] = header[0].lstrip("\ufeff").strip()
    _check_column_count(len(header), limits)
    _check_names(header, limits)
    _check_row_count(raw.shape[0] - 1, limits)

    warnings_: list[str] = []
    arrays: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    check_lengths = _cells_may_exceed(path, encoding, raw.shape[0], limits.max_cell_chars)
    for i in range(raw.shape[1]):
        values = raw[i].to_numpy(dtype=object)[1:]
        mask = values != values  # NaN, pandas' empty cell, is the one value unequal to itself
        if mask.any():
            values = values.copy()
            values[mask] = None
        over = _overlong(values, limits.max_cell_chars) if check_lengths else None
        if over is not None:
            where = f"row {over[0] + 2:,} (counting the header as row 1)"
            raise _cell_too_long(header[i] or f"{i + 1}", where, over[1], limits)
        arrays.append(values)
        masks.append(mask)
    del raw

    if len(header) > 1 and len(masks[-1]) and masks[-1].any():
        # Only rows whose last cell is empty can be short: scan the file only then.
        _, short_count, first = _scan_records(path, encoding, delimiter, len(header))
        if short_count:
            lines = _joined([f"{n:,}" for n in first])
            more = " …" if short_count > len(first) else ""
            if short_count == 1:
                counted = f"1 row has fewer fields than the header ({len(header)})"
            else:
                counted = f"{short_count:,} rows have fewer fields than the header ({len(header)})"
            warnings_.append(
                f"{counted}; the missing cells were left empty "
                f"(line{'s' if len(first) > 1 else ''} {lines}{more})."
            )
    frame = _assemble(header, arrays, masks, warnings_)
    return ParsedTable(
        frame=frame,
        encoding=encoding,
        delimiter=delimiter,
        sheet=None,
        warnings=warnings_,
    )


# Rendering non-text values -------------------------------------------------------------------


def _duration_text(value: timedelta) -> str:
    micros = (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds
    sign = "-" if micros < 0 else ""
    seconds, micro = divmod(abs(micros), 1_000_000)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours}:{minutes:02d}:{secs:02d}"
    return f"{text}.{micro:06d}" if micro else text


def _float_text(value: float, digits: str) -> str | None:
    if math.isnan(value):
        return None
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return format(value, digits) if digits else repr(value)


def _cell_text(value: Any, float_digits: str = ".15g") -> str | None:
    """One cell as a string (see the module docstring); Excel shows 15 significant digits,
    so ``0.1 + 0.2`` is ``"0.3"`` as the contributor saw it."""
    if value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _float_text(value, float_digits)
    if isinstance(value, datetime):
        if value.time() == time(0) and getattr(value, "nanosecond", 0) == 0:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return _duration_text(value)
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)


# XLSX ----------------------------------------------------------------------------------------

_XLSX_DAMAGED = "the XLSX file is damaged or not a real workbook"
_XLSX_ADVICE = "open it in Excel, save it again as .xlsx and upload it again"


def _inspect_xlsx(path: Path, limits: Limits) -> None:
    """Check the ZIP container before openpyxl touches it: a workbook, not encrypted, no
    macros, and no zip bomb. Python's zipfile never inflates a member past its declared
    size (it fails the CRC instead), so the declared sizes bound what openpyxl can unpack."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise IngestError(
            f"{_XLSX_DAMAGED} (the ZIP container is truncated or corrupt: {exc}); {_XLSX_ADVICE}."
        ) from None
    names = {info.filename for info in infos}
    if "xl/workbook.bin" in names:
        raise IngestError(
            "this is a binary Excel workbook (.xlsb), which Cleanroom does not read; save it "
            "as .xlsx or CSV and upload it again."
        )
    if "[Content_Types].xml" not in names or "xl/workbook.xml" not in names:
        if "mimetype" in names and "content.xml" in names:
            what = "an OpenDocument file (.ods), not an Excel workbook; save it as .xlsx or CSV"
        elif "word/document.xml" in names:
            what = "a Word document, not an Excel workbook; " + _UPLOAD_ADVICE
        elif "ppt/presentation.xml" in names:
            what = "a PowerPoint presentation, not an Excel workbook; " + _UPLOAD_ADVICE
        else:
            what = (
                "a ZIP archive but not an Excel workbook (it has no xl/workbook.xml); upload "
                "the .xlsx, .csv or .parquet file itself, not an archive containing it"
            )
        raise IngestError(f"the file is {what}.")
    if any(info.flag_bits & 0x1 for info in infos):
        raise IngestError(
            "the workbook is encrypted; remove the password in Excel, save as .xlsx and "
            "upload it again."
        )
    if "xl/vbaProject.bin" in names or any(n.startswith("xl/macrosheets/") for n in names):
        raise IngestError(
            "macro-enabled workbooks are refused; save as .xlsx without macros (Excel "
            "Workbook, not Macro-Enabled) and upload it again."
        )
    total = sum(info.file_size for info in infos)
    if total > limits.max_xlsx_uncompressed:
        raise IngestError(
            f"the workbook would unpack to {human_size(total)}, more than the "
            f"{human_size(limits.max_xlsx_uncompressed)} Cleanroom accepts; split it into "
            "several files or upload it as CSV or Parquet."
        )
    for info in infos:
        if info.file_size < _RATIO_FLOOR:
            continue
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > limits.max_xlsx_ratio:
            raise IngestError(
                f"the workbook looks like a zip bomb: its part '{info.filename}' would unpack "
                f"from {human_size(info.compress_size)} to {human_size(info.file_size)} "
                f"({ratio:,.0f} times; Cleanroom allows {limits.max_xlsx_ratio:,.0f}). If the "
                "file is genuine, save it as CSV or Parquet and upload that."
            )


@contextlib.contextmanager
def _workbook(path: Path, limits: Limits) -> Iterator[Any]:
    """The checked workbook, opened read-only with cached formula results, then closed."""
    _inspect_xlsx(path, limits)
    with _plain_errors(_XLSX_DAMAGED, _XLSX_ADVICE, path):
        with warnings.catch_warnings():
            # openpyxl warns about features it drops (data validation, ...): not the user's
            # concern, since only cell values are read.
            warnings.simplefilter("ignore")
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        yield book
    finally:
        book.close()


def _listing(titles: list[str]) -> str:
    shown = ", ".join(f"'{t}'" for t in titles[:20])
    return shown + (f" and {len(titles) - 20} more" if len(titles) > 20 else "")


def list_sheets(path: Path, *, limits: Limits = DEFAULT_LIMITS) -> list[str]:
    """Names of the worksheets of an XLSX file, in workbook order (chart sheets left out)."""
    with _workbook(Path(path), limits) as book:
        return [ws.title for ws in book.worksheets]


def _choose_sheet(book: Any, sheet: str | None) -> str:
    titles = [ws.title for ws in book.worksheets]
    if not titles:
        raise IngestError("the workbook has no worksheets; upload a workbook with a table.")
    if sheet is None:
        if len(titles) == 1:
            return titles[0]
        raise IngestError(
            f"the workbook has {len(titles)} sheets ({_listing(titles)}); choose the sheet "
            "to import."
        )
    if sheet in titles:
        return sheet
    if sheet in book.sheetnames:
        raise IngestError(
            f"the sheet '{sheet}' is a chart, not a table; choose one of {_listing(titles)}."
        )
    raise IngestError(
        f"the workbook has no sheet named '{sheet}'; its sheets are {_listing(titles)}."
    )


_FORMULA = re.compile(rb"<(?:\w+:)?f[\s>/]")


def _missing_formula_results(path: Path, member: str) -> tuple[int, list[str]]:
    """Formula cells of the sheet part ``member`` that have no cached result: how many, and
    the first five cell references."""
    count, refs = 0, list[str]()
    with zipfile.ZipFile(path) as archive:
        with archive.open(member) as fh:
            tail, found = b"", False
            while chunk := fh.read(_CHUNK):
                if _FORMULA.search(tail + chunk):
                    found = True
                    break
                tail = chunk[-16:]
        if not found:
            return 0, []
        with archive.open(member) as fh:
            sheet_data = None
            # Not defusedxml (not installed): openpyxl has just parsed this very part with
            # the same ElementTree/expat, which resolves no external entities and, from expat
            # 2.4.1 on, stops entity-expansion ("billion laughs") bombs.
            events = ElementTree.iterparse(fh, events=("start", "end"))  # noqa: S314
            for event, element in events:
                tag = element.tag.rpartition("}")[2]
                if event == "start":
                    if tag == "sheetData":
                        sheet_data = element
                    continue
                if tag == "c":
                    has_formula = has_value = False
                    for child in element:
                        name = child.tag.rpartition("}")[2]
                        has_formula = has_formula or name == "f"
                        has_value = has_value or (
                            name in ("v", "is") and len(child) + len(child.text or "") > 0
                        )
                    if has_formula and not has_value:
                        count += 1
                        if len(refs) < 5:
                            refs.append(element.get("r") or "?")
                elif tag == "row" and sheet_data is not None:
                    sheet_data.clear()  # keep memory flat on long sheets
    return count, refs


def _read_xlsx(path: Path, sheet: str | None, limits: Limits) -> ParsedTable:
    warnings_: list[str] = []
    rows: list[list[str | None]] = []
    width = 0
    with _workbook(path, limits) as book:
        chosen = _choose_sheet(book, sheet)
        worksheet = book[chosen]
        member = getattr(worksheet, "_worksheet_path", None)  # openpyxl keeps the part name
        with _plain_errors(_XLSX_DAMAGED, _XLSX_ADVICE, path):
            # The declared dimensions may be wrong (or hostile: A1:XFD1048576); read the cells.
            worksheet.reset_dimensions()
            for number, row in enumerate(worksheet.iter_rows(values_only=True), start=1):
                values = [_cell_text(v) for v in row]
                while values and values[-1] is None:
                    values.pop()
                if len(values) > width:
                    width = len(values)
                    if width > limits.max_columns:
                        raise IngestError(
                            f"row {number:,} of sheet '{chosen}' has data in column "
                            f"{get_column_letter(width)} ({width:,}); Cleanroom accepts up to "
                            f"{limits.max_columns:,} columns: remove unused columns or split "
                            "the table."
                        )
                for i, v in enumerate(values):
                    if v is not None and len(v) > limits.max_cell_chars:
                        where = f"row {number:,} of sheet '{chosen}'"
                        raise _cell_too_long(get_column_letter(i + 1), where, len(v), limits)
                rows.append(values)
                _check_row_count(len(rows) - 1, limits)
    while rows and not rows[-1]:
        rows.pop()
    if not rows:
        raise IngestError(f"the sheet '{chosen}' is empty; choose the sheet that holds the table.")
    if not rows[0]:
        raise IngestError(
            f"the first row of sheet '{chosen}' (the header) is empty; put the column names "
            "in row 1."
        )
    header = [(v or "").strip() for v in rows[0]]
    header += [""] * (width - len(header))
    _check_names(header, limits, excel=True)

    body = rows[1:]
    arrays: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    for i in range(width):
        cells = np.array([r[i] if i < len(r) else None for r in body], dtype=object)
        arrays.append(cells)
        masks.append(np.fromiter((v is None for v in cells), dtype=bool, count=len(cells)))
    del rows, body

    if member:
        with _plain_errors(_XLSX_DAMAGED, _XLSX_ADVICE, path):
            missing, refs = _missing_formula_results(path, member)
        if missing:
            plural = "s have" if missing > 1 else " has"
            were = "were" if missing > 1 else "was"
            warnings_.append(
                f"{missing:,} formula cell{plural} no saved result and {were} "
                f"left empty ({', '.join(refs)}{' …' if missing > len(refs) else ''}); open "
                "the file in Excel, let it calculate, save it and upload it again."
            )
    frame = _assemble(header, arrays, masks, warnings_, excel=True)
    return ParsedTable(
        frame=frame,
        encoding=None,
        delimiter=None,
        sheet=chosen,
        warnings=warnings_,
    )


# Parquet -------------------------------------------------------------------------------------

_PARQUET_DAMAGED = "the Parquet file is damaged or truncated"
_PARQUET_ADVICE = "export it again and upload the complete file"


def _describe_nested(kind: pa.DataType) -> str:
    if pa.types.is_struct(kind):
        return "records (struct)"
    if pa.types.is_map(kind):
        return "maps"
    if pa.types.is_union(kind):
        return "unions"
    return "lists"


def _timestamps_text(column: pa.ChunkedArray) -> Iterable[str | None]:
    """ISO 8601 for a timestamp column: dates alone when every value is at midnight."""
    kind = column.type
    if kind.tz is None:
        midnight = pc.all(pc.equal(pc.floor_temporal(column, unit="day"), column)).as_py()
        if midnight is not False:
            return pc.cast(pc.cast(column, pa.date32()), pa.string()).to_pylist()
        whole = pc.all(pc.equal(pc.floor_temporal(column, unit="second"), column)).as_py()
        if whole is not False:
            seconds = pc.cast(column, pa.timestamp("s"), safe=False)
            return pc.strftime(seconds, format="%Y-%m-%dT%H:%M:%S").to_pylist()
    values = column.to_pylist()
    at_midnight = all(
        v.time() == time(0) and getattr(v, "nanosecond", 0) == 0 for v in values if v is not None
    )
    return [
        None if v is None else (v.date().isoformat() if at_midnight else v.isoformat())
        for v in values
    ]


def _arrow_text(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """A Parquet column as an object array of ``str``/``None`` (see the module docstring)."""
    kind = column.type
    if isinstance(kind, pa.ExtensionType):
        column = pa.chunked_array([c.storage for c in column.chunks], type=kind.storage_type)
        kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_nested(kind):
        raise IngestError(
            f"column '{name}' holds {_describe_nested(kind)} ({kind}); Cleanroom accepts flat "
            "tables with one value per cell: flatten or drop the column and export again."
        )
    text: Any
    if pa.types.is_null(kind):
        return np.full(len(column), None, dtype=object)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        text = column
    elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        try:
            text = pc.cast(column, pa.string())
        except pa.ArrowInvalid:
            raise IngestError(
                f"column '{name}' holds binary data, not text; Cleanroom accepts text, "
                "numbers, dates and booleans."
            ) from None
    elif pa.types.is_floating(kind):
        if pa.types.is_float16(kind):
            column = pc.cast(column, pa.float32())
        text = pc.if_else(
            pc.is_nan(column), pa.scalar(None, pa.string()), pc.cast(column, pa.string())
        )
    elif pa.types.is_integer(kind) or pa.types.is_decimal(kind) or pa.types.is_date(kind):
        text = pc.cast(column, pa.string())
    elif pa.types.is_boolean(kind):
        text = pc.cast(column, pa.string())  # "true" / "false"
    elif pa.types.is_timestamp(kind):
        return np.array(list(_timestamps_text(column)), dtype=object)
    else:  # time, duration, fixed-size binary and the rest: through Python values
        return np.array([_cell_text(v, "") for v in column.to_pylist()], dtype=object)
    array = text.to_numpy(zero_copy_only=False)
    return array.astype(object, copy=False)


def _read_parquet(path: Path, limits: Limits) -> ParsedTable:
    with _plain_errors(_PARQUET_DAMAGED, _PARQUET_ADVICE, path):
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
        total_rows = parquet.metadata.num_rows
    _check_column_count(len(schema), limits)
    _check_row_count(total_rows, limits)
    names = [f.name.strip() for f in schema]
    _check_names(names, limits)
    for f in schema:
        kind = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
        if pa.types.is_nested(kind):
            raise IngestError(
                f"column '{f.name}' holds {_describe_nested(kind)} ({kind}); Cleanroom accepts "
                "flat tables with one value per cell: flatten or drop the column and export "
                "again."
            )
    with _plain_errors(_PARQUET_DAMAGED, _PARQUET_ADVICE, path):
        table = parquet.read(use_pandas_metadata=False)
        arrays: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        for i, name in enumerate(names):
            values = _arrow_text(table.column(i), name or str(i + 1))
            over = _overlong(values, limits.max_cell_chars)
            if over is not None:
                raise _cell_too_long(name, f"data row {over[0] + 1:,}", over[1], limits)
            arrays.append(values)
            masks.append(pd.isna(values))
        del table
    warnings_: list[str] = []
    frame = _assemble(names, arrays, masks, warnings_)
    return ParsedTable(
        frame=frame,
        encoding=None,
        delimiter=None,
        sheet=None,
        warnings=warnings_,
    )


# Entry point ---------------------------------------------------------------------------------


def read_table(
    path: Path,
    kind: FileKind,
    *,
    sheet: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> ParsedTable:
    """Read the file at ``path`` as ``kind`` (from :func:`sniff`) into raw strings.

    ``sheet`` chooses an XLSX worksheet (required when there are several). Every refusal is
    an :class:`IngestError`; a missing ``path`` is the caller's bug and raises ``OSError``."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise IngestError("the file is empty; upload a file with a header row and data.")
    kind = FileKind(kind)
    if kind is FileKind.CSV:
        return _read_csv(path, limits)
    if kind is FileKind.XLSX:
        return _read_xlsx(path, sheet, limits)
    # A FHIR upload is split into one Parquet object per CDM table when it arrives (see
    # hub.ingest.services.start_upload); each version reads its own table from there.
    return _read_parquet(path, limits)
