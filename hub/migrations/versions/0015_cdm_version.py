"""Dataset versions: the common data model version a version was validated against.

Revision ID: 0015
Revises: 0014
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema. Versions uploaded before the CDM was versioned were checked against
    its first version, 1.0.0 (a version still to be validated gets its own when it is)."""
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cdm_version", sa.String(length=32), nullable=True))
    op.execute("UPDATE dataset_versions SET cdm_version = '1.0.0'")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("cdm_version")
