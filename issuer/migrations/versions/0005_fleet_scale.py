"""Fleet scale: device health copied into columns, indexes for keyset pagination and filters.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23

Filters (stale, sensor unhealthy, not planted) and the coverage report must not parse 100,000 JSON
health documents, so a heartbeat copies what they need into plain columns; this revision adds the
columns, fills them from the health already stored, and adds the (time, id) indexes that keyset
pagination walks. Self-contained: it imports nothing from the application (the application's code
may change after this revision is written).
"""

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> tuple[sa.Column[Any], ...]:
    """New Column objects each time: a Column belongs to one table."""
    return (
        sa.Column("health_hash", sa.String(length=64), nullable=True),
        sa.Column("sensor_name", sa.String(length=40), nullable=True),
        sa.Column("sensor_healthy", sa.Boolean(), nullable=True),
        sa.Column("targets_expected", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("targets_planted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("sensor_lost_events", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("spool_dropped", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("spool_rejected", sa.Integer(), nullable=False, server_default="0"),
    )


_INDEXES = (
    ("ix_devices_enrolled_id", "devices", ["enrolled_at", "id"]),
    ("ix_devices_last_heartbeat", "devices", ["last_heartbeat_at"]),
    ("ix_credentials_created_id", "credentials", ["created_at", "id"]),
    ("ix_alerts_created_id", "alerts", ["created_at", "id"]),
)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _columns_of(health: Any) -> dict[str, Any]:
    """The same projection as issuer/device_health.py at the time of this revision."""
    health = health if isinstance(health, dict) else {}
    sensor = health.get("sensor") if isinstance(health.get("sensor"), dict) else {}
    targets = [t for t in health.get("targets") or [] if isinstance(t, dict)]
    healthy = sensor.get("healthy")
    return {
        "health_hash": hashlib.sha256(
            json.dumps(health, sort_keys=True, separators=(",", ":")).encode()
        ).hexdigest(),
        "sensor_name": str(sensor["name"])[:40] if sensor.get("name") else None,
        "sensor_healthy": healthy if isinstance(healthy, bool) else None,
        "targets_expected": len(targets),
        "targets_planted": sum(1 for t in targets if t.get("planted") is True),
        "sensor_lost_events": _count(sensor.get("lost_events")),
        "spool_dropped": _count(health.get("spool_dropped")),
        "spool_rejected": _count(health.get("spool_rejected")),
    }


def upgrade() -> None:
    # Plain ALTER TABLE (SQLite has ADD and DROP COLUMN): a batch rebuild of `devices` would have to
    # drop a table that api_tokens, placements and agent_events reference.
    for column in _columns():
        op.add_column("devices", column)
    devices = sa.table(
        "devices",
        sa.column("id", sa.String()),
        sa.column("health", sa.JSON()),
        *(sa.column(c.name, c.type) for c in _columns()),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(devices.c.id, devices.c.health)).all()
    for device_id, health in rows:
        connection.execute(devices.update().where(devices.c.id == device_id).values(**_columns_of(health)))
    for name, table, columns in _INDEXES:
        op.create_index(name, table, columns, unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(_INDEXES):
        op.drop_index(name, table_name=table)
    for column in reversed(_columns()):
        op.drop_column("devices", column.name)
