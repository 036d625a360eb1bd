"""Nothing exact leaves Cleanroom except through a released request (``docs/releases.md``).

The exact numbers of a request (each table's counts, rounded and not, and means; the fit's
coefficients, standard errors and R²) are recomputed here with pandas and numpy from the
pool's Parquet files, never read from the hub. For a request in every state before release
(in review, reviewed, revised, approved, approved past its window with an objection open,
rejected, rejected by an upheld objection, withdrawn), everything the researcher can reach is
fetched (the API's request and list, the portal's pages and downloads, every other page and
API without a path parameter, the researcher client over HTTP) and none of the numbers may be
in any of it. The control: once a request is released, the same scan finds them."""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openpyxl import load_workbook

from hub.accounts import services as accounts
from hub.db import utcnow
from hub.releases import services
from sandbox import Client, PolicyDenied
from tests.conftest import AuthActions
from tests.unit.hub.conftest import ReleaseWorld

pytestmark = pytest.mark.db

POSITIONS = (1, 2, 3, 4)  # the request's three outputs, and one it does not have


# The truth, from the pool's files --------------------------------------------------------


@dataclass
class Secret:
    """One exact number and the patterns that find it written out."""

    what: str
    patterns: list[re.Pattern[str]] = field(default_factory=list)
    released: bool = True  # False: evidence for the checkers only, never released

    def found_in(self, text: str) -> bool:
        return any(p.search(text) for p in self.patterns)


def _count(what: str, n: int, *, released: bool = True) -> Secret:
    assert n >= 1000, f"{what}: {n} is too short to search for"  # four digits at least
    return Secret(what, [re.compile(rf"(?<![\w.]){n}(?!\d)")], released)


def _real(what: str, value: float) -> Secret:
    """A real number written to three or four significant digits, rounded or cut (the page's
    ``%.4g``, a prefix of JSON's full digits or of a CSV cell's)."""
    magnitude = abs(value)
    digits = f"{magnitude:.10g}"
    forms = {f"{magnitude:.4g}", f"{magnitude:.3f}", f"{magnitude:.2f}"}
    # Cut after four significant digits: a prefix of every longer rendering.
    significant = 0
    for i, char in enumerate(digits):
        if char.isdigit() and (significant or char != "0"):
            significant += 1
        if significant == 4:
            forms.add(digits[: i + 1])
            break
    patterns = []
    for form in sorted(forms):
        if sum(c.isdigit() for c in form.lstrip("0.")) < 3 or "." not in form:
            continue  # too short to tell from chance
        patterns.append(re.compile(rf"(?<![\d.]){re.escape(form)}"))
    assert patterns, f"{what}: {value!r} has no searchable form"
    return Secret(what, patterns)


def secrets(pool: pd.DataFrame) -> dict[int, list[Secret]]:
    """Per output position, its exact numbers: recomputed from the pool, independently of
    the hub (counts as the exact rules round them to 5, and as they are)."""
    found: dict[int, list[Secret]] = {1: [], 2: [], 3: []}
    for position, key, value in (
        (1, "platform", "viability"),
        (2, "manufacturing_outcome", "culture_days"),
    ):
        for group, rows in pool.groupby(key):
            n = len(rows)
            found[position] += [
                _count(f"{group}: n rounded", 5 * round(n / 5)),
                _count(f"{group}: n", n, released=n % 5 == 0),
                _real(f"{group}: mean {value}", float(rows[value].mean())),
            ]
    x = pool.culture_days.to_numpy(dtype=float)
    y = pool.viability.to_numpy(dtype=float)
    design = np.column_stack([np.ones_like(x), x])
    beta, *_ = np.linalg.lstsq(design, y, rcond=None)
    residuals = y - design @ beta
    sigma2 = residuals @ residuals / (len(y) - 2)
    errors = np.sqrt(np.diag(sigma2 * np.linalg.inv(design.T @ design)))
    r2 = 1 - residuals @ residuals / ((y - y.mean()) @ (y - y.mean()))
    found[3] = [
        _real("intercept", beta[0]),
        _real("slope", beta[1]),
        _real("intercept's standard error", errors[0]),
        _real("slope's standard error", errors[1]),
        _real("R²", r2),
    ]
    return found


# What the researcher reaches -------------------------------------------------------------


def _parameterless_gets(app: Flask) -> list[str]:
    """Every GET route without a path parameter, but the login's and the static files."""
    return sorted(
        {
            rule.rule
            for rule in app.url_map.iter_rules()
            if "GET" in rule.methods
            and not rule.arguments
            and rule.endpoint not in ("static", "auth.login", "health.healthz")
        }
    )


class Researcher:
    """Rosa's ways to her request: a portal session, a bearer token, the client."""

    def __init__(self, world: ReleaseWorld, url: str) -> None:
        self.app = world.app
        self.portal = world.app.test_client()
        AuthActions(self.portal).login("rosa")
        self.headers = world.bearer("rosa")
        self.client = Client(url, self.headers["Authorization"].removeprefix("Bearer "))
        self.failures: list[str] = []

    def _fetch(self, client: FlaskClient, path: str, **kw: object) -> tuple[str, str]:
        resp = client.get(path, **kw)
        if resp.status_code >= 500:
            self.failures.append(f"GET {path}: {resp.status_code}")
        if path.endswith(".xlsx") and resp.status_code == 200:
            sheet = load_workbook(io.BytesIO(resp.data)).active
            assert sheet is not None
            text = "\n".join(
                ",".join("" if c.value is None else str(c.value) for c in row)
                for row in sheet.iter_rows()
            )
            return f"GET {path}", text
        return f"GET {path} ({resp.status_code})", resp.get_data(as_text=True)

    def everything(self, request_ids: list[int]) -> dict[str, str]:
        """Every response rosa can get about her requests, by where it came from."""
        bodies: dict[str, str] = {}
        api = [p for p in _parameterless_gets(self.app) if p.startswith("/api/")]
        for path in _parameterless_gets(self.app):
            where, body = self._fetch(self.portal, path)
            bodies[where] = body
        for path in api:
            where, body = self._fetch(self.portal, path, headers=self.headers)
            bodies[f"{where} with token"] = body
        for rid in request_ids:
            paths = [f"/releases/{rid}", f"/releases/{rid}/revise"]
            paths += [f"/releases/{rid}/{p}.{fmt}" for p in POSITIONS for fmt in ("csv", "xlsx")]
            for path in paths:
                where, body = self._fetch(self.portal, path)
                bodies[where] = body
            where, body = self._fetch(self.portal, f"/api/v1/releases/{rid}", headers=self.headers)
            bodies[where] = body
            try:
                released = self.client.released(rid)
            except PolicyDenied as err:
                bodies[f"client released({rid})"] = err.message
            else:
                bodies[f"client released({rid})"] = "\n".join(
                    o.to_csv() if isinstance(o, pd.DataFrame) else json.dumps(o) for o in released
                )
        bodies["client releases()"] = self.client.releases().to_csv()
        return bodies


def _leaks(bodies: dict[str, str], found: dict[int, list[Secret]]) -> list[str]:
    return [
        f"{where}: output {position}, {secret.what}"
        for where, body in bodies.items()
        for position, numbers in found.items()
        for secret in numbers
        if secret.found_in(body)
    ]


# Requests in every state before release ---------------------------------------------------


def _before_release(world: ReleaseWorld) -> dict[str, int]:
    """One request of rosa's in each state before release, by name."""
    db, settings = world.database, world.settings
    made = {
        "in review": world.request("in_review"),
        "approved": world.request("approved"),
        "rejected by a checker": world.request("rejected"),
    }
    made["reviewed once, objection open"] = rid = world.request("in_review", objection=True)
    with db.session() as s:
        services.review(s, settings, services.get(s, rid), accounts.get_user(s, "chris"), "approve")
    made["revised after a review"] = rid = world.request("in_review")
    with db.session() as s:
        services.review(s, settings, services.get(s, rid), accounts.get_user(s, "chris"), "approve")
    resp = world.app.test_client().post(
        f"/api/v1/releases/{rid}/revise",
        json={"outputs": world.outputs},
        headers=world.rosa,
    )
    assert resp.status_code == 200, resp.get_json()
    made["approved, window over, objection open"] = rid = world.request("approved", objection=True)
    with db.session() as s:
        services.get(s, rid).window_ends_at = utcnow() - timedelta(days=1)
    made["rejected by an upheld objection"] = rid = world.request("in_review", objection=True)
    with db.session() as s:
        found = services.get(s, rid)
        services.resolve(
            s, found, found.objections[0], accounts.get_user(s, "sam"), "upheld", "Too fine."
        )
    made["withdrawn after approval"] = rid = world.request("approved")
    resp = world.app.test_client().post(
        f"/api/v1/releases/{rid}/withdraw", json={"reason": "Changed plan."}, headers=world.rosa
    )
    assert resp.status_code == 200, resp.get_json()
    return made


@pytest.mark.parametrize("rosa_checks", [False, True], ids=["researcher", "researcher+checker"])
def test_nothing_exact_reaches_the_researcher_before_release(
    release_world: ReleaseWorld, served: str, rosa_checks: bool
) -> None:
    """Also when the researcher is an output checker herself (she reviews others' requests,
    never her own)."""
    world = release_world
    if rosa_checks:
        with world.database.session() as s:
            accounts.get_user(s, "rosa").is_output_checker = True
    found = secrets(world.pool())
    made = _before_release(world)
    with world.database.session() as s:  # each as named, kept so by the reads
        states = {name: services.get(s, rid).state for name, rid in made.items()}
    rosa = Researcher(world, served)
    bodies = rosa.everything(list(made.values()))
    for rid in made.values():  # she did reach them: the scan read her pages, not a refusal
        assert f"GET /releases/{rid} (200)" in bodies
        assert f"GET /api/v1/releases/{rid} (200)" in bodies
    assert _leaks(bodies, found) == []
    assert rosa.failures == []
    with world.database.session() as s:  # reading changed no state
        assert {name: services.get(s, rid).state for name, rid in made.items()} == states
    assert states["approved, window over, objection open"] == "approved"

    # The control: released, the same scan finds every number, by every way out.
    rid = made["in review"]
    with world.database.session() as s:
        request = services.get(s, rid)
        for name in ("chris", "olga"):
            services.review(s, world.settings, request, accounts.get_user(s, name), "approve")
        assert services.settle(s, request, request.window_ends_at + timedelta(seconds=1))
    after = rosa.everything([rid])
    assert rosa.failures == []
    for where, positions in (
        (f"GET /api/v1/releases/{rid} (200)", (1, 2, 3)),
        ("GET /api/v1/releases (200) with token", (1, 2, 3)),
        (f"client released({rid})", (1, 2, 3)),
        (f"GET /releases/{rid} (200)", (1, 2, 3)),
        (f"GET /releases/{rid}/1.csv (200)", (1,)),
        (f"GET /releases/{rid}/2.csv (200)", (2,)),
        (f"GET /releases/{rid}/1.xlsx", (1,)),
        (f"GET /releases/{rid}/2.xlsx", (2,)),
    ):
        missed = [
            f"output {p}, {s.what}"
            for p in positions
            for s in found[p]
            if s.released
            and not s.found_in(after[where])
            # The page shows the coefficients and their standard errors, not the metrics.
            and not (s.what == "R²" and where.startswith("GET /releases/"))
        ]
        assert missed == [], (where, missed)
