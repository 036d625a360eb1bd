"""A contributor's own released versions as FHIR R5, from the portal and the API.

Guarded like the version's other downloads (``report`` on ``datasets/<id>``, own
institution only) and recorded in the ledger before the first byte leaves. The rows are
those the pool holds (de-identified as released), written by :func:`hub.exports.fhir_bytes`
as NDJSON (one resource a line) or one collection Bundle, every resource validated first.
"""

from __future__ import annotations

from flask import Blueprint, Response, flash, redirect, url_for
from flask.typing import ResponseReturnValue

from hub.db import get_db
from hub.errors import Conflict, web_text
from hub.exports import (
    FHIR_FILES,
    FHIR_FORMATS,
    FhirExportError,
    FhirFile,
    fhir_file,
    fhir_response_headers,
    record_export,
)
from hub.ingest import services as ingest
from hub.ingest.models import DatasetVersion, VersionState
from hub.ingest.views import _same_institution
from hub.storage.frames import read_frames
from hub.web import actor, guard
from hub.web import app_storage as _storage

bp = Blueprint("fhir", __name__)
api = Blueprint("fhir_api", __name__)


def released_fhir(version: DatasetVersion, fmt: str) -> FhirFile:
    """The released version's pooled rows as the FHIR file ``fmt`` (``fhir-ndjson`` or
    ``fhir-bundle``); :class:`FhirExportError` when it is not released or cannot be written."""
    if version.state != VersionState.RELEASED or not version.pool_key:
        raise FhirExportError(
            f"{version.cdm_table} version {version.version} is not released "
            f"(it is {str(version.state).replace('_', ' ')}): only released versions can be "
            "taken out as FHIR R5. Release it first, or choose a released version."
        )
    frame = read_frames(_storage(), [version.pool_key])
    return fhir_file({version.cdm_table: frame}, FHIR_FORMATS[fmt])


def _send(version: DatasetVersion, fmt: str, fhir: FhirFile) -> Response:
    """Record the download, then send the file as an attachment; a header names the
    columns left out of it, if any."""
    ext, mimetype = FHIR_FILES[fmt]
    record_export(
        get_db(),
        actor=actor(),
        target=f"dataset:{version.id}",
        fmt=fmt,
        detail={
            "table": version.cdm_table,
            "version": version.version,
            "bytes": len(fhir.body),
            "left_out": sorted(fhir.left_out),
        },
    )
    get_db().commit()
    suffix = "" if fmt == "fhir-ndjson" else "-bundle"
    name = f"{version.cdm_table}-v{version.version}-fhir{suffix}.{ext}"
    return Response(fhir.body, mimetype=mimetype, headers=fhir_response_headers(fhir, name))


def _portal(version_id: int, fmt: str) -> ResponseReturnValue:
    version = ingest.get_version(get_db(), version_id)
    try:
        body = released_fhir(version, fmt)
    except FhirExportError as err:
        flash(web_text(str(err)), "error")
        return redirect(url_for("datasets.show", version_id=version_id), 303)
    return _send(version, fmt, body)


def _api(version_id: int, fmt: str) -> ResponseReturnValue:
    version = ingest.get_version(get_db(), version_id)
    try:
        body = released_fhir(version, fmt)
    except FhirExportError as err:
        raise Conflict(str(err), code="fhir_export_refused") from None
    return _send(version, fmt, body)


# One route per file, with no other argument than the version: "FHIR R5 (NDJSON)" and "FHIR
# R5 Bundle (JSON)" beside a released version; the API answers 409 with the reason when the
# version is not released or cannot be written as FHIR.


@bp.route("/datasets/<int:version_id>/fhir.ndjson")
@guard("report", "datasets/{version_id}", owner=_same_institution)
def ndjson(version_id: int) -> ResponseReturnValue:
    """The released version as FHIR R5 NDJSON (one resource a line)."""
    return _portal(version_id, "fhir-ndjson")


@bp.route("/datasets/<int:version_id>/fhir-bundle.json")
@guard("report", "datasets/{version_id}", owner=_same_institution)
def bundle(version_id: int) -> ResponseReturnValue:
    """The released version as one FHIR R5 collection Bundle."""
    return _portal(version_id, "fhir-bundle")


@api.route("/api/v1/uploads/<int:version_id>/fhir.ndjson")
@guard("report", "datasets/{version_id}", scope=("read", "upload"), owner=_same_institution)
def api_ndjson(version_id: int) -> ResponseReturnValue:
    """The released version as ``application/fhir+ndjson``."""
    return _api(version_id, "fhir-ndjson")


@api.route("/api/v1/uploads/<int:version_id>/fhir-bundle.json")
@guard("report", "datasets/{version_id}", scope=("read", "upload"), owner=_same_institution)
def api_bundle(version_id: int) -> ResponseReturnValue:
    """The released version as one ``application/fhir+json`` collection Bundle."""
    return _api(version_id, "fhir-bundle")
