"""What every `hpo` command shares: the app, consoles, options, clear errors, tables."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpo_service.core.definition import StudyDefinition, describe_errors
from hpo_service.core.errors import HpoError
from hpo_service.core.records import TrialState

if TYPE_CHECKING:
    from hpo_service.client import ServiceClient


app = typer.Typer(
    help="Hyperparameter optimization for fine-tuning transformer text classifiers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

db_app = typer.Typer(help="The database's schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

token_app = typer.Typer(help="API tokens (stored as hashes in the database).", no_args_is_help=True)
app.add_typer(token_app, name="token")

SHOWN_ERROR_CHARS = 300  # of a failed trial's error, under the trials table
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

StudyName = Annotated[str, typer.Argument(help="The study's name.", show_default=False)]

POLL_S = 1.0  # how often `hpo submit --wait` asks the service


def _server_option(when_absent: str) -> Any:
    """``--server URL``, or HPO_SERVER_URL: the base URL of a running ``hpo serve``."""
    return typer.Option(
        "--server",
        envvar="HPO_SERVER_URL",
        help=f"hpo-service's base URL; {when_absent}.",
        show_default=False,
    )


ServerUrl = Annotated[str | None, _server_option("default http://127.0.0.1:8000")]

ServerOrDatabase = Annotated[
    str | None, _server_option("ask it instead of the database, unless --database-url is given")
]

ApiToken = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="HPO_TOKEN",
        help="An API token, for a service that requires one.",
        show_default=False,
    ),
]


def clear_errors(command: F) -> F:
    """Bad input ends the command with one line per problem and exit code 2, no traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ValidationError as error:
            for line in describe_errors(error):
                err.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
        except HpoError as error:  # ServiceError too: the server's answer, in one line
            err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2)

    return wrapper  # type: ignore[return-value]


def settings_for(database_url: str | None) -> Any:
    return settings_with(database_url=database_url) if database_url else settings_with()


def settings_with(**overrides: Any) -> Any:
    from hpo_service.core.settings import Settings

    return Settings(**overrides)


def load_definition(file: Path) -> tuple[dict[str, Any], StudyDefinition]:
    """The file's document and definition, its model checked to load (as the service checks a
    submission's): a model that cannot is one line before anything runs."""
    from hpo_service.core.model_source import check_model
    from hpo_service.core.presets import read_definition_file, resolve_definition

    document = read_definition_file(file)
    definition = resolve_definition(document)
    check_model(definition.model)
    return document, definition


def client_for(server: str | None, token: str | None) -> ServiceClient:
    from hpo_service.client import DEFAULT_URL, ServiceClient

    return ServiceClient(server or DEFAULT_URL, token)


def print_trials(
    title: str, metrics: list[str], definition: dict[str, Any], trials: list[Any]
) -> None:
    """A table of trials: the store's records or the API's, which share these field names. One
    column per objective ``metrics`` names (the primary first). A confirmation run shows the
    trial it repeats and its seed; a trial out of memory at its batch size, the micro-batch it
    trained at. Under the table, a line for each failed trial saying why it failed."""
    searched = searched_parameters(definition)
    columns = ("trial", "state", *metrics, "epochs", "seconds", *searched)
    rows = [
        (
            trial_label(trial),
            trial.state.value,
            *(format_number(metric_value(trial, m), ".4f") for m in metrics),
            str(trial.epochs),
            format_number(trial.duration_s, ".1f"),
            *(short_value(trial.params.get(p)) for p in searched),
        )
        for trial in trials
    ]
    print_table(columns, rows, title=title)
    for trial in trials:
        if trial.state == TrialState.FAILED and trial.error:
            reason = trial.error.strip().splitlines()[0][:SHOWN_ERROR_CHARS]
            out.print(f"trial {trial.number} failed: {reason}", highlight=False, markup=False)


def metric_value(trial: Any, metric: str) -> float | None:
    """A metric of a store record (a dict of metrics) or an API trial (a model of them)."""
    metrics = trial.metrics
    return metrics[metric] if isinstance(metrics, dict) else getattr(metrics, metric)


def trial_label(trial: Any) -> str:
    notes = []
    if trial.confirms is not None:
        notes.append(f"confirms {trial.confirms}, seed {trial.params.get('seed')}")
    if trial.micro_batch_size is not None:
        notes.append(f"micro-batch {trial.micro_batch_size}")
    if trial.schedule and len(trial.schedule) > 1:
        changes = len(trial.schedule) - 1
        notes.append(f"PBT: {changes} change{'s' if changes > 1 else ''}")
    return f"{trial.number} ({'; '.join(notes)})" if notes else str(trial.number)


def print_table(
    columns: tuple[str, ...], rows: list[tuple[str, ...]], title: str | None = None
) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)


def format_number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def short_value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def searched_parameters(definition: dict[str, Any]) -> list[str]:
    """The parameters a study searches, in order of name."""
    return sorted(StudyDefinition.model_validate(definition).parameters.searched())


def format_time(moment: Any) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
