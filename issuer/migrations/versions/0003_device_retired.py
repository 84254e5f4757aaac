"""Devices can be retired (offboarded): `retired_at`, set once their keys and tokens are revoked.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# A nullable column is added and dropped in place on both backends (SQLite >= 3.35 drops columns
# natively): no batch rebuild, which on SQLite would drop `devices` under the tables that reference it.


def upgrade() -> None:
    op.add_column("devices", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("devices", "retired_at")
