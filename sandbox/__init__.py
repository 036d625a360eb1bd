"""The researcher sandbox: JupyterHub configuration, the query gateway (server side,
``sandbox.gateway``) and the researcher client (this package's top level), which needs only
``requests`` and ``pandas``::

    from sandbox import connect
    cr = connect()
    cr.query("SELECT indication, COUNT(*) AS n FROM episode GROUP BY indication")

In a notebook a refused query prints one line (the reason and what to change);
``sandbox.verbose(True)`` shows full tracebacks.
"""

from sandbox.client import (
    Agreements,
    BudgetExhausted,
    Client,
    PolicyDenied,
    QueryRejected,
    RateLimited,
    Result,
    SandboxError,
    connect,
    verbose,
)

__all__ = [
    "Agreements",
    "BudgetExhausted",
    "Client",
    "PolicyDenied",
    "QueryRejected",
    "RateLimited",
    "Result",
    "SandboxError",
    "connect",
    "verbose",
]
