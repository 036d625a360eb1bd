"""Every model, imported in one place so that Alembic and ``create_all`` see them all."""

from hub.accounts.models import ApiToken, Institution, LoginAttempt, User
from hub.audit.models import AuditEntry, AuditHead
from hub.db import Base
from hub.ingest.models import DatasetVersion, InstitutionMapping
from hub.jobs.models import Job

__all__ = ["ApiToken", "AuditEntry", "AuditHead", "Base", "DatasetVersion", "Institution",
           "InstitutionMapping", "Job", "LoginAttempt", "User"]
