"""The auditor (issue 18, item 2): read-only across institutions, and a period's events
exported the Five Safes way with proofs of inclusion against the latest checkpoint."""

from __future__ import annotations

import ast
import csv
import io
import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient

import policies
from hub.audit.services import record
from hub.auditor import services as auditor
from hub.db import Database
from hub.settings import Settings
from tests.conftest import AuthActions, Users, activate_agreement, bearer, csrf_from

pytestmark = pytest.mark.db

HUB = Path(__file__).resolve().parents[3] / "hub"

AGREEMENT = textwrap.dedent("""\
    id: audit-mfp
    title: Manufacturing-failure prediction
    purpose:
      code: manufacturing_failure_prediction
      text: Predict failed runs.
    parties:
      - institution: acme-bio
        roles: [contributor]
      - institution: st-aurelia
        roles: [contributor, recipient]
    tables:
      batch: [lot_id, viability]
    researchers: [rosa]
    valid_from: 2026-01-01
    valid_until: 2099-12-31
    """)


# Every action has its safe -------------------------------------------------------------------


def _written_actions(source: str) -> set[str]:
    """Action names (or an f-string's constant prefix, ending in ".") in calls that pass
    ``action=...`` or log a ledger action positionally (``_log("sandbox.x", ...)``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        values = [k.value for k in node.keywords if k.arg == "action"]
        name = getattr(node.func, "id", getattr(node.func, "attr", ""))
        if name in ("_log", "_refused") and node.args:
            values.append(node.args[0])
        for value in values:
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                found.add(value.value)
            elif isinstance(value, ast.JoinedStr) and value.values:
                head = value.values[0]
                if isinstance(head, ast.Constant) and str(head.value).endswith("."):
                    found.add(str(head.value))
    return found


def test_every_action_the_hub_records_belongs_to_a_safe() -> None:
    actions: set[str] = set()
    for path in HUB.rglob("*.py"):
        actions |= _written_actions(path.read_text())
    ledger_actions = {a for a in actions if "." in a or a in ("upload", "release", "query")}
    assert {"agreement.sign", "sandbox.refused", "login.failure", "upload"} <= ledger_actions
    unclassified = sorted(a for a in ledger_actions if auditor.safe_of(a) is None)
    # The scan sees form and policy actions too ("read", "write", ...): those have no dot.
    assert unclassified == []
    # Control: the scanner reads what a new call would write, and an unknown name is caught.
    planted = _written_actions('record(s, actor="a", action="frobnicate.now")\n_log("x.y", 1)')
    assert planted == {"frobnicate.now", "x.y"}
    assert auditor.safe_of("frobnicate.now") is None


@pytest.mark.parametrize(
    ("action", "safe"),
    [
        ("release", "data"),  # a dataset released to the pool
        ("release.request", "outputs"),  # a researcher's reviewed release
        ("sandbox.login", "people"),
        ("sandbox.query", "outputs"),
        ("login.failure", "people"),
        ("agreement.suspend", "projects"),
        ("audit.verify", "settings"),
        ("pool.rotate_keys", "settings"),
        ("pool.withdraw", "data"),
        ("export.download", "outputs"),
    ],
)
def test_the_longest_rule_decides(action: str, safe: str) -> None:
    assert auditor.safe_of(action) == safe


# Read-only, across institutions --------------------------------------------------------------


def test_the_auditor_holds_no_action_that_changes_anything() -> None:
    """Asked of the policy itself: every write, upload, query, review or sign is refused,
    every read the issue names is granted."""
    for action, obj in [
        ("read", "auditor"),
        ("export", "auditor"),
        ("read", "admin/audit"),
        ("read", "admin/access"),
        ("read", "releases"),
        ("read", "releases/7"),
        ("read", "catalogue/agreements"),
    ]:
        assert policies.allowed("auditor", action, obj), (action, obj)
    for action, obj in [
        ("write", "admin/users"),
        ("write", "admin/institutions"),
        ("write", "admin/agreements"),
        ("write", "admin/agreements/x"),
        ("read", "admin"),
        ("upload", "datasets"),
        ("read", "datasets/1/content"),
        ("query", "sandbox"),
        ("fit", "sandbox"),
        ("create", "releases"),
        ("review", "releases/7"),
        ("resolve", "releases/7"),
        ("object", "releases/7"),
        ("synthesise", "synthetic"),
        ("write", "admin/audit"),
    ]:
        assert not policies.allowed("auditor", action, obj), (action, obj)


@pytest.fixture
def world(users: Users, database: Database) -> None:
    users.institution("acme-bio", "manufacturer")
    users.institution("st-aurelia", "hospital")
    users.make("sam", "steward")
    users.make("acme-bio-admin", "contributor_admin", "acme-bio")
    users.make("st-aurelia-admin", "contributor_admin", "st-aurelia")
    users.make("rosa", "researcher", "st-aurelia")
    users.make("ines", "auditor")
    activate_agreement(database, AGREEMENT)


def test_the_auditor_reads_every_page_named_and_nothing_else(
    world: None, client: FlaskClient, auth: AuthActions
) -> None:
    auth.login("ines")
    home = client.get("/")
    assert home.status_code == 200 and b'data-testid="auditor-card"' in home.data
    for path in (
        "/auditor",
        "/auditor/agreements/audit-mfp",
        "/admin/audit",
        "/admin/access",
        "/releases",
        "/catalogue/agreements/audit-mfp",
    ):
        assert client.get(path).status_code == 200, path
    page = client.get("/auditor/agreements/audit-mfp").get_data(as_text=True)
    assert "rosa" in page and "Manufacturing-failure prediction" in page
    assert 'data-testid="policy-words"' in page and "<form" not in page.split("<main")[-1]
    for path in ("/admin/users", "/admin/institutions", "/admin/agreements", "/datasets"):
        assert client.get(path).status_code == 403, path
    token = csrf_from(client, "/auditor")
    refused = client.post(
        "/admin/agreements/audit-mfp/suspend", data={"csrf_token": token}, follow_redirects=False
    )
    assert refused.status_code in (403, 404, 405)
    # A researcher or a contributor admin is not an auditor.
    auth.logout()
    auth.login("rosa")
    assert client.get("/auditor").status_code == 403
    assert client.get("/auditor/export.jsonl").status_code == 403


# Exports ---------------------------------------------------------------------------------------


def _lines(resp) -> list[dict]:
    return [json.loads(line) for line in resp.get_data(as_text=True).splitlines() if line]


def test_export_groups_a_period_the_five_safes_way(
    world: None, client: FlaskClient, auth: AuthActions, database: Database
) -> None:
    with database.session() as s:
        for action in ("sandbox.query", "release.request", "upload", "agreement.suspend"):
            record(s, actor="user:rosa", action=action, target="agreement:audit-mfp")
        s.commit()
    auth.login("ines")
    today = datetime.now(UTC).date()
    resp = client.get(f"/auditor/export.jsonl?since={today}&until={today}")
    assert resp.status_code == 200 and resp.mimetype == "application/x-ndjson"
    head, *events = _lines(resp)
    assert head["record"] == "checkpoint"
    assert head["period"] == {"since": str(today), "until": str(today)}
    by_action = {e["action"]: e for e in events}
    assert by_action["sandbox.query"]["safe"] == "outputs"
    assert by_action["release.request"]["safe"] == "outputs"
    assert by_action["upload"]["safe"] == "data"
    assert by_action["agreement.suspend"]["safe"] == "projects"
    assert by_action["login.success"]["safe"] == "people"
    assert all(e["classified"] for e in events)
    ids = [e["id"] for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Independent count: the ledger's own rows for today.
    with database.session() as s:
        from sqlalchemy import text

        n = s.execute(text("SELECT COUNT(*) FROM audit_entries WHERE at >= :d"), {"d": str(today)})
        assert len(events) == n.scalar_one()
    # The export is itself in the ledger, written before it streams: who took which period.
    assert by_action["export.download"]["actor"] == "user:ines"
    assert by_action["export.download"]["target"] == "ledger"
    assert by_action["export.download"]["detail"] == {
        "since": str(today),
        "until": str(today),
        "format": "jsonl",
        "safes": True,
    }
    # A period before anything happened is empty.
    past = today - timedelta(days=400)
    assert _lines(client.get(f"/auditor/export.jsonl?since={past}&until={past}"))[1:] == []
    # The overview counts the same events.
    page = client.get(f"/auditor?since={today}&until={today}").get_data(as_text=True)
    assert "Safe outputs" in page and "asked a question of the pooled data (1)" in page
    data_row = page.split('data-safe="data"')[1].split("</tr>")[0]
    assert "uploaded a file (1)" in data_row, data_row


def test_csv_export_has_every_event_and_neutralises_formulas(
    world: None, client: FlaskClient, auth: AuthActions, database: Database
) -> None:
    with database.session() as s:
        record(s, actor="user:rosa", action="sandbox.refused", detail={"sql": "=HYPERLINK(1)"})
        s.commit()
    auth.login("ines")
    resp = client.get("/auditor/export.csv")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert list(rows[0]) == list(auditor.CSV_COLUMNS)
    refused = [r for r in rows if r["action"] == "sandbox.refused"]
    assert refused and refused[0]["safe"] == "outputs"
    assert json.loads(refused[0]["detail"]) == {"sql": "=HYPERLINK(1)"}  # JSON, not a formula
    assert not any(v.startswith("=") for r in rows for v in r.values())


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("since=31/01/2026", "is not a date: write it as YYYY-MM-DD"),
        ("since=2026-02-01&until=2026-01-01", "swap the two dates"),
    ],
)
def test_a_bad_period_is_explained(
    world: None, client: FlaskClient, auth: AuthActions, query: str, message: str
) -> None:
    auth.login("ines")
    resp = client.get(f"/auditor/export.jsonl?{query}")
    assert resp.status_code == 400 and message in resp.get_data(as_text=True)
    assert "Traceback" not in resp.get_data(as_text=True)


def test_the_api_exports_with_a_read_token_only(
    world: None, client: FlaskClient, database: Database, settings: Settings
) -> None:
    ok = client.get("/api/v1/auditor/events", headers=bearer(database, settings, "ines", ("read",)))
    assert ok.status_code == 200 and _lines(ok)[0]["record"] == "checkpoint"
    as_csv = client.get(
        "/api/v1/auditor/events?format=csv", headers=bearer(database, settings, "ines", ("read",))
    )
    assert as_csv.get_data(as_text=True).startswith('"id","at","safe",')
    wrong_scope = client.get(
        "/api/v1/auditor/events", headers=bearer(database, settings, "ines", ("upload",))
    )
    assert wrong_scope.status_code == 403
    assert wrong_scope.get_json()["error"]["code"] == "insufficient_scope"
    researcher = client.get(
        "/api/v1/auditor/events", headers=bearer(database, settings, "rosa", ("read",))
    )
    assert researcher.status_code == 403


# Proofs of inclusion ---------------------------------------------------------------------------


def _rfc_6962_path(m: int, leaves: list[bytes]) -> list[bytes]:
    """RFC 6962 section 2.1.1's PATH(m, D[n]), written from the RFC, as the oracle."""
    import hashlib

    def mth(d: list[bytes]) -> bytes:
        if len(d) == 1:
            return d[0]
        k = 1 << ((len(d) - 1).bit_length() - 1)
        return hashlib.sha256(b"\x01" + mth(d[:k]) + mth(d[k:])).digest()

    if len(leaves) <= 1:
        return []
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    if m < k:
        return [*_rfc_6962_path(m, leaves[:k]), mth(leaves[k:])]
    return [*_rfc_6962_path(m - k, leaves[k:]), mth(leaves[:k])]


def test_levels_give_rfc_6962_paths_for_every_size() -> None:
    """The level-by-level tree the proofs use against the RFC's recursive definition, for
    every size up to 40 and every leaf."""
    from hub.audit import checkpoints

    for size in range(1, 41):
        hashes = [f"{i:064x}" for i in range(size)]
        leaves = [checkpoints.leaf_hash(h) for h in hashes]
        levels = checkpoints.MerkleLevels(b"".join(leaves))
        assert levels.root == checkpoints.merkle_root(hashes), size
        for index in range(size):
            assert levels.path(index) == _rfc_6962_path(index, leaves), (size, index)


def test_every_exported_entry_proves_its_inclusion_in_the_signed_checkpoint(
    world: None, client: FlaskClient, auth: AuthActions, database: Database, settings: Settings
) -> None:
    from hub.audit import checkpoints

    with database.session() as s:
        for i in range(5):
            record(s, actor="user:rosa", action="sandbox.query", detail={"n": i})
        made = checkpoints.create_checkpoint(s, settings)
        assert made is not None
        s.commit()
        length = made.length
    auth.login("ines")
    head, *events = _lines(client.get("/auditor/export.jsonl"))
    document = head["checkpoint"]
    assert document["length"] == length and document["signature"]
    public = checkpoints.signing_key(settings).public_key()
    assert checkpoints.check_signature(document, public) == ""
    covered = [e for e in events if e["id"] <= length]
    later = [e for e in events if e["id"] > length]
    assert len(covered) == length and later  # the checkpoint's entry and the export's own
    for e in covered:
        assert checkpoints.verify_inclusion(e["proof"], e["entry_hash"], document), e["id"]
    assert all(e["proof"] is None for e in later)
    # An entry edited after the checkpoint (its stored hash left alone) no longer proves.
    with database.session() as s:
        from sqlalchemy import text

        s.execute(text("UPDATE audit_entries SET actor = 'user:mallory' WHERE id = 2"))
        s.commit()
    edited = {e["id"]: e for e in _lines(client.get("/auditor/export.jsonl"))[1:]}[2]
    assert not checkpoints.verify_inclusion(edited["proof"], edited["entry_hash"], document)
    # Control: a proof with one hash changed, or for another entry's hash, proves nothing.
    proof = dict(covered[2]["proof"])
    proof["path"] = [("0" if p[0] != "0" else "1") + p[1:] for p in proof["path"]]
    assert not checkpoints.verify_inclusion(proof, covered[2]["entry_hash"], document)
    assert not checkpoints.verify_inclusion(covered[2]["proof"], covered[3]["entry_hash"], document)
