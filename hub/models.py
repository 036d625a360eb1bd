"""Every model, imported in one place so that Alembic and ``create_all`` see them all."""

from hub.accounts.models import ApiToken, Institution, LoginAttempt, User, UserSession
from hub.agreements.models import AgreementRecord, AgreementSignature
from hub.audit.models import AuditEntry, AuditHead
from hub.db import Base
from hub.gateway.models import GatewayAnswer, PrivacyBudget
from hub.ingest.models import DatasetVersion, InstitutionMapping
from hub.jobs.models import Job
from hub.notices.models import Notice
from hub.releases.models import (
    ReleaseComment,
    ReleaseObjection,
    ReleaseOutput,
    ReleaseRequest,
    ReleaseReview,
)
from hub.synth.models import SyntheticVersion
from policies import store as _policy_store

# The policy tables belong to `policies/` (its own MetaData); the hub's migrations create
# them, so Alembic's comparison and the test fixtures must know them too.
for _table in _policy_store.metadata.sorted_tables:
    if _table.name not in Base.metadata.tables:
        _table.to_metadata(Base.metadata)

__all__ = [
    "AgreementRecord",
    "AgreementSignature",
    "ApiToken",
    "AuditEntry",
    "AuditHead",
    "Base",
    "DatasetVersion",
    "GatewayAnswer",
    "Institution",
    "InstitutionMapping",
    "Job",
    "LoginAttempt",
    "Notice",
    "PrivacyBudget",
    "ReleaseComment",
    "ReleaseObjection",
    "ReleaseOutput",
    "ReleaseRequest",
    "ReleaseReview",
    "SyntheticVersion",
    "User",
    "UserSession",
]
