"""Cleanroom hub: the Flask application factory."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from flask import Flask
from flask_wtf.csrf import CSRFProtect

from hub.settings import Settings, load_settings

csrf = CSRFProtect()


def create_app(config: dict[str, Any] | Settings | None = None) -> Flask:
    """Build the app from settings (``config`` overrides the environment and instance file)."""
    from hub import db, routing, web
    from hub.accounts.views import bp as auth_bp
    from hub.accounts.views import tokens_bp
    from hub.admin.views import bp as admin_bp
    from hub.agreements.views import admin_bp as agreements_admin_bp
    from hub.agreements.views import api as agreements_api
    from hub.agreements.views import bp as agreements_bp
    from hub.api.views import bp as api_bp
    from hub.audit.views import api as ledger_api
    from hub.audit.views import bp as ledger_bp
    from hub.audit.views import pages as ledger_pages
    from hub.auditor.views import api as auditor_api
    from hub.auditor.views import bp as auditor_bp
    from hub.catalogue.views import api as catalogue_api
    from hub.catalogue.views import bp as catalogue_bp
    from hub.gateway.views import api as sandbox_api
    from hub.gateway.views import gateway_error
    from hub.ingest.fhir_views import api as fhir_api
    from hub.ingest.fhir_views import bp as fhir_bp
    from hub.ingest.views import api as uploads_api
    from hub.ingest.views import bp as datasets_bp
    from hub.jobs.views import api as jobs_api
    from hub.jupyterhub.service import service_api as sandbox_service_api
    from hub.notices.views import api as notices_api
    from hub.notices.views import bp as notices_bp
    from hub.portal.views import bp as portal_bp
    from hub.portal.views import health as health_bp
    from hub.releases.views import api as releases_api
    from hub.releases.views import bp as releases_bp
    from hub.storage import get_storage
    from hub.synth.views import api as synthetic_api
    from hub.synth.views import bp as synthetic_bp
    from sandbox.gateway import GatewayError

    settings = config if isinstance(config, Settings) else load_settings(config)
    settings.check_production()
    logging.basicConfig(level=settings.log_level)

    app = Flask(__name__)
    app.config.update(
        CLEANROOM_SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        SESSION_COOKIE_NAME="cleanroom_session",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.uses_tls or settings.is_production,
        # The cookie lasts as long as a session may; the server ends it sooner (idle, logout).
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.session_max_hours),
        WTF_CSRF_TIME_LIMIT=None,  # the token lives as long as the session
        WTF_CSRF_SSL_STRICT=settings.uses_tls,
        MAX_FORM_MEMORY_SIZE=1 << 20,
        # Larger declared bodies get 413 before a byte is read; streamed ones are cut off
        # by the object store's own limit.
        MAX_CONTENT_LENGTH=(settings.max_upload_mb << 20) + (1 << 20),
    )
    settings.data_path.mkdir(parents=True, exist_ok=True, mode=0o700)
    db.init_app(app, db.Database(settings.effective_database_url))
    app.extensions["cleanroom.storage"] = get_storage(settings)
    csrf.init_app(app)
    web.init_app(app)
    routing.init_app(app)  # <int:...> ids bounded by the database: larger ones are 404

    for bp in (
        health_bp,
        auth_bp,
        portal_bp,
        tokens_bp,
        admin_bp,
        datasets_bp,
        api_bp,
        jobs_api,
        uploads_api,
        agreements_bp,
        agreements_admin_bp,
        agreements_api,
        sandbox_api,
        sandbox_service_api,
        synthetic_bp,
        synthetic_api,
        releases_api,
        releases_bp,
        notices_bp,
        notices_api,
        catalogue_bp,
        catalogue_api,
        auditor_bp,
        auditor_api,
        ledger_bp,
        ledger_pages,
        ledger_api,
        fhir_bp,
        fhir_api,
    ):
        app.register_blueprint(bp)
    for bp in (
        api_bp,
        jobs_api,
        uploads_api,
        agreements_api,
        sandbox_api,
        sandbox_service_api,
        synthetic_api,
        releases_api,
        notices_api,
        catalogue_api,
        auditor_api,
        ledger_api,
    ):
        csrf.exempt(bp)  # bearer tokens only, never cookies: nothing to forge
    web.check_api_scopes(app)  # every route under /api/ names the token scopes it accepts
    app.register_error_handler(GatewayError, gateway_error)
    return app
