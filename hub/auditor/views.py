"""The auditor's pages and API (docs/auditor.md).

``/auditor``: a period's ledger events counted the Five Safes way, every agreement with its
state and spending, release requests by state, the ledger's latest checkpoint;
``/auditor/agreements/<slug>``: one agreement's terms, signatures, compiled policy in words
and spending, read-only; ``/auditor/export.jsonl`` and ``/auditor/export.csv``: the period's
events with their proofs of inclusion; ``GET /api/v1/auditor/events``: the same as JSON Lines
for a token with the ``read`` scope. Every export is itself recorded in the ledger
(``export.download``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import func, select

from hub.agreements import services as agreements
from hub.audit.models import AuditEntry
from hub.audit.words import action_words
from hub.auditor import services
from hub.db import get_database, get_db
from hub.exports import record_export
from hub.gateway import services as gateway
from hub.gateway.models import PrivacyBudget
from hub.releases.models import ReleaseRequest
from hub.web import actor, guard
from policies import store

bp = Blueprint("auditor", __name__, url_prefix="/auditor")
api = Blueprint("auditor_api", __name__, url_prefix="/api/v1/auditor")
bp.add_app_template_global(action_words, "action_words")


def _period() -> services.Period:
    return services.period(request.args.get("since"), request.args.get("until"))


def _latest_checkpoint(db: Any) -> dict[str, Any] | None:
    from hub.audit import checkpoints

    latest = checkpoints.latest(db)
    return checkpoints.document_of(latest) if latest is not None else None


@bp.route("")
@guard("read", "auditor")
def index() -> ResponseReturnValue:
    db = get_db()
    span = _period()
    found = services.counts(db, span)
    spent = {
        agreement_id: (float(total or 0.0), int(answers or 0))
        for agreement_id, total, answers in db.execute(
            select(
                PrivacyBudget.agreement_id,
                func.sum(PrivacyBudget.spent),
                func.sum(PrivacyBudget.answers),
            ).group_by(PrivacyBudget.agreement_id)
        )
    }
    rows = []
    for stored in agreements.all_records(db):
        agreement = agreements.contract_of(stored)
        total, answers = spent.get(stored.id, (0.0, 0))
        rows.append(
            {
                "slug": stored.slug,
                "title": stored.title,
                "state": stored.state,
                "parties": [p.institution for p in agreement.parties],
                "researchers": len(agreement.researchers),
                "epsilon_spent": total,
                "answers": answers,
            }
        )
    releases: Counter[str] = Counter()
    for state, n in db.execute(
        select(ReleaseRequest.state, func.count()).group_by(ReleaseRequest.state)
    ):
        releases[str(state)] = int(n)
    return render_template(
        "auditor/index.html",
        span=span,
        counts=found,
        questions=services.SAFE_QUESTIONS,
        agreements=rows,
        releases=releases,
        checkpoint=_latest_checkpoint(db),
        entries=db.scalar(select(func.count()).select_from(AuditEntry)) or 0,
    )


@bp.route("/agreements/<slug>")
@guard("read", "auditor/agreements")
def agreement(slug: str) -> ResponseReturnValue:
    """One agreement as the auditor reads it: terms, signatures, the compiled policy in
    words, spending. Nothing on the page changes anything."""
    from hub.agreements.views import _view

    db = get_db()
    stored = agreements.get(db, slug)
    contract = agreements.contract_of(stored)
    rules = store.load_rules(db, [contract.domain])
    return render_template(
        "auditor/agreement.html",
        a=_view(stored, contract),
        stored=stored,
        grants=agreements.grants(db, rules),
        rules=rules,
        spending=gateway.spending(db, stored),
    )


def _export(kind: str) -> Response:
    """Record the export, then stream the period's events from a session of the stream's
    own (no transaction held between pages)."""
    span = _period()
    db = get_db()
    record_export(
        db,
        actor=actor(),
        target="ledger",
        fmt=kind,
        detail={"since": span.since.isoformat(), "until": span.until.isoformat(), "safes": True},
    )
    db.commit()
    database = get_database()

    def body() -> Iterator[str]:
        with database.sessionmaker() as s:
            items = services.events(s, span)
            yield from (services.jsonl(items) if kind == "jsonl" else services.csv_rows(items))
            s.rollback()

    name = f"cleanroom-ledger-{span.since}-{span.until}.{kind}"
    return Response(
        body(),
        mimetype="application/x-ndjson" if kind == "jsonl" else "text/csv",
        headers={"Content-Disposition": f"attachment; filename={name}"},
    )


@bp.route("/export.jsonl")
@guard("export", "auditor")
def export_jsonl() -> ResponseReturnValue:
    return _export("jsonl")


@bp.route("/export.csv")
@guard("export", "auditor")
def export_csv() -> ResponseReturnValue:
    return _export("csv")


@api.route("/events")
@guard("export", "auditor", scope="read")
def api_events() -> ResponseReturnValue:
    """``GET /api/v1/auditor/events?since=YYYY-MM-DD&until=YYYY-MM-DD[&format=csv]``."""
    return _export("csv" if request.args.get("format") == "csv" else "jsonl")
