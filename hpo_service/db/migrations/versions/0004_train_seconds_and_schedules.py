"""train_seconds: the wall time a trial trained and evaluated, per epoch and per trial (an
objective a study with several `objectives` can minimise); schedule: the values
population-based training gave a trial, from which epoch on

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = ("hpo_trials", "hpo_trial_epochs")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column("train_seconds", sa.Float(), nullable=True))
    with op.batch_alter_table("hpo_trials", schema=None) as batch_op:
        batch_op.add_column(sa.Column("schedule", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hpo_trials", schema=None) as batch_op:
        batch_op.drop_column("schedule")
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("train_seconds")
