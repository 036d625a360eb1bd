"""Reviewed release (``hub.releases``): a request computed exactly on the pool, reviewed by
two independent output checkers (never the author; a revision resets the reviews), open to
the contributing institutions' objections, and released to the researcher only then."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.accounts.models import User
from hub.audit.models import AuditEntry
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, Forbidden
from hub.releases import services
from hub.settings import Settings
from tests.conftest import bearer
from tests.unit.hub.conftest import SITES, TABLE, batch_frame

pytestmark = pytest.mark.db

FIT = {
    "kind": "fit",
    "table": "batch",
    "model": "linear",
    "features": ["culture_days"],
    "target": "viability",
    "purpose": "Table 2: viability by culture days",
}
DEFAULT_OUTPUTS = [{"sql": TABLE, "purpose": "Table 1: lots per platform"}, FIT]


def _ask(client: FlaskClient, headers, outputs=None, **extra):
    body = {
        "agreement": "v2v",
        "title": "Paper 1",
        "outputs": DEFAULT_OUTPUTS if outputs is None else outputs,
        **extra,
    }
    return client.post("/api/v1/releases", json=body, headers=headers)


def _user(s, name: str) -> User:
    return accounts.get_user(s, name)


def _review(database, settings, request_id, name, decision="approve", comment=""):
    with database.session() as s:
        return services.review(
            s, settings, services.get(s, request_id), _user(s, name), decision, comment
        ).state


def test_the_whole_flow_exact_results_only_once_released(
    client: FlaskClient, database: Database, settings: Settings, review_world
) -> None:
    resp = _ask(client, review_world["rosa"])
    assert resp.status_code == 201, resp.get_json()
    asked = resp.get_json()
    rid = asked["id"]
    assert asked["state"] == "in_review" and "results" not in asked
    assert [o["computed"] for o in asked["outputs"]] == [True, True]
    # Nothing exact leaves before release, by any route the researcher has.
    shown = client.get(f"/api/v1/releases/{rid}", headers=review_world["rosa"]).get_json()
    assert "results" not in shown and "result" not in json.dumps(shown["outputs"])
    listed = client.get("/api/v1/releases", headers=review_world["rosa"]).get_json()["requests"]
    assert [r["id"] for r in listed] == [rid] and "results" not in listed[0]

    # Two independent approvals; the author cannot be one of them.
    with pytest.raises(Forbidden, match="own"):
        _review(database, settings, rid, "rosa")
    assert _review(database, settings, rid, "chris") == "in_review"
    with pytest.raises(Conflict, match="already"):
        _review(database, settings, rid, "chris")
    assert _review(database, settings, rid, "omar") == "approved"
    assert client.get(f"/api/v1/releases/{rid}", headers=review_world["rosa"]).get_json()[
        "state"
    ] == ("approved")

    # The contributing institutions' window passes with no objection: released.
    with database.session() as s:
        request = services.get(s, rid)
        assert request.window_ends_at is not None
        assert not services.settle(s, request, request.window_ends_at - timedelta(seconds=1))
        assert services.settle(s, request, request.window_ends_at + timedelta(seconds=1))
    done = client.get(f"/api/v1/releases/{rid}", headers=review_world["rosa"]).get_json()
    assert done["state"] == "released"
    table, model = (r["result"] for r in done["results"])
    assert table["request"] == rid and len(done["results"][0]["result_hash"]) == 64
    # Exact (the disclosure rules of the exact path: counts rounded to 5), against pandas.
    pool = pd.concat([batch_frame(n) for n in range(len(SITES))])
    truth = pool.groupby("platform").size()
    rows = {r[0]: r for r in table["rows"]}
    for platform, n in truth.items():
        assert rows[platform][1] == 5 * round(n / 5)
        mean = pool[pool.platform == platform].viability.mean()
        assert rows[platform][2] == pytest.approx(mean, abs=0.01)
    assert model["n"] == len(pool) and "coefficients" in model
    with database.session() as s:
        actions = [
            a
            for a in s.scalars(select(AuditEntry.action).order_by(AuditEntry.id))
            if a.startswith("release.")
        ]
    assert actions == ["release.request", "release.approve", "release.approve", "release.released"]


def test_a_revision_resets_the_reviews(
    client: FlaskClient, database: Database, settings: Settings, review_world
) -> None:
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    _review(database, settings, rid, "chris")
    changed = client.post(
        f"/api/v1/releases/{rid}/revise",
        json={"outputs": [{"sql": TABLE, "purpose": "Table 1, revised"}]},
        headers=review_world["rosa"],
    ).get_json()
    assert changed["revision"] == 2 and changed["approvals"] == 0 and len(changed["outputs"]) == 1
    assert _review(database, settings, rid, "chris") == "in_review"  # counts again, once
    assert _review(database, settings, rid, "omar") == "approved"


def test_an_objection_blocks_release_until_the_steward_resolves_it(
    client: FlaskClient, database: Database, settings: Settings, review_world, users
) -> None:
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    _review(database, settings, rid, "chris")
    _review(database, settings, rid, "omar")
    with database.session() as s:
        request = services.get(s, rid)
        with pytest.raises(Forbidden, match="admin of an institution"):
            services.object_to(s, request, _user(s, "omar"), "no")
        objection = services.object_to(s, request, _user(s, "kelvin-admin"), "Our lots show.")
        after = request.window_ends_at + timedelta(days=1)
        assert not services.settle(s, request, after)  # blocked
        with pytest.raises(Forbidden):
            services.resolve(s, request, objection, _user(s, "chris"), "dismissed", "fine")
        services.resolve(s, request, objection, _user(s, "sam"), "dismissed", "Aggregated enough.")
        assert services.settle(s, request, after)


def test_an_upheld_objection_or_a_rejection_ends_the_request_with_its_reason(
    client: FlaskClient, database: Database, settings: Settings, review_world, users
) -> None:
    first = _ask(client, review_world["rosa"]).get_json()["id"]
    with database.session() as s:
        request = services.get(s, first)
        objection = services.object_to(s, request, _user(s, "acme-bio-admin"), "Too fine.")
        services.resolve(s, request, objection, _user(s, "sam"), "upheld", "Cells of one site.")
    shown = client.get(f"/api/v1/releases/{first}", headers=review_world["rosa"]).get_json()
    assert shown["state"] == "rejected" and "Cells of one site" in shown["reason"]

    second = _ask(client, review_world["rosa"]).get_json()["id"]
    with pytest.raises(BadRequest, match="why"):
        _review(database, settings, second, "chris", "reject")
    assert _review(database, settings, second, "chris", "reject", "Table 1 too fine") == (
        "rejected"
    )
    assert client.get(f"/api/v1/releases/{second}", headers=review_world["rosa"]).get_json()[
        "reason"
    ] == ("Table 1 too fine")


def test_only_output_checkers_review_and_only_the_author_reads(
    client: FlaskClient, database: Database, settings: Settings, review_world
) -> None:
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    with database.session() as s:
        _user(s, "omar").is_output_checker = False
    with pytest.raises(Forbidden, match="output checkers"):
        _review(database, settings, rid, "omar")
    omar = bearer(database, settings, "omar")
    assert client.get(f"/api/v1/releases/{rid}", headers=omar).status_code == 403
    assert client.get("/api/v1/releases", headers=omar).get_json()["requests"] == []


def test_bad_requests_say_what_is_wrong(client: FlaskClient, review_world) -> None:
    for outputs, words in (
        ([], "non-empty"),
        ([{"sql": TABLE}], "purpose"),
        ([{"kind": "table", "purpose": "x"}], "kind"),
        ([{**FIT, "model": "forest"}], "model"),
    ):
        resp = _ask(client, review_world["rosa"], outputs=outputs)
        assert resp.status_code == 400 and words in resp.get_json()["error"]["message"]
    unknown = client.post(
        "/api/v1/releases",
        json={"agreement": "nope", "outputs": [{"sql": TABLE, "purpose": "x"}]},
        headers=review_world["rosa"],
    )
    assert unknown.status_code == 403 and unknown.get_json()["error"]["code"] == "policy_denied"


def test_a_query_the_rules_refuse_is_recorded_not_computed(
    client: FlaskClient, database: Database, review_world
) -> None:
    resp = _ask(
        client, review_world["rosa"], outputs=[{"sql": "SELECT * FROM batch", "purpose": "x"}]
    )
    assert resp.status_code == 201
    output = resp.get_json()["outputs"][0]
    assert output["computed"] is False and output["refused"]
    with database.session() as s:
        assert services.get(s, resp.get_json()["id"]).outputs[0].result == ""


def test_working_days_skip_the_weekend() -> None:
    friday = utcnow().replace(year=2026, month=12, day=4, hour=12)
    assert services.add_working_days(friday, 1).weekday() == 0  # Monday
    assert (services.add_working_days(friday, 5) - friday).days == 7


# The portal --------------------------------------------------------------------------------


def _form(client: FlaskClient, path: str, data: dict) -> object:
    from tests.conftest import csrf_from

    token = csrf_from(
        client, path.rsplit("/", 1)[0] if path.endswith(("review", "object")) else path
    )
    return client.post(path, data={**data, "csrf_token": token})


def test_reviewers_decide_from_one_page_and_the_author_sees_no_result_before_release(
    client: FlaskClient, auth, database: Database, settings: Settings, review_world, app
) -> None:
    from tests.conftest import AuthActions

    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    page = f"/releases/{rid}"
    # The author's page: the state, never the numbers.
    auth.login("rosa")
    own = client.get(page).get_data(as_text=True)
    assert "in review" in own and "Nobody reviews their own request" in own
    assert "review-form" not in own and "<td>central</td>" not in own
    auth.logout()
    # Two checkers approve from the page, which shows the table and its evidence.
    for name in ("chris", "omar"):
        browser = app.test_client()
        AuthActions(browser).login(name)
        shown = browser.get(page).get_data(as_text=True)
        assert "<td>central</td>" in shown and "Rules applied" in shown
        assert "review-form" in shown
        assert _form(browser, f"{page}/review", {"decision": "approve"}).status_code == 302
    # A contributing institution's admin sees the request and may object to it.
    admin = app.test_client()
    AuthActions(admin).login("kelvin-admin")
    assert "object-form" in admin.get(page).get_data(as_text=True)
    with database.session() as s:
        request = services.get(s, rid)
        assert request.state == "approved"
        services.settle(s, request, request.window_ends_at + timedelta(seconds=1))
    auth.login("rosa")
    released = client.get(page).get_data(as_text=True)
    assert "<td>central</td>" in released
    csv = client.get(f"{page}/1.csv")
    assert csv.status_code == 200 and "result hash" in csv.get_data(as_text=True)
    xlsx = client.get(f"{page}/1.xlsx")
    assert xlsx.status_code == 200
    import io

    from openpyxl import load_workbook

    sheet = load_workbook(io.BytesIO(xlsx.data)).active
    cells = [[c.value for c in row] for row in sheet.iter_rows()]
    assert cells[0] == ["platform", "n", "v"] and cells[1][0] == "central"
    assert any(str(row[0]).startswith("result hash") for row in cells if row[0])
    # The institutions see on their transparency page what left from their data, for whom.
    auth.logout()
    auth.login("kelvin-admin")
    listed = client.get("/institution/data").get_data(as_text=True)
    assert "Paper 1" in listed and "released" in listed


def test_the_steward_names_output_checkers(
    client: FlaskClient, auth, database: Database, review_world
) -> None:
    from tests.conftest import csrf_from

    with database.session() as s:
        nadia = _user(s, "acme-bio-admin")
        assert not nadia.is_output_checker
        uid = nadia.id
    auth.login("sam")
    token = csrf_from(client, "/admin/users")
    resp = client.post(f"/admin/users/{uid}/checker", data={"csrf_token": token})
    assert resp.status_code == 302
    with database.session() as s:
        assert _user(s, "acme-bio-admin").is_output_checker
        assert "user.output_checker" in s.scalars(select(AuditEntry.action)).all()


def test_a_contributor_named_output_checker_reviews_from_the_page_with_withheld_cells(
    client: FlaskClient, auth, database: Database, review_world, users
) -> None:
    """The checker role comes from the steward's naming, whatever the user's own role; the
    page lists the cells withheld, groups left out included."""
    rare = "SELECT platform, COUNT(*) AS n FROM batch WHERE viability > 95 GROUP BY platform"
    rid = _ask(
        client, review_world["rosa"], outputs=[{"sql": rare, "purpose": "Rare lots"}]
    ).get_json()["id"]
    users.make("kelvin-data", "contributor", "kelvin")
    with database.session() as s:
        _user(s, "kelvin-data").is_output_checker = True
    auth.login("kelvin-data")
    page = client.get(f"/releases/{rid}")
    assert page.status_code == 200
    body = page.get_data(as_text=True)
    assert "withheld" in body and "review-form" in body
    assert "Release requests" in client.get("/").get_data(as_text=True)  # in the menu


def test_an_institution_objects_and_the_steward_resolves_from_the_page(
    client: FlaskClient, database: Database, review_world, app
) -> None:
    from tests.conftest import AuthActions

    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    page = f"/releases/{rid}"
    admin = app.test_client()
    AuthActions(admin).login("kelvin-admin")
    empty = _form(admin, f"{page}/object", {"text": " "})
    assert empty.status_code == 302
    assert "say what the objection is" in admin.get(page).get_data(as_text=True)
    assert _form(admin, f"{page}/object", {"text": "Our lots are identifiable."}).status_code == 302
    steward = app.test_client()
    AuthActions(steward).login("sam")
    shown = steward.get(page).get_data(as_text=True)
    assert "Our lots are identifiable." in shown and "Uphold" in shown
    with database.session() as s:
        oid = services.get(s, rid).objections[0].id
    from tests.conftest import csrf_from

    token = csrf_from(steward, page)
    steward.post(
        f"{page}/objections/{oid}",
        data={"resolution": "upheld", "note": "Agreed: too fine.", "csrf_token": token},
    )
    with database.session() as s:
        request = services.get(s, rid)
        assert request.state == "rejected" and "too fine" in request.reason


def test_the_checkers_see_the_patients_and_institutions_behind_each_row(
    client: FlaskClient, database: Database, review_world
) -> None:
    """Exact distinct patients and institutions per row (evidence, never released), checked
    against pandas: each lot is its own patient here."""
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    with database.session() as s:
        output = services.get(s, rid).outputs[0]
        result, evidence = json.loads(output.result), json.loads(output.evidence)
    pool = pd.concat([batch_frame(n).assign(site=site) for n, site in enumerate(SITES)])
    for row, behind in zip(result["rows"], evidence["behind"], strict=True):
        lots = pool[pool.platform == row[0]]
        assert behind == [len(lots), lots.site.nunique()]


def _under(threshold: float) -> str:
    return (
        f"SELECT platform, COUNT(*) AS n FROM batch WHERE viability < {threshold} GROUP BY platform"
    )


def _release(database, settings, rid: int) -> None:
    _review(database, settings, rid, "chris")
    _review(database, settings, rid, "omar")
    with database.session() as s:
        request = services.get(s, rid)
        assert services.settle(s, request, request.window_ends_at + timedelta(seconds=1))


def test_differencing_across_releases_is_flagged_for_the_checkers(
    client: FlaskClient, database: Database, settings: Settings, review_world
) -> None:
    """Two tables that each pass the rules, whose difference is a handful of lots: the
    second request's evidence names the earlier released output and how many patients the
    difference singles out, as pandas counts them on the pool; a far threshold (a
    difference of k or more) and an unrelated table are not flagged."""
    pool = pd.concat([batch_frame(n) for n in range(len(SITES))])
    near, wide = 90.0, 90.6
    first = _ask(
        client, review_world["rosa"], [{"sql": _under(near), "purpose": "Table 1"}]
    ).get_json()
    _release(database, settings, first["id"])
    second = _ask(
        client,
        review_world["rosa"],
        [
            {"sql": _under(wide), "purpose": "Table 1 again, a little wider"},
            {"sql": _under(99.0), "purpose": "Table 1, much wider"},
        ],
    ).get_json()
    with database.session() as s:
        outputs = services.get(s, second["id"]).outputs
        result = json.loads(outputs[0].result)
        evidence = [json.loads(o.evidence) for o in outputs]
    expected = {}
    for platform, lots in pool.groupby("platform"):
        n = int(((lots.viability >= near) & (lots.viability < wide)).sum())
        if 0 < n < 10:
            expected[platform] = n
    assert expected  # the control: the pool holds a difference to find
    found = {
        result["rows"][o["row"]][0]: o["patients"]
        for o in evidence[0].get("overlaps", [])
        if o["request"] == first["id"]
    }
    assert found == expected
    assert all(o["output"] == 1 and o["earlier_row"] is not None for o in evidence[0]["overlaps"])
    # The much wider table differs from both by k or more lots per platform: no warning
    # against the earlier release.
    assert not [o for o in evidence[1].get("overlaps", []) if o["request"] == first["id"]]
    # Within one request the same check runs between its own outputs.
    within = _ask(
        client,
        review_world["rosa"],
        [{"sql": _under(near), "purpose": "A"}, {"sql": _under(wide), "purpose": "B"}],
    ).get_json()
    with database.session() as s:
        evidence_b = json.loads(services.get(s, within["id"]).outputs[1].evidence)
    assert {o["request"] for o in evidence_b["overlaps"]} >= {within["id"]}


def test_singled_out() -> None:
    a, b = frozenset(range(20)), frozenset(range(23))
    assert services.singled_out(a, b, 10) == 3
    assert services.singled_out(b, a, 10) == 3
    assert services.singled_out(a, a, 10) is None  # the same patients
    assert services.singled_out(a, frozenset(range(100, 103)), 10) is None  # disjoint
    assert services.singled_out(a, frozenset(range(40)), 10) is None  # differ by 20
    assert services.singled_out(frozenset(range(15)), frozenset(range(5, 35)), 10) == 5


def test_comments_per_output_reach_the_researcher(
    client: FlaskClient, database: Database, settings: Settings, review_world, users
) -> None:
    """A checker's notes per output come with the review; the institution's admin and the
    researcher comment too; a stranger may not; the researcher's summary lists them all."""
    users.make("zoe", "researcher", "kelvin")
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    with database.session() as s:
        request = services.get(s, rid)
        services.review(
            s, settings, request, _user(s, "chris"), "approve", notes={2: "Fine: 115 lots."}
        )
        with pytest.raises(BadRequest, match="no output 9"):
            services.review(s, settings, request, _user(s, "omar"), "approve", notes={9: "x"})
        services.comment(s, request, _user(s, "kelvin-admin"), 1, "Which sites are central?")
        services.comment(s, request, _user(s, "rosa"), 1, "All three have both platforms.")
        with pytest.raises(BadRequest, match="write the comment"):
            services.comment(s, request, _user(s, "sam"), 0, "   ")
        with pytest.raises(Forbidden):
            services.comment(s, request, _user(s, "zoe"), 0, "I am not part of this.")
    shown = client.get(f"/api/v1/releases/{rid}", headers=review_world["rosa"]).get_json()
    assert [(c["output"], c["by"]) for c in shown["comments"]] == [
        (2, "chris"),
        (1, "kelvin-admin"),
        (1, "rosa"),
    ]


def _inbox(database, name: str) -> list[str]:
    from hub.notices import services as notices

    with database.session() as s:
        return [n.subject for n in notices.of_user(s, _user(s, name))]


def test_the_people_concerned_are_notified_at_every_step(
    client: FlaskClient, database: Database, settings: Settings, review_world
) -> None:
    """Checkers (not the author) and every contributing institution's admin hear of a new
    request; the admins again when it is approved (with the window's end); the steward of an
    objection; the researcher of each decision and of the release."""
    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    assert _inbox(database, "chris") == [f"Release request {rid} to review"]
    assert _inbox(database, "omar") == [f"Release request {rid} to review"]
    assert _inbox(database, "rosa") == []  # an output checker, but its author
    for slug in SITES:
        assert _inbox(database, f"{slug}-admin") == [f"Release request {rid} computed on your data"]
    assert _inbox(database, "sam") == []
    _review(database, settings, rid, "chris")
    _review(database, settings, rid, "omar")
    assert _inbox(database, "rosa") == [f"Release request {rid} approved"]
    assert _inbox(database, "kelvin-admin")[0].startswith(
        f"Release request {rid} approved: object by"
    )
    with database.session() as s:
        services.object_to(s, services.get(s, rid), _user(s, "kelvin-admin"), "Too fine.")
    assert _inbox(database, "sam") == [f"Objection to release request {rid}"]
    with database.session() as s:
        request = services.get(s, rid)
        services.resolve(s, request, request.objections[0], _user(s, "sam"), "dismissed", "Fine.")
    assert _inbox(database, "kelvin-admin")[0] == f"Objection to release request {rid} dismissed"
    with database.session() as s:
        request = services.get(s, rid)
        request.window_ends_at = utcnow() - timedelta(seconds=1)
    assert services.settle_due(database) == 1
    assert services.settle_due(database) == 0  # once
    assert _inbox(database, "rosa")[0] == f"Release request {rid} released"
    assert _inbox(database, "acme-bio-admin")[0] == f"Release request {rid} released"


def test_the_workers_settle_due_releases(database: Database, settings: Settings) -> None:
    """The release check is the workers' housekeeping, run once per interval."""
    from hub.jobs.services import PERIODIC, Worker, load_task_modules

    load_task_modules()
    assert "release.settle" in PERIODIC
    worker = Worker(database, settings)
    assert "release.settle" in worker.run_periodic(now=1000.0)
    assert "release.settle" not in worker.run_periodic(now=1010.0)
    assert "release.settle" in worker.run_periodic(now=1061.0)


def test_notes_and_comments_in_the_portal_and_the_api(
    client: FlaskClient, auth, database: Database, review_world, app
) -> None:
    """A checker's note on output 2 comes with the review; the institution's admin asks on
    the page; the researcher answers through the API; everyone reads them under the
    output they are about."""
    from tests.conftest import AuthActions

    rid = _ask(client, review_world["rosa"]).get_json()["id"]
    page = f"/releases/{rid}"
    checker = app.test_client()
    AuthActions(checker).login("chris")
    assert 'name="note-2"' in checker.get(page).get_data(as_text=True)
    done = _form(checker, f"{page}/review", {"decision": "approve", "note-2": "Enough records."})
    assert done.status_code == 302
    admin = app.test_client()
    AuthActions(admin).login("kelvin-admin")
    from tests.conftest import csrf_from

    token = csrf_from(admin, page)
    asked = admin.post(
        f"{page}/comment",
        data={"output": "1", "text": "Are both platforms at every site?", "csrf_token": token},
    )
    assert asked.status_code == 302
    answered = client.post(
        f"/api/v1/releases/{rid}/comments",
        json={"output": 1, "text": "Yes, all three."},
        headers=review_world["rosa"],
    )
    assert answered.status_code == 201, answered.get_json()
    assert [c["by"] for c in answered.get_json()["comments"]] == ["chris", "kelvin-admin", "rosa"]
    bad = client.post(
        f"/api/v1/releases/{rid}/comments",
        json={"output": "x", "text": "?"},
        headers=review_world["rosa"],
    )
    assert bad.status_code == 400 and "position" in bad.get_json()["error"]["message"]
    shown = checker.get(page).get_data(as_text=True)
    first = shown[shown.index('data-testid="comments-1"') :]
    assert "Are both platforms" in first and "Yes, all three." in first
    assert "Enough records." in shown[shown.index('data-testid="comments-2"') :]
    auth.login("rosa")
    own = client.get(page).get_data(as_text=True)
    assert "Enough records." in own and "comment-form" in own
