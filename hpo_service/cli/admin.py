"""`hpo serve`, `hpo db` and `hpo token`: the service itself, its database's schema, API tokens."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from hpo_service.cli.common import (
    DatabaseUrl,
    app,
    clear_errors,
    db_app,
    err,
    out,
    settings_for,
    settings_with,
    token_app,
)
from hpo_service.core.errors import HpoError, StorageError


@db_app.command("upgrade")
@clear_errors
def db_upgrade(database_url: DatabaseUrl = None) -> None:
    """Create or upgrade hpo-service's tables to this version's schema."""
    from hpo_service.db.migrate import current_revision, upgrade
    from hpo_service.db.store import make_engine, opening_database

    with opening_database():
        engine = make_engine(settings_for(database_url).database_url)
        upgrade(engine)
        revision = current_revision(engine)
    out.print(f"database schema at revision {revision}")


@token_app.command("create")
@clear_errors
def token_create(
    name: Annotated[str, typer.Argument(help="What the token is for, e.g. ci.")],
    scope: Annotated[str, typer.Option(help="read, write or admin.")] = "read",
    database_url: DatabaseUrl = None,
) -> None:
    """Create an API token and print its secret (shown only this once)."""
    from hpo_service.core.records import Scope
    from hpo_service.service.tokens import create_token

    if scope not in {s.value for s in Scope}:
        raise HpoError(f"--scope must be read, write or admin, not {scope!r}")
    record, secret = create_token(store_for(database_url), name, Scope(scope))
    err.print(f"token {record.name} ({record.scope.value}); its secret, shown only now:")
    typer.echo(secret)


@token_app.command("list")
@clear_errors
def token_list(database_url: DatabaseUrl = None) -> None:
    """List API tokens (never their secrets)."""
    table = Table("name", "starts with", "scope", "created", "revoked")
    for record in store_for(database_url).tokens():
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
@clear_errors
def token_revoke(
    name: Annotated[str, typer.Argument(help="The token's name.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Revoke an API token for good."""
    store_for(database_url).revoke_token(name)
    out.print(f"token {name} revoked")


@app.command()
@clear_errors
def serve(
    host: Annotated[str | None, typer.Option(help="Overrides HPO_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Overrides HPO_PORT (8000).")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Serve the REST API and the Optuna dashboard, and run submitted studies."""
    import uvicorn

    from hpo_service.api.app import create_app

    overrides = {"host": host, "port": port, "database_url": database_url}
    settings = settings_with(**{k: v for k, v in overrides.items() if v is not None})
    from hpo_service.api.auth import auth_required

    # Bound before the app starts: uvicorn binds after the app's startup, which takes over the
    # database's studies, so a service that cannot listen would change them and exit.
    listening = _listening_socket(settings.host, settings.port)
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
    config = uvicorn.Config(application, host=settings.host, port=settings.port, log_level="info")
    uvicorn.Server(config).run(sockets=[listening])


def _listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (as uvicorn binds one), or HpoError saying why not."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as error:
        listening.close()
        raise HpoError(
            f"cannot listen on {host}:{port}: {error.strerror or error} (another service there? "
            "choose another --port or HPO_PORT)"
        ) from error
    listening.set_inheritable(True)
    return listening


def _safe_url(url: str) -> str:
    from sqlalchemy import make_url

    return make_url(url).render_as_string(hide_password=True)


def store_for(database_url: str | None, *, existing: bool = False) -> Any:
    """The store at ``database_url`` (else the settings'); ``existing``: for a command that only
    reads, an SQLite file that is not there is an error, not a new empty database."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import ArgumentError

    from hpo_service.db.store import Store

    url = settings_for(database_url).database_url
    try:
        parsed = make_url(url)
    except ArgumentError:
        parsed = None  # Store.open says what is wrong with it
    if existing and parsed is not None and parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path and path != ":memory:" and not Path(path).expanduser().exists():
            raise StorageError(
                f"no database at {path}: give --database-url (HPO_DATABASE_URL), or --server "
                "(HPO_SERVER_URL) for a service's studies"
            )
    return Store.open(url)
