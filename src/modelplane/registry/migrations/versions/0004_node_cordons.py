"""Node maintenance: nodes an operator cordoned (no new replicas) or is draining (replicas move).

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "node_cordons",
        sa.Column("node", sa.String(128), primary_key=True),
        sa.Column("drain", sa.Boolean, nullable=False),
        sa.Column("reason", sa.String(256), nullable=False),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("node_cordons")
