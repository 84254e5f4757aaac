"""Agent events keyed by (device_id, event_id): one device's event ids never shadow another's.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22

The primary key changes, which SQLite cannot ALTER: the table is rebuilt (new table, copy, swap) the
same way on every backend.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_COLUMNS = "event_id, device_id, kind, time, path, pid, exe, user, classification, detail, received_at"


def _create(name: str, primary_key: list[str], key_name: str) -> None:
    op.create_table(
        name,
        sa.Column("event_id", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("path", sa.String(length=4096), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("exe", sa.Text(), nullable=True),
        sa.Column("user", sa.String(length=255), nullable=True),
        sa.Column("classification", sa.String(length=40), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"]),
        # Named for its final table; PostgreSQL's name for 0001's unnamed key was agent_events_pkey.
        sa.PrimaryKeyConstraint(*primary_key, name=key_name),
    )


def _swap(where: str = "") -> None:
    columns = ", ".join(f'"{c.strip()}"' for c in _COLUMNS.split(","))
    op.execute(f"INSERT INTO agent_events_new ({columns}) SELECT {columns} FROM agent_events a {where}")
    op.drop_index("ix_agent_events_device_time", table_name="agent_events")
    op.drop_table("agent_events")
    op.rename_table("agent_events_new", "agent_events")
    op.create_index("ix_agent_events_device_time", "agent_events", ["device_id", "time"], unique=False)


def upgrade() -> None:
    _create("agent_events_new", ["device_id", "event_id"], "pk_agent_events")
    _swap()


def downgrade() -> None:
    _create("agent_events_new", ["event_id"], "agent_events_pkey")
    # The old key cannot hold one id on two devices: keep the row of the first device.
    _swap(
        "WHERE NOT EXISTS (SELECT 1 FROM agent_events b "
        "WHERE b.event_id = a.event_id AND b.device_id < a.device_id)"
    )
