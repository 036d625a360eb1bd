"""Datasets in the portal and the JSON API: upload, mapping, report, review, release."""

from __future__ import annotations

import json
import re
from typing import Any

from flask import (
    Blueprint,
    Response,
    flash,
    jsonify,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask.typing import ResponseReturnValue
from markupsafe import Markup, escape
from sqlalchemy import select

from contracts.codes import load_codes
from hub.accounts.models import User
from hub.audit.services import record
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, NotFound
from hub.exports import record_export
from hub.ingest import services
from hub.ingest.deid import STRONGER, action_words, class_words, evidence_words
from hub.ingest.models import ACTIVE_STATES, DatasetVersion, VersionState
from hub.jobs.models import Job
from hub.web import actor, current_user, guard, may
from hub.web import app_settings as _settings
from hub.web import app_storage as _storage

bp = Blueprint("datasets", __name__, url_prefix="/datasets")
api = Blueprint("uploads_api", __name__, url_prefix="/api/v1/uploads")

_TICKS = re.compile(r"`([^`]+)`")


@bp.app_template_filter("code_marks")
def code_marks(text: object) -> Markup:
    """A message's `name` marks as code: escaped first, so only the marks become markup."""
    parts = _TICKS.split(str(text))  # odd positions are the marked names
    return Markup("").join(
        Markup("<code>{}</code>").format(p) if i % 2 else escape(p) for i, p in enumerate(parts)
    )


STEPS = ("Upload", "Mapping", "Validation", "De-identification review", "Release")
_STEP_OF = {
    "uploaded": 0,
    "profiling": 0,
    "awaiting_sheet": 0,
    "awaiting_mapping": 1,
    "processing": 2,
    "awaiting_review": 3,
    "released": 5,  # every step done
    "withdrawn": 5,
}


def steps(state: str) -> list[dict[str, str]]:
    """The contributor's steps with ``done``, ``current`` or ``todo`` for a version's state;
    a failed or discarded version has none current."""
    at = _STEP_OF.get(state, -1)
    return [
        {"label": label, "status": "done" if i < at else "current" if i == at else "todo"}
        for i, label in enumerate(STEPS)
    ]


def _flag(value: object) -> bool:
    return str(value or "").strip().lower() in ("1", "true", "yes", "on")


def _same_institution(user: User, version_id: int, **_: object) -> bool:
    version = get_db().get(DatasetVersion, version_id)
    return (
        version is not None
        and user.institution_id is not None
        and version.institution_id == user.institution_id
    )


def _sees_content(user: User, version: DatasetVersion) -> bool:
    """May ``user`` read what ``version`` holds from its file (error texts, examples,
    category values, the header's names)? :mod:`policies` decides: the uploading
    institution's own users; the steward gets the content-free record."""
    own = user.institution_id is not None and version.institution_id == user.institution_id
    return may(user, "read", f"datasets/{version.id}/content", owner=own)


#: A version of another institution, as the policy is asked about it (``datasets/:id``
#: with ``owner`` false).
ANOTHER_INSTITUTIONS_VERSION = "datasets/others"


def _visible_versions(user: User) -> list[DatasetVersion]:
    q = select(DatasetVersion).order_by(DatasetVersion.id.desc()).limit(200)
    # Whoever may read a version that is not their own institution's (the steward: the
    # content-free record) lists every institution's; everyone else their own.
    if not may(user, "read", ANOTHER_INSTITUTIONS_VERSION, owner=False):
        q = q.where(DatasetVersion.institution_id == user.institution_id)
    return list(get_db().scalars(q))


def _progress(version: DatasetVersion, *, content: bool) -> dict[str, Any]:
    """Where the version's job is. The job's message and error may quote the file: without
    ``content`` the error is only said to exist."""
    job = get_db().get(Job, version.job_id) if version.job_id else None
    error = version.error or (job.error if job and job.state == "failed" else "")
    return {
        "state": version.state,
        "active": version.state in ACTIVE_STATES,
        "progress": job.progress if job else 0,
        "message": (job.message if job else "") if content else "",
        "job_state": job.state if job else None,
        "error": error if content or not error else services.HIDDEN_ERROR,
    }


def _user() -> User:
    user = current_user()
    assert user is not None  # the guard signed them in
    return user


def _version(version: DatasetVersion, content: bool | None = None) -> dict[str, Any]:
    """``version`` as JSON for the signed-in caller (content-free unless theirs: ``content``
    when the caller has asked already). While the mapping waits for confirmation, the
    uploading institution also gets the file's terms for category values, each with what is
    proposed for it (``open``: needs a decision)."""
    if content is None:
        content = _sees_content(_user(), version)
    out = services.version_dict(version, content=content)
    if content and version.state == VersionState.AWAITING_MAPPING:
        out["terms"] = {
            column: [t.to_dict() for t in listed]
            for column, listed in services.term_proposals(get_db(), version).items()
        }
    return out


def _record_refused(table: str, filename: str, err: CleanroomError) -> None:
    """An ``upload.refused`` entry: who tried to upload what, and why it was refused (the
    rule's code, never the file's content)."""
    user = _user()
    db = get_db()
    db.rollback()
    record(
        db,
        actor=f"user:{user.username}",
        action="upload.refused",
        target=f"institution:{user.institution.slug if user.institution else '-'}",
        detail={
            "reason": err.code,
            "status": err.status,
            "table": table[:64],
            "filename": filename[:200],
        },
    )
    db.commit()


def _upload(
    table: str, filename: str, stream: Any, sheet: str, additional: bool = False
) -> list[DatasetVersion]:
    """The versions the upload made: one, or one per table a FHIR file fills."""
    user = current_user()
    assert user is not None
    db = get_db()
    db.commit()  # end the request's transaction: no lock is held while the bytes stream
    return services.upload_versions(
        db,
        _settings(),
        _storage(),
        user=user,
        table=table,
        filename=filename,
        stream=stream,
        sheet=sheet,
        additional=additional,
    )


# Portal ------------------------------------------------------------------------------------


@bp.route("")
@guard("read", "datasets")
def index() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return render_template(
        "datasets/index.html",
        versions=_visible_versions(user),
        tables=services.cdm().table_names,
        chosen=request.args.get("table", ""),
        max_mb=_settings().max_upload_mb,
        steps=steps("uploaded"),
    )


@bp.route("", methods=["POST"])
@guard("upload", "datasets")
def upload() -> ResponseReturnValue:
    # A body over the declared limit is refused (413) before this view, and recorded, by
    # hub.web's error handler.
    file = request.files.get("file")
    table = request.form.get("table", "")
    if file is None or not file.filename:
        flash("Choose a file to upload.", "error")
        return redirect(url_for("datasets.index"), 303)
    try:
        versions = _upload(
            table,
            file.filename,
            file.stream,
            request.form.get("sheet", ""),
            additional=_flag(request.form.get("additional_rows")),
        )
    except CleanroomError as err:
        _record_refused(table, file.filename, err)
        flash(code_marks(err.message), "error")
        return redirect(url_for("datasets.index")), 303
    version = versions[0]
    if version.file_kind == "fhir":
        listed = ", ".join(f"{v.cdm_table} version {v.version}" for v in versions)
        flash(
            f"“{version.filename}” read as FHIR R5: {len(versions)} "
            f"version{'' if len(versions) == 1 else 's'} ({listed}), being validated now. "
            "Review and release each one, in this order.",
            "info",
        )
        return redirect(url_for("datasets.index"), 303)
    flash(
        f"“{version.filename}” uploaded as {version.cdm_table} version {version.version}.", "info"
    )
    for gap in services.upload_order(get_db(), version.institution_id, version.cdm_table):
        flash(code_marks(_order_words(gap, version.cdm_table)), "warning")
    return redirect(url_for("datasets.show", version_id=version.id), 303)


@bp.route("/terms")
@guard("upload", "datasets")
def terms() -> ResponseReturnValue:
    """The institution's remembered terms for category values, to check and forget."""
    user = current_user()
    assert user is not None
    return render_template(
        "datasets/terms.html",
        terms=services.institution_terms(get_db(), user.institution_id),
        codes=load_codes(),
        hold_back=HOLD_BACK_CHOICE,
    )


@bp.route("/terms/<int:term_id>/forget", methods=["POST"])
@guard("upload", "datasets")
def forget_term(term_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    db = get_db()
    forgotten = services.forget_term(db, user.institution_id, term_id, actor=actor())
    db.commit()
    flash(
        f"“{forgotten.term}” is forgotten: your next upload that uses it asks what it means.",
        "info",
    )
    return redirect(url_for("datasets.terms"), 303)


@bp.route("/<int:version_id>")
@guard("read", "datasets/{version_id}", owner=_same_institution)
def show(version_id: int) -> ResponseReturnValue:
    version = services.get_version(get_db(), version_id)
    user = _user()
    own = _same_institution(user, version_id)  # the forms; the guard decides each action
    content = _sees_content(user, version)
    reports = services.version_reports(version, content=content)
    table = services.cdm().table(version.cdm_table)
    from hub.synth import services as synth

    db = get_db()
    pending = v_state_pending(version)
    return render_template(
        "datasets/show.html",
        synthetics=synth.for_version(get_db(), version.id),
        synth_scores=synth.scores,
        methods=synth.METHODS,
        default_method=_settings().synth_method,
        v=version,
        own=own,
        content=content,
        sheet=reports["sheet"],
        table=table,
        progress=_progress(version, content=content),
        profile=json.loads(version.profile or "{}") if content else {},
        mapping=reports["mapping"],
        terms=services.term_proposals(db, version) if own and content else {},
        hold_back=HOLD_BACK_CHOICE,
        codes=load_codes(),
        validation=reports["validation"],
        deid=reports["deidentification"],
        floor=reports["deidentification_floor"],
        choices=reports["deidentification_choices"],
        stronger=STRONGER,
        k_floor=_settings().deid_k,
        steps=steps(version.state),
        order=services.upload_order(db, version.institution_id, version.cdm_table)
        if own and pending
        else [],
        replaces=services.superseded_by(db, version) if own and pending else [],
        released_here=_released_versions(version) if own else [],
        evidence_words=evidence_words,
        class_words=class_words,
        action_words=action_words,
        order_words=_order_words,
    )


def v_state_pending(version: DatasetVersion) -> bool:
    """Not yet released, withdrawn, discarded or failed."""
    return version.state in services.PENDING_STATES


def _released_versions(version: DatasetVersion) -> list[DatasetVersion]:
    """The institution's released versions of the same table (other than this one)."""
    return list(
        get_db().scalars(
            select(DatasetVersion)
            .where(
                DatasetVersion.institution_id == version.institution_id,
                DatasetVersion.cdm_table == version.cdm_table,
                DatasetVersion.state == "released",
                DatasetVersion.id != version.id,
            )
            .order_by(DatasetVersion.version)
        )
    )


def _order_words(gap: dict[str, Any], table: str) -> str:
    """ "Upload `episode` first" for one entry of :func:`services.upload_order`."""
    ref = gap["table"]
    cols = ", ".join(f"`{c}`" for c in gap["columns"])
    if gap.get("pending"):
        return (
            f"Release your `{ref}` upload (version {gap['pending']}) first: this `{table}` "
            f"file links to it through {cols}, and those links can only be checked against "
            f"a released `{ref}` table."
        )
    return (
        f"Upload `{ref}` first: this `{table}` file links to it through {cols}, and your "
        f"institution has not released any `{ref}` rows yet, so those links cannot be checked."
    )


@bp.route("/<int:version_id>/status.json")
@guard("read", "datasets/{version_id}", owner=_same_institution)
def status(version_id: int) -> ResponseReturnValue:
    version = services.get_version(get_db(), version_id)
    return jsonify(_progress(version, content=_sees_content(_user(), version)))


@bp.route("/<int:version_id>/sheet", methods=["POST"])
@guard("map", "datasets/{version_id}", owner=_same_institution)
def sheet(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = services.get_version(db, version_id)
    services.choose_sheet(db, _settings(), version, request.form.get("sheet", ""), actor=actor())
    db.commit()
    return redirect(url_for("datasets.show", version_id=version_id), 303)


HOLD_BACK_CHOICE = "-hold-"
"""The term select's "hold these rows back" option (its empty option means "not chosen")."""


def _choices_from_form() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """``(columns, terms)`` from the mapping form: ``target::SOURCE`` and ``unit::SOURCE``
    fields, and ``term::COLUMN::TERM`` selects (a term left unchosen is not decided)."""
    choices: dict[str, dict[str, str]] = {}
    terms: dict[str, dict[str, str]] = {}
    for field, value in request.form.items():
        if field.startswith("target::"):
            source = field.removeprefix("target::")
            choices.setdefault(source, {})["target"] = value
        elif field.startswith("unit::"):
            source = field.removeprefix("unit::")
            choices.setdefault(source, {})["unit"] = value
        elif field.startswith("term::") and value:
            column, _, term = field.removeprefix("term::").partition("::")
            terms.setdefault(column, {})[term] = "" if value == HOLD_BACK_CHOICE else value
    return choices, terms


@bp.route("/<int:version_id>/mapping", methods=["POST"])
@guard("map", "datasets/{version_id}", owner=_same_institution)
def mapping(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = services.get_version(db, version_id)
    columns, terms = _choices_from_form()
    try:
        services.confirm_mapping(db, _settings(), version, columns, actor=actor(), terms=terms)
    except CleanroomError as err:
        db.rollback()
        flash(code_marks(err.message), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    return redirect(url_for("datasets.show", version_id=version_id), 303)


@bp.route("/<int:version_id>/deidentification", methods=["POST"])
@guard("map", "datasets/{version_id}", owner=_same_institution)
def deidentification(version_id: int) -> ResponseReturnValue:
    """The review page's form: ``action::<column>`` fields and ``k``."""
    body: dict[str, Any] = {
        "columns": {
            field.removeprefix("action::"): value
            for field, value in request.form.items()
            if field.startswith("action::")
        },
        "k": request.form.get("k", ""),
    }
    db = get_db()
    version = services.get_version(db, version_id)
    try:
        services.choose_deidentification(db, _settings(), version, body, actor=actor())
    except CleanroomError as err:
        db.rollback()
        flash(code_marks(err.message), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    flash("De-identifying again with your choices.", "info")
    return redirect(url_for("datasets.show", version_id=version_id), 303)


@bp.route("/<int:version_id>/<any(release,withdraw,reject):op>", methods=["POST"])
@guard("{op}", "datasets/{version_id}", owner=_same_institution)
def decide(version_id: int, op: str) -> ResponseReturnValue:
    db = get_db()
    version = services.get_version(db, version_id)
    if op in ("withdraw", "reject") and request.form.get("confirm") != "yes":
        what = "withdraw it from the pool" if op == "withdraw" else "discard it"
        flash(f"Nothing was changed: tick the confirmation box to {what}.", "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    if op == "release" and request.form.get("approve") != "yes":
        flash(
            "Nothing was released: tick the box to approve the de-identification report, "
            "then release.",
            "error",
        )
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    try:
        _decide(op, version, approved=request.form.get("approve") == "yes")
    except CleanroomError as err:
        db.rollback()
        flash(code_marks(err.message), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    done = {
        "release": "released to the pool",
        "withdraw": "withdrawn from the pool",
        "reject": "discarded",
    }[op]
    flash(f"{version.cdm_table} version {version.version} {done}.", "info")
    return redirect(url_for("datasets.show", version_id=version_id), 303)


def _decide(op: str, version: DatasetVersion, *, approved: bool = False) -> None:
    db, storage = get_db(), _storage()
    if op == "release":
        services.release(db, _settings(), storage, version, actor=actor(), approved=approved)
    elif op == "withdraw":
        services.withdraw(db, storage, version, actor=actor())
    else:
        services.reject(db, storage, version, actor=actor())


@bp.route("/<int:version_id>/<any(report,'held-back'):which>.csv")
@guard("report", "datasets/{version_id}", owner=_same_institution)
def download(version_id: int, which: str) -> ResponseReturnValue:
    version = services.get_version(get_db(), version_id)
    key = version.report_key if which == "report" else version.held_key
    if not key:
        raise NotFound("this report is not available (yet, or any more).")
    name = f"{version.cdm_table}-v{version.version}-{which}.csv"
    record_export(
        get_db(),
        actor=actor(),
        target=f"dataset:{version.id}",
        fmt="csv",
        detail={"file": which, "table": version.cdm_table, "version": version.version},
    )
    get_db().commit()  # recorded before the first byte leaves; no transaction while it streams
    return Response(
        stream_with_context(_storage().iter_chunks(key)),
        mimetype="text/csv",
        headers={"Content-Disposition": f"attachment; filename={name}"},
    )


# API ---------------------------------------------------------------------------------------


@api.route("", methods=["POST"])
@guard("upload", "datasets", scope="upload")
def api_upload() -> ResponseReturnValue:
    """Raw body (``Content-Type: application/octet-stream``) streamed straight to the store;
    ``table``, ``filename`` and optional ``sheet`` and ``additional_rows=true`` (keep the
    released version beside this one instead of replacing it) as query parameters. A FHIR
    R5 file needs no ``table``: it makes one version per table it fills (``versions``). A
    multipart form with a ``file`` field is accepted too. A refused upload leaves an
    ``upload.refused`` entry in the ledger."""
    table, filename = request.args.get("table", ""), request.args.get("filename", "")
    try:
        versions = _api_upload()
    except CleanroomError as err:
        _record_refused(table, filename, err)
        raise
    version = versions[0]
    # ``versions``: every version the upload made, in release order (a FHIR file makes one
    # per table it fills; the top level is the first of them).
    return (
        jsonify(
            {
                **_version(version),
                **_next_steps(version),
                "versions": [_version(v) for v in versions],
            }
        ),
        201,
        {"Location": url_for("uploads_api.api_show", version_id=version.id)},
    )


def _api_upload() -> list[DatasetVersion]:
    table = request.args.get("table") or request.form.get("table", "")
    sheet = request.args.get("sheet") or request.form.get("sheet", "")
    additional = _flag(request.args.get("additional_rows") or request.form.get("additional_rows"))
    if request.mimetype == "multipart/form-data":
        file = request.files.get("file")
        if file is None:
            raise BadRequest("the form has no `file` field.")
        return _upload(table, file.filename or "upload", file.stream, sheet, additional)
    filename = request.args.get("filename", "")
    if not filename:
        raise BadRequest(
            "give the file's name as ?filename=… (its type is checked by "
            "content, the name is kept for your records)."
        )
    return _upload(table, filename, request.stream, sheet, additional)


@api.route("")
@guard("read", "datasets", scope="read")
def api_list() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return jsonify(
        {
            "uploads": [
                services.version_dict(v, content=_sees_content(user, v))
                for v in _visible_versions(user)
            ]
        }
    )


# The upload script follows its own upload with the token that sent it (upload scope);
# a read token reads it too.
@api.route("/<int:version_id>")
@guard("read", "datasets/{version_id}", scope=("read", "upload"), owner=_same_institution)
def api_show(version_id: int) -> ResponseReturnValue:
    version = services.get_version(get_db(), version_id)
    content = _sees_content(_user(), version)
    return jsonify(
        {
            **_version(version, content),
            "progress": _progress(version, content=content),
            **(_next_steps(version) if content else {}),
        }
    )


def _next_steps(version: DatasetVersion) -> dict[str, Any]:
    """For the uploading institution: tables to upload first (their links cannot be checked
    before) and the released versions releasing this one would replace."""
    if not v_state_pending(version):
        return {"upload_first": [], "replaces": []}
    db = get_db()
    return {
        "upload_first": [
            {**gap, "message": _order_words(gap, version.cdm_table)}
            for gap in services.upload_order(db, version.institution_id, version.cdm_table)
        ],
        "replaces": [v.version for v in services.superseded_by(db, version)],
    }


@api.route("/<int:version_id>/sheet", methods=["POST"])
@guard("map", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_sheet(version_id: int) -> ResponseReturnValue:
    """Body: ``{"sheet": name}`` for a workbook awaiting its sheet choice."""
    body = request.get_json(silent=True) or {}
    db = get_db()
    version = services.get_version(db, version_id)
    services.choose_sheet(db, _settings(), version, str(body.get("sheet", "")), actor=actor())
    db.commit()
    return jsonify(_version(version))


@api.route("/<int:version_id>/mapping", methods=["POST"])
@guard("map", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_mapping(version_id: int) -> ResponseReturnValue:
    """Body: ``{"columns": {source: {"target": cdm_column | "", "unit": label}}, "terms":
    {column: {term: value | ""}}, "accept_proposed_terms": bool}``; an empty body accepts
    the column mapping as it stands. The upload's ``terms`` (``GET`` it) lists the file's
    terms for category values with what is proposed; each open one needs a decision (a
    value, or ``""`` to hold its rows back), else 400 ``terms_unconfirmed``."""
    body = request.get_json(silent=True) or {}
    choices = body.get("columns", {})
    if not isinstance(choices, dict):
        raise BadRequest("`columns` must be an object {source: {target, unit}}.")
    terms = body.get("terms", {})
    if not isinstance(terms, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values()) for v in terms.values()
    ):
        raise BadRequest('`terms` must be an object {column: {term: value or ""}}.')
    db = get_db()
    version = services.get_version(db, version_id)
    services.confirm_mapping(
        db,
        _settings(),
        version,
        choices,
        actor=actor(),
        terms=terms,
        accept_proposed_terms=body.get("accept_proposed_terms") is True,
    )
    db.commit()
    return jsonify(_version(version))


@api.route("/<int:version_id>/<any(release,withdraw,reject):op>", methods=["POST"])
@guard("{op}", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_decide(version_id: int, op: str) -> ResponseReturnValue:
    """``release`` needs ``{"approve_deidentification": true}``: the contributor's approval
    of the de-identification report (``GET`` the upload to read it)."""
    body = request.get_json(silent=True) or {}
    version = services.get_version(get_db(), version_id)
    _decide(op, version, approved=body.get("approve_deidentification") is True)
    return jsonify(_version(version))


@api.route("/<int:version_id>/deidentification", methods=["POST"])
@guard("map", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_deidentification(version_id: int) -> ResponseReturnValue:
    """Strengthen the de-identification of a version under review and process it again.
    Body: ``{"columns": {name: action}, "k": n}``; actions are ``keep``, ``generalise``,
    ``pseudonymise``, ``scrub``, ``drop``, and each may only be at least as strong as the
    column's floor (the report's ``floor``)."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object {"columns": {column: action}, "k": n}.')
    db = get_db()
    version = services.get_version(db, version_id)
    services.choose_deidentification(db, _settings(), version, body, actor=actor())
    db.commit()
    return jsonify(_version(version)), 202
