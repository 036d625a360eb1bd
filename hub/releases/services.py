"""Reviewed release, callable without a request (``docs/releases.md``).

- :func:`submit` / :func:`revise`: a researcher names an agreement and the outputs wanted
  (aggregate queries in the gateway's grammar, model fits), each with a purpose line. The
  hub computes them **exactly** on the real pool under the agreement's disclosure rules (the
  exact path: k, institutions, dominance, rounding, secondary suppression) and keeps them;
  the researcher sees the request's state, not its results.
- :func:`review`: independent output checkers (named by the steward) approve or reject;
  nobody reviews their own request; a revision resets the reviews.
- :func:`object_to` / :func:`resolve`: each contributing institution's admin may object
  within the agreement's review window (working days after approval); an objection blocks
  release until the steward upholds (rejecting the request) or dismisses it.
- :func:`settle`: an approved request whose window has passed with no open objection is
  released; :func:`results` gives its outputs, stamped with the request id and hashes.

Every change of state is a ledger entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from contracts.agreements import contributing_institutions
from hub.accounts.models import Institution, User
from hub.accounts.services import may
from hub.agreements import services as agreements
from hub.agreements.models import AgreementRecord
from hub.audit.services import record
from hub.db import Database, utcnow
from hub.errors import BadRequest, Conflict, Forbidden, NotFound
from hub.gateway import services as gateway_services
from hub.jobs import recheck as job_recheck
from hub.jobs.services import periodic
from hub.notices.services import notify
from hub.releases import acro_evidence
from hub.releases.models import (
    ReleaseComment,
    ReleaseObjection,
    ReleaseOutput,
    ReleaseRequest,
    ReleaseReview,
)
from hub.settings import Settings
from hub.storage import Storage
from policies.enforcer import user_subject
from policies.store import SyncedPolicy
from sandbox.gateway import Gateway, GatewayError
from sandbox.gateway import fit as exact_fit

MAX_OUTPUTS = 20
KINDS = ("query", "fit")
FIT_FIELDS = ("table", "model", "features", "target", "filters")
OPEN = ("in_review", "approved")  # states in which reviews and objections are taken


@dataclass(frozen=True)
class OutputSpec:
    """One output wanted: ``sql`` for a query, or ``fit`` (table, model, features, target,
    filters) for a model; ``purpose`` says what it is for."""

    kind: str
    purpose: str
    sql: str = ""
    fit: dict[str, Any] = field(default_factory=dict)

    def canonical(self) -> str:
        body = (
            {"kind": self.kind, "sql": self.sql}
            if self.kind == "query"
            else {
                "kind": self.kind,
                **{k: self.fit.get(k) for k in FIT_FIELDS},
            }
        )
        return json.dumps(body, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class Context:
    """What computing outputs needs: the gateway, the policy, the settings and the store."""

    gateway: Gateway
    policy: SyncedPolicy
    settings: Settings
    storage: Storage


def parse_outputs(raw: Any) -> list[OutputSpec]:
    """The outputs of a request body, or :class:`BadRequest` naming what is wrong."""
    if not isinstance(raw, list) or not raw:
        raise BadRequest(
            "`outputs` must be a non-empty list, e.g. "
            '[{"kind": "query", "sql": "SELECT …", "purpose": "Table 1"}].'
        )
    if len(raw) > MAX_OUTPUTS:
        raise BadRequest(f"a request may hold at most {MAX_OUTPUTS} outputs.")
    found = []
    for i, item in enumerate(raw, start=1):
        where = f"output {i}"
        if not isinstance(item, dict):
            raise BadRequest(f"{where}: must be an object.")
        kind = item.get("kind", "query")
        if kind not in KINDS:
            raise BadRequest(f"{where}: `kind` must be one of {', '.join(KINDS)}.")
        purpose = item.get("purpose")
        if not isinstance(purpose, str) or not purpose.strip():
            raise BadRequest(f"{where}: say what it is for in `purpose` (one line).")
        if kind == "query":
            sql = item.get("sql")
            if not isinstance(sql, str) or not sql.strip():
                raise BadRequest(f"{where}: a query needs `sql`.")
            if len(sql) > 20_000:
                raise BadRequest(f"{where}: the query is longer than 20,000 characters.")
            found.append(OutputSpec("query", purpose.strip()[:500], sql=sql.strip()))
        else:
            spec = {k: item.get(k) for k in FIT_FIELDS}
            if not isinstance(spec["table"], str) or not isinstance(spec["target"], str):
                raise BadRequest(f"{where}: a fit needs `table` and `target` (column names).")
            if spec["model"] not in exact_fit.KINDS:
                raise BadRequest(f"{where}: `model` must be one of {', '.join(exact_fit.KINDS)}.")
            features = spec["features"]
            if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
                raise BadRequest(f"{where}: `features` must be a list of column names.")
            if spec["filters"] is not None and not isinstance(spec["filters"], str):
                raise BadRequest(f"{where}: `filters` must be a SQL condition (text).")
            found.append(OutputSpec("fit", purpose.strip()[:500], fit=spec))
    return found


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _compute(
    db: Session,
    ctx: Context,
    request: ReleaseRequest,
    user: User,
    slug: str,
    specs: Sequence[OutputSpec],
) -> None:
    """(Re)compute the outputs exactly, replacing the request's outputs."""
    actions = {"query"} | ({"fit"} if any(s.kind == "fit" for s in specs) else set())
    scopes = {
        action: gateway_services.scope(
            db, ctx.policy, ctx.settings, ctx.storage, user, slug, action=action
        )
        for action in sorted(actions)
    }
    request.outputs.clear()
    db.flush()
    units: dict[int, list[tuple[int | None, frozenset[Any]]]] = {}
    views = None
    k = scopes["query"].agreement.disclosure.k
    for position, spec in enumerate(specs, start=1):
        scope = scopes[spec.kind]
        disclosure = scope.agreement.disclosure
        output = ReleaseOutput(
            position=position, kind=spec.kind, spec=spec.canonical(), purpose=spec.purpose
        )
        rules = {
            "k": disclosure.k,
            "min_institutions": disclosure.min_institutions,
            "dominance": [disclosure.dominance_n, disclosure.dominance_percent],
            "rounding_base": disclosure.rounding_base,
        }
        try:
            views = gateway_services.views(ctx.gateway, scope)
            if spec.kind == "query":
                answer = ctx.gateway.run(views, disclosure, spec.sql).as_dict()
                behind = ctx.gateway.patients_behind(views, spec.sql, answer.get("rows", []))
                evidence = {
                    "rules": rules,
                    "cells": len(answer.get("rows", [])),
                    "suppressed": answer.get("suppressed", []),
                    "rounded": answer.get("rounded"),
                    "institutions": scope.institutions,
                    "behind": [[len(b[0]), len(b[1])] if b else None for b in behind],
                }
                units[position] = [(r, b[0]) for r, b in enumerate(behind) if b]
                evidence["acro"] = acro_evidence.check_query(
                    ctx.gateway, views, spec.sql, disclosure
                )
            else:
                fitted = exact_fit.fit(
                    ctx.gateway,
                    views,
                    disclosure,
                    kind=spec.fit["model"],
                    table=spec.fit["table"],
                    features=spec.fit["features"],
                    target=spec.fit["target"],
                    filters=spec.fit.get("filters"),
                )
                answer = fitted.as_dict()
                units[position] = [
                    (None, exact_fit.patients(ctx.gateway, views, **_fit_args(spec)))
                ]
                n = int(answer.get("n", 0))
                evidence = {
                    "rules": rules,
                    "n": n,
                    "residual_df": n - len(spec.fit["features"]) - 1,
                    "institutions": scope.institutions,
                }
                evidence["acro"] = acro_evidence.check_fit(ctx.gateway, views, spec.fit, disclosure)
        except GatewayError as err:
            output.refused = err.message
            output.evidence = json.dumps({"rules": rules})
        else:
            stamped = {"request": request.id, "output": position, **answer}
            output.result = json.dumps(stamped, sort_keys=True, default=str)
            output.result_hash = _digest(stamped)
            output.evidence = json.dumps(evidence, sort_keys=True, default=str)
        request.outputs.append(output)
    db.flush()
    if views is not None:
        _note_overlaps(db, ctx.gateway, views, request, units, k)
        db.flush()


def _fit_args(spec: OutputSpec) -> dict[str, Any]:
    return {
        "table": spec.fit["table"],
        "features": spec.fit["features"],
        "target": spec.fit["target"],
        "filters": spec.fit.get("filters"),
    }


MAX_OVERLAP_ROWS = 500  # rows per output compared for differencing


def singled_out(a: frozenset[Any], b: frozenset[Any], k: int) -> int | None:
    """How many patients the difference of two overlapping cells singles out, when fewer
    than ``k``: the smaller non-empty one-sided difference (``a - b`` or ``b - a``). None when
    the cells share no patient, hold the same patients, or differ by k or more."""
    if not a & b:
        return None
    small = [n for n in (len(a - b), len(b - a)) if 0 < n < k]
    return min(small) if small else None


def _earlier_units(
    db: Session, gateway: Gateway, views: Any, request: ReleaseRequest
) -> list[tuple[ReleaseOutput, list[tuple[int | None, frozenset[Any]]]]]:
    """The patients behind every row of the researcher's outputs already approved or
    released under the same agreement, recomputed on today's pool."""
    earlier = db.scalars(
        select(ReleaseOutput)
        .join(ReleaseRequest, ReleaseOutput.request_id == ReleaseRequest.id)
        .where(
            ReleaseRequest.researcher_id == request.researcher_id,
            ReleaseRequest.agreement_id == request.agreement_id,
            ReleaseRequest.state.in_(("approved", "released")),
            ReleaseRequest.id != request.id,
            ReleaseOutput.refused == "",
        )
        .order_by(ReleaseOutput.id.desc())
        .limit(100)
    )
    found: list[tuple[ReleaseOutput, list[tuple[int | None, frozenset[Any]]]]] = []
    for output in earlier:
        spec = json.loads(output.spec)
        try:
            if output.kind == "query":
                rows = (json.loads(output.result) or {}).get("rows", [])[:MAX_OVERLAP_ROWS]
                behind = gateway.patients_behind(views, spec["sql"], rows)
                pairs: list[tuple[int | None, frozenset[Any]]] = [
                    (r, b[0]) for r, b in enumerate(behind) if b
                ]
                found.append((output, pairs))
            else:
                fit_spec = OutputSpec("fit", "", fit=spec)
                found.append(
                    (output, [(None, exact_fit.patients(gateway, views, **_fit_args(fit_spec)))])
                )
        except GatewayError:
            continue  # no longer computable on this agreement's pool: nothing to compare
    return found


def _note_overlaps(
    db: Session,
    gateway: Gateway,
    views: Any,
    request: ReleaseRequest,
    units: dict[int, list[tuple[int | None, frozenset[Any]]]],
    k: int,
) -> None:
    """Warn the checkers, in each output's evidence (``overlaps``), where a row's patients and
    those of a row of another output (of this request, or approved or released earlier for the
    same researcher under the same agreement) differ by fewer than k patients: subtracting
    one from the other would single them out (differencing across releases)."""
    others: list[tuple[int, int, list[tuple[int | None, frozenset[Any]]]]] = [
        (request.id, position, rows) for position, rows in units.items()
    ]
    others += [
        (o.request_id, o.position, rows) for o, rows in _earlier_units(db, gateway, views, request)
    ]
    for output in request.outputs:
        mine = units.get(output.position, [])[:MAX_OVERLAP_ROWS]
        found = []
        for other_request, other_position, rows in others:
            if other_request == request.id and other_position == output.position:
                continue
            for row, patients in mine:
                for other_row, other_patients in rows[:MAX_OVERLAP_ROWS]:
                    n = singled_out(patients, other_patients, k)
                    if n is None:
                        continue
                    found.append(
                        {
                            "row": row,
                            "request": other_request,
                            "output": other_position,
                            "earlier_row": other_row,
                            "patients": n,
                            "note": (
                                f"{_cell(row)} and {_cell(other_row)} of output "
                                f"{other_position} of request {other_request} differ by {n} "
                                f"patient{'s' if n != 1 else ''} (fewer than k = {k}): their "
                                "difference would single them out."
                            ),
                        }
                    )
        if found:
            evidence = json.loads(output.evidence or "{}")
            evidence["overlaps"] = found[:200]
            output.evidence = json.dumps(evidence, sort_keys=True, default=str)


def _cell(row: int | None) -> str:
    return "the fit" if row is None else f"row {row + 1}"


def submit(
    db: Session, ctx: Context, user: User, slug: str, title: str, specs: Sequence[OutputSpec]
) -> ReleaseRequest:
    """A new request under agreement ``slug``, computed and waiting for its reviews."""
    stored = _agreement(db, slug)
    request = ReleaseRequest(
        agreement_id=stored.id,
        researcher_id=user.id,
        title=(title or "").strip()[:200] or f"Release under {slug}",
        state="in_review",
        revision=1,
        reason="",
    )
    db.add(request)
    db.flush()
    _compute(db, ctx, request, user, slug, specs)
    _log(db, request, f"user:{user.username}", "release.request", {"outputs": len(specs)})
    what = f"{request.title!r} by {user.username}, {len(specs)} output(s) under {slug}"
    notify(
        db,
        _checkers(db, request),
        f"Release request {request.id} to review",
        f"{what}. Two independent approvals release it; you cannot review your own.",
        _link(request),
    )
    notify(
        db,
        _admins(db, request),
        f"Release request {request.id} computed on your data",
        f"{what}. Read what would leave and object, if you must, before the review window "
        "that follows its approval ends.",
        _link(request),
    )
    return request


def revise(
    db: Session, ctx: Context, request: ReleaseRequest, user: User, specs: Sequence[OutputSpec]
) -> ReleaseRequest:
    """Replace the outputs: a new revision, computed anew; earlier reviews no longer count."""
    if request.researcher_id != user.id:
        raise Forbidden("only the researcher who asked may change a request.")
    if request.state not in OPEN:
        raise Conflict(f"release request {request.id} is {request.state}; it cannot change.")
    stored = db.get(AgreementRecord, request.agreement_id)
    assert stored is not None
    request.revision += 1
    request.state = "in_review"
    request.approved_at = request.window_ends_at = None
    request.updated_at = utcnow()
    _compute(db, ctx, request, user, stored.slug, specs)
    _log(
        db,
        request,
        f"user:{user.username}",
        "release.revise",
        {"revision": request.revision, "outputs": len(specs)},
    )
    notify(
        db,
        [*_checkers(db, request), *_admins(db, request)],
        f"Release request {request.id} changed: revision {request.revision}",
        "Its outputs were changed and computed anew; earlier reviews no longer count.",
        _link(request),
    )
    return request


def may_see(db: Session, user: User, request: ReleaseRequest, action: str = "read") -> bool:
    """Whether ``user`` may ``action`` (read, object, resolve, review) the request: its
    researcher (read), output checkers, the steward, and the admins of the institutions
    whose data it was computed on — as :mod:`policies` decides for each."""
    obj = f"releases/{request.id}"
    if action == "review":
        return may_review(user, request)
    if may(user, action, obj, owner=user.id == request.researcher_id):
        return True
    # As a contributing institution's admin: "owner" = its institution's data is in it.
    if not may(user, action, f"{obj}/contributing", owner=True):
        return False
    return user.institution is not None and user.institution.slug in contributing(db, request)


def visible(db: Session, user: User) -> list[ReleaseRequest]:
    """The requests ``user`` may read, newest first."""
    found = db.scalars(select(ReleaseRequest).order_by(ReleaseRequest.id.desc()))
    return [r for r in found if may_see(db, user, r)]


def may_review(user: User, request: ReleaseRequest) -> bool:
    """Output checkers review, never their own requests."""
    if user.id == request.researcher_id:
        return False
    return may(user, "review", f"releases/{request.id}")


def review(
    db: Session,
    settings: Settings,
    request: ReleaseRequest,
    reviewer: User,
    decision: str,
    comment: str = "",
    notes: Mapping[int, str] | None = None,
) -> ReleaseRequest:
    """One independent review of the current revision. ``settings.release_approvals``
    approvals approve the request (its objection window starts); one rejection rejects it
    (the comment says why). ``notes`` are the reviewer's comments per output position."""
    if reviewer.id == request.researcher_id:
        raise Forbidden("nobody reviews their own release request.")
    if not may_review(reviewer, request):
        raise Forbidden("only output checkers named by the steward review release requests.")
    if decision not in ("approve", "reject"):
        raise BadRequest("decide `approve` or `reject`.")
    if request.state != "in_review":
        raise Conflict(f"release request {request.id} is {request.state}, not in review.")
    if decision == "reject" and not comment.strip():
        raise BadRequest("say why the request is rejected: the researcher reads it.")
    if any(
        r.reviewer_id == reviewer.id and r.revision == request.revision for r in request.reviews
    ):
        raise Conflict("you have reviewed this revision already.")
    positions = {o.position for o in request.outputs}
    for position in sorted(notes or {}):
        if position not in positions:
            raise BadRequest(f"there is no output {position} in request {request.id}.")
    request.reviews.append(
        ReleaseReview(
            reviewer_id=reviewer.id,
            revision=request.revision,
            decision=decision,
            comment=comment.strip()[:2000],
        )
    )
    for position, text in sorted((notes or {}).items()):
        if text.strip():
            request.comments.append(_comment(request, reviewer, position, text))
    now = utcnow()
    request.updated_at = now
    if decision == "reject":
        request.state = "rejected"
        request.reason = comment.strip()[:2000]
    elif len(approvals(request)) >= settings.release_approvals:
        request.state = "approved"
        request.approved_at = now
        stored = db.get(AgreementRecord, request.agreement_id)
        assert stored is not None
        days = agreements.contract_of(stored).disclosure.review_window_days
        request.window_ends_at = add_working_days(now, days)
    db.flush()
    _log(
        db,
        request,
        f"user:{reviewer.username}",
        f"release.{decision}",
        {"revision": request.revision, "state": request.state},
    )
    if request.state == "rejected":
        notify(
            db,
            [request.researcher],
            f"Release request {request.id} rejected",
            f"An output checker rejected it: {request.reason}",
            _link(request),
        )
    elif request.state == "approved":
        ends = f"{request.window_ends_at:%A %d %B %Y, %H:%M} UTC" if request.window_ends_at else ""
        notify(
            db,
            [request.researcher],
            f"Release request {request.id} approved",
            f"It is released after the contributing institutions' review window ends ({ends}), "
            "unless one of them objects.",
            _link(request),
        )
        notify(
            db,
            _admins(db, request),
            f"Release request {request.id} approved: object by {ends}",
            "Its outputs leave Cleanroom when the window ends unless you object on its page.",
            _link(request),
        )
    return request


def comment(
    db: Session, request: ReleaseRequest, user: User, position: int, text: str
) -> ReleaseComment:
    """A comment on output ``position`` (0: the whole request) by anyone who may read the
    request and comment, as :mod:`policies` decides: its researcher, the checkers, the
    steward and the contributing institutions' admins."""
    if not may_see(db, user, request, "comment"):
        raise Forbidden("only those who take part in a release request comment on it.")
    if position != 0 and position not in {o.position for o in request.outputs}:
        raise BadRequest(f"there is no output {position} in request {request.id}.")
    if not text.strip():
        raise BadRequest("write the comment first.")
    found = _comment(request, user, position, text)
    request.comments.append(found)
    db.flush()
    _log(db, request, f"user:{user.username}", "release.comment", {"output": position})
    return found


def _comment(request: ReleaseRequest, user: User, position: int, text: str) -> ReleaseComment:
    return ReleaseComment(
        position=position, revision=request.revision, author_id=user.id, text=text.strip()[:4000]
    )


def approvals(request: ReleaseRequest) -> list[ReleaseReview]:
    """The approvals that count: of the current revision."""
    return [
        r for r in request.reviews if r.revision == request.revision and r.decision == "approve"
    ]


def add_working_days(start: datetime, days: int) -> datetime:
    """``start`` plus ``days`` working days (Monday to Friday)."""
    found, left = start, days
    while left > 0:
        found += timedelta(days=1)
        if found.weekday() < 5:
            left -= 1
    return found


def contributing(db: Session, request: ReleaseRequest) -> list[str]:
    """The institutions whose data the request's outputs were computed on."""
    stored = db.get(AgreementRecord, request.agreement_id)
    assert stored is not None
    return list(contributing_institutions(agreements.contract_of(stored)))


def object_to(db: Session, request: ReleaseRequest, admin: User, text: str) -> ReleaseObjection:
    """A contributing institution's admin objects; the release waits for the steward."""
    institution = admin.institution
    if institution is None or not may_see(db, admin, request, "object"):
        raise Forbidden(
            "only an admin of an institution whose data is in the request may object to it."
        )
    if request.state not in OPEN:
        raise Conflict(f"release request {request.id} is {request.state}; objections are closed.")
    if request.state == "approved" and request.window_ends_at and utcnow() > request.window_ends_at:
        raise Conflict("the review window of this request has ended.")
    if not text.strip():
        raise BadRequest("say what the objection is: the steward decides on it.")
    objection = ReleaseObjection(
        institution_id=institution.id,
        raised_by_id=admin.id,
        text=text.strip()[:4000],
        resolution="",
        note="",
    )
    request.objections.append(objection)
    request.updated_at = utcnow()
    db.flush()
    _log(
        db,
        request,
        f"user:{admin.username}",
        "release.object",
        {"institution": institution.slug, "objection": objection.id},
    )
    notify(
        db,
        _stewards(db),
        f"Objection to release request {request.id}",
        f"{institution.name} objects: {objection.text}",
        _link(request),
    )
    notify(
        db,
        [request.researcher],
        f"Release request {request.id}: an institution objects",
        "Release waits until the steward decides on the objection.",
        _link(request),
    )
    return objection


def open_objections(request: ReleaseRequest) -> list[ReleaseObjection]:
    return [o for o in request.objections if not o.resolution]


def resolve(
    db: Session,
    request: ReleaseRequest,
    objection: ReleaseObjection,
    steward: User,
    resolution: str,
    note: str = "",
) -> ReleaseRequest:
    """The steward decides an objection: ``upheld`` rejects the request (the note says
    why); ``dismissed`` lets it go on."""
    if not may(steward, "resolve", f"releases/{request.id}"):
        raise Forbidden("the steward resolves objections.")
    if objection.request_id != request.id or objection.resolution:
        raise Conflict("that objection is not open on this request.")
    if resolution not in ("upheld", "dismissed"):
        raise BadRequest("resolve an objection as `upheld` or `dismissed`.")
    if not note.strip():
        raise BadRequest("say why: the institution and the researcher read it.")
    now = utcnow()
    objection.resolution = resolution
    objection.resolved_by_id = steward.id
    objection.resolved_at = now
    objection.note = note.strip()[:4000]
    if resolution == "upheld" and request.state in OPEN:
        request.state = "rejected"
        request.reason = f"an objection was upheld: {objection.note}"
    request.updated_at = now
    db.flush()
    _log(
        db,
        request,
        f"user:{steward.username}",
        f"release.objection_{resolution}",
        {"objection": objection.id, "state": request.state},
    )
    notify(
        db,
        [request.researcher, objection.raised_by],
        f"Objection to release request {request.id} {resolution}",
        f"The steward {resolution} the objection: {objection.note}",
        _link(request),
    )
    return request


def still_granted(db: Session, request: ReleaseRequest) -> bool:
    """Does the agreement still stand for the request's researcher at the moment its outputs
    would leave? Asked of the policy as the database holds it now (an agreement suspended,
    terminated or expired, or a researcher no longer named or disabled, says no); while it
    does not, an approved request waits instead of being released."""
    stored = db.get(AgreementRecord, request.agreement_id)
    if stored is None or not request.researcher.is_active:
        return False
    domain = f"agreement:{stored.slug}"
    return job_recheck.policy_now(db, domain).allowed(
        user_subject(request.researcher_id), "read", f"agreements/{stored.slug}", domain=domain
    )


def settle(db: Session, request: ReleaseRequest, now: datetime | None = None) -> bool:
    """Release an approved request whose window has passed with no open objection, while
    its agreement still stands for its researcher (:func:`still_granted`); True when it was
    released now."""
    now = now or utcnow()
    if (
        request.state != "approved"
        or request.window_ends_at is None
        or now < request.window_ends_at
        or open_objections(request)
    ):
        return False
    if not still_granted(db, request):
        _hold(db, request, now)
        return False
    request.state = "released"
    request.reason = ""
    request.released_at = now
    request.updated_at = now
    db.flush()
    _log(db, request, "system", "release.released", {"revision": request.revision})
    notify(
        db,
        [request.researcher],
        f"Release request {request.id} released",
        "Its outputs are ready: download them from its page, or `released()` in the client.",
        _link(request),
    )
    notify(
        db,
        _admins(db, request),
        f"Release request {request.id} released",
        "Its outputs computed on your data have left Cleanroom.",
        _link(request),
    )
    return True


#: Why an approved request waits (shown on its page; recorded once per hold).
HELD = (
    "Held: its review window has passed, but the agreement no longer stands for its researcher "
    "(suspended, ended, or the researcher no longer named or active); it is released when "
    "the agreement stands again"
)


def _hold(db: Session, request: ReleaseRequest, now: datetime) -> None:
    """Say once, in the ledger and to the researcher, that an approved request is held; the
    workers settle each minute, so a hold already said is not said again."""
    if request.reason == HELD:
        return
    request.reason = HELD
    request.updated_at = now
    db.flush()
    _log(db, request, "system", "release.held", {"revision": request.revision})
    notify(
        db,
        [request.researcher],
        f"Release request {request.id} held",
        "Its review window has passed, but its agreement no longer stands for you: its "
        "outputs leave only once it does again.",
        _link(request),
    )


@periodic("release.settle", seconds=60)
def settle_due(database: Database, _settings: Settings | None = None) -> int:
    """Release every approved request whose window has passed with no open objection (the
    workers run this each minute; reading a request settles it too). How many were."""
    with database.session() as s:
        due = s.scalars(
            select(ReleaseRequest)
            .where(ReleaseRequest.state == "approved", ReleaseRequest.window_ends_at <= utcnow())
            .with_for_update(skip_locked=True)
        )
        return sum(settle(s, request) for request in due)


def withdraw(db: Session, request: ReleaseRequest, user: User, reason: str = "") -> None:
    if request.researcher_id != user.id:
        raise Forbidden("only the researcher who asked may withdraw a request.")
    if request.state not in OPEN:
        raise Conflict(f"release request {request.id} is {request.state}; it cannot be withdrawn.")
    request.state = "withdrawn"
    request.reason = reason.strip()[:2000] or "withdrawn by the researcher"
    request.updated_at = utcnow()
    db.flush()
    _log(db, request, f"user:{user.username}", "release.withdraw", {})


def results(request: ReleaseRequest) -> list[dict[str, Any]]:
    """The released outputs (each stamped with the request id and its result hash);
    refused before release."""
    if request.state != "released":
        raise Forbidden(
            f"release request {request.id} is {request.state}: its results leave the hub only "
            "once it is released."
        )
    return [
        {
            "position": o.position,
            "kind": o.kind,
            "purpose": o.purpose,
            "result": json.loads(o.result) if o.result else None,
            "result_hash": o.result_hash,
            "refused": o.refused or None,
        }
        for o in request.outputs
    ]


def summary(request: ReleaseRequest, slug: str) -> dict[str, Any]:
    """What the researcher sees before release: the request and its state, never a result."""
    return {
        "id": request.id,
        "agreement": slug,
        "title": request.title,
        "state": request.state,
        "revision": request.revision,
        "reason": request.reason or None,
        "approvals": len(approvals(request)),
        "window_ends_at": request.window_ends_at.isoformat() if request.window_ends_at else None,
        "released_at": request.released_at.isoformat() if request.released_at else None,
        "comments": [
            {
                "output": c.position or None,
                "revision": c.revision,
                "by": c.author.username,
                "at": c.at.isoformat(),
                "text": c.text,
            }
            for c in request.comments
        ],
        "outputs": [
            {
                "position": o.position,
                "kind": o.kind,
                "purpose": o.purpose,
                "spec": json.loads(o.spec),
                "computed": not o.refused,
                "refused": o.refused or None,
            }
            for o in request.outputs
        ],
    }


def get(db: Session, request_id: int) -> ReleaseRequest:
    found = db.get(ReleaseRequest, request_id)
    if found is None:
        raise NotFound(f"no release request {request_id}.")
    return found


def of_researcher(db: Session, user: User) -> list[ReleaseRequest]:
    return list(
        db.scalars(
            select(ReleaseRequest)
            .where(ReleaseRequest.researcher_id == user.id)
            .order_by(ReleaseRequest.id.desc())
        )
    )


def _agreement(db: Session, slug: str) -> AgreementRecord:
    stored = db.scalar(select(AgreementRecord).where(AgreementRecord.slug == slug))
    if stored is None:
        raise gateway_services.refusal("query", slug)
    return stored


def _link(request: ReleaseRequest) -> str:
    return f"/releases/{request.id}"


def _checkers(db: Session, request: ReleaseRequest) -> list[User]:
    """The output checkers who may review ``request`` (never its author)."""
    # A data selection (who to notify), narrowed first to those named output checkers; the
    # policy decides who of them may review.
    found = db.scalars(select(User).where(User.is_output_checker.is_(True)))
    return [u for u in found if may_review(u, request)]


def _admins(db: Session, request: ReleaseRequest) -> list[User]:
    """The admins of the institutions whose data ``request`` was computed on."""
    slugs = contributing(db, request)
    found = db.scalars(
        select(User)
        .join(Institution, User.institution_id == Institution.id)
        .where(Institution.slug.in_(slugs))
    )
    return [u for u in found if may_see(db, u, request, "object")]


def _stewards(db: Session) -> list[User]:
    return [u for u in db.scalars(select(User)) if may(u, "resolve", "releases/0")]


def _log(
    db: Session, request: ReleaseRequest, actor: str, action: str, detail: dict[str, Any]
) -> None:
    record(
        db,
        actor=actor,
        action=action,
        target=f"release:{request.id}",
        detail={"agreement_id": request.agreement_id, **detail},
    )
