"""One exception hierarchy for the hub; each class carries its HTTP status and error code.

Views raise these; :func:`init_app` renders them as ``{"error": {"code", "message"}}`` under
``/api/`` and as an HTML page elsewhere. A user never sees a stack trace.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class CleanroomError(Exception):
    """Base of every error a user may see. ``message`` is a sentence a person can act on."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class ConfigurationError(CleanroomError):
    code = "configuration_error"


class DatabaseUnavailable(CleanroomError):
    status = 503
    code = "database_unavailable"


class BadRequest(CleanroomError):
    status = 400
    code = "bad_request"


class Unauthorized(CleanroomError):
    status = 401
    code = "unauthorized"


class Forbidden(CleanroomError):
    status = 403
    code = "forbidden"


class NotFound(CleanroomError):
    status = 404
    code = "not_found"


class Conflict(CleanroomError):
    status = 409
    code = "conflict"


class PayloadTooLarge(CleanroomError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(CleanroomError):
    status = 429
    code = "too_many_requests"


class StorageError(CleanroomError):
    status = 503
    code = "storage_error"


class ObjectNotFound(NotFound):
    code = "object_not_found"


class InvalidKey(BadRequest):
    code = "invalid_object_key"
