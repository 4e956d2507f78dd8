"""`hpo` commands that work here, on a definition file or the database: validate, run, best,
gate, presets, schema."""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hpo_service.cli.admin import store_for
from hpo_service.cli.common import (
    ApiToken,
    DatabaseUrl,
    DefinitionFile,
    ServerOrDatabase,
    StudyName,
    app,
    clear_errors,
    client_for,
    err,
    load_definition,
    out,
    print_trials,
    settings_for,
)
from hpo_service.core.definition import METRICS, StudyDefinition
from hpo_service.core.errors import HpoError


@app.command()
@clear_errors
def validate(file: DefinitionFile) -> None:
    """Check a definition, its model and its data without running anything."""
    from hpo_service.data import load_labelled_data

    _, definition = load_definition(file)
    data = load_labelled_data(definition.dataset)
    out.print(
        f"[green]ok[/green] {definition.name}: {definition.n_trials} trials, "
        f"{len(data.train)} train / {len(data.eval)} eval examples, labels {data.label_names}",
        highlight=False,
    )


@app.command()
@clear_errors
def run(
    file: DefinitionFile,
    database_url: DatabaseUrl = None,
    replace: Annotated[
        bool, typer.Option(help="Delete a finished study of the same name first.")
    ] = False,
) -> None:
    """Run a study here (local Ray, or HPO_RAY_ADDRESS) and print its best configuration.

    Ctrl-C or SIGTERM cancels the study; its cut-off trials are recorded as interrupted."""
    import optuna

    from hpo_service.driver.progress import StudyProgress
    from hpo_service.driver.runner import run_study

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    document, definition = load_definition(file)
    settings = settings_for(database_url)
    if replace:
        _delete_finished(store_for(database_url), definition.name, settings.database_url)
    # SIGTERM (a service manager, `timeout`, a cancelled CI job) stops the study as Ctrl-C does,
    # through whatever SIGINT handler is in place then (Ray Tune's, while trials run).
    signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        with StudyProgress(definition, out) as progress:
            run_study(document, definition, settings, callbacks=[progress])
    except KeyboardInterrupt:
        _print_results(store_for(database_url), definition.name)
        err.print("interrupted: the study is cancelled; its cut-off trials are `interrupted`")
        raise typer.Exit(130) from None
    _print_results(store_for(database_url), definition.name)


def _delete_finished(store: Any, name: str, database_url: str) -> None:
    from hpo_service.core.errors import NotFoundError
    from hpo_service.service.studies import delete_study

    with contextlib.suppress(NotFoundError):  # nothing to replace
        delete_study(name, store, database_url)


def _print_results(store: Any, name: str) -> None:
    from hpo_service.service.best import best_config, render

    record = store.get_study(name)
    title = f"{name}: {record.status.value}"
    metrics = [goal.metric for goal in record.goals]
    print_trials(title, metrics, record.resolved_definition, store.trials(name))
    if record.error:
        err.print(f"[red]study error:[/red] {record.error}", highlight=False)
    if store.best_trial(name) is None:
        err.print("[yellow]no trial ran its full budget: no best configuration[/yellow]")
        return
    out.print("[bold]Best configuration[/bold]")
    out.print_json(render(best_config(store, name), "json"))


@app.command()
@clear_errors
def best(
    study: StudyName,
    format: Annotated[
        str, typer.Option("--format", "-f", help="json, yaml, env or training-args.")
    ] = "json",
    database_url: DatabaseUrl = None,
    server: ServerOrDatabase = None,
    token: ApiToken = None,
) -> None:
    """Print the best configuration of a study: the best trial that ran its full budget, or,
    after a confirmation stage, the best mean over its fresh seeds."""
    from hpo_service.service.best import FORMATS, best_config, render

    if format not in FORMATS:
        raise HpoError(f"--format must be one of {', '.join(FORMATS)}, not {format!r}")
    if server and not database_url:
        with client_for(server, token) as client:
            typer.echo(client.best(study, format))
        return
    document = best_config(store_for(database_url, existing=True), study)
    typer.echo(render(document, format))  # type: ignore[arg-type]


@app.command()
@clear_errors
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
        float | None,
        typer.Option(
            help="How much worse than --baseline still passes, on top of the noise both "
            "documents' confirmation seeds show (default 0)."
        ),
    ] = None,
    on: Annotated[
        str,
        typer.Option(
            "--on",
            help="With a confirmation stage, what --min/--max judge: the mean over seeds, "
            "`mean-std` (one standard deviation towards worse) or the `worst` seed.",
        ),
    ] = "mean",
    database_url: DatabaseUrl = None,
    server: ServerOrDatabase = None,
    token: ApiToken = None,
) -> None:
    """Pass (exit 0) or fail (exit 1) a CI pipeline on a study's best configuration."""
    from hpo_service.core.gate import STATISTICS, judge

    if on not in STATISTICS:
        raise HpoError(f"--on must be one of {', '.join(STATISTICS)}, not {on!r}")
    if metric is not None and metric not in METRICS:
        raise HpoError(f"--metric must be one of {', '.join(METRICS)}, not {metric!r}")
    for option, number in (("--min", minimum), ("--max", maximum), ("--max-drop", max_drop)):
        if number is not None and not math.isfinite(number):
            raise HpoError(f"{option} must be a finite number, not {number}")
    if minimum is not None and maximum is not None and minimum > maximum:
        raise HpoError(f"--min {minimum} is above --max {maximum}: no value could pass")
    if max_drop is not None and baseline is None:
        raise HpoError("--max-drop needs a --baseline to compare with")
    before = _read_baseline(baseline) if baseline is not None else None
    if server and not database_url:
        status, best_document = _status_and_best_from_server(study, server, token)
    else:
        status, best_document = _status_and_best_from_database(study, database_url)
    verdict = judge(
        study,
        status,
        best_document,
        metric,
        minimum,
        maximum,
        before,
        max_drop or 0.0,
        on,  # type: ignore[arg-type]
    )
    (out if verdict.passed else err).print(verdict.message, highlight=False, markup=False)
    raise typer.Exit(0 if verdict.passed else 1)


def _read_baseline(path: Path) -> dict[str, Any]:
    """A best-config document from a file, checked to hold what the gate reads of it."""
    from pydantic import ValidationError

    from hpo_service.core.definition import error_items
    from hpo_service.core.gate import BestConfig
    from hpo_service.core.presets import read_document_file

    source = f"--baseline {path}"
    document = read_document_file(path, source=source, syntax="json")
    try:
        BestConfig.model_validate(document)
    except ValidationError as error:
        problems = "; ".join(f"{field}: {problem}" for field, problem in error_items(error))
        raise HpoError(f"{source}: not a best-config document: {problems}") from error
    return document


def _status_and_best_from_server(
    study: str, server: str, token: str | None
) -> tuple[str, dict[str, Any] | None]:
    from hpo_service.core.errors import ServiceError

    with client_for(server, token) as client:
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
    from hpo_service.core.errors import NotFoundError
    from hpo_service.service.best import best_config

    store = store_for(database_url, existing=True)
    status = store.get_study(study).status.value
    try:
        return status, best_config(store, study)
    except NotFoundError:
        return status, None


@app.command()
def presets() -> None:
    """List the search-space presets in search_spaces/."""
    from hpo_service.core.presets import list_presets

    table = Table("preset", "source")
    for name, source in list_presets().items():
        table.add_row(name, source)
    out.print(table)


@app.command()
def schema() -> None:
    """Print the JSON Schema of a study definition."""
    typer.echo(json.dumps(StudyDefinition.model_json_schema(), indent=2))
