"""The steward's and contributor admins' pages for a first hour without a developer:
the agreement form (one validation path with the YAML), errors in words, the policy in
words, drafts deleted, confirmations, the users table, the ledger entry, failed synthesis
advice, the signature prompt and the transparency log (issue 16)."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.datastructures import MultiDict

from contracts.agreements import load_template
from hub.agreements import forms, services
from hub.agreements.models import AgreementRecord
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.errors import Conflict, NotFound, web_text, without_repeats
from policies import store
from tests.conftest import AuthActions, Users, csrf_from
from tests.unit.hub.conftest import AgreementWorld, agreement_terms

pytestmark = pytest.mark.db

CLI_HINT = re.compile(r"cleanroom (agreement|institution|user|audit|synth)")


@pytest.fixture
def world(users: Users, database: Database) -> AgreementWorld:
    return AgreementWorld(users, database)


def _visible(html: str) -> str:
    """The page without what sits in collapsed <details> (the technical detail)."""
    return re.sub(r"<details.*?</details>", "", html, flags=re.S)


def _no_developer_words(html: str) -> None:
    assert "Traceback" not in html
    assert not CLI_HINT.search(html), CLI_HINT.search(html)
    assert "{&#39;" not in html and "{'" not in html  # a Python dict
    assert '{"' not in _visible(html) and "&#34;:" not in _visible(html)  # raw JSON


# Messages ---------------------------------------------------------------------------------


def test_web_messages_drop_repeats_and_cli_hints_the_cli_keeps_them() -> None:
    assert (
        without_repeats("agreement `x`: agreement `x` cannot sign") == "agreement `x` cannot sign"
    )
    assert without_repeats("a: b: c") == "a: b: c"
    assert web_text("agreement: agreement: `id` is wrong") == "agreement: ‘id’ is wrong."
    hinted = "no institution 'x'; `cleanroom institution list` shows them."
    assert web_text(hinted) == "no institution 'x'."
    aside = "no institution `a` in the hub (add it first; `cleanroom institution list`)."
    assert web_text(aside) == "no institution ‘a’ in the hub."
    err = NotFound("no agreement 'x'.", cli_hint="`cleanroom agreement list` shows them.")
    assert "cleanroom" not in err.message and err.to_dict()["error"]["message"] == err.message
    assert err.cli_message == "no agreement 'x'; `cleanroom agreement list` shows them."


# The form ---------------------------------------------------------------------------------


def test_the_form_writes_the_same_agreement_as_the_template() -> None:
    """Template -> form -> YAML -> the one validator: the same terms, digest for digest."""
    for name in services.templates():
        agreement = load_template(name)
        again = services.parse(forms.to_yaml(forms.from_agreement(agreement)))
        assert again.terms == agreement.terms, name


def test_posted_fields_become_the_agreement() -> None:
    posted = MultiDict(
        [
            ("id", "vv-2027"),
            ("title", "Vein to vein"),
            ("purpose.code", "vein_to_vein"),
            ("purpose.text", "Benchmark turnaround."),
            ("role.acme-bio", "contributor"),
            ("role.st-aurelia", "contributor"),
            ("role.st-aurelia", "recipient"),
            ("cover.batch", "columns"),
            ("column.batch", "lot_id"),
            ("column.batch", "viability"),
            ("cover.episode", "all"),
            ("cover.collection", "none"),
            ("column.collection", "din"),  # ticked, but the table is not covered
            ("researchers", "rosa"),
            ("valid_from", "2026-01-01"),
            ("valid_until", "2027-12-31"),
            *[(f"disclosure.{n}", "12" if n == "k" else "") for n, _, _ in forms.DISCLOSURE_FIELDS],
            ("disclosure.allow_model_fitting", "on"),
        ]
    )
    for name, _, _ in forms.DISCLOSURE_FIELDS:
        if name != "k":
            posted.setlist(f"disclosure.{name}", [f"{getattr(forms.DEFAULT_DISCLOSURE, name):g}"])
    agreement = services.parse(forms.to_yaml(forms.from_request(posted)))
    assert [(p.institution, p.contributor, p.recipient) for p in agreement.parties] == [
        ("acme-bio", True, False),
        ("st-aurelia", True, True),
    ]
    assert {c.table: c.columns for c in agreement.tables} == {
        "batch": ("lot_id", "viability"),
        "episode": None,
    }
    assert agreement.researchers == ("rosa",)
    assert agreement.disclosure.k == 12 and agreement.disclosure.allow_model_fitting
    assert not agreement.disclosure.allow_synthetic
    assert agreement.valid_until.date().isoformat() == "2028-01-01"  # the whole last day


def test_validator_problems_land_beside_their_fields() -> None:
    form = forms.from_agreement(load_template("manufacturing_failure_prediction"))
    form.disclosure["k"] = "2"
    form.disclosure["dominance_percent"] = "95"
    with pytest.raises(services.InvalidAgreement) as caught:
        services.parse(forms.to_yaml(form))
    errors = forms.field_errors(caught.value.message)
    assert set(errors) == {"disclosure.k", "disclosure.dominance_percent"}, errors
    assert "floor is 10" in errors["disclosure.k"][0]
    form = forms.from_agreement(load_template("manufacturing_failure_prediction"))
    form.disclosure["k"] = "ten"
    with pytest.raises(services.InvalidAgreement) as caught:
        services.parse(forms.to_yaml(form))
    assert list(forms.field_errors(caught.value.message)) == ["disclosure.k"]
    form.disclosure["k"] = "10"
    form.tables = {}
    with pytest.raises(services.InvalidAgreement) as caught:
        services.parse(forms.to_yaml(form))
    assert list(forms.field_errors(caught.value.message)) == ["tables"]


def _form_data(token: str, **changes: object) -> MultiDict:
    data = MultiDict(
        [
            ("csrf_token", token),
            ("id", "mfp"),
            ("title", "Manufacturing-failure prediction"),
            ("purpose.code", "manufacturing_failure_prediction"),
            ("purpose.text", "Predict failed runs."),
            ("role.acme-bio", "contributor"),
            ("role.st-aurelia", "contributor"),
            ("role.st-aurelia", "recipient"),
            ("cover.batch", "columns"),
            ("column.batch", "lot_id"),
            ("column.batch", "viability"),
            ("cover.collection", "all"),
            ("researchers", "rosa"),
            ("valid_from", "2026-01-01"),
            ("valid_until", "2099-12-31"),
        ]
    )
    for name, _, _ in forms.DISCLOSURE_FIELDS:
        data[f"disclosure.{name}"] = f"{getattr(forms.DEFAULT_DISCLOSURE, name):g}"
    for key, value in changes.items():
        data.setlist(key.replace("__", "."), value if isinstance(value, list) else [value])
    return data


def test_steward_creates_an_agreement_with_the_form(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login("sam")
    page = client.get("/admin/agreements?template=manufacturing_failure_prediction")
    html = page.get_data(as_text=True)
    assert page.status_code == 200 and 'data-testid="agreement-form"' in html
    assert 'value="manufacturing_failure_prediction"' in html  # the template's purpose
    assert "example-researcher" not in _visible(html)  # placeholders left out of the form
    _no_developer_words(html)
    token = csrf_from(client, "/admin/agreements")

    bad = client.post(
        "/admin/agreements", data=_form_data(token, disclosure__k="3", title="Kept title")
    )
    html = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert 'id="err-disclosure-k"' in html and "floor is 10" in html
    assert 'value="Kept title"' in html and 'name="disclosure.k" value="3"' in html
    _no_developer_words(html)
    bad = client.post("/admin/agreements", data=_form_data(token, researchers="omar"))
    html = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert 'id="err-researchers"' in html and "not to a recipient party" in html
    assert 'value="omar" checked' in html  # the choice is kept
    _no_developer_words(html)
    with world.database.session() as s:
        assert s.scalar(select(AgreementRecord.id)) is None

    made = client.post("/admin/agreements", data=_form_data(token))
    assert made.status_code == 302 and made.location.endswith("/admin/agreements/mfp")
    with world.database.session() as s:
        stored = services.get(s, "mfp")
        # The same agreement the YAML path makes from the same terms.
        # The same agreement the YAML path makes from the same terms (the form lists
        # tables in the data model's order).
        same = agreement_terms().replace(
            "  batch: [lot_id, viability]\n  collection: all\n",
            "  collection: all\n  batch: [lot_id, viability]\n",
        )
        assert same != agreement_terms() and stored.digest == services.parse(same).terms
    # Editing the draft with the form keeps what it does not change.
    edited = client.post(
        "/admin/agreements/mfp", data=_form_data(token, title="Renamed"), follow_redirects=True
    )
    assert "Draft saved." in edited.get_data(as_text=True)
    with world.database.session() as s:
        assert services.get(s, "mfp").title == "Renamed"


# Drafts, confirmations, the readable policy -------------------------------------------------


def test_a_draft_is_deleted_after_a_confirmation_and_a_sent_one_never(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    slug = world.create()
    auth.login("sam")
    token = csrf_from(client, f"/admin/agreements/{slug}")
    assert "Delete draft" in client.get(f"/admin/agreements/{slug}").get_data(as_text=True)
    unconfirmed = client.post(f"/admin/agreements/{slug}/delete", data={"csrf_token": token})
    assert unconfirmed.status_code == 302 and unconfirmed.location.endswith("/confirm/delete")
    ask = client.get(unconfirmed.location).get_data(as_text=True)
    assert 'data-testid="confirm"' in ask and "never sent for signatures" in ask
    done = client.post(
        f"/admin/agreements/{slug}/delete",
        data={"csrf_token": token, "confirmed": "yes"},
        follow_redirects=True,
    )
    assert f"Draft agreement {slug} deleted." in done.get_data(as_text=True)
    with world.database.session() as s:
        assert s.scalar(select(AgreementRecord.id)) is None
        entry = s.scalars(select(AuditEntry).where(AuditEntry.action == "agreement.delete")).one()
        assert entry.target == f"agreement:{slug}" and entry.actor == "user:sam"
    assert world.rules(slug) == []

    # Sent for signatures and back to draft: its history binds, so it is terminated instead.
    slug = world.create()
    world.move(slug, "submit")
    world.move(slug, "revise")
    page = client.get(f"/admin/agreements/{slug}").get_data(as_text=True)
    assert "Delete draft" not in page and "cannot be deleted" in page
    with world.database.session() as s, pytest.raises(Conflict, match="terminate it instead"):
        services.delete_draft(s, services.get(s, slug), actor="user:sam")


def test_suspend_and_terminate_ask_first(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    slug = world.active()
    auth.login("sam")
    token = csrf_from(client, f"/admin/agreements/{slug}")
    for event in ("suspend", "terminate"):
        asked = client.post(f"/admin/agreements/{slug}/{event}", data={"csrf_token": token})
        assert asked.status_code == 302 and asked.location.endswith(f"/confirm/{event}")
        with world.database.session() as s:
            assert services.get(s, slug).state == "active"
    done = client.post(
        f"/admin/agreements/{slug}/suspend",
        data={"csrf_token": token, "confirmed": "yes"},
        follow_redirects=True,
    )
    assert "is now suspended" in done.get_data(as_text=True)


def test_the_compiled_policy_reads_with_names(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    slug = world.active()
    with world.database.session() as s:
        said = services.grants(s, store.load_rules(s, [f"agreement:{slug}"]))
    rosa = [g for g in said if g.who.startswith("rosa") and g.role == "researcher"]
    data = [g for g in rosa if "batch" in g.what]
    assert len(data) == 1
    assert "batch (lot_id, viability)" in data[0].what
    assert "collection (all columns)" in data[0].what
    assert data[0].actions == "query" and all(g.institution == "St Aurelia" for g in rosa)
    assert any(g.actions == "read" and g.what == "the agreement's terms" for g in rosa)
    auth.login("sam")
    page = client.get(f"/admin/agreements/{slug}").get_data(as_text=True)
    words = page.split('data-testid="policy-words"')[1].split("</ul>")[0]
    assert re.search(
        r"<strong>rosa</strong> \(researcher, St Aurelia\) may query [^<]*"
        r"batch \(lot_id, viability\)[^<]* under <em>Manufacturing-failure prediction</em>, "
        r"from 2026-01-01 to the end of 2099-12-31",
        words,
    ), words
    assert "user:" not in _visible(page)  # ids only in the collapsed technical detail
    assert f"user:{world.ids['rosa']}" in page
    reach = client.get("/admin/access?user=rosa").get_data(as_text=True)
    assert "may query batch.viability under <em>Manufacturing-failure prediction</em>" in reach
    _no_developer_words(page)


# Users table, ledger entry ----------------------------------------------------------------


class _Cells(HTMLParser):
    """Each table row's cells as (tag, text, names of form controls in it)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, str, list[str]]]] = []
        self._cell: list | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = [tag, "", []]
        elif tag == "select" and self._cell is not None:
            self._cell[2].append(dict(attrs).get("name") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(tuple(self._cell))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[1] += data


def test_users_table_headings_sit_over_their_controls(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login("sam")
    html = client.get("/admin/users").get_data(as_text=True)
    assert "colspan" not in html.split('data-testid="users"')[1].split("</table>")[0]
    table = _Cells()
    table.feed(html.split('data-testid="users"')[1].split("</table>")[0])
    head, *rows = table.rows
    headings = [text.strip() for _, text, _ in head]
    assert rows and all(len(r) == len(head) for r in rows)
    for row in rows:
        assert row[headings.index("Role")][2] == ["role"]
        assert row[headings.index("Institution")][2] == ["institution"]


def test_a_ledger_entry_reads_in_words(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    slug = world.active()
    auth.login("sam")
    with world.database.session() as s:
        entry = s.scalars(
            select(AuditEntry).where(AuditEntry.action == "agreement.sign").limit(1)
        ).one()
        entry_id, digest = entry.id, entry.entry_hash
    listing = client.get("/admin/audit").get_data(as_text=True)
    assert f'href="/admin/audit/{entry_id}"' in listing
    assert "{&#34;" not in listing and '{"' not in listing  # no JSON in the list
    page = client.get(f"/admin/audit/{entry_id}").get_data(as_text=True)
    assert "signed the agreement" in page and f"agreement {slug}" in page
    assert "acme-admin" in page and digest in page and "matches entry" in page
    # Institutions by name, not by their short code.
    assert re.search(r"Institution</dt><dd[^>]*>Acme Bio</dd>", page)
    _no_developer_words(page)
    assert client.get("/admin/audit/999999").status_code == 404
    auth.logout()
    auth.login("rosa")
    assert client.get(f"/admin/audit/{entry_id}").status_code == 403


# Failed synthesis --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "error", "expected"),
    [
        (
            "failed",
            "InvalidDataError: The data contains the following errors:\n"
            "Key column 'lot_id' contains repeating values: ['a', 'b']",
            "withdraw the older version",
        ),
        ("failed", "`batch` has 4 rows; synthesis needs at least 10", "at least 10 rows"),
        ("failed", "RuntimeError: out of memory", "Try again"),
    ],
)
def test_a_failed_synthesis_is_explained_with_advice(state: str, error: str, expected: str) -> None:
    from hub.synth.views import synthesis_problem

    problem = synthesis_problem(SimpleNamespace(state=state, error=error))  # type: ignore[arg-type]
    assert problem is not None and problem["raw"] == error
    assert any(expected in a for a in problem["advice"]), problem
    assert "Error" not in problem["what"]


def test_failed_gates_name_the_gate_and_what_to_try() -> None:
    from hub.synth.views import synthesis_problem

    report = {"gates": {"failed": [{"gate": "quality", "message": "quality 0.41 < 0.6"}]}}
    problem = synthesis_problem(
        SimpleNamespace(state="failed_gates", error="", report=json.dumps(report))  # type: ignore[arg-type]
    )
    assert problem is not None
    assert problem["advice"][0].startswith("quality: quality 0.41 < 0.6.")
    assert "another method" in problem["advice"][0]
    assert synthesis_problem(SimpleNamespace(state="published", error="")) is None  # type: ignore[arg-type]


# The contributor admin ----------------------------------------------------------------------


def test_admin_is_prompted_to_sign_and_the_box_goes_once_signed(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    slug = world.create()
    world.move(slug, "submit")
    auth.login("acme-admin")
    listing = client.get("/agreements").get_data(as_text=True)
    assert 'data-testid="awaiting-signature"' in listing and "Manufacturing-failure" in listing
    page = client.get(f"/agreements/{slug}").get_data(as_text=True)
    assert 'data-testid="sign-box"' in page
    token = csrf_from(client, f"/agreements/{slug}")
    signed = client.post(
        f"/agreements/{slug}/sign", data={"csrf_token": token}, follow_redirects=True
    ).get_data(as_text=True)
    assert 'data-testid="sign-box"' not in signed
    assert re.search(r"Signed by you on \d{4}-\d\d-\d\d \d\d:\d\d UTC", signed)
    listing = client.get("/agreements").get_data(as_text=True)
    assert 'data-testid="awaiting-signature"' not in listing
    assert "signed by you on" in listing
    auth.logout()
    auth.login("aurelia-admin")  # the other party still has to sign
    assert 'data-testid="sign-box"' in client.get(f"/agreements/{slug}").get_data(as_text=True)


def test_transparency_log_says_in_words_what_used_our_data(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    from hub.audit.services import record
    from hub.gateway.models import GatewayAnswer
    from sandbox.gateway.engine import digest

    slug = world.active()
    answer = {
        "columns": ["platform", "n"],
        "rows": [["a", 12], ["b", None], ["c", None]],
        "suppressed": [
            {"row": 1, "column": None, "reason": "fewer than 10 patients (noisy count)"},
            {"row": 2, "column": None, "reason": "fewer than 10 patients (noisy count)"},
        ],
    }
    sql = "SELECT platform, COUNT(*) AS n FROM batch GROUP BY platform"
    with world.database.session() as s:
        stored = services.get(s, slug)
        s.add(
            GatewayAnswer(
                agreement_id=stored.id,
                question="q1",
                kind="query",
                epsilon=0.5,
                answer=json.dumps(answer),
                created_by="user:rosa",
            )
        )
        at = f"agreement:{slug}"
        theirs = {"institutions": ["st-aurelia", "acme-bio"]}
        record(
            s,
            actor="user:rosa",
            action="sandbox.query",
            target=at,
            detail={"sql": sql, "epsilon": 0.5, "result_hash": digest(answer), **theirs},
        )
        record(
            s,
            actor="user:rosa",
            action="sandbox.fit",
            target=at,
            detail={
                "table": "batch",
                "kind": "linear",
                "features": ["viability"],
                "target": "culture_days",
                "filters": None,
                "epsilon": 1.0,
                "remembered": False,
                **theirs,
            },
        )
        record(
            s,
            actor="user:rosa",
            action="sandbox.synthetic",
            target=at,
            detail={"table": "batch", "rows": 50},
        )
        record(
            s,
            actor="user:rosa",
            action="sandbox.query",
            target=at,
            detail={"sql": "SELECT 1", "institutions": ["kelvin"]},  # not our data
        )
    auth.login("aurelia-admin")
    page = client.get("/institution/data").get_data(as_text=True)
    log = page.split('data-testid="activity"')[1].split("</table>")[0]
    rows = log.split("<tr>")[2:]
    assert len(rows) == 3, log
    synthetic, fit, query = rows  # newest first
    assert "Manufacturing-failure prediction" in query and "<td>batch</td>" in query
    assert "SELECT platform, COUNT(*) AS n FROM batch" in query
    assert "2 cells withheld: fewer than 10 patients (noisy count)" in query
    assert "linear regression of culture_days on viability in batch" in fit
    assert "Synthetic rows downloaded" in synthetic and "50 synthetic rows of batch" in synthetic
    assert "SELECT 1" not in log
    _no_developer_words(page)


def test_the_steward_reads_a_failed_synthesis_in_words(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    from hub.synth.models import SyntheticVersion

    slug = world.active()
    raw = (
        "InvalidDataError: The provided data does not match the metadata:\n"
        "Key column 'lot_id' contains repeating values: ['LOT-1', 'LOT-2']"
    )
    with world.database.session() as s:
        failed = SyntheticVersion(
            agreement_slug=slug,
            cdm_table="batch",
            method="gaussian_copula",
            state="failed",
            error=raw,
            created_by="user:sam",
        )
        s.add(failed)
        s.flush()
        synthetic_id = failed.id
    auth.login("sam")
    listing = client.get("/synthetic").get_data(as_text=True)
    assert "holds the same key" in listing and "InvalidDataError" not in listing
    page = client.get(f"/synthetic/{synthetic_id}").get_data(as_text=True)
    advice = page.split('data-testid="synthesis-advice"')[1].split("</section>")[0]
    assert "withdraw the older version" in advice
    assert 'data-testid="synthesis-problem"' not in page  # said once, in the advice
    assert "InvalidDataError" not in _visible(page)  # only in the technical detail
    assert "Key column &#39;lot_id&#39; contains repeating values" in advice
    _no_developer_words(page)
