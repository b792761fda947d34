"""Artifact sizes as 64-bit integers: PostgreSQL's ``integer`` stops at 2 GiB, which a language
model's bundle passes (SQLite's integers are 64-bit already).

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _resize(type_: type[sa.Integer]) -> None:
    # SQLite: nothing to do, and rebuilding the table would cascade deletes to its dependents
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("model_versions", "size", type_=type_, existing_nullable=False)


def upgrade() -> None:
    _resize(sa.BigInteger)


def downgrade() -> None:
    _resize(sa.Integer)
