"""Synthetic versions: the group of an agreement's tables synthesised together, and the
dataset versions each was trained on (so a withdrawal finds it).

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("synthetic_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("group_id", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("source_versions", sa.Text(), server_default="[]", nullable=False)
        )
        batch_op.create_index(
            batch_op.f("ix_synthetic_versions_group_id"), ["group_id"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("synthetic_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_synthetic_versions_group_id"))
        batch_op.drop_column("source_versions")
        batch_op.drop_column("group_id")
