"""hub.exports: every CSV the hub writes for download (the validation report, the held-back
rows, the audit ledger) escapes formulas in its header and its cells, and quotes every
field (issue 14, item 7)."""

from __future__ import annotations

import csv
import io
import re

import pytest
from flask.testing import FlaskClient

from hub.db import Database
from hub.exports import SafeWriter, csv_safe
from hub.settings import Settings
from tests.conftest import AuthActions, Users
from tests.unit.hub.uploads import auth_headers, drain, upload

#: Values a spreadsheet would run as formulas, as OWASP lists their first characters.
FORMULAS = ('=HYPERLINK("x")', "+1+1", "@SUM(A1)", "-2+3", "\tcmd", "\rcmd")


@pytest.mark.parametrize(
    ("value", "safe"),
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1+1", "'+1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("-2+3", "'-2+3"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=1", "a=1"),
        ("", ""),
        (None, ""),
        (float("nan"), ""),
        (-5, "-5"),  # a plain number runs nothing: it stays a number
        ("-3.5", "-3.5"),
        ("+2", "+2"),
        ("-1e-3", "-1e-3"),
        ("-3.5x", "'-3.5x"),
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        (7, "7"),
    ],
)
def test_csv_safe(value: object, safe: str) -> None:
    assert csv_safe(value) == safe


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


_FIELD = r'"(?:[^"]|"")*"'
QUOTED_RECORDS = re.compile(rf"(?:{_FIELD}(?:,{_FIELD})*\r?\n)*")


def _assert_safe(text: str) -> None:
    """No cell a spreadsheet would run, and every field quoted (a ``;`` inside a value
    cannot start a cell in a spreadsheet that splits on it)."""
    for row in _cells(text):
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert QUOTED_RECORDS.fullmatch(text), text[:300]


def test_the_writer_escapes_headers_and_cells() -> None:
    buf = io.StringIO()
    writer = SafeWriter(buf)
    writer.writerow(["id", *FORMULAS])
    writer.writerow([1, *FORMULAS])
    writer.writerow([2, "a;=1+1", 'say "hi"', None])
    text = buf.getvalue()
    _assert_safe(text)
    header, first, last = _cells(text)
    assert header[1:] == first[1:] == ["'" + f for f in FORMULAS]
    assert last == ["2", "a;=1+1", 'say "hi"', ""]


HEADERS = ('=HYPERLINK("x")', "+1+1", "@SUM(A1)", "-2+3")


def _formula_csv() -> str:
    """An episode file with four extra columns named like formulas and holding them."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["Patient ID", "Site", "Product Class", "Indication", "Age", "Sex", *HEADERS])
    for i in range(1, 8):
        writer.writerow(
            [f"COI-{i:04d}", "St Aurelia", "autologous_car_t", "LBCL", 50, "female", *HEADERS]
        )
    return buf.getvalue()


@pytest.mark.db
def test_held_back_rows_and_the_report_are_formula_safe(
    client: FlaskClient,
    token: str,
    auth: AuthActions,
    database: Database,
    settings: Settings,
) -> None:
    resp = upload(client, token, "episode", "formulas.csv", _formula_csv())
    assert resp.status_code == 201, resp.get_json()
    vid = resp.get_json()["id"]
    drain(database, settings)
    # A column named like a formula and holding one is mapped: every weight is invalid, so
    # the report quotes its name and its values, and every row is held back.
    mapping = {"columns": {"@SUM(A1)": {"target": "weight_kg"}}}
    client.post(f"/api/v1/uploads/{vid}/mapping", json=mapping, headers=auth_headers(token))
    drain(database, settings)
    auth.login("nadia")
    with client.get(f"/datasets/{vid}/held-back.csv") as resp:
        assert resp.status_code == 200
        held = resp.get_data(as_text=True)
    _assert_safe(held)
    header, *rows = _cells(held)
    assert header[:2] == ["row", "problems"]
    assert ["'" + h for h in HEADERS] == header[-4:]  # the file's own header, escaped
    assert len(rows) == 7 and all(r[-4:] == ["'" + h for h in HEADERS] for r in rows)
    with client.get(f"/datasets/{vid}/report.csv") as resp:
        report = resp.get_data(as_text=True)
    _assert_safe(report)
    source_columns = {r[2] for r in _cells(report)[1:] if r[1] == "weight_kg"}
    assert source_columns == {"'@SUM(A1)"}


@pytest.mark.db
def test_the_audit_export_is_formula_safe(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    from hub.audit.services import record

    users.make("sam", "steward")
    with database.session() as s:
        for value in FORMULAS:
            record(s, actor=f"user:{value}", action="upload", target=value, detail={"v": value})
    auth.login("sam")
    with client.get("/admin/audit.csv") as resp:
        text = resp.get_data(as_text=True)
    _assert_safe(text)
    rows = _cells(text)
    targets = [r[4] for r in rows if r[3] == "upload"]
    assert sorted(targets) == sorted("'" + v for v in FORMULAS)
