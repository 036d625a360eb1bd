"""A contributor's first hour with uploads (issue 16): a new version replaces the released one
unless it is additional rows, keys already released are pointed out, upload order is said in
words before rows are held back, no release button offers zero rows, formula cells are
flagged, Discard and Withdraw need a confirmation, and the mapping page helps."""

from __future__ import annotations

import io
import json
import re

import openpyxl
import pandas as pd
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.audit.models import AuditEntry
from hub.db import Database
from hub.exports import SafeWriter, formula_cells, is_formula, xlsx_bytes
from hub.ingest.deid import evidence_words
from hub.ingest.models import DatasetVersion
from hub.ingest.services import released_keys
from hub.ingest.views import code_marks, steps
from hub.settings import Settings
from tests.conftest import AuthActions, csrf_from
from tests.unit.hub.uploads import (
    APPROVE,
    BATCH_CSV,
    EPISODE_CSV,
    accept_mapping,
    auth_headers,
    drain,
    release_episode,
    show,
    upload,
)

pytestmark = pytest.mark.db

# Markers that must never reach a page a contributor reads.
RAW = ("Traceback", "{&#34;", '{"', "`", "cleanroom ", "InvalidDataError")


def _to_review(client, token, database, settings, table, data, **params) -> int:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = client.post(
        f"/api/v1/uploads?table={table}&filename={table}.csv" + (f"&{query}" if query else ""),
        data=data.encode("utf-8"),
        headers={**auth_headers(token), "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 201, resp.get_json()
    vid = resp.get_json()["id"]
    accept_mapping(client, token, database, settings, vid)
    return vid


def _page(client: FlaskClient, auth: AuthActions, vid: int) -> str:
    resp = client.get(f"/datasets/{vid}")
    if resp.status_code == 302:  # not signed in yet
        auth.login("nadia")
        resp = client.get(f"/datasets/{vid}")
    assert resp.status_code == 200
    return resp.get_data(as_text=True)


def _visible_text(html: str) -> str:
    """The page's text as a person reads it: no tags, scripts or attribute values."""
    body = re.split(r"<main[^>]*>", html, maxsplit=1)[1].split("</main>", 1)[0]
    return re.sub(r"<[^>]+>", " ", body)


def _assert_readable(html: str) -> None:
    text = _visible_text(html)
    for marker in RAW:
        assert marker not in text, (marker, text[text.find(marker) - 200 : text.find(marker) + 200])


# Versions: replace or add -------------------------------------------------------------------


def test_a_new_version_replaces_the_released_one(
    client, token, database: Database, settings: Settings, auth: AuthActions, app
) -> None:
    first = release_episode(client, token, database, settings)
    storage = app.extensions["cleanroom.storage"]
    with database.session() as s:
        (old_key,) = released_keys(s, "episode")
    second = _to_review(client, token, database, settings, "episode", EPISODE_CSV)
    shown = client.get(f"/api/v1/uploads/{second}", headers=auth_headers(token)).get_json()
    assert shown["additional_rows"] is False and shown["replaces"] == [1]
    # The same keys again: expected for a replacement, and worded so.
    (overlap,) = shown["validation"]["overlaps"]
    assert overlap["column"] == "coi_id" and overlap["versions"] == [1]
    assert overlap["count"] == 23 and overlap["examples"][0] == "COI-0001"
    html = _page(client, auth, second)
    assert 'data-testid="replaces"' in html and "replaces version 1" in html
    assert "That is expected for a corrected or updated file" in html
    _assert_readable(html)

    resp = client.post(
        f"/api/v1/uploads/{second}/release", headers=auth_headers(token), json=APPROVE
    )
    assert resp.status_code == 200, resp.get_json()
    assert show(client, token, first["id"])["state"] == "withdrawn"
    with database.session() as s:
        keys = released_keys(s, "episode")
        withdrawal = s.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "withdrawal", AuditEntry.target == f"dataset:{first['id']}"
            )
        ).one()
        release = s.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "release", AuditEntry.target == f"dataset:{second}"
            )
        ).one()
    assert len(keys) == 1 and keys[0] != old_key  # counts are not doubled
    assert not storage.exists(old_key)
    assert json.loads(withdrawal.detail)["replaced_by"] == 2
    assert json.loads(release.detail)["replaces"] == [1]


def test_additional_rows_stay_beside_and_duplicates_are_named(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    first = release_episode(client, token, database, settings)
    second = _to_review(
        client, token, database, settings, "episode", EPISODE_CSV, additional_rows="true"
    )
    shown = client.get(f"/api/v1/uploads/{second}", headers=auth_headers(token)).get_json()
    assert shown["additional_rows"] is True and shown["replaces"] == []
    assert shown["validation"]["overlaps"][0]["count"] == 23
    html = _page(client, auth, second)
    assert "Possible duplicates" in html and "counted twice" in html
    assert "replaces version" not in html
    _assert_readable(html)
    resp = client.post(
        f"/api/v1/uploads/{second}/release", headers=auth_headers(token), json=APPROVE
    )
    assert resp.status_code == 200, resp.get_json()
    assert show(client, token, first["id"])["state"] == "released"
    with database.session() as s:
        assert len(released_keys(s, "episode")) == 2
        stored = s.get(DatasetVersion, second)
        assert stored is not None and stored.additional_rows is True


def test_the_upload_form_has_the_additional_rows_box(
    client: FlaskClient, token: str, auth: AuthActions, database: Database
) -> None:
    auth.login("nadia")
    page = client.get("/datasets?table=batch").get_data(as_text=True)
    assert 'name="additional_rows"' in page
    assert "<option selected>batch</option>" in page  # the link from "upload episode first"
    resp = client.post(
        "/datasets",
        data={
            "csrf_token": csrf_from(client, "/datasets"),
            "table": "episode",
            "additional_rows": "yes",
            "file": (io.BytesIO(EPISODE_CSV.encode()), "e.csv"),
        },
        content_type="multipart/form-data",
    )
    assert resp.status_code == 303
    with database.session() as s:
        version = s.scalars(select(DatasetVersion)).one()
        assert version.additional_rows is True


# Upload order and the zero-row guard ------------------------------------------------------


def test_batch_before_episode_says_upload_episode_first(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    resp = upload(client, token, "batch", "batches.csv", BATCH_CSV)
    assert resp.status_code == 201
    gaps = resp.get_json()["upload_first"]
    assert [(g["table"], g["columns"]) for g in gaps] == [
        ("episode", ["coi_id"]),
        ("collection", ["din"]),
    ]
    assert gaps[0]["message"].startswith("Upload `episode` first")
    vid = resp.get_json()["id"]
    drain(database, settings)
    html = _page(client, auth, vid)
    assert 'data-testid="upload-order"' in html
    assert "Upload <code>episode</code> first" in html
    assert "/datasets?table=episode#upload" in html
    _assert_readable(html)


def test_unknown_links_explain_and_no_button_offers_zero_rows(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    release_episode(client, token, database, settings)
    orphans = (
        "Lot No.,COI,Manufacturing Facility,Platform,Outcome\n"
        "LOT-7,COI-9998,Northbridge,central,conforming\n"
        "LOT-8,COI-9999,Northbridge,central,failed\n"
    )
    vid = _to_review(client, token, database, settings, "batch", orphans)
    shown = show(client, token, vid)
    assert (shown["rows"], shown["valid_rows"]) == (2, 0)
    (gap,) = shown["validation"]["reference_gaps"]
    assert gap["table"] == "episode" and gap["count"] == 2
    assert gap["examples"] == ["COI-9998", "COI-9999"]  # unmasked: the institution's own IDs
    html = _page(client, auth, vid)
    assert 'data-testid="nothing-to-release"' in html
    assert "Release 0 rows" not in html and 'data-testid="approve"' not in html
    assert "<code>COI-9998</code>" in html  # formatted as code, not masked
    assert "C…8" not in html
    _assert_readable(html)
    refused = client.post(
        f"/api/v1/uploads/{vid}/release", headers=auth_headers(token), json=APPROVE
    )
    assert refused.status_code == 400


# Formulas -------------------------------------------------------------------------------------


def test_formula_cells_are_flagged_with_counts_and_examples(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    vid = _to_review(client, token, database, settings, "episode", EPISODE_CSV)
    formulas = show(client, token, vid)["validation"]["formulas"]
    assert formulas == [
        {
            "column": "Site",
            "target": "site",
            "count": 1,
            "rows": [4],
            "examples": ['=HYPERLINK("http://x")'],
        }
    ]
    html = _page(client, auth, vid)
    assert 'data-testid="formulas"' in html and "<code>Site</code>" in html
    _assert_readable(html)


@pytest.mark.parametrize(
    ("value", "risky"),
    [
        ('=HYPERLINK("http://x")', True),
        ("=cmd|' /C calc'!A0", True),
        ("+1+1", True),
        ("@SUM(A1)", True),
        ("-2+3", True),
        ("\t=1", True),
        ("-3.5", False),
        ("+41", False),
        ("1e-3", False),
        ("a=1", False),
    ],
)
def test_is_formula(value: str, risky: bool) -> None:
    assert is_formula(value) is risky


def test_formula_cells_per_column() -> None:
    frame = pd.DataFrame(
        {"a": ["x", "=1+1", None, "+1+1", "-3.5"], "b": ["-4", "7", "ok", "", None]}
    )
    assert formula_cells(frame) == [
        {"column": "a", "count": 2, "rows": [3, 5], "examples": ["=1+1", "+1+1"]}
    ]


def test_exports_neutralise_formulas_read_back() -> None:
    rows = [["name", "value"], ['=HYPERLINK("x")', -3.5], ["+1+1", 2], ["@SUM(A1)", "-2+3"]]
    book = openpyxl.load_workbook(io.BytesIO(xlsx_bytes(rows)))
    sheet = book.active
    assert sheet is not None
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert cells[1] == ['\'=HYPERLINK("x")', -3.5]  # text neutralised, numbers stay numbers
    assert cells[2][0] == "'+1+1" and cells[3] == ["'@SUM(A1)", "'-2+3"]
    assert all(c.data_type != "f" for row in sheet.iter_rows() for c in row)

    buf = io.StringIO()
    writer = SafeWriter(buf)
    for row in rows:
        writer.writerow(row)
    back = pd.read_csv(io.StringIO(buf.getvalue()), dtype=str)
    assert back["name"].str.startswith("'").all()
    assert back["value"].tolist() == ["-3.5", "2", "'-2+3"]


# Confirmations --------------------------------------------------------------------------------


def test_discard_and_withdraw_need_a_confirmation(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    released = release_episode(client, token, database, settings)
    auth.login("nadia")
    page = client.get(f"/datasets/{released['id']}").get_data(as_text=True)
    assert 'name="confirm"' in page and "required" in page
    csrf = csrf_from(client, f"/datasets/{released['id']}")
    refused = client.post(
        f"/datasets/{released['id']}/withdraw", data={"csrf_token": csrf}, follow_redirects=True
    )
    assert "tick the confirmation box" in refused.get_data(as_text=True)
    assert show(client, token, released["id"])["state"] == "released"
    client.post(f"/datasets/{released['id']}/withdraw", data={"csrf_token": csrf, "confirm": "yes"})
    assert show(client, token, released["id"])["state"] == "withdrawn"

    vid = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    client.post(f"/datasets/{vid}/reject", data={"csrf_token": csrf})
    assert show(client, token, vid)["state"] == "awaiting_mapping"
    client.post(f"/datasets/{vid}/reject", data={"csrf_token": csrf, "confirm": "yes"})
    assert show(client, token, vid)["state"] == "rejected"


# Mapping page ---------------------------------------------------------------------------------

COLLECTION_CSV = "DIN,COI,Collection Date,Collection Site,WBC (10^9/L),CD3+ (%)\n" + "".join(
    f"W0000240000{i:02d},COI-00{i:02d},2024-03-{i + 1:02d},Apheresis unit,{5 + i},{60 + i}\n"
    for i in range(1, 9)
)


def test_mapping_shows_samples_descriptions_and_notices_another_table(
    client, token, database: Database, settings: Settings, auth: AuthActions
) -> None:
    vid = upload(client, token, "batch", "collections.csv", COLLECTION_CSV).get_json()["id"]
    drain(database, settings)
    profile = show(client, token, vid)
    assert profile["state"] == "awaiting_mapping", profile["error"]
    html = _page(client, auth, vid)
    assert 'data-testid="looks-like"' in html
    assert "This file looks like a <code>collection</code> file" in html
    assert "<code>W000024000001</code>" in html  # sample values of the DIN column
    assert 'data-testid="description"' in html
    assert "DIN of the collection the lot was made from." in html  # din's CDM description
    _assert_readable(html)

    good = upload(client, token, "episode", "e.csv", EPISODE_CSV).get_json()["id"]
    drain(database, settings)
    assert 'data-testid="looks-like"' not in _page(client, auth, good)


# Small helpers the pages use ------------------------------------------------------------------


def test_messages_show_marked_names_as_code_and_escape_the_rest() -> None:
    shown = str(code_marks("column `age`: 1 value above <b>120</b> (e.g. `130`)"))
    assert shown == (
        "column <code>age</code>: 1 value above &lt;b&gt;120&lt;/b&gt; (e.g. <code>130</code>)"
    )


def test_steps_follow_the_state() -> None:
    assert [s["status"] for s in steps("awaiting_mapping")] == [
        "done",
        "current",
        "todo",
        "todo",
        "todo",
    ]
    assert [s["label"] for s in steps("awaiting_review") if s["status"] == "current"] == [
        "De-identification review"
    ]
    assert {s["status"] for s in steps("released")} == {"done"}
    assert {s["status"] for s in steps("failed")} == {"todo"}


@pytest.mark.parametrize(
    ("evidence", "words"),
    [
        ({"source": "cdm hint", "note": "CDM class safe"}, "says this column is not identifying"),
        (
            {"source": "dtype", "note": "measurement (float64); no NER"},
            "Values are decimal measurements",
        ),
        (
            {
                "source": "ner",
                "entity": "PERSON",
                "hit_rate": 0.9,
                "sample_size": 20,
                "note": "labels the column",
            },
            "90% of 20 sampled values look like person names",
        ),
        (
            {"source": "column name", "note": "name suggests quasi_identifier"},
            "Going by its name: could identify someone together with other columns.",
        ),
        ({"source": "column name", "entity": "COI_ID"}, "suggests chain-of-identity IDs"),
    ],
)
def test_evidence_in_plain_words_with_the_detail_kept(evidence: dict, words: str) -> None:
    said = evidence_words(evidence)
    assert words in said["text"]
    assert "no NER" not in said["text"] and "cdm hint" not in said["text"]
    assert said["detail"].startswith(evidence["source"])
