"""Agreements in the portal and the JSON API.

- Everyone signed in: ``/agreements``, the agreements they may read now (named researcher
  of an active agreement, or admin of a party), and each one's terms; contributor admins
  sign there. ``/institution/data``: which agreements include the institution's data and
  every query that touched it.
- The steward: ``/admin/agreements`` (create from a template or YAML, edit drafts, move
  through the lifecycle) and ``/admin/access`` (who can reach what).
- ``/api/v1/agreements``: the same for scripts and the sandbox, bearer tokens only.

Views are thin: every permission is a :func:`hub.web.guard` decision by :mod:`policies`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from contracts.agreements import TRANSITIONS, Agreement, Event, State
from contracts.cdm import load_cdm
from hub.accounts.models import Role, User
from hub.agreements import services
from hub.agreements.models import AgreementRecord
from hub.audit.models import AuditEntry
from hub.db import get_db
from hub.errors import CleanroomError, NotFound
from hub.gateway import services as gateway_services
from hub.releases import services as releases
from hub.releases.models import ReleaseRequest
from hub.web import actor, agreement_domain, current_user, get_policy, guard
from policies import store
from policies.enforcer import user_subject
from policies.explorer import reachable, who_can

bp = Blueprint("agreements", __name__)
admin_bp = Blueprint("admin_agreements", __name__, url_prefix="/admin")
api = Blueprint("agreements_api", __name__, url_prefix="/api/v1/agreements")


def _user() -> User:
    user = current_user()
    assert user is not None  # the guard signed them in
    return user


def _view(stored: AgreementRecord, agreement: Agreement | None = None) -> dict[str, Any]:
    """What the pages and the API show of an agreement."""
    agreement = agreement or services.contract_of(stored)
    signed = {s.institution: s for s in agreement.valid_signatures()}
    d = agreement.disclosure
    return {
        "id": agreement.id,
        "title": agreement.title,
        "state": agreement.state_at(datetime.now(UTC)).value,
        "stored_state": stored.state,
        "purpose": {"code": agreement.purpose.code, "text": agreement.purpose.text},
        "parties": [
            {
                "institution": p.institution,
                "roles": [
                    r
                    for r, on in (("contributor", p.contributor), ("recipient", p.recipient))
                    if on
                ],
                "signed_at": signed[p.institution].signed_at.isoformat()
                if p.institution in signed
                else None,
            }
            for p in agreement.parties
        ],
        "tables": {
            c.table: "all" if c.columns is None else list(c.columns) for c in agreement.tables
        },
        "researchers": list(agreement.researchers),
        "valid_from": agreement.valid_from.isoformat(),
        "valid_until": agreement.valid_until.isoformat(),
        "disclosure": {
            "k": d.k,
            "min_institutions": d.min_institutions,
            "rounding_base": d.rounding_base,
            "dominance_n": d.dominance_n,
            "dominance_percent": d.dominance_percent,
            "allow_synthetic": d.allow_synthetic,
            "allow_model_fitting": d.allow_model_fitting,
            "epsilon_per_answer": d.epsilon_per_answer,
            "epsilon_total": d.epsilon_total,
        },
        "terms": agreement.terms,
    }


def _may(user: User, act: str, slug: str) -> bool:
    return get_policy().allowed(
        user_subject(user.id),
        act,
        f"agreements/{slug}",
        domain=agreement_domain(slug),
        refresh=False,
    )


# Everyone signed in ------------------------------------------------------------------------


@bp.route("/agreements")
@guard("read", "portal")
def mine() -> ResponseReturnValue:
    user = _user()
    records = services.readable(get_policy(), user, services.all_records(get_db()))
    rows = [(r, _view(r), _may(user, "sign", r.slug)) for r in records]
    return render_template("agreements/mine.html", rows=rows)


@bp.route("/agreements/<slug>")
@guard("read", "agreements/{slug}", domain=agreement_domain)
def show(slug: str) -> ResponseReturnValue:
    user = _user()
    db = get_db()
    stored = services.get(db, slug)
    view = _view(stored)
    # A named researcher sees their own privacy budget here (the sandbox client shows it too).
    budget = None
    if user.username in view["researchers"]:
        mine = [
            s
            for s in gateway_services.spending(db, stored)
            if s["researcher"] == user.username and s["period"] == gateway_services.budget_period()
        ]
        spent = mine[0]["epsilon_spent"] if mine else 0.0
        total = view["disclosure"]["epsilon_total"]
        budget = {"spent": spent, "total": total, "left": max(0.0, total - spent)}
    return render_template(
        "agreements/show.html",
        a=view,
        stored=stored,
        may_sign=_may(user, "sign", slug),
        budget=budget,
    )


@bp.route("/agreements/<slug>/sign", methods=["POST"])
@guard("sign", "agreements/{slug}", domain=agreement_domain)
def sign(slug: str) -> ResponseReturnValue:
    db = get_db()
    stored = services.get(db, slug)
    try:
        state = services.sign(db, stored, _user(), actor=actor())
        db.commit()
        flash(
            f"Signed agreement {slug}."
            + (" Every party has signed: it is active." if state is State.ACTIVE else ""),
            "info",
        )
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
    return redirect(url_for("agreements.show", slug=slug))


@bp.route("/institution/data")
@guard("read", "institution/data")
def transparency() -> ResponseReturnValue:
    """A contributor's view: agreements that include its data, and queries that touched it."""
    user = _user()
    db = get_db()
    inst = user.institution
    if inst is None:
        raise NotFound("you belong to no institution, so no data of yours is shared.")
    included = [
        (stored, _view(stored, agreement))
        for stored, agreement in services.agreements_of_institution(db, inst)
    ]
    spending = {stored.slug: gateway_services.spending(db, stored) for stored, _ in included}
    # The gateway records each answered query as `sandbox.*` with the agreement and the
    # institutions whose rows it read in the detail.
    queries = []
    for entry in db.scalars(
        select(AuditEntry)
        .where(AuditEntry.action.startswith("sandbox."))
        .order_by(AuditEntry.id.desc())
        .limit(500)
    ):
        detail = json.loads(entry.detail or "{}")
        if inst.slug in (detail.get("institutions") or []):
            queries.append((entry, detail))
    # Reviewed releases computed on our data: what left (or may leave) and for whom.
    slugs = {stored.id: stored.slug for stored, _ in included}
    released = [
        (found, slugs[found.agreement_id], db.get(User, found.researcher_id))
        for found in db.scalars(
            select(ReleaseRequest)
            .where(ReleaseRequest.agreement_id.in_(list(slugs)))
            .order_by(ReleaseRequest.id.desc())
        )
    ]
    readable = {found.id for found, _, _ in released if releases.may_see(db, user, found)}
    return render_template(
        "agreements/transparency.html",
        institution=inst,
        included=included,
        queries=queries,
        spending=spending,
        released=released,
        readable=readable,
    )


# The steward -------------------------------------------------------------------------------


@admin_bp.route("/agreements", methods=["GET", "POST"])
@guard("write", "admin/agreements")
def admin_index() -> ResponseReturnValue:
    db = get_db()
    text, status = "", 200
    if request.method == "POST":
        text = request.form.get("terms", "")
        try:
            stored = services.create(db, text, actor=actor())
            db.commit()
            flash(f"Draft agreement {stored.slug} created.", "info")
            return redirect(url_for("admin_agreements.admin_show", slug=stored.slug))
        except CleanroomError as err:
            db.rollback()
            flash(err.message, "error")
            status = err.status
    elif request.args.get("template"):
        text = services.template_text(request.args["template"])
    rows = []
    for stored in services.all_records(db):
        try:
            rows.append((stored, services.state_now(stored).value))
        except CleanroomError:
            rows.append((stored, f"{stored.state} (terms no longer load)"))
    return render_template(
        "agreements/admin_index.html", rows=rows, text=text, templates=services.templates()
    ), status


@admin_bp.route("/agreements/<slug>", methods=["GET", "POST"])
@guard("write", "admin/agreements/{slug}")
def admin_show(slug: str) -> ResponseReturnValue:
    db = get_db()
    stored = services.get(db, slug)
    text, status = stored.terms, 200
    if request.method == "POST":
        text = request.form.get("terms", "")
        try:
            changed = services.update_draft(db, stored, text, actor=actor())
            db.commit()
            flash("Draft saved." if changed else "Nothing changed.", "info")
            return redirect(url_for("admin_agreements.admin_show", slug=slug))
        except CleanroomError as err:
            db.rollback()
            stored = services.get(db, slug)
            flash(err.message, "error")
            status = err.status
    agreement = services.contract_of(stored)
    who = services.subjects(db, agreement)
    possible = [e for e in services.STEWARD_EVENTS if (agreement.state, Event(e)) in TRANSITIONS]
    rules = store.load_rules(db, [agreement.domain])
    return render_template(
        "agreements/admin_show.html",
        a=_view(stored, agreement),
        stored=stored,
        text=text,
        possible=possible,
        who=who,
        rules=rules,
        spending=gateway_services.spending(db, stored),
    ), status


@admin_bp.route(
    "/agreements/<slug>/<any(submit,revise,activate,suspend,resume,terminate):event>",
    methods=["POST"],
)
@guard("write", "admin/agreements/{slug}")
def admin_transition(slug: str, event: str) -> ResponseReturnValue:
    db = get_db()
    stored = services.get(db, slug)
    try:
        state = services.transition(db, stored, event, actor=actor())
        db.commit()
        flash(f"Agreement {slug}: {event} done; it is now {state.value.replace('_', ' ')}.", "info")
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
    return redirect(url_for("admin_agreements.admin_show", slug=slug))


@admin_bp.route("/access")
@guard("read", "admin/access")
def access() -> ResponseReturnValue:
    """Who can reach what: for a user, every object and action and through which
    agreement; for a CDM table, every user who can reach it."""
    db = get_db()
    engine = get_policy().policy
    username = request.args.get("user", "").strip().lower()
    table = request.args.get("table", "").strip()
    users = db.scalars(select(User).order_by(User.username)).all()
    by_id = {str(u.id): u for u in users}
    reach: list[Any] = []
    chosen = None
    if username:
        chosen = next((u for u in users if u.username == username), None)
        if chosen is None:
            flash(f"no user {username!r}.", "error")
        else:
            reach = [r for r in reachable(engine, user_subject(chosen.id)) if r.domain != "*"]
    holders: list[Any] = []
    if table:
        for r in who_can(engine, f"data/{table}"):
            if r.domain == "*" or not r.subject.startswith("user:"):
                continue
            holders.append((by_id.get(r.subject.removeprefix("user:")), r))
    return render_template(
        "agreements/access.html",
        users=users,
        username=username,
        chosen=chosen,
        reach=reach,
        table=table,
        holders=holders,
        tables=load_cdm().table_names,
        global_role=chosen.role if chosen else None,
        roles=[r.value for r in Role],
    )


# JSON API ----------------------------------------------------------------------------------


@api.route("")
@guard("read", "account", scope="read")
def api_list() -> ResponseReturnValue:
    user = _user()
    records = services.readable(get_policy(), user, services.all_records(get_db()))
    return jsonify({"agreements": [_view(r) for r in records]})


@api.route("/<slug>")
@guard("read", "agreements/{slug}", scope="read", domain=agreement_domain)
def api_show(slug: str) -> ResponseReturnValue:
    return jsonify(_view(services.get(get_db(), slug)))
