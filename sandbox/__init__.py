"""The researcher sandbox: JupyterHub configuration, the query gateway (server side,
``sandbox.gateway``) and the researcher client (this package's top level), which needs only
``requests`` and ``pandas``::

    from sandbox import connect
    cr = connect()
    cr.query("SELECT indication, COUNT(*) AS n FROM episode GROUP BY indication")
"""

from sandbox.client import (
    BudgetExhausted,
    Client,
    PolicyDenied,
    QueryRejected,
    RateLimited,
    SandboxError,
    connect,
)

__all__ = [
    "BudgetExhausted",
    "Client",
    "PolicyDenied",
    "QueryRejected",
    "RateLimited",
    "SandboxError",
    "connect",
]
