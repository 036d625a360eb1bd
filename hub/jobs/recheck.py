"""What every job asks before it acts for a user: :func:`recheck` re-asks :mod:`policies`
whether whoever queued the job may still do it. (Job bodies live with their domain.)"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from hub.accounts.models import User
from hub.accounts.services import may
from hub.audit.services import record
from hub.errors import Forbidden
from hub.jobs.models import Job
from hub.jobs.services import JobContext
from policies.enforcer import PolicyEngine, user_subject
from policies.store import load_rules

# Asking again when a job acts ------------------------------------------------------------


class JobRefused(Forbidden):
    """The policy no longer lets whoever queued the job do what it is about to do."""

    code = "job_refused"


def policy_now(session: Session, domain: str) -> PolicyEngine:
    """The policy of agreement ``domain`` (its rules and the global ones) as the database
    holds it now, read through ``session``: a job asks seldom, so it reads the rules afresh
    rather than keep a :class:`policies.store.SyncedPolicy` per worker (and on SQLite a
    second connection would wait for the session's own write lock)."""
    return PolicyEngine(load_rules(session, [domain]))


def queued_by(session: Session, job_id: int) -> tuple[str, User | None]:
    """Who queued job ``job_id``: the ledger actor (``user:<name>``, ``system``, ``cli``) and
    the user it names, if it names one."""
    created_by = session.scalar(select(Job.created_by).where(Job.id == job_id)) or "system"
    if not created_by.startswith("user:"):
        return created_by, None
    name = created_by.removeprefix("user:")
    return created_by, session.scalar(select(User).where(User.username == name))


def refuse(ctx: JobContext, who: str, action: str, obj: str, message: str, **detail: Any) -> None:
    """Record a ``job.refused`` entry and stop the job with a clear error."""
    with ctx.database.session() as s:
        record(
            s,
            actor="system",
            action="job.refused",
            target=f"job:{ctx.job_id}",
            detail={"kind": ctx.kind, "for": who, "action": action, "object": obj, **detail},
        )
    raise JobRefused(message)


def recheck(
    ctx: JobContext,
    action: str,
    obj: str,
    *,
    owner: Callable[[User], bool] | None = None,
    domain: str | None = None,
    what: str = "",
) -> None:
    """Ask the policy, now, whether whoever queued the job may still ``action`` ``obj``
    (globally by their roles, or as ``user:<id>`` in an agreement ``domain``); stop the job
    with a ``job.refused`` ledger entry when not. A job queued by the hub itself or the
    command line (no user) acts for the operator: nothing to re-ask."""
    with ctx.database.session() as s:
        who, user = queued_by(s, ctx.job_id)
        if not who.startswith("user:"):
            return
        if user is None or not user.is_active:
            ok, why = False, "their account is disabled or gone"
        else:
            is_owner = bool(owner(user)) if owner is not None else False
            if domain is None:
                ok = may(user, action, obj, owner=is_owner)
            else:
                ok = policy_now(s, domain).allowed(
                    user_subject(user.id), action, obj, domain=domain, owner=is_owner
                )
            why = (
                f"their role ({user.role.replace('_', ' ')}) no longer allows it"
                if domain is None
                else f"{domain.replace(':', ' `', 1)}` no longer grants it to them"
            )
    if not ok:
        refuse(
            ctx,
            who,
            action,
            obj,
            f"stopped: {who.removeprefix('user:')} may no longer {what or action} ({why}); "
            "whoever may do it now can start it again.",
            reason=why,
        )
