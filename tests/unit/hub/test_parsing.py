"""hub.ingest.parsing: sniffing, file names, encodings, delimiters and the three readers,
with the hostile inputs each one must refuse with a message a contributor can act on."""

from __future__ import annotations

import datetime as dt
import random
import re
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub.errors import BadRequest
from hub.ingest import parsing
from hub.ingest.parsing import (
    FileKind,
    IngestError,
    Limits,
    ParsedTable,
    detect_delimiter,
    detect_encoding,
    list_sheets,
    read_table,
    safe_filename,
    sniff,
)

MIB = 1 << 20


def noise(n: int, low: int = 0, seed: int = 7) -> bytes:
    """``n`` reproducible pseudo-random bytes from ``low`` to 255."""
    rng = random.Random(seed)
    return bytes(rng.randrange(low, 256) for _ in range(n))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_csv_bytes(tmp_path: Path, data: bytes, **kwargs: Any) -> ParsedTable:
    path = write(tmp_path, "upload.csv", data)
    assert sniff(data[: parsing.SNIFF_BYTES], "upload.csv") is FileKind.CSV
    return read_table(path, FileKind.CSV, **kwargs)


def refused(call: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(IngestError) as info:
        call(*args, **kwargs)
    assert info.value.status == 400 and info.value.code == "invalid_file"
    return info.value.message


def rows(table: ParsedTable) -> list[list[str | None]]:
    return table.frame.to_numpy().tolist()


def workbook(path: Path, sheets: dict[str, list[list[Any]]]) -> Path:
    book = openpyxl.Workbook()
    book.remove(book.active)
    for title, content in sheets.items():
        sheet = book.create_sheet(title)
        for row in content:
            sheet.append(row)
    book.save(path)
    return path


# The error class and sniffing ----------------------------------------------------------------


def test_ingest_error_is_a_bad_request_with_its_own_code() -> None:
    err = IngestError("the file is empty")
    assert isinstance(err, BadRequest)
    assert err.to_dict() == {"error": {"code": "invalid_file", "message": "the file is empty"}}


def test_sniff_decides_by_content_not_by_name() -> None:
    assert sniff(b"PAR1\x15\x04", "data.csv") is FileKind.PARQUET
    assert sniff(b"PK\x03\x04\x14\x00", "data.csv") is FileKind.XLSX
    assert sniff(b"a;b\n1;2\n", "export.xls") is FileKind.CSV  # text named .xls is CSV
    assert sniff("Name\tDose\n".encode("utf-16"), "x.txt") is FileKind.CSV


def test_empty_file_is_refused(tmp_path: Path) -> None:
    assert "empty" in refused(sniff, b"", "data.csv")
    assert "empty" in refused(read_table, write(tmp_path, "e.csv", b""), FileKind.CSV)
    message = refused(read_table, write(tmp_path, "blank.csv", b"\n\r\n\n"), FileKind.CSV)
    assert "the file is empty" in message and "header row" in message


@pytest.mark.parametrize(
    ("head", "what"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "PDF"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "PNG"),
        (b"\x7fELF\x02\x01\x01\x00", "ELF"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "executable"),
        (noise(4096), "binary"),
    ],
)
def test_binaries_posing_as_csv_are_refused(tmp_path: Path, head: bytes, what: str) -> None:
    message = refused(sniff, head, "results.csv")
    assert "'results.csv' looks like a binary file" in message
    assert what in message and "not CSV; upload CSV, XLSX or Parquet" in message
    # read_table checks again, in case a caller skipped sniff
    assert "binary" in refused(read_table, write(tmp_path, "x.csv", head), FileKind.CSV)


def test_control_characters_without_nul_are_binary() -> None:
    head = bytes(range(1, 9)) * 50 + b"a,b\n"
    assert "binary" in refused(sniff, head, "x.csv")


def test_legacy_xls_is_refused_with_advice() -> None:
    head = bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 504
    message = refused(sniff, head, "batch.xls")
    assert "legacy .xls" in message and "save as .xlsx or CSV" in message


def test_password_protected_xlsx_is_not_called_legacy() -> None:
    head = bytes.fromhex("D0CF11E0A1B11AE1") + b"\x00" * 504
    message = refused(sniff, head, "batch.xlsx")
    assert "password" in message and "remove the password" in message


def test_html_named_xls_is_refused() -> None:
    message = refused(sniff, b"<html><body><table><tr><td>1</td></tr>", "report.xls")
    assert "HTML" in message and "save it as .xlsx or CSV" in message


# File names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../../etc/passwd", "passwd"),
        ("C:\\Users\\x\\file.csv", "file.csv"),
        ("C:file.csv", "file.csv"),
        ("/var/tmp/../data.xlsx", "data.xlsx"),
        (".hidden", "hidden"),
        ("\x00evil.csv", "evil.csv"),
        ("evil\u202egpj.csv", "evilgpj.csv"),  # no right-to-left override in a display name
        ("", "upload"),
        ("../..", "upload"),
        ("batch 7 (final).xlsx", "batch 7 (final).xlsx"),
    ],
)
def test_safe_filename(name: str, expected: str) -> None:
    assert safe_filename(name) == expected


def test_safe_filename_shortens_long_names_but_keeps_the_extension() -> None:
    name = safe_filename("x" * 500 + ".csv")
    assert len(name) == 200 and name.endswith("x.csv")


# Encodings and delimiters --------------------------------------------------------------------


def test_utf8_with_bom(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, "\ufeffDonor;Dose\nRené;5 µg\n".encode())
    assert table.encoding == "utf-8-sig"
    assert list(table.frame.columns) == ["Donor", "Dose"]  # no BOM left in the first name
    assert rows(table) == [["René", "5 µg"]]


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le"])
def test_utf16(tmp_path: Path, encoding: str) -> None:
    table = read_csv_bytes(tmp_path, "Donor\tDose\nRené\t5 µg\n".encode(encoding))
    assert table.encoding == encoding  # with a BOM, or recognised without one
    assert table.delimiter == "\t"
    assert list(table.frame.columns) == ["Donor", "Dose"]
    assert rows(table) == [["René", "5 µg"]]


def test_cp1252(tmp_path: Path) -> None:
    text = "Donor;Dose;Note\nRené;5 µg;naïve T cells\nZoë;10 µL;café\n"
    table = read_csv_bytes(tmp_path, text.encode("cp1252"))
    assert table.encoding == "cp1252"
    assert rows(table) == [["René", "5 µg", "naïve T cells"], ["Zoë", "10 µL", "café"]]


def test_cp1252_far_from_the_start_is_still_detected(tmp_path: Path) -> None:
    data = b"id,unit\n" + b"1,mL\n" * 30_000 + "2,µL\n".encode("cp1252")
    table = read_csv_bytes(tmp_path, data)
    assert table.encoding == "cp1252" and rows(table)[-1] == ["2", "µL"]


def test_mixed_encodings_name_the_line(tmp_path: Path) -> None:
    data = "id,unit\n1,µL\n".encode() + b"2,mL\n" * 20_000 + "3,µg\n".encode("cp1252")
    message = refused(read_table, write(tmp_path, "m.csv", data), FileKind.CSV)
    assert "not valid UTF-8" in message and "line 20,003" in message
    assert "byte 0xB5" in message and "save the file as UTF-8" in message


def test_undecodable_text_is_refused() -> None:
    sample = noise(3000, low=0x80)
    message = refused(detect_encoding, sample)
    assert "could not tell the text encoding" in message and "save the file as UTF-8" in message


def test_detect_encoding_boms_and_utf8() -> None:
    assert detect_encoding(b"\xef\xbb\xbfa,b\n") == "utf-8-sig"
    assert detect_encoding("a,b\n".encode("utf-16-le")) == "utf-16-le"
    assert detect_encoding("a,b\n".encode("utf-16")) == "utf-16"
    assert detect_encoding("a,b\nµ,é\n".encode()[:-2]) == "utf-8"  # cut mid-character


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [
        ("a;b;c\n1,5;2,5;3\n4;5;6\n", ";"),
        ("a\tb\tc\n1\t2\t3\n", "\t"),
        ("a|b|c\n1|2|3\n", "|"),
        ("a,b,c\n1,2,3\n", ","),
        ('name,note\n"Doe, J","x; y; z"\n"Roe, K","p; q"\n', ","),
        ("value\n1\n2\n", ","),  # one column: no delimiter at all
    ],
)
def test_detect_delimiter(text: str, delimiter: str) -> None:
    assert detect_delimiter(text) == delimiter


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiters_end_to_end(tmp_path: Path, delimiter: str) -> None:
    text = delimiter.join(["id", "dose", "unit"]) + "\n" + delimiter.join(["1", "2,5", "mg"])
    table = read_csv_bytes(tmp_path, (text + "\n").encode())
    assert table.delimiter == delimiter
    assert rows(table) == [["1", "2,5", "mg"]]


def test_quoted_delimiters_and_newlines_stay_inside_cells(tmp_path: Path) -> None:
    data = b'id,note\n1,"Doe, J"\n2,"line one\nline two"\n3,"said ""hi"""\n'
    table = read_csv_bytes(tmp_path, data)
    assert rows(table) == [["1", "Doe, J"], ["2", "line one\nline two"], ["3", 'said "hi"']]


# CSV structure -------------------------------------------------------------------------------


def test_values_are_raw_strings_or_none(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b" id ,dose,flag\n007,1.50,NA\n008,,TRUE\n")
    assert list(table.frame.columns) == ["id", "dose", "flag"]
    assert rows(table) == [["007", "1.50", "NA"], ["008", None, "TRUE"]]
    assert (table.rows, table.columns) == (2, 3)
    assert all(dtype.kind == "O" for dtype in table.frame.dtypes)


def test_formula_like_cells_are_kept_verbatim(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"a,b,c,d\n=1+1,+44 20,-5,@SUM(A1)\n")
    assert rows(table) == [["=1+1", "+44 20", "-5", "@SUM(A1)"]]


def test_ragged_rows_name_the_lines(tmp_path: Path) -> None:
    lines = ["a,b,c,d,e,f,g"] + ["1,2,3,4,5,6,7"] * 30
    lines[17] = "1,2,3,4,5,6,7,8,9"  # line 18
    lines[25] = "1,2,3,4,5,6,7,8"  # line 26
    message = refused(read_csv_bytes, tmp_path, ("\n".join(lines) + "\n").encode())
    assert "line 18 has 9 fields" in message and "line 26 has 8 fields" in message
    assert "the header has 7" in message and "check for unquoted delimiters" in message


def test_ragged_rows_list_at_most_five(tmp_path: Path) -> None:
    data = b"a,b\n" + b"1,2,3\n" * 20
    message = refused(read_csv_bytes, tmp_path, data)
    assert "line 6 has 3 fields" in message and "line 7" not in message
    assert "first five" in message


def test_short_rows_are_padded_and_counted(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"a,b,c\n1,2\n1,2,3\n4\n")
    assert rows(table) == [["1", "2", None], ["1", "2", "3"], ["4", None, None]]
    assert any("2 rows have fewer fields" in w and "lines 2 and 4" in w for w in table.warnings)


def test_empty_last_cells_are_not_short_rows(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"a,b,c\n1,2,\n4,5,6\n")
    assert rows(table) == [["1", "2", None], ["4", "5", "6"]]
    assert table.warnings == []


def test_unclosed_quote_is_refused(tmp_path: Path) -> None:
    message = refused(read_csv_bytes, tmp_path, b'a,b\n1,"open\n2,3\n')
    assert "never closed" in message and "closing one" in message


def test_hundred_thousand_columns_refused_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the data was read")

    monkeypatch.setattr(parsing.pd, "read_csv", never)
    header = ",".join(f"c{i}" for i in range(100_000))
    data = (header + "\n" + ",".join("1" * 100_000) + "\n").encode()
    message = refused(read_table, write(tmp_path, "wide.csv", data), FileKind.CSV)
    assert "the file has 100,000 columns; Cleanroom accepts up to 1,000" in message


def test_too_many_rows(tmp_path: Path) -> None:
    data = b"a\n" + b"1\n" * 11
    message = refused(read_csv_bytes, tmp_path, data, limits=Limits(max_rows=10))
    assert "more than 10 data rows" in message and "split it" in message
    assert read_csv_bytes(tmp_path, b"a\n" + b"1\n" * 10, limits=Limits(max_rows=10)).rows == 10


def test_overlong_cell(tmp_path: Path) -> None:
    data = b"a,b\n1,2\n3," + b"x" * 200 + b"\n"
    message = refused(read_csv_bytes, tmp_path, data, limits=Limits(max_cell_chars=100))
    assert "column 'b'" in message and "200 characters" in message and "row 3" in message


def test_overlong_cell_spread_over_short_lines(tmp_path: Path) -> None:
    data = b'a,b\n1,"' + b"xx\n" * 60 + b'"\n2,3\n'  # each line is short, the cell is not
    message = refused(read_csv_bytes, tmp_path, data, limits=Limits(max_cell_chars=100))
    assert "column 'b'" in message and "180 characters" in message and "row 2" in message
    assert "missing closing quote" in message


def test_line_endings_and_blank_lines(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"\r\na;b\r\n1;2\r\n\r\n3;4\r\n")
    assert list(table.frame.columns) == ["a", "b"] and rows(table) == [["1", "2"], ["3", "4"]]
    table = read_csv_bytes(tmp_path, b"a,b\r1,2\r3,4")  # old Mac endings, no final newline
    assert rows(table) == [["1", "2"], ["3", "4"]]


def test_duplicate_header_names(tmp_path: Path) -> None:
    message = refused(read_csv_bytes, tmp_path, b"dose,day,dose ,unit\n1,2,3,4\n")
    assert "repeats column names" in message and "'dose' (columns 1 and 3)" in message
    assert "unique name" in message


def test_missing_header_names(tmp_path: Path) -> None:
    message = refused(read_csv_bytes, tmp_path, b"a,b,,d\n1,2,3,4\n")
    assert "column 3 has no name" in message and "header row" in message


def test_overlong_header_name(tmp_path: Path) -> None:
    data = b"a," + b"n" * 50 + b"\n1,2\n"
    message = refused(read_csv_bytes, tmp_path, data, limits=Limits(max_header_chars=20))
    assert "column 2" in message and "50 characters" in message and "header" in message


def test_trailing_empty_columns_and_rows_are_dropped(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"a,b,,\n1,2,,\n3,4,,\n,,,\n")
    assert list(table.frame.columns) == ["a", "b"]
    assert rows(table) == [["1", "2"], ["3", "4"]]
    assert len(table.warnings) == 2


def test_header_only(tmp_path: Path) -> None:
    table = read_csv_bytes(tmp_path, b"a,b\n")
    assert (table.rows, table.columns) == (0, 2)
    assert any("no data rows" in w for w in table.warnings)


# XLSX ----------------------------------------------------------------------------------------


def test_xlsx_values_become_strings(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "batch.xlsx",
        {
            "Batches": [
                ["Batch", "Day", "Harvest", "Cells", "Viability", "OK", "Time", "Note"],
                [
                    "B-1",
                    dt.date(2024, 3, 5),
                    dt.datetime(2024, 3, 5, 14, 30),
                    1_500_000,
                    95.5,
                    True,
                    dt.time(8, 0),
                    "=1+1",
                ],
                ["B-2", dt.datetime(2024, 3, 6), None, 2.0, 0.1 + 0.2, False, None, None],
            ]
        },
    )
    assert sniff(path.read_bytes()[:100], "batch.xlsx") is FileKind.XLSX
    table = read_table(path, FileKind.XLSX)
    assert table.sheet == "Batches"
    assert rows(table) == [
        ["B-1", "2024-03-05", "2024-03-05T14:30:00", "1500000", "95.5", "true", "08:00:00", None],
        ["B-2", "2024-03-06", None, "2", "0.3", "false", None, None],
    ]
    # "=1+1" was written as a formula: never evaluated, its missing cached result is reported.
    assert any("formula cell has no saved result" in w and "H2" in w for w in table.warnings)


def test_xlsx_sheets(tmp_path: Path) -> None:
    path = workbook(
        tmp_path / "multi.xlsx",
        {"Donors": [["id"], ["D1"]], "Batches": [["batch", "dose"], ["B1", 5]]},
    )
    assert list_sheets(path) == ["Donors", "Batches"]
    table = read_table(path, FileKind.XLSX, sheet="Batches")
    assert table.sheet == "Batches" and rows(table) == [["B1", "5"]]

    message = refused(read_table, path, FileKind.XLSX)
    assert "2 sheets ('Donors', 'Batches')" in message and "choose the sheet" in message
    message = refused(read_table, path, FileKind.XLSX, sheet="Results")
    assert "no sheet named 'Results'" in message and "'Donors', 'Batches'" in message


def test_xlsx_declared_dimensions_are_not_trusted(tmp_path: Path) -> None:
    """Read-only openpyxl stops at the declared <dimension>; a wrong one must not cut data."""
    original = workbook(tmp_path / "orig.xlsx", {"S": [["a", "b"], [1, 2], [3, 4]]})
    path = tmp_path / "dim.xlsx"
    with zipfile.ZipFile(original) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb'<dimension ref="[^"]*" ?/>', b'<dimension ref="A1"/>', data)
                assert b'ref="A1"/>' in data
            target.writestr(info, data)
    assert rows(read_table(path, FileKind.XLSX)) == [["1", "2"], ["3", "4"]]


def test_xlsx_header_rules(tmp_path: Path) -> None:
    dup = workbook(tmp_path / "dup.xlsx", {"S": [["a", "b", "a"], [1, 2, 3]]})
    assert "'a' (columns 1 (A) and 3 (C))" in refused(read_table, dup, FileKind.XLSX)
    unnamed = workbook(tmp_path / "unnamed.xlsx", {"S": [["a", None, "c"], [1, 2, 3]]})
    assert "column 2 (B) has no name" in refused(read_table, unnamed, FileKind.XLSX)


def test_xlsx_too_many_columns(tmp_path: Path) -> None:
    path = workbook(tmp_path / "wide.xlsx", {"S": [[f"c{i}" for i in range(30)]]})
    message = refused(read_table, path, FileKind.XLSX, limits=Limits(max_columns=20))
    assert "column AD (30)" in message and "up to 20 columns" in message


def test_zip_bomb_is_refused_before_openpyxl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("openpyxl opened the bomb")

    monkeypatch.setattr(parsing.openpyxl, "load_workbook", never)
    path = tmp_path / "bomb.xlsx"
    zeros = bytes(MIB)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("xl/workbook.xml", "<workbook/>")
        with archive.open("xl/worksheets/sheet1.xml", "w") as member:
            for _ in range(100):  # 100 MiB of zeros, never whole in memory
                member.write(zeros)
    assert path.stat().st_size < MIB
    message = refused(read_table, path, FileKind.XLSX)
    assert "zip bomb" in message and "xl/worksheets/sheet1.xml" in message
    assert "100.0 MiB" in message
    assert "zip bomb" in refused(list_sheets, path)


def test_declared_size_limit(tmp_path: Path) -> None:
    path = workbook(tmp_path / "ok.xlsx", {"S": [["a"], [1]]})
    message = refused(read_table, path, FileKind.XLSX, limits=Limits(max_xlsx_uncompressed=1000))
    assert "would unpack to" in message and "1000 bytes" in message


@pytest.mark.parametrize(
    ("members", "expected"),
    [
        (["data.csv"], "ZIP archive but not an Excel workbook (it has no xl/workbook.xml)"),
        (["mimetype", "content.xml"], "OpenDocument file (.ods)"),
        (["[Content_Types].xml", "word/document.xml"], "a Word document"),
        (["[Content_Types].xml", "xl/workbook.bin"], "binary Excel workbook (.xlsb)"),
    ],
)
def test_zip_that_is_not_a_workbook(tmp_path: Path, members: list[str], expected: str) -> None:
    path = tmp_path / "data.xlsx"
    with zipfile.ZipFile(path, "w") as archive:
        for member in members:
            archive.writestr(member, "a,b\n1,2\n")
    assert sniff(path.read_bytes()[:64], "data.xlsx") is FileKind.XLSX
    message = refused(read_table, path, FileKind.XLSX)
    assert expected in message and ("upload" in message or "save it as" in message)
    assert expected in refused(list_sheets, path)


def test_xlsx_empty_header_row(tmp_path: Path) -> None:
    path = workbook(tmp_path / "gap.xlsx", {"S": [[None], ["a", "b"], [1, 2]]})
    message = refused(read_table, path, FileKind.XLSX)
    assert "first row of sheet 'S' (the header) is empty" in message and "row 1" in message


def test_macro_enabled_workbook_is_refused(tmp_path: Path) -> None:
    path = workbook(tmp_path / "macro.xlsm", {"S": [["a"], [1]]})
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("xl/vbaProject.bin", b"\xd0\xcf\x11\xe0 fake VBA")
    message = refused(read_table, path, FileKind.XLSX)
    assert "macro-enabled workbooks are refused; save as .xlsx without macros" in message


def test_truncated_workbook(tmp_path: Path) -> None:
    whole = workbook(tmp_path / "whole.xlsx", {"S": [["a"], [1]] * 50}).read_bytes()
    path = write(tmp_path, "cut.xlsx", whole[: len(whole) // 2])
    message = refused(read_table, path, FileKind.XLSX)
    assert "damaged or not a real workbook" in message and "save it again as .xlsx" in message
    assert "Traceback" not in message and str(tmp_path) not in message


# Parquet -------------------------------------------------------------------------------------


def test_parquet_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "p.parquet"
    pq.write_table(
        pa.table(
            {
                "day": pa.array([dt.date(2024, 1, 2), None, dt.date(2024, 1, 4)]),
                "at": pa.array([dt.datetime(2024, 1, 2, 5, 6, 7), None, None]),
                "harvest": pa.array([dt.datetime(2024, 1, 2), dt.datetime(2024, 1, 3), None]),
                "cells": pa.array([1, None, 3], pa.int64()),
                "dose": [1.0, 2.5, float("nan")],
                "ok": [True, None, False],
                " name ": ["a", None, "=1+1"],
            }
        ),
        path,
    )
    assert sniff(path.read_bytes()[:64], "p.parquet") is FileKind.PARQUET
    table = read_table(path, FileKind.PARQUET)
    assert list(table.frame.columns) == ["day", "at", "harvest", "cells", "dose", "ok", "name"]
    assert rows(table) == [
        ["2024-01-02", "2024-01-02T05:06:07", "2024-01-02", "1", "1", "true", "a"],
        [None, None, "2024-01-03", None, "2.5", None, None],
        ["2024-01-04", None, None, "3", None, "false", "=1+1"],
    ]
    assert (table.encoding, table.delimiter, table.sheet) == (None, None, None)


def test_parquet_list_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "nested.parquet"
    pq.write_table(pa.table({"id": [1, 2], "doses": [[1, 2], [3]]}), path)
    message = refused(read_table, path, FileKind.PARQUET)
    assert "column 'doses' holds lists" in message and "one value per cell" in message


def test_parquet_column_limit_from_metadata(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({f"c{i}": [1] for i in range(30)}), path)
    message = refused(read_table, path, FileKind.PARQUET, limits=Limits(max_columns=20))
    assert "30 columns" in message and "up to 20" in message


def test_parquet_overlong_cell(tmp_path: Path) -> None:
    path = tmp_path / "long.parquet"
    pq.write_table(pa.table({"note": ["ok", "µ" * 150]}), path)
    message = refused(read_table, path, FileKind.PARQUET, limits=Limits(max_cell_chars=100))
    assert "column 'note'" in message and "150 characters" in message and "data row 2" in message


def test_truncated_parquet(tmp_path: Path) -> None:
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"a": list(range(1000))}), whole)
    data = whole.read_bytes()
    path = write(tmp_path, "cut.parquet", data[: len(data) // 2])
    assert sniff(data[:64], "cut.parquet") is FileKind.PARQUET
    message = refused(read_table, path, FileKind.PARQUET)
    assert "Parquet file is damaged or truncated" in message and "export it again" in message
    assert str(tmp_path) not in message
