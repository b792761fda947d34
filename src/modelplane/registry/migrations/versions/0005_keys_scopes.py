"""Keys with model scopes, expiry, rotation, last use and (for quotas) per-key limits; the old
``user`` role becomes ``invoker`` (it could read and infer; reading is now the viewer's).

Revision ID: 0005
Revises: 0004
"""

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("models", sa.JSON, nullable=True),  # names or globs; NULL: every model
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rotated_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("previous_hash", sa.String(64), nullable=True),
        sa.Column("previous_expires_at", sa.DateTime(timezone=True), nullable=True),
        # per-key limits, for quotas
        sa.Column("rate_limit", sa.Float, nullable=True),
        sa.Column("burst", sa.Integer, nullable=True),
        sa.Column("max_concurrent", sa.Integer, nullable=True),
        sa.Column("daily", sa.Integer, nullable=True),
    ]


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        for column in _columns():
            batch.add_column(column)
    op.execute("UPDATE api_keys SET role = 'invoker' WHERE role = 'user'")


def downgrade() -> None:
    # invoker, publisher and viewer keys had no equivalent before: the closest is ``user``
    op.execute("UPDATE api_keys SET role = 'user' WHERE role IN ('invoker', 'publisher', 'viewer')")
    with op.batch_alter_table("api_keys") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
