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

import yaml
from flask import Blueprint, flash, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup
from sqlalchemy import select

from contracts.agreements import TRANSITIONS, Agreement, Event, State
from contracts.cdm import load_cdm
from hub.accounts.models import Institution, Role, User
from hub.agreements import forms, services
from hub.agreements.models import AgreementRecord
from hub.audit.models import AuditEntry
from hub.db import get_db
from hub.errors import CleanroomError, NotFound, web_text
from hub.gateway import services as gateway_services
from hub.releases import services as releases
from hub.releases.models import ReleaseRequest
from hub.web import actor, agreement_domain, current_user, get_policy, guard, may
from policies import store
from policies.enforcer import user_subject
from policies.explorer import reachable, who_can

bp = Blueprint("agreements", __name__)
admin_bp = Blueprint("admin_agreements", __name__, url_prefix="/admin")
api = Blueprint("agreements_api", __name__, url_prefix="/api/v1/agreements")


@bp.app_template_filter("web_text")
def web_text_filter(message: str) -> str:
    """An error message for a page (the error page uses it): no CLI hints, no stutter."""
    return web_text(str(message))


@bp.app_template_filter("ticks")
def ticks(message: str) -> Markup:
    """A validator's message for a page: `name` in code type, everything else escaped."""
    parts = str(message).split("`")
    return Markup("").join(
        Markup("<code>{}</code>").format(p) if i % 2 else Markup.escape(p)
        for i, p in enumerate(parts)
    )


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


def _our_signature(agreement: Agreement, user: User) -> dict[str, Any] | None:
    """The user's institution's signature of the current terms: who signed and when."""
    if user.institution is None:
        return None
    for sig in agreement.valid_signatures():
        if sig.institution == user.institution.slug:
            signer = get_db().get(User, int(sig.signed_by)) if sig.signed_by.isdigit() else None
            return {
                "by_me": signer is not None and signer.id == user.id,
                "by": (signer.display_name or signer.username) if signer else "a former admin",
                "at": sig.signed_at.strftime("%Y-%m-%d %H:%M UTC"),
            }
    return None


def _awaits_me(user: User, stored: AgreementRecord, agreement: Agreement) -> bool:
    """Awaiting this user's signature: the policy lets them sign and their institution has
    not signed the current terms yet."""
    return _may(user, "sign", stored.slug) and _our_signature(agreement, user) is None


@bp.route("/agreements")
@guard("read", "portal")
def mine() -> ResponseReturnValue:
    user = _user()
    records = services.readable(get_policy(), user, services.all_records(get_db()))
    rows = []
    for r in records:
        agreement = services.contract_of(r)
        rows.append(
            (
                r,
                _view(r, agreement),
                _awaits_me(user, r, agreement),
                _our_signature(agreement, user),
            )
        )
    waiting = [(r, a) for r, a, awaits, _ in rows if awaits]
    return render_template("agreements/mine.html", rows=rows, waiting=waiting)


@bp.route("/agreements/<slug>")
@guard("read", "agreements/{slug}", domain=agreement_domain)
def show(slug: str) -> ResponseReturnValue:
    user = _user()
    db = get_db()
    stored = services.get(db, slug)
    agreement = services.contract_of(stored)
    view = _view(stored, agreement)
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
        may_sign=_awaits_me(user, stored, agreement),
        signature=_our_signature(agreement, user),
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
            f"You signed agreement {slug} for your institution."
            + (
                " Every party has signed: it is active."
                if state is State.ACTIVE
                else " It becomes active when every party has signed."
            ),
            "info",
        )
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
    return redirect(url_for("agreements.show", slug=slug))


# What the transparency log lists: the actions that computed something on pooled data.
ACTIVITY = {
    "sandbox.query": "Query",
    "sandbox.fit": "Model fit",
    "sandbox.synthetic": "Synthetic rows downloaded",
    "release.request": "Release requested",
    "release.released": "Exact result released",
}


def _question(action: str, detail: dict[str, Any], target: str = "") -> str:
    """The question asked, readable: the SQL, or the fit in words."""
    if action == "sandbox.query":
        return str(detail.get("sql") or "—")
    if action == "sandbox.fit":
        features = ", ".join(str(f) for f in detail.get("features") or []) or "no features"
        kind = {"linear": "linear", "logistic": "logistic"}.get(str(detail.get("kind")), "a")
        text = f"{kind} regression of {detail.get('target')} on {features} in {detail.get('table')}"
        if detail.get("filters"):
            text += f", where {detail['filters']}"
        return text
    if action == "sandbox.synthetic":
        rows = detail.get("rows")
        return f"{rows if rows is not None else 'some'} synthetic rows of {detail.get('table')}"
    if action.startswith("release."):
        number = target.removeprefix("release:")
        outputs = detail.get("outputs")
        text = f"reviewed release request {number}"
        return text + (f" ({outputs} output{'s' if outputs != 1 else ''})" if outputs else "")
    return action


def _suppressed_words(suppressed: Any) -> str:
    """What was withheld, in words: "2 cells withheld: fewer than 10 patients"."""
    counts: dict[str, int] = {}
    if isinstance(suppressed, dict):
        counts = {str(k): int(v) for k, v in suppressed.items() if isinstance(v, int | float)}
    elif isinstance(suppressed, list):
        for s in suppressed:
            reason = str(s.get("reason") or "withheld") if isinstance(s, dict) else str(s)
            counts[reason] = counts.get(reason, 0) + 1
    if not counts:
        return "nothing"
    return "; ".join(
        f"{n} {'cell' if n == 1 else 'cells'} withheld: {reason}" for reason, n in counts.items()
    )


def _answers_by_hash(db: Any, agreement_ids: list[int]) -> dict[str, dict[str, Any]]:
    """The remembered answers of the agreements, by the result hash the ledger records."""
    from hub.gateway.models import GatewayAnswer
    from sandbox.gateway.engine import digest

    found: dict[str, dict[str, Any]] = {}
    if not agreement_ids:
        return found
    for answer in db.scalars(
        select(GatewayAnswer)
        .where(GatewayAnswer.agreement_id.in_(agreement_ids))
        .order_by(GatewayAnswer.id.desc())
        .limit(1000)
    ):
        try:
            body = json.loads(answer.answer)
        except ValueError:
            continue
        found[str(body.get("result_hash") or digest(body))] = body
    return found


@bp.route("/institution/data")
@guard("read", "institution/data")
def transparency() -> ResponseReturnValue:
    """A contributor's view: agreements that include its data, and every computation on it."""
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
    slugs = {stored.id: stored.slug for stored, _ in included}
    titles = {stored.slug: stored.title for stored, _ in included}
    tables_of = {a["id"]: list(a["tables"]) for _, a in included}
    answers = _answers_by_hash(db, list(slugs))
    names = {u.username: u.display_name or u.username for u in db.scalars(select(User))}
    # The gateway records each answer with the agreement and the institutions whose rows it
    # read; synthetic rows come from the pool of an agreement that includes our data;
    # release requests name their agreement.
    activity = []
    for entry in db.scalars(
        select(AuditEntry)
        .where(AuditEntry.action.in_(list(ACTIVITY)))
        .order_by(AuditEntry.id.desc())
        .limit(1000)
    ):
        detail = json.loads(entry.detail or "{}")
        if entry.action.startswith("release."):
            slug = slugs.get(detail.get("agreement_id"))
        else:
            slug = entry.target.removeprefix("agreement:")
            if slug not in titles:
                continue
            if entry.action != "sandbox.synthetic" and inst.slug not in (
                detail.get("institutions") or []
            ):
                continue
        if slug is None:
            continue
        if entry.action == "sandbox.synthetic" or detail.get("table"):
            tables = [str(detail.get("table"))]
        else:
            tables = [t for t in tables_of.get(slug, []) if t in str(detail.get("sql") or "")]
        answer = answers.get(str(detail.get("result_hash") or ""))
        suppressed: Any = detail.get("suppressed")
        if suppressed is None and answer is not None:
            suppressed = answer.get("suppressed")
        epsilon = detail.get("epsilon")
        activity.append(
            {
                "at": entry.at[:16].replace("T", " "),
                "who": names.get(entry.actor.removeprefix("user:"))
                or entry.actor.removeprefix("user:"),
                "what": ACTIVITY[entry.action],
                "agreement": slug,
                "agreement_title": titles.get(slug, slug),
                "tables": ", ".join(tables) or "—",
                "question": _question(entry.action, detail, entry.target),
                "is_sql": entry.action == "sandbox.query",
                "suppressed": _suppressed_words(suppressed)
                if entry.action in ("sandbox.query", "sandbox.fit")
                else "—",
                "epsilon": (
                    "none (asked before)"
                    if detail.get("remembered")
                    else (f"{epsilon:g}" if isinstance(epsilon, int | float) else "—")
                ),
            }
        )
    # Reviewed releases computed on our data: what left (or may leave) and for whom.
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
        activity=activity,
        spending=spending,
        released=released,
        readable=readable,
    )


# The steward -------------------------------------------------------------------------------


def _form_context(db: Any) -> dict[str, Any]:
    """What the agreement form offers: the hub's institutions, its researchers, the CDM."""
    return {
        "institutions": db.scalars(select(Institution).order_by(Institution.name)).all(),
        "researchers": _nameable(db),
        "cdm": load_cdm(),
        "disclosure_fields": forms.DISCLOSURE_FIELDS,
        "disclosure_flags": forms.DISCLOSURE_FLAGS,
    }


def _known(db: Any) -> tuple[list[str], list[str]]:
    insts = list(db.scalars(select(Institution.slug)))
    people = [u.username for u in _nameable(db)]
    return insts, people


def _nameable(db: Any) -> list[User]:
    """Who may be named a researcher on an agreement: the active users the policy lets use
    the sandbox (query), by name."""
    found = db.scalars(
        select(User).where(User.is_active.is_(True)).order_by(User.display_name, User.username)
    )
    return [u for u in found if may(u, "query", "sandbox")]


def _description(text: str) -> str:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError:
        return ""
    value = raw.get("description") if isinstance(raw, dict) else None
    return value.strip() if isinstance(value, str) else ""


def _for_the_web(template: str, name: str) -> str:
    """A template for the YAML editor: its opening comment (written for the command line)
    replaced by one for the page."""
    lines = template.splitlines()
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    head = (
        f"# From the template {name}. Replace the example institutions and researchers with "
        "the hub's own.\n# Disclosure terms may be made stricter, never weaker than the "
        "steward's floor.\n"
    )
    return head + "\n".join(lines) + "\n"


def _posted() -> tuple[str, str, forms.AgreementForm | None]:
    """The posted agreement: (mode, YAML text, the form when it came from the form)."""
    mode = request.form.get("mode") or ("yaml" if "terms" in request.form else "form")
    if mode == "yaml":
        return "yaml", request.form.get("terms", ""), None
    form = forms.from_request(request.form)
    return "form", forms.to_yaml(form), form


@admin_bp.route("/agreements", methods=["GET", "POST"])
@guard("write", "admin/agreements")
def admin_index() -> ResponseReturnValue:
    """All agreements, and a new one: the form (from a template or blank), or YAML."""
    db = get_db()
    mode = request.args.get("mode", "form")
    form, text, status = forms.blank(), "", 200
    errors: dict[str, list[str]] = {}
    chosen = request.args.get("template", "")
    if request.method == "POST":
        mode, text, posted = _posted()
        form = posted or form
        try:
            stored = services.create(db, text, actor=actor())
            db.commit()
            flash(
                f"Draft agreement {stored.slug} created. Check it, then send it for signatures.",
                "info",
            )
            return redirect(url_for("admin_agreements.admin_show", slug=stored.slug))
        except CleanroomError as err:
            db.rollback()
            errors = forms.field_errors(err.message)
            status = err.status
    elif chosen:
        text = _for_the_web(services.template_text(chosen), chosen)
        insts, people = _known(db)
        form = forms.from_agreement(
            services.parse(text),
            description=_description(text),
            institutions=insts,
            researchers=people,
        )
    rows = []
    for stored in services.all_records(db):
        try:
            rows.append((stored, services.state_now(stored).value))
        except CleanroomError:
            rows.append((stored, f"{stored.state} (terms no longer load)"))
    return render_template(
        "agreements/admin_index.html",
        rows=rows,
        text=text,
        form=form,
        errors=errors,
        mode=mode,
        chosen=chosen,
        templates=services.templates(),
        **_form_context(db),
    ), status


@admin_bp.route("/agreements/<slug>", methods=["GET", "POST"])
@guard("write", "admin/agreements/{slug}")
def admin_show(slug: str) -> ResponseReturnValue:
    db = get_db()
    stored = services.get(db, slug)
    text, status = stored.terms, 200
    errors: dict[str, list[str]] = {}
    form: forms.AgreementForm | None = None
    mode = request.args.get("mode", "form")
    if request.method == "POST":
        mode, text, form = _posted()
        try:
            changed = services.update_draft(db, stored, text, actor=actor())
            db.commit()
            flash("Draft saved." if changed else "Nothing changed.", "info")
            return redirect(url_for("admin_agreements.admin_show", slug=slug))
        except CleanroomError as err:
            db.rollback()
            stored = services.get(db, slug)
            errors = forms.field_errors(err.message)
            status = err.status
    agreement = services.contract_of(stored)
    if form is None:
        form = forms.from_agreement(agreement, description=_description(stored.terms))
    who = services.subjects(db, agreement)
    possible = [e for e in services.STEWARD_EVENTS if (agreement.state, Event(e)) in TRANSITIONS]
    rules = store.load_rules(db, [agreement.domain])
    return render_template(
        "agreements/admin_show.html",
        a=_view(stored, agreement),
        stored=stored,
        text=text,
        form=form,
        errors=errors,
        mode=mode,
        possible=possible,
        confirm=CONFIRM,
        may_delete=services.may_delete(db, stored),
        who=who,
        rules=rules,
        grants=services.grants(db, rules),
        spending=gateway_services.spending(db, stored),
        **_form_context(db),
    ), status


# Steps that need a second, deliberate click (a page of its own: works without JavaScript).
CONFIRM = {
    "suspend": (
        "Suspend",
        "Every named researcher loses access to the pooled data on their next request, "
        "everywhere, until you resume the agreement. Nothing is deleted.",
    ),
    "terminate": (
        "Terminate",
        "The agreement ends for good: researchers lose access at once and it can never be "
        "resumed. Its history stays in the ledger. To share again, write a new agreement.",
    ),
    "delete": (
        "Delete the draft",
        "The draft disappears from the list. It was never sent for signatures, so nobody "
        "has agreed to it; the ledger records that you deleted it.",
    ),
}


@admin_bp.route("/agreements/<slug>/confirm/<any(suspend,terminate,delete):event>", methods=["GET"])
@guard("write", "admin/agreements/{slug}")
def admin_confirm(slug: str, event: str) -> ResponseReturnValue:
    """Ask before a step that cannot be taken back lightly."""
    stored = services.get(get_db(), slug)
    label, consequence = CONFIRM[event]
    return render_template(
        "agreements/confirm.html",
        stored=stored,
        event=event,
        label=label,
        consequence=consequence,
    )


@admin_bp.route(
    "/agreements/<slug>/<any(submit,revise,activate,suspend,resume,terminate):event>",
    methods=["POST"],
)
@guard("write", "admin/agreements/{slug}")
def admin_transition(slug: str, event: str) -> ResponseReturnValue:
    db = get_db()
    stored = services.get(db, slug)
    if event in CONFIRM and request.form.get("confirmed") != "yes":
        return redirect(url_for("admin_agreements.admin_confirm", slug=slug, event=event))
    try:
        state = services.transition(db, stored, event, actor=actor())
        db.commit()
        flash(f"Agreement {slug} is now {state.value.replace('_', ' ')}.", "info")
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
    return redirect(url_for("admin_agreements.admin_show", slug=slug))


@admin_bp.route("/agreements/<slug>/delete", methods=["POST"])
@guard("write", "admin/agreements/{slug}")
def admin_delete(slug: str) -> ResponseReturnValue:
    """Delete a draft never sent for signatures (others are terminated)."""
    db = get_db()
    stored = services.get(db, slug)
    if request.form.get("confirmed") != "yes":
        return redirect(url_for("admin_agreements.admin_confirm", slug=slug, event="delete"))
    try:
        services.delete_draft(db, stored, actor=actor())
        db.commit()
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
        return redirect(url_for("admin_agreements.admin_show", slug=slug))
    flash(f"Draft agreement {slug} deleted.", "info")
    return redirect(url_for("admin_agreements.admin_index"))


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
    titles = {r.slug: r.title for r in services.all_records(db)}

    def words(r: Any) -> dict[str, Any]:
        slug = r.domain.removeprefix("agreement:")
        return {
            "agreement": titles.get(slug, slug),
            "slug": slug,
            "role": r.role.removeprefix("role:").replace("_", " "),
            "what": services.object_words(r.obj),
            "actions": services.actions_words(r.actions),
            "window": services.window_words(r.window),
            "open_now": r.open_now,
            "raw": r,
        }

    reach = [words(r) for r in reach]
    holders = [(u, words(r)) for u, r in holders]
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
