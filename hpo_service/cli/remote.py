"""`hpo` commands for the service: serve it, and submit, follow, list, cancel, delete studies
through its REST API (``--server`` or HPO_SERVER_URL)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from hpo_service.api.schemas import Budget, Hours, StudyDetail, StudySummary
    from hpo_service.client import ServiceClient
from hpo_service.cli.common import (
    POLL_S,
    ApiToken,
    DefinitionFile,
    ServerUrl,
    StudyName,
    app,
    clear_errors,
    client_for,
    err,
    format_time,
    out,
    print_table,
    print_trials,
    searched_parameters,
    short_value,
)


@app.command()
@clear_errors
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
    from hpo_service.core.presets import read_definition_file

    document = read_definition_file(file)  # relative dataset paths become absolute
    with client_for(server, token) as client:
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


def _hours(hours: Hours, limits: Hours | None = None) -> str:
    """CPU- and GPU-hours, each with its limit where there is one; GPU-hours only if any."""
    parts = []
    for kind, used in (("CPU", hours.cpu_hours), ("GPU", hours.gpu_hours)):
        limit = getattr(limits, f"{kind.lower()}_hours") if limits else None
        if used or limit or kind == "CPU":
            parts.append(f"{used or 0:.3g} {kind}-h" + (f" of {limit:g}" if limit else ""))
    return ", ".join(parts)


def _forecast(budget: Budget) -> str:
    if not budget.remaining_trials:
        return ""
    if budget.seconds_to_finish is None or budget.at_end is None:
        return f"{budget.remaining_trials} trials to run; a forecast once one has finished"
    return (
        f"{budget.remaining_trials} trials to run, about {budget.seconds_to_finish / 60:.1f} min, "
        f"{_hours(budget.at_end)} at the end"
    )


def _best(study: StudyDetail) -> str:
    """The best trial so far: its objective and the values of the searched parameters."""
    params = study.best.params
    chosen = ", ".join(
        f"{p}={short_value(params.get(p))}" for p in searched_parameters(study.resolved_definition)
    )
    metric = study.objective.metric
    return f"{metric} {study.best.objective:.4f} (trial {study.best.trial}): {chosen}"


@app.command()
@clear_errors
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
    with client_for(server, token) as client:
        page = client.studies(status, offset, limit)
    columns = ("study", "status", "trials", "objective", "best", "submitted")
    rows = [
        (
            s.name,
            s.status.value,
            f"{s.progress.finished}/{s.progress.total}",
            s.objective.metric,
            "" if s.best is None else f"{s.best.objective:.4f}",
            format_time(s.created_at),
        )
        for s in page.items
    ]
    print_table(columns, rows)
    shown = offset + len(page.items)
    if page.total > shown:
        out.print(f"studies {offset + 1}-{shown} of {page.total}; --offset {shown} shows more")


def _pick_rule(study: StudyDetail) -> str:
    """With several objectives, the rule that picks the best point (see `hpo pareto`)."""
    if len(study.objectives) < 2:
        return ""
    rule = study.resolved_definition.get("pick") or {"rule": "lexicographic"}
    within = f" {rule['tolerance']}" if rule.get("tolerance") is not None else ""
    return f"{rule['rule']}{within} over the Pareto front (hpo pareto {study.name})"


@app.command()
@clear_errors
def status(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """A study's status, progress, trials by state, best so far and error."""
    with client_for(server, token) as client:
        study = client.study(name)
    progress = study.progress
    facts = {
        "status": study.status.value,
        "progress": f"{progress.finished}/{progress.total} trials ({progress.fraction:.0%})",
        "trials": _counts(study) or "none yet",
        "objective": ", ".join(f"{o.direction} {o.metric}" for o in study.objectives),
        "best": "none yet" if study.best is None else _best(study),
        "picked by": _pick_rule(study),
        "spent": _hours(study.budget.spent, study.budget.limits),
        "forecast": _forecast(study.budget),
        "submitted": format_time(study.created_at),
        "started": format_time(study.started_at),
        "finished": format_time(study.finished_at),
        "error": study.error or "",
    }
    grid = Table.grid(padding=(0, 2))
    for key, value in facts.items():
        if value:
            grid.add_row(f"[bold]{key}[/bold]", escape(value))
    out.print(f"[bold]{escape(study.name)}[/bold]")
    out.print(grid)


@app.command()
@clear_errors
def trials(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """A study's trials: state, objective, epochs, seconds and the searched parameters."""
    with client_for(server, token) as client:
        study = client.study(name)
        items = client.all_trials(name)
    title = f"{name}: {study.status.value}"
    metrics = [objective.metric for objective in study.objectives]
    print_trials(title, metrics, study.resolved_definition, items)


@app.command()
@clear_errors
def pareto(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """A study's Pareto front over its objectives, and the trial its `pick` rule picks."""
    with client_for(server, token) as client:
        study = client.study(name)
        front = client.pareto_front(name)
    shown = ", ".join(f"{o.metric} ({o.direction})" for o in front.objectives)
    title = f"{name}: Pareto front of {shown}"
    metrics = [objective.metric for objective in front.objectives]
    print_trials(title, metrics, study.resolved_definition, front.items)
    if front.pick.trial is None:
        err.print("[yellow]no complete trial yet: no Pareto front[/yellow]")
        return
    out.print(f"picked: trial {front.pick.trial}, {front.pick.description}", highlight=False)


@app.command()
@clear_errors
def cancel(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """Cancel a queued or running study: running trials stop and no new ones start."""
    with client_for(server, token) as client:
        study = client.cancel(name)
    out.print(f"{study.name}: {study.status.value}", highlight=False)


@app.command()
@clear_errors
def delete(name: StudyName, server: ServerUrl = None, token: ApiToken = None) -> None:
    """Delete a finished study and its trials from the service (cancel a running one first)."""
    with client_for(server, token) as client:
        client.delete(name)
    out.print(f"deleted {name}", highlight=False)
