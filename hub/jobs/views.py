"""``GET /api/v1/jobs/<id>``: a background job's state and progress, for the API."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from hub.accounts.models import User
from hub.db import get_db
from hub.jobs.models import Job
from hub.jobs.services import get_job, job_dict
from hub.web import current_user, guard, may

api = Blueprint("jobs_api", __name__, url_prefix="/api/v1/jobs")


def _own_job(user: User, job_id: int) -> bool:
    job = get_db().get(Job, job_id)
    return job is not None and job.created_by == f"user:{user.username}"


# A job's state is read with a read token, and by the upload script that started it (an
# upload token follows its own upload's processing).
@api.route("/<int:job_id>")
@guard("read", "jobs/{job_id}", scope=("read", "upload"), owner=_own_job)
def job(job_id: int) -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    found = get_job(get_db(), job_id)
    content = may(user, "read", f"jobs/{job_id}/content", owner=_own_job(user, job_id))
    return jsonify(job_dict(found, content=content))
