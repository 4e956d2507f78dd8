"""Alembic environment for hpo-service's own tables only.

Optuna keeps its tables (and its own ``alembic_version``) in the same database, so ours use the
version table ``hpo_alembic_version`` and autogenerate looks only at tables named ``hpo_*``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool

from hpo_service.db.migrate import VERSION_TABLE, include_name
from hpo_service.db.tables import Base


def run_migrations() -> None:
    config = context.config
    options = {
        "target_metadata": Base.metadata,
        "version_table": VERSION_TABLE,
        "include_name": include_name,
        "render_as_batch": True,  # SQLite can only alter tables by copying them
    }
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = engine_from_config(
        config.get_section(config.config_ini_section) or {},
        prefix="sqlalchemy.",
        poolclass=pool.NullPool,
    )
    with engine.connect() as connection:
        context.configure(connection=connection, **options)
        with context.begin_transaction():
            context.run_migrations()


run_migrations()
