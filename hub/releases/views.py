"""``/api/v1/releases``: a researcher's release requests (bearer tokens with the ``sandbox``
scope, as the notebooks hold). The researcher sees each request's state and its outputs'
specifications; the exact results only once the request is released."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

from flask import (
    Blueprint,
    Response,
    current_app,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.accounts.models import User
from hub.agreements import services as agreement_services
from hub.agreements.models import AgreementRecord
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, Forbidden, NotFound
from hub.exports import SafeWriter, record_export, xlsx_bytes
from hub.gateway import services as gateway_services
from hub.gateway.views import app_gateway
from hub.releases import services
from hub.releases.models import ReleaseComment, ReleaseObjection, ReleaseOutput, ReleaseRequest
from hub.web import actor, app_settings, current_user, get_policy, guard
from sandbox.gateway import GatewayError
from sandbox.gateway import fit as exact_fit
from sandbox.gateway.sql import check_query

api = Blueprint("releases_api", __name__, url_prefix="/api/v1/releases")


def _context() -> services.Context:
    return services.Context(
        gateway=app_gateway(),
        policy=get_policy(),
        settings=app_settings(),
        storage=current_app.extensions["cleanroom.storage"],
    )


def _own(user: Any, request_id: int) -> bool:
    found = get_db().get(ReleaseRequest, request_id)
    return found is not None and found.researcher_id == user.id


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(
            "send a JSON object: "
            '{"agreement": "…", "title": "…", "outputs": [{"kind": "query", "sql": "…", '
            '"purpose": "…"}]}.'
        )
    return body


def _summary(found: ReleaseRequest) -> dict[str, Any]:
    stored = get_db().get(AgreementRecord, found.agreement_id)
    body = services.summary(found, stored.slug if stored else "")
    if found.state == "released":
        body["results"] = services.results(found)
    return body


def _settled(found: ReleaseRequest) -> ReleaseRequest:
    """Release it now if its window has passed (the state is kept current on every read)."""
    db = get_db()
    services.settle(db, found)
    db.commit()  # released, or held (said once), or nothing to do
    return found


@api.route("", methods=["POST"])
@guard("create", "releases", scope="sandbox")
def create() -> ResponseReturnValue:
    """``{"agreement", "title"?, "outputs": [...]}`` → the request, computed and in review."""
    body = _body()
    slug = body.get("agreement")
    if not isinstance(slug, str) or not slug.strip():
        raise BadRequest("name the agreement: `agreement`.")
    specs = services.parse_outputs(body.get("outputs"))
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.submit(db, _context(), user, slug, str(body.get("title") or ""), specs)
    db.commit()
    return jsonify(_summary(found)), 201


@api.route("", methods=["GET"])
@guard("read", "releases", scope="sandbox")
def mine() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return jsonify(
        {"requests": [_summary(_settled(r)) for r in services.of_researcher(get_db(), user)]}
    )


@api.route("/<int:request_id>", methods=["GET"])
@guard("read", "releases/{request_id}", scope="sandbox", owner=_own)
def show(request_id: int) -> ResponseReturnValue:
    """The request's state; with its results once released."""
    return jsonify(_summary(_settled(services.get(get_db(), request_id))))


@api.route("/<int:request_id>/revise", methods=["POST"])
@guard("revise", "releases/{request_id}", scope="sandbox", owner=_own)
def revise(request_id: int) -> ResponseReturnValue:
    """``{"outputs": [...]}`` → a new revision, computed anew; earlier reviews no longer
    count."""
    specs = services.parse_outputs(_body().get("outputs"))
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.revise(db, _context(), services.get(db, request_id), user, specs)
    db.commit()
    return jsonify(_summary(found))


@api.route("/<int:request_id>/comments", methods=["POST"])
@guard("comment", "releases/{request_id}", scope="sandbox", owner=_own)
def add_comment(request_id: int) -> ResponseReturnValue:
    """``{"output"?: position (0 or absent: the whole request), "text"}`` → the request,
    its comments included."""
    body = _body()
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    position = body.get("output") or 0
    if not isinstance(position, int) or isinstance(position, bool):
        raise BadRequest("`output` is an output's position (a number), or 0 for the request.")
    services.comment(db, found, user, position, str(body.get("text") or ""))
    db.commit()
    return jsonify(_summary(found)), 201


@api.route("/<int:request_id>/withdraw", methods=["POST"])
@guard("withdraw", "releases/{request_id}", scope="sandbox", owner=_own)
def withdraw(request_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    body = request.get_json(silent=True)
    reason = body.get("reason", "") if isinstance(body, dict) else ""
    services.withdraw(db, found, user, str(reason))
    db.commit()
    return jsonify(_summary(found))


# The portal: the request page the reviewers, the institutions and the steward decide on ---

bp = Blueprint("releases", __name__, url_prefix="/releases")


def _page_request(request_id: int, action: str = "read") -> ReleaseRequest:
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    if not services.may_see(db, user, found, action):
        raise Forbidden(f"you may not {action} release request {request_id}.")
    return found


@bp.route("")
@guard("read", "releases")
def index() -> ResponseReturnValue:
    """The requests you may read: to review, from your institution's data, or your own."""
    user = current_user()
    assert user is not None
    db = get_db()
    rows = []
    for found in services.visible(db, user):
        _settled(found)
        stored = db.get(AgreementRecord, found.agreement_id)
        rows.append((found, stored.slug if stored else "", services.may_review(user, found)))
    return render_template(
        "releases/index.html", rows=rows, needed=app_settings().release_approvals
    )


# The portal form: a researcher asks for outputs, or changes a request's outputs ----------

FORM_BLOCKS = 3  # output blocks on a fresh form; "Add another output" adds more
_BLOCK_KEY = re.compile(r"^outputs-(\d+)-")
_WHERE = re.compile(r"^output (\d+): ")


@dataclass
class Block:
    """One output block of the form, as the researcher typed it (kept when the form comes
    back with a message)."""

    index: int
    kind: str = "query"
    purpose: str = ""
    sql: str = ""
    table: str = ""
    model: str = "linear"
    features: str = ""
    target: str = ""
    filters: str = ""
    error: str = ""

    @property
    def blank(self) -> bool:
        typed = (self.purpose, self.sql, self.table, self.features, self.target, self.filters)
        return not any(v.strip() for v in typed)

    @property
    def is_fit(self) -> bool:
        # Without JavaScript both halves show: fit fields filled and no SQL mean a fit.
        return self.kind == "fit" or (
            not self.sql.strip() and bool(self.table.strip() or self.target.strip())
        )

    def raw(self) -> dict[str, Any]:
        """The output as the API's JSON has it, for :func:`services.parse_outputs`."""
        if not self.is_fit:
            return {"kind": "query", "sql": self.sql, "purpose": self.purpose}
        return {
            "kind": "fit",
            "table": self.table.strip(),
            "model": self.model,
            "features": [f.strip() for f in self.features.split(",") if f.strip()],
            "target": self.target.strip(),
            "filters": self.filters.strip() or None,
            "purpose": self.purpose,
        }

    @classmethod
    def of_output(cls, index: int, output: ReleaseOutput) -> Block:
        spec = json.loads(output.spec)
        if output.kind == "query":
            return cls(index, "query", output.purpose, sql=spec.get("sql") or "")
        return cls(
            index,
            "fit",
            output.purpose,
            table=spec.get("table") or "",
            model=spec.get("model") or "linear",
            features=", ".join(spec.get("features") or []),
            target=spec.get("target") or "",
            filters=spec.get("filters") or "",
        )

    @classmethod
    def of_form(cls) -> list[Block]:
        indices = sorted({int(m.group(1)) for k in request.form if (m := _BLOCK_KEY.match(k))})
        names = [f.name for f in fields(cls) if f.name not in ("index", "error")]
        return [
            cls(i, **{n: request.form.get(f"outputs-{i}-{n}", "") for n in names})
            for i in indices[: services.MAX_OUTPUTS * 2]
        ]


class FormProblem(BadRequest):
    """What is wrong with the form, placed next to the outputs it concerns."""


def _agreements_of(user: User) -> list[dict[str, Any]]:
    """The agreements ``user`` may query now, as the sandbox's agreement list decides:
    each with its title, the tables and whether model fits are allowed."""
    return [
        {
            "slug": q.stored.slug,
            "title": q.stored.title,
            "tables": q.tables,
            "fits": q.agreement.disclosure.allow_model_fitting,
            "k": q.agreement.disclosure.k,
        }
        for q in agreement_services.queryable(get_db(), get_policy(), user)
    ]


def _checked_specs(
    ctx: services.Context, user: User, slug: str, blocks: list[Block]
) -> list[services.OutputSpec]:
    """The outputs of the filled blocks, each parsed as the API parses it and put through
    the gateway's own checkers before anything runs: a query that does not parse or asks
    what real data never answers comes back to the form, next to its output, instead of
    reaching the checkers as "not computed". Every block's problem is said at once.
    Raises :class:`FormProblem`."""
    filled = [b for b in blocks if not b.blank]
    if not filled:
        raise FormProblem("Fill in at least one output: a query or a model fit, with its purpose.")
    parsed: list[tuple[Block, services.OutputSpec]] = []
    for block in filled:
        if block.is_fit and not (block.table.strip() and block.target.strip()):
            block.error = "A model fit needs its table and its target column."
            continue
        try:
            (spec,) = services.parse_outputs([block.raw()])
        except BadRequest as err:
            block.error = _sentence(_WHERE.sub("", err.message))
        else:
            parsed.append((block, spec))
    db = get_db()
    for action in sorted({spec.kind for _, spec in parsed}):
        scope = gateway_services.scope(
            db, ctx.policy, ctx.settings, ctx.storage, user, slug, action=action
        )
        views = gateway_services.views(ctx.gateway, scope)
        for block, spec in parsed:
            if spec.kind != action:
                continue
            try:
                if spec.kind == "query":
                    check_query(spec.sql, views.names, views.identifiers)
                else:
                    exact_fit.check_request(
                        views,
                        spec.fit["table"],
                        spec.fit["features"],
                        spec.fit["target"],
                        spec.fit.get("filters"),
                    )
            except GatewayError as err:
                block.error = f"Cleanroom cannot compute this: {err.message}."
    if any(b.error for b in filled):
        raise FormProblem("Some outputs need mending: see the messages beside them.")
    try:  # all together: what holds for the request as a whole (how many outputs)
        return services.parse_outputs([b.raw() for b in filled])
    except BadRequest as err:
        raise _placed(err.message, filled) from None


def _placed(message: str, filled: list[Block]) -> FormProblem:
    """A service's "output N: …" message put beside the Nth filled block."""
    found = _WHERE.match(message)
    if found and 1 <= int(found.group(1)) <= len(filled):
        filled[int(found.group(1)) - 1].error = _sentence(message[found.end() :])
        return FormProblem("Some outputs need mending: see the messages beside them.")
    return FormProblem(_sentence(message))


# The API's field names, as the form labels them.
_LABELS = {
    "`purpose`": "the Purpose field",
    "`sql`": "the Query field",
    "`table`": "the Table field",
    "`target`": "the Target column field",
    "`model`": "the Model field",
    "`features`": "the Features field",
    "`filters`": "the condition field",
    "`kind`": "the kind of output",
}


def _sentence(message: str) -> str:
    """A service's message as the form says it: the form's labels for the API's names."""
    for name, label in _LABELS.items():
        message = message.replace(name, label)
    return message[:1].upper() + message[1:]


def _form(
    blocks: list[Block],
    *,
    found: ReleaseRequest | None = None,
    slug: str = "",
    title: str = "",
    problem: str = "",
) -> ResponseReturnValue:
    """The form page; a refusal shows it again with 200 like the portal's other forms (a
    4xx page would read as a broken resource in the browser's console)."""
    user = current_user()
    assert user is not None
    choices = _agreements_of(user)
    if found is None and not slug and len(choices) == 1:
        slug = choices[0]["slug"]
    chosen = [c for c in choices if c["slug"] == slug] if found is not None else choices
    return render_template(
        "releases/form.html",
        request_=found,
        blocks=blocks,
        choices=choices,
        tables=sorted({t for c in chosen for t in c["tables"]}),
        models=exact_fit.KINDS,
        slug=slug,
        title=title,
        problem=problem,
        max_outputs=services.MAX_OUTPUTS,
    )


def _more(blocks: list[Block]) -> list[Block]:
    """The blocks and one more, blank (the form's "Add another output" without JavaScript)."""
    if len(blocks) >= services.MAX_OUTPUTS:
        return blocks
    return [*blocks, Block(max((b.index for b in blocks), default=0) + 1)]


def _send(
    user: User,
    blocks: list[Block],
    slug: str,
    *,
    title: str = "",
    found: ReleaseRequest | None = None,
) -> ResponseReturnValue:
    """The form posted: one more blank output, or the outputs checked and sent as a new
    request (``found`` None) or as a revision of ``found``. A refusal shows the form again,
    input kept, each message beside the output it concerns."""
    if request.form.get("action") == "more":
        return _form(_more(blocks), found=found, slug=slug, title=title)
    db = get_db()
    try:
        if not slug:
            raise FormProblem("Choose the agreement the outputs are computed under.")
        ctx = _context()
        specs = _checked_specs(ctx, user, slug, blocks)
        if found is None:
            found = services.submit(db, ctx, user, slug, title, specs)
            sent = (
                f"Release request {found.id} is sent to the output checkers. Its results "
                "appear here once it is released."
            )
        else:
            services.revise(db, ctx, found, user, specs)
            sent = (
                f"Revision {found.revision} is sent to the output checkers: earlier reviews "
                "no longer count."
            )
    except CleanroomError as err:
        db.rollback()
        problem = err.message if isinstance(err, FormProblem) else _sentence(err.message)
        return _form(blocks, found=found, slug=slug, title=title, problem=problem)
    db.commit()
    flash(sent, "info")
    return redirect(url_for("releases.page", request_id=found.id))


@bp.route("/new", methods=["GET", "POST"])
@guard("create", "releases")
def new() -> ResponseReturnValue:
    """The researcher's form: an agreement, a title, and outputs (queries or model fits,
    each with its purpose)."""
    if request.method == "GET":
        blocks = [Block(i) for i in range(1, FORM_BLOCKS + 1)]
        return _form(blocks, slug=request.args.get("agreement", ""))
    user = current_user()
    assert user is not None
    form = request.form
    slug, title = form.get("agreement", "").strip(), form.get("title", "").strip()
    return _send(user, Block.of_form() or [Block(1)], slug, title=title)


@bp.route("/<int:request_id>/revise", methods=["GET", "POST"])
@guard("revise", "releases/{request_id}", owner=_own)
def change(request_id: int) -> ResponseReturnValue:
    """The author changes the outputs: the same form, filled with the current ones. The
    change starts a new revision; earlier reviews no longer count."""
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    if found.state not in services.OPEN:
        flash(f"Release request {request_id} is {found.state}: it can no longer change.", "error")
        return redirect(url_for("releases.page", request_id=request_id))
    stored = db.get(AgreementRecord, found.agreement_id)
    slug = stored.slug if stored else ""
    if request.method == "GET":
        blocks = [Block.of_output(o.position, o) for o in found.outputs]
        return _form(blocks, found=found, slug=slug)
    return _send(user, Block.of_form() or [Block(1)], slug, found=found)


@bp.route("/form.js")
@guard("create", "releases")
def form_script() -> ResponseReturnValue:
    """The form's small progressive script (the portal's CSP allows scripts from the hub
    only): it shows the half of each output block its kind needs and adds blocks in place."""
    return Response(render_template("releases/form.js"), mimetype="text/javascript")


@bp.route("/releases.css")
@guard("read", "releases")
def stylesheet() -> ResponseReturnValue:
    """The release pages' few styles beyond the portal's (badges, flagged cells, warnings);
    the CSP allows stylesheets from the hub only."""
    return Response(render_template("releases/releases.css"), mimetype="text/css")


@bp.route("/<int:request_id>")
@guard("read", "releases")
def page(request_id: int) -> ResponseReturnValue:
    """One request: each output with its table or coefficients, the rules applied, the
    cells withheld, ACRO's findings, overlaps with earlier releases, the institutions behind
    it; the reviews, objections and decisions."""
    user = current_user()
    assert user is not None
    db = get_db()
    found = _settled(_page_request(request_id))
    stored = db.get(AgreementRecord, found.agreement_id)
    author = db.get(User, found.researcher_id)
    is_author = user.id == found.researcher_id
    # The researcher sees results only once released; reviewers, institutions and the
    # steward see them to decide.
    shows_results = found.state == "released" or not is_author
    evidences = {o.position: json.loads(o.evidence or "{}") for o in found.outputs}
    # The states of the requests the differencing check compares with, to name them.
    named = {
        item["request"]
        for evidence in evidences.values()
        for item in evidence.get("overlaps") or []
        if isinstance(item, dict) and isinstance(item.get("request"), int)
    }
    states: dict[int, str] = {}
    if named and not is_author:
        picked = select(ReleaseRequest.id, ReleaseRequest.state)
        states = {i: state for i, state in db.execute(picked.where(ReleaseRequest.id.in_(named)))}
    outputs = []
    for o in found.outputs:
        result = json.loads(o.result) if (o.result and shows_results) else None
        evidence = evidences[o.position]
        outputs.append(
            {
                "output": o,
                "spec": json.loads(o.spec),
                "result": result,
                "evidence": evidence,
                # What the checkers weigh; the researcher never sees it (it speaks of the
                # patients behind cells and of other researchers' releases).
                "acro": None if is_author else acro_findings(evidence, o.kind, result),
                "overlaps": [] if is_author else overlaps_in_words(evidence, found.id, states),
                "withheld": _withheld(evidence),
            }
        )
    return render_template(
        "releases/show.html",
        request_=found,
        slug=stored.slug if stored else "",
        author=author,
        outputs=outputs,
        approvals=services.approvals(found),
        needed=app_settings().release_approvals,
        held=found.state == "approved" and found.reason == services.HELD,
        may_review=services.may_review(user, found) and found.state == "in_review",
        reviewed=any(
            r.reviewer_id == user.id and r.revision == found.revision for r in found.reviews
        ),
        may_object=found.state in services.OPEN and services.may_see(db, user, found, "object"),
        may_resolve=services.may_see(db, user, found, "resolve"),
        may_change=is_author
        and found.state in services.OPEN
        and services.may_see(db, user, found, "revise"),
        is_author=is_author,
        may_comment=services.may_see(db, user, found, "comment"),
        comments=_comments_by_output(found),
        open_objections=services.open_objections(found),
        users={u.id: u for u in db.scalars(select(User))},
    )


# What the checkers read: ACRO's findings and overlaps with earlier releases, in words -----

ACRO_STATUS = {
    # status -> (badge class of releases.css, what it means in words)
    "fail": ("fail", "fail: ACRO found disclosive cells"),
    "review": ("review", "review: ACRO asks a checker to judge"),
    "pass": ("pass", "pass: ACRO found nothing to flag"),
    "not checked": ("not-checked", "not checked"),
}


def _plain(value: Any) -> str:
    """A key value as text, so that ACRO's ``7.0`` or ``"7"`` meets the table's ``7``."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int | float) or (isinstance(value, str) and value.strip()):
        try:
            number = float(value)
        except ValueError:
            return str(value).strip()
        return str(int(number)) if number.is_integer() else repr(number)
    return "" if value is None else str(value)


def _matching_row(keys: Any, rows: Sequence[Sequence[Any]]) -> int | None:
    """The one table row whose key values ACRO names: the leading cells first (GROUP BY
    keys come first), else any cells; None when no single row matches."""
    if not isinstance(keys, list | tuple) or not keys:
        return None
    wanted = [_plain(k) for k in keys]
    leading = [i for i, r in enumerate(rows) if [_plain(v) for v in r[: len(wanted)]] == wanted]
    if len(leading) == 1:
        return leading[0]
    anywhere = [i for i, r in enumerate(rows) if set(wanted) <= {_plain(v) for v in r}]
    return anywhere[0] if len(anywhere) == 1 else None


def acro_findings(
    evidence: dict[str, Any], kind: str, result: dict[str, Any] | None
) -> dict[str, Any] | None:
    """``evidence["acro"]`` ready for the page: the status as a badge, the summary lines,
    and each flagged cell placed on the table shown (``marks`` by ``"row:column"``,
    ``rows`` by row) or, when no single row matches, listed in words. None for a request
    computed before ACRO's check."""
    found = evidence.get("acro")
    if not isinstance(found, dict):
        return None
    status = str(found.get("status") or ("review" if found.get("checked") else "not checked"))
    badge, words = ACRO_STATUS.get(status, ("review", status))
    if result and kind == "query":
        columns = [str(c) for c in result.get("columns", [])]
        rows: list[list[Any]] = result.get("rows", [])
    elif result:
        columns = ["term"]
        rows = [[name] for name in (result.get("coefficients") or {})]
    else:
        columns, rows = [], []
    marks: dict[str, list[str]] = {}
    by_row: dict[int, list[str]] = {}
    cells = []
    for cell in found.get("cells") or []:
        if not isinstance(cell, dict):
            continue
        names = [str(f) for f in cell.get("findings") or []] or ["flagged"]
        keys: list[Any] = cell["row"] if isinstance(cell.get("row"), list) else []
        column = str(cell.get("column") or "")
        at = _matching_row(keys, rows)
        if at is not None:
            by_row.setdefault(at, []).extend(
                f"{column}: {n}" if column and kind == "query" else n for n in names
            )
            if column in columns:
                marks.setdefault(f"{at}:{columns.index(column)}", []).extend(names)
            elif kind != "query":
                marks.setdefault(f"{at}:0", []).extend(names)
        key = ", ".join(_plain(k) for k in keys)
        where = (f"Row {at + 1}" + (f" ({key})" if key else "")) if at is not None else "The row"
        if at is None and key:
            where += f" {key}"
        where += f", column {column}" if column else ""
        cells.append(
            {
                "where": where if at is not None else f"{where} (not in the table above)",
                "findings": names,
                "detail": str(cell.get("detail") or ""),
                "placed": at is not None,
            }
        )
    return {
        "tool": str(found.get("tool") or "ACRO"),
        "status": status,
        "badge": badge,
        "words": words,
        "note": str(found.get("note") or ""),
        "summary": [str(line) for line in found.get("summary") or []],
        "cells": cells,
        "marks": marks,
        "rows": by_row,
    }


def _patients(n: int) -> str:
    return f"{n} patient" if n == 1 else f"{n} patients"


def overlaps_in_words(
    evidence: dict[str, Any], this: int, states: dict[int, str] | None = None
) -> list[dict[str, Any]]:
    """``evidence["overlaps"]`` as sentences a data manager reads, each with the request it
    names (``this`` one's own other outputs, or an earlier one, called by its ``states``):
    "Row 3 differs from row 2 of output 1 of released request #4 by 3 patients (fewer than
    k = 10): their difference would single them out." Empty for a request computed before
    the check."""
    found = evidence.get("overlaps")
    if not isinstance(found, list):
        return []
    k = (evidence.get("rules") or {}).get("k")
    said = []
    for item in found:
        if not isinstance(item, dict) or not isinstance(item.get("request"), int):
            continue
        row, earlier, other = item.get("row"), item.get("earlier_row"), item["request"]
        patients = int(item.get("patients") or 0)
        mine = f"Row {row + 1}" if isinstance(row, int) else "This output"
        that = f"row {earlier + 1} of " if isinstance(earlier, int) else ""
        state = (states or {}).get(other, "")
        whose = (
            "of this request"
            if other == this
            else f"of {state.replace('_', ' ') + ' ' if state else ''}request #{other}"
        )
        few = f" (fewer than k = {k})" if isinstance(k, int) and patients < k else ""
        said.append(
            {
                "text": f"{mine} differs from {that}output {item.get('output')} {whose} by "
                f"{_patients(patients)}{few}: their difference would single them out.",
                "request": other,
                "output": item.get("output"),
                "same": other == this,
                "note": str(item.get("note") or ""),
            }
        )
    return said


def _comments_by_output(found: ReleaseRequest) -> dict[int, list[ReleaseComment]]:
    """The request's comments by output position (0: the whole request), oldest first."""
    by: dict[int, list[ReleaseComment]] = {}
    for c in found.comments:
        by.setdefault(c.position, []).append(c)
    return by


def _withheld(evidence: dict[str, Any]) -> dict[str, str]:
    """The reason each withheld cell carries, by ``"row:column name"`` (shown on the cell)."""
    return {
        f"{s.get('row')}:{s.get('column')}": str(s.get("reason") or "")
        for s in evidence.get("suppressed") or []
        if isinstance(s, dict) and s.get("row") is not None
    }


def _decide(
    request_id: int, act: Callable[[Session, ReleaseRequest, User], str]
) -> ResponseReturnValue:
    """Run one decision on the request (``act`` returns what to tell the user); a refusal
    is shown on the page and changes nothing."""
    user = current_user()
    assert user is not None
    db = get_db()
    found = services.get(db, request_id)
    try:
        message = act(db, found, user)
    except CleanroomError as err:
        db.rollback()
        flash(err.message, "error")
    else:
        db.commit()
        flash(message, "info")
    return redirect(url_for("releases.page", request_id=request_id))


@bp.route("/<int:request_id>/review", methods=["POST"])
@guard("read", "releases")
def review(request_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        form = request.form
        notes = {
            o.position: form.get(f"note-{o.position}", "")
            for o in found.outputs
            if form.get(f"note-{o.position}", "").strip()
        }
        services.review(
            db,
            app_settings(),
            found,
            user,
            form.get("decision", ""),
            form.get("comment", ""),
            notes=notes,
        )
        return f"Your review is recorded: the request is {found.state.replace('_', ' ')}."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/comment", methods=["POST"])
@guard("read", "releases")
def comment(request_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        try:
            position = int(request.form.get("output", "0"))
        except ValueError:
            raise BadRequest("choose what the comment is about.") from None
        services.comment(db, found, user, position, request.form.get("text", ""))
        return "Your comment is added."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/object", methods=["POST"])
@guard("read", "releases")
def object_(request_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        services.object_to(db, found, user, request.form.get("text", ""))
        return "Your objection is recorded: nothing is released until the steward decides."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/objections/<int:objection_id>", methods=["POST"])
@guard("read", "releases")
def resolve(request_id: int, objection_id: int) -> ResponseReturnValue:
    def act(db: Session, found: ReleaseRequest, user: User) -> str:
        objection = db.get(ReleaseObjection, objection_id)
        if objection is None:
            raise NotFound(f"no objection {objection_id}.")
        form = request.form
        services.resolve(
            db, found, objection, user, form.get("resolution", ""), form.get("note", "")
        )
        return f"The objection is {objection.resolution}."

    return _decide(request_id, act)


@bp.route("/<int:request_id>/<int:position>.<any(csv,xlsx):fmt>")
@guard("read", "releases")
def download(request_id: int, position: int, fmt: str) -> ResponseReturnValue:
    """A released table as CSV or XLSX (formula-safe), stamped with the request and its
    result hash."""
    found = _page_request(request_id)
    for item in services.results(found):
        if item["position"] == position and item["kind"] == "query" and item["result"]:
            result = item["result"]
            stamp = [
                [f"release request {request_id}, output {position}: {item['purpose']}"],
                [f"result hash {item['result_hash']}"],
            ]
            name = f"release-{request_id}-{position}.{fmt}"
            record_export(
                get_db(),
                actor=actor(),
                target=f"release:{request_id}",
                fmt=fmt,
                detail={"output": position, "result_hash": item["result_hash"]},
            )
            get_db().commit()
            if fmt == "csv":
                out = io.StringIO()
                writer = SafeWriter(out)
                for row in [result["columns"], *result["rows"], [], *stamp]:
                    writer.writerow(row)
                body: str | bytes = out.getvalue()
                mimetype = "text/csv"
            else:
                body = xlsx_bytes([result["columns"], *result["rows"], [], *stamp])
                mimetype = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            return Response(
                body,
                mimetype=mimetype,
                headers={"Content-Disposition": f'attachment; filename="{name}"'},
            )
    raise NotFound(f"release request {request_id} has no released table {position}.")
