"""Traffic between versions: a deployment's candidate version and its share of requests (a
canary, a shadow, or a rollout's step), the version it served before its last promotion (what
a rollback returns to), and how its last rollout ended.

Revision ID: 0012
Revises: 0011
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("candidate_version_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("split", sa.JSON, nullable=True))
        batch.add_column(sa.Column("previous_version_id", sa.Integer, nullable=True))
        batch.add_column(sa.Column("outcome", sa.JSON, nullable=True))
        batch.create_foreign_key(
            "fk_deployments_candidate_version", "model_versions", ["candidate_version_id"], ["id"]
        )
        batch.create_foreign_key(
            "fk_deployments_previous_version", "model_versions", ["previous_version_id"], ["id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_constraint("fk_deployments_previous_version", type_="foreignkey")
        batch.drop_constraint("fk_deployments_candidate_version", type_="foreignkey")
        for column in ("outcome", "previous_version_id", "split", "candidate_version_id"):
            batch.drop_column(column)
