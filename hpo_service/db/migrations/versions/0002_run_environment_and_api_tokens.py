"""run environment of studies, API tokens

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "hpo_api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("prefix", sa.String(length=16), nullable=False),
        sa.Column(
            "scope",
            sa.Enum("read", "write", "admin", name="scope", native_enum=False, length=16),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
        sa.UniqueConstraint("token_hash"),
    )
    with op.batch_alter_table("hpo_api_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_hpo_api_tokens_prefix"), ["prefix"], unique=False)
    with op.batch_alter_table("hpo_studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("model_type", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("dataset_fingerprint", sa.String(length=80), nullable=True))
        batch_op.add_column(sa.Column("torch_version", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("transformers_version", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("optuna_version", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("ray_version", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hpo_studies", schema=None) as batch_op:
        batch_op.drop_column("ray_version")
        batch_op.drop_column("optuna_version")
        batch_op.drop_column("transformers_version")
        batch_op.drop_column("torch_version")
        batch_op.drop_column("dataset_fingerprint")
        batch_op.drop_column("model_type")

    with op.batch_alter_table("hpo_api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hpo_api_tokens_prefix"))
    op.drop_table("hpo_api_tokens")
