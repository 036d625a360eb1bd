"""The inbox (``hub.notices``): notices left for users, read and marked only by their own
user, linking only within the site; the menu's unread badge; the API."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.errors import BadRequest, NotFound
from hub.notices import services
from hub.notices.models import Notice
from hub.settings import Settings
from tests.conftest import AuthActions, Users, csrf_from

pytestmark = pytest.mark.db


def _notify(database: Database, names: list[str], subject: str, **kw: str) -> list[int]:
    with database.session() as s:
        made = services.notify(s, [accounts.get_user(s, n) for n in names], subject, **kw)
        return [n.id for n in made]


def _unread(database: Database, name: str) -> int:
    with database.session() as s:
        return services.unread_count(s, accounts.get_user(s, name))


def test_notify_list_read_and_read_all(users: Users, database: Database) -> None:
    users.make("nadia", "contributor_admin")
    users.make("rosa", "researcher")
    first = _notify(database, ["nadia", "rosa"], "Release request 3 to look at", link="/releases/3")
    second = _notify(database, ["nadia"], "Release request 4", body="Window: 7 days.")
    assert len(first) == 2 and len(second) == 1
    assert _unread(database, "nadia") == 2 and _unread(database, "rosa") == 1
    with database.session() as s:
        nadia = accounts.get_user(s, "nadia")
        listed = services.of_user(s, nadia)
        assert [n.subject for n in listed] == ["Release request 4", "Release request 3 to look at"]
        assert listed[0].body == "Window: 7 days." and listed[1].link == "/releases/3"
        assert [n.id for n in services.of_user(s, nadia, limit=1)] == second
        read = services.mark_read(s, nadia, first[0])
        when = read.read_at
        assert when is not None
        assert services.mark_read(s, nadia, first[0]).read_at == when  # the first time stays
    assert _unread(database, "nadia") == 1
    with database.session() as s:
        assert services.mark_all_read(s, accounts.get_user(s, "nadia")) == 1
    assert _unread(database, "nadia") == 0
    assert _unread(database, "rosa") == 1  # nobody else's notices change
    with database.session() as s:
        assert s.scalars(select(AuditEntry).where(AuditEntry.action.like("notice%"))).all() == []


def test_notify_dedupes_skips_inactive_and_clips(users: Users, database: Database) -> None:
    users.make("nadia", "contributor_admin")
    users.make("omar", "researcher")
    with database.session() as s:
        accounts.get_user(s, "omar").is_active = False
    with database.session() as s:
        nadia, omar = accounts.get_user(s, "nadia"), accounts.get_user(s, "omar")
        made = services.notify(s, [nadia, omar, nadia], "a\nlong   " + "x" * 300, body="b" * 9000)
        assert [n.user_id for n in made] == [nadia.id]
        assert made[0].subject.startswith("a long x") and len(made[0].subject) == 200
        assert len(made[0].body) == services.MAX_BODY
    with database.session() as s:
        with pytest.raises(BadRequest, match="subject"):
            services.notify(s, [accounts.get_user(s, "nadia")], "   ")


@pytest.mark.parametrize(
    "link",
    [
        "//evil.example/x",
        "https://evil.example/",
        "/\\evil.example",
        "javascript:alert(1)",
        "releases/3",
        "/releases/3 x",
        "/" + "a" * 500,
    ],
)
def test_links_stay_on_the_site(users: Users, database: Database, link: str) -> None:
    users.make("nadia", "contributor_admin")
    with database.session() as s:
        with pytest.raises(BadRequest, match="path on this site"):
            services.notify(s, [accounts.get_user(s, "nadia")], "Look", link=link)
    with pytest.raises(ValueError, match="path on this site"):
        Notice(user_id=1, subject="Look", link=link)  # the model refuses it too
    assert _unread(database, "nadia") == 0


def test_nobody_reads_or_marks_another_users_notice(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor_admin")
    users.make("rosa", "researcher")
    (mine,) = _notify(database, ["nadia"], "Release request 3", link="/releases/3")
    with database.session() as s:
        with pytest.raises(NotFound):
            services.mark_read(s, accounts.get_user(s, "rosa"), mine)
    auth.login("rosa")
    token = csrf_from(client, "/inbox")
    page = client.get("/inbox").get_data(as_text=True)
    assert "Release request 3" not in page and "Your inbox is empty" in page
    resp = client.post(f"/inbox/{mine}/read", data={"csrf_token": token})
    assert resp.status_code == 404
    assert client.post("/inbox/999999/read", data={"csrf_token": token}).status_code == 404
    assert _unread(database, "nadia") == 1  # still unread


def test_the_inbox_page_and_the_badge(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "contributor_admin")
    auth.login("nadia")
    home = client.get("/").get_data(as_text=True)
    assert 'data-testid="inbox-link"' in home and "Inbox (" not in home
    linked, plain = (
        _notify(database, ["nadia"], "Release request 3 to look at", link="/releases/3")[0],
        _notify(database, ["nadia"], "Welcome")[0],
    )
    home = client.get("/").get_data(as_text=True)
    assert "<strong>(2)</strong>" in home and 'aria-label="Inbox, 2 unread"' in home
    page = client.get("/inbox").get_data(as_text=True)
    assert page.index("Welcome") < page.index("Release request 3")  # newest first
    assert "<strong>Welcome</strong>" in page and "<code>/releases/3</code>" in page
    token = csrf_from(client, "/inbox")
    resp = client.post(f"/inbox/{linked}/read", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.location == "/releases/3"
    assert _unread(database, "nadia") == 1
    page = client.get("/inbox").get_data(as_text=True)
    assert "<strong>Release request 3" not in page and "<strong>(1)</strong>" in page
    resp = client.post(f"/inbox/{plain}/read", data={"csrf_token": token})
    assert resp.location == "/inbox"  # nothing to open: back to the inbox
    _notify(database, ["nadia"], "One more")
    _notify(database, ["nadia"], "And another")
    resp = client.post("/inbox/read-all", data={"csrf_token": token}, follow_redirects=True)
    assert "2 notices marked read." in resp.get_data(as_text=True)
    assert _unread(database, "nadia") == 0


def test_inbox_forms_need_the_csrf_token(
    client: FlaskClient, auth: AuthActions, users: Users, database: Database
) -> None:
    users.make("nadia", "researcher")
    (mine,) = _notify(database, ["nadia"], "Decision")
    auth.login("nadia")
    assert client.post(f"/inbox/{mine}/read").status_code == 400
    assert client.post("/inbox/read-all").status_code == 400
    assert _unread(database, "nadia") == 1


def test_anonymous_is_refused(client: FlaskClient, users: Users, database: Database) -> None:
    users.make("nadia", "researcher")
    (mine,) = _notify(database, ["nadia"], "Decision")
    resp = client.get("/inbox")
    assert resp.status_code == 302 and "/login" in resp.location
    assert client.post(f"/inbox/{mine}/read").status_code in (302, 400)
    assert client.get("/api/v1/inbox").status_code == 401
    assert _unread(database, "nadia") == 1


@pytest.mark.parametrize("role", ["steward", "contributor_admin", "contributor", "researcher"])
def test_every_role_has_an_inbox(
    client: FlaskClient, auth: AuthActions, users: Users, role: str
) -> None:
    users.make("nadia", role)
    auth.login("nadia")
    assert client.get("/inbox").status_code == 200


def test_the_api(client: FlaskClient, users: Users, database: Database, settings: Settings) -> None:
    users.make("rosa", "researcher")
    users.make("nadia", "contributor_admin")
    with database.session() as s:
        rosa = accounts.get_user(s, "rosa")
        read = accounts.create_token(s, settings, rosa, "nb", ["read"], actor="t").secret
        sandbox = accounts.create_token(s, settings, rosa, "nb", ["sandbox"], actor="t").secret
    _notify(database, ["rosa"], "Release request 3 approved", link="/releases/3")
    _notify(database, ["rosa"], "Release request 4 rejected", body="Cell too small.")
    _notify(database, ["nadia"], "Not for rosa")
    resp = client.get("/api/v1/inbox", headers={"Authorization": f"Bearer {read}"})
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["unread"] == 2
    assert [n["subject"] for n in body["notices"]] == [
        "Release request 4 rejected",
        "Release request 3 approved",
    ]
    assert body["notices"][1]["link"] == "/releases/3" and body["notices"][0]["read_at"] is None
    assert body["notices"][0]["body"] == "Cell too small."
    limited = client.get("/api/v1/inbox?limit=1", headers={"Authorization": f"Bearer {read}"})
    assert len(limited.get_json()["notices"]) == 1
    bad = client.get("/api/v1/inbox?limit=0", headers={"Authorization": f"Bearer {read}"})
    assert bad.status_code == 400 and bad.get_json()["error"]["code"] == "bad_request"
    resp = client.get("/api/v1/inbox", headers={"Authorization": f"Bearer {sandbox}"})
    assert resp.status_code == 403
    assert resp.get_json()["error"]["code"] == "insufficient_scope"
    assert _unread(database, "rosa") == 2  # listing does not mark read
