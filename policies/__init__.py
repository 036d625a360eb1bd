"""The one place that answers "may X do Y on Z".

Views, API routes, jobs and the gateway ask :func:`allowed` (or :func:`require`); nothing else
in the project compares roles. The Casbin model is ``model.conf``; the global rules are
``global_policy.csv``.
"""

from policies.enforcer import allowed, explain, get_enforcer

__all__ = ["allowed", "explain", "get_enforcer"]
