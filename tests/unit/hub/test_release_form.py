"""The portal's release form (``/releases/new``, ``/releases/<id>/revise``) and what the
request page shows the checkers beside our rules: ACRO's findings and overlaps with
earlier releases (``hub.releases.views``)."""

from __future__ import annotations

import json
import re

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.releases import services
from hub.releases.models import ReleaseRequest
from hub.releases.views import acro_findings, overlaps_in_words
from tests.conftest import AuthActions, csrf_from
from tests.unit.hub.conftest import TABLE

pytestmark = pytest.mark.db

FORM = "/releases/new"


def _post(client: FlaskClient, path: str, data: dict[str, str]):  # noqa: ANN202 - a response
    return client.post(path, data={**data, "csrf_token": csrf_from(client, path)})


def _outputs(*blocks: dict[str, str], agreement: str = "v2v", title: str = "Paper 1") -> dict:
    data = {"agreement": agreement, "title": title, "action": "send"}
    for i, block in enumerate(blocks, start=1):
        data.update({f"outputs-{i}-{k}": v for k, v in block.items()})
    return data


FIT_BLOCK = {
    "kind": "fit",
    "purpose": "Table 2: viability by culture days",
    "table": "batch",
    "model": "linear",
    "features": "culture_days",
    "target": "viability",
}
BLANK = {"kind": "query", "purpose": "", "sql": ""}


def _requests(database: Database) -> list[ReleaseRequest]:
    with database.session() as s:
        found = list(s.scalars(select(ReleaseRequest)))
        s.expunge_all()
        return found


def _block(body: str, n: int) -> str:
    """The HTML of the form's nth output block."""
    blocks = body.split('data-testid="output-block"')
    assert len(blocks) > n, f"no output block {n}"
    return blocks[n]


def test_the_form_offers_the_researchers_agreements_and_three_blocks(
    client: FlaskClient, auth: AuthActions, review_world
) -> None:
    auth.login("rosa")
    listed = client.get("/releases").get_data(as_text=True)
    assert 'href="/releases/new"' in listed and "Ask for a release" in listed
    page = client.get(FORM)
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert '<option value="v2v" selected>' in body  # her one agreement, chosen for her
    assert body.count('data-testid="output-block"') == 3
    assert "Add another output" in body and "/releases/form.js" in body
    script = client.get("/releases/form.js")
    assert script.status_code == 200 and script.mimetype == "text/javascript"


def test_a_good_form_sends_the_filled_outputs_and_leaves_out_blank_ones(
    client: FlaskClient, auth: AuthActions, database: Database, review_world
) -> None:
    auth.login("rosa")
    data = _outputs({"kind": "query", "purpose": "Table 1: lots per platform", "sql": TABLE})
    data.update({f"outputs-2-{k}": v for k, v in BLANK.items()})
    data.update({f"outputs-3-{k}": v for k, v in FIT_BLOCK.items()})
    data["outputs-3-features"] = "culture_days , "
    resp = _post(client, FORM, data)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    (found,) = _requests(database)
    assert resp.headers["Location"].endswith(f"/releases/{found.id}")
    assert found.title == "Paper 1" and found.state == "in_review"
    with database.session() as s:
        outputs = services.get(s, found.id).outputs
        assert [(o.kind, o.purpose) for o in outputs] == [
            ("query", "Table 1: lots per platform"),
            ("fit", "Table 2: viability by culture days"),
        ]
        assert json.loads(outputs[1].spec)["features"] == ["culture_days"]
        assert all(o.result and not o.refused for o in outputs)
        assert "release.request" in s.scalars(select(AuditEntry.action)).all()
    shown = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert "is sent to the output checkers" in shown and "Change the outputs" in shown


def test_a_bad_query_comes_back_with_the_input_kept_and_the_message_beside_it(
    client: FlaskClient, auth: AuthActions, database: Database, review_world
) -> None:
    auth.login("rosa")
    bad = "SELECT lot_id, viability FROM batch"
    resp = _post(
        client,
        FORM,
        _outputs(
            {"kind": "query", "purpose": "Table 1: lots per platform", "sql": TABLE},
            {"kind": "query", "purpose": "Every lot", "sql": bad},
            title="Paper with a slip",
        ),
    )
    assert resp.status_code == 200
    body = resp.get_data(as_text=True)
    assert _requests(database) == []  # nothing sent, nothing computed
    assert 'value="Paper with a slip"' in body and 'value="Every lot"' in body
    assert f">{bad}</textarea>" in body and "GROUP BY platform</textarea>" in body
    # The message sits in the second block, not the first, and says what to do.
    assert 'data-testid="output-problem"' not in _block(body, 1)
    second = _block(body, 2)
    assert 'data-testid="output-problem"' in second and "Cleanroom cannot compute this" in second
    assert "see the messages beside them" in body and "Traceback" not in body

    # A syntax error and a missing purpose, each beside its own output.
    resp = _post(
        client,
        FORM,
        _outputs(
            {"kind": "query", "purpose": "Oops", "sql": "SELEC COUNT(*) FROM batch"},
            {"kind": "query", "purpose": "", "sql": TABLE},
        ),
    )
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert "does not parse" in _block(body, 1) and "say what it is for" not in _block(body, 1)
    assert "Say what it is for in the Purpose field" in _block(body, 2)


def test_form_level_problems_are_said_plainly(
    client: FlaskClient, auth: AuthActions, database: Database, review_world
) -> None:
    auth.login("rosa")
    empty = _post(client, FORM, _outputs(BLANK))
    assert empty.status_code == 200
    assert "Fill in at least one output" in empty.get_data(as_text=True)
    fit = _post(client, FORM, _outputs({**FIT_BLOCK, "table": ""}))
    assert "needs its table and its target" in _block(fit.get_data(as_text=True), 1)
    elsewhere = _post(
        client,
        FORM,
        _outputs({"kind": "query", "purpose": "x", "sql": TABLE}, agreement="not-hers"),
    )
    assert elsewhere.status_code == 200
    body = elsewhere.get_data(as_text=True)
    assert "You may not query under agreement" in body and 'data-testid="form-problem"' in body
    assert "GROUP BY platform</textarea>" in body
    assert _requests(database) == []


def test_add_another_output_works_without_javascript(
    client: FlaskClient, auth: AuthActions, review_world
) -> None:
    auth.login("rosa")
    data = _outputs({"kind": "query", "purpose": "Kept", "sql": TABLE}, BLANK, BLANK)
    data["action"] = "more"
    resp = _post(client, FORM, data)
    body = resp.get_data(as_text=True)
    assert resp.status_code == 200 and body.count('data-testid="output-block"') == 4
    assert 'value="Kept"' in body and 'name="outputs-4-purpose"' in body


def test_only_researchers_open_the_form(
    client: FlaskClient, auth: AuthActions, database: Database, review_world
) -> None:
    # sam is the steward; kelvin-admin a contributing institution's admin; both read
    # release requests, neither asks for one.
    for name in ("sam", "kelvin-admin"):
        auth.login(name)
        assert client.get(FORM).status_code == 403
        token = csrf_from(client, "/releases")
        data = {**_outputs({"kind": "query", "purpose": "x", "sql": TABLE}), "csrf_token": token}
        assert client.post(FORM, data=data).status_code == 403
        assert "Ask for a release" not in client.get("/releases").get_data(as_text=True)
        auth.logout()
    assert _requests(database) == []
    assert client.get(FORM).status_code == 302  # signed out: to the sign-in page


def test_the_author_changes_the_outputs_from_the_same_form(
    client: FlaskClient, app, auth: AuthActions, database: Database, settings, review_world
) -> None:
    auth.login("rosa")
    first = _post(client, FORM, _outputs({"kind": "query", "purpose": "Table 1", "sql": TABLE}))
    rid = int(first.headers["Location"].rsplit("/", 1)[1])
    with database.session() as s:
        chris = accounts.get_user(s, "chris")
        services.review(s, settings, services.get(s, rid), chris, "approve")
    path = f"/releases/{rid}/revise"
    form = client.get(path).get_data(as_text=True)
    assert "GROUP BY platform</textarea>" in form and 'value="Table 1"' in form
    assert "revision 2: the output checkers review it afresh" in form
    changed = _post(
        client,
        path,
        {
            "agreement": "v2v",
            "action": "send",
            **{f"outputs-1-{k}": v for k, v in FIT_BLOCK.items()},
        },
    )
    assert changed.status_code == 302
    with database.session() as s:
        found = services.get(s, rid)
        assert found.revision == 2 and services.approvals(found) == []
        assert [o.kind for o in found.outputs] == ["fit"]
    shown = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert re.search(r'data-testid="approvals">0 of 2<', shown)
    # Nobody else changes it, not even an output checker.
    other = app.test_client()
    AuthActions(other).login("chris")
    assert other.get(path).status_code == 403


# ACRO's findings and overlaps with earlier releases ----------------------------------------

ACRO = {
    "tool": "acro 1.0.2",
    "checked": True,
    "note": "",
    "status": "fail",
    "summary": ["1 cell below the threshold of 10"],
    "cells": [
        {
            "row": ["point_of_care"],
            "column": "n",
            "findings": ["threshold"],
            "detail": "4 records, fewer than 10",
        },
        {"row": ["nowhere"], "column": "n", "findings": ["p-ratio"], "detail": ""},
    ],
}
RESULT = {
    "columns": ["platform", "n", "v"],
    "rows": [["central", 50, 88.1], ["point_of_care", 5, 87.0]],
}


def test_acro_findings_are_placed_on_the_table_or_said_in_words() -> None:
    found = acro_findings({"acro": ACRO}, "query", RESULT)
    assert found is not None
    assert found["badge"] == "fail" and "fail" in found["words"]
    assert found["marks"] == {"1:1": ["threshold"]} and found["rows"] == {1: ["n: threshold"]}
    placed, unplaced = found["cells"]
    assert placed["where"] == "Row 2 (point_of_care), column n" and placed["placed"]
    assert unplaced["where"] == "The row nowhere, column n (not in the table above)"
    assert not unplaced["placed"]
    # Keys as ACRO may spell them: 7.0 and "7" meet the table's 7.
    numeric = acro_findings(
        {"acro": {**ACRO, "cells": [{"row": [7.0], "column": "n", "findings": ["threshold"]}]}},
        "query",
        {"columns": ["days", "n"], "rows": [[6, 20], [7, 5]]},
    )
    assert numeric is not None and numeric["marks"] == {"1:1": ["threshold"]}
    unchecked = acro_findings(
        {"acro": {"checked": False, "note": "ACRO is not installed", "status": "not checked"}},
        "fit",
        None,
    )
    assert unchecked is not None and unchecked["badge"] == "not-checked"
    assert acro_findings({}, "query", RESULT) is None  # a request from before ACRO


def test_overlaps_read_as_sentences() -> None:
    said = overlaps_in_words(
        {
            "rules": {"k": 10},
            "overlaps": [
                {"row": 2, "request": 4, "output": 1, "earlier_row": 1, "patients": 3, "note": ""},
                {
                    "row": None,
                    "request": 5,
                    "output": 2,
                    "earlier_row": None,
                    "patients": 1,
                    "note": "same model, one site fewer",
                },
                {"row": 0, "request": 9, "output": 2, "earlier_row": 0, "patients": 4},
            ],
        },
        9,
        {4: "released", 5: "approved", 9: "in_review"},
    )
    assert [s["text"] for s in said] == [
        "Row 3 differs from row 2 of output 1 of released request #4 by 3 patients "
        "(fewer than k = 10): their difference would single them out.",
        "This output differs from output 2 of approved request #5 by 1 patient "
        "(fewer than k = 10): their difference would single them out.",
        "Row 1 differs from row 1 of output 2 of this request by 4 patients "
        "(fewer than k = 10): their difference would single them out.",
    ]
    assert said[1]["note"] == "same model, one site fewer" and said[0]["request"] == 4
    assert [s["same"] for s in said] == [False, False, True]
    assert overlaps_in_words({"rules": {"k": 10}}, 9) == []


def test_the_checkers_page_shows_acro_and_overlaps_and_the_author_does_not(
    client: FlaskClient, app, auth: AuthActions, database: Database, review_world
) -> None:
    auth.login("rosa")
    first = _post(client, FORM, _outputs({"kind": "query", "purpose": "Table 1", "sql": TABLE}))
    rid = int(first.headers["Location"].rsplit("/", 1)[1])
    earlier = int(
        _post(client, FORM, _outputs({"kind": "query", "purpose": "T", "sql": TABLE}))
        .headers["Location"]
        .rsplit("/", 1)[1]
    )
    with database.session() as s:
        output = services.get(s, rid).outputs[0]
        evidence = json.loads(output.evidence)
        rows = json.loads(output.result)["rows"]
        cells = [{"row": [rows[1][0]], "column": "n", "findings": ["threshold"], "detail": "4"}]
        evidence["acro"] = {**ACRO, "cells": cells}
        evidence["overlaps"] = [
            {"row": 1, "request": earlier, "output": 1, "earlier_row": 0, "patients": 3}
        ]
        output.evidence = json.dumps(evidence)
    own = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert "ACRO" not in own and "Differencing" not in own
    checker = app.test_client()
    AuthActions(checker).login("chris")
    body = checker.get(f"/releases/{rid}").get_data(as_text=True)
    assert 'class="badge fail"' in body and "1 cell below the threshold of 10" in body
    assert 'class="flagged"' in body and "ACRO: threshold" in body
    assert "Differencing across releases" in body
    assert f"Row 2 differs from row 1 of output 1 of in review request #{earlier}" in body
    assert f'href="/releases/{earlier}#output-1"' in body
    assert "{" not in body.split('data-testid="acro-1"')[1].split("</div>")[0]  # no raw JSON
