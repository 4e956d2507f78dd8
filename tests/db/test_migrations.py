"""Schema migrations: a database made by the previous migration is refused until `hpo db
upgrade`, which keeps its studies; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from hpo_service.api.app import create_app
from hpo_service.cli import app
from hpo_service.core.errors import SchemaOutdatedError
from hpo_service.core.settings import Settings, normalize_database_url
from hpo_service.db.migrate import current_revision, head_revision, upgrade
from hpo_service.db.store import Store, make_engine

PREVIOUS = "0001"


def test_an_older_database_is_refused_then_upgraded(database_url: str) -> None:
    url = normalize_database_url(database_url)
    engine = make_engine(url)
    upgrade(engine, PREVIOUS)  # a database as the previous release left it
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO hpo_studies (name, status, definition, resolved_definition, "
                "objective_metric, direction, n_trials, created_at) VALUES ('old', 'completed', "
                "'{}', '{}', 'accuracy', 'maximize', 3, CURRENT_TIMESTAMP)"
            )
        )

    with pytest.raises(SchemaOutdatedError, match="hpo db upgrade"):
        Store.open(url)
    with pytest.raises(SchemaOutdatedError, match="hpo db upgrade"):
        create_app(Settings(database_url=url), schedule=False)  # the service refuses to start

    result = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0, result.output
    assert current_revision(engine) == head_revision(engine) != PREVIOUS

    store = Store.open(url)
    record = store.get_study("old")
    assert record.status == "completed" and record.n_trials == 3
    assert record.run_environment is None  # recorded only by studies that run after 0002
    assert store.tokens() == []


def test_upgrading_an_up_to_date_database_changes_nothing(sqlite_url: str) -> None:
    url = normalize_database_url(sqlite_url)
    Store.open(url)
    result = CliRunner().invoke(app, ["db", "upgrade", "--database-url", url])
    assert result.exit_code == 0 and head_revision(make_engine(url)) in result.output
