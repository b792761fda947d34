"""Conversions (jobs) and, on versions, the source artifact and the parity/optimization report.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("source_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("report", sa.JSON, nullable=True))
    op.create_table(
        "conversions",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("model", sa.String(63), nullable=False),
        sa.Column("source_format", sa.String(32), nullable=False),
        sa.Column("source_digest", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("error", sa.String, nullable=True),
        sa.Column("report", sa.JSON, nullable=True),
        sa.Column("version", sa.Integer, nullable=True),
        sa.Column("created_by", sa.String(128), nullable=False),
        sa.Column("created_at", TZ, nullable=False),
        sa.Column("updated_at", TZ, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("conversions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("report")
        batch.drop_column("source_digest")
