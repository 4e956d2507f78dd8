"""The ``hpo`` command: run and validate studies, list presets, read results."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

from hpo_service.definition import StudyDefinition, describe_errors
from hpo_service.errors import HpoError

app = typer.Typer(
    help="Hyperparameter optimization for fine-tuning transformer text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

out = Console()
if not out.is_terminal:  # a pipe or CI log: room for the trial table's columns
    out = Console(width=160)
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

DefinitionFile = Annotated[
    Path, typer.Argument(help="A study definition in YAML or JSON.", show_default=False)
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="Overrides HPO_DATABASE_URL (default sqlite:///hpo.db).",
    ),
]


def _clear_errors(command: F) -> F:
    """Bad input ends the command with one line per problem and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationError as error:
            for line in describe_errors(error):
                err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)
        except HpoError as error:
            err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def _settings(database_url: str | None) -> Any:
    return _settings_with(database_url=database_url) if database_url else _settings_with()


def _settings_with(**overrides: Any) -> Any:
    from hpo_service.settings import Settings

    return Settings(**overrides)


def _store(database_url: str | None) -> Any:
    from hpo_service.db.store import Store

    return Store.open(_settings(database_url).database_url)


def _load(file: Path) -> tuple[dict[str, Any], StudyDefinition]:
    from hpo_service.presets import read_definition_file, resolve_definition

    document = read_definition_file(file)
    return document, resolve_definition(document)


@app.command()
@_clear_errors
def validate(file: DefinitionFile) -> None:
    """Check a definition and its data without running anything."""
    from hpo_service.data import load_labelled_data

    _, definition = _load(file)
    data = load_labelled_data(definition.dataset)
    out.print(
        f"[green]ok[/green] {definition.name}: {definition.n_trials} trials, "
        f"{len(data.train)} train / {len(data.eval)} eval examples, labels {data.label_names}",
        highlight=False,
    )


@app.command()
@_clear_errors
def run(
    file: DefinitionFile,
    database_url: DatabaseUrl = None,
    replace: Annotated[
        bool, typer.Option(help="Delete a finished study of the same name first.")
    ] = False,
) -> None:
    """Run a study here (local Ray, or HPO_RAY_ADDRESS) and print its best configuration."""
    import optuna

    from hpo_service.progress import StudyProgress
    from hpo_service.runner import run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    document, definition = _load(file)
    settings = _settings(database_url)
    if replace:
        _delete_finished(_store(database_url), definition.name)
    with StudyProgress(definition, out) as progress:
        run_study(document, definition, settings, callbacks=[progress])
    _print_results(_store(database_url), definition.name)


def _delete_finished(store: Any, name: str) -> None:
    from hpo_service.db.optuna_storage import delete_optuna_study
    from hpo_service.errors import NotFoundError

    try:
        record = store.get_study(name)
    except NotFoundError:
        return
    if not record.status.is_finished:
        raise HpoError(f"study {name!r} is {record.status.value}; only a finished one is replaced")
    store.delete_study(name)
    delete_optuna_study(store.engine.url.render_as_string(hide_password=False), name)


def _print_results(store: Any, name: str) -> None:
    from hpo_service.best import best_config, render

    record = store.get_study(name)
    trials = store.trials(name)
    searched = sorted(
        StudyDefinition.model_validate(record.resolved_definition).parameters.searched()
    )
    table = Table(title=f"{name}: {record.status.value}")
    for column in ("trial", "state", record.objective_metric, "epochs", "seconds", *searched):
        table.add_column(column)
    for trial in trials:
        table.add_row(
            str(trial.number),
            trial.state.value,
            "" if trial.objective is None else f"{trial.objective:.4f}",
            str(trial.epochs),
            "" if trial.duration_s is None else f"{trial.duration_s:.1f}",
            *(_short(trial.params.get(p)) for p in searched),
        )
    out.print(table)
    if record.error:
        err.print(f"[red]study error:[/red] {record.error}", highlight=False)
    if store.best_trial(name) is None:
        err.print("[yellow]no trial ran its full budget: no best configuration[/yellow]")
        return
    out.print("[bold]Best configuration[/bold]")
    out.print_json(render(best_config(store, name), "json"))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command()
@_clear_errors
def best(
    study: Annotated[str, typer.Argument(help="The study's name.")],
    format: Annotated[str, typer.Option("--format", "-f", help="json or yaml.")] = "json",
    database_url: DatabaseUrl = None,
) -> None:
    """Print the best configuration of a study (the best trial that ran its full budget)."""
    from hpo_service.best import best_config, render

    if format not in ("json", "yaml"):
        raise HpoError(f"--format must be json or yaml, not {format!r}")
    document = best_config(_store(database_url), study)
    typer.echo(render(document, format))  # type: ignore[arg-type]


@app.command()
@_clear_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides HPO_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides HPO_PORT (8000).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Serve the REST API and the Optuna dashboard, and run submitted studies."""
    import uvicorn

    from hpo_service.api.app import create_app

    overrides = {"host": host, "port": port, "database_url": database_url}
    settings = _settings_with(**{k: v for k, v in overrides.items() if v is not None})
    application = create_app(settings)
    err.print(
        f"hpo-service on http://{settings.host}:{settings.port}: API under /v1 (docs at /docs), "
        f"Optuna dashboard at /dashboard, database {_safe_url(settings.database_url)}",
        highlight=False,
    )
    uvicorn.run(application, host=settings.host, port=settings.port, log_level="info")


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def presets() -> None:
    """List the search-space presets in search_spaces/."""
    from hpo_service.presets import list_presets

    table = Table("preset", "source")
    for name, source in list_presets().items():
        table.add_row(name, source)
    out.print(table)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a study definition."""
    typer.echo(json.dumps(StudyDefinition.model_json_schema(), indent=2))


@db_app.command("upgrade")
@_clear_errors
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade hpo-service's tables to this version's schema."""
    from hpo_service.db.migrate import current_revision, upgrade
    from hpo_service.db.store import make_engine

    engine = make_engine(_settings(database_url).database_url)
    upgrade(engine)
    out.print(f"database schema at revision {current_revision(engine)}")


if __name__ == "__main__":
    app()
