"""A job re-asks the policy at the moment it acts (issue 18, item 3): an agreement suspended
while a synthesis waits in the queue stops it; a user disabled or given another role while
their upload waits to be processed is refused. Each refusal is a clear job error and one
``job.refused`` entry in the ledger."""

from __future__ import annotations

import json
from datetime import timedelta

import pandas as pd
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from hub.accounts import services as accounts
from hub.agreements import services as agreements
from hub.audit.models import AuditEntry
from hub.audit.services import verify
from hub.db import Database
from hub.ingest.models import DatasetVersion
from hub.jobs import recheck as job_recheck
from hub.jobs.models import Job
from hub.jobs.services import JobContext
from hub.notices.models import Notice
from hub.settings import Settings
from hub.synth import services as synth
from hub.synth.models import SyntheticVersion
from tests.conftest import Users, activate_agreement, bearer, release_into_pool
from tests.unit.hub.conftest import RELEASE_SITES, V2V_TERMS, ReleaseWorld
from tests.unit.hub.uploads import drain

pytestmark = pytest.mark.db

BATCH_CSV = (
    "Lot No.,COI,Manufacturing Facility,Platform,Outcome,Viability %\n"
    "LOT-1,COI-0001,Northbridge,central,conforming,91.5\n"
    "LOT-2,COI-0002,Northbridge,central,failed,62\n"
)


def _refusals(database: Database) -> list[AuditEntry]:
    with database.session() as s:
        found = list(s.scalars(select(AuditEntry).where(AuditEntry.action == "job.refused")))
        assert verify(s).ok
        s.expunge_all()
    return found


def _context(database: Database, settings: Settings, job_id: int) -> JobContext:
    with database.session() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return JobContext(database, settings, job.id, job.kind, json.loads(job.payload), 1, "t")


@pytest.fixture
def waiting_synthesis(users: Users, database: Database, settings: Settings, app: Flask) -> int:
    """An active agreement over three sites' released batch data, and the synthesis of its
    pooled batch table queued by the steward sam: the synthetic version's id."""
    for slug in RELEASE_SITES:
        users.institution(slug, "hospital")
        users.make(f"{slug}-admin", "contributor_admin", slug)
    users.make("sam", "steward")
    users.make("rosa", "researcher", "st-aurelia")
    storage = app.extensions["cleanroom.storage"]
    frame = pd.DataFrame({"lot_id": ["a", "b"], "platform": ["central", "central"]})
    with database.session() as s:
        for slug in RELEASE_SITES:
            release_into_pool(s, storage, slug, "batch", frame)
    activate_agreement(database, V2V_TERMS + "disclosure:\n  allow_synthetic: true\n")
    with database.session() as s:
        return synth.request_for_agreement(s, settings, "v2v", "batch", actor="user:sam").id


def test_an_agreement_suspended_while_a_synthesis_waits_stops_it(
    database: Database, settings: Settings, waiting_synthesis: int
) -> None:
    with database.session() as s:
        job_id = synth.get(s, waiting_synthesis).job_id
    assert job_id is not None
    # The control: while the agreement is active, the job's question is answered yes.
    synth._recheck(_context(database, settings, job_id), [waiting_synthesis])
    assert _refusals(database) == []

    with database.session() as s:
        agreements.transition(s, agreements.get(s, "v2v"), "suspend", actor="user:sam")
    drain(database, settings)

    with database.session() as s:
        job = s.get(Job, job_id)
        synthetic = s.get(SyntheticVersion, waiting_synthesis)
        assert job is not None and synthetic is not None
        assert job.state == "failed"
        assert "agreement `v2v` no longer grants its batch data" in job.error
        assert "Synthesise again once it is active" in job.error
        assert synthetic.state == "failed" and synthetic.error == job.error
        assert synthetic.data_key == ""  # nothing was made
    (entry,) = _refusals(database)
    assert entry.target == f"job:{job_id}"
    detail = json.loads(entry.detail)
    assert detail["for"] == "user:sam" and detail["reason"] == "agreement not in force"
    assert detail["tables"] == ["batch"]


def test_a_steward_who_lost_the_role_no_longer_has_the_synthesis_made(
    database: Database, settings: Settings, waiting_synthesis: int
) -> None:
    with database.session() as s:
        sam = accounts.get_user(s, "sam")
        accounts.change_user(s, sam, role="researcher", institution="st-aurelia", actor="t")
    drain(database, settings)
    with database.session() as s:
        synthetic = s.get(SyntheticVersion, waiting_synthesis)
        assert synthetic is not None and synthetic.state == "failed"
        assert "sam may no longer have syntheses made" in synthetic.error
    (entry,) = _refusals(database)
    assert json.loads(entry.detail)["action"] == "synthesise"


# Ingest ------------------------------------------------------------------------------------


@pytest.fixture
def waiting_upload(client: FlaskClient, users: Users, database: Database, settings: Settings):
    """nadia (contributor of st-aurelia) uploaded a batch file; its profiling job waits."""
    users.make("nadia", "contributor")
    headers = bearer(database, settings, "nadia", ("upload",))
    resp = client.post(
        "/api/v1/uploads?table=batch&filename=lims.csv",
        data=BATCH_CSV.encode(),
        headers={**headers, "Content-Type": "application/octet-stream"},
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["id"]


def _version(database: Database, version_id: int) -> tuple[str, str, str]:
    with database.session() as s:
        version = s.get(DatasetVersion, version_id)
        assert version is not None
        job = s.get(Job, version.job_id)
        assert job is not None
        return version.state, job.state, job.error


def test_an_upload_is_processed_while_its_uploader_may(
    database: Database, settings: Settings, waiting_upload: int
) -> None:
    """The control: nothing changed, the job reads the file."""
    drain(database, settings)
    state, job_state, _error = _version(database, waiting_upload)
    assert state == "awaiting_mapping" and job_state == "succeeded"
    assert _refusals(database) == []


def test_a_user_disabled_while_the_upload_waits_is_refused(
    database: Database, settings: Settings, waiting_upload: int
) -> None:
    with database.session() as s:
        accounts.set_active(s, accounts.get_user(s, "nadia"), False, actor="user:sam")
    drain(database, settings)
    state, job_state, error = _version(database, waiting_upload)
    assert (state, job_state) == ("failed", "failed")
    assert error.startswith("stopped: nadia may no longer process this upload")
    assert "disabled" in error
    (entry,) = _refusals(database)
    detail = json.loads(entry.detail)
    assert (detail["for"], detail["action"]) == ("user:nadia", "map")
    assert detail["object"] == f"datasets/{waiting_upload}"


@pytest.mark.parametrize(
    ("role", "institution"), [("researcher", "st-aurelia"), ("contributor", "kelvin")]
)
def test_a_user_moved_while_the_upload_waits_is_refused(
    database: Database,
    settings: Settings,
    users: Users,
    waiting_upload: int,
    role: str,
    institution: str,
) -> None:
    """Another role, or another institution: the version is no longer theirs to process."""
    users.institution("kelvin", "academic")
    with database.session() as s:
        accounts.change_user(
            s, accounts.get_user(s, "nadia"), role=role, institution=institution, actor="t"
        )
    drain(database, settings)
    state, job_state, error = _version(database, waiting_upload)
    assert (state, job_state) == ("failed", "failed")
    assert "nadia may no longer process this upload" in error
    assert len(_refusals(database)) == 1


def test_a_job_queued_by_the_hub_itself_is_not_re_asked(
    database: Database, settings: Settings, waiting_upload: int
) -> None:
    """Jobs the hub or the command line queue act for the operator: nothing to re-ask."""
    with database.session() as s:
        version = s.get(DatasetVersion, waiting_upload)
        assert version is not None
        s.get(Job, version.job_id).created_by = "cli"  # type: ignore[union-attr]
        job_id = version.job_id
    assert job_id is not None
    job_recheck.recheck(_context(database, settings, job_id), "map", "datasets/1")
    assert _refusals(database) == []


def test_recheck_asks_in_the_agreement_domain_as_the_user(
    database: Database, settings: Settings, waiting_synthesis: int
) -> None:
    """A job acting for a researcher under an agreement: the user's own rules in the
    agreement's domain decide, as the database holds them when the job acts."""
    with database.session() as s:
        job_id = synth.get(s, waiting_synthesis).job_id
        s.get(Job, job_id).created_by = "user:rosa"  # type: ignore[union-attr]
    assert job_id is not None
    ctx = _context(database, settings, job_id)
    job_recheck.recheck(ctx, "query", "data/batch", domain="agreement:v2v")
    with pytest.raises(job_recheck.JobRefused, match="rosa may no longer fit .*agreement `v2v`"):
        job_recheck.recheck(ctx, "fit", "data/batch", domain="agreement:v2v")  # not allowed
    with database.session() as s:
        agreements.transition(s, agreements.get(s, "v2v"), "suspend", actor="user:sam")
    with pytest.raises(job_recheck.JobRefused):
        job_recheck.recheck(ctx, "query", "data/batch", domain="agreement:v2v")
    assert len(_refusals(database)) == 2


def test_an_approved_release_waits_while_its_agreement_is_suspended(
    client: FlaskClient, auth, database: Database, release_world: ReleaseWorld
) -> None:
    """The outputs leave only while the agreement stands for the researcher."""
    from hub.releases import services as releases

    rid = release_world.request("approved")
    with database.session() as s:
        agreements.transition(s, agreements.get(s, "v2v"), "suspend", actor="user:sam")
    with database.session() as s:
        request = releases.get(s, rid)
        assert request.window_ends_at is not None
        after = request.window_ends_at + timedelta(seconds=1)
        assert not releases.settle(s, request, after)
        assert request.state == "approved"
        assert request.reason == releases.HELD
    with database.session() as s:  # the workers settle each minute: the hold is said once
        assert not releases.settle(s, releases.get(s, rid), after + timedelta(minutes=1))
    auth.login("rosa")  # the researcher's page says it is held, and what happens next
    page = client.get(f"/releases/{rid}").get_data(as_text=True)
    assert 'data-testid="held"' in page and "as soon as it stands again" in page
    assert 'data-testid="reason"' not in page  # said once, in the box
    auth.logout()
    with database.session() as s:
        agreements.transition(s, agreements.get(s, "v2v"), "resume", actor="user:sam")
    with database.session() as s:
        request = releases.get(s, rid)
        assert releases.settle(s, request, after)
        assert request.state == "released"
        assert request.reason == ""
    with database.session() as s:
        entries = s.scalars(
            select(AuditEntry.action)
            .where(AuditEntry.target == f"release:{rid}")
            .order_by(AuditEntry.id)
        ).all()
        held = s.scalars(
            select(Notice.subject).where(Notice.subject == f"Release request {rid} held")
        ).all()
    assert entries[-2:] == ["release.held", "release.released"]
    assert entries.count("release.held") == 1
    assert len(held) == 1
