"""Synthetic versions in the portal and the JSON API.

Contributors ask for the synthesis of their own released versions, or share a version as
synthetic only; the steward asks for an agreement's pooled table and sees every report.
Reports and their SVG plots are served from the hub itself (no CDN, no script).
"""

from __future__ import annotations

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
    url_for,
)
from flask.typing import ResponseReturnValue

from hub.accounts.models import User
from hub.agreements import services as agreements
from hub.db import get_db
from hub.errors import BadRequest, CleanroomError, NotFound, web_text
from hub.exports import (
    FHIR_FILES,
    FHIR_FORMATS,
    FhirExportError,
    fhir_file,
    fhir_response_headers,
    record_export,
)
from hub.ingest import services as ingest
from hub.ingest.views import _same_institution, _version
from hub.routing import MAX_ID
from hub.synth import services
from hub.synth.models import SyntheticVersion, SynthState
from hub.web import actor, guard
from hub.web import app_settings as _settings
from hub.web import app_storage as _storage

bp = Blueprint("synthetic", __name__)
api = Blueprint("synthetic_api", __name__)
_PLOT = re.compile(r"[A-Za-z0-9_-]+\.svg")
ALL_LINKED = "all-linked"  # the form's "all linked tables together" choice


def _owns_synthetic(user: User, synthetic_id: int, **_: object) -> bool:
    """A synthetic version of one of the user's institution's dataset versions."""
    synthetic = get_db().get(SyntheticVersion, synthetic_id)
    if synthetic is None or synthetic.dataset_version_id is None:
        return False
    return _same_institution(user, synthetic.dataset_version_id)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    method = str(body.get("method") or "").strip() or None
    raw_seed = body.get("seed")
    try:
        seed = int(raw_seed) if raw_seed not in (None, "") else 0
    except (TypeError, ValueError):
        raise BadRequest("`seed` must be a whole number.") from None
    if not 0 <= seed <= MAX_ID:  # stored in an integer column
        raise BadRequest(f"`seed` must be between 0 and {MAX_ID:,}.")
    return {"method": method, "seed": seed}


# Why a synthesis failed, in words ------------------------------------------------------------

# (pattern in the raw error, what happened, what to do), first match wins.
_FAILURES: tuple[tuple[re.Pattern[str], str, str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), what, advice)
    for pattern, what, advice in (
        (
            r"repeating values|duplicate|not unique|primary key",
            "The pooled table holds the same key (the same batch, episode or sample) more "
            "than once.",
            "This usually means an institution uploaded and released the same table twice, "
            "so both versions are pooled. Ask that institution to withdraw the older "
            "version, then generate the synthetic version again.",
        ),
        (
            r"needs at least \d+|too few rows|has \d+ rows",
            "There are too few rows to learn from.",
            "Synthesis needs at least 10 rows of the table. Wait until more institutions "
            "have released it, or synthesise the agreement's linked tables together.",
        ),
        (
            r"no longer released|withdrew|withdrawn",
            "The data it was made from has been withdrawn by its contributor.",
            "Nothing is needed: its rows were deleted with the data. Generate again once "
            "a new version is released.",
        ),
        (
            r"pools no released",
            "The agreement pools no released data for this table now.",
            "Check that the agreement is active and that at least one contributing "
            "institution has released this table, then generate again.",
        ),
        (
            r"direct identifier|not pseudonyms",
            "The table still holds identifying values; synthesis runs on de-identified data only.",
            "Ask the contributor to review the table's de-identification (the identifier "
            "columns must be pseudonymised or dropped) and release it again.",
        ),
        (
            r"unknown synthesis method|has no method",
            "The chosen synthesis method is not available on this hub.",
            "Choose one of the methods the form offers and generate again.",
        ),
        (
            r"cycle",
            "The tables' links form a loop, which the linked synthesis cannot follow.",
            "Synthesise the tables one at a time instead.",
        ),
    )
)
_GATE_ADVICE = {
    "quality": "The synthetic rows resemble the real ones too little. Try another method "
    "(for example ctgan or tvae) or wait for more rows.",
    "dcr_overfitting": "The synthetic rows sit too close to real rows (the model memorised "
    "them). Try another seed or method; more training rows help.",
    "copied_rows": "Some synthetic rows copy real rows exactly. Try another seed or method.",
    "pii_overlap": "Identifier values from the real data appear in the synthetic rows. "
    "Check the table's de-identification before generating again.",
    "group": "A linked table of the same group failed its gates, so none is published. "
    "Open the failed table's report for what to change.",
}


@bp.app_template_global("synthesis_problem")
def synthesis_problem(synthetic: SyntheticVersion) -> dict[str, Any] | None:
    """Why the synthetic version is not published, in words with advice; the raw error
    stays for the technical detail. None when there is nothing to explain."""
    raw = synthetic.error or ""
    if synthetic.state == "failed_gates":
        failed = services.scores(synthetic).get("failed_gates") or []
        return {
            "what": "It was made, but did not pass the publication gates, so researchers "
            "never see it.",
            "advice": [
                f"{str(g.get('gate', '')).replace('_', ' ')}: {g.get('message', '')}. "
                + _GATE_ADVICE.get(str(g.get("gate")), "")
                for g in failed
            ],
            "raw": raw,
        }
    if synthetic.state not in ("failed", "withdrawn") or not raw:
        return None
    if synthetic.state == "withdrawn":
        return {
            "what": "Withdrawn: the data it was made from was withdrawn by its contributor, "
            "and its rows and plots were deleted.",
            "advice": [],
            "raw": raw,
        }
    for pattern, what, advice in _FAILURES:
        if pattern.search(raw):
            return {"what": what, "advice": [advice], "raw": raw}
    return {
        "what": "The synthesis stopped on an unexpected problem.",
        "advice": [
            "Try again. If it fails again, pass the technical detail below to whoever runs the hub."
        ],
        "raw": raw,
    }


# Portal --------------------------------------------------------------------------------------


@bp.route("/datasets/<int:version_id>/synthesise", methods=["POST"])
@guard("synthesise", "datasets/{version_id}", owner=_same_institution)
def synthesise(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = ingest.get_version(db, version_id)
    try:
        synthetic = services.request_for_version(
            db, _settings(), version, actor=actor(), **_options(request.form)
        )
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    flash(f"Synthetic version {synthetic.id} queued ({synthetic.method}).", "info")
    return redirect(url_for("datasets.show", version_id=version_id) + "#synthetic", 303)


@bp.route("/datasets/<int:version_id>/synthetic-only", methods=["POST"])
@guard("synthetic_only", "datasets/{version_id}", owner=_same_institution)
def synthetic_only(version_id: int) -> ResponseReturnValue:
    db = get_db()
    version = ingest.get_version(db, version_id)
    try:
        services.share_synthetic_only(db, _settings(), version, actor=actor())
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    db.commit()
    flash(
        "This version is shared as synthetic only: its real rows are in no agreement's "
        "views; its synthetic version is made once it is released.",
        "info",
    )
    return redirect(url_for("datasets.show", version_id=version_id) + "#synthetic", 303)


@bp.route("/synthetic")
@guard("read", "synthetic")
def index() -> ResponseReturnValue:
    """The steward's list of synthetic versions, and the agreement-table form."""
    db = get_db()
    records = agreements.all_records(db)
    tables = {r.slug: [c.table for c in agreements.contract_of(r).tables] for r in records}
    return render_template(
        "synthetic/index.html",
        synthetics=services.recent(db),
        scores=services.scores,
        agreement_tables=tables,
        methods=services.METHODS,
        default_method=_settings().synth_method,
        all_linked=ALL_LINKED,
    )


@bp.route("/synthetic", methods=["POST"])
@guard("synthesise", "synthetic")
def synthesise_agreement() -> ResponseReturnValue:
    """One pooled table, or (``table=all-linked``) the agreement's linked tables together."""
    db = get_db()
    slug, table = request.form.get("agreement", ""), request.form.get("table", "")
    try:
        if table == ALL_LINKED:
            members = services.request_for_agreement_tables(
                db, _settings(), slug, actor=actor(), **_options(request.form)
            )
        else:
            members = [
                services.request_for_agreement(
                    db, _settings(), slug, table, actor=actor(), **_options(request.form)
                )
            ]
    except CleanroomError as err:
        db.rollback()
        flash(web_text(err.message), "error")
        return redirect(url_for("synthetic.index"), 303)
    db.commit()
    if len(members) > 1:
        listed = ", ".join(f"{m.cdm_table} #{m.id}" for m in members)
        flash(
            f"Synthetic versions queued together as group {members[0].group_id}: {listed}.", "info"
        )
    else:
        flash(f"Synthetic version {members[0].id} queued.", "info")
    return redirect(url_for("synthetic.show", synthetic_id=members[0].id), 303)


@bp.route("/synthetic/<int:synthetic_id>")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def show(synthetic_id: int) -> ResponseReturnValue:
    db = get_db()
    synthetic = services.get(db, synthetic_id)
    return render_template(
        "synthetic/show.html",
        s=synthetic,
        d=services.synthetic_dict(synthetic),
        scores=services.scores(synthetic),
        group=services.group(db, synthetic.group_id) if synthetic.group_id else [],
    )


@bp.route("/synthetic/<int:synthetic_id>/plots/<name>")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def plot(synthetic_id: int, name: str) -> ResponseReturnValue:
    if not _PLOT.fullmatch(name):
        raise NotFound("no such plot.")
    data = services.plot(_storage(), services.get(get_db(), synthetic_id), name)
    return Response(
        data,
        mimetype="image/svg+xml",
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "Cache-Control": "private, max-age=3600",
        },
    )


@bp.route("/synthetic/<int:synthetic_id>/fhir.ndjson")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def fhir_ndjson(synthetic_id: int) -> ResponseReturnValue:
    """A published synthetic version's rows as FHIR R5 NDJSON."""
    return _fhir(synthetic_id, "fhir-ndjson")


@bp.route("/synthetic/<int:synthetic_id>/fhir-bundle.json")
@guard("read", "synthetic/{synthetic_id}", owner=_owns_synthetic)
def fhir_bundle(synthetic_id: int) -> ResponseReturnValue:
    """A published synthetic version's rows as one FHIR R5 collection Bundle."""
    return _fhir(synthetic_id, "fhir-bundle")


def _fhir(synthetic_id: int, fmt: str) -> ResponseReturnValue:
    """The rows as the FHIR file ``fmt``, recorded in the ledger before the first byte
    leaves; a version that is not published has no rows to give."""
    db = get_db()
    synthetic = services.get(db, synthetic_id)
    try:
        if synthetic.state != SynthState.PUBLISHED or not synthetic.data_key:
            raise FhirExportError(
                f"synthetic version {synthetic.id} is not published "
                f"({str(synthetic.state).replace('_', ' ')}): only published synthetic "
                "versions can be downloaded."
            )
        frame = services.read_rows(_storage(), [synthetic])
        fhir = fhir_file({synthetic.cdm_table: frame}, FHIR_FORMATS[fmt])
    except FhirExportError as err:
        flash(web_text(str(err)), "error")
        return redirect(url_for("synthetic.show", synthetic_id=synthetic_id), 303)
    record_export(
        db,
        actor=actor(),
        target=f"synthetic:{synthetic.id}",
        fmt=fmt,
        detail={
            "table": synthetic.cdm_table,
            "rows": len(frame),
            "bytes": len(fhir.body),
            "left_out": sorted(fhir.left_out),
        },
    )
    db.commit()
    ext, mimetype = FHIR_FILES[fmt]
    suffix = "" if fmt == "fhir-ndjson" else "-bundle"
    name = f"{synthetic.cdm_table}-synthetic-{synthetic.id}-fhir{suffix}.{ext}"
    return Response(fhir.body, mimetype=mimetype, headers=fhir_response_headers(fhir, name))


# API ---------------------------------------------------------------------------------------


@api.route("/api/v1/uploads/<int:version_id>/synthetic-only", methods=["POST"])
@guard("synthetic_only", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_synthetic_only(version_id: int) -> ResponseReturnValue:
    """Share this version as synthetic only (under review or released)."""
    db = get_db()
    version = ingest.get_version(db, version_id)
    synthetic = services.share_synthetic_only(db, _settings(), version, actor=actor())
    db.commit()
    return jsonify(
        {
            "upload": _version(version),
            "synthetic": services.synthetic_dict(synthetic, report=False) if synthetic else None,
        }
    )


@api.route("/api/v1/uploads/<int:version_id>/synthesise", methods=["POST"])
@guard("synthesise", "datasets/{version_id}", scope="upload", owner=_same_institution)
def api_synthesise(version_id: int) -> ResponseReturnValue:
    """Body (optional): ``{"method": "gaussian_copula"|"ctgan"|"tvae", "seed": n}``."""
    body = request.get_json(silent=True) or {}
    if not isinstance(body, dict):
        raise BadRequest('send a JSON object, e.g. {"method": "gaussian_copula", "seed": 0}.')
    db = get_db()
    version = ingest.get_version(db, version_id)
    synthetic = services.request_for_version(
        db, _settings(), version, actor=actor(), **_options(body)
    )
    db.commit()
    return jsonify(services.synthetic_dict(synthetic, report=False)), 202


@api.route("/api/v1/synthetic/<int:synthetic_id>")
@guard("read", "synthetic/{synthetic_id}", scope="read", owner=_owns_synthetic)
def api_show(synthetic_id: int) -> ResponseReturnValue:
    """The synthetic version with its report (scores, gates, plots' names)."""
    return jsonify(services.synthetic_dict(services.get(get_db(), synthetic_id)))
