"""``/api/v1/sandbox/``: the query gateway mounted by the hub, on released data pooled under
an agreement; policy per table, ledger entries, rate limits, refusals."""

from __future__ import annotations

import json

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.agreements import services
from hub.audit.models import AuditEntry
from hub.db import Database
from hub.gateway.models import PrivacyBudget
from hub.settings import Settings
from tests.conftest import activate_agreement, bearer
from tests.unit.hub.conftest import LOTS, QUERY, SITES, gateway_terms, whole_count

pytestmark = pytest.mark.db

FIT_AND_SYNTHETIC = "disclosure:\n  allow_model_fitting: true\n  allow_synthetic: true\n"


def _ledger(database: Database, prefix: str = "sandbox.") -> list[dict]:
    with database.session() as s:
        entries = s.scalars(
            select(AuditEntry).where(AuditEntry.action.startswith(prefix)).order_by(AuditEntry.id)
        )
        return [{"action": e.action, "actor": e.actor, **json.loads(e.detail)} for e in entries]


def test_named_researcher_gets_controlled_aggregates_and_the_ledger_says_so(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    listed = client.get("/api/v1/sandbox/agreements", headers=rosa).get_json()
    assert [a["agreement"] for a in listed["agreements"]] == ["v2v"]
    tables = client.get("/api/v1/sandbox/tables?agreement=v2v", headers=rosa).get_json()
    columns = {c["name"] for c in tables["tables"][0]["columns"]}
    assert {"platform", "viability", "institution"} <= columns

    resp = client.post(
        "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": QUERY}, headers=rosa
    )
    assert resp.status_code == 200, resp.get_json()
    answer = resp.get_json()
    assert answer["columns"] == ["platform", "n", "mean_viability"]
    # Every key of the public domain is a row (presence says nothing), the missing key too.
    assert [r[0] for r in answer["rows"]] == ["central", "point_of_care", None]
    assert answer["epsilon"] == 1.0 and answer["spent"] == 1.0
    assert answer["budget"]["epsilon_left"] == 19.0
    # Noisy, and a cell may be withheld by the noisy institution rules: all the lots.
    # A withheld cell counts 0; the noise on three cells stays within 12 Laplace scales
    # (a false failure has probability below 1e-4).
    scale = answer["aggregates"][0]["noise_scale"]["n"]
    assert sum(r[1] or 0 for r in answer["rows"]) <= LOTS + 12 * scale
    entry = _ledger(database)[-1]
    assert entry["action"] == "sandbox.query" and entry["actor"].startswith("user:")
    assert entry["sql"] == QUERY and len(entry["result_hash"]) == 64
    assert entry["institutions"] == sorted(SITES) and entry["epsilon"] == 1.0

    # The same question again: the same answer, at no cost (averaging learns nothing).
    again = client.post(
        "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": QUERY}, headers=rosa
    ).get_json()
    assert again["rows"] == answer["rows"] and again["spent"] == 0.0
    assert again["budget"]["epsilon_left"] == 19.0
    assert _ledger(database)[-1]["remembered"] is True
    budget = client.get("/api/v1/sandbox/budget?agreement=v2v", headers=rosa).get_json()
    assert budget["epsilon_spent"] == 1.0 and budget["answers"] == 1
    whole = whole_count(client, rosa)
    assert abs(whole["rows"][0][0] - LOTS) <= 12 * whole["scale"] and whole["rows_per_patient"] == 1


def test_row_level_sql_is_refused_with_the_construct_and_logged(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    for sql, construct in (
        ("SELECT * FROM batch", "SELECT *"),
        ("SELECT viability FROM batch", None),
        ("SELECT MIN(viability) FROM batch", "MIN"),
        ("SELECT COUNT(*) FROM read_parquet('/etc/passwd')", None),
    ):
        resp = client.post(
            "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": sql}, headers=rosa
        )
        assert resp.status_code == 400, (sql, resp.get_json())
        error = resp.get_json()["error"]
        assert error["code"] == "query_rejected"
        if construct:
            assert construct.lower() in error["message"].lower()
    refused = [e for e in _ledger(database) if e["action"] == "sandbox.refused"]
    assert len(refused) == 4 and refused[0]["sql"] == "SELECT * FROM batch"


def test_policy_decides_per_request(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    body = {"agreement": "v2v", "sql": QUERY}
    # Before the agreement is active, nobody may query.
    rosa = bearer(database, settings, "rosa")
    assert client.post("/api/v1/sandbox/query", json=body, headers=rosa).status_code == 403
    activate_agreement(database, gateway_terms())
    assert client.post("/api/v1/sandbox/query", json=body, headers=rosa).status_code == 200
    # A researcher not named in the agreement.
    omar = bearer(database, settings, "omar")
    denied = client.post("/api/v1/sandbox/query", json=body, headers=omar)
    assert denied.status_code == 403 and denied.get_json()["error"]["code"] == "policy_denied"
    # A token without the sandbox scope.
    read_only = bearer(database, settings, "rosa", ("read",))
    resp = client.post("/api/v1/sandbox/query", json=body, headers=read_only)
    assert resp.status_code == 403
    # Synthetic rows and fitting are not allowed by these terms: the researcher is told so
    # (she may query, so the agreement is no secret to her); omar gets the one refusal.
    synthetic = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa)
    error = synthetic.get_json()["error"]
    assert synthetic.status_code == 403 and error["code"] == "not_allowed"
    assert "does not allow synthetic rows" in error["message"]
    assert "allow_synthetic: false" in error["message"]
    other = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=omar).get_json()
    assert other["error"]["code"] == "policy_denied"
    assert other["error"]["message"].startswith("you may not read synthetic rows under")
    fit = {
        "agreement": "v2v",
        "table": "batch",
        "kind": "linear",
        "features": ["culture_days"],
        "target": "viability",
    }
    fitted = client.post("/api/v1/sandbox/fit", json=fit, headers=rosa)
    assert fitted.status_code == 403 and fitted.get_json()["error"]["code"] == "not_allowed"
    assert "does not allow model fits" in fitted.get_json()["error"]["message"]
    # Suspension takes effect on the next request.
    with database.session() as s:
        services.transition(s, services.get(s, "v2v"), "suspend", actor="user:sam")
    assert client.post("/api/v1/sandbox/query", json=body, headers=rosa).status_code == 403


def test_fit_and_synthetic_where_allowed(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    activate_agreement(
        database,
        gateway_terms("disclosure:\n  allow_model_fitting: true\n  allow_synthetic: true\n"),
    )
    rosa = bearer(database, settings, "rosa")
    fit = {
        "agreement": "v2v",
        "table": "batch",
        "kind": "linear",
        "features": ["culture_days"],
        "target": "viability",
    }
    resp = client.post("/api/v1/sandbox/fit", json=fit, headers=rosa)
    assert resp.status_code == 200, resp.get_json()
    summary = resp.get_json()
    # n: three noisy institution counts (scale 5 each); 100 is over 8 standard deviations.
    assert abs(summary["n"] - LOTS) < 100 and set(summary["coefficients"]) >= {"culture_days"}
    assert summary["epsilon"] == 1.0 and summary["budget"]["epsilon_left"] == 19.0
    assert "residuals" not in summary and "predictions" not in summary
    synthetic = client.get("/api/v1/sandbox/synthetic/batch?agreement=v2v", headers=rosa)
    assert synthetic.status_code == 404
    assert synthetic.get_json()["error"]["code"] == "no_synthetic_version"
    # One entry per request: the fit, and the synthetic rows refused (with the reason).
    ledger = _ledger(database)
    assert [e["action"] for e in ledger] == ["sandbox.fit", "sandbox.refused"]
    assert ledger[1]["code"] == "no_synthetic_version" and ledger[1]["status"] == 404


def test_rate_limit_per_researcher(
    client: FlaskClient, database: Database, settings: Settings, pooled, monkeypatch
) -> None:
    activate_agreement(database, gateway_terms())
    monkeypatch.setitem(settings.data, "gateway_rate_per_minute", 2)
    rosa = bearer(database, settings, "rosa")
    body = {"agreement": "v2v", "sql": QUERY}
    codes = [
        client.post("/api/v1/sandbox/query", json=body, headers=rosa).status_code for _ in range(3)
    ]
    assert codes == [200, 200, 429]


def test_malformed_requests_get_clear_errors(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    resp = client.post("/api/v1/sandbox/query", data="not json", headers=rosa)
    assert resp.status_code == 400 and "JSON object" in resp.get_json()["error"]["message"]
    resp = client.post("/api/v1/sandbox/query", json={"agreement": "v2v"}, headers=rosa)
    assert resp.status_code == 400 and "`sql`" in resp.get_json()["error"]["message"]
    resp = client.post(
        "/api/v1/sandbox/query", json={"agreement": "nope", "sql": QUERY}, headers=rosa
    )
    assert resp.status_code == 403


def test_budget_is_debited_and_an_exhausted_budget_is_refused_with_who_can_raise_it(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    activate_agreement(
        database, gateway_terms("disclosure:\n  epsilon_per_answer: 1\n  epsilon_total: 2.5\n")
    )
    rosa = bearer(database, settings, "rosa")
    asked = [
        client.post(
            "/api/v1/sandbox/query",
            json={
                "agreement": "v2v",
                "sql": f"SELECT COUNT(*) FROM batch WHERE culture_days > {d}",
            },
            headers=rosa,
        )
        for d in (5, 6, 7)
    ]
    assert [r.status_code for r in asked] == [200, 200, 403]
    error = asked[2].get_json()["error"]
    assert error["code"] == "budget_exhausted" and "steward" in error["message"]
    # A smaller ε still fits what is left.
    half = client.post(
        "/api/v1/sandbox/query",
        json={"agreement": "v2v", "sql": "SELECT COUNT(*) FROM batch", "epsilon": 0.5},
        headers=rosa,
    )
    assert half.status_code == 200 and half.get_json()["budget"]["epsilon_left"] == 0.0
    too_much = client.post(
        "/api/v1/sandbox/query",
        json={"agreement": "v2v", "sql": "SELECT COUNT(*) FROM batch", "epsilon": 5},
        headers=rosa,
    )
    assert too_much.status_code == 400 and "at most" in too_much.get_json()["error"]["message"]
    debits = [e["epsilon"] for e in _ledger(database) if e["action"] == "sandbox.query"]
    assert debits == [1.0, 1.0, 0.5]


def test_columns_the_agreement_does_not_cover_do_not_exist(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    terms = gateway_terms().replace("batch: all", "batch: [platform, viability, lot_id]")
    assert terms != gateway_terms()
    activate_agreement(database, terms)
    rosa = bearer(database, settings, "rosa")
    tables = client.get("/api/v1/sandbox/tables?agreement=v2v", headers=rosa).get_json()
    columns = {c["name"] for c in tables["tables"][0]["columns"]}
    assert columns == {"platform", "viability", "lot_id", "institution"}
    for sql in (
        "SELECT AVG(culture_days) FROM batch",
        "SELECT COUNT(*) FROM batch WHERE culture_days > 3",
        "SELECT culture_days, COUNT(*) FROM batch GROUP BY 1",
    ):
        resp = client.post(
            "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": sql}, headers=rosa
        )
        assert resp.status_code == 400, (sql, resp.get_json())
        assert "culture_days" in resp.get_json()["error"]["message"]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT platform, COUNT(*) FROM batch GROUP BY 1.5",
        "SELECT platform, COUNT(*) FROM batch GROUP BY 1 ORDER BY 1.5",
        "SELECT 1, 2 FROM batch",
        "SELECT COUNT(*), CAST(b AS VARCHAR) FROM batch b",
        "SELECT SUM(CAST(b AS VARCHAR)) FROM batch b",
        "SELECT COUNT(b) FROM batch b",
    ],
)
def test_malformed_queries_get_a_400_naming_the_construct(
    client: FlaskClient, database: Database, settings: Settings, pooled, sql: str
) -> None:
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    resp = client.post("/api/v1/sandbox/query", json={"agreement": "v2v", "sql": sql}, headers=rosa)
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]["code"] == "query_rejected"


def test_concurrent_debits_never_overspend(
    database: Database, settings: Settings, pooled, app
) -> None:
    """Twelve requests at once against a budget of five answers: exactly five are paid for,
    whatever the interleaving (one conditional UPDATE per debit), on SQLite and PostgreSQL."""
    import threading

    from hub.gateway import services as gateway_services

    activate_agreement(
        database, gateway_terms("disclosure:\n  epsilon_per_answer: 1\n  epsilon_total: 5\n")
    )
    policy = app.extensions["cleanroom.policy"]
    policy.refresh()
    with database.session() as s:
        scope = gateway_services.scope(
            s,
            policy,
            settings,
            app.extensions["cleanroom.storage"],
            accounts.get_user(s, "rosa"),
            "v2v",
            action="query",
        )
    outcomes: list[str] = []
    start = threading.Barrier(12)

    def ask() -> None:
        # Released together; each then takes a connection of the pool as it frees up.
        start.wait()
        try:
            with database.session() as s:
                user = accounts.get_user(s, "rosa")
                try:
                    gateway_services.debit(s, user, scope, 1.0)
                    s.commit()
                    outcomes.append("paid")
                except gateway_services.BudgetExhausted:
                    s.rollback()
                    outcomes.append("refused")
        except Exception as error:  # a lost race must be a refusal, never a crash
            outcomes.append(f"error: {error!r}")

    threads = [threading.Thread(target=ask) for _ in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["paid"] * 5 + ["refused"] * 7, outcomes
    with database.session() as s:
        user = accounts.get_user(s, "rosa")
        row = s.scalar(select(PrivacyBudget).where(PrivacyBudget.user_id == user.id))
        assert row is not None and row.spent == 5.0 and row.answers == 5


def test_no_lock_is_held_while_an_answer_is_computed(
    client: FlaskClient, database: Database, settings: Settings, pooled, monkeypatch
) -> None:
    """Another request can write (sign in, upload, debit its own budget) while a long query
    runs: the gateway's reads are committed before the answer is computed."""
    from sqlalchemy.orm import Session

    from hub.audit.services import record
    from sandbox.gateway import dp

    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    answer = dp.answer
    written: list[str] = []

    def slow_answer(*args, **kwargs):
        with Session(database.engine) as other:
            record(other, actor="user:other", action="test.meanwhile")
            other.commit()
            written.append("meanwhile")
        return answer(*args, **kwargs)

    monkeypatch.setattr(dp, "answer", slow_answer)
    resp = client.post(
        "/api/v1/sandbox/query", json={"agreement": "v2v", "sql": QUERY}, headers=rosa
    )
    assert resp.status_code == 200, resp.get_json()
    assert written == ["meanwhile"]
    actions = [e["action"] for e in _ledger(database, "")]
    assert actions.index("test.meanwhile") < actions.index("sandbox.query")


def test_every_sandbox_request_leaves_exactly_one_ledger_entry(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    """Answered, read or refused (by the token's scope, the policy, a malformed body): one
    entry each, naming the caller and the token; no separate ``token.use`` entry."""
    activate_agreement(database, gateway_terms())
    rosa = bearer(database, settings, "rosa")
    upload_only = bearer(database, settings, "rosa", ("upload",))
    omar = bearer(database, settings, "omar")
    lookup = rosa["Authorization"].split("_")[1]
    requests = [
        (client.get, "/api/v1/sandbox/agreements", {}, rosa, 200),
        (client.get, "/api/v1/sandbox/tables?agreement=v2v", {}, rosa, 200),
        (client.get, "/api/v1/sandbox/budget?agreement=v2v", {}, rosa, 200),
        (
            client.post,
            "/api/v1/sandbox/query",
            {"json": {"agreement": "v2v", "sql": QUERY}},
            rosa,
            200,
        ),
        (client.post, "/api/v1/sandbox/query", {"json": {"agreement": "v2v"}}, rosa, 400),
        (client.get, "/api/v1/sandbox/tables?agreement=v2v", {}, upload_only, 403),
        (client.get, "/api/v1/sandbox/tables?agreement=v2v", {}, omar, 403),
    ]
    for method, path, options, headers, status in requests:
        assert method(path, headers=headers, **options).status_code == status, path
    with database.session() as s:
        actions = s.scalars(select(AuditEntry.action).order_by(AuditEntry.id)).all()
    assert "token.use" not in actions
    ledger = _ledger(database)
    assert [e["action"] for e in ledger] == [
        "sandbox.agreements",
        "sandbox.tables",
        "sandbox.budget",
        "sandbox.query",
        "sandbox.refused",
        "sandbox.refused",
        "sandbox.refused",
    ]
    assert [e["actor"] for e in ledger] == ["user:rosa"] * 6 + ["user:omar"]
    assert all(e["token"] == lookup for e in ledger[:5])
    assert ledger[4]["status"] == 400 and "sql" in ledger[4]["reason"]
    assert ledger[5]["code"] == "insufficient_scope"
    assert ledger[6]["code"] == "policy_denied"
    # Other APIs still record each token's use.
    assert client.get("/api/v1/me", headers=rosa).status_code in (200, 403)
    with database.session() as s:
        assert "token.use" in s.scalars(select(AuditEntry.action)).all()


def test_an_unknown_agreement_is_refused_like_a_forbidden_one(
    client: FlaskClient, database: Database, settings: Settings, pooled
) -> None:
    """Every sandbox route answers a slug that names no agreement exactly as it answers an
    agreement the caller may not use (same status, code and words; only the slug differs),
    so a refusal never tells whether an agreement exists."""
    activate_agreement(
        database,
        gateway_terms("disclosure:\n  allow_model_fitting: true\n  allow_synthetic: true\n"),
    )
    omar = bearer(database, settings, "omar")  # a researcher the agreement does not name

    def answer(slug: str) -> list[tuple[int, dict]]:
        fit = {"table": "batch", "kind": "linear", "features": ["culture_days"]}
        answers = [
            client.get(f"/api/v1/sandbox/tables?agreement={slug}", headers=omar),
            client.get(f"/api/v1/sandbox/budget?agreement={slug}", headers=omar),
            client.get(f"/api/v1/sandbox/synthetic/batch?agreement={slug}", headers=omar),
            client.post(
                "/api/v1/sandbox/query", json={"agreement": slug, "sql": QUERY}, headers=omar
            ),
            client.post(
                "/api/v1/sandbox/fit",
                json={"agreement": slug, "target": "viability", **fit},
                headers=omar,
            ),
        ]
        return [
            (r.status_code, json.loads(r.get_data(as_text=True).replace(slug, "SLUG")))
            for r in answers
        ]

    forbidden, unknown = answer("v2v"), answer("no-such-agreement")
    assert forbidden == unknown
    assert {status for status, _body in forbidden} == {403}
    assert {body["error"]["code"] for _status, body in forbidden} == {"policy_denied"}
    # A named researcher gets the same words for a slug that names nothing.
    rosa = bearer(database, settings, "rosa")
    resp = client.get("/api/v1/sandbox/tables?agreement=no-such-agreement", headers=rosa)
    assert (
        json.loads(resp.get_data(as_text=True).replace("no-such-agreement", "SLUG"))
        == (forbidden[0][1])
    )
