"""The ``hpo`` command: run and validate studies, list presets, read results, and talk to a
running hpo-service (``--server`` or ``HPO_SERVER_URL``)."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hpo_service.definition import StudyDefinition, describe_errors
from hpo_service.errors import HpoError

if TYPE_CHECKING:
    from hpo_service.api.schemas import StudyDetail, StudySummary
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


def _clear_errors(command: F) -> F:
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
    title = f"{name}: {record.status.value}"
    _print_trials(title, record.objective_metric, record.resolved_definition, store.trials(name))
    if record.error:
        err.print(f"[red]study error:[/red] {record.error}", highlight=False)
    if store.best_trial(name) is None:
        err.print("[yellow]no trial ran its full budget: no best configuration[/yellow]")
        return
    out.print("[bold]Best configuration[/bold]")
    out.print_json(render(best_config(store, name), "json"))


def _print_trials(title: str, metric: str, definition: dict[str, Any], trials: list[Any]) -> None:
    """A table of trials: the store's records or the API's, which share these field names."""
    searched = _searched(definition)
    columns = ("trial", "state", metric, "epochs", "seconds", *searched)
    rows = [
        (
            str(trial.number),
            trial.state.value,
            _number(trial.objective, ".4f"),
            str(trial.epochs),
            _number(trial.duration_s, ".1f"),
            *(_short(trial.params.get(p)) for p in searched),
        )
        for trial in trials
    ]
    _print_table(columns, rows, title=title)


def _print_table(
    columns: tuple[str, ...], rows: list[tuple[str, ...]], title: str | None = None
) -> None:
    table = Table(*columns, title=title)
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    out.print(table)


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


@app.command()
@_clear_errors
def best(
    study: StudyName,
    format: Annotated[
        str, typer.Option("--format", "-f", help="json, yaml, env or training-args.")
    ] = "json",
    database_url: DatabaseUrl = None,
    server: ServerOrDatabase = None,
    token: ApiToken = None,
) -> None:
    """Print the best configuration of a study (the best trial that ran its full budget)."""
    from hpo_service.best import FORMATS, best_config, render

    if format not in FORMATS:
        raise HpoError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if server and not database_url:
        with _client(server, token) as client:
            typer.echo(client.best(study, format))
        return
    document = best_config(_store(database_url), study)
    typer.echo(render(document, format))  # type: ignore[arg-type]


@app.command()
@_clear_errors
def gate(
    study: StudyName,
    minimum: Annotated[
        float | None, typer.Option("--min", help="The metric must be at least this.")
    ] = None,
    maximum: Annotated[
        float | None, typer.Option("--max", help="The metric must be at most this.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Default: the study's objective metric.")
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option(help="A previous best-config JSON to compare with.")
    ] = None,
    max_drop: Annotated[
        float, typer.Option(help="How much worse than --baseline still passes.")
    ] = 0.0,
    database_url: DatabaseUrl = None,
    server: ServerOrDatabase = None,
    token: ApiToken = None,
) -> None:
    """Pass (exit 0) or fail (exit 1) a CI pipeline on a study's best configuration."""
    from hpo_service.gate import judge

    before = json.loads(baseline.read_text()) if baseline is not None else None
    if server and not database_url:
        status, best_document = _status_and_best_from_server(study, server, token)
    else:
        status, best_document = _status_and_best_from_database(study, database_url)
    verdict = judge(study, status, best_document, metric, minimum, maximum, before, max_drop)
    (out if verdict.passed else err).print(verdict.message, highlight=False, markup=False)
    raise typer.Exit(0 if verdict.passed else 1)


def _status_and_best_from_server(
    study: str, server: str, token: str | None
) -> tuple[str, dict[str, Any] | None]:
    from hpo_service.errors import ServiceError

    with _client(server, token) as client:
        status = client.study(study).status.value
        try:
            return status, json.loads(client.best(study, "json"))
        except ServiceError as error:
            if error.status_code == 404:  # the study exists: it has no complete trial
                return status, None
            raise


def _status_and_best_from_database(
    study: str, database_url: str | None
) -> tuple[str, dict[str, Any] | None]:
    from hpo_service.best import best_config
    from hpo_service.errors import NotFoundError

    store = _store(database_url)
    status = store.get_study(study).status.value
    try:
        return status, best_config(store, study)
    except NotFoundError:
        return status, None


def _client(server: str | None, token: str | None) -> ServiceClient:
    from hpo_service.client import DEFAULT_URL, ServiceClient

    return ServiceClient(server or DEFAULT_URL, token)


@app.command()
@_clear_errors
def submit(
    file: DefinitionFile,
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Follow it to its end: exit 0 if it completes, 1 if not."),
    ] = False,
    server: ServerUrl = None,
    token: ApiToken = None,
) -> None:
    """Submit a study to hpo-service, which runs it when a slot is free."""
    from hpo_service.presets import read_definition_file

    document = read_definition_file(file)  # relative dataset paths become absolute
    with _client(server, token) as client:
        study = client.submit(document)
        out.print(f"submitted {study.name}: {study.status.value}", highlight=False)
        if wait:
            _report_end(_follow(client, study.name))


def _follow(client: ServiceClient, name: str) -> StudyDetail:
    """Poll the study until it ends, with a live bar of finished trials; its last state."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn())
    fields = (TimeElapsedColumn(), TextColumn("{task.fields[summary]}"))
    try:
        with Progress(*columns, *fields, console=out) as bar:
            study = client.study(name)
            task = bar.add_task(escape(name), total=study.progress.total, summary="")
            while True:
                bar.update(task, completed=study.progress.finished, summary=_summary(study))
                if study.status.is_finished:
                    return study
                time.sleep(POLL_S)
                study = client.study(name)
    except KeyboardInterrupt:
        err.print(f"stopped following {name}; it goes on (hpo cancel stops it)", highlight=False)
        raise typer.Exit(130) from None


def _summary(study: StudySummary) -> str:
    """Status, trials by state and the best objective so far, in one line."""
    parts = [study.status.value, _counts(study)]
    if study.best is not None:
        parts.append(f"best {study.objective.metric} {study.best.objective:.4f}")
    return escape(" · ".join(part for part in parts if part))


def _counts(study: StudySummary) -> str:
    return ", ".join(f"{n} {state.value}" for state, n in study.trial_counts.items() if n)


def _report_end(study: StudyDetail) -> None:
    """Exit 0 for a completed study; 1, with the study's error, for a failed or cancelled one."""
    if study.status.value == "completed":
        best = "no trial ran its full budget" if study.best is None else f"best {_best(study)}"
        out.print(f"{study.name} completed: {best}", highlight=False)
        return
    error = escape(study.error or "no error recorded")
    err.print(f"[red]{study.name} {study.status.value}:[/red] {error}", highlight=False)
    raise typer.Exit(1)


def _best(study: StudyDetail) -> str:
    """The best trial so far: its objective and the values of the searched parameters."""
    params = study.best.params
    chosen = ", ".join(f"{p}={_short(params.get(p))}" for p in _searched(study.resolved_definition))
    metric = study.objective.metric
    return f"{metric} {study.best.objective:.4f} (trial {study.best.trial}): {chosen}"


def _searched(definition: dict[str, Any]) -> list[str]:
    """The parameters a study searches, in order of name."""
    return sorted(StudyDefinition.model_validate(definition).parameters.searched())


@app.command()
@_clear_errors
def studies(
    status: Annotated[
        str | None,
        typer.Option(help="Only those queued, running, completed, failed or cancelled."),
    ] = None,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many.")] = 0,
    limit: Annotated[int, typer.Option(min=1, max=200, help="Show at most this many.")] = 50,
    server: ServerUrl = None,
    token: ApiToken = None,
) -> None:
    """The service's studies in order of submission, with progress and best objective."""
    with _client(server, token) as client:
        page = client.studies(status, offset, limit)
    columns = ("study", "status", "trials", "objective", "best", "submitted")
    rows = [
        (
            s.name,
            s.status.value,
            f"{s.progress.finished}/{s.progress.total}",
            s.objective.metric,
            "" if s.best is None else f"{s.best.objective:.4f}",
            _when(s.created_at),
        )
        for s in page.items
    ]
    _print_table(columns, rows)
    shown = offset + len(page.items)
    if page.total > shown:
        out.print(f"studies {offset + 1}-{shown} of {page.total}; --offset {shown} shows more")


@app.command()
@_clear_errors
def status(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """A study's status, progress, trials by state, best so far and error."""
    with _client(server, token) as client:
        study = client.study(name)
    progress = study.progress
    facts = {
        "status": study.status.value,
        "progress": f"{progress.finished}/{progress.total} trials ({progress.fraction:.0%})",
        "trials": _counts(study) or "none yet",
        "objective": f"{study.objective.direction} {study.objective.metric}",
        "best": "none yet" if study.best is None else _best(study),
        "submitted": _when(study.created_at),
        "started": _when(study.started_at),
        "finished": _when(study.finished_at),
        "error": study.error or "",
    }
    grid = Table.grid(padding=(0, 2))
    for key, value in facts.items():
        if value:
            grid.add_row(f"[bold]{key}[/bold]", escape(value))
    out.print(f"[bold]{escape(study.name)}[/bold]")
    out.print(grid)


def _when(moment: Any) -> str:
    return "" if moment is None else moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")


@app.command()
@_clear_errors
def trials(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """A study's trials: state, objective, epochs, seconds and the searched parameters."""
    with _client(server, token) as client:
        study = client.study(name)
        items = client.trials(name).items
    title = f"{name}: {study.status.value}"
    _print_trials(title, study.objective.metric, study.resolved_definition, items)


@app.command()
@_clear_errors
def cancel(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """Cancel a queued or running study: running trials stop and no new ones start."""
    with _client(server, token) as client:
        study = client.cancel(name)
    out.print(f"{study.name}: {study.status.value}", highlight=False)


@app.command()
@_clear_errors
def delete(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """Delete a finished study and its trials from the service (cancel a running one first)."""
    with _client(server, token) as client:
        client.delete(name)
    out.print(f"deleted {name}", highlight=False)


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
    from hpo_service.api.auth import auth_required

    application = create_app(settings)
    err.print(
        f"hpo-service on http://{settings.host}:{settings.port}: API under /v1 (docs at /docs), "
        f"Optuna dashboard at /dashboard, database {_safe_url(settings.database_url)}",
        highlight=False,
    )
    if auth_required(settings.host, settings.auth):
        err.print("API tokens are required (create one with `hpo token create`)", highlight=False)
    else:
        err.print(
            "[yellow]API tokens are NOT required: the service is on a loopback address; "
            "HPO_AUTH=on requires them here too[/yellow]"
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


@token_app.command("create")
@_clear_errors
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token and print its secret (shown only this once)."""
    from hpo_service.db.tables import Scope
    from hpo_service.tokens import create_token

    if scope not in {s.value for s in Scope}:
        raise HpoError(f"--scope must be read, write or admin, not {scope!r}")
    record, secret = create_token(_store(database_url), name, Scope(scope))
    err.print(f"token {record.name} ({record.scope.value}); its secret, shown only now:")
    typer.echo(secret)


@token_app.command("list")
@_clear_errors
def token_list(database_url: DatabaseUrl = None) -> None:
    """List API tokens (never their secrets)."""
    table = Table("name", "starts with", "scope", "created", "revoked")
    for record in _store(database_url).tokens():
        revoked = record.revoked_at.isoformat(timespec="seconds") if record.revoked_at else ""
        table.add_row(
            record.name,
            record.prefix + "…",
            record.scope.value,
            record.created_at.isoformat(timespec="seconds"),
            revoked,
        )
    out.print(table)


@token_app.command("revoke")
@_clear_errors
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API token for good."""
    _store(database_url).revoke_token(name)
    out.print(f"token {name} revoked")


if __name__ == "__main__":
    app()
