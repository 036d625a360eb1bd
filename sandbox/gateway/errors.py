"""The gateway's errors. Each carries an HTTP ``status`` and a ``code`` so the hub can render
them with its one JSON error shape without the gateway importing the hub."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: something the researcher can act on."""

    status = 400
    code = "gateway_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class QueryRejected(GatewayError):
    """The query uses a construct that real data does not answer.

    ``construct`` names it (``MIN``, ``SELECT *``, ``read_csv``, ``window function`` ...);
    ``reason`` is the sentence shown to the researcher."""

    code = "query_rejected"

    def __init__(self, reason: str, construct: str) -> None:
        super().__init__(f"{construct}: {reason}")
        self.reason = reason
        self.construct = construct


class QueryFailed(GatewayError):
    """DuckDB refused or failed the (already checked) query: unknown column, type error ..."""

    code = "query_failed"


class QueryTimeout(GatewayError):
    """The query ran longer than the per-query time limit and was interrupted."""

    status = 408
    code = "query_timeout"


class FitRefused(GatewayError):
    """A model fit was refused: fitting not allowed, too few patients or institutions.

    ``spent`` is the ε already used when the refusal came from noisy statistics (the
    budget is debited all the same); 0 when it came before any data was read."""

    code = "fit_refused"
    spent = 0.0
