"""Ledger checkpoints (issue 18, item 1): keyed entries, signed checkpoints, witness stores.

Entries written before this revision keep ``entry_mac`` NULL: the migration runs without the
ledger key (which is never in the database), so ``cleanroom audit seal`` keys them once,
after checking their chain (docs/security.md).

Revision ID: 0013
Revises: 0012
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("entry_mac", sa.String(length=64), nullable=True))
    with op.batch_alter_table("institutions", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("witness_store", sa.String(length=500), nullable=False, server_default="")
        )
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.Column("length", sa.Integer(), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("merkle_root", sa.String(length=64), nullable=False),
        sa.Column("key_id", sa.String(length=64), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
    )
    op.create_table(
        "audit_witness_pushes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("checkpoint_id", sa.Integer(), nullable=False),
        sa.Column("institution_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("store", sa.String(length=500), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("at", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["audit_checkpoints.id"],
            name=op.f("fk_audit_witness_pushes_checkpoint_id_audit_checkpoints"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["institution_id"],
            ["institutions.id"],
            name=op.f("fk_audit_witness_pushes_institution_id_institutions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_witness_pushes")),
        sa.UniqueConstraint(
            "checkpoint_id",
            "institution_id",
            name=op.f("uq_audit_witness_pushes_checkpoint_id"),
        ),
    )
    with op.batch_alter_table("audit_witness_pushes", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_audit_witness_pushes_checkpoint_id"), ["checkpoint_id"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_audit_witness_pushes_institution_id"), ["institution_id"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("audit_witness_pushes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_witness_pushes_institution_id"))
        batch_op.drop_index(batch_op.f("ix_audit_witness_pushes_checkpoint_id"))
    op.drop_table("audit_witness_pushes")
    op.drop_table("audit_checkpoints")
    with op.batch_alter_table("institutions", schema=None) as batch_op:
        batch_op.drop_column("witness_store")
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_column("entry_mac")
