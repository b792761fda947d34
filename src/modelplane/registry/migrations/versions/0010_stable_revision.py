"""A deployment's last revision that served, persisted: after any restart it serves again until
a newer revision has a ready replica (before, it was remembered only in the controller's memory).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("stable_version_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("stable_config", sa.JSON, nullable=True))
        batch.create_foreign_key(
            "fk_deployments_stable_version", "model_versions", ["stable_version_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("fk_deployments_stable_version", type_="foreignkey")
        batch.drop_column("stable_config")
        batch.drop_column("stable_version_id")
