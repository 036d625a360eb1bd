"""The one place that answers "may X do Y on Z".

Views, API routes, jobs and the gateway ask :func:`allowed` (or :func:`require`); nothing else
in the project compares roles. The Casbin model is ``model.conf``; the global rules are
``global_policy.csv``. Rules compiled from agreements live in the hub database
(:mod:`policies.store`) and are decided by a :class:`PolicyEngine` that a
:class:`policies.store.SyncedPolicy` keeps in step with it; :mod:`policies.explorer` reads
them backwards ("who can reach what").
"""

from policies.enforcer import (
    GLOBAL_DOMAIN,
    PolicyEngine,
    Rule,
    allowed,
    explain,
    get_enforcer,
    make_window,
    new_enforcer,
    user_subject,
)

__all__ = [
    "GLOBAL_DOMAIN",
    "PolicyEngine",
    "Rule",
    "allowed",
    "explain",
    "get_enforcer",
    "make_window",
    "new_enforcer",
    "user_subject",
]
