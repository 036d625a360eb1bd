"""The query gateway (server side): SQL checking and rewriting, disclosure control, model
fitting, over locked-down DuckDB views of an agreement's released data. A library: the hub
mounts it; it imports only ``contracts`` from the project."""

from sandbox.gateway import dp, dpfit
from sandbox.gateway.engine import AgreementViews, Answer, Gateway, Source
from sandbox.gateway.errors import (
    FitRefused,
    GatewayError,
    QueryFailed,
    QueryRejected,
    QueryTimeout,
)
from sandbox.gateway.sql import CheckedQuery, check_query, rewrite

__all__ = [
    "AgreementViews",
    "Answer",
    "CheckedQuery",
    "FitRefused",
    "Gateway",
    "GatewayError",
    "QueryFailed",
    "QueryRejected",
    "QueryTimeout",
    "Source",
    "check_query",
    "dp",
    "dpfit",
    "rewrite",
]
