"""Who reaches what of a release request, over HTTP: every role x every ``/releases`` and
``/api/v1/releases`` route x every state of the request (in review, approved, released,
rejected). The routes are read from the app's URL map, so a new route without an expectation
here fails; the expectations are written out below, not asked of the app.

Each call is a probe that changes nothing where it is let through (a review without a
comment, an empty objection, an empty revision), so what comes back says whether the caller
reached the decision and why it stopped. The calls that do change something (the author's
revision and withdrawal) run last."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask

from hub.releases import services
from tests.conftest import AuthActions, csrf_from
from tests.unit.hub.conftest import ReleaseWorld

pytestmark = pytest.mark.db

STATES = ("in_review", "approved", "released", "rejected")
OPEN = ("in_review", "approved")

# Who: username, or None for anonymous. The request is rosa's, computed on the data of
# acme-bio, st-aurelia and kelvin.
ROLES = {
    "anonymous": None,
    "researcher": "rosa",  # the author
    "other_researcher": "omar",  # not named in the agreement
    "contributor": "kelvin-data",  # of a contributing institution, not its admin
    "admin": "kelvin-admin",  # of a contributing institution
    "other_admin": "northwind-admin",  # of an institution that contributes nothing
    "checker": "chris",  # a researcher named output checker
    "steward": "sam",
}

# Every route (rule, method) under /releases and /api/v1/releases, by name.
ROUTES = {
    ("/releases", "GET"): "index",
    ("/releases/<int:request_id>", "GET"): "page",
    ("/releases/<int:request_id>/<int:position>.<any(csv,xlsx):fmt>", "GET"): "download",
    ("/releases/<int:request_id>/review", "POST"): "review",
    ("/releases/<int:request_id>/object", "POST"): "object",
    ("/releases/<int:request_id>/objections/<int:objection_id>", "POST"): "resolve",
    ("/releases/<int:request_id>/comment", "POST"): "comment",
    ("/api/v1/releases/<int:request_id>/comments", "POST"): "api_comment",
    ("/releases/new", "GET"): "new_form",
    ("/releases/new", "POST"): "new_submit",
    ("/releases/form.js", "GET"): "form_script",
    ("/releases/releases.css", "GET"): "stylesheet",
    ("/releases/<int:request_id>/revise", "GET"): "revise_form",
    ("/releases/<int:request_id>/revise", "POST"): "revise_submit",
    ("/api/v1/releases", "GET"): "api_list",
    ("/api/v1/releases", "POST"): "api_create",
    ("/api/v1/releases/<int:request_id>", "GET"): "api_show",
    ("/api/v1/releases/<int:request_id>/revise", "POST"): "api_revise",
    ("/api/v1/releases/<int:request_id>/withdraw", "POST"): "api_withdraw",
}
# Announced in docs/releases.md and being built: checked once the app has them.
PENDING = {("/releases/new", "GET"), ("/releases/new", "POST"), ("/releases/form.js", "GET")}
PENDING |= {("/releases/releases.css", "GET")}
PENDING |= {("/releases/<int:request_id>/revise", m) for m in ("GET", "POST")}
MUTATING = ("revise_submit", "api_revise", "api_withdraw")  # run last, the author last

# What comes back, in words:
# - "login": sent to sign in (portal) or 401 (API);
# - a status code: the response's own;
# - "listed" / "unlisted": 200, with the request among those shown or not;
# - "flash <status>": sent back to the request's page with a message: "flash 403" refused
#   the caller, "flash 409" refused the request's state, "flash 400" the (empty) probe
#   itself, i.e. the caller and the state passed.
READERS = ("researcher", "admin", "checker", "steward")  # the request's page


def _by_state(open_: Any, closed: Any) -> dict[str, Any]:
    """One outcome while the request is open (in review, approved), another once closed."""
    return {"in_review": open_, "approved": open_, "released": closed, "rejected": closed}


EXPECTED: dict[str, dict[str, Any]] = {
    "index": {
        "anonymous": "login",
        "researcher": "listed",
        "other_researcher": "unlisted",
        "contributor": 403,
        "admin": "listed",
        "other_admin": "unlisted",
        "checker": "listed",
        "steward": "listed",
    },
    "page": {
        "anonymous": "login",
        **{role: 200 for role in READERS},
        **{role: 403 for role in ("other_researcher", "contributor", "other_admin")},
    },
    # Only released tables leave, to whoever reads the request.
    "download": {
        "anonymous": "login",
        **{role: {**_by_state(403, 403), "released": 200} for role in READERS},
        **{role: 403 for role in ("other_researcher", "contributor", "other_admin")},
    },
    # A reject without its reason: only a checker gets past who and when.
    "review": {
        "anonymous": "login",
        "contributor": 403,
        "checker": {**_by_state("flash 409", "flash 409"), "in_review": "flash 400"},
        **{
            role: "flash 403"
            for role in ("researcher", "other_researcher", "admin", "other_admin", "steward")
        },
    },
    # An empty objection: only the contributing institution's admin, while the request is open.
    "object": {
        "anonymous": "login",
        "contributor": 403,
        "admin": _by_state("flash 400", "flash 409"),
        **{
            role: "flash 403"
            for role in ("researcher", "other_researcher", "other_admin", "checker", "steward")
        },
    },
    # A resolution without a decision, on kelvin's objection (dismissed on the released one).
    "resolve": {
        "anonymous": "login",
        "contributor": 403,
        "steward": {**_by_state("flash 400", "flash 400"), "released": "flash 409"},
        **{
            role: "flash 403"
            for role in ("researcher", "other_researcher", "admin", "other_admin", "checker")
        },
    },
    # An empty comment: whoever takes part in the request gets past who, in every state.
    "comment": {
        "anonymous": "login",
        "contributor": 403,
        **{role: "flash 400" for role in READERS},
        **{role: "flash 403" for role in ("other_researcher", "other_admin")},
    },
    # The portal's form: researchers ask (under an agreement naming them, decided on submit).
    "new_form": {
        "anonymous": "login",
        **{role: 200 for role in ("researcher", "other_researcher", "checker")},
        **{role: 403 for role in ("contributor", "admin", "other_admin", "steward")},
    },
    "new_submit": {  # no agreement chosen: the form again (200), saying so
        "anonymous": "login",
        **{role: 200 for role in ("researcher", "other_researcher", "checker")},
        **{role: 403 for role in ("contributor", "admin", "other_admin", "steward")},
    },
    "form_script": {
        "anonymous": "login",
        **{role: 200 for role in ("researcher", "other_researcher", "checker")},
        **{role: 403 for role in ("contributor", "admin", "other_admin", "steward")},
    },
    "stylesheet": {  # the release pages' styles: whoever reads release requests
        "anonymous": "login",
        "contributor": 403,
        **{role: 200 for role in ROLES if role not in ("anonymous", "contributor")},
    },
    # The author changes an open request; a closed one sends her back to its page.
    "revise_form": {
        "anonymous": "login",
        "researcher": _by_state(200, "flash 409"),
        **{role: 403 for role in ROLES if role not in ("anonymous", "researcher")},
    },
    "revise_submit": {  # an output without its query: the form again (200), saying so
        "anonymous": "login",
        "researcher": _by_state(200, "flash 409"),
        **{role: 403 for role in ROLES if role not in ("anonymous", "researcher")},
    },
    # The API: bearer tokens with the sandbox scope.
    "api_list": {
        "anonymous": "login",
        "researcher": "listed",
        "contributor": 403,
        **{
            role: "unlisted"
            for role in ("other_researcher", "admin", "other_admin", "checker", "steward")
        },
    },
    "api_create": {  # a valid request: only the researcher the agreement names
        "anonymous": "login",
        "researcher": 201,
        **{role: 403 for role in ROLES if role not in ("anonymous", "researcher")},
    },
    "api_show": {
        "anonymous": "login",
        **{role: 200 for role in ("researcher", "checker", "steward")},
        **{role: 403 for role in ("other_researcher", "contributor", "admin", "other_admin")},
    },
    "api_comment": {  # an empty comment: the API's readers get past who
        "anonymous": "login",
        **{role: 400 for role in ("researcher", "checker", "steward")},
        **{role: 403 for role in ("other_researcher", "contributor", "admin", "other_admin")},
    },
    "api_revise": {  # the same outputs again: a new revision of an open request
        "anonymous": "login",
        "researcher": _by_state(200, 409),
        **{role: 403 for role in ROLES if role not in ("anonymous", "researcher")},
    },
    "api_withdraw": {
        "anonymous": "login",
        "researcher": _by_state(200, 409),
        **{role: 403 for role in ROLES if role not in ("anonymous", "researcher")},
    },
}

# The portal's refusals, told apart by what they say (the page shows only the message).
FLASHED = (
    (
        403,
        (
            "nobody reviews their own",
            "only output checkers",
            "only an admin of",
            "steward resolves",
            "only those who take part",
        ),
    ),
    (409, ("not in review", "objections are closed", "not open on this request", "can no longer")),
    (
        400,
        ("say why", "say what the objection is", "resolve an objection as", "write the comment"),
    ),
)


def _flash(messages: list[tuple[str, str]]) -> str:
    assert len(messages) == 1, messages
    category, message = messages[0]
    if category == "info":
        return "flash done"
    for status, words in FLASHED:
        if any(w in message for w in words):
            return f"flash {status}"
    raise AssertionError(f"a message this matrix does not know: {message!r}")


class Caller:
    """One role's portal session and API token."""

    def __init__(self, world: ReleaseWorld, username: str | None) -> None:
        self.world, self.username = world, username
        self.client = world.app.test_client()
        self.headers: dict[str, str] = {}
        if username is None:
            self.csrf = csrf_from(self.client, "/login")
        else:
            AuthActions(self.client).login(username)
            self.csrf = csrf_from(self.client, "/")
            self.headers = world.bearer(username)

    def call(self, route: str, rid: int, objection: int) -> Any:
        c, page = self.client, f"/releases/{rid}"
        api = f"/api/v1/releases/{rid}"
        form = {"csrf_token": self.csrf}
        if route == "index":
            return self._listed(c.get("/releases"), rid)
        if route == "page":
            return self._portal(c.get(page), page)
        if route == "download":
            csv, xlsx = c.get(f"{page}/1.csv"), c.get(f"{page}/1.xlsx")
            assert csv.status_code == xlsx.status_code, (csv.status_code, xlsx.status_code)
            return self._portal(csv, page)
        if route == "review":
            return self._portal(c.post(f"{page}/review", data={**form, "decision": "reject"}), page)
        if route == "object":
            return self._portal(c.post(f"{page}/object", data={**form, "text": " "}), page)
        if route == "resolve":
            resp = c.post(f"{page}/objections/{objection}", data={**form, "resolution": "maybe"})
            return self._portal(resp, page)
        if route == "comment":
            return self._portal(c.post(f"{page}/comment", data={**form, "text": " "}), page)
        if route == "api_comment":
            resp = c.post(f"{api}/comments", json={"text": " "}, headers=self.headers)
            return self._api(resp)
        if route == "new_form":
            return self._portal(c.get("/releases/new"), page)
        if route == "new_submit":
            return self._portal(c.post("/releases/new", data={**form, "title": "x"}), page)
        if route == "form_script":
            return self._portal(c.get("/releases/form.js"), page)
        if route == "stylesheet":
            return self._portal(c.get("/releases/releases.css"), page)
        if route == "revise_form":
            return self._portal(c.get(f"{page}/revise"), page)
        if route == "revise_submit":
            data = {**form, "outputs-1-kind": "query", "outputs-1-purpose": "Table 1"}
            return self._portal(c.post(f"{page}/revise", data=data), page)
        if route == "api_list":
            return self._listed(c.get("/api/v1/releases", headers=self.headers), rid)
        if route == "api_create":
            body = {"agreement": "v2v", "outputs": self.world.outputs[:1]}
            return self._api(c.post("/api/v1/releases", json=body, headers=self.headers))
        if route == "api_show":
            return self._api(c.get(api, headers=self.headers))
        if route == "api_revise":
            body = {"outputs": self.world.outputs}
            return self._api(c.post(f"{api}/revise", json=body, headers=self.headers))
        if route == "api_withdraw":
            return self._api(c.post(f"{api}/withdraw", json={}, headers=self.headers))
        raise AssertionError(route)

    def _portal(self, resp: Any, page: str) -> Any:
        if resp.status_code == 302:
            where = resp.headers["Location"]
            if "/login" in where:
                return "login"
            assert where.endswith(page), where
            with self.client.session_transaction() as session:
                flashes = session.pop("_flashes", [])
            return _flash(flashes)
        return resp.status_code

    def _api(self, resp: Any) -> Any:
        return "login" if resp.status_code == 401 else resp.status_code

    def _listed(self, resp: Any, rid: int) -> Any:
        if resp.status_code != 200:
            return "login" if resp.status_code == 401 else self._portal(resp, "")
        if resp.is_json:
            shown = {r["id"] for r in resp.get_json()["requests"]}
        else:
            shown = {int(x) for x in re.findall(r'data-request="(\d+)"', resp.text)}
        return "listed" if rid in shown else "unlisted"


def _routes(app: Flask) -> set[tuple[str, str]]:
    return {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith(("/releases", "/api/v1/releases"))
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }


def _expected(route: str, role: str, state: str) -> Any:
    found = EXPECTED[route][role]
    return found[state] if isinstance(found, dict) else found


def test_every_role_every_route_every_state(release_world: ReleaseWorld, app: Flask) -> None:
    routes = _routes(app)
    unexpected = routes - set(ROUTES)
    assert unexpected == set(), f"routes without an expectation here: {sorted(unexpected)}"
    assert set(ROUTES) - routes <= PENDING, sorted(set(ROUTES) - routes - PENDING)
    assert set(EXPECTED) == set(ROUTES.values())
    assert all(set(EXPECTED[r]) == set(ROLES) for r in EXPECTED)

    world = release_world
    rids = {state: world.request(state, objection=True) for state in STATES}
    with world.database.session() as s:
        objections = {state: services.get(s, rid).objections[0].id for state, rid in rids.items()}
    callers = {role: Caller(world, name) for role, name in ROLES.items()}
    present = [name for key, name in ROUTES.items() if key in routes]
    order = sorted(
        present, key=lambda r: (r in MUTATING, MUTATING.index(r) if r in MUTATING else 0)
    )
    failures = []
    for route in order:
        for state in STATES:
            for role in sorted(ROLES, key=lambda r: r == "researcher"):  # the author last
                got = callers[role].call(route, rids[state], objections[state])
                wanted = _expected(route, role, state)
                if got != wanted:
                    failures.append(f"{role} {route} {state}: {got!r}, expected {wanted!r}")
    assert failures == []
    with world.database.session() as s:  # the author's last call, on an open request, withdrew it
        assert services.get(s, rids["approved"]).state == "withdrawn"
