"""Synthetic versions, and the "share synthetic only" flag of a dataset version.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        "synthetic_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_version_id", sa.Integer(), nullable=True),
        sa.Column("agreement_slug", sa.String(length=63), nullable=False),
        sa.Column("cdm_table", sa.String(length=64), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("data_key", sa.String(length=400), nullable=False),
        sa.Column("report", sa.Text(), nullable=False),
        sa.Column("plot_keys", sa.Text(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_synthetic_versions_dataset_version_id_dataset_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_synthetic_versions")),
    )
    with op.batch_alter_table("synthetic_versions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_synthetic_versions_agreement_slug"), ["agreement_slug"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_synthetic_versions_dataset_version_id"),
            ["dataset_version_id"],
            unique=False,
        )
        batch_op.create_index(batch_op.f("ix_synthetic_versions_state"), ["state"], unique=False)

    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("synthetic_only", sa.Boolean(), server_default=sa.false(), nullable=False)
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("dataset_versions", schema=None) as batch_op:
        batch_op.drop_column("synthetic_only")

    with op.batch_alter_table("synthetic_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_synthetic_versions_state"))
        batch_op.drop_index(batch_op.f("ix_synthetic_versions_dataset_version_id"))
        batch_op.drop_index(batch_op.f("ix_synthetic_versions_agreement_slug"))

    op.drop_table("synthetic_versions")
