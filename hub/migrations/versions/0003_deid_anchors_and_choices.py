"""Date anchors, de-identification choices, pseudonym key epochs and key indexes.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "date_anchors",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("anchor", sa.Date(), nullable=False),
        sa.Column("source", sa.String(length=128), nullable=False),
        sa.Column("key_epoch", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_date_anchors")),
        sa.UniqueConstraint("subject", name=op.f("uq_date_anchors_subject")),
    )
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("deid_choices", sa.Text(), nullable=False, server_default="{}")
        )
        batch_op.add_column(sa.Column("deid_floor", sa.Text(), nullable=False, server_default="{}"))
        batch_op.add_column(
            sa.Column("key_epoch", sa.Integer(), nullable=False, server_default="1")
        )
        batch_op.add_column(
            sa.Column("keys_key", sa.String(length=400), nullable=False, server_default="")
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("keys_key")
        batch_op.drop_column("key_epoch")
        batch_op.drop_column("deid_floor")
        batch_op.drop_column("deid_choices")
    op.drop_table("date_anchors")
