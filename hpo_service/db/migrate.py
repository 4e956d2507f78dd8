"""Alembic migrations of hpo-service's tables: upgrade, and refuse an outdated schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

from hpo_service.core.errors import SchemaOutdatedError
from hpo_service.db.tables import TABLE_PREFIX

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = f"{TABLE_PREFIX}alembic_version"  # Optuna stamps the default alembic_version
UPGRADE_COMMAND = "hpo db upgrade"


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Autogenerate sees only hpo-service's tables, never Optuna's."""
    if type_ == "table":
        return bool(name) and name.startswith(TABLE_PREFIX)
    return True


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option(
        "sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return config


def head_revision(engine: Engine) -> str:
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migrations in {MIGRATIONS_DIR}")
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision`` (all of them by default)."""
    config = alembic_config(engine)
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def ensure_schema(engine: Engine) -> None:
    """Create the tables in a database that has none; refuse one on an older schema."""
    current = current_revision(engine)
    if current is None:
        upgrade(engine)
        return
    head = head_revision(engine)
    if current != head:
        raise SchemaOutdatedError(
            f"the database schema is at revision {current}, this hpo-service needs {head}: "
            f"run `{UPGRADE_COMMAND}` (with the same HPO_DATABASE_URL) first"
        )
