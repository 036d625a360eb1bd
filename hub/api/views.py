"""JSON API, version 1. Bearer tokens only; errors as {"error": {"code", "message"}}."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from hub.accounts.models import User
from hub.db import get_db
from hub.jobs.models import Job
from hub.jobs.services import get_job, job_dict
from hub.web import current_user, guard, may

bp = Blueprint("api", __name__, url_prefix="/api/v1")


@bp.route("/me")
@guard("read", "account", scope="read")
def me() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return jsonify(
        {
            "username": user.username,
            "display_name": user.display_name,
            "role": user.role,
            "institution": user.institution.slug if user.institution else None,
        }
    )


def _own_job(user: User, job_id: int) -> bool:
    job = get_db().get(Job, job_id)
    return job is not None and job.created_by == f"user:{user.username}"


# A job's state is read with a read token, and by the upload script that started it (an
# upload token follows its own upload's processing).
@bp.route("/jobs/<int:job_id>")
@guard("read", "jobs/{job_id}", scope=("read", "upload"), owner=_own_job)
def job(job_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    found = get_job(get_db(), job_id)
    content = may(user, "read", f"jobs/{job_id}/content", owner=_own_job(user, job_id))
    return jsonify(job_dict(found, content=content))
