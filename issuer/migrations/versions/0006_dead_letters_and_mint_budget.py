"""Dead letters (inputs that could not be parsed or recorded) and each device's minting budget.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEVICE_COLUMNS = (
    sa.Column("mint_window_until", sa.DateTime(timezone=True), nullable=True),
    sa.Column("mint_window_count", sa.Integer(), server_default="0", nullable=False),
    sa.Column("mint_window_limit", sa.Integer(), server_default="0", nullable=False),
    sa.Column("mints_refused", sa.Integer(), server_default="0", nullable=False),
    sa.Column("last_mint_refused_at", sa.DateTime(timezone=True), nullable=True),
)


def upgrade() -> None:
    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_dead_letters_source", "dead_letters", ["source"], unique=False)
    op.create_index("ix_dead_letters_received_at", "dead_letters", ["received_at"], unique=False)
    for column in _DEVICE_COLUMNS:
        op.add_column("devices", column._copy())


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch rebuild of `devices` would drop a
    # table other tables' foreign keys point at.
    for column in reversed(_DEVICE_COLUMNS):
        op.execute(f"ALTER TABLE devices DROP COLUMN {column.name}")
    op.drop_index("ix_dead_letters_received_at", table_name="dead_letters")
    op.drop_index("ix_dead_letters_source", table_name="dead_letters")
    op.drop_table("dead_letters")
