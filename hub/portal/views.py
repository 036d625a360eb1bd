"""The signed-in landing page (with what waits for the user) and the health check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from flask import Blueprint, current_app, jsonify, render_template, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select, text
from sqlalchemy.orm import Session

import policies
from hub.accounts.models import User
from hub.db import get_db, utcnow
from hub.ingest.models import DatasetVersion, VersionState
from hub.jobs.models import Job, JobState
from hub.web import app_settings, current_user, get_policy, guard, open_endpoint, roles_of
from policies.enforcer import user_subject

bp = Blueprint("portal", __name__)
health = Blueprint("health", __name__)

# How far back the home page looks for finished jobs, and how many of each kind it lists.
RECENT_JOBS = timedelta(days=7)
LIMIT = 10
DEMO_LOGINS = "demo-logins.json"  # written by ``cleanroom demo seed`` (hub.demo)

# What the home page shows for a version state, in a data manager's words.
_WAITING_VERSION = {
    VersionState.AWAITING_SHEET: "choose the sheet",
    VersionState.AWAITING_MAPPING: "confirm the column mapping",
    VersionState.AWAITING_REVIEW: "review the de-identification and release",
}
_RELEASE_STATE = {
    "in_review": "with the output checkers",
    "approved": "approved; the contributing institutions may still object",
    "released": "released",
    "rejected": "rejected",
    "withdrawn": "withdrawn",
}
_JOB_KIND = {
    "ingest.profile": "reading an upload",
    "ingest.process": "mapping, validating and de-identifying an upload",
    "synth.version": "making a synthetic version",
    "synth.agreement_table": "making an agreement's synthetic table",
    "synth.agreement_tables": "making an agreement's synthetic tables",
}


@dataclass(frozen=True)
class Item:
    """One thing waiting for the user: what it is, where to act on it."""

    text: str
    href: str
    note: str = ""


@dataclass(frozen=True)
class Section:
    title: str
    items: list[Item]
    empty: str
    waits: bool = True  # False: for information (the user's own finished jobs)


def _allowed(user: User, action: str, obj: str, *, owner: bool = False) -> bool:
    """What the policy says of the user's role(s), as ``can()`` does in templates."""
    return any(policies.allowed(r, action, obj, owner=owner) for r in roles_of(user))


def _agreements_to_sign(db: Session, user: User) -> list[Item]:
    from hub.agreements import services as agreements

    policy, subject = get_policy(), user_subject(user.id)
    return [
        Item(f"Agreement “{r.title}”", url_for("agreements.show", slug=r.slug), "sign it")
        for r in agreements.all_records(db)
        if policy.allowed(
            subject, "sign", f"agreements/{r.slug}", domain=f"agreement:{r.slug}", refresh=False
        )
    ]


def _uploads_waiting(db: Session, user: User) -> list[Item]:
    found = db.scalars(
        select(DatasetVersion)
        .where(
            DatasetVersion.institution_id == user.institution_id,
            DatasetVersion.state.in_(list(_WAITING_VERSION)),
        )
        .order_by(DatasetVersion.id.desc())
        .limit(LIMIT)
    )
    return [
        Item(
            f"{v.cdm_table} version {v.version} ({v.filename})",
            url_for("datasets.show", version_id=v.id),
            _WAITING_VERSION[VersionState(v.state)],
        )
        for v in found
        if _allowed(user, "map", f"datasets/{v.id}", owner=True)
    ]


def _releases(db: Session, user: User) -> dict[str, list[Item]]:
    """Requests waiting for the user's check, objection or resolution, and their own."""
    from hub.releases import services as releases

    now = utcnow()
    out: dict[str, list[Item]] = {"check": [], "object": [], "resolve": [], "mine": []}
    for r in releases.visible(db, user):
        href = url_for("releases.page", request_id=r.id)
        label = f"Release request {r.id}: {r.title}"
        if r.researcher_id == user.id:
            out["mine"].append(Item(label, href, _RELEASE_STATE.get(r.state, r.state)))
            continue
        reviewed = any(v.reviewer_id == user.id and v.revision == r.revision for v in r.reviews)
        if r.state == "in_review" and not reviewed and releases.may_review(user, r):
            out["check"].append(Item(label, href, "check its outputs"))
        window_open = r.window_ends_at is not None and r.window_ends_at > now
        if (
            r.state == "approved"
            and window_open
            and releases.may_see(db, user, r, "object")
            and not any(o.institution_id == user.institution_id for o in r.objections)
        ):
            ends = r.window_ends_at.strftime("%Y-%m-%d") if r.window_ends_at else ""
            out["object"].append(Item(label, href, f"you may object until {ends}"))
        if releases.open_objections(r) and releases.may_see(db, user, r, "resolve"):
            out["resolve"].append(Item(label, href, "an objection to resolve"))
    return {k: v[:LIMIT] for k, v in out.items()}


def _job_link(job: Job) -> str:
    payload = json.loads(job.payload or "{}")
    if "version_id" in payload:
        return url_for("datasets.show", version_id=payload["version_id"])
    synthetic = payload.get("synthetic_id") or (payload.get("synthetic_ids") or [None])[0]
    if synthetic:
        return url_for("synthetic.show", synthetic_id=synthetic)
    return url_for("notices.inbox")


def _job_item(job: Job) -> Item:
    what = _JOB_KIND.get(job.kind, job.kind.replace("_", " ").replace(".", ": "))
    when = job.finished_at.strftime("%Y-%m-%d %H:%M UTC") if job.finished_at else ""
    state = "failed" if job.state == JobState.FAILED else "finished"
    return Item(f"Job {job.id}: {what}", _job_link(job), f"{state} {when}".strip())


def _my_jobs(db: Session, user: User) -> list[Item]:
    found = db.scalars(
        select(Job)
        .where(
            Job.created_by == f"user:{user.username}",
            Job.state.in_([JobState.SUCCEEDED, JobState.FAILED]),
            Job.finished_at >= utcnow() - RECENT_JOBS,
        )
        .order_by(Job.finished_at.desc())
        .limit(LIMIT)
    )
    return [_job_item(j) for j in found]


def _failed_jobs(db: Session) -> list[Item]:
    found = db.scalars(
        select(Job)
        .where(Job.state == JobState.FAILED, Job.finished_at >= utcnow() - RECENT_JOBS)
        .order_by(Job.finished_at.desc())
        .limit(LIMIT)
    )
    return [_job_item(j) for j in found]


def _agreements_in_progress(db: Session) -> list[Item]:
    from hub.agreements import services as agreements

    words = {
        "draft": "a draft: send it for signatures",
        "awaiting_signatures": "awaiting signatures",
    }
    return [
        Item(
            f"Agreement “{r.title}”",
            url_for("admin_agreements.admin_show", slug=r.slug),
            words[r.state],
        )
        for r in agreements.all_records(db)
        if r.state in words
    ][:LIMIT]


def waiting_for(db: Session, user: User) -> list[Section]:
    """What waits for ``user``, section by section; a section appears only when the
    policy lets the user act on what it lists."""
    sections: list[Section] = []
    if _allowed(user, "write", "admin/agreements"):
        sections.append(
            Section(
                "Agreements in progress",
                _agreements_in_progress(db),
                "No agreement is a draft or awaits signatures.",
            )
        )
    to_sign = _agreements_to_sign(db, user)
    if to_sign or _allowed(user, "read", "institution/users"):
        sections.append(
            Section("Agreements awaiting your signature", to_sign, "No agreement awaits you.")
        )
    if _allowed(user, "upload", "datasets") and user.institution_id is not None:
        sections.append(
            Section(
                "Uploads awaiting you",
                _uploads_waiting(db, user),
                "No upload waits for your mapping or review.",
            )
        )
    if _allowed(user, "read", "releases"):
        found = _releases(db, user)
        if _allowed(user, "review", "releases/0"):
            sections.append(
                Section(
                    "Release requests awaiting your check",
                    found["check"],
                    "No release request waits for your check.",
                )
            )
        if found["object"] or _allowed(user, "read", "institution/users"):
            sections.append(
                Section(
                    "Release requests you may object to",
                    found["object"],
                    "No release request built on your institution's data is open to objection.",
                )
            )
        if _allowed(user, "write", "admin/agreements"):
            sections.append(
                Section("Objections to resolve", found["resolve"], "No objection waits for you.")
            )
        if _allowed(user, "create", "releases"):
            sections.append(
                Section(
                    "Your release requests",
                    found["mine"],
                    "You have not asked for a release yet.",
                    waits=False,
                )
            )
    if _allowed(user, "read", "admin"):
        sections.append(
            Section(
                "Failed jobs (last 7 days)", _failed_jobs(db), "No job failed in the last 7 days."
            )
        )
    sections.append(
        Section(
            "Your jobs (last 7 days)",
            _my_jobs(db, user),
            "No job of yours finished in the last 7 days.",
            waits=False,
        )
    )
    return sections


@bp.app_context_processor
def _demo_hint() -> dict[str, Any]:
    """``demo_logins()`` for the sign-in page: True in development mode when the data
    directory holds the demo's logins (``cleanroom demo seed`` wrote them)."""

    def demo_logins() -> bool:
        settings = app_settings()
        return settings.mode == "development" and (settings.data_path / DEMO_LOGINS).is_file()

    return {"demo_logins": demo_logins}


@bp.route("/")
@guard("read", "portal")
def index() -> ResponseReturnValue:
    user = current_user()
    assert user is not None  # the guard let only a signed-in user through
    sections = waiting_for(get_db(), user)
    return render_template(
        "index.html",
        user=user,
        sections=sections,
        waiting=sum(len(s.items) for s in sections if s.waits),
        catalogue="catalogue.index" in current_app.view_functions,
    )


@health.route("/healthz")
@open_endpoint
def healthz() -> ResponseReturnValue:
    """Liveness and readiness: the database answers and the object store is reachable."""
    checks: dict[str, str] = {}
    status = 200
    try:
        get_db().execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception:  # reported, not raised: this is the health check
        checks["database"] = "unavailable"
        status = 503
    storage = current_app.extensions.get("cleanroom.storage")
    if storage is not None:
        try:
            storage.check()
            checks["storage"] = "ok"
        except Exception:
            checks["storage"] = "unavailable"
            status = 503
    return jsonify({"status": "ok" if status == 200 else "degraded", "checks": checks}), status
