"""Agreements in the hub: services, rules in step with the database, CLI, pages and API."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from flask.testing import FlaskClient
from sqlalchemy import func, select

from hub.accounts import services as accounts
from hub.agreements import services
from hub.agreements.models import AgreementRecord
from hub.audit.models import AuditEntry
from hub.cli import cli
from hub.db import Database
from hub.errors import Conflict, Forbidden
from hub.ingest.models import DatasetVersion
from hub.settings import Settings
from policies import store
from policies.store import SyncedPolicy
from tests.conftest import AuthActions, Users, csrf_from
from tests.unit.hub.conftest import AgreementWorld, agreement_terms

pytestmark = pytest.mark.db


@pytest.fixture
def world(users: Users, database: Database) -> AgreementWorld:
    return AgreementWorld(users, database)


# Services ---------------------------------------------------------------------------------


def test_lifecycle_compiles_rules_and_records_every_step(world: AgreementWorld) -> None:
    slug = world.create()
    rosa = f"user:{world.ids['rosa']}"
    assert not any(r[0] == "g" and r[1] == rosa for r in world.rules(slug))  # draft: no data
    world.move(slug, "submit")
    acme = f"user:{world.ids['acme-admin']}"
    assert ("g", acme, "role:party_admin", "agreement:mfp") in world.rules(slug)
    assert world.sign(slug, "acme-admin") == "awaiting_signatures"
    assert world.sign(slug, "aurelia-admin") == "active"
    rules = world.rules(slug)
    assert ("g", rosa, "role:researcher", "agreement:mfp") in rules
    assert any(r[3] == "data/batch/viability" for r in rules if r[0] == "p")
    assert not any(r[3] == "data/batch/coi_id" for r in rules if r[0] == "p")
    world.move(slug, "suspend")
    assert not any(r[0] == "g" and r[1] == rosa for r in world.rules(slug))
    world.move(slug, "resume")
    world.move(slug, "terminate")
    assert not any(r[0] == "g" and r[1] == rosa for r in world.rules(slug))
    with world.database.session() as s:
        actions = s.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.target == "agreement:mfp")
            .order_by(AuditEntry.id)
        ).all()
    assert actions == [
        "agreement.create",
        "agreement.submit",
        "agreement.sign",
        "agreement.sign",
        "agreement.activate",
        "agreement.suspend",
        "agreement.resume",
        "agreement.terminate",
    ]


def test_only_a_party_admin_signs(world: AgreementWorld) -> None:
    slug = world.create()
    with pytest.raises(Conflict, match="only an agreement awaiting signatures"):
        world.sign(slug, "acme-admin")
    world.move(slug, "submit")
    for who, message in (
        ("kelvin-admin", "not a party"),
        ("aurelia-data", "contributor admin"),
        ("sam", "contributor admin"),
    ):
        with pytest.raises(Forbidden, match=message):
            world.sign(slug, who)
    world.sign(slug, "acme-admin")
    with pytest.raises(Conflict, match="already signed"):
        world.sign(slug, "acme-admin")


def test_revise_drops_signatures(world: AgreementWorld) -> None:
    slug = world.create()
    world.move(slug, "submit")
    world.sign(slug, "acme-admin")
    world.move(slug, "revise")
    with world.database.session() as s:
        stored = services.get(s, slug)
        assert stored.state == "draft" and stored.signatures == []
        services.update_draft(
            s, stored, agreement_terms(extra="description: now with a description\n"), actor="t"
        )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (agreement_terms(extra="colour: blue\n"), "unknown key(s) `colour`"),
        (agreement_terms().replace("acme-bio", "nowhere-inc"), "no institution `nowhere-inc`"),
        (agreement_terms(researchers="[nobody]"), "nobody: no such user"),
        (
            agreement_terms(researchers="[omar]"),
            "omar: belongs to kelvin, not to a recipient party",
        ),
        (agreement_terms(researchers="[aurelia-data]"), "is a contributor, not a researcher"),
        (
            agreement_terms(extra="disclosure:\n  k: 3\n"),
            "`disclosure.k` is 3; the steward's floor is 10",
        ),
        (
            agreement_terms().replace("batch: [lot_id, viability]", "batch: [lot_id, shoe_size]"),
            "no column `shoe_size`",
        ),
        ("mfp.yaml", "the file must be a mapping"),
        ("", "paste the agreement's YAML"),
    ],
)
def test_yaml_errors_say_what_to_fix(world: AgreementWorld, text: str, message: str) -> None:
    with pytest.raises(services.InvalidAgreement) as err, world.database.session() as s:
        services.create(s, text, actor="t")
    assert message in err.value.message
    with world.database.session() as s:
        assert s.scalar(select(func.count()).select_from(AgreementRecord)) == 0


def test_apply_is_idempotent(world: AgreementWorld) -> None:
    def apply(text: str, **kw: bool) -> str:
        with world.database.session() as s:
            return services.apply(s, text, actor="cli", **kw)[1]

    def entries() -> int:
        with world.database.session() as s:
            return int(s.scalar(select(func.count()).select_from(AuditEntry)) or 0)

    assert apply(agreement_terms()) == "created"
    before, version = entries(), store.get_version(world.database.engine)
    assert apply(agreement_terms()) == "unchanged"
    assert entries() == before and store.get_version(world.database.engine) == version
    assert apply(agreement_terms(valid_until="2098-12-31")) == "updated"
    assert apply(agreement_terms(valid_until="2098-12-31"), submit=True) == "submitted"
    assert apply(agreement_terms(valid_until="2098-12-31"), submit=True) == "unchanged"
    with pytest.raises(Conflict, match="revise"):
        apply(agreement_terms())


def test_pool_has_released_versions_of_signing_contributors_only(world: AgreementWorld) -> None:
    with world.database.session() as s:
        inst = {u: accounts.get_institution(s, u).id for u in ("acme-bio", "st-aurelia")}
        for n, (slug, state, key) in enumerate(
            [
                ("acme-bio", "released", "pool/batch/acme/1"),
                ("st-aurelia", "released", "pool/batch/aurelia/1"),
                ("st-aurelia", "withdrawn", ""),
                ("st-aurelia", "awaiting_review", ""),
            ]
        ):
            s.add(
                DatasetVersion(
                    institution_id=inst[slug],
                    cdm_table="batch",
                    version=n + 1,
                    state=state,
                    filename="b.csv",
                    created_by="t",
                    pool_key=key,
                )
            )
    slug = world.create()
    world.move(slug, "submit")
    world.sign(slug, "aurelia-admin")

    def pool(table: str = "batch") -> list[str]:
        with world.database.session() as s:
            return [v.pool_key for v in services.pool_versions(s, services.get(s, slug), table)]

    assert pool() == []  # awaiting: nothing is pooled yet
    world.sign(slug, "acme-admin")
    assert pool() == ["pool/batch/acme/1", "pool/batch/aurelia/1"]
    assert pool("release_test") == []  # not covered
    world.move(slug, "suspend")
    assert pool() == []


def test_may_query_follows_state_expiry_and_the_named_researcher(world: AgreementWorld) -> None:
    a = world.active()
    b = world.active(agreement_terms("other", researchers="[]"))
    policy = world.policy()
    rosa, omar = world.user("rosa"), world.user("omar")
    assert services.may_query(policy, rosa, a, "batch")
    assert services.may_query(policy, rosa, a, "batch", "viability")
    assert not services.may_query(policy, rosa, a, "batch", "coi_id")  # column not covered
    assert not services.may_query(policy, rosa, a, "batch", action="synthetic")
    assert not services.may_query(policy, rosa, b, "batch")  # named in a, not in b
    assert not services.may_query(policy, omar, a, "batch")
    # Expiry at enforce time: the same rules, a clock past valid_until.
    later = SyncedPolicy(
        world.database.engine, clock=lambda: datetime(2100, 1, 1, tzinfo=UTC).timestamp()
    )
    assert not services.may_query(later, rosa, a, "batch")
    world.move(a, "suspend")
    assert not services.may_query(policy, rosa, a, "batch")
    policy.close()
    later.close()


def test_moving_users_recompiles_their_rights(world: AgreementWorld) -> None:
    slug = world.active()
    policy = world.policy()
    assert services.may_query(policy, world.user("rosa"), slug, "batch")
    admin = f"user:{world.ids['aurelia-admin']}"
    assert ("g", admin, "role:party_admin", f"agreement:{slug}") in world.rules(slug)
    with world.database.session() as s:
        accounts.change_user(
            s,
            accounts.get_user(s, "rosa"),
            role="researcher",
            institution="acme-bio",
            actor="user:sam",
        )
        accounts.change_user(
            s,
            accounts.get_user(s, "aurelia-admin"),
            role="contributor_admin",
            institution="kelvin",
            actor="user:sam",
        )
    assert not services.may_query(policy, world.user("rosa"), slug, "batch")
    assert ("g", admin, "role:party_admin", f"agreement:{slug}") not in world.rules(slug)
    with world.database.session() as s:  # back to a recipient: access again
        accounts.change_user(
            s,
            accounts.get_user(s, "rosa"),
            role="researcher",
            institution="st-aurelia",
            actor="user:sam",
        )
    assert services.may_query(policy, world.user("rosa"), slug, "batch")
    with world.database.session() as s:
        accounts.set_active(s, accounts.get_user(s, "rosa"), False, actor="user:sam")
    assert not services.may_query(policy, world.user("rosa"), slug, "batch")
    policy.close()


# CLI --------------------------------------------------------------------------------------


def test_cli_apply_twice_changes_nothing(
    world: AgreementWorld, runner: CliRunner, tmp_path
) -> None:
    path = tmp_path / "mfp.yaml"
    path.write_text(agreement_terms())
    first = runner.invoke(cli, ["agreement", "apply", str(path), "--submit"])
    assert first.exit_code == 0, first.output
    assert "agreement mfp created and submitted (awaiting_signatures)" in first.output
    again = runner.invoke(cli, ["agreement", "apply", str(path), "--submit"])
    assert again.exit_code == 0 and "unchanged" in again.output
    listing = runner.invoke(cli, ["agreement", "list"])
    assert "mfp" in listing.output and "awaiting_signatures" in listing.output
    world.sign("mfp", "acme-admin")
    world.sign("mfp", "aurelia-admin")
    shown = runner.invoke(cli, ["agreement", "show", "mfp"])
    assert "state: active" in shown.output and "role:researcher" in shown.output
    suspended = runner.invoke(cli, ["agreement", "suspend", "mfp"])
    assert "it is now suspended" in suspended.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(agreement_terms(extra="disclosure:\n  k: 2\n"))
    refused = runner.invoke(cli, ["agreement", "apply", str(bad)])
    assert refused.exit_code == 1
    assert f"{bad}: agreement `mfp`: `disclosure.k` is 2" in refused.output
    wrong = runner.invoke(cli, ["agreement", "resume", "nope"])
    assert wrong.exit_code == 1 and "no agreement 'nope'" in wrong.output


# Pages and API ----------------------------------------------------------------------------


def _token(world: AgreementWorld, settings: Settings, username: str) -> dict[str, str]:
    with world.database.session() as s:
        secret = accounts.create_token(
            s, settings, accounts.get_user(s, username), "t", ["read"], actor="t"
        ).secret
    return {"Authorization": f"Bearer {secret}"}


def test_steward_creates_and_moves_an_agreement_in_the_portal(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login("sam")
    page = client.get("/admin/agreements?template=process_comparability")
    assert "pc-example" in page.get_data(as_text=True)
    token = csrf_from(client, "/admin/agreements")
    bad = client.post(
        "/admin/agreements",
        data={"terms": agreement_terms(researchers="[omar]"), "csrf_token": token},
    )
    body = bad.get_data(as_text=True)
    assert bad.status_code == 400
    assert "not to a recipient party" in body and "researchers: [omar]" in body  # input kept
    made = client.post("/admin/agreements", data={"terms": agreement_terms(), "csrf_token": token})
    assert made.status_code == 302 and made.location.endswith("/admin/agreements/mfp")
    edited = client.post(
        "/admin/agreements/mfp",
        data={"terms": agreement_terms(valid_until="2098-01-01"), "csrf_token": token},
        follow_redirects=True,
    )
    assert "Draft saved." in edited.get_data(as_text=True)
    client.post("/admin/agreements/mfp/submit", data={"csrf_token": token})
    shown = client.get("/admin/agreements/mfp").get_data(as_text=True)
    assert "awaiting signatures" in shown and "role:party_admin" in shown
    refused = client.post(
        "/admin/agreements/mfp/activate", data={"csrf_token": token}, follow_redirects=True
    )
    # In words on the page: no code quotes, no repeated "agreement `mfp`:" prefix.
    said = refused.get_data(as_text=True)
    assert "waiting for the signature of ‘acme-bio’, ‘st-aurelia’" in said
    assert "agreement ‘mfp’: agreement" not in said and "`" not in said


def test_party_admins_sign_in_the_portal_and_the_researcher_gains_access(
    world: AgreementWorld, app, client: FlaskClient, auth: AuthActions, settings: Settings
) -> None:
    slug = world.create()
    world.move(slug, "submit")
    rosa = _token(world, settings, "rosa")
    assert client.get(f"/api/v1/agreements/{slug}", headers=rosa).status_code == 403
    for admin in ("acme-admin", "aurelia-admin"):
        auth.login(admin)
        listing = client.get("/agreements").get_data(as_text=True)
        assert "awaiting your signature" in listing
        token = csrf_from(client, f"/agreements/{slug}")
        client.post(f"/agreements/{slug}/sign", data={"csrf_token": token})
        auth.logout()
    resp = client.get(f"/api/v1/agreements/{slug}", headers=rosa)
    assert resp.status_code == 200
    assert resp.get_json()["state"] == "active"
    assert resp.get_json()["tables"] == {"batch": ["lot_id", "viability"], "collection": "all"}
    assert [
        a["id"] for a in client.get("/api/v1/agreements", headers=rosa).get_json()["agreements"]
    ] == [slug]
    auth.login("rosa")
    assert 'data-agreement="mfp"' in client.get("/agreements").get_data(as_text=True)
    assert (
        client.post(
            f"/agreements/{slug}/sign", data={"csrf_token": csrf_from(client, "/agreements")}
        ).status_code
        == 403
    )


def test_explorer_shows_who_reaches_what(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    world.active()
    auth.login("sam")
    by_user = client.get("/admin/access?user=rosa").get_data(as_text=True)
    assert "data/batch/viability" in by_user and "mfp" in by_user
    by_table = client.get("/admin/access?table=batch").get_data(as_text=True)
    assert "rosa" in by_table and "omar" not in by_table.split("holders")[1]
    nobody = client.get("/admin/access?table=deviation").get_data(as_text=True)
    assert "Nobody reaches deviation" in nobody


def test_contributor_sees_agreements_with_its_data_queries_and_budget_spent(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions
) -> None:
    from hub.accounts import services as accounts
    from hub.agreements import services as agreement_services
    from hub.audit.services import record
    from hub.gateway.models import PrivacyBudget
    from hub.gateway.services import budget_period

    slug = world.active()
    auth.login("aurelia-data")
    page = client.get("/institution/data").get_data(as_text=True)
    assert f'title="{slug}"' in page or f"<code>{slug}</code>" in page
    assert "Nobody has used our data yet" in page
    assert "No researcher has spent any of this agreement" in page
    with world.database.session() as s:
        record(
            s,
            actor="user:rosa",
            action="sandbox.query",
            target=f"agreement:{slug}",
            detail={"institutions": ["st-aurelia"], "epsilon": 0.5},
        )
        record(
            s,
            actor="user:rosa",
            action="sandbox.query",
            target="agreement:x",
            detail={"institutions": ["acme-bio"], "epsilon": 1.0},
        )
        s.add(
            PrivacyBudget(
                user_id=accounts.get_user(s, "rosa").id,
                agreement_id=agreement_services.get(s, slug).id,
                period=budget_period(),
                spent=3.5,
                answers=4,
            )
        )
    page = client.get("/institution/data").get_data(as_text=True)
    activity = page.split('data-testid="activity"')[1]
    assert "<td>rosa</td>" in activity and "<td>0.5</td>" in activity
    assert 'title="x"' not in activity
    assert "<td>rosa</td>" in page and "3.5 of 20" in page  # spending per researcher
    auth.logout()
    auth.login("rosa")  # the researcher: their own budget on the agreement's page
    mine = client.get(f"/agreements/{slug}").get_data(as_text=True)
    assert 'data-testid="budget"' in mine and "ε 16.5 left" in mine
    assert "at most ε 1 per answer, and ε 20 per researcher" in mine
    auth.logout()
    auth.login("kelvin-admin")  # not a party
    assert "No signed agreement includes our data" in client.get("/institution/data").get_data(
        as_text=True
    )


CSRF = re.compile(r'name="csrf_token" value="[^"]*"')


def test_an_unknown_agreement_is_refused_like_a_forbidden_one(
    world: AgreementWorld, client: FlaskClient, auth: AuthActions, settings: Settings
) -> None:
    """Pages and API answer a slug that names no agreement exactly as they answer an
    agreement the caller may not see (same status, code and words; only the slug differs)."""
    slug = world.active()  # names rosa; omar is a researcher elsewhere
    omar = _token(world, settings, "omar")
    auth.login("omar")
    token = csrf_from(client, "/agreements")

    def answer(name: str) -> list[tuple[int, str]]:
        answers = [
            client.get(f"/api/v1/agreements/{name}", headers=omar),
            client.get(f"/agreements/{name}"),
            client.post(f"/agreements/{name}/sign", data={"csrf_token": token}),
            client.get(f"/admin/agreements/{name}"),
            client.post(f"/admin/agreements/{name}/suspend", data={"csrf_token": token}),
        ]
        return [
            (r.status_code, CSRF.sub("", r.get_data(as_text=True)).replace(name, "SLUG"))
            for r in answers
        ]

    forbidden, unknown = answer(slug), answer("no-such-agreement")
    assert forbidden == unknown
    assert [status for status, _body in forbidden] == [403] * 5
    assert '"code":"forbidden"' in forbidden[0][1].replace(" ", "")
