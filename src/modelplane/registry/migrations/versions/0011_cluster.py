"""Several servers on one database: their heartbeats, the controller's lease (who leads, with a
fencing token) and the documents the leader shares (the routes every gateway serves).

Revision ID: 0011
Revises: 0010
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "servers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.String(512), nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(64), nullable=False),
        sa.Column("token", sa.BigInteger, nullable=False),
        sa.Column("acquired_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
    )
    op.create_table(
        "cluster_documents",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("doc", sa.JSON, nullable=False),
        sa.Column("token", sa.BigInteger, nullable=False),
    )


def downgrade() -> None:
    for table in ("cluster_documents", "leases", "servers"):
        op.drop_table(table)
