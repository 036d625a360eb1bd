"""One exception hierarchy for the hub; each class carries its HTTP status and error code.

Views raise these; :func:`init_app` renders them as ``{"error": {"code", "message"}}`` under
``/api/`` and as an HTML page elsewhere. A user never sees a stack trace.
"""

from __future__ import annotations

import logging
import re
from typing import Any

log = logging.getLogger(__name__)


class CleanroomError(Exception):
    """Base of every error a user may see. ``message`` is a sentence a person can act on.

    ``message`` is what web pages and the JSON API show; ``cli_hint`` (optional) names a
    ``cleanroom`` command that helps, and only the command line adds it
    (:attr:`cli_message`): a web page never tells a steward to open a terminal.
    """

    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        cli_hint: str = "",
    ):
        super().__init__(message)
        self.message = message
        self.cli_hint = cli_hint
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    @property
    def cli_message(self) -> str:
        """The message with the command-line hint, for ``cleanroom`` commands."""
        if not self.cli_hint:
            return self.message
        return f"{self.message.rstrip('.')}; {self.cli_hint}"

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def without_repeats(message: str) -> str:
    """The message with a repeated leading label said once ("agreement `x`: agreement `x`
    cannot …" -> "agreement `x` cannot …"): layers that each add their context must not
    stutter."""
    text = message.strip()
    while True:
        head, sep, rest = text.partition(": ")
        if not sep or not head or not rest.startswith(head):
            return text
        text = rest


_CLI_ASIDE = re.compile(r"\s*\([^()]*`cleanroom [^`]*`[^()]*\)")


def web_text(message: str) -> str:
    """A message for a web page: repeats said once, no command-line hints (a clause or an
    aside naming a `cleanroom` command goes), code quotes as plain quotes."""
    text = _CLI_ASIDE.sub("", without_repeats(message))
    clauses = [c for c in text.split("; ") if "`cleanroom " not in c]
    text = "; ".join(clauses) if clauses else text
    if text and text[-1] not in ".!?)":
        text += "."
    return re.sub(r"`([^`]+)`", r"‘\1’", text)


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
