"""Triage facts: the addresses each device reached the issuer from, and alert updates owed.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30

Self-contained (one new table, one new nullable column): another branch's revision may be chained
before or after it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "device_addresses",
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        sa.PrimaryKeyConstraint("device_id", "address"),
    )
    with op.batch_alter_table("device_addresses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_addresses_last_seen"), ["last_seen"], unique=False)
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("update_due_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_alerts_update_due_at"), ["update_due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alerts_update_due_at"))
        batch_op.drop_column("update_due_at")
    with op.batch_alter_table("device_addresses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_addresses_last_seen"))
    op.drop_table("device_addresses")
