"""confirmation runs (the search trial a trial runs again); the micro-batch a trial fell back to

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hpo_trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("confirms", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("micro_batch_size", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hpo_trials", schema=None) as batch_op:
        batch_op.drop_column("micro_batch_size")
        batch_op.drop_column("confirms")
